"""The HTTP API's contract, over HTTP against a real `python -m service api` process, PostgreSQL, Redis and workers.

The helpers at the top (`ApiServer`, `serve`, `TcpProxy`) are shared with the other `test_api_*` modules.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select, text

from api import keys as apikeys
from devstack.api_process import spawn
from saga import db
from saga.ledger import sagas
from saga.testing import Process, Stack, wait_until

FINAL = ("completed", "compensated", "paused", "failed")
NOWHERE = "00000000-0000-4000-8000-000000000000"
DEEP: list[Any] = []
for _ in range(200):
    DEEP = [DEEP]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiServer:
    """A running `python -m service api` process and its two tenants configured in SAGA_API_KEYS, alpha and beta (their
    real names get a suffix unique to the server, so that servers sharing the database share no tenant)."""

    process: Process
    url: str
    tenants: dict[str, str]
    keys: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, tenant: str | None = None, key: str | None = None, timeout: float = 30) -> httpx.Client:
        """An HTTP client of this API with the tenant's key (or `key`, or none)."""
        key = key or (self.keys[tenant] if tenant else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.clients.append(client)
        return client

    def new_tenant(self) -> httpx.Client:
        """A client for a fresh tenant whose key is stored in the database (as `python -m service keys create` does)."""
        _, key = apikeys.create_key(f"t-{uuid.uuid4().hex[:10]}")
        return self.client(key=key)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.process.stop()


def serve(stack: Stack, name: str = "api", **env: str) -> ApiServer:
    """Start `python -m service api` on a free port with the stack's settings, two configured tenants, and `env` on top."""
    suffix = uuid.uuid4().hex[:8]
    tenants = {"alpha": f"alpha-{suffix}", "beta": f"beta-{suffix}"}
    keys = {"alpha": f"alpha-{uuid.uuid4().hex}", "beta": f"beta-{uuid.uuid4().hex}"}
    port = free_port()
    settings = {**stack.env, "SAGA_API_KEYS": ",".join(f"{tenants[t]}:{k}" for t, k in keys.items()), **env}
    process = spawn(name, settings, stack.data_dir, port=port)
    return ApiServer(process, f"http://127.0.0.1:{port}", tenants, keys)


class TcpProxy:
    """A TCP relay from a local port to `upstream`. The first `lose_answers` connections carry the request
    through but lose the answer (the connection is reset instead), as a flaky network would."""

    def __init__(self, port: int, upstream: tuple[str, int], lose_answers: int = 0) -> None:
        self.port = port
        self.upstream = upstream
        self.lose_answers = lose_answers
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def start(self) -> TcpProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        for s in [self._listener, *self._sockets]:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            lose = self.lose_answers > 0
            self.lose_answers -= lose
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, lose), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, lose: bool) -> None:
        try:
            while data := source.recv(65536):
                if lose:  # the answer arrived: drop the client's connection instead of passing it on
                    target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    target.shutdown(socket.SHUT_RDWR)
                    break
                target.sendall(data)
        except OSError:
            pass
        for s in (source, target):
            try:
                s.close()
            except OSError:
                pass


def start(client: httpx.Client, saga_type: str = "probe", input: dict[str, Any] | None = None,
          key: str | None = None) -> httpx.Response:
    return client.post("/v1/sagas", json={"type": saga_type, "input": input or {}},
                       headers={"Idempotency-Key": key or str(uuid.uuid4())})


def settle(client: httpx.Client, saga_id: str, timeout: float = 60) -> dict[str, Any]:
    """The saga once it is final, waiting with the API's long poll."""
    def probe() -> dict[str, Any] | None:
        body = client.get(f"/v1/sagas/{saga_id}", params={"wait": 5}).json()
        return body if body["status"] in FINAL else None

    return wait_until(probe, timeout=timeout, interval=0, what=f"saga {saga_id} to end")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return body["error"]


def switch(name: str, on: bool) -> None:
    """Probe steps listed under this switch fail (transiently) while it is on."""
    with db.transaction() as conn:
        sql = "INSERT INTO probe_switches VALUES (:n) ON CONFLICT DO NOTHING" if on else \
            "DELETE FROM probe_switches WHERE name = :n"
        conn.execute(text(sql), {"n": name})


