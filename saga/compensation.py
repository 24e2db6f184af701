"""Reacting to a failed step: pause before the point of no return is passed, else compensate once."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from celery.exceptions import Reject, TimeLimitExceeded
from sqlalchemy import text

from saga import (
    claims,
    commit_seal,
    continuation,
    db,
    disclosure,
    dispatch,
    metrics,
    runner,
    store,
    tenant_slots,
    versions,
)
from saga.actions import TASKS, Action
from saga.claims import patience
from saga.definitions import KILL_GRACE, SagaType, Step
from saga.errors import StepFailed

# Seconds between a task's start and its claim that a hard time limit may still be told apart from a forgery by:
# the limit fires at start + time limit + HARD_LIMIT_GRACE, when a lease taken at the claim has KILL_GRACE left.
LIMIT_SLACK = 5.0

log = logging.getLogger("saga.compensation")

# What an undo makes of the steps not finished yet (needs a `before` CTE saying whether the saga waited for input).
UNFINISHED_STEPS = """
        status = CASE WHEN status = 'pending' AND attempts = 0 AND NOT effect_unknown THEN 'skipped' ELSE 'failed' END,
        effect_unknown = effect_unknown OR NOT (status = 'pending' AND (attempts = 0 OR (SELECT waited FROM before))),
        lease_expires_at = NULL, not_before = NULL"""
_BEGIN = text(f"""
WITH before AS (
    SELECT status = 'awaiting_input' AS waited FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), u AS (
    UPDATE sagas SET status = 'compensating', error = :reason, awaiting = NULL, updated_at = now(),
        deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND status IN ('pending', 'running', 'awaiting_input')
        AND EXISTS (SELECT FROM before)  -- `before` read now: read later, it skips the row changed here
        -- a cancel waits for the step in flight: its outcome decides (a pivot that succeeds refuses the cancel)
        AND NOT (CAST(:after_leases AS boolean) AND EXISTS (
            SELECT FROM saga_steps WHERE saga_id = :saga_id AND lease_expires_at > now()))
        -- a wait for input ends this way only once it is over: input may have come just before
        AND (NOT CAST(:waited_out AS boolean)
             OR (status = 'awaiting_input' AND CAST(awaiting ->> 'until' AS timestamptz) <= now()))
    RETURNING id
), st AS (
    -- never started: skipped; started without an outcome: its effect may exist, unless it is the step that
    -- waited for input, whose attempts said themselves whether they may have left one
    UPDATE saga_steps SET {UNFINISHED_STEPS}
    WHERE saga_id = :saga_id AND saga_id IN (SELECT id FROM u) AND status IN ('pending', 'running')
), e AS (
    INSERT INTO saga_events (saga_id, kind, detail)
    SELECT id, 'compensation_begun', jsonb_build_object('reason', :reason) FROM u
)
SELECT count(*) FROM u
""")

_PAUSE = text("""
WITH u AS (
    UPDATE sagas SET status = 'paused', error = :reason, updated_at = now(), deadline = NULL
    WHERE id = :saga_id AND status = 'running' RETURNING id
)
INSERT INTO saga_events (saga_id, kind, detail)
SELECT id, 'saga_paused', jsonb_build_object('reason', :reason) FROM u
RETURNING id
""")

_LOCK = text("SELECT id FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE")

_SETTLE = text("""
WITH u AS (
    UPDATE sagas SET status = :status, error = :reason, updated_at = now(), deadline = NULL
    WHERE id = :saga_id AND status = 'compensating' RETURNING id
)
INSERT INTO saga_events (saga_id, kind, detail)
SELECT id, :event, jsonb_build_object('reason', :reason) FROM u
RETURNING id
""")


# A rewind's undo is over: the steps it went back over start afresh (a new generation: new idempotency keys) and
# the saga runs forward from the first of them with the input the rewind asked for.
_REWOUND = text("""
WITH u AS (
    UPDATE sagas SET status = 'running', input = rewind -> 'input', large_input = coalesce(rewind -> 'large', large_input),
        rewind = NULL, error = NULL, updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND status = 'compensating' AND rewind IS NOT NULL
    RETURNING id, rewind
), st AS (
    UPDATE saga_steps SET status = 'pending', attempts = 0, compensation_attempts = 0, generation = generation + 1,
        effect_unknown = false, result = NULL, checkpoint = NULL, compensation_result = NULL, error = NULL,
        lease_expires_at = NULL, not_before = NULL, started_at = NULL, finished_at = NULL, compensated_at = NULL
    WHERE saga_id = :saga_id AND idx >= :idx AND EXISTS (SELECT FROM u)
)
INSERT INTO saga_events (saga_id, step, kind, detail)
SELECT :saga_id, :step, 'saga_rewound', jsonb_build_object('fields', rewind -> 'fields') FROM u
RETURNING id
""")


def begin(saga_id: UUID, saga_type: SagaType[Any], reason: str, *, after_leases: bool = False,
          waited_out: bool = False) -> bool:
    """Move the saga to `compensating` and dispatch its compensations; only the first caller does either.

    With `after_leases` (a cancel) nothing happens while an attempt holds a live lease: its end decides.
    With `waited_out` (recovery) only a saga whose wait for input is over is undone.
    """
    with db.transaction() as conn:
        won = conn.execute(_BEGIN, {"saga_id": saga_id, "reason": reason, "pickup": patience(saga_type),
                                    "after_leases": after_leases, "waited_out": waited_out}).scalar()
    if won:
        log.info("saga %s compensating: %s", saga_id, reason)
        dispatch.compensations_or_later(store.load(saga_id), saga_type)
    return bool(won)


def react(saga_id: UUID) -> None:
    """Act on the saga's failed forward step: pause for a retriable one, compensate otherwise."""
    record = store.load(saga_id)
    if record.status not in ("pending", "running"):
        return
    failed = next((s for s in record.steps if s.status == "failed"), None)
    if failed is None:
        return
    reason = disclosure.step_failed(failed.name, failed.error or "")
    if failed.kind == "retriable":
        with db.transaction() as conn:
            paused = conn.execute(_PAUSE, {"saga_id": saga_id, "reason": reason}).first()
        if paused:
            metrics.SAGAS_ENDED.labels(record.type, "paused").inc()
            log.info("saga %s paused: %s", saga_id, reason)
            tenant_slots.ended(saga_id, record.tenant)
    else:
        begin(saga_id, versions.type_of(record), reason)


