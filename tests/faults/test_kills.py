"""Worker processes killed or frozen while job postings run: every saga still ends cleanly, checked against the
ledger and the third parties' own records."""

from __future__ import annotations

import random
import signal

import pytest

from saga.testing import Stack, wait_until
from standins import StandIns
from tests.faults.load import Submitted, assert_kept, in_background, outcome, report, settled, tally
from tests.faults.servers import outage
from tests.test_api import ApiServer

pytestmark = pytest.mark.fault
# Seconds a worker stays frozen or cut off: past its leases (a job-posting step's time limit, 15 s, plus 7 s) and
# its sagas' recovery deadline (that lease plus pickup and margin, 5 s here), so another worker takes over.
TAKEOVER = 35


def fleet(stack: Stack, names: list[str]) -> None:
    """Exactly these workers (two pool processes each)."""
    stack.stop_workers()
    for name in names:
        stack.worker(name, concurrency=2)


def test_workers_sigkilled_at_random_while_300_sagas_run_and_more_arrive(
        workers: Stack, api: ApiServer, standins: StandIns) -> None:
    fleet(workers, ["k0", "k1"])
    rng = random.Random(11)
    submitted, errors = Submitted(), []
    feeder = in_background(api.client("alpha"), 300, submitted, pace=0.05, errors=errors)
    kills = 0
    while feeder.is_alive() or kills < 10:
        outage(rng.uniform(1.0, 3.0))  # the storm's rhythm
        victim = rng.choice(workers.workers())
        victim.kill()  # SIGKILL to the worker and its pool processes at once
        workers.processes.remove(victim)
        kills += 1
        workers.worker(f"k{kills + 1}", concurrency=2)
    feeder.join()
    assert not errors, errors
    counts = outcome(standins, submitted, timeout=300)
    report(f"{kills} workers SIGKILLed", counts)
    # A receipt sent just before its worker died, and not yet recorded, is sent again: at most once per kill.
    assert_kept(counts, duplicate_emails=kills * 2)


def test_a_worker_frozen_past_its_leases_then_resumed_commits_nothing_late(
        workers: Stack, api: ApiServer, standins: StandIns) -> None:
    fleet(workers, ["f0", "f1"])
    frozen = workers.workers()[0]
    submitted, errors = Submitted(), []
    feeder = in_background(api.client("alpha"), 60, submitted, errors=errors)
    wait_until(lambda: len(submitted.ids) >= 20, timeout=60, what="sagas to be under way")
    frozen.send(signal.SIGSTOP)  # main process and pool processes, mid-step
    try:
        feeder.join()
        # Past every lease it held and past its sagas' recovery deadlines: the rest of the fleet takes them over.
        outage(TAKEOVER)
    finally:
        frozen.send(signal.SIGCONT)
    final = settled(submitted.ids.values(), timeout=240)
    # Whatever the frozen worker held when it woke has ended before anything is counted, so a late commit of
    # its would show in the counts.
    wait_until(lambda: workers.held(frozen.name) == 0, timeout=90, interval=1,
               what="the frozen worker to end what it held")
    counts = tally(standins, submitted, final)
    assert not errors, errors
    report("a worker frozen past its leases", counts)
    print(f"  the frozen worker's executions discarded after it woke: {frozen.log_text().count('lease lost')}")
    # I5's window: a receipt frozen between its send and its commit is sent again by the worker that takes the
    # step over, at most one per pool process of the frozen worker (2).
    assert_kept(counts, duplicate_emails=2)
