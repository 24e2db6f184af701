"""The API when its dependencies fail: the broker down (sagas still accepted, recovery sends them), the
database down (a clean 500, never a stack trace)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx

from saga.testing import Stack, wait_until
from tests.test_api import NOWHERE, TcpProxy, assert_error, free_port, serve, settle, start


def test_with_the_broker_down_the_api_accepts_and_answers_then_recovery_dispatches(workers: Stack) -> None:
    broker = urlsplit(workers.env["SAGA_BROKER_URL"])
    port = free_port()  # nothing listens here until the proxy below starts: the broker is "down"
    api = serve(workers, "api-no-broker", SAGA_BROKER_URL=f"redis://127.0.0.1:{port}{broker.path}")
    proxy = TcpProxy(port, (broker.hostname or "127.0.0.1", broker.port or 6379))
    try:
        client = api.new_tenant()
        accepted = []
        for n in range(3):
            began = time.monotonic()
            response = start(client, "probe")
            assert response.status_code == 202, response.text
            assert time.monotonic() - began < 3, "a failed dispatch must not hold the request long"
            accepted.append(response.json()["id"])

        for saga_id in accepted:  # beat's own broker connection works, so recovery may already have sent it
            got = client.get(f"/v1/sagas/{saga_id}")
            assert got.status_code == 200 and got.json()["id"] == saga_id
        assert len(client.get("/v1/sagas").json()["items"]) == 3
        health = httpx.get(f"{api.url}/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["database"]["ok"] is True and health.json()["broker"]["ok"] is False

        # Beat and the worker reach the broker: recovery dispatches what the API could not (a failed send
        # marks the saga due at once).
        for saga_id in accepted:
            assert settle(client, saga_id)["status"] == "completed"
            kinds = [e["kind"] for e in client.get(f"/v1/sagas/{saga_id}/events").json()["items"]]
            assert "recovered" in kinds

        # The broker is back for the API too: it dispatches by itself again.
        proxy.start()  # health is read at most once a second: it says so at its next reading
        wait_until(lambda: httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200, timeout=10,
                   what="health to see the broker back")
        saga_id = start(client, "probe").json()["id"]
        assert settle(client, saga_id)["status"] == "completed"
        kinds = [e["kind"] for e in client.get(f"/v1/sagas/{saga_id}/events").json()["items"]]
        assert "recovered" not in kinds, "dispatched by the API, not by recovery"
    finally:
        api.close()
        proxy.stop()


def test_with_the_database_down_the_api_answers_503_in_the_error_shape_without_a_stack_trace(stack: Stack) -> None:
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/saga"
    api = serve(stack, "api-no-db", SAGA_DATABASE_URL=nowhere)
    try:
        client = api.client("alpha")
        for response in (client.get(f"/v1/sagas/{NOWHERE}"), client.get("/v1/sagas"),
                         start(client, "probe")):
            error = assert_error(response, 503, "unavailable")
            assert "psycopg" not in response.text and "sqlalchemy" not in response.text.lower()
            assert error["details"] is None and response.headers["Retry-After"] == "2"
        health = httpx.get(f"{api.url}/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["database"]["ok"] is False and health.json()["broker"]["ok"] is True
        assert "ledger unreachable on GET /v1/sagas" in api.process.log_text(), "the server logs what failed"
    finally:
        api.close()
