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
from tests.holding import Attempt, by_step, describe, fresh_log, held_by, stop_holding, taken_over
from tests.test_api import ApiServer

pytestmark = pytest.mark.fault
# Steps whose execution makes an effect a third party counts (an upload, a charge call, a receipt).
EFFECTFUL = ("upload_logo", "charge_payment", "send_confirmation")


def fleet(stack: Stack, names: list[str]) -> None:
    """Exactly these workers (two pool processes each)."""
    stack.stop_workers()
    for name in names:
        fresh_log(stack, name)
        stack.worker(name, concurrency=2)


def test_workers_sigkilled_at_random_while_300_sagas_run_and_more_arrive(
        workers: Stack, api: ApiServer, standins: StandIns) -> None:
    fleet(workers, ["k0", "k1"])
    rng = random.Random(11)
    submitted, errors = Submitted(), []
    feeder = in_background(api.client("alpha"), 300, submitted, pace=0.05, errors=errors)
    kills = 0
    landed: list[Attempt] = []
    while feeder.is_alive() or kills < 10:
        outage(rng.uniform(1.0, 3.0))  # the storm's rhythm
        victim = rng.choice(workers.workers())
        victim.kill()  # SIGKILL to the worker and its pool processes at once
        workers.processes.remove(victim)
        kills += 1
        fresh_log(workers, f"k{kills + 1}")
        workers.worker(f"k{kills + 1}", concurrency=2)
        landed += held_by(workers, victim)  # what it died with (its claims' leases outlive it)
    feeder.join()
    assert not errors, errors
    counts = outcome(standins, submitted, timeout=300)
    report(f"{kills} workers SIGKILLed", counts)
    print(f"  steps the killed workers held when they died: {describe(landed)}")
    assert landed, "no kill landed on a step in flight"
    # A receipt sent just before its worker died, and not yet recorded, is sent again: at most once per kill.
    assert_kept(counts, duplicate_emails=kills * 2)


def test_a_worker_frozen_past_its_leases_then_resumed_commits_nothing_late(
        workers: Stack, api: ApiServer, standins: StandIns) -> None:
    fleet(workers, ["f0", "f1"])
    frozen = workers.workers()[0]
    submitted, errors = Submitted(), []
    feeder = in_background(api.client("alpha"), 60, submitted, errors=errors)
    wait_until(lambda: len(submitted.ids) >= 20, timeout=60, what="sagas to be under way")
    # SIGSTOP to the main process and pool processes, at a moment they hold steps mid-way.
    held = wait_until(lambda: stop_holding(workers, frozen), timeout=60, interval=0.05,
                      what="the worker to be frozen holding a step")
    try:
        feeder.join()
        # A claim its last statement sent may have landed just after the freeze: it holds that attempt too.
        held = sorted({*held, *held_by(workers, frozen)}, key=str)
        # The rest of the fleet takes over every step it held, once the step's lease ended.
        wait_until(lambda: all(map(taken_over, held)), timeout=120, interval=0.5,
                   what=f"the rest of the fleet to take over {describe(held)}")
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
    overtaken = by_step(held)
    print(f"  steps the frozen worker held, each overtaken: {describe(held)}; executions it discarded when it "
          f"woke: {frozen.log_text().count('lease lost')}")
    # I5's window: a receipt frozen between its send and its commit is sent again by the worker that took the
    # step over; and an overtaken execution may still make its effect when it wakes, after the takeover began.
    assert_kept(counts, duplicate_emails=overtaken["send_confirmation"],
                overtaken=sum(overtaken[step] for step in EFFECTFUL))
