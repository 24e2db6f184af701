"""Durable sagas on Celery: bind the engine to your Celery app, declare saga types, start them, act on them.

    from saga import Sagas, StepContext, RetryPolicy

    sagas = Sagas(app, database_url="postgresql+psycopg://...")
    orders = sagas.saga_type("order", Order)
"""

from saga.definitions import SagaType, Step, StepContext
from saga.engine import Sagas
from saga.errors import (
    ActionRefused,
    ConfigurationError,
    DependencyUnavailable,
    IdempotencyConflict,
    InvalidInput,
    LeaseLost,
    NeedsInput,
    PermanentError,
    SagaError,
    SagaNotFound,
    TransientError,
    UnknownSagaType,
)
from saga.inputs import provide_input
from saga.ledger import TABLES as LEDGER_TABLES
from saga.operator import cancel, compensate, restart, resume
from saga.retry import RetryPolicy
from saga.rewinds import rewind
from saga.runner import Started, start
from saga.states import SagaStatus, StepKind, StepStatus
from saga.store import Event, SagaRecord, StepRecord, events, list_sagas, load

__all__ = [
    "LEDGER_TABLES",
    "ActionRefused",
    "ConfigurationError",
    "DependencyUnavailable",
    "Event",
    "IdempotencyConflict",
    "InvalidInput",
    "LeaseLost",
    "NeedsInput",
    "PermanentError",
    "RetryPolicy",
    "SagaError",
    "SagaNotFound",
    "SagaRecord",
    "SagaStatus",
    "SagaType",
    "Sagas",
    "Started",
    "Step",
    "StepContext",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "TransientError",
    "UnknownSagaType",
    "cancel",
    "compensate",
    "events",
    "list_sagas",
    "load",
    "provide_input",
    "restart",
    "resume",
    "rewind",
    "start",
]
