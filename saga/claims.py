"""Claiming a step, committing its outcome, and fencing out workers that lost their lease.

Every function here is one SQL statement, atomic by itself (run in autocommit unless it joins a
transactional step's transaction): the hot path of a step is a claim and a commit, nothing else.
A transactional forward step needs no lease at all: it reads what its body needs, runs the body, then
claims and commits in one statement of the same transaction, so a duplicate delivery's writes roll back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import Connection, text

from saga import db
from saga.definitions import SagaType, Step
from saga.retry import RetryPolicy
from saga.settings import get_settings


@dataclass(frozen=True)
class Claim:
    """This execution owns the step until `token` is superseded; a transactional forward step's claim is
    taken only with its commit, so until then its token is None."""

    token: int | None
    attempt: int
    input: dict[str, Any]
    results: dict[str, Any]


@dataclass(frozen=True)
class Refusal:
    """Why a step could not be claimed."""

    saga_status: str
    cancel_requested: bool
    step_status: str
    attempts: int
    wait: float  # seconds until the holder's lease ends or the backoff elapses; 0 if neither


Mode = Literal["forward", "compensation"]

# Every statement names the saga id in its step predicates (`st.saga_id = :saga_id`), never only through a
# CTE join: a prepared statement's generic plan, made while the tables were small, may otherwise scan every
# step with the same index, and grow slower with the ledger.

_CLAIMABLE = """
    coalesce(st.lease_expires_at, '-infinity') < now() AND coalesce(st.not_before, '-infinity') <= now()
"""
_FORWARD_CLAIM = text(f"""
WITH s AS (
    SELECT id, input FROM sagas
    WHERE id = :saga_id AND status IN ('pending', 'running') AND NOT cancel_requested FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'running', attempts = st.attempts + 1, fencing_token = st.fencing_token + 1,
        lease_expires_at = now() + make_interval(secs => :lease), not_before = NULL, task_id = :task_id,
        started_at = coalesce(st.started_at, now())
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status IN ('pending', 'running')
        AND st.attempts < :max_attempts AND {_CLAIMABLE}
    RETURNING st.fencing_token, st.attempts
), u AS (
    UPDATE sagas SET status = 'running', updated_at = now()
    WHERE id = :saga_id AND EXISTS (SELECT FROM c) AND status = 'pending'
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_started', jsonb_build_object('attempt', c.attempts, 'task_id', :task_id) FROM c
)
SELECT c.fencing_token, c.attempts, s.input,
    (SELECT coalesce(jsonb_object_agg(name, result), '{{}}') FROM saga_steps
     WHERE saga_id = :saga_id AND idx < :idx AND status = 'succeeded') AS results
FROM c, s
""")
_COMPENSATION_CLAIM = text(f"""
WITH s AS (
    SELECT id, input FROM sagas WHERE id = :saga_id AND status = 'compensating' FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'compensating', compensation_attempts = st.compensation_attempts + 1,
        fencing_token = st.fencing_token + 1, lease_expires_at = now() + make_interval(secs => :lease),
        not_before = NULL, task_id = :task_id
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx
        AND (st.status IN ('succeeded', 'compensating') OR (st.status = 'failed' AND st.effect_unknown))
        AND st.compensation_attempts < :max_attempts AND {_CLAIMABLE}
    RETURNING st.fencing_token, st.compensation_attempts
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'compensation_started',
        jsonb_build_object('attempt', c.compensation_attempts, 'task_id', :task_id) FROM c
)
SELECT c.fencing_token, c.compensation_attempts, s.input,
    (SELECT coalesce(jsonb_object_agg(name, result), '{{}}') FROM saga_steps
     WHERE saga_id = :saga_id AND result IS NOT NULL) AS results
FROM c, s
""")
# Where a step stands, and what its body would need: explains a refusal, and decides whether a transactional
# forward step may run before it takes anything.
_LOOK = text("""
SELECT sa.status, sa.cancel_requested, st.status, st.attempts, st.compensation_attempts,
    greatest(0, extract(epoch FROM st.lease_expires_at - now()), extract(epoch FROM st.not_before - now())) AS wait,
    sa.input,
    (SELECT coalesce(jsonb_object_agg(name, result), '{}') FROM saga_steps
     WHERE saga_id = :saga_id AND idx < :idx AND status = 'succeeded') AS results
