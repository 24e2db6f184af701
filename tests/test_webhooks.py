"""Webhooks end to end: endpoints registered through the API, events written by the ledger's transitions, delivered
by a real worker on the `webhooks` queue to real HTTP receivers started here, verified with `standardwebhooks`."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from saga import db
from saga.testing import Stack, wait_until
from tests.receivers import Receiver
from tests.test_api import ApiServer, assert_error, settle, start
from webhooks import addresses, dispatcher, settings
from webhooks.events import EVENT_TYPES


def register(client: httpx.Client, url: str, event_types: list[str] | None = None) -> dict[str, Any]:
    response = client.post("/v1/webhooks", json={"url": url, **({"event_types": event_types} if event_types else {})})
    assert response.status_code == 201, response.text
    return response.json()


def ledger_events(saga_id: str, types: list[str]) -> list[tuple[str, str]]:
    """(webhook-id, type) of the saga's ledger events of these types, oldest first: what a receiver should get."""
    kinds = {EVENT_TYPES[t]: t for t in types}
    with db.transaction() as conn:
        rows = conn.execute(text("SELECT id, kind FROM saga_events WHERE saga_id = :s ORDER BY id"),
                            {"s": saga_id}).all()
    return [(f"evt_{r.id}", kinds[r.kind]) for r in rows if r.kind in kinds]


def test_a_delivery_is_signed_verifies_with_the_receivers_secret_and_carries_the_saga(
        api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    client = api.new_tenant()
    endpoint = register(client, receiver.url)
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_types"] == [
        t for t in EVENT_TYPES if t.startswith("saga.")]
    assert "secret" not in client.get(f"/v1/webhooks/{endpoint['id']}").json()

    saga_id = start(client).json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    detail = wait_until(lambda: (d := client.get(f"/v1/webhooks/{endpoint['id']}").json())["recent_attempts"] and d,
                        timeout=30, what="the delivery recorded")
    assert [a["status_code"] for a in detail["recent_attempts"]] == [200] and detail["pending"] == 0
    got = receiver.requests
    assert len(got) == 1
    payload = Webhook(endpoint["secret"]).verify(got[0].body, got[0].headers)
    assert [(got[0].headers["webhook-id"], payload["type"])] == ledger_events(saga_id, ["saga.completed"])
    assert payload["data"]["saga"]["id"] == saga_id and payload["data"]["saga"]["status"] == "completed"
    assert payload["data"]["event"]["kind"] == "saga_completed"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(got[0].body, got[0].headers)
    # The secret is in no log of the stack's processes (workers, beat, the API), nor in the metrics.
    logs = {path.name: path.read_text(errors="replace") for path in deliverers.data_dir.glob("*.log")}
    assert {"webhooks.log", "api.log", "beat.log"} <= set(logs)
    assert [name for name, text in logs.items() if endpoint["secret"] in text] == []
    assert endpoint["secret"] not in httpx.get(f"{api.url}/metrics").text


