"""Saga and step statuses (a public contract) and which of them a saga can leave."""

from __future__ import annotations

from enum import StrEnum


class SagaStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
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