def sagas_of(tenant_client: httpx.Client) -> int:
    return len(tenant_client.get("/v1/sagas", params={"limit": 200}).json()["items"])


# Starting --------------------------------------------------------------------------------------------


def test_start_is_202_then_200_for_the_same_key_and_body_then_422_for_another_body(api: ApiServer) -> None:
    client = api.new_tenant()
    key = str(uuid.uuid4())
    first = start(client, "demo", {"customer": "ann", "amount_cents": 1200}, key=key)
    assert first.status_code == 202, first.text
    saga = first.json()
    assert first.headers["Location"] == f"/v1/sagas/{saga['id']}"
    assert {"id", "type", "status", "input", "steps", "progress", "created_at", "updated_at"} <= set(saga)
    assert saga["type"] == "demo" and saga["status"] == "pending"
    assert saga["input"] == {"customer": "ann", "amount_cents": 1200, "card": "ok", "step_seconds": 1.0}
    assert saga["progress"] == {"done": 0, "total": 4}
    assert [s["name"] for s in saga["steps"]] == ["reserve_stock", "charge_card", "ship", "notify"]
    step_fields = {"name", "kind", "status", "attempts", "result", "error", "started_at", "finished_at"}
    assert step_fields <= set(saga["steps"][0])

    replay = start(client, "demo", {"customer": "ann", "amount_cents": 1200}, key=key)
    assert replay.status_code == 200 and replay.json()["id"] == saga["id"]

    other = start(client, "demo", {"customer": "ann", "amount_cents": 999}, key=key)
    error = assert_error(other, 422, "idempotency_key_reused")
    assert error["details"] == {"saga_id": saga["id"]}
    assert sagas_of(client) == 1


def test_a_missing_idempotency_key_is_a_400_that_says_so(api: ApiServer) -> None:
    client = api.new_tenant()
    for headers in ({}, {"Idempotency-Key": ""}):
        response = client.post("/v1/sagas", json={"type": "probe", "input": {}}, headers=headers)
        error = assert_error(response, 400, "idempotency_key_required")
        assert "Idempotency-Key" in error["message"]
    assert sagas_of(client) == 0


def test_invalid_input_is_a_422_naming_every_field_and_writes_nothing(api: ApiServer) -> None:
    client = api.new_tenant()
    with db.transaction() as conn:
        before = conn.execute(select(func.count()).select_from(sagas)).scalar()
    response = start(client, "demo", {"customer": "", "amount_cents": -5, "card": "gold"})
    error = assert_error(response, 422, "invalid_input")
    fields = sorted(p["field"] for p in error["details"])
    assert fields == ["input.amount_cents", "input.card", "input.customer"]
    with db.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(sagas)).scalar() == before


def test_an_unknown_saga_type_is_a_404(api: ApiServer) -> None:
    client = api.new_tenant()
    error = assert_error(start(client, "no_such_type"), 404, "unknown_saga_type")
    assert "no_such_type" in error["message"]
    assert sagas_of(client) == 0


