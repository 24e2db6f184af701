"""OpenTelemetry with SAGA_TRACING=true: real API and worker processes export over OTLP/HTTP to a receiver, and
each saga is one connected trace whose id is the saga's: its root, the Celery publish and run spans of every
step and compensation, and the engine's span of each attempt."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from saga.testing import Stack, wait_until
from tests.otlp import ReceivedSpan, Receiver
from tests.test_api import ApiServer, free_port, serve, settle, start


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    running = Receiver(free_port())
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def traced(workers: Stack, receiver: Receiver) -> Iterator[ApiServer]:
    """An API and a worker (the only one) with tracing on, exporting to `receiver` every 100 ms."""
    env = {"SAGA_TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    workers.stop_workers()
    workers.worker("traced", concurrency=1, env=env)
    server = serve(workers, name="api-traced", **env)
    try:
        yield server
    finally:
        server.close()
        workers.stop_workers()  # the next test's `workers` starts an untraced one


def spans_of(receiver: Receiver, saga_id: str, expected: set[str]) -> list[ReceivedSpan]:
    """The saga's spans once every name in `expected` has arrived."""
    def arrived() -> list[ReceivedSpan] | None:
        spans = receiver.of_trace(uuid.UUID(saga_id).hex)
        return spans if expected <= {s.name for s in spans} else None

    try:
        return wait_until(arrived, timeout=30, what="every span of the saga")
    except TimeoutError:
        got = sorted({s.name for s in receiver.of_trace(uuid.UUID(saga_id).hex)})
        raise AssertionError(f"missing {sorted(expected - set(got))}; got {got}") from None


def assert_one_tree(spans: list[ReceivedSpan]) -> ReceivedSpan:
    """Every span's parent is in the trace but the root's: one tree. Returns the root."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, [s.name for s in roots]
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"
    return roots[0]


def test_a_compensated_saga_is_one_trace_with_its_steps_and_undo(traced: ApiServer, receiver: Receiver) -> None:
    client = traced.client("alpha")
    answer = start(client, input={"fail": "c"})
    assert answer.status_code == 202, answer.text
    saga_id = answer.json()["id"]
    assert settle(client, saga_id)["status"] == "compensated"

    steps = ("a", "b", "c")
    # b and c run by continuation in a's message: their attempts are spans of that message's run.
    expected = {"saga probe", "run/tests.probe.a", *(f"forward {s}" for s in steps),
                "apply_async/tests.probe.a", "compensation b", "compensation a",
                "run/tests.probe.undo_b", "run/tests.probe.undo_a", "run/saga.finish_compensation"}
    spans = spans_of(receiver, saga_id, expected)
    root = assert_one_tree(spans)
    assert root.name == "saga probe" and root.service == "saga-api"
    assert root.attributes["saga.id"] == saga_id and root.attributes["saga.tenant"] == traced.tenants["alpha"]
    # The root links to the HTTP request that accepted the saga (a trace of its own).
    request = [s for s in receiver.spans if s.trace_id + s.span_id in root.links]
    assert request and request[0].name.startswith("POST /v1/sagas") and request[0].service == "saga-api", request

    by_name = {s.name: s for s in spans}
    assert by_name["apply_async/tests.probe.a"].service == "saga-api"
    assert by_name["run/tests.probe.a"].service == "saga-worker"
    for step in steps:
        attempt = by_name[f"forward {step}"]
        assert attempt.parent_span_id == by_name["run/tests.probe.a"].span_id
        assert attempt.attributes["saga.step"] == step and attempt.attributes["saga.attempt"] == "1"
        assert attempt.attributes["saga.tenant"] == traced.tenants["alpha"]
    assert all(s.error for s in spans if s.name == "forward c") and not by_name["forward a"].error
    assert by_name["compensation b"].attributes["saga.mode"] == "compensation"


def test_a_saga_started_without_tracing_still_gets_its_trace_from_the_worker(
        traced: ApiServer, receiver: Receiver) -> None:
    """A process that does not trace (here this test's own, like a script calling `saga.start`) sends the first
    step with no trace context: the engine's attempt spans still join the saga's trace."""
    import saga

    record = saga.start("probe", {}, idempotency_key=f"untraced-{uuid.uuid4()}").saga
    spans = spans_of(receiver, str(record.id), {"forward a", "forward b", "forward c"})
    assert {s.service for s in spans} == {"saga-worker"}
