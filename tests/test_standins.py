"""The local stand-ins for Stripe, S3 and SMTP, driven through the real clients the product uses."""

from __future__ import annotations

import json
import smtplib
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import boto3
import pytest
import stripe

from saga.testing import Process, wait_until
from standins import StandIns, free_port, read_messages, start_standins

PI: dict[str, Any] = {"amount": 1200, "currency": "usd", "confirm": True, "payment_method_types": ["card"],
      "description": "Job posting", "metadata": {"saga_id": "s-1"}}


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIns]:
    with start_standins(tmp_path_factory.mktemp("standins")) as s:
        yield s


def client(s: StandIns, *, timeout: float = 10, retries: int = 0, key: str = "sk_test_local") -> stripe.StripeClient:
    """The SDK pointed at the stand-in, as the product does it."""
    return stripe.StripeClient(key, base_addresses={"api": s.stripe_api_base}, max_network_retries=retries,
                               http_client=stripe.RequestsClient(timeout=timeout))


@pytest.fixture()
def sc(standins: StandIns) -> stripe.StripeClient:
    standins.stripe_reset()
    return client(standins)


def charge(sc: stripe.StripeClient, key: str | None = None, **params: Any) -> stripe.PaymentIntent:
    options: Any = {"idempotency_key": key} if key else {}
    body: Any = {**PI, "payment_method": "pm_card_visa", **params}
    return sc.v1.payment_intents.create(params=body, options=options)


# Stripe


def test_successful_charge(sc: stripe.StripeClient, standins: StandIns) -> None:
    pi = charge(sc)
    assert pi.id.startswith("pi_") and pi.object == "payment_intent" and pi.status == "succeeded"
    assert (pi.amount, pi.amount_received, pi.currency, pi.livemode) == (1200, 1200, "usd", False)
    assert pi.metadata["saga_id"] == "s-1" and str(pi.latest_charge).startswith("ch_")
    assert sc.v1.payment_intents.retrieve(pi.id).status == "succeeded"
    assert [p["id"] for p in standins.payment_intents()] == [pi.id]