def finish(saga_id: UUID) -> None:
    """Settle a compensating saga once no compensation is owed or running: `compensated`, or `failed` with
    the reason; after a rewind's undo, run it forward again instead. The saga row is locked first, so no
    compensation can be claimed while this decides."""
    with db.transaction() as conn:
        conn.execute(_LOCK, {"saga_id": saga_id})
        record = store.load(saga_id, conn=conn)
        if record.status != "compensating":
            return
        if claims.defer_to_live_lease(conn, saga_id):
            return  # an attempt still holds its lease: it may yet undo its step, so it decides, not us
        saga_type = versions.type_of(record)
        if dispatch.owed(record, saga_type):
            return  # another chain still owes compensations; recovery watches the deadline meanwhile
        stuck = [s for s in record.undoing if dispatch.needs_undo(s, saga_type)]
        rewind = record.rewind
        if stuck:
            status, event = "failed", "saga_failed"
            reason = disclosure.gave_up([(s.name, s.error or "") for s in stuck], rewind["step"] if rewind else None)
        elif rewind:
            conn.execute(_REWOUND, {"saga_id": saga_id, "idx": rewind["to"], "step": rewind["step"],
                                    "pickup": patience(saga_type)})
        else:
            status, event, reason = "compensated", "saga_compensated", record.error
        if stuck or not rewind:
            conn.execute(_SETTLE, {"saga_id": saga_id, "status": status, "event": event, "reason": reason})
    if rewind and not stuck:
        log.info("saga %s rewound to %s; running forward again", saga_id, rewind["step"])
        runner.send_forward(saga_id, record.type, rewind["to"], record.version)
    else:
        metrics.SAGAS_ENDED.labels(record.type, status).inc()
        tenant_slots.ended(saga_id, record.tenant)


