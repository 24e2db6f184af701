"""What the benchmark runs on the worker: a 4-step saga and 4 plain Celery tasks doing the same writes.

Every step inserts one row `(run_id, ref, step)` into `bench_rows`, so the only difference between them is
the saga machinery (claim, fenced commit, ledger rows, events).
Worker processes import this module through SAGA_MODULES; `bench.run` creates the table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from saga import SagaType, StepContext, db
from saga.definitions import HARD_LIMIT_GRACE
from workers.app import app, sagas

QUEUE = "bench"
TIME_LIMIT = 60.0  # the saga type's default step time limit, given to the plain tasks too

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_rows (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    ref text NOT NULL,
    step int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bench_rows_run_step ON bench_rows (run_id, step);
"""

_INSERT = text("INSERT INTO bench_rows (run_id, ref, step) VALUES (:run_id, :ref, :step)")


def write_row(run_id: str, ref: str, step: int) -> None:
    """The whole body of every benchmark step, saga or plain: one row in its own transaction."""
    with db.transaction() as conn:
        conn.execute(_INSERT, {"run_id": run_id, "ref": ref, "step": step})


# --- the sagas ------------------------------------------------------------------------------------------

class BenchInput(BaseModel):
    run_id: str


def _declare(name: str, transactional: bool, continuation: bool = True) -> SagaType[BenchInput]:
    """Four steps (compensable, compensable, pivot, retriable) that each write one row.

    Transactional: the row goes through `ctx.db`, committed with the step's outcome (exactly once).
    Otherwise: the body writes in a transaction of its own, as a body calling a third party would.
    `continuation=False`: every step goes through the broker as a message of its own.
    """
    saga_type = sagas.saga_type(name, BenchInput, queue=QUEUE, default_time_limit=TIME_LIMIT,
                                continuation=continuation)
    for number, kind in enumerate(("compensable", "compensable", "pivot", "retriable"), start=1):
        def body(ctx: StepContext[BenchInput], number: int = number) -> None:
            if ctx.db is not None:
                ctx.db.execute(_INSERT, {"run_id": ctx.input.run_id, "ref": str(ctx.saga_id), "step": number})
            else:
                write_row(ctx.input.run_id, str(ctx.saga_id), number)

        body.__name__ = f"step_{number}"
        step = saga_type.step(body, kind=kind, name=f"bench.{name}.step_{number}", transactional=transactional)
        if kind != "retriable":
            step.compensate_with(_nothing, name=f"bench.{name}.undo_{number}")
    return saga_type


def _nothing(ctx: StepContext[BenchInput]) -> None:
    """Nothing to undo: the benchmark never fails a step."""


bench_saga = _declare("bench_saga", transactional=True)
bench_saga_own_tx = _declare("bench_saga_own_tx", transactional=False)
bench_saga_broker = _declare("bench_saga_broker", transactional=True, continuation=False)
bench_saga_own_tx_broker = _declare("bench_saga_own_tx_broker", transactional=False, continuation=False)


# --- job-posting-shaped: a blob in the input (a logo) that only the first step reads ----------------------

class BlobInput(BenchInput):
    blob: str


def _declare_blob(name: str, large: bool) -> SagaType[BlobInput]:
    """The 4 steps above (transactional); the first also reads the blob, as upload_logo reads the logo.

    `large`: the blob is a large field (stored apart, loaded for the first step alone); otherwise it travels
    with the input to every step, as every input did before large fields existed.
    """
    saga_type = sagas.saga_type(name, BlobInput, queue=QUEUE, default_time_limit=TIME_LIMIT,
                                large_fields=("blob",) if large else (), max_field_bytes=2 * 1024 * 1024)
    for number, kind in enumerate(("compensable", "compensable", "pivot", "retriable"), start=1):
        def body(ctx: StepContext[BlobInput], number: int = number) -> None:
            ref = f"{ctx.saga_id}:{len(ctx.input.blob)}" if number == 1 else str(ctx.saga_id)
            ctx.db.execute(_INSERT, {"run_id": ctx.input.run_id, "ref": ref, "step": number})  # type: ignore[union-attr]

        body.__name__ = f"step_{number}"
        step = saga_type.step(body, kind=kind, name=f"bench.{name}.step_{number}", transactional=True,
                              needs=("blob",) if large and number == 1 else ())
        if kind != "retriable":
            step.compensate_with(_nothing, name=f"bench.{name}.undo_{number}")
    return saga_type


def _declare_long(name: str, steps: int, continuation: bool = True) -> SagaType[BenchInput]:
    """`steps` transactional one-row steps: half compensable, a pivot, the rest retriable."""
    saga_type = sagas.saga_type(name, BenchInput, queue=QUEUE, default_time_limit=TIME_LIMIT,
                                continuation=continuation)
    compensable = steps // 2
    for number in range(1, steps + 1):
        kind = "compensable" if number <= compensable else "pivot" if number == compensable + 1 else "retriable"

        def body(ctx: StepContext[BenchInput], number: int = number) -> None:
            ctx.db.execute(_INSERT, {"run_id": ctx.input.run_id, "ref": str(ctx.saga_id), "step": number})  # type: ignore[union-attr]

        body.__name__ = f"step_{number}"
        step = saga_type.step(body, kind=kind, name=f"bench.{name}.step_{number}", transactional=True)
        if kind != "retriable":
            step.compensate_with(_nothing, name=f"bench.{name}.undo_{number}")
    return saga_type


LONG_STEPS = 20
bench_long = _declare_long("bench_long", LONG_STEPS)
bench_long_broker = _declare_long("bench_long_broker", LONG_STEPS, continuation=False)
bench_blob = _declare_blob("bench_blob", large=True)
bench_blob_inline = _declare_blob("bench_blob_inline", large=False)


# --- the plain Celery tasks (no saga machinery) -----------------------------------------------------------
# acks_late, reject_on_worker_lost, prefetch 1, ignore_result, events... come from celeryconfig for every
# task; the time limits are set here exactly as saga.definitions sets them on step tasks.

def _plain(step: int) -> Any:
    def run(run_id: str, ref: str) -> None:
        write_row(run_id, ref, step)

    run.__name__ = f"plain_{step}"
    return app.task(run, name=f"bench.plain_{step}", soft_time_limit=TIME_LIMIT,
                    time_limit=TIME_LIMIT + HARD_LIMIT_GRACE, typing=False)


plain_1 = _plain(1)
plain_2 = _plain(2)
plain_3 = _plain(3)
plain_4 = _plain(4)
PLAIN_TASKS = (plain_1, plain_2, plain_3, plain_4)
