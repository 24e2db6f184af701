"""Who asked: every operator action (cancel, resume, compensate, input, rewind, restart) records its caller in its
audit event, through the HTTP API (the key's tenant and fingerprint), the Python client, the `saga` command on the
database (the OS user and host) or through `--api`, and the library (`by`, else `{"via": "library"}`); API keys
record who created and revoked them. A real `python -m service api` process and real `saga`/`python -m service`
processes; the sagas are on a queue no worker reads, set by hand to the status each action needs."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

import saga
from api import keys as apikeys
from saga import db
from saga.client import SagaClient
from saga.testing import Stack
from tests.conftest import ROOT
from tests.test_api import ApiServer
from tests.test_api_client import saga_cli, service_cli

BIN = Path(sys.executable).parent
CLI_USER = {"via": "cli", "user": getpass.getuser(), "host": socket.gethostname()}
LIBRARY = {"via": "library"}
WAITING = {"step": "a", "fields": ["answer"], "reason": "which one?", "until": "2999-01-01T00:00:00+00:00"}

# Each action: the status it needs, the event that records it, and what it sends.
ACTIONS: dict[str, tuple[str, str]] = {
    "cancel": ("pending", "cancel_requested"),
    "resume": ("paused", "saga_resumed"),
    "compensate": ("failed", "compensation_rerun"),
    "input": ("awaiting_input", "input_received"),
    "rewind": ("awaiting_input", "rewind_begun"),
    "restart": ("compensated", "saga_restarted"),
}
ANSWER = {"answer": "this one"}


def held(tenant: str, status: str) -> UUID:
    """A `probe_idle` saga of `tenant` (its steps go to a queue nobody reads), put in `status` as the workers
    would leave it, ready for the action that status allows."""
    saga_id = saga.start("probe_idle", {}, tenant=tenant, dispatch=False).saga.id
    with db.transaction() as conn:
        conn.execute(text("UPDATE sagas SET status = :st, awaiting = CAST(:aw AS jsonb) WHERE id = :id"),
                     {"st": status, "id": saga_id,
                      "aw": json.dumps(WAITING) if status == "awaiting_input" else None})
    return saga_id


def recorded_by(saga_id: UUID, action: str) -> dict[str, Any]:
    """The `by` of the event that recorded `action`; for a restart the new saga's `saga_accepted` names the same."""
    kind = ACTIONS[action][1]
    found = [e for e in saga.events(saga_id) if e.kind == kind]
    assert len(found) == 1, f"{kind}: {found}"
    by = found[0].detail.get("by")
    if action == "restart":
        new = UUID(found[0].detail["as"])
        accepted = [e for e in saga.events(new) if e.kind == "saga_accepted"]
        assert accepted[0].detail["restart_of"] == str(saga_id)
        assert accepted[0].detail.get("by") == by, "the restarted saga and its restart name the same caller"
    return by  # type: ignore[no-any-return]


def via_http(api: ApiServer, key: str) -> Callable[[str, UUID], None]:
    def act(action: str, saga_id: UUID) -> None:
        client = api.client(key=key)
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        body = {"input": ANSWER} if action == "input" else {"to": "a"} if action == "rewind" else None
        answer = client.post(f"/v1/sagas/{saga_id}/{action}", json=body,
                             headers=headers if action in ("input", "rewind") else None)
        assert answer.status_code in (200, 202), answer.text
    return act


def via_client(api: ApiServer, key: str) -> Callable[[str, UUID], None]:
    def act(action: str, saga_id: UUID) -> None:
        with SagaClient(api.url, key) as client:
            if action == "input":
                client.provide_input(saga_id, ANSWER)
            elif action == "rewind":
                client.rewind(saga_id, "a")
            else:
                getattr(client, action)(saga_id)
    return act


def via_cli(*extra: str) -> Callable[[str, UUID], None]:
    def act(action: str, saga_id: UUID) -> None:
        more = {"input": ["--input", json.dumps(ANSWER)], "rewind": ["--to", "a"]}.get(action, [])
        code, out = saga_cli(action, str(saga_id), *more, *extra)
        assert code == 0, out
    return act


def via_library(by: dict[str, Any] | None) -> Callable[[str, UUID], None]:
    def act(action: str, saga_id: UUID) -> None:
        who = {} if by is None else {"by": by}
        if action == "input":
            saga.provide_input(saga_id, ANSWER, idempotency_key="k", dispatch=False, **who)
        elif action == "rewind":
            saga.rewind(saga_id, "a", idempotency_key="k", **who)
        elif action == "restart":
            saga.restart(saga_id, dispatch=False, **who)
        else:
            getattr(saga, action)(saga_id, **who)
    return act


def fingerprint(key: str) -> str:
    return f"sha256:{apikeys.hash_key(key)[:12]}"


