"""Compensations run on a queue of their own, which every worker of the forward queue consumes: an undo does not
wait behind a backlog of forward steps."""

from __future__ import annotations

import time
from uuid import uuid4

from sqlalchemy import text

import saga
from saga import db
from saga.queues import compensation_queue
from saga.testing import Stack, wait_for_status, wait_until
from tests.sagas import probe_backlog

BACKLOG = 1000


def event_time(saga_id: object, kind: str) -> float | None:
    with db.transaction() as conn:
        at = conn.execute(text("SELECT min(created_at) FROM saga_events WHERE saga_id = :s AND kind = :k"),
                          {"s": saga_id, "k": kind}).scalar()
    return at.timestamp() if at else None


def test_an_undo_starts_within_seconds_behind_a_thousand_forward_steps(workers: Stack) -> None:
    assert compensation_queue(probe_backlog.queue) == "backlog.compensations"
    worker = workers.worker("w-backlog", concurrency=2, queues=("backlog",))  # it consumes the undo queue too
    broker = workers.redis()
    ids = []
    try:
        # A saga whose step a succeeded and whose step b waits for its client's input.
        waiting = saga.start("probe_backlog", {"ask": {"b": 120}}, idempotency_key=str(uuid4())).saga.id
        wait_for_status(waiting, ("awaiting_input",))
        # Then 1,000 sagas whose first step holds 0.2 s: about 100 s of forward work for two pool processes.
        ids = [saga.start("probe_backlog", {"hold": {"a": 0.2}}, idempotency_key=str(uuid4())).saga.id
               for _ in range(BACKLOG)]
        queued = broker.llen("backlog")
        # The worker has taken some while they were started; what is left is still far more than the 50 its two
        # processes get through in the 5 s the undo may take.
        assert queued >= BACKLOG // 2, queued

        asked = time.time()
        saga.cancel(waiting)  # undo a: on backlog.compensations, consumed beside the backlog
        started = wait_until(lambda: event_time(waiting, "compensation_started"), timeout=30,
                             what="the undo to start")
        print(f"\n  undo started {started - asked:.2f} s after the cancel, with {queued} forward steps queued "
              f"({broker.llen('backlog')} still queued then)")
        assert started - asked < 5
        assert wait_for_status(waiting, ("compensated",), timeout=30).status == "compensated"
    finally:
        worker.stop()
        workers.processes.remove(worker)
        broker.delete("backlog", compensation_queue("backlog"))
        with db.transaction() as conn:  # the backlog is not this test's subject: out of recovery's way
            conn.execute(text("UPDATE sagas SET status = 'compensated', deadline = NULL "
                              "WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN ('pending', 'running')"),
                         {"ids": [str(i) for i in ids]})
