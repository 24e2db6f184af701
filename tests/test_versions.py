"""Versions of a saga type with real workers: sagas started on v1 finish on v1's steps after v2 is deployed beside
it; a saga whose version a deployment no longer declares (or declares with other steps) is paused, naming the
version, and never run by the wrong steps; deploying its version again and resuming finishes it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

import saga
from saga import db
from saga.testing import Stack, wait_for_status, wait_until
from tests.versioned import QUEUE, TABLE, declare

FINAL = ("completed", "compensated", "paused", "failed")
V1, V2 = ["a", "b", "c"], ["a", "x", "b", "c"]


@pytest.fixture()
def deploy(workers: Stack, fresh: None) -> Iterator[Any]:
    """`deploy("1:a,b,c;2:...")`: replace the `versioned` queue's worker, and beat, by processes declaring those
    versions (a new deployment of the module); the suite's own beat comes back afterwards."""
    with db.transaction() as conn:
        conn.execute(text(TABLE))
    modules = "tasks.demo,tasks.job_posting,tests.sagas,tests.versioned"

    def deploy(spec: str) -> None:
        env = {"SAGA_MODULES": modules, "SAGA_TEST_VERSIONS": spec}
        for process in [p for p in workers.processes if p.name == "wv"]:
            # SIGTERM to the main process alone, as a supervisor sends it: it finishes the steps it runs.
            os.kill(process.popen.pid, signal.SIGTERM)
            process.popen.wait(timeout=60)
            workers.processes.remove(process)
        stop_beat()
        workers.worker("wv", queues=(QUEUE,), env=env)
        workers.beat(env)

    def stop_beat() -> None:
        for process in [p for p in workers.processes if p.name == "beat"]:
            process.stop()
            workers.processes.remove(process)

    try:
        yield deploy
    finally:
        workers.stop_workers(keep=[p.name for p in workers.workers() if p.name != "wv"])
        stop_beat()
        workers.beat()


def runs(saga_id: UUID) -> list[tuple[str, str, int]]:
    """Every execution of a body of the saga, in order: (step, do/undo, version of the code that ran it)."""
    with db.transaction() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT step, kind, version FROM versioned_runs WHERE saga_id = :s ORDER BY at"), {"s": saga_id})]


def started_on_step(saga_id: UUID, step: str) -> None:
    wait_until(lambda: any(r[0] == step for r in runs(saga_id)), timeout=30, what=f"step {step} to start")


def test_sagas_started_on_v1_finish_on_v1_after_v2_is_deployed_beside_it(workers: Stack, deploy: Any) -> None:
    deploy("1:a,b,c")
    declare(1, V1)  # this process starts sagas on the newest version it declares, as the API would
    old = [saga.start("versioned", {"hold": {"b": 3}}).saga.id for _ in range(2)]
    for saga_id in old:
        started_on_step(saga_id, "b")
    deploy("1:a,b,c;2:a,x,b,c")  # the old worker finishes its step b; the new one takes the rest
    declare(2, V2)
    new = saga.start("versioned", {}).saga.id
    for saga_id in [*old, new]:
        assert wait_for_status(saga_id, FINAL, timeout=60).status == "completed", saga.load(saga_id).error
    for saga_id in old:
        record = saga.load(saga_id)
        assert record.version == 1 and [s.name for s in record.steps] == V1
        assert runs(saga_id) == [("a", "do", 1), ("b", "do", 1), ("c", "do", 1)], "ran by v1's steps, once each"
    record = saga.load(new)
    assert record.version == 2 and [s.name for s in record.steps] == V2
    assert runs(new) == [("a", "do", 2), ("x", "do", 2), ("b", "do", 2), ("c", "do", 2)]


@pytest.mark.parametrize("deployment, reason", [
    ("2:a,x,b,c", "saga type 'versioned' version 1 is not declared here (declared: 2)"),
    ("1:a,c,b", "saga type 'versioned' version 1 is declared here with other steps than the saga started with"),
], ids=["version removed", "steps changed under the same version"])
def test_a_saga_whose_version_is_not_deployed_is_paused_naming_it_then_resumed_on_it(
        workers: Stack, deploy: Any, deployment: str, reason: str) -> None:
    deploy("1:a,b,c")
    declare(1, V1)
    saga_id = saga.start("versioned", {"hold": {"b": 3}}).saga.id
    started_on_step(saga_id, "b")
    deploy(deployment)
    paused = wait_for_status(saga_id, FINAL, timeout=60)
    assert paused.status == "paused" and (paused.error or "").startswith(reason), paused.error
    assert [r[0] for r in runs(saga_id)] == ["a", "b"], "nothing ran by another version's steps"
    assert [e.detail["version"] for e in saga.events(saga_id) if e.kind == "saga_paused"] == [1]

    deploy("1:a,b,c;2:a,x,b,c")  # version 1 declared again, as it was
    saga.resume(saga_id)
    assert wait_for_status(saga_id, FINAL, timeout=60).status == "completed"
    assert runs(saga_id) == [("a", "do", 1), ("b", "do", 1), ("c", "do", 1)]
