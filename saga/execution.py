"""Running one step (or one compensation) inside its Celery task: claim, body, fenced commit."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn, TypeVar
from uuid import UUID

from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from saga import (
    breakers,
    claims,
    commit_seal,
    compensation,
    continuation,
    db,
    dispatch,
    logs,
    metrics,
    store,
    task_events,
    tenant_slots,
    tracing,
    versions,
)
from saga.actions import COMPENSATION, FORWARD, Action
from saga.claims import Claim, Committed, Refusal
from saga.definitions import HARD_LIMIT_GRACE, Step, StepContext
from saga.disclosure import as_recorded
from saga.errors import (
    ConfigurationError,
    LeaseLost,
    NeedsInput,
    PermanentError,
    StepFailed,
    VersionNotDeclared,
)
from saga.states import SagaStatus, StepStatus
from saga.storable import storable

log = logging.getLogger("saga.execution")
T = TypeVar("T")

# Database errors that are not the step's doing: the ledger is down or restarting, or another writer won.
_UNREACHABLE = (OperationalError, InterfaceError)
# Seconds before a task whose ledger was unreachable tries again.
LEDGER_RETRY_DELAY = 2.0
# Deadlock and serialization failures: PostgreSQL aborted this transaction in favour of another writer.
_CONFLICTS = ("40P01", "40001")
CONFLICT_RETRY_DELAY = 0.2
# Saga statuses in which its forward steps run.
_GOING = (SagaStatus.PENDING, SagaStatus.RUNNING)
# Waits between in-process tries of a write that records what a body did (about 6 s in all): a short outage
# or a deadlock must not cost a second run of the body.
DURABLE_WRITE_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.5, 3.0)


def run_step(task: Any, step: Step, saga_id: str, commit: dict[str, Any] | None = None,
             claim_first: bool = False, at: str | None = None) -> Any:
    """Execute a forward step for the saga (and, with continuation, the steps after it while its budget lasts);
    the chain continues from the first step not run here only when this returns.

    `commit` is set on a retry whose body already ran: only its result is still to be recorded. It is recorded
    only under the engine's seal (`saga.commit_seal`); a message without one is refused.
    `claim_first` is set by recovery and the errback: an earlier attempt may have crashed.
    `at` names the later step a retried message is for: one that an earlier delivery ran by continuation.
    """
    return _run(task, step, UUID(saga_id), FORWARD, commit, claim_first, at)


def run_compensation(task: Any, step: Step, saga_id: str, commit: dict[str, Any] | None = None,
                     claim_first: bool = False) -> Any:
    """Undo a step's effect; the compensation chain continues even when this one gives up."""
    return _run(task, step, UUID(saga_id), COMPENSATION, commit, claim_first)


def _run(task: Any, step: Step, saga_id: UUID, action: Action, pending: dict[str, Any] | None,
         claim_first: bool, at: str | None = None) -> Any:
    if at is not None and at != step.name:
        step = _later_step(step, saga_id, at)
    if not action.forward or not step.saga.continuation or not continuation.possible():
        _one(task, step, saga_id, action, pending, claim_first)
        return None
    budget = continuation.Budget(task, step)
    given: Claim | None = None
    try:
        while True:
            task_id = continuation.task_id(task.request.id, step, task.name)
            try:
                with continuation.own_limits(step, partial(_hard_limit, saga_id, step, task_id)), \
                        task_events.shown(task, step, saga_id, task_id):
                    done = _one(task, step, saga_id, action, pending, claim_first, given, budget)
            except StepFailed:
                if task_id == task.request.id:
                    raise  # the message's own step: the chain's errback reacts
                _react(task, saga_id)  # a later step failed, not this message's own: it ends as its own step did
                return None
            if done is None:  # the step was done already (a redelivery walks the saga): look at the next one here
                following = budget.next_for(step)
            elif done.next is not None:  # the commit claimed the next step for this execution
                following = step.saga.steps[step.index + 1]
            else:
                return None
            if following is None:
                return None
            continuation.take_link(task, following)
            budget.took()
            metrics.CONTINUED.labels(step.saga.name).inc()
            step, given, pending, claim_first = following, done.next if done else None, None, False
    finally:
        task_events.flush()  # what is still held back: the last step's end at least


