"""Operator actions on one saga: cancel, resume, compensate, restart. Each refuses with a reason when it does not
apply."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from saga import callers, compensation, db, dispatch, runner, store, versions
from saga.claims import patience
from saga.definitions import SagaType, get_saga_type
from saga.errors import ActionRefused, InvalidInput
from saga.ledger import saga_events, saga_steps, sagas
from saga.runner import Started, send_forward
from saga.store import SagaRecord

log = logging.getLogger("saga.operator")


# How long an operator action waits for a saga row a worker holds (it may be frozen mid-commit).
LOCK_WAIT = "5s"


def locked(conn: Connection, saga_id: UUID, tenant: str | None) -> SagaRecord:
    """The saga, its row locked for this transaction; refused as busy if a worker holds it too long."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
    # The tenant is part of the lock's condition: another tenant's saga is never waited for (it would answer
    # "busy" where its absence must look the same as any unknown id's).
    mine = select(sagas.c.id).where(sagas.c.id == saga_id)
    if tenant is not None:
        mine = mine.where(sagas.c.tenant == tenant)
    try:
        conn.execute(mine.with_for_update())
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":
            raise
        raise ActionRefused(f"saga {saga_id} is busy: a worker has held it for over {LOCK_WAIT}; try again shortly",
                            {"status": "busy"}) from None
    return store.load(saga_id, tenant, conn)


def cancel(saga_id: UUID, tenant: str | None = None, *, by: Mapping[str, Any] | None = None) -> SagaRecord:
    """Undo what was done. A step in flight finishes first; if it is the pivot and succeeds, the cancel is
    refused then and the saga goes forward. Refused at once past the point of no return. `by` says who asked
    (see `saga.callers`); its `cancel_requested` event records it."""
    who = callers.recorded(by)
    with db.transaction() as conn:
        record = locked(conn, saga_id, tenant)
        if record.cancel_requested:
            return record  # asked before: repeating is harmless
        if record.status not in ("pending", "running", "awaiting_input"):
            raise ActionRefused(f"saga is {record.status}; only a pending, running or awaiting_input saga can be "
                                "cancelled",
                                {"status": record.status})
        refuse_past_point_of_no_return(record)
        conn.execute(update(sagas).where(sagas.c.id == saga_id).values(cancel_requested=True, updated_at=func.now()))
        conn.execute(insert(saga_events).values(saga_id=saga_id, kind="cancel_requested", detail={"by": who}))
    # With a step in flight nothing starts yet: that step's end honours the cancel, or refuses it if the
    # step was past the point of no return and succeeded.
    compensation.begin(saga_id, versions.type_of(record), "cancelled", after_leases=True)
    return store.load(saga_id)


def refuse_past_point_of_no_return(record: SagaRecord) -> None:
    """ActionRefused once a step that cannot be undone (the pivot, or one after it) succeeded."""
    committed = [s.name for s in record.steps if s.kind != "compensable" and s.status == "succeeded"]
    if committed:
        raise ActionRefused(f"saga passed its point of no return (step {committed[0]} succeeded); it can only go "
                            "forward", {"status": record.status})


def resume(saga_id: UUID, tenant: str | None = None, *, by: Mapping[str, Any] | None = None) -> SagaRecord:
    """Continue a paused saga from its first unfinished step, with that step's attempts counted afresh; one that
    was paused while being undone (its version was not declared) goes on being undone. Refused while its version
    is still not declared here. `by` says who asked; its `saga_resumed` event records it."""
    who = callers.recorded(by)
    with db.transaction() as conn:
        record = locked(conn, saga_id, tenant)
        if record.status != "paused":
            raise ActionRefused(f"saga is {record.status}; only a paused saga can be resumed",
                                {"status": record.status})
        saga_type = versions.type_of(record)
        deadline = db.seconds_from_now(patience(saga_type))
        if _paused_from(conn, saga_id) == "compensating":
            conn.execute(update(sagas).where(sagas.c.id == saga_id).values(
                status="compensating", updated_at=func.now(), deadline=deadline))
            conn.execute(insert(saga_events).values(saga_id=saga_id, kind="saga_resumed",
                                                      detail={"undoing": True, "by": who}))
            resumed = store.load(saga_id, conn=conn)
            undo = True
        else:
            first = next(s for s in record.steps if s.status != "succeeded")
            conn.execute(
                update(saga_steps).where(saga_steps.c.saga_id == saga_id, saga_steps.c.status == "failed")
                .values(status="pending", attempts=0, error=None, finished_at=None, not_before=None)
            )
            conn.execute(update(sagas).where(sagas.c.id == saga_id).values(
                status="running", error=None, updated_at=func.now(), deadline=deadline))
            conn.execute(insert(saga_events).values(saga_id=saga_id, kind="saga_resumed",
                                                      detail={"from": first.name, "by": who}))
            resumed = store.load(saga_id, conn=conn)
            undo = False
    if undo:
        dispatch.compensations_or_later(resumed, saga_type)
    else:
        send_forward(saga_id, record.type, first.index, record.version)
    return resumed  # as resume left it: the workers may already have moved it on


