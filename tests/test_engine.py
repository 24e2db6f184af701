"""The engine end to end, through real worker processes, PostgreSQL and Redis."""

from __future__ import annotations

import itertools
import json
import re
import threading
from typing import Any
from uuid import UUID, uuid4

import pytest
from celery.app.task import Context
from sqlalchemy import text

import saga
from saga import claims, db
from saga.actions import FORWARD
from saga.claims import Committed
from saga.definitions import get_saga_type
from saga.errors import StepFailed
from saga.settings import get_settings
from saga.testing import Stack, wait_for_status, wait_until
from tests.probes import check_invariants, effects, event_kinds, runs
from tests.sagas import probe_idle

FINAL = ("completed", "compensated", "paused", "failed")


def run(stack: Stack, type_name: str = "probe", **spec: object) -> saga.SagaRecord:
    started = saga.start(type_name, spec, idempotency_key=str(uuid4()))
    return wait_for_status(started.saga.id, FINAL, timeout=60)


def switch(name: str, on: bool) -> None:
    with db.transaction() as conn:
        sql = "INSERT INTO probe_switches VALUES (:n) ON CONFLICT DO NOTHING" if on else \
            "DELETE FROM probe_switches WHERE name = :n"
        conn.execute(text(sql), {"n": name})


def test_a_saga_completes_every_step_once(workers: Stack) -> None:
    record = run(workers)
    assert record.status == "completed"
    assert record.progress == {"done": 4, "total": 4}
    assert [s.status for s in record.steps] == ["succeeded"] * 4
    assert effects(record.id, "do") == ["a", "b", "c", "d"]
    assert check_invariants(record.id) == "completed"
    kinds = [e.kind for e in saga.events(record.id)]
    assert kinds[0] == "saga_accepted" and kinds[-1] == "saga_completed"


@pytest.mark.parametrize("failing, undone", [("a", []), ("b", ["a"]), ("c", ["b", "a"])])
def test_permanent_failure_compensates_earlier_steps_newest_first(
    workers: Stack, failing: str, undone: list[str],
) -> None:
    record = run(workers, fail=failing)
    assert record.status == "compensated"
    assert event_kinds(record.id, "step_compensated") == undone
    assert effects(record.id, "undo") == undone
    statuses = {s.name: s.status for s in record.steps}
    assert statuses[failing] == "failed"
    assert all(statuses[name] == "compensated" for name in undone)
    assert statuses["d"] == "skipped"
    assert len(runs(record.id, failing)) == 1, "a permanent error is not retried"
    assert check_invariants(record.id) == "compensated"


def test_transient_failures_retry_with_growing_delays_then_succeed(workers: Stack) -> None:
    record = run(workers, transient={"b": 3})
    assert record.status == "completed"
    b = next(s for s in record.steps if s.name == "b")
    assert b.attempts == 4
    delays = [e.detail["retry_in"] for e in saga.events(record.id) if e.kind == "step_attempt_failed"]
    assert len(delays) == 3
    assert delays == sorted(delays), f"backoff shrank: {delays}"
    assert 0.1 <= delays[0] <= 0.2 and 0.4 <= delays[2] <= 0.8
    started = [r.at for r in runs(record.id, "b")]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(started)]
    assert all(gap >= delay - 0.05 for gap, delay in zip(gaps, delays)), f"retried early: {gaps} vs {delays}"
    assert effects(record.id, "do").count("b") == 1


def test_compensation_that_keeps_failing_leaves_saga_failed_then_operator_recompensates(workers: Stack) -> None:
    name = f"undo-b-{uuid4()}"
    switch(name, True)
    record = run(workers, fail="c", switch={"undo_b": name})
    assert record.status == "failed"
    assert "compensation of b gave up" in (record.error or "")
    assert effects(record.id, "undo") == ["a"], "the older step is still undone after one gives up"
    assert len(runs(record.id, "b", kind="undo")) == 4

    switch(name, False)
    saga.compensate(record.id)
    record = wait_for_status(record.id, FINAL)
    assert record.status == "compensated"
    assert sorted(effects(record.id, "undo")) == ["a", "b"]
    assert check_invariants(record.id, one_pass=False) == "compensated"


