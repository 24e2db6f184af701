"""Claiming a step, checkpointing and committing its outcome, and fencing out workers that lost their lease.

Every function here is one SQL statement, atomic by itself (run in autocommit unless it joins a
transactional step's transaction): the hot path of a step is a claim and a commit, nothing else.
A transactional forward step needs no lease at all: it reads what its body needs, runs the body, then
claims and commits in one statement of the same transaction, so a duplicate delivery's writes roll back.

Lock order, everywhere: the saga row first (`FOR NO KEY UPDATE`), then its step rows. Each statement that
changes both locks the saga in a first CTE that the step update joins, so the step row is only locked once
the saga row is held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from saga import db, metrics
from saga.actions import COMPENSATION, FORWARD, Action
from saga.definitions import SagaType, Step
from saga.settings import get_settings
from saga.states import StepKind


@dataclass(frozen=True)
class Claim:
    """This execution owns the step until `token` is superseded; a transactional forward step's claim is
    taken only with its commit, so until then its token is None."""

    token: int | None
    attempt: int
    input: dict[str, Any]
    results: dict[str, Any]
    checkpoint: dict[str, Any]
    tenant: str = ""
    # The large input fields the body needs (`needs=`); None when it needs none.
    large_input: dict[str, Any] | None = None
    # How many times a rewind reset the step: part of its idempotency key, since each run is a new one.
    generation: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why a step could not be claimed."""

    saga_status: str
    cancel_requested: bool
    step_status: str
    attempts: int
    wait: float  # seconds until the holder's lease ends or the backoff elapses; 0 if neither
    effect_unknown: bool
    foreign: bool = False  # the saga runs by another version of its type (or other steps under this one)
    # A forward step whose earlier steps have not all succeeded; a compensation with a later step's undo still
    # owed, or before a rewind's step.
    out_of_turn: bool = False


@dataclass(frozen=True)
class Committed:
    """A step's outcome is recorded: the saga's status then, and whether a cancel is still to be honoured. With
    `next`, the same statement also claimed the saga's next step for this execution (continuation)."""

    saga_status: str
    cancel_requested: bool = False
    next: Claim | None = None


# Every statement names the saga id in its step predicates (`st.saga_id = :saga_id`), never only through a
# CTE join: a prepared statement's generic plan, made while the tables were small, may otherwise scan every
# step with the same index, and grow slower with the ledger.

