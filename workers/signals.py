"""Worker signal handlers: refuse to start with a visibility timeout that a step could outlast."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init

from saga.definitions import REGISTRY
from saga.settings import get_settings


def longest_unacked_wait() -> tuple[float, str]:
    """The longest a step's message may legitimately stay unacked: hard time limit plus backoff cap."""
    worst, where = 0.0, "none"
    for saga_type in REGISTRY.values():
        for step in saga_type.steps:
            candidates = [(step.lease_seconds + step.retry.max_delay, step.task_name)]
            if step.compensation:
                comp = step.compensation
                candidates.append((step.compensation_lease_seconds + comp.retry.max_delay, comp.task_name))
            for seconds, name in candidates:
                if seconds > worst:
                    worst, where = seconds, name
    return worst, where


@worker_init.connect
def check_visibility_timeout(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    if not settings.broker_url.startswith("redis"):
        return
    worst, task = longest_unacked_wait()
    if settings.visibility_timeout <= worst:
        raise SystemExit(
            f"saga: SAGA_VISIBILITY_TIMEOUT={settings.visibility_timeout}s is not above the {worst:.0f}s that "
            f"task {task} may hold its message (time limit + grace + backoff cap); Redis would deliver it twice. "
            "Raise SAGA_VISIBILITY_TIMEOUT or lower that step's limits."
        )
