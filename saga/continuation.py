"""Continuation: the task that committed a step runs the saga's next step itself, instead of sending it back
through the broker.

A forward step's message may run the steps after its own, one at a time, while three things hold: the next step is
for the queue the message came from; the message's own time limit still covers the next step's whole time limit;
and the message has budget left (`SAGA_CONTINUATION_SECONDS` since it started, `SAGA_CONTINUATION_STEPS` steps).
Past any of them the next step goes through the broker, as every step does with `continuation=False`.

Each step keeps its own time limits inside the message, enforced the way Celery's prefork pool enforces a task's:
at the soft limit `SoftTimeLimitExceeded` is raised in the body (the pool's own SIGUSR1 handler), and at the hard
limit the attempt is recorded as failed by its time limit (as Celery's errback records a task's) and the process is
killed (and should that not happen, SIGALRM ends it a moment later without needing the interpreter); the message is
then redelivered and walks the saga from the ledger, as after any crash. That needs a prefork pool process, which
`saga.worker_checks` already asks of every worker; anywhere else (a task run inline, a test calling a body) no
step continues.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from saga.definitions import HARD_LIMIT_GRACE, KILL_GRACE, Step
from saga.settings import get_settings

log = logging.getLogger("saga.continuation")


def possible() -> bool:
    """Whether this is a prefork pool process running a task on its main thread, where a step's own time limits
    can be enforced as Celery enforces a task's."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        from billiard.pool import soft_timeout_sighandler
    except ImportError:  # pragma: no cover - billiard comes with Celery
        return False
    return signal.getsignal(signal.SIGUSR1) is soft_timeout_sighandler


def message_time_limit(step: Step) -> float:
    """The soft time limit Celery holds a forward step's message to when its saga type continues: past the step's
    own hard limit and the kill after it, plus the seconds the message may go on running later steps. Each step's
    own limits always end it first; Celery's stay as a last resort."""
    return _whole(step) + get_settings().continuation_seconds


def _whole(step: Step) -> float:
    """The longest a step can take in a message: its time limit, the grace to its hard limit, and the kill."""
    return step.time_limit + HARD_LIMIT_GRACE + KILL_GRACE


class Budget:
    """What one message may still run after its own step: which next steps, for how many seconds and steps."""

    def __init__(self, task: Any, step: Step) -> None:
        settings = get_settings()
        self.started = time.monotonic()
        # The message's own soft limit as the pool enforces it (its task's; a header may lower it), from its start.
        limits = [float(task.soft_time_limit or message_time_limit(step))]
        given = getattr(task.request, "timelimit", None) or (None, None)
        limits += [float(x) for x in given if x]
        self.soft_limit = min(limits)
        self.until = self.started + settings.continuation_seconds
        self.steps_left = settings.continuation_steps
        self.queue = (task.request.delivery_info or {}).get("routing_key")
        # Step name -> what its breakers let it through with, asked before the previous step's commit claimed it.
        self.permits: dict[str, Any] = {}

    def next_for(self, step: Step) -> Step | None:
        """The step after `step`, if this message may run it itself now; None if it goes through the broker."""
        saga_type = step.saga
        if not saga_type.continuation or step.index + 1 >= len(saga_type.steps) or self.steps_left <= 0:
            return None
        following = saga_type.steps[step.index + 1]
        now = time.monotonic()
        if now >= self.until or now + _whole(following) > self.started + self.soft_limit:
            return None
        if self.queue is not None and self.queue != saga_type.queue:
            return None
        return following

    def took(self) -> None:
        """A step after the message's own ran in it."""
        self.steps_left -= 1


def task_id(message_id: str, step: Step, message_task: str) -> str:
    """The task id a step run in this message is known by (in the ledger and to Flower): the message's own for
    its own step, else one derived from the message's and the step's name, the same on every redelivery."""
    if step.task_name == message_task:
        return message_id
    return _derived_id(message_id, step.task_name)


@functools.lru_cache(maxsize=64)  # asked for several times per step; a message's ids are the same every time
def _derived_id(message_id: str, task_name: str) -> str:
    try:
        namespace = uuid.UUID(message_id)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, message_id)
    return str(uuid.uuid5(namespace, task_name))


def take_link(task: Any, step: Step) -> None:
    """Drop `step` from the chain the message would send on when it returns: this message runs it itself."""
    chain = getattr(task.request, "chain", None)
    if chain and (chain[-1] or {}).get("task") == step.task_name:
        chain.pop()


class _Limits(threading.Thread):
    """One thread per pool process that holds the running step to its own time limits, as the pool's parent holds
    a task to its: at the soft limit it raises `SoftTimeLimitExceeded` in the main thread (through the pool's own
    SIGUSR1 handler); at the hard limit it has the attempt recorded as failed by its time limit, then kills the
    process, whose message is redelivered."""

    def __init__(self) -> None:
        super().__init__(name="saga-step-limits", daemon=True)
        self.cond = threading.Condition()
        self.soft_at: float | None = None
        self.hard_at: float | None = None
        self.on_hard: Callable[[], None] | None = None
        self.pid = os.getpid()
        self.wakes_at: float | None = None  # when the thread next looks (None: only when notified)

    def run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                if self.soft_at is not None and self.soft_at <= now:
                    self.soft_at = None
                    os.kill(self.pid, signal.SIGUSR1)
                if self.hard_at is not None and self.hard_at <= now:
                    break
                due = [t for t in (self.soft_at, self.hard_at) if t is not None]
                self.wakes_at = min(due) if due else None
                self.cond.wait(self.wakes_at - now if self.wakes_at is not None else None)
            on_hard = self.on_hard
        try:
            if on_hard is not None:
                on_hard()
        except Exception:  # the ledger may be down: the attempt is counted when the step is next claimed
            log.exception("the attempt past its hard time limit could not be recorded")
        finally:
            os.kill(self.pid, signal.SIGKILL)

    def arm(self, soft: float, hard: float, on_hard: Callable[[], None]) -> None:
        with self.cond:
            now = time.monotonic()
            self.soft_at, self.hard_at, self.on_hard = now + soft, now + hard, on_hard
            # A thread that looks before the new soft limit anyway (the step before's) finds it then: waking it
            # for every step would cost each a switch of threads.
            if self.wakes_at is None or self.wakes_at > self.soft_at:
                self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            self.soft_at = self.hard_at = self.on_hard = None


_limits: _Limits | None = None


@contextmanager
def own_limits(step: Step, on_hard: Callable[[], None]) -> Iterator[None]:
    """Enforce `step`'s own soft and hard time limits on the code inside, in this pool process; `on_hard` runs on
    another thread at the hard limit, just before the process is killed. Should that thread not get to run (the
    body holds the interpreter in C code), the kernel ends the process a little later (SIGALRM)."""
    global _limits
    if _limits is None or _limits.pid != os.getpid():
        _limits = _Limits()
        _limits.start()
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, _whole(step))
    _limits.arm(step.time_limit, step.time_limit + HARD_LIMIT_GRACE, on_hard)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # first: a soft limit raised in disarm() must not leave it armed
        _limits.disarm()
