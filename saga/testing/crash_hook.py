"""Loaded by a crash test's worker (`celery worker --include saga.testing.crash_hook`), never by production.

In each pool process it wraps every step body and compensation of every declared saga type: the wrapper appends
one line per execution to the run log, and when the plan file (`SAGA_CRASH_PLAN`) names that body and boundary
it SIGKILLs its pool process (or the whole worker) the first time it gets there.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init

from saga.definitions import REGISTRY, StepContext

PLAN_ENV = "SAGA_CRASH_PLAN"


def _plan() -> dict[str, Any] | None:
    path = os.environ.get(PLAN_ENV)
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _crash_here(plan: dict[str, Any] | None, saga_type: str, body: str, when: str) -> None:
    if plan is None or (plan["saga_type"], plan["body"], plan["when"]) != (saga_type, body, when):
        return
    try:
        os.close(os.open(plan["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # only the first time
    except FileExistsError:
        return
    if plan["kill"] == "worker":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached: the signal is delivered first


def _wrapped(saga_type: str, body: str, fn: Callable[[StepContext[Any]], Any]) -> Callable[..., Any]:
    def run(ctx: StepContext[Any]) -> Any:
        plan = _plan()
        if plan is not None:
            with open(plan["runs"], "a") as log:
                log.write(f"{ctx.saga_id} {body}\n")
        _crash_here(plan, saga_type, body, "before")
        result = fn(ctx)
        _crash_here(plan, saga_type, body, "after")
        return result

    run._saga_crash_wrapped = True  # type: ignore[attr-defined]
    return run


@worker_process_init.connect
def _wrap_bodies(**_: Any) -> None:
    """In each pool process: wrap every body once (saga types are all declared by the time it forks)."""
    for saga_type in REGISTRY.values():
        for step in saga_type.steps:
            if not hasattr(step.fn, "_saga_crash_wrapped"):
                step.fn = _wrapped(saga_type.name, step.name, step.fn)
            comp = step.compensation
            if comp is not None and not hasattr(comp.fn, "_saga_crash_wrapped"):
                comp.fn = _wrapped(saga_type.name, f"undo {step.name}", comp.fn)
