"""A saga type whose versions a test deploys one after another: `SAGA_TEST_VERSIONS` (e.g. `1:a,b,c;2:a,x,b,c`)
says which versions a worker declares and with which steps, as successive deployments of one module would. A
version written `2*` names its steps' tasks explicitly as version 1 named its own (`tests.versioned.<step>`), as an
author who keeps task names across versions does: it replaces version 1 rather than standing beside it.
Every body records each run (saga, step, version, pid) in `versioned_runs`."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text

from saga import RetryPolicy, SagaType, StepContext, db
from workers.app import sagas

TABLE = """
CREATE TABLE IF NOT EXISTS versioned_runs (saga_id uuid NOT NULL, step text NOT NULL, kind text NOT NULL,
    version int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""
QUEUE = "versioned"


class VersionedInput(BaseModel):
    hold: dict[str, float] = Field(default_factory=dict)  # step -> seconds its body takes


def declare(version: int, steps: list[str], keep_names: bool = False) -> SagaType[VersionedInput]:
    """Version `version` of saga type `versioned`: compensable steps named `steps`, in that order; with
    `keep_names`, their tasks named as version 1's are."""
    # Every step its own message (no continuation), so a step sent after a deployment meets the new workers.
    saga_type = sagas.saga_type("versioned", VersionedInput, version=version, queue=QUEUE, default_time_limit=5,
                                default_retry=RetryPolicy(max_attempts=3, initial_delay=0.2, max_delay=1.0),
                                continuation=False)
    for name in steps:
        def body(ctx: StepContext[VersionedInput], _version: int = version) -> dict[str, Any]:
            _record(ctx, "do", _version)
            time.sleep(ctx.input.hold.get(ctx.step, 0))
            return {"version": _version}

        def undo(ctx: StepContext[VersionedInput], _version: int = version) -> None:
            _record(ctx, "undo", _version)

        body.__name__, undo.__name__ = name, f"undo_{name}"
        if keep_names:
            saga_type.step(body, name=f"{__name__}.{name}").compensate_with(undo, name=f"{__name__}.undo_{name}")
        else:  # tasks tests.versioned.<step>, with .v<N> from version 2
            saga_type.step(body).compensate_with(undo)
    return saga_type


def _record(ctx: StepContext[VersionedInput], kind: str, version: int) -> None:
    with db.transaction() as conn:
        conn.execute(text("INSERT INTO versioned_runs (saga_id, step, kind, version, pid) "
                          "VALUES (:s, :st, :k, :v, :p)"),
                     {"s": ctx.saga_id, "st": ctx.step, "k": kind, "v": version, "p": os.getpid()})


def parse(spec: str) -> list[tuple[int, list[str], bool]]:
    """`1:a,b,c;2*:a,x,b,c` -> [(1, [a, b, c], False), (2, [a, x, b, c], True)]: version, steps, keep_names."""
    return [(int(v.rstrip("*")), s.split(","), v.endswith("*"))
            for v, s in (part.split(":") for part in spec.split(";") if part)]


for _version, _steps, _keep_names in parse(os.environ.get("SAGA_TEST_VERSIONS", "")):
    declare(_version, _steps, _keep_names)
