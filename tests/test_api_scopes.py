"""Scoped API keys: each route needs one scope of the caller's key (`sagas:read`, `sagas:start`, `sagas:operate`),
answers 403 naming it to a key without it, before it looks at any saga, and works with it; keys from before scopes
keep every one; `keys create --scope` refuses a name it does not know; the OpenAPI document names every operation's
scope. A real `python -m service api` process, the service's command, the client and the `saga` command."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

import migrations
from api import keys as apikeys
from devstack.servers import Services
from saga import db
from saga import migrate as ledger
from saga.client import MissingScope, SagaClient
from saga.testing import Stack, create_database, drop_database, with_database
from saga.testing.databases import libpq_url
from tests.test_api import NOWHERE, ApiServer
from tests.test_api_client import saga_cli, service_cli
from tests.test_audit import ANSWER, held
from webhooks import endpoints


@dataclass(frozen=True)
class Route:
    """A `/v1` operation: the scope it needs, and a request it takes when the caller has that scope."""

    scope: str
    method: str
    path: str  # as the OpenAPI document names it
    status: str | None = None  # the status the saga needs (`held`), if the route acts on one
    body: dict[str, Any] | None = None
    keyed: bool = False  # sends an Idempotency-Key
    works: int = 200


ROUTES = [
    Route("sagas:start", "POST", "/v1/sagas", body={"type": "probe_idle", "input": {}}, keyed=True, works=202),
    Route("sagas:read", "GET", "/v1/sagas"),
    Route("sagas:read", "GET", "/v1/sagas/{saga_id}", "pending"),
    Route("sagas:read", "GET", "/v1/sagas/{saga_id}/events", "pending"),
    Route("sagas:read", "GET", "/v1/sagas/{saga_id}/stream", "completed"),
    Route("sagas:read", "GET", "/v1/stats"),
    Route("sagas:read", "GET", "/v1/breakers"),
    Route("sagas:operate", "POST", "/v1/sagas/{saga_id}/cancel", "pending"),
    Route("sagas:operate", "POST", "/v1/sagas/{saga_id}/resume", "paused"),
    Route("sagas:operate", "POST", "/v1/sagas/{saga_id}/compensate", "failed"),
    Route("sagas:operate", "POST", "/v1/sagas/{saga_id}/input", "awaiting_input", {"input": ANSWER}, keyed=True),
    Route("sagas:operate", "POST", "/v1/sagas/{saga_id}/rewind", "awaiting_input", {"to": "a"}, keyed=True),
    Route("sagas:operate", "POST", "/v1/sagas/{saga_id}/restart", "compensated", works=202),
    Route("webhooks:manage", "POST", "/v1/webhooks", body={"url": "http://127.0.0.1:9/hooks"}, works=201),
    Route("webhooks:manage", "GET", "/v1/webhooks"),
    Route("webhooks:manage", "GET", "/v1/webhooks/{endpoint_id}"),
    Route("webhooks:manage", "POST", "/v1/webhooks/{endpoint_id}/rotate-secret"),
    Route("webhooks:manage", "POST", "/v1/webhooks/{endpoint_id}/disable"),
    Route("webhooks:manage", "POST", "/v1/webhooks/{endpoint_id}/enable"),
    Route("webhooks:manage", "POST", "/v1/webhooks/{endpoint_id}/replay-failed"),
    Route("webhooks:manage", "DELETE", "/v1/webhooks/{endpoint_id}", works=204),
    Route("webhooks:manage", "POST", "/v1/sagas/{saga_id}/replay-webhooks", "completed"),
]


def tenant_key(*scopes: str, tenant: str | None = None) -> tuple[str, str]:
    """A stored key with `scopes` of `tenant` (by default a new one), and the tenant."""
    tenant = tenant or f"sc-{uuid.uuid4().hex[:10]}"
    _, key = apikeys.create_key(tenant, scopes=scopes)
    return tenant, key


def send(api: ApiServer, key: str, route: Route, saga_id: UUID | str | None) -> httpx.Response:
    """The route's request as `key`, on `saga_id` (a webhook endpoint's id for a route on one; a stream is read up
    to its first event)."""
    client = api.client(key=key)
    path = route.path.format(saga_id=saga_id, endpoint_id=saga_id)
    headers = {"Idempotency-Key": str(uuid.uuid4())} if route.keyed else None
    with client.stream(route.method, path, json=route.body, headers=headers) as answer:
        if answer.status_code == 200 and path.endswith("/stream"):
            next(answer.iter_lines())
        else:
            answer.read()
    return answer


def saga_state(saga_id: UUID) -> tuple[str, int]:
    """The saga's status and how many events it has: what an action that was refused must leave as it was."""
    with db.transaction() as conn:
        row = conn.execute(text("SELECT status, (SELECT count(*) FROM saga_events WHERE saga_id = :id) AS events "
                                "FROM sagas WHERE id = :id"), {"id": saga_id}).mappings().one()
    return row["status"], row["events"]


