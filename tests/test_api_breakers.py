"""Admission that looks ahead, and the circuit breakers seen from the API: a new saga whose step before the point of
no return depends on an open breaker is refused with 503, `Retry-After` and the dependency named (accepted with
`SAGA_BREAKER_ADMISSION=hold`, or when only a later step's breaker is open; a replayed key is answered as always);
`/healthz`, `GET /v1/breakers`, the client, `saga breakers` and `/metrics` show each breaker's state. A real
`python -m service api` process on the session's PostgreSQL; the breakers are driven in this process as workers
drive them (`saga.breakers`), on dependencies only these tests use (`brk_pre`, `brk_post` in tests/sagas.py)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import saga
import tests.sagas  # noqa: F401 - declares brk_pre and brk_post (two failures open them, for five minutes)
from api import keys as apikeys
from saga import breakers, db
from saga.client import DependencyUnavailable, SagaClient
from saga.testing import Stack, wait_until
from tests.test_api import ApiServer, assert_error, serve, start
from tests.test_api_client import saga_cli

SAGA_TYPE = "brk_admission"  # reserve (compensable, brk_pre), charge (the pivot), notify (retriable, brk_post)
OURS = ("brk_pre", "brk_post")


def open_breaker(name: str) -> None:
    """Open `name`'s breaker as a worker's failing calls do: its threshold of consecutive transient failures."""
    permit = breakers.Permit((name,), f"test-{uuid.uuid4()}", clean=False)
    for _ in range(breakers.dependency(name).failures):
        breakers.failed(permit)
    assert state_of(name)["state"] == "open"


def end_cooldown(name: str) -> None:
    """Let `name`'s cool-down pass now: the breaker is half-open, waiting for a probe."""
    with db.transaction() as conn:
        conn.execute(text("UPDATE saga_breakers SET retry_at = now() WHERE name = :n"), {"n": name})


def close_breaker(name: str) -> None:
    """Close `name`'s breaker as a worker does: its cool-down passes and a call succeeds."""
    end_cooldown(name)
    breakers.succeeded(breakers.Permit((name,), f"test-{uuid.uuid4()}", clean=False))
    assert state_of(name)["state"] == "closed"


def state_of(name: str) -> dict[str, Any]:
    return next(s.to_dict() for s in breakers.states() if s.name == name)


def forget_breakers(*names: str) -> None:
    with db.transaction() as conn:
        conn.execute(text("DELETE FROM saga_breakers WHERE name = ANY(:n)"), {"n": list(names)})


@pytest.fixture(autouse=True)
def closed(stack: Stack) -> Iterator[None]:
    """Each test starts with this module's breakers never used, and leaves none open."""
    forget_breakers(*OURS)
    yield
    forget_breakers(*OURS)


def count(client: httpx.Client) -> int:
    return len(client.get("/v1/sagas", params={"type": SAGA_TYPE}).json()["items"])


def scrape(api: ApiServer, series: str) -> float | None:
    """The value of one series of the API's `/metrics` (None while it is absent)."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", httpx.get(f"{api.url}/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else None


class Counting(httpx.HTTPTransport):
    """An HTTP transport that keeps the path of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_a_saga_whose_step_before_the_point_of_no_return_waits_on_an_open_breaker_is_a_503_naming_it(
        api: ApiServer) -> None:
    client = api.new_tenant()
    open_breaker("brk_pre")

    answer = start(client, SAGA_TYPE)
    error = assert_error(answer, 503, "dependency_unavailable")
    assert error["details"]["dependency"] == "brk_pre" and error["details"]["state"] == "open", error
    assert 250 <= error["details"]["retry_after"] <= 300, "the breaker's cool-down (300 s) is what is left to wait"
    assert answer.headers["Retry-After"] == str(error["details"]["retry_after"])
    assert "brk_pre is unavailable" in error["message"] and "brk_admission" in error["message"], error
    assert count(client) == 0, "nothing was written"

    # The client raises it at once, with the dependency and the wait: one request, not retried as a 503 would be.
    transport = Counting()
    _, key = apikeys.create_key(f"brk-{uuid.uuid4().hex[:8]}")
    with SagaClient(api.url, key, transport=transport) as sagas, pytest.raises(DependencyUnavailable) as refused:
        sagas.start(SAGA_TYPE, {})
    assert isinstance(refused.value, saga.DependencyUnavailable), "callers catch one exception, in-process or not"
    assert (refused.value.status, refused.value.code, refused.value.dependency, refused.value.state) == (
        503, "dependency_unavailable", "brk_pre", "open")
    assert refused.value.retry_after == pytest.approx(error["details"]["retry_after"], abs=2)
    assert transport.sent == ["POST /v1/sagas"]

    close_breaker("brk_pre")
    assert start(client, SAGA_TYPE).status_code == 202, "accepted again once it closed"


def test_with_admission_hold_the_saga_is_accepted_while_the_breaker_is_open(stack: Stack) -> None:
    held = serve(stack, "api-hold", SAGA_BREAKER_ADMISSION="hold")
    try:
        client = held.new_tenant()
        open_breaker("brk_pre")
        answer = start(client, SAGA_TYPE)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "pending"
        assert count(client) == 1
    finally:
        held.close()


def test_an_open_breaker_of_a_step_after_the_point_of_no_return_refuses_nothing(api: ApiServer) -> None:
    client = api.new_tenant()
    open_breaker("brk_post")
    answer = start(client, SAGA_TYPE)
    assert answer.status_code == 202, "the saga does all it can undo before it would wait: " + answer.text


