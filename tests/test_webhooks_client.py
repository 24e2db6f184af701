"""Webhook endpoints through the Python client and `saga webhooks`, against a real `python -m service api` process
(and, where deliveries are shown, real workers delivering to a receiver on this machine)."""

from __future__ import annotations

import json
import uuid

import pytest

from api import keys as apikeys
from saga.client import ApiError, ApiUnreachable, MissingScope, SagaClient
from saga.models import Webhook, WebhookDetail
from saga.testing import wait_until
from tests.receivers import Receiver
from tests.test_api import ApiServer, TcpProxy, free_port
from tests.test_api_client import saga_cli

# Loopback addresses are allowed by the test stack (SAGA_WEBHOOK_ALLOWED_NETWORKS); nothing listens on port 9.
HOOKS = "http://127.0.0.1:9/hooks"
NOBODY = "00000000-0000-4000-8000-000000000000"


def new_key(*scopes: str) -> str:
    """A stored key of a fresh tenant (every scope unless some are named)."""
    _, key = apikeys.create_key(f"t-{uuid.uuid4().hex[:10]}", **({"scopes": scopes} if scopes else {}))
    return key


def client_for(api: ApiServer, key: str | None = None) -> SagaClient:
    return SagaClient(api.url, key or new_key())


def api_error(call: object, status: int, code: str) -> ApiError:
    """The ApiError `call()` raises, checked for its status and code."""
    with pytest.raises(ApiError) as raised:
        call()  # type: ignore[operator]
    assert (raised.value.status, raised.value.code) == (status, code), raised.value
    return raised.value


# The client --------------------------------------------------------------------------------------------------


def test_the_client_registers_reads_rotates_switches_replays_and_deletes_an_endpoint(api: ApiServer) -> None:
    with client_for(api) as client:
        made = client.create_webhook(HOOKS, ["saga.completed", "step.failed"], "orders")
        assert isinstance(made, Webhook) and made.secret is not None and made.secret.startswith("whsec_")
        assert (made.url, made.event_types, made.description) == (HOOKS, ["saga.completed", "step.failed"], "orders")
        assert made.enabled and made.disabled_reason is None and (made.pending, made.failed) == (0, 0)
        plain = client.create_webhook(HOOKS)
        assert plain.event_types == ["saga.completed", "saga.compensated", "saga.paused", "saga.failed",
                                     "saga.awaiting_input"] and plain.description is None

        listed = client.list_webhooks()
        assert [e.id for e in listed] == [made.id, plain.id] and all(e.secret is None for e in listed)
        shown = client.get_webhook(made.id)
        assert isinstance(shown, WebhookDetail) and shown.secret is None and shown.recent_attempts == []
        assert shown.model_dump(exclude={"secret", "recent_attempts"}) == made.model_dump(exclude={"secret"})

        rotated = client.rotate_webhook_secret(made.id, keep_old_for=600)
        assert rotated.secret is not None and rotated.secret.startswith("whsec_") and rotated.secret != made.secret
        again = client.rotate_webhook_secret(uuid.UUID(made.id))  # the service's overlap
        assert again.secret not in (None, made.secret, rotated.secret)

        disabled = client.disable_webhook(made.id)
        assert not disabled.enabled and disabled.disabled_reason == "disabled by the tenant"
        assert not client.get_webhook(made.id).enabled
        enabled = client.enable_webhook(made.id)
        assert enabled.enabled and enabled.disabled_reason is None
        assert client.replay_failed_webhooks(made.id) == 0

        saga_id = client.start("probe_idle", {}).saga.id  # no worker takes it: no event the endpoints want yet
        assert client.replay_saga_webhooks(saga_id) == 0
        assert client.replay_saga_webhooks(saga_id, endpoint_id=made.id) == 0

        assert client.delete_webhook(made.id) is None
        assert [e.id for e in client.list_webhooks()] == [plain.id]
        api_error(lambda: client.get_webhook(made.id), 404, "webhook_not_found")
        api_error(lambda: client.delete_webhook(made.id), 404, "webhook_not_found")


