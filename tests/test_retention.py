"""Retention: `saga prune --older-than AGE` and beat's SAGA_RETENTION_DAYS delete sagas that ended long ago with
their steps and events, keep everything else, and never wait on a saga someone holds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from saga import db, retention
from saga.testing import Process, Stack, wait_until
from tests.conftest import ROOT

# status, days since created, days since last updated
CASES = {
    "old_completed": ("completed", 40, 35),
    "old_compensated": ("compensated", 40, 31),
    "old_paused": ("paused", 40, 35),  # waits for an operator: kept
    "old_failed": ("failed", 40, 35),  # likewise
    "old_running": ("running", 40, 35),  # still in motion (recovery's business): kept
    "recent_completed": ("completed", 5, 5),
    "ended_lately": ("completed", 40, 10),  # created long ago, but ended only 10 days ago
}
GONE = {"old_completed", "old_compensated"}


def make_sagas(tenant: str, cases: dict[str, tuple[str, int, int]]) -> dict[str, uuid.UUID]:
    """Sagas of `tenant` as the ledger would hold them, two steps and two events each, backdated."""
    ids = {name: uuid.uuid4() for name in cases}
    with db.transaction() as conn:
        for name, (status, created, updated) in cases.items():
            params = {"id": ids[name], "tenant": tenant, "status": status, "c": created, "u": updated}
            conn.execute(text(
                "INSERT INTO sagas (id, tenant, type, status, input, created_at, updated_at) VALUES (:id, :tenant,"
                " 'probe', :status, '{}', now() - make_interval(days => :c), now() - make_interval(days => :u))"),
                params)
            conn.execute(text("INSERT INTO saga_steps (saga_id, idx, name, kind, status) VALUES"
                              " (:id, 0, 'a', 'compensable', 'succeeded'), (:id, 1, 'b', 'pivot', 'succeeded')"),
                         params)
            conn.execute(text("INSERT INTO saga_events (saga_id, kind) VALUES (:id, 'saga_accepted'),"
                              " (:id, 'saga_completed')"), params)
    return ids


def remaining(ids: dict[str, uuid.UUID]) -> dict[str, tuple[int, int, int]]:
    """For each saga still there: (1, its steps, its events)."""
    found = {}
    with db.transaction() as conn:
        for name, saga_id in ids.items():
            row = conn.execute(text(
                "SELECT (SELECT count(*) FROM sagas WHERE id = :id), (SELECT count(*) FROM saga_steps WHERE saga_id"
                " = :id), (SELECT count(*) FROM saga_events WHERE saga_id = :id)"), {"id": saga_id}).one()
            if any(row):
                found[name] = tuple(row)
    return found


def saga_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The library's `saga` command (installed beside this Python), on the service's app and this stack."""
    saga = Path(sys.executable).parent / "saga"
    return subprocess.run([str(saga), "-A", "workers.app", *args], capture_output=True, text=True, check=False,
                          cwd=ROOT, env={**os.environ, **stack.env}, timeout=120)


def test_prune_deletes_what_ended_long_ago_with_its_steps_and_events_and_keeps_the_rest(stack: Stack) -> None:
    ids = make_sagas(f"prune-{uuid.uuid4().hex[:8]}", CASES)
    done = saga_cli(stack, "prune", "--older-than", "30d", "--batch", "1")
    assert done.returncode == 0, done.stderr
    left = remaining(ids)
    assert set(left) == set(CASES) - GONE, left
    assert all(counts == (1, 2, 2) for counts in left.values()), left
    assert "deleted 1 saga(s) so far" in done.stderr and "deleted 2 saga(s) so far" in done.stderr, done.stderr
    deleted = re.match(r"deleted (\d+) saga", done.stdout.strip())
    assert deleted and int(deleted[1]) >= len(GONE) and "ago" in done.stdout, done.stdout  # others' may go too

    again = saga_cli(stack, "prune", "--older-than", "30d")
    assert again.returncode == 0 and again.stdout.startswith("deleted 0 saga(s)"), again.stdout
    assert set(remaining(ids)) == set(CASES) - GONE


@pytest.mark.parametrize("age", ["30", "thirty days", "-3d", "5w"])
def test_prune_refuses_an_age_it_cannot_read(stack: Stack, age: str) -> None:
    done = saga_cli(stack, "prune", "--older-than", age)
    assert done.returncode == 2 and "--older-than" in done.stderr and repr(age) in done.stderr, done.stderr


def test_prune_skips_a_saga_another_transaction_holds_instead_of_waiting(stack: Stack) -> None:
    ids = make_sagas(f"prune-{uuid.uuid4().hex[:8]}", {"held": CASES["old_completed"], "free": CASES["old_completed"]})
    with db.engine().connect() as holder, holder.begin():
        holder.execute(text("SELECT 1 FROM sagas WHERE id = :id FOR UPDATE"), {"id": ids["held"]})
        pruning = threading.Thread(target=retention.prune, args=(timedelta(days=30),))
        pruning.start()
        pruning.join(timeout=15)
        assert not pruning.is_alive(), "prune waited for a saga another transaction holds"
        assert set(remaining(ids)) == {"held"}
    retention.prune(timedelta(days=30))
    assert remaining(ids) == {}


def test_beat_prunes_with_saga_retention_days(stack: Stack) -> None:
    ids = make_sagas(f"prune-{uuid.uuid4().hex[:8]}", CASES)
    beat = Process.spawn("beat-retention", [
        sys.executable, "-m", "celery", "-A", stack.app, "beat", "--loglevel=INFO",
        f"--schedule={stack.data_dir / 'beat-retention-schedule'}",
    ], {**stack.env, "SAGA_RETENTION_DAYS": "30"}, stack.data_dir, cwd=stack.cwd)
    try:
        wait_until(lambda: set(remaining(ids)) == set(CASES) - GONE, timeout=30, what="beat to prune")
    finally:
        beat.stop()
