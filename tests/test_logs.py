"""Structured logs from a real worker: with SAGA_LOG_FORMAT=json every line a step writes (its body's own and
the engine's) is a JSON object carrying the saga id, type, step, mode, attempt and tenant."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import saga
from saga.testing import Process, Stack, wait_for_status, wait_until


@pytest.fixture()
def json_worker(workers: Stack) -> Iterator[Process]:
    workers.stop_workers()
    process = workers.worker("w-json", concurrency=1, env={"SAGA_LOG_FORMAT": "json"})
    try:
        yield process
    finally:
        workers.stop_workers()


def lines_of(process: Process, saga_id: object) -> list[dict[str, Any]]:
    found = []
    for line in process.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("saga_id") == str(saga_id):
                found.append(record)
    return found


def test_every_line_a_step_writes_names_its_saga_step_attempt_and_tenant(json_worker: Process) -> None:
    record = saga.start("probe", {"transient": {"b": 1}}, idempotency_key=str(uuid.uuid4())).saga
    assert wait_for_status(record.id, ("completed",)).status == "completed"
    lines = wait_until(lambda: [r for r in lines_of(json_worker, record.id) if r["logger"] == "tests.probe"]
                       and lines_of(json_worker, record.id), what="the worker's JSON lines")
    body = [(r["step"], r["attempt"]) for r in lines if r["logger"] == "tests.probe"]
    assert body == [("a", 1), ("b", 1), ("b", 2), ("c", 1), ("d", 1)], body
    failed = [r for r in lines if r["logger"] == "saga.execution" and "failed" in r["message"]]
    assert failed and failed[0]["step"] == "b" and failed[0]["attempt"] == 1
    for line in lines:
        assert line["saga_type"] == "probe" and line["mode"] == "forward" and line["tenant"] == "default", line
