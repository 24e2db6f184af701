"""Retry policy of a step: how many attempts, how long to wait, which errors are worth retrying."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from celery.exceptions import SoftTimeLimitExceeded

from saga.errors import PermanentError, TransientError

Verdict = Literal["transient", "permanent"]
# What no retry can cure: a PermanentError, or a mistake of the code or the data.
DEFAULT_PERMANENT: tuple[type[BaseException], ...] = (PermanentError, ValueError, TypeError, LookupError, AttributeError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by `max_attempts` and capped at `max_delay` seconds.

    Errors matching `permanent` fail the step at once, errors matching `transient` are retried, and
    any other error gets the verdict `otherwise` (retried by default: most unexpected failures around
    network calls pass). By default the errors of the code or of the data (`ValueError`, `TypeError`,
    `LookupError`, `AttributeError`) are permanent too: the same input fails the same way every time.
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: bool = True
    transient: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError, SoftTimeLimitExceeded)
    permanent: tuple[type[BaseException], ...] = field(default=DEFAULT_PERMANENT)
    otherwise: Verdict = "transient"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be non-negative and multiplier at least 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        Jitter draws from the upper half of the backoff ("equal jitter"): with a multiplier of 2 or more a
        wait is never shorter than the one before it (until the cap), while retries of many sagas spread out.
        """
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        if not self.jitter:
            return base
        return base / 2 + (rng or random).random() * base / 2

    def classify(self, exc: BaseException) -> Verdict:
        if isinstance(exc, self.permanent):
            return "permanent"
        if isinstance(exc, self.transient):
            return "transient"
        return self.otherwise

    def may_retry(self, exc: BaseException, attempt: int) -> bool:
        return self.classify(exc) == "transient" and attempt < self.max_attempts