# The saga started on the version of its type that this step belongs to, with the same steps: a worker never
# runs a saga by another version's steps.
_OURS = "version = :version AND coalesce(fingerprint, :fingerprint) = :fingerprint"
_CLAIMABLE = """
    coalesce(st.lease_expires_at, '-infinity') < now() AND coalesce(st.not_before, '-infinity') <= now()
"""
# Every earlier step succeeded: a message for a later step (forged, or stale after a rewind) never runs it early.
_IN_TURN = """
    NOT EXISTS (SELECT FROM saga_steps e WHERE e.saga_id = :saga_id AND e.idx < :idx AND e.status <> 'succeeded')
"""
# Undo goes newest first, and a rewind undoes only the steps from the one it goes back to: no later step's effect
# is still owed an undo (it may exist, and its compensation has attempts left: `:undo_attempts` holds each step's
# most, 0 for none), and the step is not before the rewind's.
_UNDO_IN_TURN = """
    NOT EXISTS (SELECT FROM saga_steps l WHERE l.saga_id = :saga_id AND l.idx > :idx
        AND (l.status IN ('succeeded', 'compensating') OR (l.status = 'failed' AND l.effect_unknown))
        AND l.compensation_attempts < (CAST(:undo_attempts AS int[]))[l.idx + 1])
    AND NOT EXISTS (SELECT FROM sagas r WHERE r.id = :saga_id AND CAST(r.rewind ->> 'to' AS int) > :idx)
"""
_FORWARD_CLAIM = text(f"""
WITH s AS (
    SELECT id, input, tenant FROM sagas
    WHERE id = :saga_id AND status IN ('pending', 'running') AND NOT cancel_requested AND {_OURS} FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'running', attempts = st.attempts + 1, fencing_token = st.fencing_token + 1,
        lease_expires_at = now() + make_interval(secs => :lease), not_before = NULL, task_id = :task_id,
        started_at = coalesce(st.started_at, now()),
        -- still 'running': the attempt before never reported (crashed, frozen, cut off), so it may have acted
        effect_unknown = st.effect_unknown OR st.status = 'running'
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status IN ('pending', 'running')
        AND st.attempts < :max_attempts AND {_CLAIMABLE} AND {_IN_TURN}
    RETURNING st.fencing_token, st.attempts, st.checkpoint, st.generation
), u AS (
    UPDATE sagas SET status = 'running', updated_at = now()
    WHERE id = :saga_id AND EXISTS (SELECT FROM c) AND status = 'pending'
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_started',
        jsonb_build_object('attempt', c.attempts, 'task_id', :task_id, 'redelivered', :redelivered) FROM c
)
SELECT c.fencing_token AS token, c.attempts AS attempt, s.input,
    (SELECT coalesce(jsonb_object_agg(name, result), '{{}}') FROM saga_steps
     WHERE saga_id = :saga_id AND idx < :idx AND status = 'succeeded') AS results,
    coalesce(c.checkpoint, '{{}}') AS checkpoint, s.tenant,
    (SELECT large_input FROM sagas WHERE id = :saga_id AND CAST(:large AS boolean)) AS large_input, c.generation
FROM c, s
""")
_COMPENSATION_CLAIM = text(f"""
WITH s AS (
    SELECT id, input, tenant FROM sagas WHERE id = :saga_id AND status = 'compensating' AND {_OURS}
    FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'compensating', compensation_attempts = st.compensation_attempts + 1,
        fencing_token = st.fencing_token + 1, lease_expires_at = now() + make_interval(secs => :lease),
        not_before = NULL, task_id = :task_id
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx
        AND (st.status IN ('succeeded', 'compensating') OR (st.status = 'failed' AND st.effect_unknown))
        AND st.compensation_attempts < :max_attempts AND {_CLAIMABLE} AND {_UNDO_IN_TURN}
    RETURNING st.fencing_token, st.compensation_attempts, st.checkpoint, st.generation
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'compensation_started',
        jsonb_build_object('attempt', c.compensation_attempts, 'task_id', :task_id, 'redelivered', :redelivered)
    FROM c
)
SELECT c.fencing_token AS token, c.compensation_attempts AS attempt, s.input,
    (SELECT coalesce(jsonb_object_agg(name, result), '{{}}') FROM saga_steps
     WHERE saga_id = :saga_id AND result IS NOT NULL) AS results,
    coalesce(c.checkpoint, '{{}}') AS checkpoint, s.tenant,
    (SELECT large_input FROM sagas WHERE id = :saga_id AND CAST(:large AS boolean)) AS large_input, c.generation
FROM c, s
""")
_CLAIM = {FORWARD: _FORWARD_CLAIM, COMPENSATION: _COMPENSATION_CLAIM}
# Where a step stands, and what its body would need: explains a refusal, and decides whether a transactional
# forward step may run before it takes anything.
_LOOK = text(f"""
SELECT sa.status AS saga_status, sa.cancel_requested, st.status AS step_status, st.attempts,
    st.compensation_attempts,
    greatest(0, extract(epoch FROM st.lease_expires_at - now()), extract(epoch FROM st.not_before - now())) AS wait,
    sa.input,
    (SELECT coalesce(jsonb_object_agg(name, result), '{{}}') FROM saga_steps
     WHERE saga_id = :saga_id AND idx < :idx AND status = 'succeeded') AS results,
    coalesce(st.checkpoint, '{{}}') AS checkpoint, st.effect_unknown, sa.tenant,
    (SELECT large_input FROM sagas WHERE id = :saga_id AND CAST(:large AS boolean)) AS large_input, st.generation,
    (sa.version = :version AND coalesce(sa.fingerprint, :fingerprint) = :fingerprint) AS ours, {_IN_TURN} AS in_turn,
    {_UNDO_IN_TURN} AS undo_in_turn
FROM sagas sa JOIN saga_steps st ON st.saga_id = sa.id
WHERE sa.id = :saga_id AND st.idx = :idx
""")
# The claim and the commit of a transactional forward step at once, after its body (so the clock is the
# statement's, not the transaction's); when the step cannot be taken the caller rolls the whole transaction
# back.
_FORWARD_CLAIM_AND_COMMIT_CTES = f"""
WITH s AS (
    SELECT id FROM sagas
    WHERE id = :saga_id AND status IN ('pending', 'running') AND NOT cancel_requested AND {_OURS} FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'succeeded', attempts = st.attempts + 1, fencing_token = st.fencing_token + 1,
        task_id = :task_id, started_at = coalesce(st.started_at, now()), finished_at = statement_timestamp(),
        result = CAST(:result AS jsonb), error = NULL, lease_expires_at = NULL, not_before = NULL
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status IN ('pending', 'running')
        AND st.attempts < :max_attempts AND {_CLAIMABLE.replace('now()', 'statement_timestamp()')} AND {_IN_TURN}
    RETURNING st.attempts, st.fencing_token
), u AS (
    UPDATE sagas SET updated_at = statement_timestamp(),
        status = CASE WHEN :last THEN 'completed' ELSE 'running' END,
        deadline = CASE WHEN :last THEN NULL ELSE statement_timestamp() + make_interval(secs => :pickup) END
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail, created_at)
    SELECT :saga_id, :name, 'step_started', jsonb_build_object('attempt', c.attempts, 'task_id', :task_id), now()
    FROM c
    UNION ALL
    SELECT :saga_id, :name, 'step_succeeded', jsonb_build_object('token', c.fencing_token), statement_timestamp()
    FROM c
    UNION ALL
    SELECT :saga_id, NULL, 'saga_completed', '{{}}'::jsonb, statement_timestamp() FROM u WHERE u.status = 'completed'
)"""
_FORWARD_CLAIM_AND_COMMIT = text(_FORWARD_CLAIM_AND_COMMIT_CTES + "\nSELECT status, cancel_requested FROM u")


