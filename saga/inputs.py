"""Giving a saga that awaits input (a step raised `NeedsInput`) the values it asked for: the step runs again
with them, its attempts counted afresh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from sqlalchemy import text

from saga import callers, db, store, versions
from saga.claims import patience
from saga.errors import ActionRefused, IdempotencyConflict
from saga.operator import locked, patched_input
from saga.runner import Started, send_forward, valid_payload

# Only while the wait lasts: recovery undoes the saga once `until` passes, under the same row lock.
_RECEIVE = text("""
WITH u AS (
    UPDATE sagas SET status = 'running', input = CAST(:input AS jsonb), large_input = CAST(:large AS jsonb),
        awaiting = NULL, error = NULL, updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND status = 'awaiting_input' AND CAST(awaiting ->> 'until' AS timestamptz) > now()
    RETURNING id
), st AS (
    UPDATE saga_steps SET attempts = 0, error = NULL, not_before = NULL, finished_at = NULL
    WHERE saga_id = :saga_id AND idx = :idx AND status = 'pending' AND EXISTS (SELECT FROM u)
)
INSERT INTO saga_events (saga_id, step, kind, detail)
SELECT id, :step, 'input_received', CAST(:detail AS jsonb) FROM u
RETURNING id
""")


def provide_input(saga_id: UUID, patch: Mapping[str, Any], tenant: str | None = None, *,
                  idempotency_key: str, dispatch: bool = True, by: Mapping[str, Any] | None = None) -> Started:
    """Send an `awaiting_input` saga new values of the fields its step asked for (the whole input validated
    again; nothing changes when it is invalid), and run that step again. The same key again gives the saga
    back (`created` False) and changes nothing; the same key with another patch is an IdempotencyConflict.
    `by` says who asked (see `saga.callers`); its `input_received` event records it with the fields sent.

    With `dispatch=False` the caller sends the step later with `send_forward(saga_id, type, resume_index(...))`.
    """
    changed = dict(patch)
    digest = store.digest(changed)
    who = callers.recorded(by)
    with db.transaction() as conn:
        record = locked(conn, saga_id, tenant)
        earlier = store.requested_under(conn, saga_id, "input_received", idempotency_key)
        if earlier is not None:
            if earlier != digest:
                raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was already used with other input "
                                          "for this saga", {"saga_id": str(saga_id)})
            return Started(record, created=False)
        if record.status != "awaiting_input" or record.awaiting is None:
            raise ActionRefused(f"saga is {record.status}; only a saga awaiting input takes input",
                                {"status": record.status})
        wanted = record.awaiting
        saga_type = versions.type_of(record)
        whole = patched_input(conn, record, saga_type, changed, allowed=wanted["fields"])
        stored, large = saga_type.split_input(valid_payload(saga_type, whole))
        index = next(s.index for s in record.steps if s.name == wanted["step"])
        received = db.fetchone(conn, _RECEIVE, {
            "saga_id": saga_id, "idx": index, "step": wanted["step"], "pickup": patience(saga_type),
            "input": db.to_json(stored), "large": None if large is None else db.to_json(large),
            "detail": db.to_json({"idempotency_key": idempotency_key, "hash": digest, "fields": sorted(changed),
                                  "by": who}),
        })
        if received is None:
            raise ActionRefused(f"the wait for input ended at {wanted['until']}; the saga is being undone",
                                {"status": record.status})
        record = store.load(saga_id, conn=conn)
    if dispatch:
        send_forward(saga_id, record.type, index, record.version)
    return Started(record, created=True)


def resume_index(record: store.SagaRecord) -> int:
    """The step a saga that just took input runs next."""
    return next(s.index for s in record.steps if s.status != "succeeded")
