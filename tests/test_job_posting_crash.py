"""Crash safety of the job-posting saga: SIGKILL workers while sagas run, then count what third parties hold."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import psutil
import pytest
from sqlalchemy import text

from saga import db, load
from saga.testing import CrashPoint, CrashTester, Stack, wait_for_status, wait_until
from standins import StandIns
from tests.jobs import FINAL, assert_clean_end, posting, submit
from tests.proxy import Proxy


def pool_children(stack: Stack) -> list[int]:
    worker = next(p for p in stack.processes if p.name.startswith("w") and p.alive())
    return [c.pid for c in psutil.Process(worker.popen.pid).children(recursive=True)]


def running_steps(ids: list[object]) -> set[str]:
    return {s.name for i in ids for s in load(i).steps if s.status in ("running", "compensating")}


def test_sagas_end_cleanly_while_pool_children_and_a_whole_worker_are_killed(
    workers: Stack, standins: StandIns,
) -> None:
    # Stripe answers slowly for a while, so kills also land inside the pivot's call.
    standins.stripe_faults("hang", 6, seconds=1.5)
    ids = [submit(payment_method="pm_card_chargeDeclined" if i % 4 == 3 else "pm_card_visa") for i in range(24)]
    hit: set[str] = set()
    for round_ in range(12):
        time.sleep(0.25)
        hit |= running_steps(ids)
        for pid in pool_children(workers)[:1]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if round_ == 6:
            workers.replace_workers(kill=True)
    outcomes = {i: wait_for_status(i, FINAL, timeout=180).status for i in ids}
    for saga_id, status in outcomes.items():
        assert status in ("completed", "compensated"), f"{saga_id} ended {status}: {load(saga_id).error}"
        assert_clean_end(standins, saga_id, status)
    declined = [i for n, i in enumerate(ids) if n % 4 == 3]
    assert all(outcomes[i] == "compensated" for i in declined)
    assert "charge_payment" in hit, f"kills landed only in {hit}"
    print(f"steps running when kills landed: {sorted(hit)}")


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


def _blocked_on_postings() -> bool:
    """A worker's transaction waits for the lock the test holds on job_postings."""
    with db.transaction() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%job_postings%'"
        )).scalar())


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
        wait_until(_blocked_on_postings, what=f"{step} to wait for the postings table")
    else:
        wait_until(lambda: step in running_steps([saga_id]), what=f"{step} to run")
    for pid in pool_children(workers):
        os.kill(pid, signal.SIGKILL)
    s3_proxy.delay = smtp_proxy.delay = 0
    if lock is not None:
        lock.rollback()
        lock.close()
    status = wait_for_status(saga_id, FINAL, timeout=120).status
    assert status == "completed", load(saga_id).error
    assert_clean_end(standins, saga_id, status)