def patience(saga_type: SagaType[Any]) -> float:
    """Seconds a saga may go without progress before recovery looks at it: pickup of its next message plus
    the longest lease one of its steps can hold."""
    settings = get_settings()
    return settings.pickup_timeout + settings.lease_margin + saga_type.longest_lease


def claim(
    saga_id: UUID, step: Step, task_id: str, action: Action, conn: Connection | None = None, *,
    redelivered: bool = False,
) -> Claim | Refusal | None:
    """Take the step for this execution, or say why not; None if the saga or step does not exist."""
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "task_id": task_id, "lease": action.lease(step),
        "max_attempts": action.policy(step).max_attempts, "redelivered": redelivered,
        "large": bool(action.needs(step)), **_fences(step),
    }
    with db.autocommit(conn) as tx:
        started = time.perf_counter()
        row = db.fetchone(tx, _CLAIM[action], params)
        metrics.CLAIM_SECONDS.labels(action.name).observe(time.perf_counter() - started)
        if row is not None:
            return Claim(token=row.token, attempt=row.attempt, input=row.input, results=row.results,
                         checkpoint=row.checkpoint, tenant=row.tenant, large_input=row.large_input,
                         generation=row.generation)
        return _refusal(_look(tx, saga_id, step), action)


def preview(saga_id: UUID, step: Step, conn: Connection) -> Claim | Refusal | None:
    """For a transactional forward step: its input and earlier results if it may run now, else why not;
    None if the saga or step does not exist. Nothing is taken until `claim_and_commit`.

    A step still `running` with no live lease was claimed up front by an attempt that never reported (it
    crashed): that is a refusal, and the caller claims up front too, so every crash is counted.
    """
    row = _look(conn, saga_id, step, large=bool(step.needs))
    why = _refusal(row, FORWARD)
    if (why is not None and not why.foreign and not why.out_of_turn and why.saga_status in ("pending", "running") and not why.cancel_requested
            and why.step_status == "pending" and why.attempts < step.retry.max_attempts and why.wait == 0):
        return Claim(token=None, attempt=why.attempts + 1, input=row.input, results=row.results,  # type: ignore[union-attr]
                     checkpoint=row.checkpoint, tenant=row.tenant, large_input=row.large_input,  # type: ignore[union-attr]
                     generation=row.generation)  # type: ignore[union-attr]
    return why


