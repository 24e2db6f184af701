"""Which step attempts a worker holds when a test faults it (kills, freezes or cuts it off), so a fault test can
show its fault landed on work in flight, await the takeover of that work, and count what was overtaken; and a
kill of one pool process that is known to land inside a step.

A worker holds an attempt when the ledger has a live claim (a step running or compensating, its lease not yet
ended) made under the id of a task this worker received, by its own log, after any other worker did (a retry
keeps its task's id, and may have passed through another worker first). That is judged after the fault began:
a frozen, killed or cut-off worker can no longer end what it holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
from sqlalchemy import text

from saga import continuation, db
from saga.actions import TASKS
from saga.testing import Process, Stack

# Celery's line for a message a worker took: "[<time>: INFO/MainProcess] Task tasks.x.y[<task id>] received".
_RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]+\] Task ([\w.]+)\[([\w-]+)\] received$",
                       re.MULTILINE)


@dataclass(frozen=True)
class Attempt:
    """One step attempt in flight: the claim the ledger holds for it (its fencing token) and the task it runs in."""

    saga_id: UUID
    step: str
    status: str  # running (forward) or compensating
    task_id: str
    token: int

    def __str__(self) -> str:
        return f"{self.step} ({self.status}) of saga {self.saga_id}"


def received(log: str) -> dict[str, str]:
    """Every task a worker's log says it received, with the ids of the steps it may run by continuation: task id ->
    when it last did (the log's own time stamp)."""
    return {task_id: at for at, name, message_id in _RECEIVED.findall(log) for task_id in task_ids_of(message_id, name)}


def task_ids_of(message_id: str, task_name: str) -> list[str]:
    """The task ids the ledger may record for steps a message runs: its own, and those of the later steps it may
    run by continuation."""
    if task_name not in TASKS:
        return [message_id]
    step, action = TASKS[task_name]
    later = step.saga.steps[step.index + 1:] if action.forward else []
    return [message_id, *(continuation.task_id(message_id, s, task_name) for s in later)]


def live_claims(task_ids: Iterable[str] | None = None) -> list[Attempt]:
    """Every attempt whose claim is live now (of these tasks only, if given)."""
    with db.transaction() as conn:
        rows = conn.execute(text(
            "SELECT saga_id, name, status, task_id, fencing_token FROM saga_steps "
            "WHERE status IN ('running', 'compensating') AND lease_expires_at > now() "
            "AND (CAST(:ids AS text[]) IS NULL OR task_id = ANY(CAST(:ids AS text[])))"),
            {"ids": None if task_ids is None else list(task_ids)}).all()
    return [Attempt(*row) for row in rows]


def held_by(stack: Stack, worker: Process) -> list[Attempt]:
    """The attempts `worker` holds now: live claims under tasks its log received and no other worker's did."""
    mine = received(worker.log_text())
    for log in Path(stack.data_dir).glob("*.log"):
        if log != worker.log:
            for task_id, at in received(log.read_text(errors="replace")).items():
                if task_id in mine and at > mine[task_id]:
                    del mine[task_id]  # another worker took this task after it
    return live_claims(mine) if mine else []


def still_held(attempt: Attempt) -> bool:
    """The attempt's claim is still the step's, and still live."""
    return attempt in live_claims([attempt.task_id])


def taken_over(attempt: Attempt) -> bool:
    """Another attempt claimed the step since (its fencing token moved on): this one is overtaken."""
    return _token(attempt) > attempt.token


def _token(attempt: Attempt) -> int:
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT fencing_token FROM saga_steps WHERE saga_id = :s AND name = :n"),
                                {"s": attempt.saga_id, "n": attempt.step}).scalar_one())


def by_step(attempts: Iterable[Attempt]) -> Counter[str]:
    """How many of the attempts each step had."""
    return Counter(a.step for a in attempts)


def describe(attempts: Iterable[Attempt]) -> dict[str, Any]:
    """Attempts by step and status, for a test's report."""
    return dict(Counter(f"{a.step} {a.status}" for a in attempts))


def stop_holding(stack: Stack, worker: Process, exclude: Collection[Attempt] = ()) -> list[Attempt]:
    """Stop `worker` (SIGSTOP to its process group) if it holds attempts (other than `exclude`) and return them;
    else let it run on (SIGCONT) and return []. For `wait_until`, so a fault begins while the worker holds work:
    the caller then kills it, keeps it frozen, or cuts it off and lets it go on."""
    worker.send(signal.SIGSTOP)
    held = [a for a in held_by(stack, worker) if a not in exclude]
    if not held:
        worker.send(signal.SIGCONT)
    return held


def kill_a_running_step(stack: Stack, steps: Collection[str] | None, exclude: Collection[Attempt]) -> Attempt | None:
    """SIGKILL a pool process of the live worker while it runs one of `steps` (any step if None); the attempt the
    kill landed in (the ledger's claim for the task the worker says that process runs, live before the kill and
    after it), or None if no such step ran or the process ended it first (it is killed all the same). Attempts
    in `exclude` (killed before: the worker may still list them) are passed over."""
    from celery.app.utils import find_app

    worker = next(p for p in stack.workers() if p.name.startswith("w"))
    hostname = f"{worker.name}@{socket.gethostname()}"
    inspect = find_app(stack.app).control.inspect(destination=[hostname], timeout=1, limit=1)
    active = (inspect.active() or {}).get(hostname, [])
    children = {c.pid for c in psutil.Process(worker.popen.pid).children(recursive=True)}
    for request in active:
        ids = task_ids_of(request["id"], request["name"])
        claimed = [a for a in live_claims(ids) if (steps is None or a.step in steps) and a not in exclude]
        if not claimed or request["worker_pid"] not in children:
            continue  # not claimed yet, a transactional step (claimed only with its commit), another step, or gone
        with contextlib.suppress(ProcessLookupError):
            os.kill(request["worker_pid"], signal.SIGKILL)
        return claimed[0] if still_held(claimed[0]) else None
    return None


def fresh_log(stack: Stack, name: str) -> None:
    """Delete process `name`'s log left by an earlier session (logs are appended to), so what a test reads of it
    is this session's: call it before starting the process."""
    (Path(stack.data_dir) / f"{name}.log").unlink(missing_ok=True)
