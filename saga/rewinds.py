"""Rewinding a saga to an earlier step: undo, newest first, what that step and every later one did, then run
forward again from it with the input patched. Refused where that cannot be safe: once the saga passed its
point of no return, or over a step that may have acted and has no compensation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from sqlalchemy import text

from saga import callers, db, dispatch, store, versions
from saga.claims import patience
from saga.compensation import UNFINISHED_STEPS
from saga.definitions import SagaType
from saga.errors import ActionRefused, IdempotencyConflict, UnknownStep
from saga.operator import locked, patched_input, refuse_past_point_of_no_return
from saga.runner import valid_payload

# Sagas a rewind may take back: no step is in flight in them.
REWINDABLE = ("awaiting_input", "paused", "completed")

# The saga is undone from step :idx on, as when a saga is undone (a step never started is skipped, one started
# without an outcome may have acted, the step that waited for input said itself); `compensation.finish` then
# runs it forward again instead of settling it.
_REWIND = text(f"""
WITH before AS (
    SELECT status = 'awaiting_input' AS waited FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), u AS (
    UPDATE sagas SET status = 'compensating', rewind = CAST(:rewind AS jsonb), awaiting = NULL, error = NULL,
        updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND status IN ('awaiting_input', 'paused', 'completed')
        AND EXISTS (SELECT FROM before)  -- `before` read now: read later, it skips the row changed here
    RETURNING id
), st AS (
    UPDATE saga_steps SET {UNFINISHED_STEPS}
    WHERE saga_id = :saga_id AND idx >= :idx AND status IN ('pending', 'running') AND EXISTS (SELECT FROM u)
)
INSERT INTO saga_events (saga_id, step, kind, detail)
SELECT id, :step, 'rewind_begun', CAST(:detail AS jsonb) FROM u
RETURNING id
""")


def rewind(saga_id: UUID, to: str, patch: Mapping[str, Any] | None = None, tenant: str | None = None, *,
           idempotency_key: str, by: Mapping[str, Any] | None = None) -> store.SagaRecord:
    """Take the saga back to step `to`: undo it and every later step that may have acted, newest first, then
    run forward from it with the fields in `patch` replaced (the whole input validated now; nothing changes
    when it is invalid). `by` says who asked (see `saga.callers`); its `rewind_begun` event records it with the
    fields changed. The same key again gives the saga back and changes nothing; with another request it is an
    IdempotencyConflict."""
    changed = dict(patch or {})
    request = {"to": to, "input": changed}
    who = callers.recorded(by)
    with db.transaction() as conn:
        record = locked(conn, saga_id, tenant)
        earlier = store.requested_under(conn, saga_id, "rewind_begun", idempotency_key)
        if earlier is not None:
            if earlier != store.digest(request):
                raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was already used with another "
                                          "rewind of this saga", {"saga_id": str(saga_id)})
            return record
        saga_type = versions.type_of(record)
        target = next((s for s in saga_type.steps if s.name == to), None)
        if target is None:
            raise UnknownStep(f"saga type {record.type!r} has no step {to!r} (steps: "
                              f"{', '.join(s.name for s in saga_type.steps)})", [{"field": "to", "message":
                                                                                   "no such step"}])
        _check_safe(record, saga_type, target.index)
        stored, large = saga_type.split_input(valid_payload(saga_type, patched_input(conn, record, saga_type, changed)))
        plan: dict[str, Any] = {"to": target.index, "step": to, "input": stored, "fields": sorted(changed)}
        if large is not None and set(changed) & set(saga_type.large_fields):
            plan["large"] = large
        db.fetchone(conn, _REWIND, {
            "saga_id": saga_id, "idx": target.index, "step": to, "pickup": patience(saga_type),
            "rewind": db.to_json(plan),
            "detail": db.to_json({"to": to, "fields": sorted(changed), "by": who,
                                  "idempotency_key": idempotency_key, "hash": store.digest(request)}),
        })
        record = store.load(saga_id, conn=conn)
    dispatch.compensations_or_later(record, saga_type)
    return record


def _check_safe(record: store.SagaRecord, saga_type: SagaType[Any], index: int) -> None:
    """ActionRefused with the reason unless every step from `index` on can be undone and the saga is one a
    rewind may take back."""
    if record.status not in REWINDABLE:
        raise ActionRefused(f"saga is {record.status}; only a saga awaiting input, paused or completed can be "
                            "rewound (a running one: cancel it or wait; an undone one: restart it)",
                            {"status": record.status})
    refuse_past_point_of_no_return(record)
    for rec in record.steps[index:]:
        acted = dispatch.effect_may_exist(rec.status, rec.effect_unknown) or (rec.attempts > 0 and rec.effect_unknown)
        if acted and saga_type.steps[rec.index].compensation is None:
            raise ActionRefused(f"step {rec.name} cannot be undone (it has no compensation), so the saga cannot "
                                f"be rewound over it", {"status": record.status})
