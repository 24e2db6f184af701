"""The Python client and the CLI against a real `python -m service api` process (and, for the CLI, the database too)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

import service
from api import keys as apikeys
from saga import db
from saga.client import ApiError, ApiUnreachable, SagaClient
from saga.ledger import sagas
from saga.testing import Stack
from tests.test_api import ApiServer, TcpProxy, free_port

DEMO = {"customer": "ann", "amount_cents": 1200, "step_seconds": 0.1}


def client_of(server: ApiServer, **options: float) -> SagaClient:
    _, key = apikeys.create_key(f"c-{uuid.uuid4().hex[:10]}")
    return SagaClient(server.url, key, **options)  # type: ignore[arg-type]


def test_run_starts_and_waits_and_a_repeat_with_the_key_is_the_same_saga(api: ApiServer,
                                                                         workers: Stack) -> None:
    with client_of(api) as client:
        done = client.run("demo", DEMO, idempotency_key="order-1", timeout=60)
        assert done.status == "completed" and done.progress.done == done.progress.total == 4
        again = client.start("demo", DEMO, idempotency_key="order-1")
        assert not again.created and again.saga.id == done.id
        assert client.get(done.id).status == "completed"
        assert [e.kind for e in client.events(done.id).items][-1] == "saga_completed"
        assert done.id in [s.id for s in client.list(type="demo").items]


def test_watch_yields_each_change_until_the_saga_ends(api: ApiServer, workers: Stack) -> None:
    with client_of(api) as client:
        started = client.start("demo", {**DEMO, "step_seconds": 0.3})
        assert started.created
        versions = list(client.watch(started.saga.id, timeout=60))
    assert versions[-1].status == "completed"
    done = [v.progress.done for v in versions]
    assert done == sorted(done) and len(set(done)) == 5, done


def test_a_start_whose_answer_is_lost_is_retried_with_the_same_key(api: ApiServer) -> None:
    port = free_port()
    proxy = TcpProxy(port, ("127.0.0.1", int(api.url.rsplit(":", 1)[1])), lose_answers=2).start()
    try:
        _, key = apikeys.create_key("lossy")
        with SagaClient(f"http://127.0.0.1:{port}", key, backoff=0.05) as client:
            started = client.start("probe_idle", {}, idempotency_key=f"lossy-{uuid.uuid4()}")
        assert not started.created, "the first try made the saga; the retries got it back"
        with db.transaction() as conn:
            count = conn.execute(select(func.count()).select_from(sagas).where(
                sagas.c.idempotency_key == started.saga.idempotency_key)).scalar()
        assert count == 1
    finally:
        proxy.stop()


def test_errors_arrive_as_api_errors(api: ApiServer) -> None:
    with client_of(api) as client:
        with pytest.raises(ApiError) as unknown:
            client.start("no_such_type", {})
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_saga_type")
        with pytest.raises(ApiError) as invalid:
            client.start("demo", {"customer": "", "amount_cents": 1})
        assert invalid.value.code == "invalid_input"
        assert invalid.value.details[0]["field"] == "input.customer"
        saga_id = client.start("probe_idle", {}).saga.id
        with pytest.raises(ApiError) as refused:
            client.resume(saga_id)
        assert (refused.value.status, refused.value.code) == (409, "action_not_allowed")
    with pytest.raises(ApiUnreachable), SagaClient(f"http://127.0.0.1:{free_port()}", "k", retries=2,
                                                  backoff=0.01) as nobody:
        nobody.get(saga_id)


# The CLI ---------------------------------------------------------------------------------------------


def saga_cli(*args: str) -> tuple[int, str]:
    """The library's operator command on the service's app: `saga -A workers.app ...`."""
    from saga.cli import main

    result = CliRunner().invoke(main, ["-A", "workers.app", *args], catch_exceptions=False)
    return result.exit_code, result.output


def service_cli(*args: str) -> tuple[int, str]:
    """The service's command: `python -m service ...`."""
    result = CliRunner().invoke(service.main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_keys_are_created_printed_once_listed_and_revoked(stack: Stack) -> None:
    tenant = f"k-{uuid.uuid4().hex[:8]}"
    code, out = service_cli("keys", "create", "--tenant", tenant, "--name", "ci")
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert apikeys.tenant_for_key(key) == tenant
    code, out = service_cli("keys", "list", "--tenant", tenant, "--json")
    listed = json.loads(out)
    assert [(k["tenant"], k["name"], k["revoked_at"]) for k in listed] == [(tenant, "ci", None)]
    assert key not in out
    assert service_cli("keys", "revoke", str(listed[0]["id"]))[0] == 0
    assert apikeys.tenant_for_key(key) is None
    assert service_cli("keys", "create", "--tenant", "no spaces")[0] == 2


def test_operator_commands_work_through_the_api(api: ApiServer, workers: Stack) -> None:
    _, key = apikeys.create_key(f"cli-{uuid.uuid4().hex[:8]}")
    via = ["--api", "--api-url", api.url, "--api-key", key]
    code, out = service_cli("submit", "demo", "--input", json.dumps(DEMO), "-k", "cli-1", "--wait", *via)
    assert code == 0, out
    saga_id = out.split()[1]
    assert "status=completed  progress=4/4" in out

    code, out = saga_cli("status", saga_id, *via)
    assert code == 0 and "charge_card" in out and "succeeded" in out
    code, out = saga_cli("status", saga_id, "--json", *via)
    assert json.loads(out)["id"] == saga_id
    code, out = saga_cli("list", *via)
    assert out.startswith(saga_id) and "completed" in out
    code, out = saga_cli("events", saga_id, "--json", *via)
    assert json.loads(out)[0]["kind"] == "saga_accepted"
    code, out = saga_cli("watch", saga_id, *via)
    assert code == 0 and "status=completed" in out
    code, out = saga_cli("cancel", saga_id, *via)
    assert code == 2 and "action_not_allowed" in out
    code, out = service_cli("submit", "demo", "--input", json.dumps(DEMO), "-k", "cli-1", *via)
    assert out.strip() == f"already exists: {saga_id}"


def test_watch_on_the_database_shows_progress_until_the_end(stack: Stack, workers: Stack) -> None:
    code, out = service_cli("submit", "demo", "--input", json.dumps(DEMO))
    saga_id = out.split()[1]
    code, out = saga_cli("watch", saga_id)
    assert code == 0 and out.rstrip().count("status=") >= 2 and "status=completed" in out


def test_ensure_dev_key_makes_a_key_once(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "dev" / "api-key"
    key = apikeys.ensure_dev_key(path)
    assert apikeys.tenant_for_key(key) == "dev"
    assert path.read_text().strip() == key and path.stat().st_mode & 0o777 == 0o600
    assert apikeys.ensure_dev_key(path) == key
    revoked = next(k for k in apikeys.list_keys("dev") if k.name and str(path) in k.name)
    apikeys.revoke_key(revoked.id)
    assert apikeys.ensure_dev_key(path) != key, "a revoked key is replaced"


def test_restart_through_the_client_and_the_cli(api: ApiServer, workers: Stack) -> None:
    declined = {**DEMO, "card": "declined"}
    with client_of(api) as client:
        first = client.run("demo", declined, timeout=60)
        assert first.status == "compensated"
        started = client.restart(first.id, {"card": "ok"})
        assert started.created and started.saga.restart_of == first.id
        assert client.wait(started.saga.id, timeout=60).status == "completed"
        assert client.get(first.id).restarted_as == started.saga.id
        assert client.restart(first.id, {"card": "ok"}).saga.id == started.saga.id  # a retry: the same one
        with pytest.raises(ApiError) as refused:
            client.restart(started.saga.id)
        assert refused.value.status == 409 and "only a compensated or failed saga" in refused.value.message

    _, key = apikeys.create_key(f"cli-{uuid.uuid4().hex[:8]}")
    via = ["--api", "--api-url", api.url, "--api-key", key]
    code, out = service_cli("submit", "demo", "--input", json.dumps(declined), "--wait", *via)
    assert code == 0 and "status=compensated" in out, out
    saga_id = out.split()[1]
    code, out = saga_cli("restart", saga_id, "--input", '{"card": "ok"}', "--wait", *via)
    assert code == 0 and out.startswith("restarted as: ") and "status=completed" in out, out
    code, out = saga_cli("restart", saga_id, "--input", '{"colour": "red"}', "-k", "other", *via)
    assert code == 2 and "action_not_allowed" in out, out

    code, out = service_cli("submit", "demo", "--input", json.dumps(declined), "--wait")  # on the database
    saga_id = out.split()[1]
    code, out = saga_cli("restart", saga_id, "--input", '{"card": "ok"}', "--wait")
    assert code == 0 and "status=completed" in out, out
    code, out = saga_cli("restart", saga_id, "--input", "[1]")
    assert code == 2 and "JSON object" in out, out


def test_input_through_the_client_and_the_cli_and_watch_shows_the_wait(api: ApiServer, workers: Stack) -> None:
    from tests.jobs import posting

    declined = posting(payment_method="pm_card_chargeDeclinedInsufficientFunds")
    with client_of(api) as client:
        waiting = client.run("job_posting", declined, timeout=60)  # `wait` returns when the saga needs us
        assert waiting.status == "awaiting_input" and waiting.awaiting_input is not None
        assert waiting.awaiting_input.fields == ["payment_method"]
        sent = client.provide_input(waiting.id, {"payment_method": "pm_card_visa"}, idempotency_key="card-2")
        assert sent.status == "running" and sent.awaiting_input is None
        assert client.provide_input(waiting.id, {"payment_method": "pm_card_visa"},
                                    idempotency_key="card-2").id == waiting.id  # a retry changes nothing
        assert client.wait(waiting.id, timeout=60).status == "completed"
        with pytest.raises(ApiError) as refused:
            client.provide_input(waiting.id, {"payment_method": "pm_card_visa"})
        assert refused.value.status == 409 and "only a saga awaiting input" in refused.value.message

    _, key = apikeys.create_key(f"cli-{uuid.uuid4().hex[:8]}")
    via = ["--api", "--api-url", api.url, "--api-key", key]
    code, out = service_cli("submit", "job_posting", "--input", json.dumps(declined), *via)
    saga_id = out.split()[1]
    code, out = saga_cli("watch", saga_id, *via)  # follows the wait to its end: nobody sends a card
    assert code == 0 and "status=awaiting_input" in out and "status=compensated" in out, out
    assert "awaiting input until " in out and "payment_method for step charge_payment" in out, out

    code, out = service_cli("submit", "job_posting", "--input", json.dumps(declined), *via)
    saga_id = out.split()[1]
    with SagaClient(api.url, key) as client:
        client.wait(saga_id, timeout=60)
    code, out = saga_cli("status", saga_id, *via)
    assert f"send it: saga input {saga_id}" in out, out
    code, out = saga_cli("input", saga_id, "--input", '{"payment_method": "pm_card_visa"}', "--wait", *via)
    assert code == 0 and "status=completed" in out, out
    code, out = saga_cli("input", saga_id, "--input", '{"payment_method": "pm_card_visa"}', *via)
    assert code == 2 and "action_not_allowed" in out, out
    code, out = saga_cli("input", saga_id, "--input", "[1]")
    assert code == 2 and "JSON object" in out, out