def test_retriable_step_that_keeps_failing_pauses_and_resume_finishes(workers: Stack) -> None:
    name = f"d-{uuid4()}"
    switch(name, True)
    record = run(workers, switch={"d": name})
    assert record.status == "paused"
    assert effects(record.id, "undo") == [], "nothing after the pivot is compensated"
    assert {s.name: s.status for s in record.steps}["d"] == "failed"
    with pytest.raises(saga.ActionRefused):
        saga.cancel(record.id)

    switch(name, False)
    saga.resume(record.id)
    record = wait_for_status(record.id, FINAL)
    assert record.status == "completed"
    assert check_invariants(record.id) == "completed"
    with pytest.raises(saga.ActionRefused, match="only a paused saga"):
        saga.resume(record.id)


def test_concurrent_starts_with_one_idempotency_key_make_one_saga(workers: Stack) -> None:
    key = str(uuid4())
    ids: list[object] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            ids.append(saga.start("probe", {}, idempotency_key=key).saga.id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 1
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM sagas WHERE idempotency_key = :k"), {"k": key}).scalar() == 1
    with pytest.raises(saga.IdempotencyConflict):
        saga.start("probe", {"fail": "a"}, idempotency_key=key)
    assert wait_for_status(ids[0], FINAL).status == "completed"


def test_bad_input_is_refused_before_anything_is_written(stack: Stack) -> None:
    with db.transaction() as conn:
        before = conn.execute(text("SELECT count(*) FROM sagas")).scalar()
    with pytest.raises(saga.InvalidInput, match="transient") as info:
        saga.start("probe", {"transient": "lots"}, idempotency_key="bad-input")
    assert info.value.details[0]["field"].startswith("transient")
    with pytest.raises(saga.UnknownSagaType, match="nope"):
        saga.start("nope", {})
    with pytest.raises(saga.InvalidInput, match="NUL character"):
        saga.start("probe", {"fail": "a\x00"}, idempotency_key="nul-input")
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM sagas")).scalar() == before


def queued_for(stack: Stack, saga_id: UUID, queue: str = "nobody") -> int:
    """Messages waiting on an unread queue for this saga; beat may re-send other tests' idle sagas there."""
    messages = (json.loads(m) for m in stack.redis().lrange(queue, 0, -1))
    return sum(str(saga_id) in m["headers"]["argsrepr"] for m in messages)


def test_errback_called_twice_compensates_once(stack: Stack) -> None:
    """Play a worker by hand on a queue nobody reads: step a succeeds, b fails, the errback fires twice."""
    started = saga.start("probe_idle", {}, idempotency_key=str(uuid4()))
    saga_id = started.saga.id
    a, b = probe_idle.steps[0], probe_idle.steps[1]
    claim_a = claims.claim(saga_id, a, "task-a", FORWARD)
    assert isinstance(claim_a, claims.Claim)
    assert claims.commit_success(saga_id, a, claim_a.token, '{"ok": 1}', FORWARD) == Committed("running", False)
    claim_b = claims.claim(saga_id, b, "task-b", FORWARD)
    assert isinstance(claim_b, claims.Claim)
    claims.record_failure(saga_id, b, claim_b.token, FORWARD, "boom", retry_in=None, effect_unknown=False)
    queued_before = queued_for(stack, saga_id, "nobody.compensations")

    from workers.app import app

    on_error = app.tasks["saga.on_error"]
    request = Context(task=b.task_name, id="task-b", args=[str(saga_id)])
    on_error(request, StepFailed("boom"), "", str(saga_id))
    on_error(request, StepFailed("boom"), "", str(saga_id))

    assert saga.load(saga_id).status == "compensating"
    assert [e.kind for e in saga.events(saga_id)].count("compensation_begun") == 1
    assert queued_for(stack, saga_id, "nobody.compensations") == queued_before + 1, \
        "one compensation chain dispatched, on the saga type's compensation queue"


def test_hard_time_limit_fires_errback_twice_and_compensates_once(workers: Stack) -> None:
    record = run(workers, "probe_limit", hang="b")
    assert record.status == "compensated"
    b = next(s for s in record.steps if s.name == "b")
    assert b.status == "compensated", "a step killed mid-body may have left its effect: it is undone"
    assert [e.kind for e in saga.events(record.id)].count("compensation_begun") == 1
    assert event_kinds(record.id, "step_compensated") == ["b", "a"]
    assert check_invariants(record.id) == "compensated"


def test_cancel_waits_for_the_step_in_flight_then_compensates(workers: Stack) -> None:
    started = saga.start("probe", {"hold": {"b": 1.5}}, idempotency_key=str(uuid4()))
    wait_until(lambda: runs(started.saga.id, "b"), what="step b to start")
    saga.cancel(started.saga.id)
    saga.cancel(started.saga.id)  # repeating is harmless
    record = wait_for_status(started.saga.id, FINAL)
    assert record.status == "compensated"
    assert effects(record.id, "do") == ["a", "b"]
    assert event_kinds(record.id, "step_compensated") == ["b", "a"]
    assert effects(record.id, "undo") == ["b", "a"]


def test_lost_dispatch_is_healed_by_recovery(workers: Stack) -> None:
    """A saga whose message vanished (broker lost it, or dispatch failed) is dispatched again by beat."""
    with workers.redis().pipeline() as pipe:
        started = saga.start("probe_idle", {}, idempotency_key=str(uuid4()))
        pipe.delete("nobody").execute()
    assert saga.load(started.saga.id).status == "pending"
    wait_until(lambda: "recovered" in [e.kind for e in saga.events(started.saga.id)], timeout=30,
               what="recovery to wake the saga")
    # Recovery records the event, then sends the chain.
    wait_until(lambda: queued_for(workers, started.saga.id) >= 1, what="recovery to send the chain again")


def test_recovery_backs_off_a_saga_that_stays_stuck(workers: Stack) -> None:
    """A saga stuck for a while is re-sent, then left alone as long again (capped), not every pickup timeout."""
    settings = get_settings()
    stuck_for = {"brief": 0.0, "long": 100.0, "ages": 10 * settings.recovery_backoff_max}
    ids = {}
    for name, seconds in stuck_for.items():
        ids[name] = saga.start("probe_idle", {}, idempotency_key=str(uuid4())).saga.id
        with db.transaction() as conn:
            conn.execute(text("UPDATE sagas SET updated_at = now() - make_interval(secs => :s), deadline = now() "
                              "WHERE id = :id"), {"s": seconds, "id": ids[name]})
    for saga_id in ids.values():  # beat's recovery records the wait, then sends the chain
        wait_until(lambda s=saga_id: queued_for(workers, s) >= 2, what="recovery to re-send it")  # after start's
    with db.transaction() as conn:
        waits = dict(conn.execute(text("SELECT id, extract(epoch FROM deadline - now()) FROM sagas WHERE id IN "
                                       "(:a, :b, :c)"), dict(zip("abc", ids.values()))).all())
    wait = {name: float(waits[saga_id]) for name, saga_id in ids.items()}
    patience = claims.patience(probe_idle)
    assert patience - 2 < wait["brief"] <= patience, wait
    assert 100 - 2 < wait["long"] <= 100 + 5, wait  # stuck 100 s when set, a little more when recovery looked
    assert settings.recovery_backoff_max - 2 < wait["ages"] <= settings.recovery_backoff_max, wait


def worker_log(stack: Stack) -> str:
    return "".join(p.log_text() for p in stack.processes if p.name.startswith("w"))


def send_again(stack: Stack, step: Any, saga_id: UUID, redelivered: bool) -> str:
    """Deliver the step's task once more. `redelivered` puts the message back the way kombu restores one
    whose worker died before acking it (flagged `redelivered`), so the worker takes it for a redelivery."""
    if not redelivered:
        return str(step.task.si(str(saga_id)).set(queue="probe").apply_async().id)
    task_id = str(step.task.si(str(saga_id)).set(queue="nobody").apply_async().id)
    broker = stack.redis()
    raw = wait_until(lambda: next((m for m in broker.lrange("nobody", 0, -1) if task_id.encode() in m), None),
                     what="the message on the unread queue")
    broker.lrem("nobody", 1, raw)
    message = json.loads(raw)
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"].update(redelivered=True, routing_key="probe")
    broker.lpush("probe", json.dumps(message))
    return task_id


@pytest.mark.parametrize("redelivered", [False, True])
@pytest.mark.parametrize("type_name, duplicate, busy", [("probe", "b", {"hold_before": {"d": 5}}),
                                                         ("probe_tx", "a", {"hold": {"b": 5}})])
def test_a_duplicate_delivery_of_a_step_that_succeeded_does_not_run_it_again(
    workers: Stack, type_name: str, duplicate: str, busy: dict[str, object], redelivered: bool,
) -> None:
    """Celery may deliver a step twice (a chain publishes the next step before it acks this one; a worker dies
    after the commit, before the ack); the second delivery finds the step done and lets its chain go on without
    running the body."""
    saga_id = saga.start(type_name, busy, idempotency_key=str(uuid4())).saga.id
    later = next(iter(next(iter(busy.values()))))
    wait_until(lambda: runs(saga_id, later), what=f"step {later} to start")
    step = next(s for s in get_saga_type(type_name).steps if s.name == duplicate)
    task_id = send_again(workers, step, saga_id, redelivered)
    # It lets the chain go on; with continuation it walks on to the step still running, and ends once that ended.
    wait_until(lambda: re.search(rf"\[{task_id}\] (succeeded|ignored)", worker_log(workers)),
               what="the duplicate to be handled")
    record = wait_for_status(saga_id, FINAL)
    assert record.status == "completed"
    assert len(runs(saga_id, duplicate)) == 1, "the duplicate ran the body again"
    assert event_kinds(saga_id, "step_succeeded").count(duplicate) == 1


def test_an_effect_whose_answer_was_lost_is_undone_though_a_later_attempt_fails_for_sure(workers: Stack) -> None:
    """Attempt 1 of b acts but never hears back; attempt 2 is refused outright. b's effect is still there."""
    record = run(workers, lost_answer={"b": 1}, fail_from={"b": 2})
    assert record.status == "compensated"
    assert [r.attempt for r in runs(record.id, "b")] == [1, 2]
    assert effects(record.id, "do") == ["a", "b"]
    assert effects(record.id, "undo") == ["b", "a"], "the effect of the first attempt was left behind"
    assert check_invariants(record.id) == "compensated"


@pytest.mark.parametrize("type_name, step, ends", [("probe", "d", "paused"), ("probe_tx", "b", "compensated")])
def test_a_result_the_ledger_cannot_store_fails_the_step_at_once(
    workers: Stack, type_name: str, step: str, ends: str,
) -> None:
    record = run(workers, type_name, bad_result=step)
    assert record.status == ends
    assert "cannot be stored" in (record.error or ""), record.error
    assert len(runs(record.id, step)) == 1, "an outcome no retry can store is not retried"


@pytest.mark.parametrize("type_name, step, executions, unpaced, how", [
    # Claimed up front, each crashed attempt keeps the step until its lease ends: the next one waits it out.
    ("probe_short", "b", 2, 0, "crash"),
    # A transactional step's first crash leaves no trace (its claim rolls back with it), so its redelivery runs at
    # once, claimed up front from then on; the attempt after that waits out the lease.
    ("probe_tx_short", "a", 3, 1, "crash"),
    # Killed by the hard time limit, the attempt is recorded failed and retried once its process is surely gone.
    ("probe_tx_short", "a", 2, 0, "hang")])
def test_a_step_whose_body_kills_its_worker_runs_out_of_attempts_instead_of_looping(
    workers: Stack, type_name: str, step: str, executions: int, unpaced: int, how: str,
) -> None:
    """Each attempt SIGKILLs its pool child (or hangs past the hard time limit, so Celery kills it); the message
    is requeued or acked every time. Every execution is counted (a transactional step's first crash included,
    though it leaves no trace in the ledger) and paced by the lease of the attempt before it."""
    started = saga.start(type_name, {how: step}, idempotency_key=str(uuid4()))
    record = wait_for_status(started.saga.id, FINAL, timeout=90)
    assert record.status == "compensated"
    assert ("ended without an outcome" if how == "crash" else "TimeLimitExceeded") in (record.error or ""), record.error
    ran = runs(record.id, step)
    assert len(ran) == executions, f"{len(ran)} executions"
    gaps = [(later.at - earlier.at).total_seconds() for earlier, later in itertools.pairwise(ran)]
    lease = next(s for s in get_saga_type(type_name).steps if s.name == step).lease_seconds
    early = [gap for gap in gaps if gap < lease - 0.5]
    assert len(early) == unpaced, f"executions {gaps} s apart, a lease is {lease} s"
