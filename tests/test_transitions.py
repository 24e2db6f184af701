"""State transitions in the ledger, driven by hand on a queue no worker reads (real PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import exc, text

from saga import claims, compensation, db, events, load
from saga.actions import COMPENSATION, FORWARD, Action
from saga.claims import Claim, Committed, Refusal
from saga.definitions import Step
from saga.testing import Stack, wait_until
from tests.conftest import ROOT
from tests.probes import waits_for
from tests.sagas import probe_idle

A, B, C, D = probe_idle.steps


def new_saga() -> UUID:
    import saga

    return saga.start("probe_idle", {}, idempotency_key=str(uuid4())).saga.id


def test_a_claimed_step_cannot_be_claimed_again_while_its_lease_lasts(stack: Stack) -> None:
    saga_id = new_saga()
    first = claims.claim(saga_id, A, "t1", FORWARD)
    assert isinstance(first, Claim) and first.attempt == 1
    second = claims.claim(saga_id, A, "t2", FORWARD)
    assert isinstance(second, Refusal)
    assert second.step_status == "running" and 0 < second.wait <= A.lease_seconds
    assert load(saga_id).status == "running"


def test_a_stale_token_commits_nothing(stack: Stack) -> None:
    saga_id = new_saga()
    first = claims.claim(saga_id, A, "t1", FORWARD)
    assert isinstance(first, Claim)
    assert claims.commit_success(saga_id, A, first.token - 1, '{"x": 1}', FORWARD) is None
    assert claims.record_failure(saga_id, A, first.token + 1, FORWARD, "late", retry_in=None,
                                 effect_unknown=True) is None
    assert load(saga_id).steps[0].status == "running"
    assert claims.commit_success(saga_id, A, first.token, '{"x": 1}', FORWARD) == Committed("running", False)
    step = load(saga_id).steps[0]
    assert step.status == "succeeded" and step.result == {"x": 1}


def test_a_retry_waits_for_its_backoff_and_counts_attempts(stack: Stack) -> None:
    saga_id = new_saga()
    first = claims.claim(saga_id, A, "t1", FORWARD)
    assert isinstance(first, Claim)
    assert claims.record_failure(saga_id, A, first.token, FORWARD, "503", retry_in=0.6,
                                 effect_unknown=True) == Committed("running", False)
    early = claims.claim(saga_id, A, "t1", FORWARD)
    assert isinstance(early, Refusal) and early.step_status == "pending" and 0.3 < early.wait <= 0.6
    time.sleep(early.wait + 0.05)
    second = claims.claim(saga_id, A, "t1", FORWARD)
    assert isinstance(second, Claim) and second.attempt == 2 and second.token == first.token + 1


def test_attempts_used_up_by_crashes_fail_the_step_with_unknown_effect(stack: Stack) -> None:
    saga_id = new_saga()
    for attempt in range(1, A.retry.max_attempts + 1):
        got = claims.claim(saga_id, A, f"t{attempt}", FORWARD)
        assert isinstance(got, Claim)
        # the worker "dies": its lease is ended by hand instead of waiting for it
        _expire_lease(saga_id)
    refused = claims.claim(saga_id, A, "last", FORWARD)
    assert isinstance(refused, Refusal) and refused.attempts == A.retry.max_attempts
    assert claims.give_up(saga_id, A, FORWARD)
    step = load(saga_id).steps[0]
    assert step.status == "failed" and step.effect_unknown


def test_compensation_begins_once_and_skips_steps_never_started(stack: Stack) -> None:
    saga_id = new_saga()
    got = claims.claim(saga_id, A, "t1", FORWARD)
    assert isinstance(got, Claim)
    claims.commit_success(saga_id, A, got.token, "{}", FORWARD)
    got = claims.claim(saga_id, B, "t2", FORWARD)
    assert isinstance(got, Claim)
    assert compensation.begin(saga_id, probe_idle, "cancelled")
    assert not compensation.begin(saga_id, probe_idle, "cancelled again")
    record = load(saga_id)
    assert record.status == "compensating" and record.error == "cancelled"
    assert [s.status for s in record.steps] == ["succeeded", "failed", "skipped", "skipped"]
    assert record.steps[1].effect_unknown, "a step cut off mid-run may have left its effect"
    assert claims.commit_success(saga_id, B, got.token, "{}", FORWARD) is None, "the zombie is fenced"
    assert isinstance(claims.claim(saga_id, C, "t3", FORWARD), Refusal)


def _take_and_commit(saga_id: UUID, step: Step, task_id: str, seen: Claim | Refusal | None = None) -> str | None:
    """A transactional step's ledger side: preview, then claim and commit in one transaction (kept only if
    the step was taken)."""
    with db.engine().connect() as conn, conn.begin() as tx:
        preview = seen if seen is not None else claims.preview(saga_id, step, conn)
        assert isinstance(preview, Claim) and preview.token is None
        committed = claims.claim_and_commit(saga_id, step, task_id, '{"ok": true}', conn)
        if committed is None:
            tx.rollback()
            return None
        return committed.saga_status


def test_a_transactional_step_is_taken_with_its_commit_and_only_once(stack: Stack) -> None:
    saga_id = new_saga()
    with db.engine().connect() as conn, conn.begin():
        seen_by_duplicate = claims.preview(saga_id, A, conn)
    assert isinstance(seen_by_duplicate, Claim) and seen_by_duplicate.attempt == 1
    assert load(saga_id).steps[0].status == "pending", "a preview takes nothing"
    assert _take_and_commit(saga_id, A, "t1") == "running"
    assert _take_and_commit(saga_id, A, "t2", seen_by_duplicate) is None, "the duplicate's body rolls back"
    record = load(saga_id)
    assert record.status == "running"
    assert (record.steps[0].status, record.steps[0].attempts, record.steps[0].task_id) == ("succeeded", 1, "t1")
    with db.engine().connect() as conn, conn.begin():
        assert isinstance(claims.preview(saga_id, A, conn), Refusal)
    kinds = [e.kind for e in events(saga_id)]
    assert kinds.count("step_started") == 1 and kinds.count("step_succeeded") == 1
    for step in (B, C):
        assert _take_and_commit(saga_id, step, f"t-{step.name}") == "running"
    assert _take_and_commit(saga_id, D, "t-last") == "completed"
    assert [e.kind for e in events(saga_id)][-1] == "saga_completed"


def test_a_transactional_step_still_running_when_compensation_begins_commits_nothing(stack: Stack) -> None:
    saga_id = new_saga()
    with db.engine().connect() as conn, conn.begin() as tx:
        preview = claims.preview(saga_id, A, conn)
        assert isinstance(preview, Claim)
        assert compensation.begin(saga_id, probe_idle, "cancelled")
        assert claims.claim_and_commit(saga_id, A, "t1", "{}", conn) is None
        tx.rollback()
    assert [s.status for s in load(saga_id).steps] == ["skipped"] * 4


def test_a_deadlock_aborts_one_statement_and_keeps_its_connection(stack: Stack) -> None:
    first, second = new_saga(), new_saga()
    touch = text("UPDATE sagas SET updated_at = now() WHERE id = :id RETURNING id")
    errors: list[tuple[exc.OperationalError, bool, int]] = []  # (error, connection invalidated, SELECT 1 after)

    def cross(own: UUID, other: UUID, started: threading.Event, go: threading.Event) -> None:
        with db.engine().connect() as conn:
            try:
                with conn.begin():
                    db.fetchone(conn, touch, {"id": own})
                    started.set()
                    go.wait(10)
                    db.fetchone(conn, touch, {"id": other})
            except exc.OperationalError as error:
                errors.append((error, conn.invalidated, conn.execute(text("SELECT 1")).scalar()))

    ready = [threading.Event(), threading.Event()]
    go = threading.Event()
    threads = [threading.Thread(target=cross, args=(first, second, ready[0], go)),
               threading.Thread(target=cross, args=(second, first, ready[1], go))]
    for thread in threads:
        thread.start()
    assert all(event.wait(10) for event in ready)
    go.set()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 1, errors
    error, invalidated, after = errors[0]
    assert error.orig.sqlstate == "40P01"
    assert not invalidated and after == 1, "a statement's error must not cost its pooled connection"


def test_worker_refuses_a_visibility_timeout_a_step_could_outlast(stack: Stack) -> None:
    env = {**stack.env, "SAGA_VISIBILITY_TIMEOUT": "5"}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--concurrency=1", "--queues=nobody"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "saga: broker_transport_options['visibility_timeout']=5s is not above" in result.stdout + result.stderr


def _expire_lease(saga_id: UUID) -> None:
    from sqlalchemy import text

    from saga import db

    with db.transaction() as conn:
        conn.execute(text("UPDATE saga_steps SET lease_expires_at = now() - interval '1 second' "
                          "WHERE saga_id = :s AND lease_expires_at IS NOT NULL"), {"s": saga_id})


def _claimed(saga_id: UUID, step: Step, task_id: str, action: Action = FORWARD) -> Claim:
    got = claims.claim(saga_id, step, task_id, action)
    assert isinstance(got, Claim), got
    return got


def _run_through(saga_id: UUID, *steps: Step) -> None:
    for step in steps:
        got = _claimed(saga_id, step, f"t-{step.name}")
        assert claims.commit_success(saga_id, step, got.token, "{}", FORWARD) is not None  # type: ignore[arg-type]


def test_a_checkpoint_is_fenced_by_its_attempt_and_seen_by_later_attempts_and_the_compensation(stack: Stack) -> None:
    saga_id = new_saga()
    first = _claimed(saga_id, A, "t1")
    assert first.checkpoint == {}
    assert claims.checkpoint(saga_id, A, first.token, FORWARD, '{"payment_intent": "pi_1"}')  # type: ignore[arg-type]
    assert not claims.checkpoint(saga_id, A, first.token - 1, FORWARD, '{"payment_intent": "pi_stale"}')  # type: ignore[operator]
    _expire_lease(saga_id)
    assert not claims.checkpoint(saga_id, A, first.token, FORWARD, '{"payment_intent": "pi_late"}'), (  # type: ignore[arg-type]
        "a body whose lease ended must stop before it acts")
    second = _claimed(saga_id, A, "t2")
    assert second.checkpoint == {"payment_intent": "pi_1"} and second.attempt == 2
    assert load(saga_id).steps[0].effect_unknown, "the attempt before never reported: its effect may exist"
    assert claims.checkpoint(saga_id, A, second.token, FORWARD, '{"refund": "re_1"}')  # type: ignore[arg-type]
    assert compensation.begin(saga_id, probe_idle, "cancelled")
    undo = _claimed(saga_id, A, "undo", COMPENSATION)
    assert undo.checkpoint == {"payment_intent": "pi_1", "refund": "re_1"}
    assert claims.commit_success(saga_id, A, undo.token, '{"refunded": true}', COMPENSATION) is not None  # type: ignore[arg-type]
    step = load(saga_id).steps[0]
    assert step.compensation_result == {"refunded": True}
    assert [e.detail["values"] for e in events(saga_id) if e.kind == "step_checkpoint"] == [
        {"payment_intent": "pi_1"}, {"refund": "re_1"}]
    assert [e.detail["result"] for e in events(saga_id) if e.kind == "step_compensated"] == [{"refunded": True}]


def test_an_effect_that_may_exist_stays_known_when_a_later_attempt_fails_for_sure(stack: Stack) -> None:
    saga_id = new_saga()
    first = _claimed(saga_id, A, "t1")
    claims.record_failure(saga_id, A, first.token, FORWARD, "timeout", retry_in=0.0, effect_unknown=True)  # type: ignore[arg-type]
    second = _claimed(saga_id, A, "t2")
    claims.record_failure(saga_id, A, second.token, FORWARD, "refused", retry_in=None, effect_unknown=False)  # type: ignore[arg-type]
    step = load(saga_id).steps[0]
    assert step.status == "failed" and step.effect_unknown


def test_a_cancel_during_the_pivot_is_refused_once_the_pivot_succeeds(stack: Stack) -> None:
    import saga

    saga_id = new_saga()
    _run_through(saga_id, A, B)
    pivot = _claimed(saga_id, C, "t-c")
    assert saga.cancel(saga_id).cancel_requested, "asked while the pivot runs: its outcome decides"
    assert load(saga_id).status == "running"
    assert claims.commit_success(saga_id, C, pivot.token, "{}", FORWARD) == Committed("running", False)  # type: ignore[arg-type]
    record = load(saga_id)
    assert not record.cancel_requested and record.status == "running"
    assert [e.kind for e in events(saga_id)][-2:] == ["step_succeeded", "cancel_refused"]
    assert isinstance(claims.claim(saga_id, D, "t-d", FORWARD), Claim), "past the pivot the saga goes forward"


def test_a_cancel_during_a_compensable_step_is_honoured_when_it_ends(stack: Stack) -> None:
    import saga

    saga_id = new_saga()
    _run_through(saga_id, A)
    running = _claimed(saga_id, B, "t-b")
    saga.cancel(saga_id)
    assert load(saga_id).status == "running", "the step in flight finishes first"
    assert claims.commit_success(saga_id, B, running.token, "{}", FORWARD) == Committed("running", True)  # type: ignore[arg-type]


def test_recovery_undoes_a_cancelled_saga_whose_last_step_committed_before_the_undo_began(stack: Stack) -> None:
    """The worker died between the final commit and the start of compensation: nothing is left unfinished,
    but the cancel must still be honoured."""
    import saga
    from saga import recovery
    from tests.sagas import probe_undoable

    saga_id = saga.start("probe_undoable", {}, idempotency_key=str(uuid4())).saga.id
    first, last = probe_undoable.steps
    _run_through(saga_id, first)
    running = _claimed(saga_id, last, "t-last")
    saga.cancel(saga_id)
    assert claims.commit_success(saga_id, last, running.token, "{}", FORWARD) == Committed("running", True)  # type: ignore[arg-type]
    recovery.advance(saga_id)
    record = load(saga_id)
    assert record.status == "compensating" and record.error == "cancelled"


def test_finish_waits_while_the_last_compensation_attempt_holds_its_lease(stack: Stack) -> None:
    saga_id = new_saga()
    _run_through(saga_id, A)
    assert compensation.begin(saga_id, probe_idle, "test")
    with db.transaction() as conn:  # every attempt but the last was used
        conn.execute(text("UPDATE saga_steps SET compensation_attempts = :n WHERE saga_id = :s AND idx = 0"),
                     {"n": A.compensation.retry.max_attempts - 1, "s": saga_id})  # type: ignore[union-attr]
    last = _claimed(saga_id, A, "undo-last", COMPENSATION)
    compensation.finish(saga_id)
    assert load(saga_id).status == "compensating", "the last attempt may still undo its step"
    with db.transaction() as conn:
        past_lease = conn.execute(text("SELECT s.deadline >= st.lease_expires_at FROM sagas s JOIN saga_steps st "
                                       "ON st.saga_id = s.id AND st.idx = 0 WHERE s.id = :s"), {"s": saga_id}).scalar()
    assert past_lease, "recovery looks again once the lease is over"
    assert claims.commit_success(saga_id, A, last.token, "{}", COMPENSATION) is not None  # type: ignore[arg-type]
    compensation.finish(saga_id)
    assert load(saga_id).status == "compensated"


def _ops() -> dict[str, Any]:
    """Every ledger write that touches a saga and one of its steps, each set up on a fresh saga."""

    def commit(saga_id: UUID) -> Any:
        got = _claimed(saga_id, A, "t1")
        return lambda: claims.commit_success(saga_id, A, got.token, "{}", FORWARD)  # type: ignore[arg-type]

    def retry_later(saga_id: UUID) -> Any:
        got = _claimed(saga_id, A, "t1")
        return lambda: claims.record_failure(saga_id, A, got.token, FORWARD, "x", retry_in=1.0,  # type: ignore[arg-type]
                                             effect_unknown=True)

    def fail(saga_id: UUID) -> Any:
        got = _claimed(saga_id, A, "t1")
        return lambda: claims.record_failure(saga_id, A, got.token, FORWARD, "x", retry_in=None,  # type: ignore[arg-type]
                                             effect_unknown=True)

    def compensated(saga_id: UUID) -> Any:
        _run_through(saga_id, A)
        compensation.begin(saga_id, probe_idle, "test")
        got = _claimed(saga_id, A, "undo", COMPENSATION)
        return lambda: claims.commit_success(saga_id, A, got.token, "{}", COMPENSATION)  # type: ignore[arg-type]

    def give_up(saga_id: UUID) -> Any:
        with db.transaction() as conn:
            conn.execute(text("UPDATE saga_steps SET attempts = 99 WHERE saga_id = :s AND idx = 0"), {"s": saga_id})
        return lambda: claims.give_up(saga_id, A, FORWARD)

    def claim(saga_id: UUID) -> Any:
        return lambda: claims.claim(saga_id, A, "t1", FORWARD)

    def begin(saga_id: UUID) -> Any:
        _claimed(saga_id, A, "t1")
        return lambda: compensation.begin(saga_id, probe_idle, "test")

    return {f.__name__: f for f in (commit, retry_later, fail, compensated, give_up, claim, begin)}


@pytest.mark.parametrize("op", list(_ops()))
def test_every_write_locks_the_saga_row_before_its_step_row(stack: Stack, op: str) -> None:
    """One lock order everywhere, so a commit and the start of compensation never deadlock: while a write
    waits for the step row, it must already hold the saga row."""
    saga_id = new_saga()
    action = _ops()[op](saga_id)
    outcome: list[object] = []
    with db.engine().connect() as holder, holder.begin():
        holder.execute(text("SELECT 1 FROM saga_steps WHERE saga_id = :s AND idx = 0 FOR UPDATE"), {"s": saga_id})
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        thread = threading.Thread(target=lambda: outcome.append(action()))
        thread.start()
        wait_until(lambda: waits_for(holder_pid), timeout=10, what=f"{op} to wait for the step row")
        with db.engine().connect() as probe_conn, probe_conn.begin(), pytest.raises(exc.OperationalError) as held:
            probe_conn.execute(text("SELECT 1 FROM sagas WHERE id = :s FOR NO KEY UPDATE NOWAIT"), {"s": saga_id})
        assert held.value.orig.sqlstate == "55P03", f"{op} waits for the step row without holding the saga row"
    thread.join(10)
    assert outcome, f"{op} did not finish once the step row was free"


def test_a_write_retried_after_its_answer_was_lost_is_known_for_this_attempts_own(stack: Stack) -> None:
    """The commit reached PostgreSQL but its answer did not come back; the retry finds nothing left to change.
    That is this attempt's own commit, not a lost lease: the chain must go on."""
    from saga import execution

    saga_id = new_saga()
    got = _claimed(saga_id, A, "t1")
    assert claims.commit_success(saga_id, A, got.token, "{}", FORWARD) == Committed("running", False)  # type: ignore[arg-type]
    again = execution._durably(claims.commit_success, saga_id, A, got.token, "{}", FORWARD,
                               landed=lambda: claims.landed(saga_id, A, got.token, "succeeded"))  # type: ignore[arg-type]
    assert again == Committed("running", False)
    assert [e.kind for e in events(saga_id)].count("step_succeeded") == 1, "nothing is recorded twice"
    later = _claimed(saga_id, B, "t2")
    assert claims.landed(saga_id, B, got.token, "succeeded") is None, "another attempt's token is not ours"
    claims.record_failure(saga_id, B, later.token, FORWARD, "x", retry_in=1.0, effect_unknown=True)  # type: ignore[arg-type]
    assert claims.landed(saga_id, B, later.token, FORWARD.retrying) == Committed("running", False)
