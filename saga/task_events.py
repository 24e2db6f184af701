"""The task events Flower reads, sent for each step a message runs by continuation, so that every step is still a
task to the people watching: received, started, then succeeded, failed or retried, with the step's task name, the
task id the ledger records for it, and the saga id as its argument (as Celery sends them for a task of its own).

Sent only by a worker that sends task events (`-E` or `worker_send_task_events`), from the pool process that runs
the step. They are held back and sent together as one message (Celery's `task.multi`, which Flower reads event by
event): when a step starts at least `SOON` seconds after the last were sent, when a step is still running that
long after it started (from a thread of their own, which nothing else waits on), when a step fails or is retried,
and when the message ends. Quick steps cost one publish in a fifth of a second, not three each. They
are monitoring, never part of the outcome: one that cannot be sent is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from celery.exceptions import Ignore, Retry
from celery.signals import worker_init
from celery.utils.saferepr import saferepr

from saga.definitions import Step

log = logging.getLogger("saga.task_events")

# Whether this worker sends task events: read in the worker's main process, inherited by its pool processes.
_sending = False
# This pool process's own event dispatcher, opened on first use.
_dispatcher: Any = None
_dispatcher_pid = 0
# Events held back at most (then sent at once): beyond what steps of a fifth of a second leave.
_BUFFER_LIMIT = 1000
# When this process last sent the events held back (monotonic seconds).
_sent_at = 0.0
# Seconds events may be held back: Flower shows a step that runs longer as started (about) this long after it did.
SOON = 0.2


def install(app: Any) -> None:
    """Send events for continued steps in workers of `app` that send task events."""

    def note(sender: Any = None, **_: Any) -> None:
        global _sending
        if getattr(sender, "app", None) is app:
            _sending = bool(getattr(sender, "task_events", False))

    worker_init.connect(note, weak=False)


@contextmanager
def shown(task: Any, step: Step, saga_id: UUID, task_id: str) -> Iterator[None]:
    """Around a step this message runs: its events, unless it is the message's own step (Celery sends those)."""
    if not _sending or task_id == task.request.id:
        yield
        return
    args = (str(saga_id),)
    _send(task, "task-received", uuid=task_id, name=step.task_name, args=saferepr(args), kwargs="{}",
          root_id=task.request.root_id, parent_id=task.request.id, retries=0, eta=None, expires=None)
    _send(task, "task-started", uuid=task_id)
    started = time.monotonic()
    if started - _sent_at >= SOON:
        flush()
    soon = _soon_thread()
    soon.arm(started + SOON)
    try:
        yield
    except Retry as retry:
        _send(task, "task-retried", uuid=task_id, exception=saferepr(retry.exc or retry), traceback="")
        flush()
        raise
    except Ignore:
        raise
    except Exception as exc:
        _send(task, "task-failed", uuid=task_id, exception=saferepr(exc), traceback="")
        flush()
        raise
    finally:
        soon.disarm()
    _send(task, "task-succeeded", uuid=task_id, result="None", runtime=time.monotonic() - started)


def flush() -> None:
    """Send the events held back, as one message (from the step's thread, or the one holding it to its limits)."""
    global _dispatcher, _sent_at
    if _dispatcher is None or _dispatcher_pid != os.getpid():
        return
    _sent_at = time.monotonic()
    try:
        _dispatcher.flush()
    except Exception as exc:  # noqa: BLE001 - an event is monitoring: the step goes on without it
        log.debug("task events not sent: %s", exc)
        _dispatcher = None


def _send(task: Any, kind: str, **fields: Any) -> None:
    """Hold one event back for the next `flush`."""
    global _dispatcher, _dispatcher_pid
    try:
        if _dispatcher is None or _dispatcher_pid != os.getpid():
            _dispatcher = task.app.events.Dispatcher(task.app.connection_for_write(), hostname=task.request.hostname,
                                                     enabled=True, buffer_while_offline=False, buffer_group=["task"],
                                                     buffer_limit=_BUFFER_LIMIT)
            _dispatcher_pid = os.getpid()
        _dispatcher.send(kind, **fields)
    except Exception as exc:  # noqa: BLE001 - an event is monitoring: the step goes on without it
        log.debug("task event %s not sent: %s", kind, exc)
        _dispatcher = None


class _Soon(threading.Thread):
    """Sends the events held back once the running step has run `SOON` seconds, so Flower shows it started. Woken
    only when a step's moment comes before it would look anyway: a stream of quick steps does not wake it each."""

    def __init__(self) -> None:
        super().__init__(name="saga-task-events", daemon=True)
        self.cond = threading.Condition()
        self.due_at: float | None = None
        self.wakes_at: float | None = None
        self.pid = os.getpid()

    def run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                if self.due_at is not None and self.due_at <= now:
                    self.due_at = None
                    self.cond.release()  # the broker may be slow: arm and disarm never wait on it
                    try:
                        flush()
                    finally:
                        self.cond.acquire()
                    continue
                self.wakes_at = self.due_at
                self.cond.wait(self.due_at - now if self.due_at is not None else None)

    def arm(self, at: float) -> None:
        with self.cond:
            self.due_at = at
            if self.wakes_at is None or self.wakes_at > at + SOON:
                self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            self.due_at = None


_soon: _Soon | None = None


def _soon_thread() -> _Soon:
    global _soon
    if _soon is None or _soon.pid != os.getpid():
        _soon = _Soon()
        _soon.start()
    return _soon