def _paused_from(conn: Connection, saga_id: UUID) -> str | None:
    """The status the saga was in when it was last paused (recorded since versions pause sagas in any)."""
    return conn.execute(
        select(saga_events.c.detail["from"].astext).where(saga_events.c.saga_id == saga_id,
                                                          saga_events.c.kind == "saga_paused")
        .order_by(saga_events.c.id.desc()).limit(1)
    ).scalar()


def compensate(saga_id: UUID, tenant: str | None = None, *, by: Mapping[str, Any] | None = None) -> SagaRecord:
    """Run again the compensations of a `failed` saga, each with its attempts counted afresh. `by` says who
    asked; its `compensation_rerun` event records it."""
    who = callers.recorded(by)
    with db.transaction() as conn:
        record = locked(conn, saga_id, tenant)
        if record.status != "failed":
            raise ActionRefused(f"saga is {record.status}; only a failed saga can be compensated again",
                                {"status": record.status})
        saga_type = versions.type_of(record)
        retry = [s.index for s in record.undoing if dispatch.needs_undo(s, saga_type)]
        conn.execute(
            update(saga_steps).where(saga_steps.c.saga_id == saga_id, saga_steps.c.idx.in_(retry))
            .values(compensation_attempts=0, not_before=None)
        )
        conn.execute(update(sagas).where(sagas.c.id == saga_id).values(
            status="compensating", updated_at=func.now(),
            deadline=db.seconds_from_now(patience(saga_type))))
        conn.execute(insert(saga_events).values(
            saga_id=saga_id, kind="compensation_rerun", detail={"steps": [record.steps[i].name for i in retry], "by": who}))
        record = store.load(saga_id, conn=conn)
    dispatch.compensations_or_later(record, saga_type)
    return record  # as this action left it: the workers may already have moved it on


# Sagas that ended with what could be undone undone: starting them again cannot repeat an effect.
RESTARTABLE = ("compensated", "failed")


def restart(saga_id: UUID, tenant: str | None = None, patch: Mapping[str, Any] | None = None, *,
            idempotency_key: str | None = None, dispatch: bool = True,
            by: Mapping[str, Any] | None = None) -> Started:
    """Start a `compensated` or `failed` saga again from its first step: a new saga of its type, with its input
    (the fields in `patch` replaced, the whole validated again) and its own idempotency key (default
    `restart-of:<id>`), linked both ways (`restart_of` / `restarted_as`). A saga is restarted once: the same key
    again gives the same restart back (`created` False); another key is refused. `by` says who asked; both sagas'
    events record it (the new one's `saga_accepted`, the old one's `saga_restarted`)."""
    who = callers.recorded(by)
    record = store.load(saga_id, tenant)
    key = idempotency_key or f"restart-of:{saga_id}"
    if record.restarted_as is not None and store.load(record.restarted_as).idempotency_key != key:
        raise _restarted_already(record)  # under its own key it is a replay (or, with another patch, a 422)
    if record.status not in RESTARTABLE:
        raise ActionRefused(f"saga is {record.status}; only a compensated or failed saga can be restarted",
                            {"status": record.status})
    changed = dict(patch or {})
    with db.transaction() as conn:
        whole = patched_input(conn, record, get_saga_type(record.type), changed)  # restarted on the newest
    try:
        return runner.start(record.type, whole,
                            idempotency_key=key, tenant=record.tenant, dispatch=dispatch, restart_of=saga_id,
                            changed=tuple(sorted(changed)), by=who)
    except IntegrityError as exc:
        if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) != "sagas_restart_of":
            raise
        raise _restarted_already(store.load(saga_id)) from None  # a restart under another key won meanwhile


def patched_input(conn: Connection, record: SagaRecord, saga_type: SagaType[Any], patch: Mapping[str, Any],
                  allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """The saga's whole input, its large fields included, with the fields in `patch` replaced (not validated
    yet); InvalidInput naming each field `saga_type`'s input model lacks, or that `allowed` leaves out."""
    model = saga_type.input_model
    known = set(model.model_fields) if allowed is None else set(allowed)
    unknown = sorted(set(patch) - known)
    if unknown:
        why = f"{model.__name__} has no such field" if allowed is None else "not asked for"
        raise InvalidInput(f"invalid input for saga {record.type!r}: {', '.join(map(repr, unknown))}: {why}",
                           [{"field": name, "message": why} for name in unknown])
    large = conn.execute(select(sagas.c.large_input).where(sagas.c.id == record.id)).scalar()
    return {**(record.input or {}), **(large or {}), **patch}


def _restarted_already(record: SagaRecord) -> ActionRefused:
    return ActionRefused(f"saga was already restarted as {record.restarted_as}",
                         {"status": record.status, "restarted_as": str(record.restarted_as)})