def test_the_client_raises_the_apis_errors(api: ApiServer) -> None:
    with client_for(api) as owner, client_for(api) as other:
        endpoint = owner.create_webhook(HOOKS)
        saga_id = owner.start("probe_idle", {}).saga.id
        for call in (other.get_webhook, other.rotate_webhook_secret, other.disable_webhook, other.enable_webhook,
                     other.delete_webhook, other.replay_failed_webhooks):
            error = api_error(lambda call=call: call(endpoint.id), 404, "webhook_not_found")
            assert endpoint.id in error.message
        api_error(lambda: other.replay_saga_webhooks(saga_id), 404, "saga_not_found")
        api_error(lambda: owner.replay_saga_webhooks(saga_id, endpoint_id=NOBODY), 404, "webhook_not_found")
        assert owner.get_webhook(endpoint.id).enabled, "another tenant's requests changed nothing"

        refused = api_error(lambda: owner.create_webhook("ftp://example.com/hooks"), 422, "invalid_request")
        assert refused.details[0]["field"] == "url"
        refused = api_error(lambda: owner.create_webhook(HOOKS, ["saga.exploded"]), 422, "invalid_request")
        assert refused.details[0]["field"] == "event_types.0"
        refused = api_error(lambda: owner.create_webhook("https://user:pw@example.com/hooks"), 422,
                            "invalid_webhook")
        assert refused.details == [{"field": "url", "message": refused.message}]
        api_error(lambda: owner.rotate_webhook_secret(endpoint.id, keep_old_for=-1), 422, "invalid_request")
        assert [e.id for e in owner.list_webhooks()] == [endpoint.id]

    with client_for(api, new_key("sagas:read", "sagas:operate")) as reader:
        with pytest.raises(MissingScope) as missing:
            reader.list_webhooks()
        assert missing.value.status == 403 and missing.value.scope == "webhooks:manage"


def test_a_registration_whose_answer_is_lost_is_not_sent_again(api: ApiServer) -> None:
    """A repeat would register a second endpoint (and a repeated rotation would end the old secret at once), so
    the client says the request may have been done instead of sending it again."""
    key = new_key()
    port = free_port()
    proxy = TcpProxy(port, ("127.0.0.1", int(api.url.rsplit(":", 1)[1])), lose_answers=2).start()
    try:
        with SagaClient(f"http://127.0.0.1:{port}", key, backoff=0.01) as lossy:
            with pytest.raises(ApiUnreachable, match="may have been done") as lost:
                lossy.create_webhook(HOOKS)
            assert "POST /v1/webhooks" in lost.value.message
            with SagaClient(api.url, key) as client:
                [endpoint] = client.list_webhooks()
            with pytest.raises(ApiUnreachable, match="may have been done"):
                lossy.rotate_webhook_secret(endpoint.id)
            assert lossy.get_webhook(endpoint.id).id == endpoint.id  # a read is safe to repeat: it is
    finally:
        proxy.stop()
    with pytest.raises(ApiUnreachable, match="after 3 tries"), SagaClient(
            f"http://127.0.0.1:{free_port()}", key, retries=2, backoff=0.01) as nobody:
        nobody.create_webhook(HOOKS)  # never connected: tried again, as nothing was done


# The CLI -----------------------------------------------------------------------------------------------------