def endpoint_ids(tenant: str) -> list[UUID]:
    return [UUID(e["id"]) for e in endpoints.list_for(tenant)]


def sagas_of(tenant: str) -> int:
    with db.transaction() as conn:
        return conn.execute(text("SELECT count(*) FROM sagas WHERE tenant = :t"), {"t": tenant}).scalar_one()


def assert_refused(answer: httpx.Response, scope: str) -> None:
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["details"]) == ("insufficient_scope", {"scope": scope}), error
    assert f"lacks the scope {scope}" in error["message"], error
    assert answer.headers["WWW-Authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_each_route_answers_403_naming_its_scope_to_a_key_without_it_and_works_with_it(
        api: ApiServer, stack: Stack, route: Route) -> None:
    tenant, without = tenant_key(*(s for s in apikeys.SCOPES if s != route.scope))
    _, only = tenant_key(route.scope, tenant=tenant)
    mine = held(tenant, route.status) if route.status else None
    foreign = held(f"sc-{uuid.uuid4().hex[:10]}", route.status) if route.status else None
    if "{endpoint_id}" in route.path:  # a route on one of the tenant's webhook endpoints
        mine, foreign = (UUID(endpoints.create(t, "http://127.0.0.1:9/hooks")[0]["id"])
                         for t in (tenant, f"sc-{uuid.uuid4().hex[:10]}"))
    before = saga_state(mine) if route.status else None

    # Its own saga, another tenant's, none at all: the same 403, so it tells nothing about the sagas there are.
    for saga_id in (mine, foreign, NOWHERE) if mine else (None,):
        assert_refused(send(api, without, route, saga_id), route.scope)
    if mine and route.status:
        assert saga_state(mine) == before, "a refused request changed nothing"
    assert sagas_of(tenant) == (1 if route.status else 0), "a refused start made no saga"
    assert endpoint_ids(tenant) == ([mine] if "{endpoint_id}" in route.path else []), "a refused request made or " \
        "deleted no webhook endpoint"

    answer = send(api, only, route, mine)
    assert answer.status_code == route.works, answer.text
    if foreign:
        assert send(api, only, route, foreign).status_code == 404, "with the scope, another tenant's saga is a 404"


def test_a_read_only_key_lists_reads_and_streams_but_cannot_start_or_cancel(api: ApiServer, stack: Stack) -> None:
    tenant, key = tenant_key("sagas:read")
    saga_id = held(tenant, "pending")
    client = api.client(key=key)
    assert [s["id"] for s in client.get("/v1/sagas").json()["items"]] == [str(saga_id)]
    assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "pending"
    assert client.get("/v1/stats").status_code == 200
    with client.stream("GET", f"/v1/sagas/{saga_id}/stream") as stream:
        assert stream.status_code == 200
        assert next(stream.iter_lines()) == "event: saga"

    assert_refused(client.post("/v1/sagas", json={"type": "probe_idle", "input": {}},
                               headers={"Idempotency-Key": "read-only"}), "sagas:start")
    assert_refused(client.post(f"/v1/sagas/{saga_id}/cancel"), "sagas:operate")
    assert saga_state(saga_id)[0] == "pending" and sagas_of(tenant) == 1

    with SagaClient(api.url, key) as sagas, pytest.raises(MissingScope, match="lacks the scope sagas:operate") as e:
        sagas.cancel(saga_id)
    assert (e.value.status, e.value.scope) == (403, "sagas:operate")
    code, out = saga_cli("cancel", str(saga_id), "--api", "--api-url", api.url, "--api-key", key)
    assert code == 1 and "error (insufficient_scope): this API key lacks the scope sagas:operate" in out, out
    assert saga_state(saga_id)[0] == "pending"


def test_a_key_stored_without_scopes_by_an_earlier_release_keeps_every_one(api: ApiServer, stack: Stack) -> None:
    tenant, key = f"old-{uuid.uuid4().hex[:8]}", f"saga_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"
    with db.transaction() as conn:  # the row an earlier release writes, naming no scopes
        conn.execute(text("INSERT INTO api_keys (tenant, name, key_hash) VALUES (:t, 'old', :h)"),
                     {"t": tenant, "h": apikeys.hash_key(key)})
    assert next(k for k in apikeys.list_keys(tenant)).scopes == apikeys.EVERY_SCOPE
    client = api.client(key=key)
    started = client.post("/v1/sagas", json={"type": "probe_idle", "input": {}}, headers={"Idempotency-Key": "old"})
    assert started.status_code == 202, started.text
    saga_id = started.json()["id"]
    assert client.get(f"/v1/sagas/{saga_id}").status_code == 200
    assert client.post(f"/v1/sagas/{saga_id}/cancel").status_code == 200