def claim_and_commit(saga_id: UUID, step: Step, task_id: str, result_json: str, conn: Connection, *,
                     then: Then | None = None, claimed: Claim | None = None) -> Committed | None:
    """Take and complete a transactional forward step in its own transaction, or None if it could not be taken
    (another delivery committed it, or the saga moved on): roll back then. With `then`, claim that next step too,
    for the body that ran under `claimed` (whose input and results, with this result, it gets)."""
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "task_id": task_id, "result": result_json,
        "max_attempts": step.retry.max_attempts, "pickup": patience(step.saga),
        "last": step.index == len(step.saga.steps) - 1, **_fences(step), **(then.params() if then else {}),
    }
    row = db.fetchone(conn, _FORWARD_CLAIM_AND_COMMIT_THEN_CLAIM if then else _FORWARD_CLAIM_AND_COMMIT, params)
    return _committed(row, then, claimed) if row else None


def explain(saga_id: UUID, step: Step, action: Action) -> Refusal | None:
    """Why the step cannot be taken now; None if the saga or step does not exist."""
    with db.autocommit() as conn:
        return _refusal(_look(conn, saga_id, step), action)


def _look(conn: Connection, saga_id: UUID, step: Step, large: bool = False) -> Any:
    """The step's row and its saga's; with `large`, the large input fields too (for a body about to run)."""
    return db.fetchone(conn, _LOOK, {"saga_id": saga_id, "idx": step.index, "large": large, **_fences(step)})


def _fences(step: Step) -> dict[str, Any]:
    """The parameters that fence a statement to sagas of the step's own version of its type, and that keep its
    undo in turn."""
    return {"version": step.saga.version, "fingerprint": step.saga.fingerprint, "undo_attempts": step.saga.undo_attempts}


def _refusal(why: Any, action: Action) -> Refusal | None:
    """A `_LOOK` row as the reason this action of a step cannot be taken."""
    if why is None:
        return None
    return Refusal(
        saga_status=why.saga_status, cancel_requested=why.cancel_requested, step_status=why.step_status,
        attempts=getattr(why, action.attempts), wait=float(why.wait),
        effect_unknown=why.effect_unknown, foreign=not why.ours,
        out_of_turn=not (why.in_turn if action.forward else why.undo_in_turn),
    )


# Only the step row changes, so no saga lock is needed. Unlike a commit, a checkpoint also needs a live lease
# (by the clock, when the row is finally updated): it comes before an effect, and a body whose lease ended must
# not go on to act.
_CHECKPOINT = text("""
WITH c AS (
    UPDATE saga_steps SET checkpoint = coalesce(checkpoint, '{}'::jsonb) || CAST(:values AS jsonb)
    WHERE saga_id = :saga_id AND idx = :idx AND status = :held AND fencing_token = :token
        AND lease_expires_at > clock_timestamp()
    RETURNING saga_id
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, CAST(:event AS text), jsonb_build_object('values', CAST(:values AS jsonb), 'token', :token) FROM c
)
SELECT count(*) FROM c
""")


def checkpoint(saga_id: UUID, step: Step, token: int, action: Action, values_json: str) -> bool:
    """Merge `values_json` (a JSON object) into the step's checkpoint; False if this attempt lost its lease."""
    params = {"saga_id": saga_id, "idx": step.index, "name": step.name, "token": token, "held": action.held,
              "values": values_json, "event": action.event("checkpoint")}
    with db.autocommit() as conn:
        return bool(db.fetchone(conn, _CHECKPOINT, params)[0])  # type: ignore[index]