def test_the_cli_manages_endpoints_through_the_api(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    via = ["--api-url", api.url, "--api-key", key]
    code, out = saga_cli("webhooks", "create", HOOKS, "--event-type", "saga.completed", "--event-type",
                         "saga.failed", "--description", "orders", *via)
    assert code == 0, out
    endpoint_id = out.split()[1]
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret: "))
    assert secret.startswith("whsec_") and "shown only this once" in out
    assert f"url: {HOOKS}" in out and "events: saga.completed, saga.failed" in out and "description: orders" in out
    code, out = saga_cli("webhooks", "create", HOOKS, "--json", *via)
    second = json.loads(out)
    assert code == 0 and second["secret"].startswith("whsec_") and second["event_types"][0] == "saga.completed"

    code, out = saga_cli("webhooks", "list", *via)
    assert code == 0 and [line.split()[:2] for line in out.splitlines()] == [[endpoint_id, "enabled"],
                                                                              [second["id"], "enabled"]]
    assert HOOKS in out and secret not in out
    code, out = saga_cli("webhooks", "list", "--json", *via)
    assert [e["id"] for e in json.loads(out)] == [endpoint_id, second["id"]] and "secret" not in out

    code, out = saga_cli("webhooks", "show", endpoint_id, *via)
    assert code == 0 and out.startswith(f"webhook {endpoint_id}  enabled") and "no deliveries yet" in out, out
    code, out = saga_cli("webhooks", "show", endpoint_id, "--json", *via)
    shown = json.loads(out)
    assert shown["recent_attempts"] == [] and shown["description"] == "orders" and "secret" not in shown

    code, out = saga_cli("webhooks", "rotate-secret", endpoint_id, "--keep-old-for", "600", *via)
    assert code == 0 and "shown only this once" in out and "for 600 more seconds" in out, out
    rotated = next(line.split()[1] for line in out.splitlines() if line.startswith("secret: "))
    assert rotated.startswith("whsec_") and rotated != secret
    code, out = saga_cli("webhooks", "rotate-secret", endpoint_id, "--json", *via)
    assert json.loads(out)["secret"] not in (secret, rotated)
    code, out = saga_cli("webhooks", "rotate-secret", endpoint_id, "--keep-old-for", "-5", *via)
    assert code == 2 and "--keep-old-for" in out

    code, out = saga_cli("webhooks", "disable", endpoint_id, *via)
    assert code == 0 and out.startswith(f"webhook {endpoint_id}  disabled (disabled by the tenant)"), out
    code, out = saga_cli("webhooks", "enable", endpoint_id, "--json", *via)
    assert json.loads(out)["enabled"] is True and json.loads(out)["disabled_reason"] is None
    code, out = saga_cli("webhooks", "disable", endpoint_id, "--json", *via)
    assert json.loads(out)["enabled"] is False
    code, out = saga_cli("webhooks", "enable", endpoint_id, *via)
    assert code == 0 and out.startswith(f"webhook {endpoint_id}  enabled"), out

    code, out = saga_cli("webhooks", "replay-failed", endpoint_id, *via)
    assert code == 0 and out.strip() == f"0 failed events of webhook {endpoint_id} queued for delivery again"
    code, out = saga_cli("webhooks", "replay-failed", endpoint_id, "--json", *via)
    assert json.loads(out) == {"deliveries": 0}
    with SagaClient(api.url, key) as client:
        saga_id = client.start("probe_idle", {}).saga.id
    code, out = saga_cli("webhooks", "replay", saga_id, *via)
    assert code == 0, out
    assert out.strip() == f"0 deliveries of saga {saga_id}'s events queued to the tenant's enabled endpoints"
    code, out = saga_cli("webhooks", "replay", saga_id, "--endpoint", endpoint_id, "--json", *via)
    assert json.loads(out) == {"deliveries": 0}
    code, out = saga_cli("webhooks", "replay", NOBODY, *via)
    assert code == 1 and "saga_not_found" in out

    code, out = saga_cli("webhooks", "delete", second["id"], "--json", *via)
    assert code == 0 and json.loads(out) == {"deleted": second["id"]}
    code, out = saga_cli("webhooks", "delete", endpoint_id, *via)
    assert code == 0 and out.strip() == f"deleted webhook {endpoint_id}"
    code, out = saga_cli("webhooks", "list", *via)
    assert code == 0 and out.strip() == "no webhook endpoints"
    code, out = saga_cli("webhooks", "list", "--json", *via)
    assert json.loads(out) == []

    # The API's URL and key from the environment, as `--env-file .saga/env` gives them.
    monkeypatch.setenv("SAGA_API_URL", api.url)
    monkeypatch.setenv("SAGA_API_KEY", key)
    code, out = saga_cli("webhooks", "create", HOOKS, "--json")
    assert code == 0 and json.loads(out)["url"] == HOOKS


def test_the_cli_says_what_it_lacks_and_what_the_api_refused(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_API_URL", raising=False)
    monkeypatch.delenv("SAGA_API_KEY", raising=False)
    for args in (["list"], ["show", NOBODY, "--api-url", api.url], ["delete", NOBODY, "--api-key", "k"]):
        code, out = saga_cli("webhooks", *args)
        assert code == 2 and "saga webhooks works through the HTTP API: it needs --api-url" in out, out

    owner, other = new_key(), new_key()
    with SagaClient(api.url, owner) as client:
        endpoint = client.create_webhook(HOOKS)
    via_other = ["--api-url", api.url, "--api-key", other]
    for command in ("show", "rotate-secret", "disable", "enable", "delete", "replay-failed"):
        code, out = saga_cli("webhooks", command, endpoint.id, *via_other)
        assert code == 1 and out.strip() == f"error (webhook_not_found): no webhook endpoint {endpoint.id}", out
    code, out = saga_cli("webhooks", "show", "not-an-id", *via_other)
    assert code == 2 and "is not a webhook endpoint id" in out
    code, out = saga_cli("webhooks", "create", "ftp://example.com/hooks", *via_other)
    assert code == 1 and "error (invalid_request)" in out and "url" in out, out
    code, out = saga_cli("webhooks", "create", "https://user:pw@example.com/hooks", *via_other)
    assert code == 1 and out.startswith("error (invalid_webhook): url: "), out
    code, out = saga_cli("webhooks", "list", "--api-url", api.url, "--api-key", new_key("sagas:read"))
    assert code == 1 and "error (insufficient_scope)" in out and "webhooks:manage" in out, out
    code, out = saga_cli("webhooks", "list", "--api-url", api.url, "--api-key", "not-a-key")
    assert code == 1 and "error (unauthorized)" in out, out
    with SagaClient(api.url, owner) as client:
        assert client.get_webhook(endpoint.id).enabled


# Deliveries, shown -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("deliverers")
def test_show_lists_the_deliveries_with_the_receivers_status_codes_and_replay_sends_them_again(
        api: ApiServer) -> None:
    answers = iter([500])
    receiver = Receiver(answer=lambda: next(answers, 200)).start()
    try:
        key = new_key()
        via = ["--api-url", api.url, "--api-key", key]
        with SagaClient(api.url, key) as client:
            endpoint = client.create_webhook(receiver.url, ["saga.completed"])
            saga = client.run("probe", {}, timeout=60)
            assert saga.status == "completed"
            shown = wait_until(lambda: (d := client.get_webhook(endpoint.id)).recent_attempts
                               and d.recent_attempts[0].status_code == 200 and d, timeout=30,
                               what="the delivery, after a 500")
        assert [(a.status_code, a.type, a.saga_id) for a in shown.recent_attempts] == [
            (200, "saga.completed", saga.id), (500, "saga.completed", saga.id)]
        assert shown.recent_attempts[0].delivery_status == "delivered" and shown.pending == 0

        code, out = saga_cli("webhooks", "show", endpoint.id, *via)
        assert code == 0 and "recent deliveries, newest first:" in out, out
        rows = [line.split() for line in out.splitlines() if saga.id in line]
        assert [r[2] for r in rows] == ["200", "500"] and all("saga.completed" in r for r in rows), out
        code, out = saga_cli("webhooks", "show", endpoint.id, "--json", *via)
        assert [a["status_code"] for a in json.loads(out)["recent_attempts"]] == [200, 500]

        code, out = saga_cli("webhooks", "replay", saga.id, "--endpoint", endpoint.id, *via)
        assert code == 0 and out.strip() == (f"1 delivery of saga {saga.id}'s events queued to webhook "
                                             f"{endpoint.id}"), out
        again = wait_until(lambda: len(receiver.delivered()) >= 2 and receiver.delivered(), timeout=30,
                           what="the replayed delivery")
        assert again[1].headers["webhook-id"] == again[0].headers["webhook-id"] == shown.recent_attempts[0].webhook_id
    finally:
        receiver.stop()

