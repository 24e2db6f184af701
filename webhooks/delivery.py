"""Delivering one endpoint's due events: the `webhooks.deliver` task, on the `webhooks` queue.

One task at a time holds an endpoint (a lease with a fencing token, as a step's claim): it takes the first
undelivered event of each saga that is due, signs it with every live secret of the endpoint (Standard Webhooks,
with `standardwebhooks`), posts it to the address it checked, and records the outcome under its token. A 2xx
delivers it; 410 disables the endpoint; anything else (an error, a timeout, another status) is retried later with
exponential backoff and jitter, until the endpoint has failed it for `give_up_after` seconds: then the event is
failed (kept for replay) and the endpoint disabled. A worker that dies mid-delivery leaves the event pending: its
next owner sends it again (at least once; the `webhook-id` is the same every time).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prometheus_client import Counter
from sqlalchemy import text
from standardwebhooks import Webhook

from saga import db
from webhooks import addresses, events
from webhooks.dispatcher import TASK
from webhooks.settings import webhook_settings
from workers.app import app

log = logging.getLogger("webhooks.delivery")
# httpx logs every request's URL at INFO, and a receiver's URL may carry a token of its own: not in our logs.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Events one look at an endpoint takes at most (each saga's first due one).
BATCH = 20
# Failures in a row after which a run stops: the receiver looks down, and each event waits out its own backoff.
FAILURES_IN_A_ROW = 3
USER_AGENT = "saga-webhooks/1"

DELIVERIES = Counter("saga_webhook_deliveries_total", "Webhook delivery attempts by endpoint and outcome: delivered "
                     "(2xx), retried (another answer, an error or a timeout), failed (given up, endpoint disabled), "
                     "gone (410: endpoint disabled), refused (its host now resolves where webhooks may not go).",
                     ["endpoint", "outcome"])


@dataclass(frozen=True)
class Outcome:
    """One attempt: the receiver's status code (None if it never answered) and what went wrong, if anything."""

    status_code: int | None
    error: str | None
    ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


# Take the endpoint for this task, unless another holds it; its URL and live secrets come with it.
_CLAIM = text("""
UPDATE webhook_endpoints SET lease_until = now() + make_interval(secs => :lease), lease_token = lease_token + 1,
    dispatched_at = NULL
WHERE id = :id AND enabled AND coalesce(lease_until, '-infinity') < now()
RETURNING lease_token, url,
    ARRAY(SELECT s ->> 'secret' FROM jsonb_array_elements(secrets) s
          WHERE s ->> 'expires_at' IS NULL OR CAST(s ->> 'expires_at' AS timestamptz) > now()) AS secrets
""")
# Each saga's first undelivered event, when it is due: a saga's later event waits for its earlier ones.
_DUE = text("""
SELECT d.id, d.event_id, d.saga_id, d.type, d.payload, d.attempts
FROM webhook_deliveries d
WHERE d.endpoint_id = :id AND d.status = 'pending' AND d.next_attempt_at <= now()
    AND NOT EXISTS (SELECT FROM webhook_deliveries p WHERE p.endpoint_id = :id AND p.saga_id = d.saga_id
                    AND p.event_id < d.event_id AND p.status <> 'delivered')
ORDER BY d.next_attempt_at, d.event_id
LIMIT :limit
""")
# The body is made once, at the first attempt, and kept: every retry sends the same bytes.
_KEEP_PAYLOAD = text("""
UPDATE webhook_deliveries SET payload = :payload, first_attempt_at = coalesce(first_attempt_at, now())
WHERE id = :delivery AND payload IS NULL
    AND EXISTS (SELECT FROM webhook_endpoints WHERE id = :id AND lease_token = :token)
""")
# The attempt's outcome, under the task's token (a task whose lease was taken over records nothing): the delivery
# delivered, retried after its backoff, or failed once it has failed for `give_up` seconds; the endpoint disabled
# on a 410 or a give-up, and its lease extended for the next attempt.
_RECORD = text("""
WITH d0 AS (
    SELECT id, coalesce(first_attempt_at, now()) + make_interval(secs => :give_up) <= now() AS expired
    FROM webhook_deliveries WHERE id = :delivery AND status = 'pending'
), lease AS (
    UPDATE webhook_endpoints w SET lease_until = now() + make_interval(secs => :lease),
        enabled = w.enabled AND NOT (:gone OR (NOT :ok AND d0.expired)),
        disabled_reason = CASE WHEN :gone THEN 'the receiver answered 410 Gone'
                               WHEN NOT :ok AND d0.expired THEN CAST(:gave_up AS text)
                               ELSE w.disabled_reason END,
        updated_at = CASE WHEN :gone OR (NOT :ok AND d0.expired) THEN now() ELSE w.updated_at END
    FROM d0 WHERE w.id = :id AND w.lease_token = :token
    RETURNING d0.expired
), d AS (
    UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = :code, last_error = :error,
        first_attempt_at = coalesce(first_attempt_at, now()),
        status = CASE WHEN :ok THEN 'delivered' WHEN NOT :gone AND lease.expired THEN 'failed' ELSE 'pending' END,
        delivered_at = CASE WHEN :ok THEN now() END,
        next_attempt_at = now() + make_interval(secs => :retry_in)
    FROM lease WHERE id = :delivery
    RETURNING status
), a AS (
    INSERT INTO webhook_attempts (delivery_id, endpoint_id, status_code, error, duration_ms)
    SELECT :delivery, :id, :code, :error, :ms FROM d
)
SELECT status FROM d
""")
# The task is done with the endpoint: the next one may take it at once.
_RELEASE = text("""
UPDATE webhook_endpoints SET lease_until = NULL WHERE id = :id AND lease_token = :token
""")