def on_error(saga_id: UUID, task_name: str, task_id: str, exc: BaseException, kwargs: dict[str, Any]) -> None:
    """The chain errback: record a failure the step task could not record itself, then react."""
    if task_name not in TASKS:
        log.error("saga %s: task %s failed: %r; recovery will look at the saga", saga_id, task_name, exc)
        return
    step, action = TASKS[task_name]
    at = kwargs.get("at")
    if action.forward and isinstance(at, str) and at != step.name:  # a retry for a step run by continuation
        later = next((s for s in step.saga.steps[step.index + 1:] if s.name == at), None)
        if later is None:
            log.error("saga %s: task %s names step %r, not one after it; ignored", saga_id, task_name, at)
            return
        step, task_id = later, continuation.task_id(task_id, later, task_name)
    if isinstance(exc, Reject):
        # The task could not send its own retry (the broker is down). The ledger still holds what is owed and
        # recovery sends it later; a finished body's result is worth one more try to record now.
        pending = kwargs.get("commit")
        if pending:
            try:
                sealed = commit_seal.opened(saga_id, step.name, action.name, pending)
                if sealed is None:
                    commit_seal.refused(saga_id, step.saga.name, step.name, action.name)
                    return
                claims.commit_success(saga_id, step, *sealed, action)
            except Exception as error:  # noqa: BLE001 - the ledger may be down too: the crash window remains
                log.warning("saga %s %s: result still not recorded (%s)", saga_id, step.name, error)
        return
    if isinstance(exc, TimeLimitExceeded):
        record_lost_attempt(saga_id, step, action, task_id, exc)
    elif not isinstance(exc, StepFailed):
        # Anything else reached here from outside the body (or from a message somebody made up, whose task id
        # and errback say nothing true): the attempt's lease runs out and recovery takes the step on.
        log.error("saga %s %s %s: task %s failed outside its body (%r); its lease ends and recovery takes it on",
                  saga_id, action.name, step.name, task_id, exc)
    if action.forward:
        react(saga_id)


def record_lost_attempt(saga_id: UUID, step: Step, action: Action, task_id: str, exc: TimeLimitExceeded) -> None:
    """A hard time limit (the errback's, or continuation's for a step a message ran after its own): count the
    attempt, with its outcome unknown. Only an attempt that has really run that
    long counts (its lease is about to end): a made-up message with that task id cannot fail a live attempt."""
    held = claims.current_attempt(saga_id, step, task_id, action, ending_within=KILL_GRACE + LIMIT_SLACK)
    if held is None and action.forward and step.transactional:
        # Taken only with its commit, the attempt left no trace: take the step now, to count it.
        taken = claims.claim(saga_id, step, task_id, action)
        held = claims.Held(taken.token, taken.attempt) if isinstance(taken, claims.Claim) else None  # type: ignore[arg-type]
    if held is None:
        return
    token, attempt = held.token, held.attempt
    policy = action.policy(step)
    # Celery runs this errback before it kills a body past its hard limit: nothing retries or undoes the step
    # until the process is surely gone.
    hold = KILL_GRACE if isinstance(exc, TimeLimitExceeded) else 0.0
    retry_in = max(policy.delay(attempt), hold) if attempt < policy.max_attempts else None
    recorded = claims.record_failure(
        saga_id, step, token, action, disclosure.as_recorded(exc), retry_in=retry_in,
        effect_unknown=not action.of(step).transactional, hold=hold,
    )
    if recorded is None:
        return
    if action.forward and recorded.cancel_requested:
        begin(saga_id, step.saga, "cancelled", after_leases=True)
    elif action.forward and retry_in is not None:
        dispatch.forward(saga_id, step.saga, step.index, countdown=retry_in, claim_first=True)
    elif not action.forward:
        dispatch.compensations(store.load(saga_id), step.saga, countdown=retry_in)
