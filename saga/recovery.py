"""Recovery: wake sagas whose deadline passed (lost messages, dead workers, failed dispatches)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from uuid import UUID

from sqlalchemy import text

from saga import claims, compensation, db, dispatch, metrics, retention, store, tenant_slots, versions
from saga.claims import patience
from saga.errors import VersionNotDeclared
from saga.settings import get_settings
from saga.states import ACTIVE, SagaStatus

log = logging.getLogger("saga.recovery")

_DUE = text("""
WITH due AS (
    SELECT id FROM sagas
    WHERE deadline < now() AND status IN ('pending', 'running', 'compensating', 'awaiting_input')
    ORDER BY deadline LIMIT :batch FOR UPDATE SKIP LOCKED
), u AS (
    -- Backs off per saga: one that has not moved for a while waits that long again (within the cap) before
    -- the next re-send, so a backlog older than the pickup timeout is not flooded with duplicate messages.
    UPDATE sagas SET deadline = now() + make_interval(secs => greatest(:pickup,
        least(CAST(extract(epoch FROM now() - updated_at) AS double precision), :backoff_max)))
    WHERE id IN (SELECT id FROM due) RETURNING id, status
), e AS (
    INSERT INTO saga_events (saga_id, kind, detail)
    SELECT id, 'recovered', jsonb_build_object('status', status) FROM u
)
SELECT id FROM u
""")

_WAIT = text("""
UPDATE sagas SET deadline = greatest(deadline, now() + make_interval(secs => :patience)) WHERE id = :saga_id
""")


def start_loop(interval: float) -> threading.Thread:
    """Run recovery every `interval` seconds in a daemon thread of this process (beat's), until it exits; with
    SAGA_RETENTION_DAYS set, each pass also deletes one batch of sagas that ended that long ago."""

    def loop() -> None:
        while True:
            try:
                run_once()
                retention_days = get_settings().retention_days
                if retention_days:
                    retention.prune_batch(timedelta(days=retention_days))
            except Exception:
                log.exception("recovery pass failed; next in %.1f s", interval)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="saga-recovery", daemon=True)
    thread.start()
    log.info("recovery runs in this process every %.1f s", interval)
    return thread


def due_parameters() -> dict[str, float]:
    """The settings `_DUE` runs with."""
    settings = get_settings()
    return {"batch": settings.recovery_batch, "pickup": settings.pickup_timeout,
            "backoff_max": settings.recovery_backoff_max}


def run_once() -> int:
    """Re-dispatch every due saga (at most a batch), then admit held sagas of tenants with free slots (see
    `saga.tenant_slots`); returns how many due sagas were looked at."""
    with db.transaction() as conn:
        due = conn.execute(_DUE, due_parameters()).scalars().all()
    metrics.RECOVERY_DISPATCHES.inc(len(due))
    for saga_id in due:
        try:
            advance(saga_id)
        except Exception:
            log.exception("recovery of saga %s failed; it stays due", saga_id)
    if due:
        log.info("recovery woke %d saga(s)", len(due))
    admitted = tenant_slots.admit_waiting()
    if admitted:
        log.info("recovery admitted held sagas: %s", ", ".join(f"{n} of tenant {t}" for t, n in admitted.items()))
    return len(due)


def advance(saga_id: UUID) -> None:
    """Dispatch whatever the saga needs next, judged from the ledger alone. Safe to repeat."""
    record = store.load(saga_id)
    if record.status not in ACTIVE or (record.status == SagaStatus.PENDING and not record.admitted):
        return  # ended, or held for a slot of its tenant: not stuck, `tenant_slots` starts it
    try:
        saga_type = versions.type_of(record)
    except VersionNotDeclared as why:
        versions.stop(record, why)
        return
    if record.status == "awaiting_input":
        wanted = record.awaiting or {}
        compensation.begin(saga_id, saga_type, f"no input for step {wanted.get('step')} by {wanted.get('until')}: "
                           f"{wanted.get('reason')}", waited_out=True)
        return
    with db.transaction() as conn:
        if claims.defer_to_live_lease(conn, saga_id):
            return  # an attempt is in flight: its outcome moves the saga; recovery looks again after its lease
    if record.status == "compensating":
        if dispatch.owed(record, saga_type):
            dispatch.compensations(record, saga_type)
        else:
            compensation.finish(saga_id)
        return
    nxt = next((s for s in record.steps if s.status != "succeeded"), None)
    if nxt is not None and nxt.status == "failed":
        compensation.react(saga_id)
        return
    if record.cancel_requested:  # also when every step succeeded: a crash came between the last commit and the undo
        compensation.begin(saga_id, saga_type, "cancelled", after_leases=True)
        return
    if nxt is None:
        return
    with db.transaction() as conn:
        # Room for the step to be picked up and run before recovery looks again.
        conn.execute(_WAIT, {"saga_id": saga_id, "patience": patience(saga_type)})
    dispatch.forward(saga_id, saga_type, nxt.index, claim_first=True)