def _react(task: Any, saga_id: UUID) -> None:
    """A step this message ran by continuation failed for good: do what the chain's errback does (pause or undo the
    saga), and send nothing on."""
    if task.request.chain:
        task.request.chain.clear()
    try:
        compensation.react(saga_id)
    except _UNREACHABLE as exc:
        log.warning("saga %s: a failed step not reacted to (%s); recovery will", saga_id, type(exc).__name__)


def _hard_limit(saga_id: UUID, step: Step, task_id: str) -> None:
    """At a step's hard time limit in a continuing message, just before its process is killed: the attempt is
    recorded as the errback records one of a message's own step that Celery killed."""
    limit = step.time_limit + HARD_LIMIT_GRACE
    compensation.record_lost_attempt(saga_id, step, FORWARD, task_id, TimeLimitExceeded(limit))


def _later_step(step: Step, saga_id: UUID, name: str) -> Step:
    """The step a retried message names in `at`: one after its own, of the same saga type."""
    for later in step.saga.steps[step.index + 1:]:
        if later.name == name:
            return later
    log.warning("saga %s: a message of task %s names step %r, which is not one after it; nothing run", saga_id,
                step.task_name, name)
    raise Ignore()


def _one(task: Any, step: Step, saga_id: UUID, action: Action, pending: dict[str, Any] | None, claim_first: bool,
         given: Claim | None = None, budget: continuation.Budget | None = None) -> Committed | None:
    """One step (or compensation) in this message: recorded as done (with the next step's claim if the commit took
    it), None if it was done already or nothing is left to do for it; every other end is raised for Celery."""
    with logs.step_context(saga_id=str(saga_id), saga_type=step.saga.name, step=step.name, mode=action.name) as fields, \
            tracing.attempt_span(saga_id, f"{action.name} {step.name}", fields):
        return _one_tagged(task, step, saga_id, action, pending, claim_first, given, budget)


def _one_tagged(task: Any, step: Step, saga_id: UUID, action: Action, pending: dict[str, Any] | None,
                claim_first: bool, given: Claim | None, budget: continuation.Budget | None) -> Committed | None:
    try:
        commit_seal.load()  # while the ledger answers: a commit that cannot be recorded later is sealed with it
    except _UNREACHABLE as exc:
        raise _ledger_unreachable(task, step, action, exc) from exc
    except ConfigurationError as exc:  # a ledger not migrated yet: the step waits for it, no attempt is spent
        log.error("saga %s %s %s: %s; trying again in %.0fs", saga_id, action.name, step.name, exc, LEDGER_RETRY_DELAY)
        raise _retry(task, step, action, LEDGER_RETRY_DELAY) from exc
    if pending is not None:
        sealed = commit_seal.opened(saga_id, step.name, action.name, pending)
        if sealed is None:  # not from a worker of this ledger: whoever sent it cannot say how the step went
            commit_seal.refused(saga_id, step.saga.name, step.name, action.name)
            raise Ignore()
        return _settle(task, step, saga_id, action, _commit(task, step, saga_id, action, *sealed))
    # A message redelivered, or re-sent by recovery, may follow an attempt that crashed its worker: it is
    # claimed (and counted) up front, even for a transactional step, so a body that always crashes runs out of
    # attempts.
    suspect = claim_first or bool((task.request.delivery_info or {}).get("redelivered"))
    attempt = _Attempt(task, step, saga_id, action, suspect, given, budget)
    try:
        attempt.ask_breakers()
    except _UNREACHABLE as exc:
        raise _ledger_unreachable(task, step, action, exc) from exc
    except _Waiting as waiting:
        wait = waiting.wait
        saga = _ledger(task, step, action, breakers.record_wait, saga_id, step.name, action.forward, wait,
                       claims.patience(step.saga))
        if saga is None or saga.status not in (_GOING if action.forward else (SagaStatus.COMPENSATING,)):
            raise Ignore() from None  # the saga moved on meanwhile (an operator's action): nothing to wait for
        if action.forward and saga.cancel_requested:
            _cancel(saga_id, step)  # nothing of the step is in flight: undo now, not once the third party is back
            raise Ignore() from None
        log.info("saga %s %s %s waits for %s (its circuit breaker is open); no attempt used, looking again in "
                 "%.1f s", saga_id, action.name, step.name, wait.dependency, wait.seconds)
        raise _retry(task, step, action, wait.seconds) from None
    try:
        if action.of(step).transactional:
            with db.engine().connect() as conn, conn.begin():
                outcome = attempt.run(conn)
        else:
            outcome = attempt.run(None)
    except _UNREACHABLE as exc:
        raise _ledger_unreachable(task, step, action, exc) from exc
    except _Overtaken:
        # The body's writes rolled back: another delivery committed the step, or the saga moved on.
        _count(step, action, "lost")
        outcome = _ledger(task, step, action, claims.explain, saga_id, step, action)
    except _BodyFailed as failure:
        if failure.claim.token is None:
            # A transactional step's body ran before anything was taken, and its writes rolled back with the
            # transaction: take the step now, to count the attempt.
            claim = _ledger(task, step, action, claims.claim, saga_id, step, attempt.task_id, action)
            if not isinstance(claim, Claim):
                raise Ignore() from failure.exc
            failure.claim = claim
        return _failed(task, step, saga_id, action, failure.claim, failure.exc, attempt.granted)
    return _settle(task, step, saga_id, action, outcome)


