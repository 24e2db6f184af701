"""Reading what the probe steps did, and checking the design's invariants against it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import text

from saga import db, events, load


def effects(saga_id: UUID, kind: str) -> list[str]:
    """The step of every execution of a probe effect ("do" or "undo"), oldest first: a step that made its effect
    twice is here twice, though its third party (`kept`) holds one."""
    with db.transaction() as conn:
        return list(conn.execute(text("SELECT step FROM probe_effect_log WHERE saga_id = :s AND kind = :k "
                                      "ORDER BY id"), {"s": saga_id, "k": kind}).scalars())


def kept(saga_id: UUID, kind: str) -> list[str]:
    """What the probes' third party holds: one effect per idempotency key, oldest first."""
    with db.transaction() as conn:
        return list(conn.execute(text("SELECT step FROM probe_effects WHERE saga_id = :s AND kind = :k ORDER BY at"),
                                 {"s": saga_id, "k": kind}).scalars())


def effects_per_run(saga_id: UUID) -> dict[int, int]:
    """Executions whose body made its effect more than once: run id -> effects."""
    with db.transaction() as conn:
        return dict(conn.execute(text("SELECT run_id, count(*) FROM probe_effect_log WHERE saga_id = :s "
                                      "GROUP BY run_id HAVING count(*) > 1"), {"s": saga_id}).all())  # type: ignore[arg-type]


def runs(saga_id: UUID, step: str | None = None, kind: str = "do") -> list[Any]:
    with db.transaction() as conn:
        return list(conn.execute(
            text("SELECT step, attempt, pid, at FROM probe_runs WHERE saga_id = :s AND kind = :k "
                 "AND (CAST(:st AS text) IS NULL OR step = :st) ORDER BY id"),
            {"s": saga_id, "k": kind, "st": step}))


def event_kinds(saga_id: UUID, kind: str) -> list[str | None]:
    return [e.step for e in events(saga_id) if e.kind == kind]


def check_invariants(saga_id: UUID, one_pass: bool = True) -> str:
    """Assert I2-I4 for one finished saga from the probes' own tables; returns its status.

    `kept` is what the probes' third party holds (one per idempotency key, as I2 asks of a third party);
    `effects` are every execution of an effect, each made by one execution of a body (at most once by it);
    `runs` are every execution of a body, and each must have been counted by the ledger as an attempt.
    `one_pass` is False when an operator re-ran compensation, so the newest-first order spans two passes.
    """
    record = load(saga_id)
    started, undo_started = event_kinds(saga_id, "step_started"), event_kinds(saga_id, "compensation_started")
    for step in record.steps:
        ran, undid = len(runs(saga_id, step.name)), len(runs(saga_id, step.name, kind="undo"))
        attempts, undo_attempts = started.count(step.name), undo_started.count(step.name)
        assert ran <= attempts, f"step {step.name} ran {ran} times in {attempts} attempts"
        assert undid <= undo_attempts, f"compensation of {step.name} ran {undid} times in {undo_attempts} attempts"
    twice = effects_per_run(saga_id)
    assert not twice, f"an execution made its effect more than once (run: effects) {twice}"
    done, undone = kept(saga_id, "do"), kept(saga_id, "undo")
    succeeded = event_kinds(saga_id, "step_succeeded")
    assert len(succeeded) == len(set(succeeded)), f"a step committed twice: {succeeded}"
    compensated = event_kinds(saga_id, "step_compensated")
    assert len(compensated) == len(set(compensated)), f"a compensation committed twice: {compensated}"
    order = [s.name for s in record.steps]
    if one_pass:
        assert compensated == sorted(compensated, key=order.index, reverse=True), f"not newest first: {compensated}"
    if record.status == "completed":
        assert sorted(done) == order, f"completed saga effects {done}"
        assert undone == []
    elif record.status == "compensated":
        assert set(done) <= set(undone), f"effects {done} but undone {undone}"
        assert set(done) <= set(compensated), f"effects {done} but compensated {compensated}"
    elif record.status == "paused":  # past the pivot, waiting for an operator: nothing is undone
        assert undone == [] and compensated == [], f"a paused saga undid {undone}"
        assert done == order[:len(done)], f"paused saga effects {done}"
    elif record.status == "failed":  # a compensation gave up: only effects that were made were undone
        assert set(undone) <= set(done), f"undid {undone} of effects {done}"
    else:
        raise AssertionError(f"saga {saga_id} has not ended: {record.status}")
    return record.status


def waits_for(pid: int) -> bool:
    """Some session waits for a lock that PostgreSQL backend `pid` holds."""
    with db.transaction() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE :p = ANY(pg_blocking_pids(pid))"),
                                 {"p": pid}).scalar())