def test_a_receiver_failing_for_a_while_gets_every_event_once_it_recovers_in_order_per_saga(
        api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    """500 for the first 12 requests, then 200: every event of five sagas, each saga's in its ledger order."""
    answers = iter([500] * 12)
    receiver.answer = lambda: next(answers, 200)
    client = api.new_tenant()
    types = ["step.succeeded", "saga.completed"]
    endpoint = register(client, receiver.url, types)
    ids = [start(client).json()["id"] for _ in range(5)]
    for saga_id in ids:
        assert settle(client, saga_id)["status"] == "completed"
    expected = {saga_id: ledger_events(saga_id, types) for saga_id in ids}
    total = sum(len(v) for v in expected.values())
    wait_until(lambda: len(receiver.delivered()) >= total, timeout=60,
               what=f"{total} deliveries (got {len(receiver.delivered())})")
    by_saga: dict[str, list[tuple[str, str]]] = {}
    for got in receiver.delivered():
        payload = Webhook(endpoint["secret"]).verify(got.body, got.headers)
        by_saga.setdefault(payload["data"]["saga_id"], []).append((got.headers["webhook-id"], payload["type"]))
    assert by_saga == expected
    assert sum(1 for r in receiver.requests if r.status == 500) == 12
    assert client.get(f"/v1/webhooks/{endpoint['id']}").json()["pending"] == 0


def test_a_410_disables_the_endpoint_and_nothing_more_is_sent(
        api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    receiver.answer = lambda: 410
    client = api.new_tenant()
    endpoint = register(client, receiver.url, ["step.succeeded"])
    saga_id = start(client).json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    shown = wait_until(lambda: (e := client.get(f"/v1/webhooks/{endpoint['id']}").json())["enabled"] is False and e,
                       timeout=30, what="the endpoint disabled")
    assert "410" in shown["disabled_reason"] and shown["pending"] == len(ledger_events(saga_id, ["step.succeeded"]))
    time.sleep(1.5)  # dispatches every 0.2 s: time for several
    assert len(receiver.requests) == 1
    gauges = wait_until(lambda: (m := httpx.get(f"{api.url}/metrics").text) and
                        "saga_webhook_endpoints_disabled 0.0" not in m and m, timeout=10, what="the gauge")
    assert "saga_webhook_oldest_undelivered_seconds 0.0" in gauges  # its events wait, but it is disabled


def test_after_a_rotation_both_secrets_verify_and_replay_sends_a_sagas_events_again(
        api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    client = api.new_tenant()
    endpoint = register(client, receiver.url)
    rotated = client.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret", json={"keep_old_for": 600}).json()
    assert rotated["secret"] != endpoint["secret"]
    saga_id = start(client).json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    first = wait_until(receiver.delivered, timeout=30, what="the first delivery")[0]
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint["secret"], rotated["secret"]):
        Webhook(secret).verify(first.body, first.headers)

    replayed = client.post(f"/v1/sagas/{saga_id}/replay-webhooks")
    assert replayed.json() == {"deliveries": 1}, replayed.text
    again = wait_until(lambda: len(receiver.delivered()) >= 2 and receiver.delivered(), timeout=30,
                       what="the replayed delivery")
    assert again[1].headers["webhook-id"] == first.headers["webhook-id"] and again[1].body == first.body
    assert_error(client.post("/v1/sagas/00000000-0000-4000-8000-000000000000/replay-webhooks"), 404, "saga_not_found")


def test_endpoints_are_per_tenant_and_bad_ones_are_refused_naming_the_field(api: ApiServer,
                                                                             receiver: Receiver) -> None:
    alpha, beta = api.new_tenant(), api.new_tenant()
    endpoint = register(alpha, receiver.url)
    assert [e["id"] for e in alpha.get("/v1/webhooks").json()["items"]] == [endpoint["id"]]
    assert beta.get("/v1/webhooks").json()["items"] == []
    for method, path in (("GET", ""), ("POST", "/disable"), ("POST", "/rotate-secret"), ("DELETE", "")):
        assert_error(beta.request(method, f"/v1/webhooks/{endpoint['id']}{path}"), 404, "webhook_not_found")
    for body, code, field_name in (({"url": "ftp://example.com/x"}, "invalid_request", "url"),
                                   ({"url": receiver.url, "event_types": ["saga.exploded"]}, "invalid_request",
                                    "event_types.0"),
                                   ({"url": "https://user:pw@example.com/x"}, "invalid_webhook", "url"),
                                   ({"url": "https://nowhere.invalid/x"}, "invalid_webhook", "url")):
        error = assert_error(alpha.post("/v1/webhooks", json=body), 422, code)
        assert error["details"][0]["field"] == field_name, error
    assert alpha.post(f"/v1/webhooks/{endpoint['id']}/disable").json()["disabled_reason"] == "disabled by the tenant"
    assert alpha.post(f"/v1/webhooks/{endpoint['id']}/enable").json()["enabled"] is True
    assert alpha.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
    assert alpha.get("/v1/webhooks").json()["items"] == []


@pytest.mark.parametrize("url, refused", [
    ("http://127.0.0.1:9/hooks", "loopback"),
    ("http://[::1]:9/hooks", "loopback"),
    ("http://localhost:9/hooks", "loopback"),
    ("http://10.1.2.3/hooks", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[::ffff:127.0.0.1]/hooks", "loopback"),
    ("http://100.64.0.1/hooks", "not a public address"),
])
def test_an_address_that_is_not_public_is_refused_unless_the_setting_allows_it(
        monkeypatch: pytest.MonkeyPatch, url: str, refused: str) -> None:
    monkeypatch.delenv("SAGA_WEBHOOK_ALLOWED_NETWORKS", raising=False)
    settings.webhook_settings.cache_clear()
    try:
        with pytest.raises(addresses.RefusedURL, match=refused):
            addresses.check(url)
        monkeypatch.setenv("SAGA_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128,10.0.0.0/8,169.254.0.0/16,"
                           "100.64.0.0/10")
        settings.webhook_settings.cache_clear()
        assert addresses.check(url).port in (9, 80)
    finally:
        settings.webhook_settings.cache_clear()


def test_a_slow_receiver_is_cut_off_and_retried_and_a_redirect_is_not_followed(
        api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    """The first answer comes after the timeout (2 s here), the second is a redirect to another receiver; the third
    attempt is answered 200. The other receiver never hears of it."""
    elsewhere = Receiver().start()
    try:
        answers = iter(["slow", "redirect"])

        def answer() -> int:
            what = next(answers, "ok")
            if what == "slow":
                time.sleep(3)
            return 307 if what == "redirect" else 200

        receiver.answer = answer
        receiver.headers = {"location": elsewhere.url}
        client = api.new_tenant()
        endpoint = register(client, receiver.url)
        saga_id = start(client).json()["id"]
        assert settle(client, saga_id)["status"] == "completed"
        attempts = wait_until(lambda: len(a := client.get(f"/v1/webhooks/{endpoint['id']}").json()["recent_attempts"])
                              >= 3 and a, timeout=30, what="three attempts")
        assert [(a["status_code"], a["error"]) for a in reversed(attempts)] == [
            (None, "no answer within 2s"), (307, "HTTP 307"), (200, None)]
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1 and elsewhere.requests == []
    finally:
        elsewhere.stop()


def test_no_more_of_a_receivers_answer_is_read_than_the_cap(api: ApiServer, deliverers: Stack,
                                                             receiver: Receiver) -> None:
    """A receiver answering 200 with 256 MiB: the delivery is recorded at once, and the rest is never downloaded."""
    receiver.reply = b"x" * (256 * 1024 * 1024)
    client = api.new_tenant()
    endpoint = register(client, receiver.url)
    saga_id = start(client).json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    attempts = wait_until(lambda: client.get(f"/v1/webhooks/{endpoint['id']}").json()["recent_attempts"],
                          timeout=30, what="the delivery recorded")
    assert [a["status_code"] for a in attempts] == [200] and attempts[0]["duration_ms"] < 2000
    wait_until(lambda: receiver.requests[0].sent, timeout=10, what="the receiver to stop sending")
    assert receiver.requests[0].sent < 64 * 1024 * 1024, "most of the answer was never read"


def test_a_failing_endpoint_does_not_delay_another(api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    """One receiver never answers in time; the tenant's other endpoint gets each event as soon as it is written."""
    stuck = Receiver(answer=lambda: time.sleep(3) or 200).start()
    try:
        client = api.new_tenant()
        register(client, stuck.url)
        register(client, receiver.url)
        for n in range(3):
            saga_id = start(client).json()["id"]
            assert settle(client, saga_id)["status"] == "completed"
            ended = time.monotonic()
            wait_until(lambda n=n: len(receiver.delivered()) > n, timeout=30, what=f"delivery {n + 1}")
            assert time.monotonic() - ended < 1.5, "the healthy endpoint waited for the stuck one"
        assert stuck.requests, "the stuck endpoint was tried meanwhile"
    finally:
        stuck.stop()


def test_an_event_failing_for_the_retry_period_is_given_up_the_endpoint_disabled_and_replay_delivers_it(
        api: ApiServer, deliverers: Stack, receiver: Receiver) -> None:
    """Three days of failures, the first of them moved back in time: the next failure gives the event up, disables
    the endpoint and keeps the event; enabled and replayed, it is delivered once the receiver answers."""
    receiver.answer = lambda: 503
    client = api.new_tenant()
    endpoint = register(client, receiver.url)
    saga_id = start(client).json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    wait_until(lambda: receiver.requests, timeout=30, what="a first attempt")
    with db.transaction() as conn:
        conn.execute(text("UPDATE webhook_deliveries SET first_attempt_at = now() - interval '3 days 1 minute' "
                          "WHERE endpoint_id = :e"), {"e": endpoint["id"]})
    shown = wait_until(lambda: (e := client.get(f"/v1/webhooks/{endpoint['id']}").json())["failed"] and e,
                       timeout=30, what="the event given up")
    assert shown["enabled"] is False and shown["disabled_reason"].startswith("every delivery failed for 259200s")
    assert shown["pending"] == 0 and shown["failed"] == 1

    receiver.answer = lambda: 200
    assert client.post(f"/v1/webhooks/{endpoint['id']}/enable").json()["enabled"] is True
    assert client.post(f"/v1/webhooks/{endpoint['id']}/replay-failed").json() == {"deliveries": 1}
    delivered = wait_until(receiver.delivered, timeout=30, what="the replayed event")
    assert [r.headers["webhook-id"] for r in delivered] == [e for e, _ in ledger_events(saga_id, ["saga.completed"])]


def test_delivered_events_older_than_the_kept_days_are_deleted(api: ApiServer, deliverers: Stack,
                                                                receiver: Receiver) -> None:
    client = api.new_tenant()
    endpoint = register(client, receiver.url)
    saga_id = start(client).json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    wait_until(lambda: client.get(f"/v1/webhooks/{endpoint['id']}").json()["recent_attempts"], timeout=30,
               what="the delivery")
    with db.transaction() as conn:
        conn.execute(text("UPDATE webhook_deliveries SET delivered_at = now() - interval '31 days' "
                          "WHERE endpoint_id = :e"), {"e": endpoint["id"]})
    assert dispatcher.prune_once(30) >= 1
    assert client.get(f"/v1/webhooks/{endpoint['id']}").json()["recent_attempts"] == []
