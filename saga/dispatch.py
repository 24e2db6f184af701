"""Sending the Celery chains that wake steps up: forward from a step, or compensation newest first."""

from __future__ import annotations

import logging
from uuid import UUID

from celery import chain

from saga import tracing
from saga.definitions import SagaType, Step
from saga.queues import compensation_queue
from saga.store import SagaRecord, StepRecord

log = logging.getLogger("saga.dispatch")

# The engine's own tasks (`saga.engine_tasks`), by name.
ON_ERROR = "saga.on_error"
FINISH_COMPENSATION = "saga.finish_compensation"
RECOVER = "saga.recover"


def forward(saga_id: UUID, saga_type: SagaType, start: int, countdown: float | None = None,
            claim_first: bool = False) -> None:
    """Chain the steps from index `start` on; each carries only the saga id, the ledger holds the rest.

    `claim_first` (recovery, the errback) makes the first step claim up front even if transactional: an earlier
    attempt of it may have crashed without a trace.
    """
    steps = [s.task.si(str(saga_id)).set(queue=saga_type.queue) for s in saga_type.steps[start:]]
    if claim_first:
        steps[0] = saga_type.steps[start].task.si(str(saga_id), claim_first=True).set(queue=saga_type.queue)
    with tracing.in_saga(saga_id):
        chain(*steps).on_error(_errback(saga_type, saga_id)).apply_async(countdown=countdown)


def compensations(record: SagaRecord, saga_type: SagaType, countdown: float | None = None) -> None:
    """Chain the compensations still owed, newest first, then the task that settles the saga's status, on the
    saga type's compensation queue (`saga.queues`)."""
    queue = compensation_queue(saga_type.queue)
    sigs = [
        step.compensation.task.si(str(record.id)).set(queue=queue)  # type: ignore[union-attr]
        for step in owed(record, saga_type)
    ]
    sigs.append(saga_type.engine.app.signature(FINISH_COMPENSATION, args=(str(record.id),), immutable=True,
                                               queue=queue))
    with tracing.in_saga(record.id):
        chain(*sigs).on_error(_errback(saga_type, record.id)).apply_async(countdown=countdown)


def compensations_or_later(record: SagaRecord, saga_type: SagaType) -> None:
    """`compensations`, unless the broker is down: then recovery dispatches them once the saga's deadline passes."""
    try:
        compensations(record, saga_type)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the work to recovery
        log.warning("saga %s: compensations not dispatched (%s: %s); recovery will", record.id,
                    type(exc).__name__, exc)


def owed(record: SagaRecord, saga_type: SagaType) -> list[Step]:
    """Steps whose effect may exist and whose compensation still has attempts left, newest first (during a
    rewind only those it goes back over)."""
    return [
        saga_type.steps[rec.index] for rec in reversed(record.undoing)
        if needs_undo(rec, saga_type) and not undo_exhausted(rec, saga_type)
    ]


def effect_may_exist(status: str, effect_unknown: bool) -> bool:
    """Whether a step in this state may have left an effect its compensation must undo."""
    return status in ("succeeded", "compensating") or (status == "failed" and effect_unknown)


def needs_undo(rec: StepRecord, saga_type: SagaType) -> bool:
    comp = saga_type.steps[rec.index].compensation
    return comp is not None and effect_may_exist(rec.status, rec.effect_unknown)


def undo_exhausted(rec: StepRecord, saga_type: SagaType) -> bool:
    comp = saga_type.steps[rec.index].compensation
    return comp is not None and rec.compensation_attempts >= comp.retry.max_attempts


def _errback(saga_type: SagaType, saga_id: UUID):
    return saga_type.engine.app.signature(ON_ERROR, args=(str(saga_id),))
