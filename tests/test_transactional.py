"""Transactional steps: their database writes commit with the step's outcome, so they happen exactly once."""

from __future__ import annotations

import os
import signal
from uuid import UUID, uuid4

from sqlalchemy import text

import saga
from saga import db
from saga.testing import Stack, wait_for_status, wait_until
from tests.probes import runs

FINAL = ("completed", "compensated", "paused", "failed")


def tx_effects(saga_id: UUID) -> list[tuple[str, str]]:
    with db.transaction() as conn:
        return [tuple(r) for r in conn.execute(
            text("SELECT step, kind FROM probe_tx_effects WHERE saga_id = :s ORDER BY step, kind"), {"s": saga_id})]


def start(**spec: object) -> UUID:
    return saga.start("probe_tx", spec, idempotency_key=str(uuid4())).saga.id


def test_failed_attempts_leave_no_writes_behind(workers: Stack) -> None:
    saga_id = start(transient={"a": 2})
    assert wait_for_status(saga_id, FINAL).status == "completed"
    assert len(runs(saga_id, "a")) == 3, "each attempt wrote, then failed"
    assert tx_effects(saga_id) == [("a", "do"), ("b", "do")]


def test_pool_child_killed_after_the_write_leaves_exactly_one_row(workers: Stack) -> None:
    saga_id = start(hold={"a": 30})
    victim = wait_until(lambda: runs(saga_id, "a"), what="step a to write")[0]
    os.kill(victim.pid, signal.SIGKILL)
    assert wait_for_status(saga_id, FINAL, timeout=60).status == "completed"
    assert [r.attempt for r in runs(saga_id, "a")] == [1, 1], "the killed attempt's claim rolled back too"
    assert tx_effects(saga_id) == [("a", "do"), ("b", "do")]


def test_permanent_failure_rolls_back_and_compensates_in_transactions(workers: Stack) -> None:
    saga_id = start(fail="b")
    assert wait_for_status(saga_id, FINAL).status == "compensated"
    assert tx_effects(saga_id) == [("a", "do"), ("a", "undo")]
