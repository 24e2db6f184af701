"""Crash safety: SIGKILL real worker processes mid-step and check the invariants on the probes' records."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from uuid import uuid4

import pytest
from sqlalchemy.engine import make_url

import saga
from saga.testing import CrashPoint, CrashTester, Stack, crash_points, wait_for_status, wait_until
from tests.holding import Attempt, describe, kill_a_running_step
from tests.probes import check_invariants, effects, event_kinds, runs
from tests.proxy import Proxy
from tests.sagas import probe

FINAL = ("completed", "compensated", "paused", "failed")


def start(**spec: object) -> saga.SagaRecord:
    return saga.start("probe", spec, idempotency_key=str(uuid4())).saga


def assert_resumed(stack: Stack, saga_id: object, step: str, kind: str = "step_started") -> None:
    """The step killed with its whole worker ran again, from the message each broker gives it: Redis keeps a dead
    worker's unacked message for its visibility timeout, so recovery re-dispatched the step (a new message, a
    new task id); RabbitMQ redelivers the very message as soon as the dead worker's connection closes (the same
    task id), so no recovery was needed."""
    log = saga.events(saga_id)
    started = [e.detail["task_id"] for e in log if e.kind == kind and e.step == step]
    assert len(started) >= 2, f"{step} was not taken again after the kill: {started}"
    killed, rerun = started[0], started[-1]
    if stack.env["SAGA_BROKER_URL"].startswith("redis"):
        assert "recovered" in [e.kind for e in log], "Redis kept the message: only recovery could send it again"
        assert rerun != killed, f"{step} ran again from the killed message {killed}, not from recovery's"
    else:
        assert rerun == killed, f"{step} ran again from {rerun}, not from the killed message {killed} redelivered"


def body_holds(saga_id: object, step: str, when: str, kind: str = "do") -> None:
    """Until the body of `step` (or its undo) holds still `when` its effect: "after" it made it, "before" it runs
    with nothing made yet."""
    if when == "after":
        wait_until(lambda: step in effects(saga_id, kind), timeout=30, what=f"{kind} {step} to act")
    else:
        wait_until(lambda: runs(saga_id, step, kind), timeout=30, what=f"{kind} {step} to start")


# After each body (it acted, the ledger does not know), and before the first compensable step and the pivot
# (claimed, nothing done); examples/shop's own tests go through every boundary of its saga type.
BOUNDARIES = [p for p in crash_points(probe) if p.when == "after" or p.step in ("a", "c")]


@pytest.mark.parametrize("point", BOUNDARIES, ids=str)
def test_pool_child_killed_at_each_step_boundary(workers: Stack, saga_crashes: CrashTester, point: CrashPoint) -> None:
    """The crash-test kit SIGKILLs the pool child just before or just after a body: the message is requeued, the
    step runs again once the dead attempt's lease ends, and every effect happens once."""
    outcome = saga_crashes.run(probe, {}, point)
    assert outcome.record.status == "completed", outcome.record.error
    assert outcome.runs[point.body] == 2
    # The probe's own record of every execution: the crashed one acted only if it was killed after acting.
    assert [r.attempt for r in runs(outcome.record.id, point.step)] == ([1, 2] if point.when == "after" else [2])
    # Every execution of its effect: the killed one made it only if it was killed after acting.
    assert effects(outcome.record.id, "do").count(point.step) == (2 if point.when == "after" else 1)
    assert check_invariants(outcome.record.id) == "completed"


@pytest.mark.parametrize("point, undone", [
    pytest.param(CrashPoint("b", "after", undo=True), ["b", "b", "a"], id="undo b after"),
    pytest.param(CrashPoint("a", "before", undo=True), ["b", "a"], id="undo a before")])
def test_pool_child_killed_at_each_boundary_of_an_undo(workers: Stack, saga_crashes: CrashTester,
                                                       point: CrashPoint, undone: list[str]) -> None:
    """Every execution of an undo's effect is counted: one killed after acting made it, and its rerun again."""
    outcome = saga_crashes.run(probe, {"fail": "c"}, point)
    assert outcome.record.status == "compensated", outcome.record.error
    assert outcome.runs[point.body] == 2
    assert effects(outcome.record.id, "undo") == undone
    assert check_invariants(outcome.record.id) == "compensated"


def test_whole_worker_killed_by_the_kit_right_after_the_pivot_acted(workers: Stack) -> None:
    """`kill="worker"`: main process and pool die together after c acted; the kit starts another worker and
    recovery re-dispatches c once its lease ends; c's effect stays single."""
    tester = CrashTester(workers, kill="worker")
    try:
        outcome = tester.run(probe, {}, CrashPoint("c", "after"))
    finally:
        tester.close()
    assert outcome.record.status == "completed", outcome.record.error
    assert outcome.runs["c"] == 2
    assert effects(outcome.record.id, "do") == ["a", "b", "c", "c", "d"]
    assert_resumed(workers, outcome.record.id, "c")
    assert check_invariants(outcome.record.id) == "completed"


