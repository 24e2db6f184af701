"""Crash safety of the job-posting saga: SIGKILL workers while sagas run, then count what third parties hold."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Collection, Iterator
from functools import partial
from urllib.parse import urlparse
from uuid import UUID

import psutil
import pytest
from sqlalchemy import text

from saga import db, load
from saga.testing import CrashPoint, CrashTester, Stack, wait_for_status, wait_until
from standins import StandIns
from tests.holding import (
    Attempt,
    by_step,
    describe,
    held_by,
    kill_a_running_step,
    live_claims,
    still_held,
    stop_holding,
    taken_over,
)
from tests.jobs import FINAL, assert_clean_end, posting, submit
from tests.proxy import Proxy


def pool_children(stack: Stack) -> list[int]:
    worker = next(p for p in stack.processes if p.name.startswith("w") and p.alive())
    return [c.pid for c in psutil.Process(worker.popen.pid).children(recursive=True)]


def kill_in(stack: Stack, step: str, patience: float, exclude: Collection[Attempt], ids: list[UUID],
            standins: StandIns) -> Attempt:
    """A kill that landed in `step`, or in any step once `patience` seconds passed without one running. A saga's
    steps take milliseconds, so while none is caught running, new sagas come every second to give the kill
    something to land in (their ids join `ids`): one whose charge Stripe holds for a while when the charge is the
    aim or any step will do, else a few at once, whose first steps queue behind each other."""
    give_up = time.monotonic() + patience
    next_saga = time.monotonic() + 1

    def attempt() -> Attempt | None:
        nonlocal next_saga
        anything = time.monotonic() > give_up
        landed = kill_a_running_step(stack, None if anything else {step}, exclude)
        if not landed and time.monotonic() > next_saga:
            if step == "charge_payment" or anything:
                standins.stripe_faults("hang", 1, seconds=1.5, add=True)
                ids.append(submit(payment_method="pm_card_visa"))
            else:
                ids.extend(submit(payment_method="pm_card_visa") for _ in range(4))
            next_saga = time.monotonic() + 1
        return landed

    return wait_until(attempt, timeout=patience + 60, interval=0.1, what=f"a kill to land in {step} or another step")


def test_sagas_end_cleanly_while_pool_children_and_a_whole_worker_are_killed(
    workers: Stack, standins: StandIns,
) -> None:
    # Stripe answers slowly for a while, so kills also land inside the pivot's call.
    standins.stripe_faults("hang", 6, seconds=1.5)
    ids = [submit(payment_method="pm_card_chargeDeclined" if i % 4 == 3 else "pm_card_visa") for i in range(16)]
    landed: list[Attempt] = []
    # Each kill aims at the steps that talk to a third party in turn (the pivot first, while Stripe is slow);
    # more sagas arrive meanwhile, so every step keeps having some to run.
    for round_, step in enumerate(["charge_payment", "upload_logo", "send_confirmation"] * 4):
        landed.append(kill_in(workers, step, patience=3, exclude=landed, ids=ids, standins=standins))
        ids.append(submit(payment_method="pm_card_chargeDeclined" if round_ % 4 == 3 else "pm_card_visa"))
        if round_ == 6:
            # The whole worker, main process and pool at once, while it holds steps (other than those whose
            # process was killed before).
            worker = next(p for p in workers.workers() if p.name.startswith("w"))
            held = wait_until(partial(stop_holding, workers, worker, exclude=list(landed)), timeout=60,
                              interval=0.1, what="the worker to hold a step")
            workers.stop_workers(kill=True)
            workers.worker("w1", concurrency=2)
            # A claim its last statement sent may have landed after the kill: it holds that attempt too.
            landed += [a for a in {*held, *held_by(workers, worker)} if a not in landed]
    outcomes = {i: wait_for_status(i, FINAL, timeout=180).status for i in ids}
    for saga_id, status in outcomes.items():
        assert status in ("completed", "compensated"), f"{saga_id} ended {status}: {load(saga_id).error}"
        assert_clean_end(standins, saga_id, status)
    declined = [i for i in ids if load(i).input["payment_method"] == "pm_card_chargeDeclined"]
    assert declined and all(outcomes[i] == "compensated" for i in declined)
    hit = describe(landed)
    print(f"kills landed in: {hit}")
    assert {"charge_payment", "upload_logo"} <= set(by_step(landed)), f"kills landed only in {hit}"
    # A killed attempt whose commit was already on its way ends the step itself; the others were taken over.
    print(f"killed attempts taken over by another: {sum(map(taken_over, landed))} of {len(landed)}")


@pytest.mark.parametrize("point", [CrashPoint("upload_logo", "after"), CrashPoint("charge_payment", "after")],
                         ids=str)
def test_a_worker_killed_right_after_a_third_party_acted_leaves_one_effect(
    workers: Stack, standins: StandIns, saga_crashes: CrashTester, point: CrashPoint,
) -> None:
    """The crash-test kit kills the pool process after the body's call succeeded, before the ledger heard of it:
    the next attempt must find the logo (or the charge) already there and not make a second one."""
    outcome = saga_crashes.run("job_posting", posting(), point)
    assert outcome.record.status == "completed", outcome.record.error
    assert outcome.runs[point.body] == 2
    assert_clean_end(standins, outcome.record.id, "completed")


@pytest.fixture()
def slow_parties(workers: Stack, standins: StandIns) -> Iterator[tuple[Proxy, Proxy]]:
    """The worker reaches S3 and SMTP through proxies the test can slow down."""
    s3 = urlparse(standins.s3_endpoint_url)
    s3_proxy, smtp_proxy = Proxy(s3.hostname or "127.0.0.1", s3.port or 80), Proxy(
        standins.smtp_host, standins.smtp_port)
    workers.replace_workers(kill=False, env={"SAGA_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_proxy.port}",
                                             "SAGA_SMTP_PORT": str(smtp_proxy.port)})
    try:
        yield s3_proxy, smtp_proxy
    finally:
        s3_proxy.delay = smtp_proxy.delay = 0
        for p in [p for p in workers.processes if p.name.startswith("w")]:
            p.stop()
            workers.processes.remove(p)
        s3_proxy.close()
        smtp_proxy.close()


def _blocked_on_postings() -> list[tuple[int, str]]:
    """(client port, statement) of each database session whose transaction waits for the lock the test holds on
    job_postings."""
    with db.transaction() as conn:
        return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
            "SELECT client_port, query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE '%job_postings%'"))]


def _ports(pids: list[int]) -> set[int]:
    """The local ports of the processes' TCP connections."""
    return {c.laddr.port for pid in pids for c in psutil.Process(pid).net_connections(kind="tcp")}


