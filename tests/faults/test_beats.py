"""Recovery with two beat processes at once, one of them SIGKILLed and started again mid-recovery: every saga
whose messages were lost is sent again and ends cleanly, checked against the ledger and the third parties."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import text

from saga import db
from saga.testing import Process, Stack, wait_until
from standins import StandIns
from tests.faults.load import Submitted, assert_kept, outcome, report, submit
from tests.test_api import ApiServer

pytestmark = pytest.mark.fault


def beat(stack: Stack, name: str) -> Process:
    process = Process.spawn(name, [sys.executable, "-m", "celery", "-A", stack.app, "beat", "--loglevel=INFO",
                                   f"--schedule={stack.data_dir / f'{name}-schedule'}"],
                            stack.env, stack.data_dir, cwd=stack.cwd)
    stack.processes.append(process)
    return process


def recovered(ids: list[str]) -> int:
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT count(*) FROM saga_events WHERE kind = 'recovered' AND saga_id ="
                                     " ANY(CAST(:ids AS uuid[]))"), {"ids": ids}).scalar() or 0)


def test_two_beats_and_one_restarted_mid_recovery(workers: Stack, api: ApiServer, standins: StandIns) -> None:
    workers.stop_workers()  # the sagas' first messages wait in the queue...
    submitted = Submitted()
    submit(api.client("alpha"), 100, submitted)
    ids = list(submitted.ids.values())
    assert workers.redis().delete("celery") == 1  # ...and are lost
    second = beat(workers, "beat-2")
    # Recovery (both beats) sends them again once their pickup deadline passes; kill one beat in the middle.
    wait_until(lambda: recovered(ids) >= 10, timeout=60, interval=0.1, what="recovery to start")
    second.kill()
    workers.processes.remove(second)
    restarted = beat(workers, "beat-2-again")
    workers.worker("w1", concurrency=2)
    counts = outcome(standins, submitted)
    restarted.stop()
    workers.processes.remove(restarted)
    report("two beats, one restarted mid-recovery", counts)
    print(f"  recovery dispatches of these sagas: {recovered(ids)}")
    assert_kept(counts)