FROM sagas sa JOIN saga_steps st ON st.saga_id = sa.id
WHERE sa.id = :saga_id AND st.idx = :idx
""")
# The claim and the commit of a transactional forward step at once, after its body (so the clock is the
# statement's, not the transaction's); when the step cannot be taken the caller rolls the whole transaction
# back. Like every claim it locks the saga row before the step row, the order compensation and the operator
# actions follow too.
_FORWARD_CLAIM_AND_COMMIT = text(f"""
WITH s AS (
    SELECT id FROM sagas
    WHERE id = :saga_id AND status IN ('pending', 'running') AND NOT cancel_requested FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'succeeded', attempts = st.attempts + 1, fencing_token = st.fencing_token + 1,
        task_id = :task_id, started_at = coalesce(st.started_at, now()), finished_at = statement_timestamp(),
        result = CAST(:result AS jsonb), error = NULL, lease_expires_at = NULL, not_before = NULL
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status IN ('pending', 'running')
        AND st.attempts < :max_attempts AND {_CLAIMABLE.replace('now()', 'statement_timestamp()')}
    RETURNING st.attempts, st.fencing_token
), u AS (
    UPDATE sagas SET updated_at = statement_timestamp(),
        status = CASE WHEN :last THEN 'completed' ELSE 'running' END,
        deadline = CASE WHEN :last THEN NULL ELSE statement_timestamp() + make_interval(secs => :pickup) END
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING status
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail, created_at)
    SELECT :saga_id, :name, 'step_started', jsonb_build_object('attempt', c.attempts, 'task_id', :task_id), now()
    FROM c
    UNION ALL
    SELECT :saga_id, :name, 'step_succeeded', jsonb_build_object('token', c.fencing_token), statement_timestamp()
    FROM c
    UNION ALL
    SELECT :saga_id, NULL, 'saga_completed', '{{}}'::jsonb, statement_timestamp() FROM u WHERE u.status = 'completed'
)
SELECT status FROM u
""")


def patience(saga_type: SagaType[Any]) -> float:
    """Seconds a saga may go without progress before recovery looks at it: pickup of its next message plus
    the longest lease one of its steps can hold."""
    settings = get_settings()
    return settings.pickup_timeout + settings.lease_margin + saga_type.longest_lease


def _policy(step: Step, mode: Mode) -> RetryPolicy:
    return step.retry if mode == "forward" else step.compensation.retry  # type: ignore[union-attr]


def claim(
    saga_id: UUID, step: Step, task_id: str, mode: Mode, conn: Connection | None = None,
) -> Claim | Refusal | None:
    """Take the step for this execution, or say why not; None if the saga or step does not exist."""
    policy = _policy(step, mode)
    lease = step.lease_seconds if mode == "forward" else step.compensation_lease_seconds
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "task_id": task_id, "lease": lease,
        "max_attempts": policy.max_attempts,
    }
    with db.autocommit(conn) as tx:
        row = db.fetchone(tx, _FORWARD_CLAIM if mode == "forward" else _COMPENSATION_CLAIM, params)
        if row is not None:
            return Claim(token=row[0], attempt=row[1], input=row[2], results=row[3])
        return _refusal(_look(tx, saga_id, step), mode)


def preview(saga_id: UUID, step: Step, conn: Connection) -> Claim | Refusal | None:
    """For a transactional forward step: its input and earlier results if it may run now, else why not;
    None if the saga or step does not exist. Nothing is taken until `claim_and_commit`."""
    row = _look(conn, saga_id, step)
    why = _refusal(row, "forward")
    if (why is not None and why.saga_status in ("pending", "running") and not why.cancel_requested
            and why.step_status in ("pending", "running") and why.attempts < step.retry.max_attempts
            and why.wait == 0):
        return Claim(token=None, attempt=why.attempts + 1, input=row[6], results=row[7])  # type: ignore[index]
    return why


def claim_and_commit(saga_id: UUID, step: Step, task_id: str, result_json: str, conn: Connection) -> str | None:
    """Take and complete a transactional forward step in its own transaction; returns the saga's status, or
    None if it could not be taken (another delivery committed it, or the saga moved on): roll back then."""
    row = db.fetchone(conn, _FORWARD_CLAIM_AND_COMMIT, {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "task_id": task_id, "result": result_json,
        "max_attempts": step.retry.max_attempts, "pickup": patience(step.saga),
        "last": step.index == len(step.saga.steps) - 1,
    })
    return row[0] if row else None


def explain(saga_id: UUID, step: Step, mode: Mode) -> Refusal | None:
    """Why the step cannot be taken now; None if the saga or step does not exist."""
    with db.autocommit() as conn:
        return _refusal(_look(conn, saga_id, step), mode)


def _look(conn: Connection, saga_id: UUID, step: Step) -> tuple[Any, ...] | None:
    return db.fetchone(conn, _LOOK, {"saga_id": saga_id, "idx": step.index})


def _refusal(why: tuple[Any, ...] | None, mode: Mode) -> Refusal | None:
    if why is None:
        return None
    return Refusal(
        saga_status=why[0], cancel_requested=why[1], step_status=why[2],
        attempts=why[3] if mode == "forward" else why[4], wait=float(why[5]),
    )


_FORWARD_SUCCESS = text("""
WITH c AS (
    UPDATE saga_steps SET status = 'succeeded', result = CAST(:result AS jsonb), error = NULL, finished_at = statement_timestamp(),
        lease_expires_at = NULL
    WHERE saga_id = :saga_id AND idx = :idx AND status = 'running' AND fencing_token = :token
    RETURNING saga_id
), u AS (
    UPDATE sagas SET updated_at = statement_timestamp(),
        status = CASE WHEN :last AND NOT cancel_requested THEN 'completed' ELSE status END,
        deadline = CASE WHEN :last AND NOT cancel_requested THEN NULL
                        ELSE statement_timestamp() + make_interval(secs => :pickup) END
    WHERE id = :saga_id AND id IN (SELECT saga_id FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_succeeded', jsonb_build_object('token', :token) FROM c
    UNION ALL
    SELECT :saga_id, NULL, 'saga_completed', '{}'::jsonb FROM u WHERE u.status = 'completed'
)
SELECT status, cancel_requested FROM u
""")
_COMPENSATION_SUCCESS = text("""
WITH c AS (
    UPDATE saga_steps SET status = 'compensated', compensated_at = statement_timestamp(), lease_expires_at = NULL, error = NULL
    WHERE saga_id = :saga_id AND idx = :idx AND status = 'compensating' AND fencing_token = :token
    RETURNING saga_id
), u AS (
    UPDATE sagas SET updated_at = statement_timestamp(), deadline = statement_timestamp() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND id IN (SELECT saga_id FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_compensated', jsonb_build_object('token', :token) FROM c
)
SELECT status, cancel_requested FROM u
""")


def commit_success(
    saga_id: UUID, step: Step, token: int, result_json: str, mode: Mode, conn: Connection | None = None,
) -> tuple[str, bool] | None:
    """Record the outcome (the result as JSON text); returns (saga status, cancel requested), or None if the
    lease was lost."""
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "token": token, "pickup": patience(step.saga),
        "result": result_json, "last": step.index == len(step.saga.steps) - 1,
    }
    with db.autocommit(conn) as tx:
        row = db.fetchone(tx, _FORWARD_SUCCESS if mode == "forward" else _COMPENSATION_SUCCESS, params)
    return (row[0], row[1]) if row else None


_FAILURE = text("""
WITH c AS (
    UPDATE saga_steps SET
        status = CASE WHEN CAST(:retry_in AS double precision) IS NULL THEN 'failed' WHEN CAST(:mode AS text) = 'forward' THEN 'pending'
                      ELSE 'compensating' END,
        error = CAST(:error AS text), lease_expires_at = NULL,
        effect_unknown = CASE WHEN CAST(:retry_in AS double precision) IS NULL THEN (effect_unknown OR CAST(:effect_unknown AS boolean)) ELSE effect_unknown END,
        not_before = CASE WHEN CAST(:retry_in AS double precision) IS NULL THEN NULL ELSE now() + make_interval(secs => CAST(:retry_in AS double precision)) END,
        finished_at = CASE WHEN CAST(:retry_in AS double precision) IS NULL AND CAST(:mode AS text) = 'forward' THEN now() ELSE finished_at END,
        -- a compensation that gave up has no attempts left, so only an operator re-runs it
        compensation_attempts = CASE WHEN CAST(:retry_in AS double precision) IS NULL AND CAST(:mode AS text) = 'compensation'
                                     THEN greatest(compensation_attempts, :max_attempts)
                                     ELSE compensation_attempts END
    WHERE saga_id = :saga_id AND idx = :idx AND status = :held AND fencing_token = :token
    RETURNING saga_id
), u AS (
    UPDATE sagas SET updated_at = now(),
        deadline = now() + make_interval(secs => coalesce(CAST(:retry_in AS double precision), 0) + :pickup)
    WHERE id = :saga_id AND id IN (SELECT saga_id FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, CAST(:event AS text),
        jsonb_build_object('error', CAST(:error AS text), 'retry_in', CAST(:retry_in AS double precision), 'effect_unknown', CAST(:effect_unknown AS boolean)) FROM c
)
SELECT status, cancel_requested FROM u
""")


def record_failure(
    saga_id: UUID, step: Step, token: int, mode: Mode, error: str, *, retry_in: float | None,
    effect_unknown: bool,
) -> tuple[str, bool] | None:
    """Record a failed attempt: scheduled for retry after `retry_in` seconds, or final when it is None.

    Returns (saga status, cancel requested), or None if the lease was lost.
    """
    if retry_in is None:
        event = "step_failed" if mode == "forward" else "compensation_failed"
    else:
        event = "step_attempt_failed" if mode == "forward" else "compensation_attempt_failed"
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "token": token, "mode": mode,
        "held": "running" if mode == "forward" else "compensating", "error": error[:2000],
        "retry_in": retry_in, "effect_unknown": effect_unknown or mode == "compensation", "pickup": patience(step.saga),
        "event": event, "max_attempts": _policy(step, mode).max_attempts,
    }
    with db.autocommit() as conn:
        row = conn.execute(_FAILURE, params).first()
    return (row[0], row[1]) if row else None


_GIVE_UP = text(f"""
WITH c AS (
    UPDATE saga_steps st SET status = 'failed', effect_unknown = true, error = CAST(:error AS text), lease_expires_at = NULL,
        not_before = NULL, fencing_token = st.fencing_token + 1,
        finished_at = CASE WHEN CAST(:mode AS text) = 'forward' THEN now() ELSE st.finished_at END
    WHERE st.saga_id = :saga_id AND st.idx = :idx AND st.status = ANY(:held) AND {_CLAIMABLE}
        AND (CASE WHEN CAST(:mode AS text) = 'forward' THEN st.attempts ELSE st.compensation_attempts END) >= :max_attempts
    RETURNING saga_id
), u AS (
    UPDATE sagas SET updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND id IN (SELECT saga_id FROM c)
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, CAST(:event AS text), jsonb_build_object('error', CAST(:error AS text), 'effect_unknown', true) FROM c
)
SELECT count(*) FROM c
""")


def give_up(saga_id: UUID, step: Step, mode: Mode) -> bool:
    """Fail a step whose attempts were all used without a verdict (each crashed or timed out its worker)."""
    policy = _policy(step, mode)
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "mode": mode, "pickup": patience(step.saga),
        "held": ["pending", "running"] if mode == "forward" else ["succeeded", "compensating", "failed"],
        "max_attempts": policy.max_attempts,
        "event": "step_failed" if mode == "forward" else "compensation_failed",
        "error": f"all {policy.max_attempts} attempts ended without an outcome (worker lost or timed out)",
    }
    with db.autocommit() as conn:
        return bool(conn.execute(_GIVE_UP, params).scalar())


def current_token(saga_id: UUID, step: Step, task_id: str, mode: Mode) -> tuple[int, int] | None:
    """(fencing token, attempt) held by Celery task `task_id`, if that task still holds the step."""
    attempts = "attempts" if mode == "forward" else "compensation_attempts"
    with db.autocommit() as conn:
        row = conn.execute(
            text(f"SELECT fencing_token, {attempts} FROM saga_steps WHERE saga_id = :s AND idx = :i "
                 "AND task_id = :t AND status = :held AND lease_expires_at IS NOT NULL"),
            {"s": saga_id, "i": step.index, "t": task_id, "held": "running" if mode == "forward" else "compensating"},
        ).first()
    return (row[0], row[1]) if row else None
