"""Exceptions a step raises to steer retries, and the ones the engine raises to its callers."""

from __future__ import annotations

from typing import Any


class TransientError(Exception):
    """Raised by a step body for a failure worth retrying (timeouts, rate limits, 5xx)."""


class PermanentError(Exception):
    """Raised by a step body for a failure no retry can fix (a declined card, invalid data).

    `effect_unknown` says whether the step may have left an effect that compensation must undo.
    """

    def __init__(self, message: str, *, effect_unknown: bool = False) -> None:
        super().__init__(message)
        self.effect_unknown = effect_unknown


class NeedsInput(Exception):
    """Raised by a forward step body to ask the client for new values of some input fields (a declined card:
    another payment method) instead of failing. The saga waits in `awaiting_input`, keeping what earlier
    steps did, for `within` seconds; input sent meanwhile (`provide_input`) runs the step again with it, and
    no input by then undoes the saga as a failure would.

    `effect_unknown` says whether the attempt may have left an effect that an undo must still look at.
    """

    def __init__(self, *fields: str, reason: str, within: float, effect_unknown: bool = False) -> None:
        if not fields:
            raise ValueError("NeedsInput names at least one input field")
        if within <= 0:
            raise ValueError("NeedsInput needs a positive wait (`within`, seconds)")
        super().__init__(reason)
        self.fields, self.reason, self.within, self.effect_unknown = fields, reason, within, effect_unknown


class LeaseLost(Exception):
    """Raised by `StepContext.checkpoint` when the attempt no longer holds its step: the body must stop."""


class ConfigurationError(ValueError):
    """A setting the engine cannot run with; the message names the setting (e.g. `SAGA_DATABASE_URL`)."""


class WorkerRefused(SystemExit):
    """A worker's or beat's settings would break a guarantee, so it does not start. A `SystemExit`, because
    Celery logs and swallows any `Exception` raised while a worker or beat starts (its signal handlers)."""


class StepFailed(Exception):
    """Raised by a step task once its failure is recorded, so Celery fires the chain's errback."""


class SagaError(Exception):
    """Base of the errors the engine reports to a caller (CLI, API); `code` is machine-readable."""

    code = "saga_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class UnknownSagaType(SagaError):
    code = "unknown_saga_type"


class VersionNotDeclared(SagaError):
    """The saga started on a version of its type that this deployment does not declare (or declares with other
    steps): nothing runs it here."""

    code = "saga_version_not_declared"


class UnknownStep(SagaError):
    """A request named a step its saga type does not have (a rewind's `to`)."""

    code = "unknown_step"


class InvalidInput(SagaError):
    code = "invalid_input"


class DependencyUnavailable(SagaError):
    """A new saga would only wait: a third party one of its steps before the point of no return depends on is
    down (its circuit breaker is open). `details`: the dependency and the seconds after which to try again."""

    code = "dependency_unavailable"


class IdempotencyConflict(SagaError):
    code = "idempotency_key_reused"


class SagaNotFound(SagaError):
    code = "saga_not_found"


class ActionRefused(SagaError):
    """An operator action the saga's current status does not allow."""

    code = "action_not_allowed"
