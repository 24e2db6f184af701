"""Versions of a saga type with real workers: sagas started on v1 finish on v1's steps after v2 is deployed beside
it; a saga whose version a deployment no longer declares (or declares with other steps) is paused, naming the
version, and never run by the wrong steps; deploying its version again and resuming finishes it. A worker of
another version (or a stale declaration of the same one) handed a saga's step message claims and runs nothing."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

import saga
from saga import db
from saga.runner import send_forward
from saga.testing import Stack, wait_for_status, wait_until
from tests.versioned import QUEUE, TABLE, declare

FINAL = ("completed", "compensated", "paused", "failed")
V1, V2 = ["a", "b", "c"], ["a", "x", "b", "c"]


@pytest.fixture()
def deploy(workers: Stack, fresh: None) -> Iterator[Any]:
    """`deploy("1:a,b,c;2:...")`: replace the `versioned` queue's worker, and beat, by processes declaring those
    versions (a new deployment of the module); with `beat=False` no beat runs meanwhile (recovery held back).
    The suite's own beat comes back afterwards."""
    with db.transaction() as conn:
        conn.execute(text(TABLE))
    modules = "tasks.demo,tasks.job_posting,tests.sagas,tests.versioned"

    def deploy(spec: str, beat: bool = True) -> None:
        env = {"SAGA_MODULES": modules, "SAGA_TEST_VERSIONS": spec}
        for process in [p for p in workers.processes if p.name == "wv"]:
            # SIGTERM to the main process alone, as a supervisor sends it: it finishes the steps it runs.
            os.kill(process.popen.pid, signal.SIGTERM)
            process.popen.wait(timeout=60)
            workers.processes.remove(process)
        stop_beat()
        workers.worker("wv", queues=(QUEUE,), env=env)
        if beat:
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


LEFT = "saga {id} is on versioned version 2, newer than this process declares: left to newer workers"
# Celery's line for a task that ended (ignored, succeeded, retried or raised), not the one that received it.
DONE_WITH_A = re.compile(r"Task tests\.versioned\.a\[[0-9a-f-]+\] (?!received)")
STALE = "saga type 'versioned' version 1 is declared here with other steps than the saga started with"


@pytest.mark.parametrize("started_on, keep_names, meets, then, says, paused", [
    # A rolling deployment: the API already starts sagas on version 2, whose steps keep version 1's task names,
    # and the step's message reaches a worker that still declares version 1 alone. Only the version tells them
    # apart (same steps); the worker leaves the saga to the newer workers, and recovery sends it to them.
    (2, True, "1:a,b,c", "2*:a,b,c", LEFT, False),
    # A worker that loaded a stale declaration: version 1 with its steps reordered. Only the steps tell them
    # apart; the worker pauses the saga, naming why, until it is resumed on a deployment of the right steps.
    (1, False, "1:a,c,b", "1:a,b,c", "saga {id} paused: " + STALE, True),
], ids=["older version's worker", "same version with other steps"])
def test_a_worker_of_other_steps_handed_a_sagas_step_claims_and_runs_nothing(
        workers: Stack, deploy: Any, started_on: int, keep_names: bool, meets: str, then: str, says: str,
        paused: bool) -> None:
    deploy(meets, beat=False)  # the queue's only worker; recovery held back, so nothing else sends the step
    declare(started_on, V1, keep_names)  # this process starts sagas on the version the API runs
    saga_id = saga.start("versioned", {}, dispatch=False).saga.id
    before, events_before = saga.load(saga_id), saga.events(saga_id)
    worker = next(p for p in workers.processes if p.name == "wv")
    offset = len(worker.log_text())
    send_forward(saga_id, "versioned", 0, started_on)  # the chain from step a, as the engine sends it
    wait_until(lambda: DONE_WITH_A.search(worker.log_text()[offset:]), timeout=30,
               what="the worker to be done with step a's message")
    after, events = saga.load(saga_id), saga.events(saga_id)
    assert runs(saga_id) == [], "no body ran"
    assert after.steps == before.steps, "no step claimed: statuses, attempts, task ids as they were"
    assert events[:len(events_before)] == events_before
    if paused:
        assert [(e.kind, e.detail["from"]) for e in events[len(events_before):]] == [("saga_paused", "pending")]
        assert after.status == "paused" and (after.error or "").startswith(STALE), after.error
    else:
        assert after == before and events == events_before, "left alone, untouched"
    assert says.format(id=saga_id) in worker.log_text()[offset:], worker.log_text()[offset:]

    deploy(then)  # a worker (and beat) of the saga's own version and steps
    if paused:
        saga.resume(saga_id)
    assert wait_for_status(saga_id, FINAL, timeout=60).status == "completed", saga.load(saga_id).error
    assert runs(saga_id) == [("a", "do", started_on), ("b", "do", started_on), ("c", "do", started_on)]