@pytest.mark.parametrize("body, field", [
    ({"input": {}}, "type"),
    ({"type": "probe"}, "input"),
    ({"type": "probe", "input": []}, "input"),
    ({"type": "probe", "input": {}, "extra": 1}, "extra"),
    ("not json at all", "body"),
    (b'{"type": "probe", "input": {"fail": "\xff\xfe"}}', "body"),  # not UTF-8
    (b'{"type": "probe\xc3", "input": {}}', "body"),  # cut in the middle of a character
    ({"type": "probe", "input": {"fail": "a\u0000"}}, "input"),  # PostgreSQL cannot store NUL
    ({"type": "probe", "input": {"hold": {"\ud800": 1}}}, "input"),  # nor half a surrogate pair
    ({"type": "probe", "input": {"hold": {"a": float("nan")}}}, "input"),  # nor NaN in jsonb
    ({"type": "probe", "input": {"deep": DEEP}}, "input"),
])
def test_a_malformed_request_body_is_a_422_naming_the_field(api: ApiServer, body: Any, field: str) -> None:
    client = api.new_tenant()
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    response = client.post("/v1/sagas", content=content,
                           headers={"Idempotency-Key": "k", "Content-Type": "application/json"})
    error = assert_error(response, 422, "invalid_request")
    assert any(p["field"].split(".")[0] == field for p in error["details"]), error


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(api: ApiServer) -> None:
    client = api.new_tenant()
    big = {"type": "demo", "input": {"customer": "c", "amount_cents": 1, "pad": "x" * (3 * 1024 * 1024)}}
    response = client.post("/v1/sagas", json=big, headers={"Idempotency-Key": "k"})
    assert_error(response, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"type": "demo", "input": {"pad": "'
        for _ in range(48):
            yield b"x" * 65536
        yield b'"}}'

    response = client.post("/v1/sagas", content=chunks(), headers={"Idempotency-Key": "k",
                                                                   "Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    # Under the limit (a job posting's logo is up to 1 MiB, base64): accepted.
    fits = {"type": "demo", "input": {"customer": "c", "amount_cents": 1, "pad": "x" * (1536 * 1024)}}
    assert client.post("/v1/sagas", json=fits, headers={"Idempotency-Key": "k"}).status_code == 202
    assert sagas_of(client) == 1


def test_fifty_concurrent_starts_with_one_key_make_one_saga(api: ApiServer) -> None:
    key = str(uuid.uuid4())
    body = {"type": "demo", "input": {"customer": "many", "amount_cents": 50, "step_seconds": 0}}
    barrier = threading.Barrier(50)
    client = api.client("alpha")  # up to 100 connections: one per request here

    def post(_: int) -> tuple[int, str]:
        barrier.wait()
        response = client.post("/v1/sagas", json=body, headers={"Idempotency-Key": key})
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(post, range(50)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 49 + [202], statuses
    assert len({saga_id for _, saga_id in answers}) == 1
    with db.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(sagas).where(
            sagas.c.tenant == api.tenants["alpha"], sagas.c.idempotency_key == key)).scalar() == 1


# Reading ---------------------------------------------------------------------------------------------


def test_a_saga_shows_each_step_and_its_progress(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe", {"fail": "c"}).json()["id"]
    saga = settle(client, saga_id)
    assert saga["status"] == "compensated"
    assert [(s["name"], s["kind"], s["status"]) for s in saga["steps"]] == [
        ("a", "compensable", "compensated"), ("b", "compensable", "compensated"),
        ("c", "pivot", "failed"), ("d", "retriable", "skipped")]
    assert saga["progress"] == {"done": 0, "total": 4}
    assert "c refused" in saga["steps"][2]["error"]
    assert saga["steps"][0]["result"]["step"] == "a" and saga["steps"][0]["attempts"] == 1

    done = settle(client, start(client, "probe").json()["id"])
    assert done["status"] == "completed" and done["progress"] == {"done": 4, "total": 4}
    assert all(s["started_at"] and s["finished_at"] for s in done["steps"])


def test_listing_filters_by_status_and_type_newest_first_with_a_cursor(api: ApiServer) -> None:
    client = api.new_tenant()
    made = [start(client, "probe_idle").json()["id"] for _ in range(5)]
    made.append(start(client, "demo", {"customer": "c", "amount_cents": 1}).json()["id"])
    newest_first = list(reversed(made))

    pages, cursor = [], None
    while True:
        page = client.get("/v1/sagas", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([s["id"] for s in page["items"]])
        if not (cursor := page["next_cursor"]):
            break
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:6]]

    # Only the probe_idle sagas are sure to stay pending: a worker left by another test may run the demo one.
    idle = client.get("/v1/sagas", params={"type": "probe_idle"}).json()["items"]
    assert [s["id"] for s in idle] == newest_first[1:]
    demo = client.get("/v1/sagas", params={"type": "demo"}).json()["items"]
    assert [s["id"] for s in demo] == [made[-1]]
    pending = client.get("/v1/sagas", params={"status": "pending", "type": "probe_idle"}).json()["items"]
    assert [s["id"] for s in pending] == newest_first[1:]
    none = client.get("/v1/sagas", params={"status": "completed", "type": "probe_idle"}).json()
    assert none == {"items": [], "next_cursor": None}
    assert_error(client.get("/v1/sagas", params={"status": "done"}), 422, "invalid_request")
    assert_error(client.get("/v1/sagas", params={"cursor": "bm9wZQ"}), 422, "invalid_request")
    assert_error(client.get("/v1/sagas", params={"limit": 0}), 422, "invalid_request")


def test_events_are_the_audit_log_oldest_first(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe").json()["id"]
    settle(client, saga_id)
    events = client.get(f"/v1/sagas/{saga_id}/events").json()
    kinds = [e["kind"] for e in events["items"]]
    assert kinds[0] == "saga_accepted" and kinds[-1] == "saga_completed"
    assert [e["id"] for e in events["items"]] == sorted(e["id"] for e in events["items"])
    assert events["next_after"] is None

    first = client.get(f"/v1/sagas/{saga_id}/events", params={"limit": 3}).json()
    rest = client.get(f"/v1/sagas/{saga_id}/events", params={"after": first["next_after"]}).json()
    assert [e["id"] for e in first["items"] + rest["items"]] == [e["id"] for e in events["items"]]


def test_a_long_poll_answers_as_soon_as_the_saga_changes(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    created = start(client, "probe", {"hold_before": {"b": 1.5}})
    path = f"/v1/sagas/{created.json()['id']}"
    wait_until(lambda: client.get(path).json()["steps"][1]["status"] == "running", what="step b to run")
    now = client.get(path)
    began = time.monotonic()
    changed = client.get(path, params={"wait": 20}, headers={"If-None-Match": now.headers["ETag"]})
    took = time.monotonic() - began
    assert changed.status_code == 200
    assert changed.headers["ETag"] != now.headers["ETag"]
    assert changed.json()["steps"][1]["status"] == "succeeded"
    assert 0.5 < took < 10, took

    # A version the client does not have yet: answered at once, with the version there is.
    began = time.monotonic()
    current = client.get(path, params={"wait": 20}, headers={"If-None-Match": '"stale"'})
    assert time.monotonic() - began < 1
    assert current.status_code == 200 and current.json()["id"] == created.json()["id"]
    assert current.headers["ETag"] != '"stale"' and current.json()["steps"][1]["status"] == "succeeded"

    final = settle(client, created.json()["id"])
    began = time.monotonic()
    settled = client.get(path, params={"wait": 20})
    assert time.monotonic() - began < 1, "a completed saga cannot change: no reason to wait"
    assert settled.status_code == 200 and settled.json() == final
    assert settled.json()["status"] == "completed" and settled.json()["progress"] == {"done": 4, "total": 4}


def test_a_long_poll_without_change_answers_after_the_wait(api: ApiServer) -> None:
    client = api.new_tenant()
    path = f"/v1/sagas/{start(client, 'probe_idle').json()['id']}"
    before = client.get(path)
    began = time.monotonic()
    same = client.get(path, params={"wait": 1.5})
    took = time.monotonic() - began
    assert 1.4 < took < 4, took
    # The answer after the wait is the saga unchanged: the same version, the same body.
    assert same.status_code == 200 and same.json()["status"] == "pending"
    assert same.headers["ETag"] == before.headers["ETag"] and same.json() == before.json()


def test_the_event_stream_sends_every_change_until_the_saga_ends(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "demo", {"customer": "c", "amount_cents": 1, "step_seconds": 0.3}).json()["id"]
    seen: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/sagas/{saga_id}/stream", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[len("data: "):]))
    assert seen[-1]["status"] == "completed"
    done = [s["progress"]["done"] for s in seen]
    assert done == sorted(done) and done[-1] == 4
    assert len(seen) >= 4, "each step's progress is sent"


# Operator actions ------------------------------------------------------------------------------------


def test_cancel_compensates_and_is_safe_to_repeat_then_refused_once_past_the_pivot(
    api: ApiServer, workers: Stack,
) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe", {"hold_before": {"b": 2}}).json()["id"]
    wait_until(lambda: client.get(f"/v1/sagas/{saga_id}").json()["steps"][1]["status"] == "running",
               what="step b to run")
    first = client.post(f"/v1/sagas/{saga_id}/cancel")
    assert first.status_code == 200 and first.json()["cancel_requested"] is True
    again = client.post(f"/v1/sagas/{saga_id}/cancel")
    assert again.status_code == 200 and again.json()["cancel_requested"] is True
    assert settle(client, saga_id)["status"] == "compensated"

    done = settle(client, start(client, "probe").json()["id"])
    refused = assert_error(client.post(f"/v1/sagas/{done['id']}/cancel"), 409, "action_not_allowed")
    assert "completed" in refused["message"] and refused["details"] == {"status": "completed"}


def test_resume_continues_a_paused_saga_and_is_refused_otherwise(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    name = f"d-{uuid.uuid4()}"
    switch(name, True)
    saga_id = start(client, "probe", {"switch": {"d": name}}).json()["id"]
    assert settle(client, saga_id)["status"] == "paused"
    assert_error(client.post(f"/v1/sagas/{saga_id}/compensate"), 409, "action_not_allowed")

    switch(name, False)
    resumed = client.post(f"/v1/sagas/{saga_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert settle(client, saga_id)["status"] == "completed"
    refused = assert_error(client.post(f"/v1/sagas/{saga_id}/resume"), 409, "action_not_allowed")
    assert "only a paused saga" in refused["message"]


def test_compensate_reruns_a_failed_saga_and_is_refused_otherwise(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    name = f"undo-b-{uuid.uuid4()}"
    switch(name, True)
    saga_id = start(client, "probe", {"fail": "c", "switch": {"undo_b": name}}).json()["id"]
    failed = settle(client, saga_id)
    assert failed["status"] == "failed" and "compensation of b gave up" in failed["error"]
    assert_error(client.post(f"/v1/sagas/{saga_id}/resume"), 409, "action_not_allowed")

    switch(name, False)
    rerun = client.post(f"/v1/sagas/{saga_id}/compensate")
    assert rerun.status_code == 200 and rerun.json()["status"] in ("compensating", "compensated")
    assert settle(client, saga_id)["status"] == "compensated"
    refused = assert_error(client.post(f"/v1/sagas/{saga_id}/compensate"), 409, "action_not_allowed")
    assert "only a failed saga" in refused["message"]


# Authentication and tenants --------------------------------------------------------------------------


def test_requests_without_a_valid_key_are_401(api: ApiServer) -> None:
    record, key = apikeys.create_key("revoked-tenant")
    apikeys.revoke_key(record.id)
    # The API reads the stored keys once a second: one it read before the revocation is refused from the next read.
    wait_until(lambda: api.client(key=key).get("/v1/sagas").status_code == 401, timeout=5,
               what="the revocation to be read")
    for client in (api.client(), api.client(key="not-a-key"), api.client(key=key)):
        for method, path in (("GET", "/v1/sagas"), ("GET", f"/v1/sagas/{NOWHERE}"), ("POST", "/v1/sagas")):
            response = client.request(method, path, json={"type": "probe", "input": {}},
                                      headers={"Idempotency-Key": "k"})
            assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"
    basic = httpx.get(f"{api.url}/v1/sagas", headers={"Authorization": f"Basic {api.keys['alpha']}"})
    assert_error(basic, 401, "unauthorized")
    assert api.client("alpha").get("/v1/sagas").status_code == 200, "a key from SAGA_API_KEYS"
    assert api.new_tenant().get("/v1/sagas").status_code == 200, "a key stored in the database"


@pytest.mark.parametrize("method, route", [
    ("GET", "/v1/sagas/{id}"), ("GET", "/v1/sagas/{id}?wait=1"), ("GET", "/v1/sagas/{id}/events"),
    ("GET", "/v1/sagas/{id}/stream"), ("POST", "/v1/sagas/{id}/cancel"), ("POST", "/v1/sagas/{id}/resume"),
    ("POST", "/v1/sagas/{id}/compensate"), ("POST", "/v1/sagas/{id}/restart"), ("POST", "/v1/sagas/{id}/input"),
    ("POST", "/v1/sagas/{id}/rewind"),
])
def test_another_tenants_saga_is_a_404_on_every_route(api: ApiServer, method: str, route: str) -> None:
    owner, other = api.new_tenant(), api.new_tenant()
    saga_id = start(owner, "probe_idle").json()["id"]
    # A body and a key where the route takes them, so each gets past validation to the saga lookup.
    bodies = {"/input": {"input": {"n": 1}}, "/rewind": {"to": "a"}, "/restart": {"input": {"n": 1}}}
    body = next((b for suffix, b in bodies.items() if route.endswith(suffix)), None)
    sent: dict[str, Any] = {"json": body, "headers": {"Idempotency-Key": "k"}} if body else {}
    theirs = other.request(method, route.format(id=saga_id), **sent)
    missing = other.request(method, route.format(id=NOWHERE), **sent)
    assert_error(theirs, 404, "saga_not_found")
    assert_error(missing, 404, "saga_not_found")
    assert theirs.json()["error"]["message"].replace(saga_id, NOWHERE) == missing.json()["error"]["message"]
    if route.endswith("/stream"):
        # The owner's stream would follow the saga for as long as it runs: its first event is enough.
        with owner.stream(method, route.format(id=saga_id), timeout=30) as stream:
            assert stream.status_code == 200, stream.read()
            first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert json.loads(first[len("data: "):])["id"] == saga_id
    else:
        assert owner.request(method, route.format(id=saga_id), **sent).status_code in (200, 409)


def test_listings_and_idempotency_keys_are_per_tenant(api: ApiServer) -> None:
    owner, other = api.client("alpha"), api.client("beta")
    key = str(uuid.uuid4())
    mine = start(owner, "probe_idle", key=key).json()["id"]
    theirs = start(other, "probe_idle", {"hold": {"a": 1}}, key=key)
    assert theirs.status_code == 202 and theirs.json()["id"] != mine, "the same key elsewhere: another saga"
    assert mine not in [s["id"] for s in other.get("/v1/sagas", params={"limit": 200}).json()["items"]]
    assert mine in [s["id"] for s in owner.get("/v1/sagas", params={"limit": 200}).json()["items"]]


# The tenant at a glance ------------------------------------------------------------------------------


def test_stats_count_by_type_and_status_list_who_needs_an_operator_and_chart_the_last_hour(
    api: ApiServer, workers: Stack,
) -> None:
    client, other = api.new_tenant(), api.new_tenant()
    stuck, undo_stuck = f"d-{uuid.uuid4()}", f"undo-b-{uuid.uuid4()}"
    switch(stuck, True)
    switch(undo_stuck, True)
    try:
        done = [start(client, "probe").json()["id"] for _ in range(2)]
        compensated = start(client, "probe", {"fail": "c"}).json()["id"]
        paused = start(client, "probe", {"switch": {"d": stuck}}).json()["id"]
        failed = start(client, "probe", {"fail": "c", "switch": {"undo_b": undo_stuck}}).json()["id"]
        start(client, "probe_idle")  # no worker reads its queue: it stays pending
        ended = {saga_id: settle(client, saga_id)["status"] for saga_id in [*done, compensated, paused, failed]}
    finally:
        switch(stuck, False)
        switch(undo_stuck, False)
    assert list(ended.values()) == ["completed", "completed", "compensated", "paused", "failed"]
    # Two waits for input: one whose first half is soon over, one far from it.
    soon = start(client, "probe", {"ask": {"c": 6}}).json()["id"]
    later = start(client, "probe", {"ask": {"c": 600}}).json()["id"]
    for saga_id in (soon, later):
        wait_until(lambda i=saga_id: client.get(f"/v1/sagas/{i}").json()["status"] == "awaiting_input", timeout=30,
                   what=f"saga {saga_id} to await input")

    def listed() -> dict[str, Any] | None:
        answer = client.get("/v1/stats")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body if soon in [n["id"] for n in body["needs_operator"]] else None

    stats = wait_until(listed, timeout=10, interval=0.2, what="the wait for input past its half to be listed")
    assert stats["needs_operator_total"] == 3
    assert [(n["id"], n["status"]) for n in stats["needs_operator"]] == [
        (failed, "failed"), (soon, "awaiting_input"), (paused, "paused")], "failed, then waits, then paused"
    waiting = stats["needs_operator"][1]
    now = datetime.fromisoformat(stats["now"])
    assert waiting["reason"] == "c needs an answer"
    assert datetime.fromisoformat(waiting["since"]) < now < datetime.fromisoformat(waiting["until"])
    assert "compensation of b gave up" in stats["needs_operator"][0]["reason"]
    counts = {(c["type"], c["status"]): c["count"] for c in stats["counts"]}
    assert counts == {("probe", "completed"): 2, ("probe", "compensated"): 1, ("probe", "paused"): 1,
                      ("probe", "failed"): 1, ("probe", "awaiting_input"): 2, ("probe_idle", "pending"): 1}
    hour = stats["last_hour"]
    assert len(hour) == 60 and hour == sorted(hour, key=lambda m: m["at"])
    assert datetime.fromisoformat(hour[-1]["at"]) <= now < datetime.fromisoformat(hour[-1]["at"]) + timedelta(minutes=1)
    totals = {k: sum(m[k] for m in hour) for k in ("started", "completed", "compensated", "paused", "failed")}
    assert totals == {"started": 8, "completed": 2, "compensated": 1, "paused": 1, "failed": 1}, totals
    assert later not in [n["id"] for n in stats["needs_operator"]], "a wait far from its half is not listed"

    # Another tenant sees none of it; without a key there is nothing to see.
    theirs = other.get("/v1/stats").json()
    assert theirs["counts"] == [] and theirs["needs_operator"] == [] and theirs["needs_operator_total"] == 0
    assert sum(m["started"] for m in theirs["last_hour"]) == 0
    assert_error(api.client().get("/v1/stats"), 401, "unauthorized")


# Errors, health and metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nowhere", 404, "not_found"),
    ("DELETE", "/v1/sagas", 405, "method_not_allowed"),
    ("GET", "/v1/sagas/not-a-uuid", 422, "invalid_request"),
    ("GET", "/v1/sagas/{id}?wait=61", 422, "invalid_request"),
    ("GET", "/v1/sagas/{id}/events?after=-1", 422, "invalid_request"),
    ("GET", "/v1/sagas?type=%00", 422, "invalid_request"),
])
def test_every_error_has_the_one_shape(api: ApiServer, method: str, path: str, status: int,
                                      code: str) -> None:
    response = api.client("alpha").request(method, path.format(id=NOWHERE))
    assert_error(response, status, code)


def test_health_and_metrics(api: ApiServer) -> None:
    health = httpx.get(f"{api.url}/healthz")
    assert health.status_code == 200
    body = health.json()
    assert {k: v for k, v in body.items() if k != "breakers"} == {
        "status": "ok", "database": {"ok": True, "error": None}, "broker": {"ok": True, "error": None}}
    assert isinstance(body["breakers"], list), body  # test_api_breakers has what they hold
    start(api.client("alpha"), "probe_idle")
    metrics = httpx.get(f"{api.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'saga_api_requests_total{method="POST",route="/v1/sagas",status="202"}' in metrics.text
    assert 'saga_api_sagas_started_total{outcome="created",type="probe_idle"}' in metrics.text
    assert 'saga_api_request_seconds_count{method="POST",route="/v1/sagas"}' in metrics.text
    docs = httpx.get(f"{api.url}/openapi.json").json()
    paths = {"/v1/sagas", "/v1/sagas/{saga_id}", "/v1/sagas/{saga_id}/events", "/v1/sagas/{saga_id}/stream",
             "/v1/sagas/{saga_id}/cancel", "/v1/sagas/{saga_id}/resume", "/v1/sagas/{saga_id}/compensate",
             "/v1/sagas/{saga_id}/restart", "/v1/sagas/{saga_id}/input", "/v1/sagas/{saga_id}/rewind", "/v1/stats",
             "/v1/breakers",
             "/v1/sagas/{saga_id}/replay-webhooks", "/v1/webhooks", "/v1/webhooks/{endpoint_id}",
             "/v1/webhooks/{endpoint_id}/rotate-secret", "/v1/webhooks/{endpoint_id}/disable",
             "/v1/webhooks/{endpoint_id}/enable", "/v1/webhooks/{endpoint_id}/replay-failed",
             "/healthz", "/metrics"}
    assert set(docs["paths"]) == paths


@pytest.mark.parametrize("page, needs", [
    ("/docs", {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/openapi.json"}),
    ("/redoc", {"/docs-assets/redoc.standalone.js", "/openapi.json"}),
])
def test_docs_need_no_internet(api: ApiServer, page: str, needs: set[str]) -> None:
    """The docs pages reference only the API's own scripts, styles and document, and each of them answers."""
    answer = httpx.get(f"{api.url}{page}", timeout=10)
    assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
    assert re.findall(r"https?://", answer.text) == [], "the page reaches for another host"
    refs = set(re.findall(r"""(?:src=|href=|url:|spec-url=)\s*["']([^"']+)["']""", answer.text))
    assert needs <= refs, refs
    for ref in refs:
        asset = httpx.get(api.url + ref, timeout=10)
        assert asset.status_code == 200 and len(asset.content) > 100, ref


@pytest.mark.parametrize("bad", ["0.5", "yesterday", "2026-12-01T09:00:00"])
def test_the_listing_refuses_a_time_that_is_not_iso_with_a_zone(api: ApiServer, bad: str) -> None:
    with api.client("alpha") as client:
        answer = client.get("/v1/sagas", params={"created_after": bad})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request", answer.text
    assert "created_after" in answer.json()["error"]["message"]


def test_the_listing_filters_by_creation_time_and_idempotency_key(api: ApiServer) -> None:
    with api.client("alpha") as client:
        key = f"filter-{uuid.uuid4()}"
        made = client.post("/v1/sagas", json={"type": "demo", "input": {"customer": "f", "amount_cents": 1}},
                           headers={"Idempotency-Key": key}).json()
        by_key = client.get("/v1/sagas", params={"idempotency_key": key}).json()["items"]
        assert [s["id"] for s in by_key] == [made["id"]]
        later = client.get("/v1/sagas", params={"created_after": "2999-01-01T00:00:00Z"}).json()["items"]
        assert later == []
        since = client.get("/v1/sagas", params={"created_after": made["created_at"], "limit": 200}).json()["items"]
        assert made["id"] in [s["id"] for s in since]


HOSTILE = ["x' OR '1'='1", "'; DROP TABLE sagas; --", '<script>window.pwned=1</script>', "%' OR 1=1 --"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_sql_and_html_in_keys_and_filters_are_only_text(api: ApiServer, hostile: str) -> None:
    client = api.new_tenant()
    made = client.post("/v1/sagas", json={"type": "demo", "input": {"customer": hostile, "amount_cents": 1,
                                                                "step_seconds": 0}}, headers={"Idempotency-Key": hostile})
    assert made.status_code == 202, made.text
    other = start(client, "demo", {"customer": "plain", "amount_cents": 1, "step_seconds": 0})
    assert other.status_code == 202
    by_key = client.get("/v1/sagas", params={"idempotency_key": hostile, "include_input": "true"}).json()["items"]
    assert [(s["id"], s["input"]["customer"]) for s in by_key] == [(made.json()["id"], hostile)]
    for name in ("type", "idempotency_key"):
        assert client.get("/v1/sagas", params={name: hostile + "-"}).json()["items"] == [], name
    assert_error(client.get("/v1/sagas", params={"status": hostile}), 422, "invalid_request")
    not_an_id = client.get(f"/v1/sagas/{quote(hostile, safe='')}")  # a "/" in it leaves no route to match
    assert not_an_id.status_code in (404, 422), not_an_id.text
    assert_error(not_an_id, not_an_id.status_code, {404: "not_found", 422: "invalid_request"}[not_an_id.status_code])
    assert sagas_of(client) == 2