def _settle(task: Any, step: Step, saga_id: UUID, action: Action, outcome: Refusal | None | Lost | Committed) -> Committed | None:
    """What the message does once the attempt is over: go on, stop its chain, or start the undo."""
    if isinstance(outcome, Refusal) or outcome is None:
        return _refused(task, step, saga_id, action, outcome)
    if isinstance(outcome, Lost):
        _discard(step, saga_id, action)
    _count(step, action, "succeeded", outcome.saga_status)
    if outcome.saga_status == SagaStatus.COMPLETED:
        tenant_slots.ended(saga_id)
    if action.forward and outcome.cancel_requested:
        _cancel(saga_id, step)
        raise Ignore()
    return outcome


class Lost:
    """This attempt lost its claim before its outcome could be recorded: the new holder decides."""


LOST = Lost()


class _BodyFailed(Exception):
    """The step body raised: carries its exception and the claim it ran under."""

    def __init__(self, exc: Exception, claim: Claim) -> None:
        self.exc, self.claim = exc, claim


class _Overtaken(Exception):
    """A transactional step could not be committed when its body was done: its transaction rolls back."""


class _Waiting(Exception):
    """A breaker the step depends on is open: the step is not attempted now."""

    def __init__(self, wait: breakers.Wait) -> None:
        self.wait = wait