@pytest.mark.parametrize("method, decline_code", [("pm_card_chargeDeclined", "generic_decline"),
                                                  ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")])
def test_declines(sc: stripe.StripeClient, standins: StandIns, method: str, decline_code: str) -> None:
    with pytest.raises(stripe.CardError) as caught:
        charge(sc, payment_method=method)
    err = caught.value
    assert (err.http_status, err.code) == (402, "card_declined")
    assert err.error is not None and err.error.decline_code == decline_code
    pi = err.error.payment_intent
    assert pi is not None and pi.status == "requires_payment_method"
    assert pi.last_payment_error is not None and pi.last_payment_error.decline_code == decline_code
    assert [p["status"] for p in standins.payment_intents()] == ["requires_payment_method"]


def test_confirm_later_and_unknown_objects(sc: stripe.StripeClient) -> None:
    unconfirmed: Any = {**PI, "confirm": False}
    pi = sc.v1.payment_intents.create(params=unconfirmed)
    assert pi.status == "requires_payment_method"
    pi = sc.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    assert pi.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.payment_intents.retrieve("pi_nope")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError, match="No such PaymentMethod"):
        charge(sc, payment_method="pm_bogus")


def test_return_url_needed_when_redirects_are_possible(sc: stripe.StripeClient) -> None:
    params = {k: v for k, v in PI.items() if k != "payment_method_types"}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        charge(sc, **{**params, "payment_method_types": None})
    assert caught.value.param == "return_url"
    no_redirects = {"enabled": True, "allow_redirects": "never"}
    assert charge(sc, payment_method_types=None, automatic_payment_methods=no_redirects).status == "succeeded"


def test_idempotent_replay(sc: stripe.StripeClient, standins: StandIns) -> None:
    first, again = charge(sc, key="k-1"), charge(sc, key="k-1")
    assert again.id == first.id and again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert [pi.id for pi in sc.v1.payment_intents.list().data] == [first.id]
    with pytest.raises(stripe.IdempotencyError) as caught:
        charge(sc, key="k-1", amount=999)
    assert caught.value.http_status == 400


def test_declines_are_replayed_too(sc: stripe.StripeClient, standins: StandIns) -> None:
    codes = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as caught:
            charge(sc, key="k-declined", payment_method="pm_card_chargeDeclined")
        codes.append((caught.value.code, (caught.value.headers or {}).get("Idempotent-Replayed")))
    assert codes == [("card_declined", None), ("card_declined", "true")]
    assert len(standins.payment_intents()) == 1


def test_concurrent_request_with_same_key_is_409(sc: stripe.StripeClient, standins: StandIns) -> None:
    standins.stripe_faults("hang", 1, seconds=1.5)
    results: list[stripe.PaymentIntent] = []
    first = threading.Thread(target=lambda: results.append(charge(sc, key="k-busy")))
    first.start()
    # The second request goes out while the first is in flight: arrived at Stripe, not answered yet.
    wait_until(lambda: [r for r in standins.stripe_requests() if r["idempotency_key"] == "k-busy"
                        and r.get("status") is None], what="the first request to be in flight")
    with pytest.raises(stripe.APIError) as caught:
        charge(sc, key="k-busy")
    first.join()
    assert caught.value.http_status == 409 and caught.value.error.type == "idempotency_error"  # type: ignore[union-attr]
    assert charge(sc, key="k-busy").id == results[0].id


def test_list_and_search(sc: stripe.StripeClient) -> None:
    ids = [charge(sc, metadata={"saga_id": f"s-{i}"}).id for i in range(3)]
    page = sc.v1.payment_intents.list(params={"limit": 2})
    assert [pi.id for pi in page.data] == ids[:0:-1] and page.has_more
    assert [pi.id for pi in page.auto_paging_iter()] == ids[::-1]
    found = sc.v1.payment_intents.search(params={"query": "metadata['saga_id']:'s-1'"})
    assert [pi.id for pi in found.data] == [ids[1]]
    both = sc.v1.payment_intents.search(params={"query": "status:'succeeded' AND metadata['saga_id']:'s-2'"})
    assert [pi.id for pi in both.data] == [ids[2]]


def test_refunds(sc: stripe.StripeClient, standins: StandIns) -> None:
    pi = charge(sc)
    part = sc.v1.refunds.create(params={"payment_intent": pi.id, "amount": 200, "metadata": {"saga_id": "s"}})
    rest = sc.v1.refunds.create(params={"payment_intent": pi.id})
    assert (part.object, part.status, part.amount, rest.amount) == ("refund", "succeeded", 200, 1000)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.refunds.create(params={"payment_intent": pi.id})
    assert caught.value.code == "charge_already_refunded"
    assert [r.id for r in sc.v1.refunds.list(params={"payment_intent": pi.id}).data] == [rest.id, part.id]
    with pytest.raises(stripe.CardError):
        charge(sc, payment_method="pm_card_chargeDeclined")
    declined = standins.payment_intents()[-1]["id"]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.refunds.create(params={"payment_intent": declined})
    assert caught.value.http_status == 400
    assert len(standins.refunds()) == 2


def test_authentication(sc: stripe.StripeClient, standins: StandIns) -> None:
    with pytest.raises(stripe.AuthenticationError):
        client(standins, key="sk_live_nope").v1.payment_intents.list()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(standins.stripe_api_base + "/v1/payment_intents", timeout=5)
    assert caught.value.code == 401 and "error" in json.load(caught.value)


def test_rate_limits_are_not_kept_for_a_key_but_server_errors_are(sc: stripe.StripeClient, standins: StandIns) -> None:
    standins.stripe_faults("429", 1)
    with pytest.raises(stripe.RateLimitError):
        charge(sc, key="k-429")
    assert charge(sc, key="k-429").status == "succeeded", "the rate limiter answers before the idempotency layer"
    standins.stripe_faults("500", 1)
    with pytest.raises(stripe.APIError) as caught:
        charge(sc, key="k-500")
    assert caught.value.http_status == 500
    with pytest.raises(stripe.APIError) as again:
        charge(sc, key="k-500")
    assert (again.value.headers or {}).get("Idempotent-Replayed") == "true", "Stripe replays a 500 it kept"
    assert [p["amount"] for p in standins.payment_intents()] == [1200], "only the 429's retry charged"
    assert charge(sc, key="k-500-next").status == "succeeded"


def test_the_sdk_does_not_retry_a_500_stripe_keeps(standins: StandIns) -> None:
    standins.stripe_reset()
    standins.stripe_faults("500", 1)
    with pytest.raises(stripe.APIError):
        charge(client(standins, retries=2), key="k-500-kept")
    assert [(r["status"], r["replayed"]) for r in standins.stripe_requests()] == [(500, False)], (
        "Stripe-Should-Retry: false tells the SDK that a retry would only replay the 500")


def test_a_lost_answer_charges_then_times_out(sc: stripe.StripeClient, standins: StandIns) -> None:
    standins.stripe_faults("lost", 1, seconds=3)
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        charge(client(standins, timeout=0.5), key="k-hang")
    assert time.monotonic() - started < 2
    assert len(standins.payment_intents()) == 1  # the charge happened although the client never heard
    again = charge(sc, key="k-hang")
    assert again.id == standins.payment_intents()[0]["id"] and again.status == "succeeded"
    assert len(standins.payment_intents()) == 1


def test_sdk_retry_after_a_timeout_gets_the_first_charge(standins: StandIns) -> None:
    standins.stripe_reset()
    standins.stripe_faults("lost", 1, seconds=3)
    pi = charge(client(standins, timeout=0.5, retries=1))  # the SDK makes up one key and reuses it
    assert [p["id"] for p in standins.payment_intents()] == [pi.id]
    assert [r["replayed"] for r in standins.stripe_requests()] == [False, True]


def unconfirmed(sc: stripe.StripeClient) -> stripe.PaymentIntent:
    return sc.v1.payment_intents.create(params={**PI, "confirm": False, "payment_method": "pm_card_visa"})  # type: ignore[arg-type]


def test_a_fault_can_target_one_operation(sc: stripe.StripeClient, standins: StandIns) -> None:
    standins.stripe_faults("500", 1, operation="confirm")
    pi = unconfirmed(sc)  # the create is not the confirm: it goes through
    assert pi.status == "requires_confirmation"
    with pytest.raises(stripe.APIError):
        sc.v1.payment_intents.confirm(pi.id)
    assert sc.v1.payment_intents.confirm(pi.id).status == "succeeded"
    standins.stripe_faults("400", 1, operation="refund", code="balance_insufficient")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.refunds.create(params={"payment_intent": pi.id})
    assert caught.value.code == "balance_insufficient"
    assert sc.v1.refunds.create(params={"payment_intent": pi.id}).status == "succeeded"
    assert [r["operation"] for r in standins.stripe_requests()] == ["create", "confirm", "confirm", "refund", "refund"]


def test_a_hanging_confirm_completes_after_the_client_gave_up_and_locks_the_intent_meanwhile(
    sc: stripe.StripeClient, standins: StandIns,
) -> None:
    pi = unconfirmed(sc)
    standins.stripe_faults("hang", 1, seconds=2, operation="confirm")
    with pytest.raises(stripe.APIConnectionError):
        client(standins, timeout=0.5).v1.payment_intents.confirm(pi.id, options={"idempotency_key": "k-confirm"})
    assert sc.v1.payment_intents.retrieve(pi.id).status == "requires_confirmation", "not done yet"
    with pytest.raises(stripe.RateLimitError) as caught:
        sc.v1.payment_intents.cancel(pi.id)
    assert caught.value.error is not None and caught.value.error.code == "lock_timeout"
    with pytest.raises(stripe.APIError) as busy:  # the SDK reports Stripe's 409 as an APIError
        sc.v1.payment_intents.confirm(pi.id, options={"idempotency_key": "k-confirm"})
    assert busy.value.http_status == 409

    def confirmed() -> bool:
        return any(r["operation"] == "confirm" and r.get("status") == 200 for r in standins.stripe_requests())

    wait_until(confirmed, timeout=10, what="the hanging confirm to go through")
    assert sc.v1.payment_intents.retrieve(pi.id).status == "succeeded", "it went through though nobody heard"
    assert [c["status"] for c in standins.charges()] == ["succeeded"]


def test_cancel_and_confirm_refuse_the_states_stripe_refuses(sc: stripe.StripeClient, standins: StandIns) -> None:
    done = charge(sc)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.payment_intents.cancel(done.id)
    assert caught.value.code == "payment_intent_unexpected_state"
    canceled = sc.v1.payment_intents.cancel(unconfirmed(sc).id, params={"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and canceled.cancellation_reason == "abandoned"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.payment_intents.confirm(canceled.id)
    assert caught.value.code == "payment_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sc.v1.payment_intents.cancel(canceled.id)
    assert caught.value.code == "payment_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError):
        sc.v1.payment_intents.cancel(unconfirmed(sc).id, params={"cancellation_reason": "bored"})


def test_idempotency_keys_expire_as_after_24_hours(sc: stripe.StripeClient, standins: StandIns) -> None:
    first = charge(sc, key="k-day-old")
    assert charge(sc, key="k-day-old").id == first.id
    assert standins.stripe_expire_keys() >= 1
    again = charge(sc, key="k-day-old")
    assert again.id != first.id, "an expired key is a new request: it charges again"
    assert len(standins.payment_intents()) == 2


@pytest.mark.parametrize("currency, amount, ok", [("usd", 49, False), ("usd", 50, True), ("huf", 17499, False),
                                                  ("jpy", 50, True), ("gbp", 30, True)])
def test_the_minimum_charge_depends_on_the_currency(
    sc: stripe.StripeClient, currency: str, amount: int, ok: bool,
) -> None:
    if ok:
        assert charge(sc, currency=currency, amount=amount).status == "succeeded"
        return
    with pytest.raises(stripe.InvalidRequestError) as caught:
        charge(sc, currency=currency, amount=amount)
    assert caught.value.code == "amount_too_small"


def test_state_survives_a_restart(sc: stripe.StripeClient, standins: StandIns) -> None:
    pi = charge(sc, key="k-kept")
    port = free_port()
    state = standins.data_dir / "stripe-state.jsonl"
    proc = Process.spawn("stripe-restarted", [sys.executable, "-m", "standins.stripe_server", "--port",
                                              str(port), "--state", str(state)], {}, standins.data_dir)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                with urllib.request.urlopen(base + "/_control/state", timeout=1) as r:
                    kept = json.load(r)
                break
            except OSError:
                time.sleep(0.05)
        assert [p["id"] for p in kept["payment_intents"]] == [pi.id] and "k-kept" in kept["idempotency_keys"]
        replayed = stripe.StripeClient("sk_test_x", base_addresses={"api": base}, max_network_retries=0)
        assert charge(replayed, key="k-kept").id == pi.id
    finally:
        proc.stop()


# S3


def test_s3_bucket(standins: StandIns) -> None:
    s3 = boto3.client("s3", endpoint_url=standins.s3_endpoint_url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="x")
    key = f"logos/{uuid.uuid4()}.png"
    s3.put_object(Bucket=standins.bucket, Key=key, Body=b"\x89PNG...", ContentType="image/png")
    assert key in standins.s3_keys()
    assert s3.get_object(Bucket=standins.bucket, Key=key)["Body"].read() == b"\x89PNG..."
    s3.delete_object(Bucket=standins.bucket, Key=key)
    assert key not in standins.s3_keys()


def test_s3_counts_every_upload_though_a_second_one_overwrites(standins: StandIns) -> None:
    """A listing shows one object for two uploads under one key; the stand-in's request log shows both."""
    s3 = boto3.client("s3", endpoint_url=standins.s3_endpoint_url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="x")
    key = f"logos/{uuid.uuid4()}.png"
    for body in (b"\x89PNG one", b"\x89PNG two"):
        s3.put_object(Bucket=standins.bucket, Key=key, Body=body, ContentType="image/png")
    s3.get_object(Bucket=standins.bucket, Key=key)
    assert [k for k in standins.s3_keys() if k == key] == [key]
    puts = standins.s3_puts(key)
    assert [(p["operation"], p["bucket"], p["key"], p["status"]) for p in puts] == [
        ("PutObject", standins.bucket, key, 200)] * 2
    assert puts[0]["at"] <= puts[0]["done_at"] <= puts[1]["at"]
    assert [r["operation"] for r in standins.s3_requests() if r["key"] == key] == [
        "PutObject", "PutObject", "GetObject"]


# Email


def send(standins: StandIns, message_id: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "jobs@example.com", "hr@acme.test", "Your job is posted"
    msg["Message-ID"] = message_id
    msg.set_content("Thanks!")
    with smtplib.SMTP(standins.smtp_host, standins.smtp_port, timeout=5) as smtp:
        smtp.send_message(msg)


def test_smtp_sink_keeps_messages(standins: StandIns) -> None:
    send(standins, "<s-1.notify@example.com>")
    [msg] = [m for m in read_messages(standins.maildir) if m["Message-ID"] == "<s-1.notify@example.com>"]
    assert (msg["To"], msg["Subject"], msg["X-Envelope-To"]) == ("hr@acme.test", "Your job is posted",
                                                                 "hr@acme.test")
    assert msg.get_content().strip() == "Thanks!"


def test_smtp_sink_keeps_every_delivery_of_one_message_id(standins: StandIns) -> None:
    message_id = f"<{uuid.uuid4()}.notify@example.com>"
    before = time.time()
    send(standins, message_id)
    send(standins, message_id)
    got = standins.deliveries(message_id)
    assert [mid for mid, _ in got] == [message_id] * 2
    assert before <= got[0][1] <= got[1][1] <= time.time()


def test_headers_are_read_as_sent(standins: StandIns) -> None:
    """An EmailMessage would cut this Message-ID to "<s-2" when sending (':' is not allowed in one);
    sent raw, the sink must show it whole."""
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <s-2:notify@example.com>\r\n\r\nhi\r\n"
    with smtplib.SMTP(standins.smtp_host, standins.smtp_port, timeout=5) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], raw)
    assert "<s-2:notify@example.com>" in [m["Message-ID"] for m in standins.messages()]


def test_smtp_down_and_back(standins: StandIns) -> None:
    standins.stop_smtp()
    with pytest.raises(ConnectionRefusedError):
        send(standins, "<lost@example.com>")
    standins.start_smtp()
    send(standins, "<back@example.com>")
    ids = [m["Message-ID"] for m in standins.messages()]
    assert "<back@example.com>" in ids and "<lost@example.com>" not in ids


def test_read_messages_of_nothing(tmp_path: Path) -> None:
    assert read_messages(tmp_path / "absent") == []