# A cancel asked while a step past the point of no return (pivot or retriable) was running is refused when
# that step succeeds: the saga goes forward. A cancel asked during a compensable step is honoured by the caller.
_FORWARD_SUCCESS_CTES = """
WITH s AS (
    SELECT id, cancel_requested AND NOT CAST(:pivotal AS boolean) AS undo,
        cancel_requested AND CAST(:pivotal AS boolean) AS refused
    FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'succeeded', result = CAST(:result AS jsonb), error = NULL,
        finished_at = statement_timestamp(), lease_expires_at = NULL
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status = 'running'
        AND st.fencing_token = :token
    RETURNING st.saga_id
), u AS (
    UPDATE sagas sa SET updated_at = statement_timestamp(), cancel_requested = s.undo,
        status = CASE WHEN :last AND NOT s.undo THEN 'completed' ELSE sa.status END,
        deadline = CASE WHEN :last AND NOT s.undo THEN NULL
                        ELSE statement_timestamp() + make_interval(secs => :pickup) END
    FROM s WHERE sa.id = :saga_id AND s.id = sa.id AND EXISTS (SELECT FROM c)
    RETURNING sa.status, sa.cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_succeeded', jsonb_build_object('token', :token) FROM c
    UNION ALL
    SELECT :saga_id, :name, 'cancel_refused',
        jsonb_build_object('reason', 'step ' || CAST(:name AS text) || ' succeeded: the saga passed its point of no return')
    FROM s WHERE s.refused AND EXISTS (SELECT FROM c)
    UNION ALL
    SELECT :saga_id, NULL, 'saga_completed', '{}'::jsonb FROM u WHERE u.status = 'completed'
)"""
_FORWARD_SUCCESS = text(_FORWARD_SUCCESS_CTES + "\nSELECT status, cancel_requested FROM u")

# Continuation: the statement that commits a forward step also claims the saga's next one for the same execution
# (the caller runs it next, in the same task), so a continued step costs one statement, its commit. It is taken
# as any claim takes it (lease, fencing token, its attempt counted, `step_started`), only once this commit landed,
# the saga goes on with no cancel to honour, and every step before it but this one already succeeded.
_CLAIM_NEXT = f"""
, n AS (
    UPDATE saga_steps st SET status = 'running', attempts = st.attempts + 1, fencing_token = st.fencing_token + 1,
        lease_expires_at = statement_timestamp() + make_interval(secs => :next_lease), not_before = NULL,
        task_id = :next_task_id, started_at = coalesce(st.started_at, statement_timestamp()),
        effect_unknown = st.effect_unknown OR st.status = 'running'
    WHERE st.saga_id = :saga_id AND st.idx = :next_idx AND st.status IN ('pending', 'running')
        AND st.attempts < :next_max_attempts AND {_CLAIMABLE.replace('now()', 'statement_timestamp()')}
        AND NOT EXISTS (SELECT FROM saga_steps e WHERE e.saga_id = :saga_id AND e.idx < :next_idx
                        AND e.idx <> :idx AND e.status <> 'succeeded')
        AND EXISTS (SELECT FROM u WHERE u.status = 'running' AND NOT u.cancel_requested)
    RETURNING st.fencing_token, st.attempts, st.checkpoint, st.generation
), ne AS (
    INSERT INTO saga_events (saga_id, step, kind, detail, created_at)
    SELECT :saga_id, :next_name, 'step_started',
        jsonb_build_object('attempt', n.attempts, 'task_id', :next_task_id, 'redelivered', false), statement_timestamp()
    FROM n
)
SELECT u.status, u.cancel_requested, n.fencing_token AS next_token, n.attempts AS next_attempt,
    coalesce(n.checkpoint, '{{}}') AS next_checkpoint, n.generation AS next_generation,
    (SELECT large_input FROM sagas WHERE id = :saga_id AND CAST(:next_large AS boolean)) AS next_large_input
FROM u LEFT JOIN n ON true
"""
_FORWARD_SUCCESS_THEN_CLAIM = text(_FORWARD_SUCCESS_CTES + _CLAIM_NEXT)
_FORWARD_CLAIM_AND_COMMIT_THEN_CLAIM = text(_FORWARD_CLAIM_AND_COMMIT_CTES + _CLAIM_NEXT)


@dataclass(frozen=True)
class Then:
    """The step a commit also claims (continuation), and the task id its execution is known by."""

    step: Step
    task_id: str

    def params(self) -> dict[str, Any]:
        return {"next_idx": self.step.index, "next_name": self.step.name, "next_task_id": self.task_id,
                "next_lease": self.step.lease_seconds, "next_max_attempts": self.step.retry.max_attempts,
                "next_large": bool(self.step.needs)}


def _committed(row: Any, then: Then | None, claimed: Claim | None) -> Committed:
    """What a commit statement's row says: the saga, and the next step's claim if it took one."""
    if then is None or row.next_token is None or claimed is None:
        return Committed(row.status, row.cancel_requested)
    return Committed(row.status, row.cancel_requested, Claim(
        token=row.next_token, attempt=row.next_attempt, input=claimed.input,
        results=claimed.results, checkpoint=row.next_checkpoint, tenant=claimed.tenant,
        large_input=row.next_large_input, generation=row.next_generation))