class _Attempt:
    """One execution of a step's body: claim (unless the previous step's commit claimed it), body, commit (which
    may claim the next step, within the message's budget)."""

    def __init__(self, task: Any, step: Step, saga_id: UUID, action: Action, suspect: bool, given: Claim | None,
                 budget: continuation.Budget | None) -> None:
        self.task, self.step, self.saga_id, self.action = task, step, saga_id, action
        self.suspect, self.given, self.budget = suspect, given, budget
        self.task_id = continuation.task_id(task.request.id, step, task.name) if action.forward else task.request.id
        # What the step's breakers let it through with (None: it depends on no third party).
        self.granted: breakers.Permit | None = None

    def ask_breakers(self) -> None:
        """Before anything is claimed: may the body call the third parties it depends on? `_Waiting` if not. A
        step claimed by the previous step's commit was let through before that commit."""
        deps = self.step.depends_on
        if not deps:
            return
        if self.given is not None and self.budget is not None:
            self.granted = self.budget.permits.pop(self.step.name, None) or breakers.Permit(deps, self.task_id, False)
            return
        verdict = breakers.permit(deps, self.task_id, self.action.lease(self.step))
        if isinstance(verdict, breakers.Wait):
            raise _Waiting(verdict)
        self.granted = verdict

    def run(self, conn: Connection | None) -> Refusal | None | Lost | Committed:
        """Claim, run the body, commit: what was recorded, a Refusal, None, or LOST."""
        task, step, saga_id, action = self.task, self.step, self.saga_id, self.action
        # A transactional forward step is claimed together with its commit, unless it is suspect or was claimed
        # by the previous step's commit.
        deferred = action.forward and conn is not None and not self.suspect and self.given is None
        outcome: Claim | Refusal | None = self.given
        if outcome is None:
            if deferred:
                outcome = claims.preview(saga_id, step, conn)  # type: ignore[arg-type]
                if isinstance(outcome, Refusal) and outcome.step_status == StepStatus.RUNNING and outcome.wait == 0:
                    deferred = False  # an attempt claimed up front never reported (it crashed): count this one too
            if not deferred:
                outcome = claims.claim(saga_id, step, self.task_id, action, redelivered=self.suspect)
        if not isinstance(outcome, Claim):
            return outcome
        logs.tag(attempt=outcome.attempt, tenant=outcome.tenant)
        started = time.perf_counter()
        try:
            result = _as_json(action.body(step)(_context(step, saga_id, action, outcome, conn)))
        except LeaseLost:
            return LOST
        except Exception as exc:
            raise _BodyFailed(exc, outcome) from exc
        finally:
            metrics.STEP_SECONDS.labels(step.saga.name, step.name, action.name).observe(time.perf_counter() - started)
        if self.granted is not None:
            _breakers_told(breakers.succeeded, self.granted)
        then = self._then()
        if deferred:
            committed = claims.claim_and_commit(saga_id, step, self.task_id, result, conn,  # type: ignore[arg-type]
                                                then=then, claimed=_with_result(outcome, step, result))
            if committed is None:
                raise _Overtaken()
            return committed
        if conn is not None:  # transactional, claimed up front: the commit joins the body's transaction
            try:
                committed = claims.commit_success(saga_id, step, outcome.token, result, action, conn,  # type: ignore[arg-type]
                                                  then=then, claimed=_with_result(outcome, step, result))
            except _UNREACHABLE as exc:
                raise _BodyFailed(exc, outcome) from exc  # the transaction is lost with the body's writes: retry
            if committed is None:
                raise _Overtaken()
            return committed
        return _commit(task, step, saga_id, action, outcome.token, result, then,  # type: ignore[arg-type]
                       _with_result(outcome, step, result))

    def _then(self) -> claims.Then | None:
        """The next step, if this message may run it itself: the commit claims it too."""
        following = self.budget.next_for(self.step) if self.budget and self.action.forward else None
        if following is None:
            return None
        task_id = continuation.task_id(self.task.request.id, following, self.task.name)
        if following.depends_on:  # asked now, before the commit claims it: an open breaker ends the message here
            verdict = _breakers_told(breakers.permit, following.depends_on, task_id, FORWARD.lease(following))
            if not isinstance(verdict, breakers.Permit):
                return None
            self.budget.permits[following.name] = verdict  # type: ignore[union-attr]
        return claims.Then(following, task_id)


def _breakers_told(tell: Callable[..., T], *args: Any) -> T | None:
    """Tell the breakers how a call went (or ask one for the next step) once the body has run: a ledger that
    cannot take it must not cost the body a second run, so it is logged and let go."""
    try:
        return tell(*args)
    except _UNREACHABLE as exc:
        log.warning("breaker %s not updated (%s)", tell.__name__, type(exc).__name__)
        return None


def _with_result(claim: Claim, step: Step, result: str) -> Claim:
    """What the next step gets of the saga, once this step's result is recorded: the same input, and the results
    before it with this one."""
    return replace(claim, results={**claim.results, step.name: json.loads(result)})