@pytest.fixture()
def database(servers: Services) -> Iterator[str]:
    """An empty database of its own."""
    name = f"saga_scopes_{uuid.uuid4().hex[:10]}"
    create_database(servers.database_url, name)
    try:
        yield with_database(servers.database_url, name)
    finally:
        drop_database(servers.database_url, name)


def test_the_migration_gives_keys_from_before_scopes_every_one(database: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database.replace("%", "%%"))
    command.upgrade(config, "api_0002")  # the API keys' tables before scopes
    with psycopg.connect(libpq_url(database)) as conn:
        conn.execute("INSERT INTO api_keys (tenant, name, key_hash, revoked_at) VALUES ('acme', 'ci', 'aa', NULL), "
                     "('acme', 'gone', 'bb', now())")
        conn.execute("INSERT INTO api_key_events (key_id, tenant, kind, by) VALUES (1, 'acme', 'created', '{}'), "
                     "(2, 'acme', 'created', '{}'), (2, 'acme', 'revoked', '{}')")

    ledger.upgrade(database)  # the webhooks' outbox (api_0004) is written by a trigger on the ledger's events
    migrations.upgrade(database, ("api",))
    every = list(apikeys.EVERY_SCOPE)
    with psycopg.connect(libpq_url(database)) as conn:
        assert conn.execute("SELECT key_hash, scopes FROM api_keys ORDER BY id").fetchall() == [
            ("aa", every), ("bb", every)]
        assert conn.execute("SELECT kind, scopes FROM api_key_events ORDER BY id").fetchall() == [
            ("created", every), ("created", every), ("revoked", None)]


def test_keys_are_created_with_the_scopes_named_and_an_unknown_one_is_refused(stack: Stack) -> None:
    tenant = f"sc-{uuid.uuid4().hex[:8]}"
    code, out = service_cli("keys", "create", "--tenant", tenant, "--scope", "nope", "--scope", "sagas:read")
    assert code == 2 and "Invalid value for --scope: unknown scope 'nope': the scopes are sagas:read," in out, out
    assert apikeys.list_keys(tenant) == [], "nothing was created"

    code, out = service_cli("keys", "create", "--tenant", tenant, "--scope", "sagas:start", "--scope", "sagas:read",
                            "--scope", "sagas:read")
    assert code == 0, out
    assert "with scopes sagas:read sagas:start;" in out
    key_id = int(out.split()[1])
    code, out = service_cli("keys", "create", "--tenant", tenant)
    assert code == 0 and "with scopes sagas:read sagas:start sagas:operate webhooks:manage;" in out, out

    code, out = service_cli("keys", "list", "--tenant", tenant, "--json")
    assert [k["scopes"] for k in json.loads(out)] == [["sagas:read", "sagas:start"], list(apikeys.EVERY_SCOPE)]
    code, out = service_cli("keys", "list", "--tenant", tenant)
    assert [line.split()[5] for line in out.splitlines()] == [
        "sagas:read,sagas:start", "sagas:read,sagas:start,sagas:operate,webhooks:manage"], out
    apikeys.revoke_key(key_id)
    code, out = service_cli("keys", "events", "--key", str(key_id), "--json")
    assert [(e["kind"], e["scopes"]) for e in json.loads(out)] == [
        ("created", ["sagas:read", "sagas:start"]), ("revoked", None)]

    with pytest.raises(ValueError, match="a key needs at least one scope"):
        apikeys.create_key(tenant, scopes=())


def test_the_openapi_document_names_the_scope_of_every_v1_operation(api: ApiServer) -> None:
    document = httpx.get(f"{api.url}/openapi.json").json()
    found = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/v1/"):
                continue
            scopes = operation.get("x-required-scopes")
            assert scopes and set(scopes) <= set(apikeys.SCOPES), f"{method} {path}: {scopes}"
            assert operation["security"] == [{"HTTPBearer": scopes}], f"{method} {path}"
            assert f"Needs an API key with the scope `{scopes[0]}`" in operation["description"], f"{method} {path}"
            assert "403" in operation["responses"], f"{method} {path} documents its 403"
            found[(method.upper(), path)] = scopes
    assert found == {(r.method, r.path): [r.scope] for r in ROUTES}, "every /v1 route is in ROUTES, with its scope"
    scheme = document["components"]["securitySchemes"]["HTTPBearer"]["description"]
    assert all(f"`{scope}`" in scheme for scope in apikeys.SCOPES), scheme