_COMPENSATION_SUCCESS = text("""
WITH s AS (
    SELECT id FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'compensated', compensated_at = statement_timestamp(), lease_expires_at = NULL,
        error = NULL, compensation_result = CAST(:result AS jsonb)
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status = 'compensating'
        AND st.fencing_token = :token
    RETURNING st.saga_id
), u AS (
    UPDATE sagas SET updated_at = statement_timestamp(), deadline = statement_timestamp() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_compensated', jsonb_build_object('token', :token, 'result', CAST(:result AS jsonb))
    FROM c
)
SELECT status, cancel_requested FROM u
""")


def commit_success(
    saga_id: UUID, step: Step, token: int, result_json: str, action: Action, conn: Connection | None = None, *,
    then: Then | None = None, claimed: Claim | None = None,
) -> Committed | None:
    """Record the outcome (the result as JSON text), or None if the token was superseded. Fenced by the token
    alone: while nobody else has taken the step, the result of an effect that already happened is worth keeping
    even if the lease ran out meanwhile. With `then` (forward only), claim that next step too (see
    `claim_and_commit`)."""
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "token": token, "pickup": patience(step.saga),
        "result": result_json, "last": step.index == len(step.saga.steps) - 1,
        "pivotal": step.kind is not StepKind.COMPENSABLE, **(then.params() if then else {}),
    }
    statement = (_COMPENSATION_SUCCESS if not action.forward
                 else _FORWARD_SUCCESS_THEN_CLAIM if then else _FORWARD_SUCCESS)
    with db.autocommit(conn) as tx:
        row = db.fetchone(tx, statement, params)
    return _committed(row, then, claimed) if row else None


# A failed attempt that will be retried: the step waits out its backoff; `effect_unknown` only ever grows, so
# an effect one attempt may have left is still undone when a later attempt fails permanently.
def _retry_later_statement(action: Action) -> Any:
    """Schedule the action's next attempt; one failed because a breaker it depends on opened gets the attempt
    back (`:waiting_for` names the dependency), since the saga is not at fault."""
    return text(f"""
WITH s AS (
    SELECT id FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = CAST(:next_status AS text), error = CAST(:error AS text), lease_expires_at = NULL,
        effect_unknown = st.effect_unknown OR :effect_unknown,
        not_before = now() + make_interval(secs => :retry_in),
        {action.attempts} = st.{action.attempts} - CASE WHEN CAST(:waiting_for AS text) IS NULL THEN 0 ELSE 1 END
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status = :held
        AND st.fencing_token = :token
    RETURNING st.saga_id
), u AS (
    UPDATE sagas SET updated_at = now(), deadline = now() + make_interval(secs => :retry_in + :pickup)
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, CAST(:event AS text),
        jsonb_build_object('error', CAST(:error AS text), 'retry_in', :retry_in, 'effect_unknown', :effect_unknown)
        || CASE WHEN CAST(:waiting_for AS text) IS NULL THEN '{{}}'::jsonb
           ELSE jsonb_build_object('waiting_for', CAST(:waiting_for AS text)) END
    FROM c
)
SELECT status, cancel_requested FROM u
""")


_RETRY_LATER = {action: _retry_later_statement(action) for action in (FORWARD, COMPENSATION)}
# The forward step's last attempt failed: the errback decides between compensating and pausing.
_FORWARD_FAILED = text("""
WITH s AS (
    SELECT id FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'failed', error = CAST(:error AS text), lease_expires_at = NULL,
        effect_unknown = st.effect_unknown OR :effect_unknown, finished_at = now(),
        not_before = now() + make_interval(secs => :hold)  -- a body past its hard limit is not dead yet
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status = 'running'
        AND st.fencing_token = :token
    RETURNING st.saga_id
), u AS (
    UPDATE sagas SET updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'step_failed', jsonb_build_object('error', CAST(:error AS text), 'effect_unknown', :effect_unknown)
    FROM c
)
SELECT status, cancel_requested FROM u
""")
# A compensation that gave up: its effect is still there, and with no attempts left only an operator re-runs it.
_COMPENSATION_FAILED = text("""
WITH s AS (
    SELECT id FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'failed', error = CAST(:error AS text), lease_expires_at = NULL, not_before = NULL,
        effect_unknown = true, compensation_attempts = greatest(st.compensation_attempts, :max_attempts)
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status = 'compensating'
        AND st.fencing_token = :token
    RETURNING st.saga_id
), u AS (
    UPDATE sagas SET updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING status, cancel_requested
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, 'compensation_failed', jsonb_build_object('error', CAST(:error AS text), 'effect_unknown', true)
    FROM c
)
SELECT status, cancel_requested FROM u
""")


