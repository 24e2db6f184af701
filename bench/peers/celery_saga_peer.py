"""celery-saga peer (PyPI `celery-saga`), run by the peer venv's python (never imported by the project).

    PEER_BROKER_URL=redis://.../N PEER_APP_DB=postgresql+psycopg://... PEER_QUEUE=q \
        python -m celery -A celery_saga_peer worker --concurrency=2 --queues=q   (with bench/peers on PYTHONPATH)
    PEER_BROKER_URL=... PEER_APP_DB=... PEER_QUEUE=q python bench/peers/celery_saga_peer.py submitter

A saga of 4 steps, each a Celery task inserting one row `(run_id, ref, step)` into bench_rows in a transaction
of its own (steps 1-3 have a compensation that does nothing, step 4 none, as the project's bench saga).
celery-saga runs it as one Celery chain: start, 4 `run_step` tasks (each runs its step task in-process and
saves the saga's state, a JSON document in Redis, before and after), complete. Its state backend is Redis, the
same database as the broker. Celery settings mirror the project's celeryconfig (late acks, prefetch 1,
task events, no result backend). The submitter reads one JSON command a line on stdin and answers one JSON line:
`{"cmd": "submit", "run_id": R, "n": N}` (any "first" ignored) starts N sagas (answer `{"submitted": N}`);
`{"cmd": "status", "run_id": R}` counts that run's sagas by celery-saga status (answer `{"completed": k, ...}`);
`{"cmd": "quit"}`.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections import Counter
from typing import Any

import psycopg
from celery import Celery
from celery_saga import Saga, set_default_backend
from celery_saga.backends import RedisSagaBackend
from submit_loop import serve

BROKER_URL = os.environ["PEER_BROKER_URL"]
APP_DB = os.environ["PEER_APP_DB"].replace("postgresql+psycopg://", "postgresql://", 1)
QUEUE = os.environ.get("PEER_QUEUE", "bench_peer")
INSERT = "INSERT INTO bench_rows (run_id, ref, step) VALUES (%s, %s, %s)"

app = Celery("bench_peer", broker=BROKER_URL, set_as_current=True)
app.conf.update(
    task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_failure=True, task_acks_on_timeout=True,
    worker_prefetch_multiplier=1, worker_send_task_events=True, task_send_sent_event=True,
    task_ignore_result=True, task_serializer="json", accept_content=["json"], timezone="UTC", enable_utc=True,
    broker_connection_retry_on_startup=True, task_default_queue=QUEUE,
)
backend = RedisSagaBackend(url=BROKER_URL)
set_default_backend(backend)

_conn: psycopg.Connection[Any] | None = None


def write_row(run_id: str, ref: str, step: int) -> None:
    """One row in a transaction of its own, on this process's connection (opened after the pool forked)."""
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(APP_DB, autocommit=True)
    with _conn.transaction():
        _conn.execute(INSERT, (run_id, ref, step))


def _step(number: int) -> Any:
    def run(run_id: str, ref: str, **_: Any) -> None:
        write_row(run_id, ref, number)

    run.__name__ = f"step_{number}"
    return app.task(run, name=f"bench_peer.step_{number}")


@app.task(name="bench_peer.undo")
def undo(compensation_data: Any = None) -> None:
    """Nothing to undo: the benchmark never fails a step."""


STEPS = [_step(number) for number in (1, 2, 3, 4)]
bench_saga = Saga("bench_saga", backend=backend)
for index, task in enumerate(STEPS):
    if index < 3:
        bench_saga.add_step(task, compensate=undo)
    else:
        bench_saga.add_step(task, no_compensation=True)


def submitter() -> None:
    runs: dict[str, list[str]] = {}

    def submit(run_id: str, _first: int, n: int) -> None:
        ids = runs.setdefault(run_id, [])
        for _ in range(n):
            ids.append(bench_saga.run(queue=QUEUE, run_id=run_id, ref=str(uuid.uuid4())).saga_id)

    def status(run_id: str) -> dict[str, int]:
        executions = (backend.load(saga_id) for saga_id in runs.get(run_id, []))
        return dict(Counter(e.status.value if e else "missing" for e in executions))

    serve(submit, status)


if __name__ == "__main__" and sys.argv[1:] == ["submitter"]:
    submitter()