@pytest.mark.parametrize("action", ACTIONS)
def test_each_action_through_the_api_the_client_and_the_cli_records_who_asked(
        api: ApiServer, stack: Stack, action: str) -> None:
    tenant = f"audit-{uuid.uuid4().hex[:8]}"
    _, key = apikeys.create_key(tenant)
    through_the_api = {"via": "api", "tenant": tenant, "key": fingerprint(key)}
    routes: list[tuple[str, Callable[[str, UUID], None], dict[str, Any]]] = [
        ("http", via_http(api, key), through_the_api),
        ("client", via_client(api, key), through_the_api),
        ("cli --api", via_cli("--api", "--api-url", api.url, "--api-key", key), through_the_api),
        ("cli", via_cli(), CLI_USER),
        ("library", via_library(None), LIBRARY),
        ("library by", via_library({"via": "billing-job", "run": 7}), {"via": "billing-job", "run": 7}),
    ]
    for route, act, expected in routes:
        saga_id = held(tenant, ACTIONS[action][0])
        act(action, saga_id)
        assert recorded_by(saga_id, action) == expected, f"{action} via {route}"
        assert key not in json.dumps([e.to_dict() for e in saga.events(saga_id)]), "the key itself is never logged"


def test_who_asked_shows_in_the_apis_events_and_in_saga_events(api: ApiServer, stack: Stack) -> None:
    tenant = f"audit-{uuid.uuid4().hex[:8]}"
    _, key = apikeys.create_key(tenant)
    saga_id = held(tenant, "paused")
    via_http(api, key)("resume", saga_id)
    listed = api.client(key=key).get(f"/v1/sagas/{saga_id}/events").json()["items"]
    assert [e["detail"]["by"] for e in listed if e["kind"] == "saga_resumed"] == [
        {"via": "api", "tenant": tenant, "key": fingerprint(key)}]

    code, out = saga_cli("events", str(saga_id), "--json")
    assert code == 0, out
    assert [e["detail"]["by"] for e in json.loads(out) if e["kind"] == "saga_resumed"] == [
        {"via": "api", "tenant": tenant, "key": fingerprint(key)}]
    _, out = saga_cli("events", str(saga_id))
    line = next(line for line in out.splitlines() if "saga_resumed" in line)
    assert fingerprint(key) in line and tenant in line, out

    # An operator's login and host are the operators' business: the tenant is told "an operator".
    via_cli()("cancel", saga_id)
    listed = api.client(key=key).get(f"/v1/sagas/{saga_id}/events").json()["items"]
    assert [e["detail"]["by"] for e in listed if e["kind"] == "cancel_requested"] == [{"via": "operator"}]
    assert CLI_USER["host"] not in json.dumps(listed)
    assert recorded_by(saga_id, "cancel") == CLI_USER


def test_the_saga_command_run_as_a_process_records_the_os_user_and_host(stack: Stack) -> None:
    saga_id = held("default", "pending")
    done = subprocess.run([str(BIN / "saga"), "-A", "workers.app", "cancel", str(saga_id)], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert recorded_by(saga_id, "cancel") == CLI_USER


def test_a_caller_that_is_not_a_mapping_is_refused_and_nothing_is_recorded(stack: Stack) -> None:
    saga_id = held("default", "pending")
    before = saga.events(saga_id)
    with pytest.raises(TypeError, match="by must be a non-empty mapping saying who asked"):
        saga.cancel(saga_id, by="ann")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="by must be a non-empty mapping"):
        saga.cancel(saga_id, by={})
    assert saga.events(saga_id) == before and saga.load(saga_id).status == "pending"


# API keys ----------------------------------------------------------------------------------------------


def test_key_creation_and_revocation_record_who_did_it(stack: Stack, tmp_path: Path) -> None:
    tenant = f"k-{uuid.uuid4().hex[:8]}"
    code, out = service_cli("keys", "create", "--tenant", tenant, "--name", "ci")
    assert code == 0, out
    key_id = int(out.split()[1])
    assert service_cli("keys", "revoke", str(key_id))[0] == 0
    assert service_cli("keys", "revoke", str(key_id))[0] == 1, "a key is revoked once"
    record, _ = apikeys.create_key(tenant)  # the library, naming nobody
    apikeys.revoke_key(record.id, by={"via": "admin-tool", "user": "ann"})

    code, out = service_cli("keys", "events", "--tenant", tenant, "--json")
    assert code == 0, out
    assert [(e["key_id"], e["kind"], e["by"]) for e in json.loads(out)] == [
        (key_id, "created", CLI_USER), (key_id, "revoked", CLI_USER),
        (record.id, "created", LIBRARY), (record.id, "revoked", {"via": "admin-tool", "user": "ann"})]
    code, out = service_cli("keys", "events", "--key", str(key_id))
    assert [line.split()[5] for line in out.splitlines()] == ["created", "revoked"], out
    assert f"by via=cli host={CLI_USER['host']} user={CLI_USER['user']}" in out, out

    path = tmp_path / "api-key"
    apikeys.ensure_dev_key(path, tenant)  # what `make run` does
    made = next(k for k in apikeys.list_keys(tenant) if k.name == f"dev key in {path}")
    assert [e.by for e in apikeys.key_events(made.id)] == [{**CLI_USER, "via": "dev"}]


def test_the_service_command_run_as_a_process_records_who_made_and_revoked_a_key(stack: Stack) -> None:
    tenant = f"k-{uuid.uuid4().hex[:8]}"

    def service(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=dict(os.environ),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stderr + done.stdout

    key_id = int(service("keys", "create", "--tenant", tenant).split()[1])
    service("keys", "revoke", str(key_id))
    assert [(e.kind, e.by) for e in apikeys.key_events(key_id)] == [("created", CLI_USER), ("revoked", CLI_USER)]