@pytest.mark.parametrize("step", ["upload_logo", "create_posting", "charge_payment", "publish_posting",
                                  "send_confirmation"])
def test_pool_child_killed_during_each_step(
    workers: Stack, standins: StandIns, slow_parties: tuple[Proxy, Proxy], step: str,
) -> None:
    """Hold the saga inside `step` (a slow third party, or a lock on the postings table), SIGKILL the pool."""
    s3_proxy, smtp_proxy = slow_parties
    lock = None
    if step == "upload_logo":
        s3_proxy.delay = 60
    elif step == "send_confirmation":
        smtp_proxy.delay = 60
    elif step == "charge_payment":
        standins.stripe_faults("lost", 1, seconds=60)
    else:
        if step == "publish_posting":
            standins.stripe_faults("hang", 1, seconds=1.5)  # time to take the lock between steps 3 and 4
        lock = db.engine().connect()
        lock.begin()
    saga_id = submit()
    if lock is not None:
        if step == "publish_posting":
            wait_until(lambda: load(saga_id).steps[2].status == "running", what="the charge to start")
        lock.execute(text("LOCK TABLE job_postings IN EXCLUSIVE MODE"))
        [(port, statement)] = wait_until(_blocked_on_postings, what=f"{step} to wait for the postings table")
        # Where the kill lands: a pool process's transaction, inside the step's statement, waiting for the lock.
        assert statement.lstrip().startswith("INSERT" if step == "create_posting" else "UPDATE"), statement
        assert port in _ports(pool_children(workers)), "the waiting transaction is no pool process's"
    else:
        [held] = wait_until(lambda: [a for a in live_claims() if a.saga_id == saga_id and a.step == step],
                            what=f"{step} to run")
    for pid in pool_children(workers):
        os.kill(pid, signal.SIGKILL)
    if lock is None:
        assert still_held(held), f"the kill came after {step} had ended"  # where it landed: inside the step
    s3_proxy.delay = smtp_proxy.delay = 0
    if lock is not None:
        lock.rollback()
        lock.close()
    status = wait_for_status(saga_id, FINAL, timeout=120).status
    assert status == "completed", load(saga_id).error
    assert_clean_end(standins, saga_id, status)