@app.task(name=TASK, acks_late=True, ignore_result=True)
def deliver(endpoint_id: str) -> None:
    """Deliver what is due of one endpoint's events, for up to `run_seconds`."""
    settings = webhook_settings()
    endpoint = UUID(endpoint_id)
    # Each attempt's record extends the lease by as much: past the next attempt's timeout, with room to spare. A task
    # that died holds its endpoint no longer than that.
    lease = 2 * settings.timeout + 10
    with db.autocommit() as conn:
        claimed = conn.execute(_CLAIM, {"id": endpoint, "lease": lease}).mappings().first()
    if claimed is None:
        return  # disabled, deleted, or another task is on it
    token, url = claimed["lease_token"], claimed["url"]
    signers = [Webhook(secret) for secret in claimed["secrets"]]
    until = time.monotonic() + settings.run_seconds
    failures = 0
    try:
        with httpx.Client(timeout=settings.timeout, follow_redirects=False) as client:
            while time.monotonic() < until and failures < FAILURES_IN_A_ROW:
                with db.autocommit() as conn:
                    due = conn.execute(_DUE, {"id": endpoint, "limit": BATCH}).mappings().all()
                if not due:
                    return
                for delivery in due:
                    outcome = _attempt(client, endpoint, token, url, signers, delivery)
                    status = _record(endpoint, token, delivery, outcome, lease)
                    if status is None:
                        return  # the lease was taken over (this task was too slow): the new holder goes on
                    DELIVERIES.labels(endpoint_id, _outcome(outcome, status)).inc()
                    if outcome.gone or status == "failed":
                        log.warning("webhook endpoint %s disabled: %s", endpoint_id,
                                    "410 Gone" if outcome.gone else "failing for too long")
                        return
                    failures = 0 if outcome.delivered else failures + 1
                    if failures >= FAILURES_IN_A_ROW or time.monotonic() >= until:
                        break
    finally:
        with db.autocommit() as conn:
            conn.execute(_RELEASE, {"id": endpoint, "token": token})


def _attempt(client: httpx.Client, endpoint: UUID, token: int, url: str, signers: list[Webhook],
             delivery: Any) -> Outcome:
    """Sign and post one event (its body made and kept first, if this is its first attempt)."""
    started = time.perf_counter()
    body = delivery["payload"]
    if body is None:
        with db.transaction() as conn:
            body = events.payload(conn, delivery["event_id"], delivery["saga_id"], delivery["type"])
            conn.execute(_KEEP_PAYLOAD, {"payload": body, "delivery": delivery["id"], "id": endpoint, "token": token})
    try:
        target = addresses.check(url)
    except addresses.RefusedURL as exc:
        return Outcome(None, f"refused: {exc}", _ms(started))
    webhook_id = events.webhook_id(delivery["event_id"])
    now = datetime.now(UTC)
    headers = {
        "webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
        # One signature per live secret: a receiver that has either the new or the rotated-out one verifies.
        "webhook-signature": " ".join(signer.sign(webhook_id, now, body) for signer in signers),
        "content-type": "application/json", "user-agent": USER_AGENT, "host": target.host_header,
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        request = client.build_request("POST", target.connect_url, content=body.encode(), headers=headers,
                                       extensions=extensions)
        response = client.send(request, stream=True)
        try:
            _read_at_most(response, webhook_settings().max_response_bytes)
        finally:
            response.close()
        return Outcome(response.status_code, None if response.is_success else f"HTTP {response.status_code}",
                       _ms(started))
    except httpx.TimeoutException:
        return Outcome(None, f"no answer within {webhook_settings().timeout:g}s", _ms(started))
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {_first_line(exc)}", _ms(started))


def _read_at_most(response: httpx.Response, cap: int) -> None:
    """Read up to `cap` bytes of the answer and no more (a receiver cannot make a delivery download a file)."""
    read = 0
    for chunk in response.iter_raw():
        read += len(chunk)
        if read >= cap:
            break


def _record(endpoint: UUID, token: int, delivery: Any, outcome: Outcome, lease: float) -> str | None:
    """Record the attempt; the delivery's status after it, or None if this task no longer holds the endpoint."""
    settings = webhook_settings()
    params = {
        "id": endpoint, "token": token, "delivery": delivery["id"], "ok": outcome.delivered, "gone": outcome.gone,
        "code": outcome.status_code, "error": outcome.error, "ms": outcome.ms, "lease": lease,
        "give_up": settings.give_up_after, "retry_in": backoff(delivery["attempts"], settings.retry_base, settings.retry_max),
        "gave_up": f"every delivery failed for {settings.give_up_after:g}s; last: {outcome.error}",
    }
    with db.autocommit() as conn:
        row = conn.execute(_RECORD, params).first()
    return row[0] if row else None


def backoff(made: int, base: float, most: float) -> float:
    """Seconds before the next attempt after `made` attempts before this one: doubling from `base`, at most
    `most`, and 50-100% of that at random, so the retries of many events spread out."""
    return min(most, base * 2 ** min(made, 64)) * random.uniform(0.5, 1.0)


def _outcome(outcome: Outcome, status: str) -> str:
    if outcome.delivered:
        return "delivered"
    if outcome.gone:
        return "gone"
    if status == "failed":
        return "failed"
    return "refused" if (outcome.error or "").startswith("refused") else "retried"


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
