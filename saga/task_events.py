"""The task events Flower reads, sent for each step a message runs by continuation, so that every step is still a
task to the people watching: received, started, then succeeded, failed or retried, with the step's task name, the
task id the ledger records for it, and the saga id as its argument (as Celery sends them for a task of its own).

Sent only by a worker that sends task events (`-E` or `worker_send_task_events`), from the pool process that runs
the step. A step's end is held back until the next step starts (or the message ends), and goes out with that
step's received and started as one message (Celery's `task.multi`, which Flower reads as three events): one
publish per continued step, not three. They are monitoring, never part of the outcome: one that cannot be sent is
dropped.
"""

from __future__ import annotations

import logging
import os
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
# Events held back at most (then sent at once): more than one step's end and the next one's start.
_BUFFER_LIMIT = 8


def install(app: Any) -> None:
    """Send events for continued steps in workers of `app` that send task events."""

    def note(sender: Any = None, **_: Any) -> None:
        global _sending
        if getattr(sender, "app", None) is app:
            _sending = bool(getattr(sender, "task_events", False))

    worker_init.connect(note, weak=False)


@contextmanager
def shown(task: Any, step: Step, saga_id: UUID, task_id: str) -> Iterator[None]:
    """Around a step this message runs: its events, unless it is the message's own step (Celery sends those).
    Its received and started go out at once (with the step before's end); its success waits for `flush`."""
    if not _sending or task_id == task.request.id:
        yield
        return
    args = (str(saga_id),)
    _send(task, "task-received", uuid=task_id, name=step.task_name, args=saferepr(args), kwargs="{}",
          root_id=task.request.root_id, parent_id=task.request.id, retries=0, eta=None, expires=None)
    _send(task, "task-started", uuid=task_id)
    flush()
    started = time.monotonic()
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
    _send(task, "task-succeeded", uuid=task_id, result="None", runtime=time.monotonic() - started)


def flush() -> None:
    """Send the events held back, as one message; the message running the steps calls it when it ends."""
    global _dispatcher
    if _dispatcher is None or _dispatcher_pid != os.getpid():
        return
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