# The step asked its client for new input (`NeedsInput`): it goes back to `pending` (its effect, if any, noted)
# and the saga waits in `awaiting_input` until `provide_input` or the deadline. Not while a cancel is asked:
# then the attempt fails as any other would, and the saga is undone.
_AWAIT_INPUT = text("""
WITH s AS (
    SELECT id, cancel_requested FROM sagas WHERE id = :saga_id AND status IN ('pending', 'running')
    FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'pending', error = CAST(:reason AS text), lease_expires_at = NULL,
        not_before = NULL, effect_unknown = st.effect_unknown OR :effect_unknown, finished_at = now()
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status = 'running'
        AND st.fencing_token = :token AND NOT s.cancel_requested
    RETURNING st.saga_id
), u AS (
    UPDATE sagas SET status = 'awaiting_input', updated_at = now(), error = CAST(:reason AS text),
        deadline = now() + make_interval(secs => :within),
        awaiting = jsonb_build_object('step', CAST(:name AS text), 'fields', CAST(:fields AS jsonb),
                                      'reason', CAST(:reason AS text), 'until', now() + make_interval(secs => :within))
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
    RETURNING awaiting
)
INSERT INTO saga_events (saga_id, step, kind, detail)
SELECT :saga_id, :name, 'input_requested', awaiting FROM u
RETURNING id
""")


def await_input(saga_id: UUID, step: Step, token: int, fields: tuple[str, ...], reason: str, within: float,
                effect_unknown: bool) -> bool:
    """Hold the saga for its client's input; False if this attempt lost its claim or a cancel is asked."""
    params = {"saga_id": saga_id, "idx": step.index, "name": step.name, "token": token, "reason": reason[:2000],
              "fields": db.to_json(list(fields)), "within": within, "effect_unknown": effect_unknown}
    with db.autocommit() as conn:
        return db.fetchone(conn, _AWAIT_INPUT, params) is not None


def record_failure(
    saga_id: UUID, step: Step, token: int, action: Action, error: str, *, retry_in: float | None,
    effect_unknown: bool, hold: float = 0.0, waiting_for: str | None = None,
) -> Committed | None:
    """Record a failed attempt: scheduled for retry after `retry_in` seconds, or final when it is None; a final
    forward failure keeps the step from being undone for `hold` seconds (its process is still being killed).
    `waiting_for` names the dependency whose breaker the failure found open: the attempt is not counted.

    Returns the saga's status and whether a cancel is asked, or None if the lease was lost.
    """
    params: dict[str, Any] = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "token": token, "error": error[:2000],
        "effect_unknown": effect_unknown, "pickup": patience(step.saga), "hold": hold,
    }
    if retry_in is not None:
        statement = _RETRY_LATER[action]
        params |= {"retry_in": retry_in, "held": action.held, "next_status": action.retrying,
                   "event": action.event("attempt_failed"), "waiting_for": waiting_for}
    elif action.forward:
        statement = _FORWARD_FAILED
    else:
        statement = _COMPENSATION_FAILED
        params["max_attempts"] = action.policy(step).max_attempts
    with db.autocommit() as conn:
        row = db.fetchone(conn, statement, params)
    return Committed(row.status, row.cancel_requested) if row else None


_LANDED = text("""
SELECT sa.status, sa.cancel_requested FROM saga_steps st JOIN sagas sa ON sa.id = st.saga_id
WHERE st.saga_id = :saga_id AND st.idx = :idx AND st.fencing_token = :token AND st.status = :status
    AND st.lease_expires_at IS NULL
""")


