"""Saga types the tests drive through real workers; each body records what it did in probe tables."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, Field
from sqlalchemy import text

from saga import NeedsInput, PermanentError, RetryPolicy, SagaType, StepContext, TransientError, db
from workers.app import sagas

log = logging.getLogger("tests.probe")

PROBE_TABLES = """
CREATE TABLE IF NOT EXISTS probe_runs (
    id bigserial PRIMARY KEY, saga_id uuid NOT NULL, step text NOT NULL, kind text NOT NULL,
    attempt int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS probe_effects (
    key text PRIMARY KEY, saga_id uuid NOT NULL, step text NOT NULL, kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS probe_effect_log (
    id bigserial PRIMARY KEY, run_id bigint NOT NULL, saga_id uuid NOT NULL, step text NOT NULL, kind text NOT NULL,
    key text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS probe_switches (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS probe_tx_effects (saga_id uuid NOT NULL, step text NOT NULL, kind text NOT NULL);
"""


class ProbeInput(BaseModel):
    """What each probe step should do: fail, fail for a while, or hold still so a test can kill it."""

    fail: str | None = None  # step that fails permanently
    transient: dict[str, int] = Field(default_factory=dict)  # step -> attempts that fail transiently
    switch: dict[str, str] = Field(default_factory=dict)  # step or "undo_<step>" -> switch name: fails while on
    hold: dict[str, float] = Field(default_factory=dict)  # "<step>" / "undo_<step>" -> seconds after the effect
    hold_before: dict[str, float] = Field(default_factory=dict)  # same, before the effect
    hang: str | None = None  # step that ignores its soft time limit, so the hard one kills it
    # label -> attempts (from the first) that fail transiently *after* the effect: the answer was lost
    lost_answer: dict[str, int] = Field(default_factory=dict)
    fail_from: dict[str, int] = Field(default_factory=dict)  # label -> first attempt that fails permanently
    crash: str | None = None  # label whose body kills its own worker process, every attempt
    bad_result: str | None = None  # label whose result PostgreSQL's jsonb refuses (a NUL character)
    ask: dict[str, float] = Field(default_factory=dict)  # step -> seconds it waits for `answer` while that is unset
    answer: str | None = None


def _hang() -> None:
    """Ignore the soft time limit, so the hard one kills the process."""
    try:
        time.sleep(60)
    except SoftTimeLimitExceeded:
        time.sleep(60)


def _effect(ctx: StepContext[ProbeInput], kind: str, run_id: int) -> None:
    """The probe's effect on its third party: kept once per idempotency key (`probe_effects`, as I2 asks of a
    third party), and logged once per execution (`probe_effect_log`, no unique key but its own id), so an effect
    made twice shows though the third party keeps one."""
    params = {"key": ctx.idempotency_key, "s": ctx.saga_id, "st": ctx.step, "k": kind, "run": run_id}
    with db.transaction() as conn:
        conn.execute(text("INSERT INTO probe_effects (key, saga_id, step, kind) VALUES (:key, :s, :st, :k) "
                          "ON CONFLICT (key) DO NOTHING"), params)
        conn.execute(text("INSERT INTO probe_effect_log (run_id, saga_id, step, kind, key) "
                          "VALUES (:run, :s, :st, :k, :key)"), params)


def _act(ctx: StepContext[ProbeInput], kind: str) -> dict[str, Any]:
    label = ctx.step if kind == "do" else f"undo_{ctx.step}"
    spec = ctx.input
    log.info("probe body %s runs", label)  # a line of the body's own: the engine tags it with the saga and step
    with db.transaction() as conn:
        run_id = conn.execute(text("INSERT INTO probe_runs (saga_id, step, kind, attempt, pid) "
                                   "VALUES (:s, :st, :k, :a, :p) RETURNING id"),
                              {"s": ctx.saga_id, "st": ctx.step, "k": kind, "a": ctx.attempt, "p": os.getpid()}).scalar()
        switched = spec.switch.get(label) and conn.execute(
            text("SELECT 1 FROM probe_switches WHERE name = :n"), {"n": spec.switch[label]}).first()
    if ctx.attempt == 1 and label in spec.hold_before:
        time.sleep(spec.hold_before[label])
    if spec.hang == label:
        _hang()
    if spec.crash == label:
        os.kill(os.getpid(), signal.SIGKILL)
    if label in spec.ask and spec.answer is None:
        raise NeedsInput("answer", reason=f"{label} needs an answer", within=spec.ask[label])
    if spec.fail == label or ctx.attempt >= spec.fail_from.get(label, ctx.attempt + 1):
        raise PermanentError(f"{label} refused")
    if ctx.attempt <= spec.transient.get(label, 0):
        raise TransientError(f"{label} attempt {ctx.attempt} hit a passing failure")
    if switched:
        raise TransientError(f"{label} is switched off")
    _effect(ctx, kind, run_id)
    if ctx.attempt == 1 and label in spec.hold:
        time.sleep(spec.hold[label])
    if ctx.attempt <= spec.lost_answer.get(label, 0):
        raise TimeoutError(f"{label} attempt {ctx.attempt}: no answer (the effect happened)")
    if spec.bad_result == label:
        return {"step": ctx.step, "note": "a NUL \u0000 jsonb cannot hold"}
    return {"step": ctx.step, "key": ctx.idempotency_key}


def _declare(name: str, queue: str, retry: RetryPolicy, time_limit: float) -> SagaType[ProbeInput]:
    saga_type = sagas.saga_type(name, ProbeInput, default_retry=retry, default_time_limit=time_limit, queue=queue)
    for step_name, kind in (("a", "compensable"), ("b", "compensable"), ("c", "pivot"), ("d", "retriable")):
        def body(ctx: StepContext[ProbeInput]) -> dict[str, Any]:
            return _act(ctx, "do")

        body.__name__ = step_name
        step = saga_type.step(body, kind=kind, name=f"tests.{name}.{step_name}")
        if kind != "retriable":
            def undo(ctx: StepContext[ProbeInput]) -> dict[str, Any]:
                return _act(ctx, "undo")

            step.compensate_with(undo, name=f"tests.{name}.undo_{step_name}")
    return saga_type


FAST = RetryPolicy(max_attempts=4, initial_delay=0.2, multiplier=2.0, max_delay=2.0)
probe = _declare("probe", "probe", FAST, time_limit=3)
# Its steps go to a queue no worker reads, so a test can play the workers' part itself.
probe_idle = _declare("probe_idle", "nobody", FAST, time_limit=3)
# One attempt with a 1 s limit: a hanging step is killed by the hard time limit.
probe_limit = _declare("probe_limit", "probe", RetryPolicy(max_attempts=1), time_limit=1)
# Two attempts with short leases: a body that kills its worker runs out of attempts quickly.
SHORT = RetryPolicy(max_attempts=2, initial_delay=0.2, max_delay=1.0)
probe_short = _declare("probe_short", "probe", SHORT, time_limit=2)
# Ten seconds a step: room for a test to act while one holds still in flight.
probe_patient = _declare("probe_patient", "probe", FAST, time_limit=10)
# On a queue of its own, for a worker that a test gives a backlog of forward steps.
probe_backlog = _declare("probe_backlog", "backlog", FAST, time_limit=3)



def _nothing(ctx: StepContext[ProbeInput]) -> None:
    return None


# Only compensable steps, on the unread queue: a cancel is honoured whichever step it meets.
probe_undoable = sagas.saga_type("probe_undoable", ProbeInput, default_retry=FAST, default_time_limit=3, queue="nobody")
for _name in ("a", "b"):
    _step = probe_undoable.step(_nothing, kind="compensable", name=f"tests.probe_undoable.{_name}")
    _step.name = _name
    _step.compensate_with(_nothing, name=f"tests.probe_undoable.undo_{_name}")


def _tx_act(ctx: StepContext[ProbeInput], kind: str) -> dict[str, Any]:
    """Write the effect through the step's own transaction first, then fail or hold as asked."""
    assert ctx.db is not None
    with db.transaction() as conn:  # outside the step's transaction, so it survives a rollback
        conn.execute(text("INSERT INTO probe_runs (saga_id, step, kind, attempt, pid) VALUES (:s, :st, :k, :a, :p)"),
                     {"s": ctx.saga_id, "st": ctx.step, "k": kind, "a": ctx.attempt, "p": os.getpid()})
        # A crashed attempt leaves no trace in a transactional step, so "first run" is read from probe_runs.
        first_run = conn.execute(text("SELECT count(*) FROM probe_runs WHERE saga_id = :s AND step = :st "
                                      "AND kind = :k"), {"s": ctx.saga_id, "st": ctx.step, "k": kind}).scalar() == 1
    # No unique key: only the step's transaction stands between a re-run and a second row.
    ctx.db.execute(text("INSERT INTO probe_tx_effects (saga_id, step, kind) VALUES (:s, :st, :k)"),
                   {"s": ctx.saga_id, "st": ctx.step, "k": kind})
    label = ctx.step if kind == "do" else f"undo_{ctx.step}"
    if ctx.input.crash == label:
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.input.hang == label:
        _hang()
    if ctx.input.fail == label:
        raise PermanentError(f"{label} refused")
    if ctx.attempt <= ctx.input.transient.get(label, 0):
        raise TransientError(f"{label} attempt {ctx.attempt} hit a passing failure")
    if first_run and label in ctx.input.hold:
        time.sleep(ctx.input.hold[label])
    if ctx.input.bad_result == label:
        return {"step": ctx.step, "note": "a NUL \u0000 jsonb cannot hold"}
    return {"step": ctx.step}


def _declare_tx(name: str, retry: RetryPolicy, time_limit: float) -> SagaType[ProbeInput]:
    """A transactional compensable step `a`, then a transactional pivot `b`."""
    saga_type = sagas.saga_type(name, ProbeInput, default_retry=retry, default_time_limit=time_limit, queue="probe")

    def a(ctx: StepContext[ProbeInput]) -> dict[str, Any]:
        return _tx_act(ctx, "do")

    def undo_a(ctx: StepContext[ProbeInput]) -> dict[str, Any]:
        return _tx_act(ctx, "undo")

    def b(ctx: StepContext[ProbeInput]) -> dict[str, Any]:
        return _tx_act(ctx, "do")

    step_a = saga_type.step(a, kind="compensable", transactional=True, name=f"tests.{name}.a")
    step_a.compensate_with(undo_a, name=f"tests.{name}.undo_a", transactional=True)
    saga_type.step(b, kind="pivot", transactional=True, name=f"tests.{name}.b")
    return saga_type


probe_tx = _declare_tx("probe_tx", FAST, time_limit=3)
probe_tx_short = _declare_tx("probe_tx_short", SHORT, time_limit=2)


def _simple(name: str, queue: str, steps: tuple[tuple[str, str, str | tuple[str, ...]], ...],
            input_model: type[BaseModel] = ProbeInput, body: Any = _nothing) -> SagaType[Any]:
    """A saga type of steps (name, kind, depends_on) that each run `body`; each step before the point of no return
    and the pivot are undone by nothing."""
    saga_type = sagas.saga_type(name, input_model, default_retry=FAST, default_time_limit=3, queue=queue)
    for step_name, kind, depends_on in steps:
        def run(ctx: StepContext[Any]) -> Any:
            return body(ctx)

        run.__name__ = step_name
        step = saga_type.step(run, kind=kind, name=f"tests.{name}.{step_name}", depends_on=depends_on)
        if kind != "retriable":
            def undo(ctx: StepContext[Any]) -> None:
                return None

            undo.__name__ = f"undo_{step_name}"
            step.compensate_with(undo, name=f"tests.{name}.undo_{step_name}")
    return saga_type


# --- breakers ---
# A compensable step that calls `brk_pre`, the pivot, then a retriable step that calls `brk_post`, on the unread
# queue: a test opens their breakers in-process and sees what admission answers. Each opens after two failures and
# stays open five minutes, longer than any test needs.
for _dependency in ("brk_pre", "brk_post"):
    sagas.dependency(_dependency, failures=2, cooldown=300, max_cooldown=300)
brk_admission = _simple("brk_admission", "nobody", (("reserve", "compensable", "brk_pre"), ("charge", "pivot", ()),
                                                    ("notify", "retriable", "brk_post")))
# The same steps on the workers' queue, the last one calling `brk_console_post` (open for 20 s once it opens): the
# saga passes its point of no return, then waits for the breaker (a `step_waiting` event) and completes after it.
sagas.dependency("brk_console_post", failures=2, cooldown=20, max_cooldown=20)
brk_console = _simple("brk_console", "probe", (("reserve", "compensable", ()), ("charge", "pivot", ()),
                                               ("notify", "retriable", "brk_console_post")))
# A compensable step, then a pivot calling `brk_wait`: with that breaker open the saga waits past its first step.
sagas.dependency("brk_wait", failures=1, cooldown=300, max_cooldown=300)
brk_wait = _simple("brk_wait", "probe", (("reserve", "compensable", ()), ("charge", "pivot", "brk_wait")))


# --- tenant slots ---
# The probe on a queue of its own, for workers a test starts with tenant limits: it completes, compensates (`fail`
# of a compensable step) or pauses (`fail` of the retriable `d`) as asked.
probe_slots = _declare("probe_slots", "slots", FAST, time_limit=3)


class PauseInput(BaseModel):
    pause: float = 0.03  # seconds each step sleeps


def _pause(ctx: StepContext[PauseInput]) -> None:
    time.sleep(ctx.input.pause)


# Three quick steps on the same queue (continuation runs a saga's steps in one task): many of them make a burst.
slots_burst = _simple("slots_burst", "slots", (("reserve", "compensable", ()), ("charge", "pivot", ()),
                                               ("notify", "retriable", ())), PauseInput, _pause)