def test_a_replayed_key_is_answered_as_always_while_the_breaker_is_open(api: ApiServer) -> None:
    client = api.new_tenant()
    first = start(client, SAGA_TYPE, key="order-1")
    assert first.status_code == 202, first.text
    open_breaker("brk_pre")

    again = start(client, SAGA_TYPE, key="order-1")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert_error(start(client, SAGA_TYPE, {"fail": "reserve"}, key="order-1"), 422, "idempotency_key_reused")
    assert_error(start(client, SAGA_TYPE, key="order-2"), 503, "dependency_unavailable")
    assert count(client) == 1


def test_healthz_lists_every_breaker_and_an_open_one_leaves_the_api_healthy(api: ApiServer) -> None:
    open_breaker("brk_pre")

    def listed(state: str) -> dict[str, Any] | None:
        health = httpx.get(f"{api.url}/healthz")
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "ok", body
        return next((b for b in body["breakers"] if b["name"] == "brk_pre" and b["state"] == state), None)

    shown = wait_until(lambda: listed("open"), timeout=10, interval=0.2, what="/healthz to show brk_pre open")
    assert shown["failures"] == 2 and shown["opens"] == 1 and not shown["probing"], shown
    assert shown["retry_after"] > 250 and shown["opened_at"] and shown["retry_at"], shown

    close_breaker("brk_pre")
    shown = wait_until(lambda: listed("closed"), timeout=10, interval=0.2, what="/healthz to show brk_pre closed")
    assert (shown["failures"], shown["opens"], shown["retry_after"]) == (0, 1, 0), shown


def test_metrics_show_each_breakers_state_and_count_admissions_refused(api: ApiServer) -> None:
    gauge = 'saga_breaker_state{dependency="brk_pre"}'
    refused = 'saga_admission_refused_total{dependency="brk_pre",type="brk_admission"}'
    before = scrape(api, refused) or 0.0
    open_breaker("brk_pre")
    client = api.new_tenant()
    assert start(client, SAGA_TYPE).status_code == 503
    assert start(client, SAGA_TYPE).status_code == 503

    wait_until(lambda: scrape(api, gauge) == 2.0, timeout=10, interval=0.2, what=f"{gauge} 2 (open)")
    wait_until(lambda: scrape(api, refused) == before + 2, timeout=10, interval=0.2, what=f"{refused} to count both refusals")
    end_cooldown("brk_pre")
    wait_until(lambda: scrape(api, gauge) == 1.0, timeout=10, interval=0.2, what=f"{gauge} 1 (half-open)")
    close_breaker("brk_pre")
    wait_until(lambda: scrape(api, gauge) == 0.0, timeout=10, interval=0.2, what=f"{gauge} 0 (closed)")
    text_ = httpx.get(f"{api.url}/metrics").text
    for family in ("saga_breaker_state", "saga_admission_refused_total", "saga_breaker_opened_total",
                   "saga_breaker_probes_total", "saga_breaker_refused_total"):
        assert f"# TYPE {family} " in text_, f"{family} is exposed"


def test_the_breakers_through_the_api_the_client_and_the_cli(api: ApiServer) -> None:
    open_breaker("brk_pre")
    _, key = apikeys.create_key(f"brk-{uuid.uuid4().hex[:8]}", scopes=("sagas:read",))

    listed = httpx.get(f"{api.url}/v1/breakers", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200, listed.text
    mine = [b for b in listed.json()["items"] if b["name"] in OURS]
    assert [(b["name"], b["state"], b["failures"], b["opens"]) for b in mine] == [("brk_pre", "open", 2, 1)]

    with SagaClient(api.url, key) as sagas:
        found = {b.name: b for b in sagas.breakers()}
    assert found["brk_pre"].state == "open" and found["brk_pre"].retry_after > 250, found

    code, out = saga_cli("breakers")
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("brk_pre "))
    assert row.split()[:4] == ["brk_pre", "open", "2", "1"], out
    assert re.search(r"\b(2[5-9][0-9]|300) s\b", row), row
    code, out = saga_cli("breakers", "--json")
    assert code == 0 and next(b for b in json.loads(out) if b["name"] == "brk_pre")["state"] == "open", out
    code, out = saga_cli("breakers", "--api", "--api-url", api.url, "--api-key", key)
    assert code == 0 and next(line for line in out.splitlines() if line.startswith("brk_pre ")).split()[1] == "open"

    close_breaker("brk_pre")
    code, out = saga_cli("breakers")
    assert next(line for line in out.splitlines() if line.startswith("brk_pre ")).split()[1:4] == ["closed", "0", "1"]


def test_the_openapi_document_says_a_start_may_be_refused_for_a_dependency(api: ApiServer) -> None:
    document = httpx.get(f"{api.url}/openapi.json").json()
    for path, operation in (("/v1/sagas", "post"), ("/v1/sagas/{saga_id}/restart", "post")):
        unavailable = document["paths"][path][operation]["responses"]["503"]
        assert "dependency_unavailable" in unavailable["description"], unavailable
        assert "Retry-After" in unavailable["headers"], unavailable
    listing = document["paths"]["/v1/breakers"]["get"]
    assert listing["x-required-scopes"] == ["sagas:read"]
    health = document["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "breakers" in document["components"]["schemas"][health["$ref"].rsplit("/", 1)[1]]["properties"]
