"""Recovery with two beat processes at once, one of them SIGKILLed and started again mid-recovery (once it had
re-sent sagas, while others were still to be re-sent): every saga whose messages were lost is sent again and ends
cleanly, checked against the ledger and the third parties."""

from __future__ import annotations

import re
import sys

import pytest
from sqlalchemy import text

from saga import db
from saga.testing import Process, Stack, wait_until
from standins import StandIns
from tests.faults.load import Submitted, assert_kept, outcome, report, submit
from tests.holding import fresh_log
from tests.test_api import ApiServer

pytestmark = pytest.mark.fault


# Sagas a beat re-sends in one recovery pass: with two beats, recovering 100 sagas takes several passes of each.
BATCH = 10
_WOKE = re.compile(r"recovery woke (\d+) saga")


def beat(stack: Stack, name: str) -> Process:
    """A beat of this test's own, each re-sending at most `BATCH` sagas a pass, with a log of this session only."""
    fresh_log(stack, name)
    process = Process.spawn(name, [sys.executable, "-m", "celery", "-A", stack.app, "beat", "--loglevel=INFO",
                                   f"--schedule={stack.data_dir / f'{name}-schedule'}"],
                            {**stack.env, "SAGA_RECOVERY_BATCH": str(BATCH)}, stack.data_dir, cwd=stack.cwd)
    stack.processes.append(process)
    return process


def woke(process: Process) -> int:
    """How many sagas a beat says its recovery passes have re-sent."""
    return sum(int(n) for n in _WOKE.findall(process.log_text()))


def recovered(ids: list[str]) -> int:
    """How many of these sagas recovery has picked up (each re-sent, or being re-sent)."""
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT count(DISTINCT saga_id) FROM saga_events WHERE kind = 'recovered' "
                                     "AND saga_id = ANY(CAST(:ids AS uuid[]))"), {"ids": ids}).scalar() or 0)


def test_two_beats_and_one_restarted_mid_recovery(workers: Stack, api: ApiServer, standins: StandIns) -> None:
    workers.stop_workers()  # the sagas' first messages wait in the queue...
    for process in [p for p in workers.processes if p.name == "beat"]:
        process.stop()  # (the suite's beat; two of this test's own replace it)
        workers.processes.remove(process)
    submitted = Submitted()
    submit(api.client("alpha"), 100, submitted)
    ids = list(submitted.ids.values())
    # The API sends each saga once its answer is out: wait for the last of them before the queue is lost.
    wait_until(lambda: workers.redis().llen("celery") >= len(ids), timeout=30, interval=0.05,
               what="every saga's first message to be queued")
    assert workers.redis().delete("celery") == 1  # ...and are lost
    first, second = beat(workers, "beat-1"), beat(workers, "beat-2")
    # Recovery (both beats) sends them again once their pickup deadline passes; kill the second beat once it has
    # re-sent some, while others are still to be re-sent.
    wait_until(lambda: woke(second) >= 1, timeout=90, interval=0.05, what="the second beat to re-send sagas")
    second.kill()
    workers.processes.remove(second)
    done_by_second, picked_up = woke(second), recovered(ids)
    assert done_by_second >= 1, "the second beat was killed before it re-sent anything"
    assert picked_up < len(ids), "recovery was over before the second beat was killed"
    restarted = beat(workers, "beat-2-again")
    workers.worker("w1", concurrency=2)
    counts = outcome(standins, submitted)
    for process in (first, restarted):
        process.stop()
        workers.processes.remove(process)
    report("two beats, one restarted mid-recovery", counts)
    print(f"  the killed beat had re-sent {done_by_second} sagas, and recovery had picked up {picked_up} of "
          f"{len(ids)}; recovery dispatches of these sagas in all: {recovered(ids)}; after its restart the second "
          f"beat re-sent {woke(restarted)}, the first {woke(first)}")
    assert recovered(ids) == len(ids), "a lost saga ended without recovery re-sending it"
    assert_kept(counts)
