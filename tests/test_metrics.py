"""Prometheus metrics from a real worker (prefork pool, multiprocess mode) and from the API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import saga
from saga.testing import Stack, wait_for_status, wait_until
from standins import free_port

FINAL = ("completed", "compensated", "paused", "failed")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture()
def metrics_worker(workers: Stack) -> Iterator[str]:
    """The only worker, two pool processes counting into files its main process adds up on a port."""
    port = free_port()
    workers.stop_workers()
    workers.worker("w-metrics", concurrency=2, env={
        "SAGA_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(workers.data_dir / "metrics-w")})
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        workers.stop_workers()


def test_a_worker_counts_sagas_steps_and_attempts_across_its_pool(metrics_worker: str) -> None:
    specs = [{}, {"transient": {"b": 2}}, {"fail": "c"}, {"fail": "d"}]
    ids = [saga.start("probe", spec, idempotency_key=str(uuid.uuid4())).saga.id for spec in specs]
    statuses = [wait_for_status(i, FINAL).status for i in ids]
    assert statuses == ["completed", "completed", "compensated", "paused"]
    m = wait_until(lambda: (s := scrape(metrics_worker)) and value(
        s, "saga_sagas_ended_total", type="probe", status="compensated") == 1 and s, what="the metrics")
    assert value(m, "saga_sagas_ended_total", type="probe", status="completed") == 2
    assert value(m, "saga_sagas_ended_total", type="probe", status="paused") == 1
    attempts = "saga_step_attempts_total"
    assert value(m, attempts, type="probe", step="a", mode="forward", outcome="succeeded") == 4
    assert value(m, attempts, type="probe", step="b", mode="forward", outcome="retried") == 2
    assert value(m, attempts, type="probe", step="c", mode="forward", outcome="failed") == 1
    assert value(m, attempts, type="probe", step="a", mode="compensation", outcome="succeeded") == 1
    # Every execution of a body is timed: a ran in all four sagas, b twice more in the transient one.
    assert value(m, "saga_step_seconds_count", type="probe", step="a", mode="forward") == 4
    assert value(m, "saga_step_seconds_count", type="probe", step="b", mode="forward") == 6
    # Every execution took its step (a: 4, b: 6, c: 3, d: 3) with a claim statement of its own, timed, or in the
    # commit of the step before it (continuation), counted.
    claimed = value(m, "saga_claim_seconds_count", mode="forward")
    assert claimed >= 4 and claimed + value(m, "saga_steps_continued_total", type="probe") >= 16
    assert value(m, "saga_claim_seconds_count", mode="compensation") >= 2  # undo b, undo a


def test_the_api_answers_sagas_started_and_the_oldest_unfinished(api: object) -> None:
    with api.client("alpha") as client:  # type: ignore[attr-defined]
        answer = client.post("/v1/sagas", json={"type": "probe_idle", "input": {}},
                             headers={"Idempotency-Key": str(uuid.uuid4())})
        assert answer.status_code == 202, answer.text
    m = scrape(f"{api.url}/metrics")  # type: ignore[attr-defined]
    assert value(m, "saga_sagas_started_total", type="probe_idle") >= 1
    # probe_idle's steps go to a queue no worker reads, so it waits, pending, and ages; the ledger is read at most
    # once a second (the API's readiness check just read it), so the saga shows by the next reading.
    aged = wait_until(lambda: value(scrape(f"{api.url}/metrics"), "saga_oldest_unfinished_seconds",  # type: ignore[attr-defined]
                                    status="pending"), timeout=5, what="the pending saga's age")
    assert aged > 0


@pytest.fixture()
def metrics_beat(workers: Stack) -> Iterator[str]:
    """Beat (which runs recovery) serving its metrics on a port."""
    port = free_port()
    for process in [p for p in workers.processes if p.name == "beat"]:
        process.stop()
        workers.processes.remove(process)
    workers.beat(env={"SAGA_METRICS_PORT": str(port)})
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        for process in [p for p in workers.processes if p.name == "beat"]:
            process.stop()
            workers.processes.remove(process)


def test_beat_counts_recovery_dispatches(metrics_beat: str) -> None:
    """probe_idle's steps wait on a queue nobody reads, so recovery wakes the saga once its pickup time passes."""
    saga.start("probe_idle", {}, idempotency_key=str(uuid.uuid4()))

    def dispatched() -> float:
        try:
            return value(scrape(metrics_beat), "saga_recovery_dispatches_total")
        except httpx.TransportError:
            return 0.0

    assert wait_until(dispatched, timeout=30, what="beat to count a recovery dispatch") >= 1
