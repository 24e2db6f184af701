"""Saga and step statuses (a public contract) and which of them a saga can leave."""

from __future__ import annotations

from enum import StrEnum


class SagaStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    AWAITING_INPUT = "awaiting_input"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    PAUSED = "paused"
    FAILED = "failed"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    SKIPPED = "skipped"


class StepKind(StrEnum):
    COMPENSABLE = "compensable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


# Statuses after which a saga waits for nobody but an operator.
FINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.PAUSED, SagaStatus.FAILED})
# Statuses in which a saga still moves by itself (recovery watches their deadlines; the `sagas_active` index).
ACTIVE = ("pending", "running", "compensating", "awaiting_input")
# Statuses in which a saga waits for someone: an operator, or (`awaiting_input`) its client, until a deadline.
WAITING = FINAL | {SagaStatus.AWAITING_INPUT}

