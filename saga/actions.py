"""A step's two actions, forward (its body) and compensation (its undo), as one shape.

Each action has the ledger column that counts its attempts, the step status that marks an attempt holding it,
the statuses it leaves behind, and the prefix of its event names. The claim, commit and failure paths are
written once against an `Action`; only what a forward action alone does (continue into the next step, honour a
cancel, run a transactional body) asks `action.forward`. `TASKS` says which action of which step each Celery
task runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saga.definitions import Compensation, Step, StepFn
from saga.retry import RetryPolicy
from saga.states import StepStatus


@dataclass(frozen=True)
class Action:
    """What the ledger calls one of a step's two actions."""

    name: Literal["forward", "compensation"]  # its label in metrics, logs and spans
    attempts: str  # the step row's column counting its attempts
    held: StepStatus  # the step's status while an attempt holds it
    retrying: StepStatus  # the step's status while it waits out a backoff for its next attempt
    done: StepStatus  # the step's status once an attempt succeeded
    events: str  # the prefix of its events: `{events}_started`, `_failed`, `_attempt_failed`, `_checkpoint`

    @property
    def forward(self) -> bool:
        return self.name == "forward"

    def event(self, what: str) -> str:
        """This action's event named `what` (`started`, `failed`, `attempt_failed`, `checkpoint`)."""
        return f"{self.events}_{what}"

    def of(self, step: Step) -> Step | Compensation:
        """The part of `step` this action runs: the step itself, or its compensation."""
        return step if self.forward else step.compensation  # type: ignore[return-value]

    def body(self, step: Step) -> StepFn:
        return self.of(step).fn

    def policy(self, step: Step) -> RetryPolicy:
        return self.of(step).retry

    def needs(self, step: Step) -> tuple[str, ...]:
        """The large input fields this action's body reads."""
        return self.of(step).needs

    def lease(self, step: Step) -> float:
        """Seconds an attempt of this action holds the step."""
        return step.lease_seconds if self.forward else step.compensation_lease_seconds


FORWARD = Action("forward", "attempts", StepStatus.RUNNING, StepStatus.PENDING, StepStatus.SUCCEEDED, "step")
COMPENSATION = Action("compensation", "compensation_attempts", StepStatus.COMPENSATING, StepStatus.COMPENSATING,
                      StepStatus.COMPENSATED, "compensation")

# Celery task name -> the step it runs, and which of its actions (the step or its compensation).
TASKS: dict[str, tuple[Step, Action]] = {}
