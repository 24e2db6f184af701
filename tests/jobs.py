"""Job-posting inputs, and the third parties' own records of what a job-posting saga did.

Every effect is counted once per execution, never as a set: each PutObject the S3 stand-in served, each
delivery the mail sink accepted, each charge, cancel and refund call the Stripe stand-in received. The ledger
says when each attempt of a step began, so every effect is attributed to the attempt that was running when the
third party took it: an attempt that made its effect twice shows, though an overwrite or a fixed Message-ID
makes the two look like one.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import text

import saga
from saga import db
from standins import StandIns

# The smallest valid PNG: 1x1 transparent pixel.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
FINAL = ("completed", "compensated", "paused", "failed")
# The Stripe calls each step makes, by the stand-in's operation names: at most one of each per attempt.
CHARGE_CALLS = ("create", "confirm")
UNDO_CHARGE_CALLS = ("cancel", "refund")


def posting(**changes: Any) -> dict[str, Any]:
    data = {
        "company": "Acme", "title": "Rocket engineer", "description": "Build rockets.",
        "contact_email": "hr@acme.example", "logo": base64.b64encode(PNG).decode(), "amount_cents": 4900,
        "currency": "usd", "payment_method": "pm_card_visa",
    }
    return data | changes


def submit(**changes: Any) -> UUID:
    return saga.start("job_posting", posting(**changes), idempotency_key=str(uuid4())).saga.id


def attempt_starts(saga_id: UUID, step: str, kind: str = "step_started") -> list[float]:
    """When each attempt of `step` began (its claim, from the ledger's log), oldest first; `kind`
    "compensation_started" for the attempts of its compensation."""
    return sorted(e.created_at.timestamp() for e in saga.events(saga_id) if e.kind == kind and e.step == step)


def per_attempt(effects_at: Iterable[float], starts: list[float]) -> Counter[int]:
    """How many effects fell to each attempt (1 for the first), by when the third party took them: an effect
    belongs to the latest attempt begun before it; 0 counts effects from before any attempt began."""
    return Counter(sum(start <= at for start in starts) for at in effects_at)


def beyond_one_per_attempt(effects_at: Iterable[float], starts: list[float]) -> int:
    """How many of the effects are more than one per attempt (or came before any attempt began)."""
    counts = per_attempt(effects_at, starts)
    return counts[0] + sum(n - 1 for attempt, n in counts.items() if attempt and n > 1)


def third_party_records(standins: StandIns, saga_id: UUID) -> dict[str, Any]:
    """What S3, the posting table, Stripe and the mail sink hold for one saga, and every call each of them took
    for it (one entry per execution)."""
    intents = [pi for pi in standins.payment_intents() if pi.get("metadata", {}).get("saga_id") == str(saga_id)]
    ids = {pi["id"] for pi in intents}
    refunds = [r for r in standins.refunds() if r.get("payment_intent") in ids]
    with db.transaction() as conn:
        postings = [dict(r._mapping) for r in conn.execute(
            text("SELECT id, status, logo_key FROM job_postings WHERE saga_id = :s"), {"s": saga_id})]
    # Every write the product sends Stripe carries an idempotency key that starts with the saga id.
    calls = [r for r in standins.stripe_requests() if r["method"] == "POST" and str(saga_id) in
             (r.get("idempotency_key") or "")]
    return {
        "objects": [k for k in standins.s3_keys() if str(saga_id) in k],
        "uploads": [r["at"] for r in standins.s3_puts(str(saga_id))],
        "postings": postings,
        "charged": [pi for pi in intents if pi["status"] == "succeeded"],
        "charges": [c for c in standins.charges() if c.get("payment_intent") in ids],
        "refunded": sum(r["amount"] for r in refunds if r.get("status") == "succeeded"),
        "stripe_calls": calls,
        "receipts": standins.deliveries(str(saga_id)),
        # Every delivery's Message-ID (a receipt sent twice is here twice).
        "message_ids": [mid for mid, _ in standins.deliveries(str(saga_id))],
    }


def assert_once_per_attempt(saga_id: UUID, step: str, what: str, effects_at: list[float],
                            kind: str = "step_started") -> None:
    """No attempt of `step` made `what` more than once, and none came before the step's first attempt."""
    counts = per_attempt(effects_at, attempt_starts(saga_id, step, kind))
    assert counts[0] == 0, f"{what} for saga {saga_id} before any attempt of {step}: {counts}"
    twice = {n: c for n, c in counts.items() if c > 1}
    assert not twice, f"{step} made {what} more than once in one attempt (attempt: times) {twice}"


def assert_clean_end(standins: StandIns, saga_id: UUID, status: str) -> None:
    """I2-I5 for a finished job-posting saga, from the third parties' own records of every call."""
    got = third_party_records(standins, saga_id)
    assert_once_per_attempt(saga_id, "upload_logo", "an upload", got["uploads"])
    assert_once_per_attempt(saga_id, "send_confirmation", "a receipt", [at for _, at in got["receipts"]])
    for operation in CHARGE_CALLS:
        assert_once_per_attempt(saga_id, "charge_payment", f"a Stripe {operation}",
                                [c["at"] for c in got["stripe_calls"] if c["operation"] == operation])
    for operation in UNDO_CHARGE_CALLS:
        assert_once_per_attempt(saga_id, "charge_payment", f"a Stripe {operation}",
                                [c["at"] for c in got["stripe_calls"] if c["operation"] == operation],
                                kind="compensation_started")
    succeeded = [c for c in got["charges"] if c.get("status") == "succeeded"]
    if status == "completed":
        assert len(got["objects"]) == 1 and got["uploads"], got
        assert [p["status"] for p in got["postings"]] == ["live"]
        assert len(got["charged"]) == 1 and len(succeeded) == 1 and got["refunded"] == 0, got
        assert got["receipts"], f"no receipt for saga {saga_id}"
        assert len(set(got["message_ids"])) == 1, got["message_ids"]
    elif status == "compensated":
        assert got["objects"] == [] and got["postings"] == []
        charged = sum(pi["amount"] for pi in got["charged"])
        assert charged == got["refunded"], f"net charge {charged - got['refunded']}"
        assert got["receipts"] == []
    else:
        raise AssertionError(f"saga {saga_id} ended {status}")