def _context(step: Step, saga_id: UUID, action: Action, claim: Claim, conn: Connection | None) -> StepContext[Any]:
    def save(values: dict[str, Any]) -> None:
        values_json = json.dumps(storable(values), allow_nan=False)
        if not _durably(claims.checkpoint, saga_id, step, claim.token, action, values_json):
            raise LeaseLost(f"saga {saga_id} {action.name} {step.name}: the attempt no longer holds the step")

    key = (f"{saga_id}:{step.name}" + (f":{claim.generation}" if claim.generation else "")
           + ("" if action.forward else ":compensate"))
    return StepContext(
        saga_id=saga_id, saga_type=step.saga.name, step=step.name,
        input=step.saga.step_input(claim.input, claim.large_input, action.needs(step)),
        results=claim.results, idempotency_key=key,
        # The fencing token grows with every claim of the step, forward or back, so it names this attempt alone.
        attempt_key=f"{key}:{claim.token}" if claim.token is not None else f"{key}:attempt-{claim.attempt}",
        attempt=claim.attempt, compensating=not action.forward, db=conn, checkpoints=dict(claim.checkpoint),
        _save=None if conn is not None else save,
    )


def _commit(task: Any, step: Step, saga_id: UUID, action: Action, token: int, result: str,
            then: claims.Then | None = None, claimed: Claim | None = None) -> Lost | Committed:
    """Record a finished body's result under its token (and claim `then`, the next step, with it). If the ledger
    cannot take it, the commit alone is retried (in this process, then by a message carrying the result under the
    engine's seal): the body never runs again for it."""
    try:
        committed = _durably(claims.commit_success, saga_id, step, token, result, action, then=then, claimed=claimed,
                             landed=lambda: claims.landed(saga_id, step, token, action.done))
    except (*_UNREACHABLE, SoftTimeLimitExceeded) as exc:
        metrics.LEDGER_ERRORS.labels("commit_success").inc()
        log.warning("saga %s %s %s: result not recorded yet (%s); retrying the commit in %.0fs", saga_id,
                    action.name, step.name, type(exc).__name__, LEDGER_RETRY_DELAY)
        sealed = commit_seal.seal(saga_id, step.name, action.name, token, result)
        raise _retry(task, step, action, LEDGER_RETRY_DELAY, kwargs={"commit": sealed}) from exc
    return committed if committed is not None else LOST


