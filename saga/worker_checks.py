"""Refusing to start a worker whose Celery settings would break the engine's guarantees.

Each check names the setting, says what would go wrong, and what to set instead. The engine sets what it can
on its own tasks (late acks, requeue on a lost worker, acks on failure and timeout); these are the settings
only the worker or the broker has.
"""

from __future__ import annotations

from typing import Any

from celery import concurrency
from celery.signals import worker_init

from saga import breakers, continuation
from saga.actions import TASKS
from saga.definitions import HARD_LIMIT_GRACE, REGISTRY
from saga.errors import WorkerRefused
from saga.settings import get_settings

# Brokers that redeliver an unacked message after a visibility timeout, measured from delivery.
_VISIBILITY_BROKERS = ("redis", "rediss", "sqs", "sentinel")
_DEFAULT_VISIBILITY = 3600
# Brokers that close a consumer's channel when it holds a message unacked past consumer_timeout.
_AMQP_BROKERS = ("amqp", "amqps", "pyamqp")


def install(app: Any) -> None:
    """Check `app`'s settings in every worker it starts, before the worker consumes anything."""

    def check(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        found = problems(app, pool=sender.pool_cls, prefetch=sender.prefetch_multiplier)
        if found:
            raise WorkerRefused("\n".join(f"saga: {p}" for p in found))

    worker_init.connect(check, weak=False)


def problems(app: Any, pool: Any = "prefork", prefetch: int | None = None) -> list[str]:
    """Why a worker of `app` with this pool and prefetch would break a guarantee; empty if none would."""
    conf = app.conf
    found: list[str] = []
    if conf.task_always_eager:
        found.append("task_always_eager=True runs steps inline, with no acks, redelivery or time limits; "
                     "set it to False")
    module = concurrency.get_implementation(pool).__module__.rsplit(".", 1)[-1]
    if module != "prefork":
        found.append(f"the {pool if isinstance(pool, str) else module} pool does not enforce hard time limits, so a hung step could outlive its "
                     "lease and act twice; run the worker with --pool=prefork")
    prefetch = conf.worker_prefetch_multiplier if prefetch is None else prefetch
    if prefetch != 1:
        found.append(f"worker_prefetch_multiplier={prefetch}: a worker would hold steps it has not started, "
                     "unacked, past their leases and the visibility timeout; set it to 1")
    if not conf.worker_cancel_long_running_tasks_on_connection_loss:
        found.append("worker_cancel_long_running_tasks_on_connection_loss=False lets a step whose broker "
                     "connection dropped run on while its redelivered message runs it again; set it to True")
    for name in TASKS:
        task = app.tasks.get(name)
        if task is not None and not (task.acks_late and task.reject_on_worker_lost):
            found.append(f"task {name} has acks_late={task.acks_late}, reject_on_worker_lost="
                         f"{task.reject_on_worker_lost} (task_annotations?): a step killed mid-run would be lost; "
                         "leave both True")
            break
    scheme = str(conf.broker_url or "").split("://", 1)[0].split("+", 1)[0]
    worst, task_name = longest_unacked_wait()
    held = f"the {worst:.0f}s that task {task_name} may hold its message (time limit + grace + backoff cap or breaker cool-down)"
    if scheme in _VISIBILITY_BROKERS:
        timeout = (conf.broker_transport_options or {}).get("visibility_timeout", _DEFAULT_VISIBILITY)
        if timeout <= worst:
            found.append(f"broker_transport_options['visibility_timeout']={timeout}s is not above {held}; the "
                         "broker would deliver it twice. Raise the visibility timeout or lower that step's limits")
    elif scheme in _AMQP_BROKERS:
        timeout = get_settings().consumer_timeout
        if timeout <= worst:
            found.append(f"SAGA_CONSUMER_TIMEOUT={timeout:.0f}s (RabbitMQ's consumer_timeout) is not above {held}; "
                         "RabbitMQ would close the channel and deliver it again. Raise consumer_timeout on the "
                         "broker and SAGA_CONSUMER_TIMEOUT with it, or lower that step's limits")
    return found


def longest_unacked_wait() -> tuple[float, str]:
    """The longest a step's message may legitimately stay unacked: hard time limit plus the longest wait before its
    next try (the backoff cap, or the longest an open breaker it depends on makes it wait)."""
    worst, where = 0.0, "none"
    for saga_type in REGISTRY.values():
        for step in saga_type.steps:
            # With continuation, a step's message may also run the steps after it, each under its own limits.
            held = continuation.message_time_limit(step) + HARD_LIMIT_GRACE if saga_type.continuation else 0.0
            breaker = max((breakers.dependency(d).max_cooldown + 1 for d in step.depends_on), default=0.0)
            candidates = [(max(step.lease_seconds, held) + max(step.retry.max_delay, breaker), step.task_name)]
            if step.compensation:
                comp = step.compensation
                candidates.append((step.compensation_lease_seconds + max(comp.retry.max_delay, breaker),
                                   comp.task_name))
            for seconds, name in candidates:
                if seconds > worst:
                    worst, where = seconds, name
    return worst, where
