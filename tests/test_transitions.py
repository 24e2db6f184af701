"""State transitions in the ledger, driven by hand on a queue no worker reads (real PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from uuid import UUID, uuid4

from sqlalchemy import exc, text

from saga import claims, compensation, db, events, load
from saga.claims import Claim, Refusal
from saga.definitions import Step
from saga.processes import ROOT
from saga.testing import Stack
from tests.sagas import probe_idle

A, B, C, D = probe_idle.steps


def new_saga() -> UUID:
    import saga

    return saga.start("probe_idle", {}, idempotency_key=str(uuid4())).saga.id


def test_a_claimed_step_cannot_be_claimed_again_while_its_lease_lasts(stack: Stack) -> None:
    saga_id = new_saga()
    first = claims.claim(saga_id, A, "t1", "forward")
    assert isinstance(first, Claim) and first.attempt == 1
    second = claims.claim(saga_id, A, "t2", "forward")
    assert isinstance(second, Refusal)
    assert second.step_status == "running" and 0 < second.wait <= A.lease_seconds
    assert load(saga_id).status == "running"


def test_a_stale_token_commits_nothing(stack: Stack) -> None:
    saga_id = new_saga()
    first = claims.claim(saga_id, A, "t1", "forward")
    assert isinstance(first, Claim)
    assert claims.commit_success(saga_id, A, first.token - 1, '{"x": 1}', "forward") is None
    assert claims.record_failure(saga_id, A, first.token + 1, "forward", "late", retry_in=None,
                                 effect_unknown=True) is None
    assert load(saga_id).steps[0].status == "running"
    assert claims.commit_success(saga_id, A, first.token, '{"x": 1}', "forward") == ("running", False)
    step = load(saga_id).steps[0]
    assert step.status == "succeeded" and step.result == {"x": 1}


def test_a_retry_waits_for_its_backoff_and_counts_attempts(stack: Stack) -> None:
    saga_id = new_saga()
    first = claims.claim(saga_id, A, "t1", "forward")
    assert isinstance(first, Claim)
    assert claims.record_failure(saga_id, A, first.token, "forward", "503", retry_in=0.6,
                                 effect_unknown=True) == ("running", False)
    early = claims.claim(saga_id, A, "t1", "forward")
    assert isinstance(early, Refusal) and early.step_status == "pending" and 0.3 < early.wait <= 0.6
    time.sleep(early.wait + 0.05)
    second = claims.claim(saga_id, A, "t1", "forward")
    assert isinstance(second, Claim) and second.attempt == 2 and second.token == first.token + 1


def test_attempts_used_up_by_crashes_fail_the_step_with_unknown_effect(stack: Stack) -> None:
    saga_id = new_saga()
    for attempt in range(1, A.retry.max_attempts + 1):
        got = claims.claim(saga_id, A, f"t{attempt}", "forward")
        assert isinstance(got, Claim)
        # the worker "dies": its lease is ended by hand instead of waiting for it
        _expire_lease(saga_id)
    refused = claims.claim(saga_id, A, "last", "forward")
    assert isinstance(refused, Refusal) and refused.attempts == A.retry.max_attempts
    assert claims.give_up(saga_id, A, "forward")
    step = load(saga_id).steps[0]
    assert step.status == "failed" and step.effect_unknown


def test_compensation_begins_once_and_skips_steps_never_started(stack: Stack) -> None:
    saga_id = new_saga()
    got = claims.claim(saga_id, A, "t1", "forward")
    assert isinstance(got, Claim)
    claims.commit_success(saga_id, A, got.token, "{}", "forward")
    got = claims.claim(saga_id, B, "t2", "forward")
    assert isinstance(got, Claim)
    assert compensation.begin(saga_id, probe_idle, "cancelled")
    assert not compensation.begin(saga_id, probe_idle, "cancelled again")
    record = load(saga_id)
    assert record.status == "compensating" and record.error == "cancelled"
    assert [s.status for s in record.steps] == ["succeeded", "failed", "skipped", "skipped"]
    assert record.steps[1].effect_unknown, "a step cut off mid-run may have left its effect"
    assert claims.commit_success(saga_id, B, got.token, "{}", "forward") is None, "the zombie is fenced"
    assert isinstance(claims.claim(saga_id, C, "t3", "forward"), Refusal)


def _take_and_commit(saga_id: UUID, step: Step, task_id: str, seen: Claim | Refusal | None = None) -> str | None:
    """A transactional step's ledger side: preview, then claim and commit in one transaction (kept only if
    the step was taken)."""
    with db.engine().connect() as conn, conn.begin() as tx:
        preview = seen if seen is not None else claims.preview(saga_id, step, conn)
        assert isinstance(preview, Claim) and preview.token is None
        status = claims.claim_and_commit(saga_id, step, task_id, '{"ok": true}', conn)
        if status is None:
            tx.rollback()
        return status


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
    assert "SAGA_VISIBILITY_TIMEOUT=5s is not above" in result.stdout + result.stderr


def _expire_lease(saga_id: UUID) -> None:
    from sqlalchemy import text

    from saga import db

    with db.transaction() as conn:
        conn.execute(text("UPDATE saga_steps SET lease_expires_at = now() - interval '1 second' "
                          "WHERE saga_id = :s AND lease_expires_at IS NOT NULL"), {"s": saga_id})
