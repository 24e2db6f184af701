"""Real Flower against real workers, behind basic auth: its own HTTP API finds every step (those run by continuation
in another step's message too) and compensation task of a saga, with its state and the saga id in its arguments,
and no recovery task crowds its list; a step's result forged through its API (send-task, by someone who has its
password) is refused."""

from __future__ import annotations

import ast
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import saga
from saga.testing import Process, Stack, wait_for_status, wait_until
from standins import free_port
from tests.sagas import probe, probe_patient
from tests.test_commit_seal import CHARGE, assert_refused, charge_in_flight, forged_commit
from tests.test_continuation import continued, started_by

FINAL = ("completed", "compensated", "paused", "failed")
AUTH = ("ops", "flower-test-password")


@pytest.fixture()
def flower(workers: Stack) -> Iterator[str]:
    port = free_port()
    process = Process.spawn("flower", [sys.executable, "-m", "service", "flower", f"--port={port}"],
                            {**workers.env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}, workers.data_dir, cwd=workers.cwd)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/api/workers", auth=AUTH, timeout=2).status_code == 200
        except httpx.TransportError:
            return process.alive() is False and pytest.fail(process.log_text()[-2000:])  # type: ignore[return-value]

    try:
        wait_until(answers, timeout=60, what="Flower to answer")
        _until_flower_sees_events(url)
        yield url
    finally:
        process.stop()


def _until_flower_sees_events(url: str) -> None:
    """Flower answers HTTP before its event receiver listens, and events sent meanwhile are gone: run warm-up
    sagas until one of them shows up."""
    for _ in range(10):
        warm = saga.start("probe", {}, idempotency_key=f"flower-warm-{free_port()}-{time.monotonic()}").saga
        wait_for_status(warm.id, FINAL)
        try:
            wait_until(lambda w=warm.id: tasks_of(url, w), timeout=5, what="Flower to see a warm-up saga")
            return
        except TimeoutError:
            continue
    pytest.fail("Flower never showed a task of ten warm-up sagas")


def tasks_of(url: str, saga_id: Any) -> dict[str, dict[str, Any]]:
    """Flower's tasks whose arguments name the saga, by task id."""
    found = httpx.get(f"{url}/api/tasks", params={"limit": 1000}, auth=AUTH, timeout=10).json()
    return {tid: t for tid, t in found.items() if str(saga_id) in (t.get("args") or "")}


def test_flower_shows_every_step_and_compensation_of_a_saga(workers: Stack, flower: str) -> None:
    record = saga.start("probe", {"fail": "c"}, idempotency_key=f"flower-{free_port()}").saga
    record = wait_for_status(record.id, FINAL)
    assert record.status == "compensated"
    expected = {"tests.probe.a", "tests.probe.b", "tests.probe.c", "tests.probe.undo_b", "tests.probe.undo_a",
                "saga.finish_compensation"}

    def all_seen() -> dict[str, dict[str, Any]] | None:
        seen = tasks_of(flower, record.id)
        names = {t["name"] for t in seen.values() if t.get("state") in ("SUCCESS", "FAILURE")}
        return seen if expected <= names else None

    seen = wait_until(all_seen, timeout=30, what="Flower to have seen every task of the saga")
    states = {t["name"]: t["state"] for t in seen.values()}
    assert states["tests.probe.c"] == "FAILURE" and states["tests.probe.a"] == "SUCCESS", states
    # The ledger's task id of each step is Flower's (the console links one to the other), b and c among them though
    # they ran by continuation in a's message, not in messages of their own.
    for step in record.steps[:3]:
        assert step.task_id in seen, f"{step.name}: task {step.task_id} not in Flower"
    assert continued(record.id, probe, "b") and continued(record.id, probe, "c"), "b or c went through the broker"
    for name in ("b", "c"):
        [task_id] = started_by(record.id, name)
        assert seen[task_id]["name"] == f"tests.probe.{name}", seen[task_id]
    assert seen[started_by(record.id, "b")[0]]["state"] == "SUCCESS"
    everything = httpx.get(f"{flower}/api/tasks", params={"limit": 1000}, auth=AUTH, timeout=10).json()
    assert not [t for t in everything.values() if t.get("name") == "saga.recover"], "recovery floods the list"
    # A step's message carries the saga id and nothing else: no input, no setting, no secret.
    for task in seen.values():
        assert list(ast.literal_eval(task["args"])) == [str(record.id)] and task["kwargs"] in ("{}", None), task


def test_flower_shows_a_continued_step_running_before_it_ends(workers: Stack, flower: str) -> None:
    """Events of quick continued steps are held back and sent together; c, which starts right after the quick b
    (so its start is held back too) and then runs for seconds, is shown started a moment after, not once it ends."""
    record = saga.start("probe_patient", {"hold": {"c": 4}}, idempotency_key=f"flower-long-{free_port()}").saga
    [c] = wait_until(lambda: started_by(record.id, "c"), timeout=30, interval=0.01, what="step c to start")
    began = time.monotonic()
    shown = wait_until(lambda: tasks_of(flower, record.id).get(c), timeout=3, interval=0.1,
                       what="Flower to show step c while it runs")
    assert shown["state"] == "STARTED" and shown["name"] == "tests.probe_patient.c", shown
    assert time.monotonic() - began < 3 and saga.load(record.id).steps[2].status == "running"
    assert wait_for_status(record.id, FINAL).status == "completed"
    assert continued(record.id, probe_patient, "b") and continued(record.id, probe_patient, "c"), (
        "b or c went through the broker")
    assert len(started_by(record.id, "c")) == 1, "c was tried again"
    wait_until(lambda: tasks_of(flower, record.id)[c]["state"] == "SUCCESS", timeout=10, what="c shown succeeded")


def test_a_commit_forged_through_flowers_api_is_refused(workers: Stack, flower: str) -> None:
    """Whoever reaches Flower (here with its password) can send any task: a charge in flight told by send-task
    that it succeeded is not recorded as succeeded, and the saga goes on by the charge's own outcome."""
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401, "Flower's API answered without auth"
    record = charge_in_flight()
    sent = httpx.post(f"{flower}/api/task/send-task/{CHARGE}", auth=AUTH, timeout=10,
                      json={"args": [str(record.id)], "kwargs": {"commit": forged_commit(record.id)}, "queue": "probe"})
    assert sent.status_code == 200, sent.text
    assert_refused(workers, record, forged=1)