def landed(saga_id: UUID, step: Step, token: int, status: str) -> Committed | None:
    """The saga as it is, if this attempt's own write already put the step in `status`: a write whose answer was
    lost and whose retry then found nothing left to change. None if someone else moved it."""
    with db.autocommit() as conn:
        row = conn.execute(_LANDED, {"saga_id": saga_id, "idx": step.index, "token": token, "status": status}).first()
    return Committed(row.status, row.cancel_requested) if row else None


def _give_up_statement(action: Action) -> Any:
    """Fail the step for `action` once all its attempts were used: from the statuses an attempt of it leaves
    when it never reports (a forward step pending or running; a compensation from the step it undoes)."""
    held = "'pending', 'running'" if action.forward else "'succeeded', 'compensating', 'failed'"
    finished = ", finished_at = now()" if action.forward else ""
    return text(f"""
WITH s AS (
    SELECT id FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), c AS (
    UPDATE saga_steps st SET status = 'failed', effect_unknown = true, error = CAST(:error AS text), lease_expires_at = NULL,
        not_before = NULL, fencing_token = st.fencing_token + 1{finished}
    FROM s WHERE st.saga_id = :saga_id AND s.id = st.saga_id AND st.idx = :idx AND st.status IN ({held})
        AND {_CLAIMABLE} AND st.{action.attempts} >= :max_attempts
    RETURNING st.saga_id
), u AS (
    UPDATE sagas SET updated_at = now(), deadline = now() + make_interval(secs => :pickup)
    WHERE id = :saga_id AND EXISTS (SELECT FROM c)
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT :saga_id, :name, CAST(:event AS text), jsonb_build_object('error', CAST(:error AS text), 'effect_unknown', true) FROM c
)
SELECT count(*) FROM c
""")


_GIVE_UP = {action: _give_up_statement(action) for action in (FORWARD, COMPENSATION)}


def give_up(saga_id: UUID, step: Step, action: Action) -> bool:
    """Fail a step whose attempts were all used without a verdict (each crashed or timed out its worker)."""
    policy = action.policy(step)
    params = {
        "saga_id": saga_id, "idx": step.index, "name": step.name, "pickup": patience(step.saga),
        "max_attempts": policy.max_attempts, "event": action.event("failed"),
        "error": f"all {policy.max_attempts} attempts ended without an outcome (worker lost or timed out)",
    }
    with db.autocommit() as conn:
        return bool(db.fetchone(conn, _GIVE_UP[action], params)[0])  # type: ignore[index]


# Recovery and `finish` leave a saga alone while one of its attempts holds a live lease, and look again when
# the lease ends: the attempt's own outcome moves the saga on.
_DEFER_TO_LEASE = text("""
UPDATE sagas SET deadline = l.until + make_interval(secs => :margin)
FROM (SELECT max(lease_expires_at) AS until FROM saga_steps
      WHERE saga_id = :saga_id AND lease_expires_at > now()) AS l
WHERE id = :saga_id AND l.until IS NOT NULL
RETURNING id
""")


def defer_to_live_lease(conn: Connection, saga_id: UUID) -> bool:
    """If an attempt of the saga holds a live lease, move the saga's deadline past it and say so."""
    return conn.execute(_DEFER_TO_LEASE, {"saga_id": saga_id, "margin": get_settings().lease_margin}).first() is not None


# The attempt a task holds, if it has run long enough to have met its hard time limit.
_CURRENT_ATTEMPT = {action: text(f"""
SELECT fencing_token AS token, {action.attempts} AS attempt FROM saga_steps
WHERE saga_id = :s AND idx = :i AND task_id = :t AND status = :held
    AND lease_expires_at <= now() + make_interval(secs => :within)
""") for action in (FORWARD, COMPENSATION)}


@dataclass(frozen=True)
class Held:
    """An attempt that holds a step: its fencing token and its number."""

    token: int
    attempt: int


def current_attempt(saga_id: UUID, step: Step, task_id: str, action: Action, *, ending_within: float) -> Held | None:
    """The attempt Celery task `task_id` holds, if it still holds the step and its lease ends within
    `ending_within` seconds (the attempt ran to its hard time limit)."""
    with db.autocommit() as conn:
        row = conn.execute(_CURRENT_ATTEMPT[action], {"s": saga_id, "i": step.index, "t": task_id,
                                                      "held": action.held, "within": ending_within}).first()
    return Held(row.token, row.attempt) if row else None