@pytest.mark.parametrize("step, when", [("b", "after"), ("c", "before")])
def test_whole_worker_killed_mid_step(workers: Stack, step: str, when: str) -> None:
    """Main process and pool die together; recovery re-dispatches once the saga's deadline passes."""
    hold = "hold" if when == "after" else "hold_before"
    record = start(**{hold: {step: 30}})
    body_holds(record.id, step, when)
    workers.stop_workers(kill=True)
    # Where the kill landed: in the body, after its effect or before it.
    assert effects(record.id, "do").count(step) == (1 if when == "after" else 0)
    workers.worker("w1", concurrency=2)
    record = wait_for_status(record.id, FINAL, timeout=90)
    assert record.status == "completed"
    # Held after its effect, the killed execution made it; held before, it did not.
    assert effects(record.id, "do").count(step) == (2 if when == "after" else 1)
    assert check_invariants(record.id) == "completed"
    assert_resumed(workers, record.id, step)


def test_whole_worker_killed_during_compensation(workers: Stack) -> None:
    record = start(fail="c", hold={"undo_b": 30})
    body_holds(record.id, "b", "after", kind="undo")
    workers.stop_workers(kill=True)
    assert effects(record.id, "undo") == ["b"], "the kill landed after undo b acted"
    workers.worker("w1", concurrency=2)
    record = wait_for_status(record.id, FINAL, timeout=90)
    assert record.status == "compensated"
    assert effects(record.id, "undo") == ["b", "b", "a"], "killed while held after its effect, undo b made it twice"
    assert check_invariants(record.id) == "compensated"
    assert_resumed(workers, record.id, "b", kind="compensation_started")


def test_many_sagas_survive_repeated_child_kills(workers: Stack) -> None:
    """Twelve sagas in flight while pool children are killed three times: every one ends cleanly."""
    records = [start(hold={"b": 0.3}, fail=("c" if i % 3 == 0 else None)) for i in range(12)]
    landed: list[Attempt] = []
    for _ in range(3):  # each kill lands in a step a pool process runs (the worker says which, the ledger agrees)
        landed.append(wait_until(partial(kill_a_running_step, workers, None, list(landed)), timeout=60,
                                 interval=0.05, what="a kill to land in a running step"))
    outcomes = [wait_for_status(r.id, FINAL, timeout=120).status for r in records]
    for r, status in zip(records, outcomes):
        assert status == ("compensated" if r.input.get("fail") else "completed")
        assert check_invariants(r.id) == status
    print(f"kills landed in: {describe(landed)}")


@pytest.fixture()
def ledger_proxy(workers: Stack) -> Iterator[Proxy]:
    """The only worker (one pool child) reaches PostgreSQL through a proxy the test can cut."""
    url = make_url(workers.env["SAGA_DATABASE_URL"])
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    for process in [p for p in workers.processes if p.name.startswith("w")]:
        process.stop()
        workers.processes.remove(process)
    workers.worker("w-ledger", concurrency=1, queues=("probe", "celery"), env={"SAGA_DATABASE_URL": proxied})
    try:
        yield proxy
    finally:
        proxy.restore()
        for process in [p for p in workers.processes if p.name.startswith("w")]:
            process.stop()
            workers.processes.remove(process)
        proxy.close()


def test_a_commit_that_meets_a_ledger_outage_is_retried_without_running_the_body_again(
    workers: Stack, ledger_proxy: Proxy,
) -> None:
    """The body of d has acted when the ledger becomes unreachable; its result must still be recorded once the
    ledger is back, without a second run (for an email step, a second email)."""
    record = start(hold={"d": 2})
    wait_until(lambda: "d" in effects(record.id, "do"), what="step d to act")
    ledger_proxy.cut()
    wait_until(lambda: ledger_proxy.refused >= 1, timeout=30, what="the worker to find the ledger unreachable")
    ledger_proxy.restore()
    record = wait_for_status(record.id, FINAL, timeout=60)
    assert record.status == "completed"
    assert len(runs(record.id, "d")) == 1, "the body ran again because its commit failed"
    assert event_kinds(record.id, "step_started").count("d") == 1
    assert check_invariants(record.id) == "completed"


def test_a_commit_that_outlasts_the_worker_is_sealed_and_recorded_from_its_message(
    workers: Stack, ledger_proxy: Proxy,
) -> None:
    """The ledger stays away until the attempt gives up on it (its time limit): the result leaves in a message of
    its own, sealed, and is recorded from it once the ledger is back, the body run once."""
    record = start(hold={"d": 1})
    wait_until(lambda: "d" in effects(record.id, "do"), what="step d to act")
    ledger_proxy.cut()
    worker = next(p for p in workers.processes if p.name == "w-ledger")
    waiting = f"saga {record.id} forward d: result not recorded yet"
    wait_until(lambda: waiting in worker.log_text(), timeout=30, what="the commit to leave in a message")
    ledger_proxy.restore()
    record = wait_for_status(record.id, FINAL, timeout=60)
    assert record.status == "completed"
    assert len(runs(record.id, "d")) == 1, "the body ran again: its sealed commit was not recorded"
    assert event_kinds(record.id, "step_succeeded").count("d") == 1
    assert f"saga {record.id} forward d: refused a commit" not in worker.log_text()
    assert check_invariants(record.id) == "completed"