def _durably(write: Callable[..., T | None], *args: Any, landed: Callable[[], T | None] | None = None,
             **kwargs: Any) -> T | None:
    """`write(...)`, a fenced write, tried again after short waits while the ledger is unreachable or a write
    conflicts. When it changes nothing, `landed()` tells whether that is because an earlier try (whose answer
    was lost) already did it, or because the attempt lost its claim (None)."""
    for delay in (*DURABLE_WRITE_DELAYS, None):
        try:
            result = write(*args, **kwargs)
            return landed() if result is None and landed is not None else result
        except _UNREACHABLE as exc:
            if delay is None:
                raise
            metrics.LEDGER_ERRORS.labels(write.__name__).inc()
            log.warning("ledger write %s failed (%s); trying again in %.1fs", write.__name__,
                        type(getattr(exc, "orig", exc)).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _refused(task: Any, step: Step, saga_id: UUID, action: Action, why: Refusal | None) -> Any:
    """Decide what a message does with a step it could not claim: go on, wait, fail, or stop its chain."""
    if why is not None and why.foreign:
        _foreign(saga_id)
        raise Ignore()
    exhausted = why is not None and why.attempts >= action.policy(step).max_attempts
    if action.forward:
        if why is not None and why.cancel_requested and why.saga_status in _GOING:
            _cancel(saga_id, step)  # undo now, unless a step is still in flight (its end will)
            raise Ignore()
        if why is None or why.saga_status not in _GOING:
            raise Ignore()  # the saga moved on (finished or compensating): this chain has nothing to do
        if why.out_of_turn:  # the saga's own chain or recovery sends this step once the earlier ones succeed
            log.warning("saga %s forward %s: refused a message for this step before the steps ahead of it "
                        "succeeded (forged, or stale after a rewind); nothing run", saga_id, step.name)
            raise Ignore()
        if why.step_status == StepStatus.SUCCEEDED:
            return None  # done by an earlier delivery: let the chain go on
        if why.wait > 0:
            raise _wait(task, step, action, why.wait)
        if why.step_status == StepStatus.FAILED or (exhausted and claims.give_up(saga_id, step, action)):
            raise StepFailed(f"step {step.name} failed")  # the errback reacts, idempotently
        if exhausted:
            raise Ignore()
        raise _wait(task, step, action, 0)  # the claim met a lease or a backoff just as it ended: look again
    if why is None or why.saga_status != SagaStatus.COMPENSATING:
        raise Ignore()
    if why.out_of_turn:  # the compensation chain or recovery sends this undo once the later ones are done
        log.warning("saga %s compensation %s: refused a message for this undo while a later step's is still owed "
                    "or outside the rewind (forged, or stale); nothing run", saga_id, step.name)
        raise Ignore()
    if why.wait > 0:
        raise _wait(task, step, action, why.wait)
    owed = dispatch.effect_may_exist(why.step_status, why.effect_unknown)
    if owed and not exhausted:
        raise _wait(task, step, action, 0)  # as above: never move on to an older step while this one is still to be undone
    if owed and why.step_status != StepStatus.FAILED:
        claims.give_up(saga_id, step, action)
    return None  # compensated, nothing to undo, or given up: the older steps are still undone


def _foreign(saga_id: UUID) -> None:
    """The saga runs by another version of its type than this step's: stop it unless this process has its
    version (then recovery, which dispatches by the saga's own version, takes it on)."""
    record = store.load(saga_id)
    try:
        versions.type_of(record)
    except VersionNotDeclared as why:
        versions.stop(record, why)


def _cancel(saga_id: UUID, step: Step) -> None:
    """Honour a cancel once no step is in flight; if the ledger cannot be reached, recovery does it."""
    try:
        compensation.begin(saga_id, step.saga, reason="cancelled", after_leases=True)
    except _UNREACHABLE as exc:
        log.warning("saga %s: cancel not begun (%s); recovery will", saga_id, type(exc).__name__)


def _wait(task: Any, step: Step, action: Action, seconds: float) -> Retry:
    """Look at the step again once the current holder's lease or the backoff ends."""
    return _retry(task, step, action, seconds + 0.5)


def _retry(task: Any, step: Step, action: Action, countdown: float, kwargs: dict[str, Any] | None = None,
           exc: Exception | None = None) -> Retry:
    """Send the message again after `countdown` seconds, for this step: a step that this message ran by
    continuation is named in `at`, so the message comes back to it rather than to its own."""
    again = dict(task.request.kwargs or {}) if kwargs is None else dict(kwargs)
    again.pop("at", None)
    if action.forward and step.task_name != task.name:
        again["at"] = step.name
    return task.retry(countdown=countdown, kwargs=again, exc=exc)


def _failed(task: Any, step: Step, saga_id: UUID, action: Action, claim: Claim, exc: Exception,
            granted: breakers.Permit | None = None) -> Any:
    if isinstance(exc, NeedsInput):
        exc = _await_input(task, step, saga_id, action, claim, exc)  # returns only where the saga cannot wait
    policy = action.policy(step)
    error = as_recorded(exc)
    retry_in = policy.delay(claim.attempt) if policy.may_retry(exc, claim.attempt) else None
    waiting: breakers.Wait | None = None
    if granted is not None and policy.classify(exc) == "transient":
        # Counted against its breakers; if one is open now, the step waits for it and gets this attempt back.
        waiting = _breakers_told(breakers.failed, granted)
        if waiting is not None:
            retry_in = waiting.seconds
    elif granted is not None:
        _breakers_told(breakers.succeeded, granted)  # the third party answered: the failure is the request's
    # Only a body that says so (PermanentError without effect_unknown) vouches that nothing happened.
    effect_unknown = not isinstance(exc, PermanentError) or exc.effect_unknown
    after = action.retrying if retry_in is not None else StepStatus.FAILED
    try:
        recorded = _durably(claims.record_failure, saga_id, step, claim.token, action, error, retry_in=retry_in,
                             effect_unknown=effect_unknown, waiting_for=waiting and waiting.dependency,
                             landed=lambda: claims.landed(saga_id, step, claim.token, after))  # type: ignore[arg-type]
    except _UNREACHABLE as unreachable:
        raise _ledger_unreachable(task, step, action, unreachable) from unreachable
    if recorded is None:
        _discard(step, saga_id, action)  # lost the lease meanwhile: the new holder decides
    _count(step, action, "retried" if retry_in is not None else "failed")
    log.info("saga %s %s %s attempt %s failed: %s%s", saga_id, action.name, step.name, claim.attempt, error,
             f" (retry in {retry_in:.1f}s)" if retry_in is not None else "")
    if retry_in is not None:
        if action.forward and recorded.cancel_requested:
            _cancel(saga_id, step)  # cancelled while this attempt ran: no retry
            raise Ignore()
        raise _retry(task, step, action, retry_in, exc=exc)
    if not action.forward:
        return None  # the other compensations still run; the finish task reports the saga failed
    raise StepFailed(error) from exc


def _await_input(task: Any, step: Step, saga_id: UUID, action: Action, claim: Claim, asked: NeedsInput) -> Exception:
    """Hold the saga for its client's input and end the message; else the failure to record instead (a
    compensation cannot wait, a field the input model lacks cannot be asked for, a cancel asked meanwhile
    wins)."""
    unknown = sorted(set(asked.fields) - set(step.saga.input_model.model_fields))
    if not action.forward or unknown:
        why = "a compensation cannot wait for input" if not unknown else f"no input field {', '.join(unknown)}"
        return _instead(asked, PermanentError(f"{asked.reason} ({why})", effect_unknown=asked.effect_unknown))
    try:
        waiting = _durably(claims.await_input, saga_id, step, claim.token, asked.fields, asked.reason,
                           asked.within, asked.effect_unknown)
    except _UNREACHABLE as unreachable:
        raise _ledger_unreachable(task, step, action, unreachable) from unreachable
    if not waiting:
        return _instead(asked, PermanentError(asked.reason, effect_unknown=asked.effect_unknown))
    _count(step, action, "awaiting_input")
    metrics.INPUT_REQUESTS.labels(step.saga.name, step.name).inc()
    log.info("saga %s waits up to %.0fs for input %s to step %s: %s", saga_id, asked.within,
             ", ".join(asked.fields), step.name, asked.reason)
    raise Ignore()


def _instead(asked: NeedsInput, failure: PermanentError) -> PermanentError:
    """The failure recorded for a request for input that cannot wait, raised from what the request was."""
    failure.__cause__ = asked.__cause__
    return failure


def _discard(step: Step, saga_id: UUID, action: Action) -> NoReturn:
    """This execution lost its lease: count it, say so, and end the message without an outcome."""
    _count(step, action, "lost")
    log.warning("saga %s %s %s: lease lost; this execution's outcome is discarded", saga_id, action.name, step.name)
    raise Ignore()


def _count(step: Step, action: Action, outcome: str, saga_status: str | None = None) -> None:
    """One execution of a body ended (`outcome`); and the saga, if its last step's commit completed it."""
    metrics.STEP_ATTEMPTS.labels(step.saga.name, step.name, action.name, outcome).inc()
    if saga_status == "completed":
        metrics.SAGAS_ENDED.labels(step.saga.name, saga_status).inc()


def _as_json(result: Any) -> str:
    """The result as JSON text the ledger can store; one it cannot store fails the step at once."""
    try:
        text = json.dumps(result, allow_nan=False)
        if "\\u0000" in text or "\\ud" in text:  # maybe a NUL or half a surrogate pair, which jsonb refuses
            storable(result)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the step's result cannot be stored: {exc}", effect_unknown=True) from exc
    return text


def _ledger(task: Any, step: Step, action: Action, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A ledger call outside the step's own transaction; the task retries if the ledger cannot answer."""
    try:
        return call(*args, **kwargs)
    except _UNREACHABLE as exc:
        raise _ledger_unreachable(task, step, action, exc) from exc


def _ledger_unreachable(task: Any, step: Step, action: Action, exc: Exception) -> Retry:
    metrics.LEDGER_ERRORS.labels("attempt").inc()
    if getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONFLICTS:
        log.info("ledger write conflicted with another (%s); retrying", type(exc.orig).__name__)  # type: ignore[attr-defined]
        return _retry(task, step, action, CONFLICT_RETRY_DELAY)
    log.warning("ledger unreachable (%s); retrying in %.0fs", type(exc).__name__, LEDGER_RETRY_DELAY)
    return _retry(task, step, action, LEDGER_RETRY_DELAY)
