"""Running one step (or one compensation) inside its Celery task: claim, body, fenced commit."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from celery.exceptions import Ignore, Retry
from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from saga import claims, compensation, db
from saga.claims import Claim, Mode, Refusal
from saga.definitions import Step, StepContext
from saga.errors import PermanentError, StepFailed

log = logging.getLogger("saga.execution")
T = TypeVar("T")

# Database errors that are not the step's doing: the ledger is down or restarting, or another writer won.
_UNREACHABLE = (OperationalError, InterfaceError)
# Seconds before a task whose ledger was unreachable tries again.
LEDGER_RETRY_DELAY = 2.0
# Deadlock and serialization failures: PostgreSQL aborted this transaction in favour of another writer.
_CONFLICTS = ("40P01", "40001")
CONFLICT_RETRY_DELAY = 0.2


def run_step(task: Any, step: Step, saga_id: str) -> Any:
    """Execute a forward step for the saga; the chain continues only when this returns."""
    return _run(task, step, UUID(saga_id), "forward")


def run_compensation(task: Any, step: Step, saga_id: str) -> Any:
    """Undo a step's effect; the compensation chain continues even when this one gives up."""
    return _run(task, step, UUID(saga_id), "compensation")


def _run(task: Any, step: Step, saga_id: UUID, mode: Mode) -> Any:
    part = step if mode == "forward" else step.compensation
    transactional = part.transactional  # type: ignore[union-attr]
    try:
        if transactional:
            with db.engine().connect() as conn, conn.begin():
                outcome = _attempt(task, step, saga_id, mode, conn)
        else:
            outcome = _attempt(task, step, saga_id, mode, None)
    except _UNREACHABLE as exc:
        raise _ledger_unreachable(task, exc) from exc
    except _Overtaken:
        # The body's writes rolled back: another delivery committed the step, or the saga moved on.
        outcome = _ledger(task, claims.explain, saga_id, step, mode)
    except _BodyFailed as failure:
        if transactional:
            # The body's writes (and the claim, if taken) rolled back with the transaction: count the attempt.
            claim = _ledger(task, claims.claim, saga_id, step, task.request.id, mode)
            if not isinstance(claim, Claim):
                raise Ignore() from failure.exc
            failure.claim = claim
        return _failed(task, step, saga_id, mode, failure.claim, failure.exc)
    if isinstance(outcome, Refusal) or outcome is None:
        return _refused(task, step, saga_id, mode, outcome)
    if outcome == "lost":
        log.warning("saga %s step %s: lease lost before commit; result discarded", saga_id, step.name)
        raise Ignore()
    _, cancel_requested = outcome
    if mode == "forward" and cancel_requested:
        compensation.begin(saga_id, step.saga, reason="cancelled")
        raise Ignore()
    return None


class _BodyFailed(Exception):
    """The step body raised: carries its exception and the claim it ran under."""

    def __init__(self, exc: Exception, claim: Claim) -> None:
        self.exc, self.claim = exc, claim


class _Overtaken(Exception):
    """A transactional forward step could not be taken when its body was done: its transaction rolls back."""


def _attempt(
    task: Any, step: Step, saga_id: UUID, mode: Mode, conn: Connection | None,
) -> Refusal | None | str | tuple[str, bool]:
    """Claim, run the body, commit: (saga status, cancel requested), a Refusal, None, or "lost"."""
    deferred = mode == "forward" and conn is not None  # claimed together with its commit
    if deferred:
        outcome = claims.preview(saga_id, step, conn)  # type: ignore[arg-type]
    else:
        outcome = claims.claim(saga_id, step, task.request.id, mode, conn)
    if not isinstance(outcome, Claim):
        return outcome
    ctx = StepContext(
        saga_id=saga_id, saga_type=step.saga.name, step=step.name,
        input=step.saga.input_model.model_validate(outcome.input), results=outcome.results,
        idempotency_key=f"{saga_id}:{step.name}" + (":compensate" if mode == "compensation" else ""),
        attempt=outcome.attempt, compensating=mode == "compensation", db=conn,
    )
    body = step.fn if mode == "forward" else step.compensation.fn  # type: ignore[union-attr]
    try:
        result = _as_json(body(ctx))
    except Exception as exc:
        raise _BodyFailed(exc, outcome) from exc
    if deferred:
        status = claims.claim_and_commit(saga_id, step, task.request.id, result, conn)  # type: ignore[arg-type]
        if status is None:
            raise _Overtaken()
        return status, False
    committed = claims.commit_success(saga_id, step, outcome.token, result, mode, conn)  # type: ignore[arg-type]
    return committed if committed is not None else "lost"


