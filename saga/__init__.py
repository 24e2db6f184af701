"""Durable sagas on Celery: declare a saga type, start it, watch it, and act on it.

    from saga import SagaType, StepContext, RetryPolicy
"""

from saga.definitions import SagaType, Step, StepContext
from saga.errors import (
    ActionRefused,
    IdempotencyConflict,
    InvalidInput,
    LeaseLost,
    PermanentError,
    SagaError,
    SagaNotFound,
    TransientError,
    UnknownSagaType,
)
from saga.operator import cancel, compensate, resume
from saga.retry import RetryPolicy
from saga.runner import Started, start
from saga.states import SagaStatus, StepKind, StepStatus
from saga.store import Event, SagaRecord, StepRecord, events, list_sagas, load

__all__ = [
    "ActionRefused", "Event", "IdempotencyConflict", "InvalidInput", "LeaseLost", "PermanentError", "RetryPolicy", "SagaError",
    "SagaNotFound", "SagaRecord", "SagaStatus", "SagaType", "Started", "Step", "StepContext", "StepKind",
    "StepRecord", "StepStatus", "TransientError", "UnknownSagaType", "cancel", "compensate", "events",
    "list_sagas", "load", "resume", "start",
]