def _refused(task: Any, step: Step, saga_id: UUID, mode: Mode, why: Refusal | None) -> Any:
    """Decide what a message does with a step it could not claim: go on, wait, fail, or stop its chain."""
    if mode == "forward":
        if why is None or why.saga_status not in ("pending", "running") or why.cancel_requested:
            raise Ignore()  # the saga moved on (finished, compensating, cancelled): this chain has nothing to do
        if why.step_status == "succeeded":
            return None  # done by an earlier delivery: let the chain go on
        if why.wait > 0:
            raise _wait(task, why.wait)
        if why.step_status == "failed" or claims.give_up(saga_id, step, mode):
            raise StepFailed(f"step {step.name} failed")  # the errback reacts, idempotently
        raise Ignore()
    if why is None or why.saga_status != "compensating":
        raise Ignore()
    if why.wait > 0:
        raise _wait(task, why.wait)
    if why.step_status in ("succeeded", "compensating"):
        claims.give_up(saga_id, step, mode)
    return None  # compensated, nothing to undo, or given up: the older steps are still undone


def _wait(task: Any, seconds: float) -> Retry:
    """Look at the step again once the current holder's lease or the backoff ends."""
    return task.retry(countdown=seconds + 0.5)


def _failed(task: Any, step: Step, saga_id: UUID, mode: Mode, claim: Claim, exc: Exception) -> Any:
    policy = step.retry if mode == "forward" else step.compensation.retry  # type: ignore[union-attr]
    error = f"{type(exc).__name__}: {exc}"
    retry_in = policy.delay(claim.attempt) if policy.may_retry(exc, claim.attempt) else None
    effect_unknown = not isinstance(exc, policy.permanent) or getattr(exc, "effect_unknown", False)
    recorded = _ledger(task, claims.record_failure, saga_id, step, claim.token, mode, error, retry_in=retry_in,
                       effect_unknown=effect_unknown)
    if recorded is None:
        raise Ignore()  # lost the lease meanwhile: the new holder decides
    log.info("saga %s %s %s attempt %s failed: %s%s", saga_id, mode, step.name, claim.attempt, error,
             f" (retry in {retry_in:.1f}s)" if retry_in is not None else "")
    if retry_in is not None:
        if mode == "forward" and recorded[1]:
            compensation.begin(saga_id, step.saga, reason="cancelled")  # cancelled while this attempt ran: no retry
            raise Ignore()
        raise task.retry(countdown=retry_in, exc=exc)
    if mode == "compensation":
        return None  # the other compensations still run; the finish task reports the saga failed
    raise StepFailed(error) from exc


def _as_json(result: Any) -> str:
    """The result as JSON text for the ledger; a result JSON cannot hold fails the step."""
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"step result is not JSON: {exc}", effect_unknown=True) from exc


def _ledger(task: Any, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A ledger call outside the step's own transaction; the task retries if the ledger cannot answer."""
    try:
        return action(*args, **kwargs)
    except _UNREACHABLE as exc:
        raise _ledger_unreachable(task, exc) from exc


def _ledger_unreachable(task: Any, exc: Exception) -> Retry:
    if getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONFLICTS:
        log.info("ledger write conflicted with another (%s); retrying", type(exc.orig).__name__)  # type: ignore[attr-defined]
        return task.retry(countdown=CONFLICT_RETRY_DELAY)
    log.warning("ledger unreachable (%s); retrying in %.0fs", type(exc).__name__, LEDGER_RETRY_DELAY)
    return task.retry(countdown=LEDGER_RETRY_DELAY)

