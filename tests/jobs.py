"""Job-posting inputs, and the third parties' own records of what a job-posting saga did."""

from __future__ import annotations

import base64
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


def posting(**changes: Any) -> dict[str, Any]:
    data = {
        "company": "Acme", "title": "Rocket engineer", "description": "Build rockets.",
        "contact_email": "hr@acme.example", "logo": base64.b64encode(PNG).decode(), "amount_cents": 4900,
        "currency": "usd", "payment_method": "pm_card_visa",
    }
    return data | changes


def submit(**changes: Any) -> UUID:
    return saga.start("job_posting", posting(**changes), idempotency_key=str(uuid4())).saga.id


def third_party_records(standins: StandIns, saga_id: UUID) -> dict[str, Any]:
    """What S3, the posting table, Stripe and the mail sink hold for one saga."""
    intents = [pi for pi in standins.payment_intents() if pi.get("metadata", {}).get("saga_id") == str(saga_id)]
    ids = {pi["id"] for pi in intents}
    refunds = [r for r in standins.refunds() if r.get("payment_intent") in ids]
    with db.transaction() as conn:
        postings = [dict(r._mapping) for r in conn.execute(
            text("SELECT id, status, logo_key FROM job_postings WHERE saga_id = :s"), {"s": saga_id})]
    return {
        "objects": [k for k in standins.s3_keys() if str(saga_id) in k],
        "postings": postings,
        "charged": [pi for pi in intents if pi["status"] == "succeeded"],
        "refunded": sum(r["amount"] for r in refunds if r.get("status") == "succeeded"),
        "message_ids": {m["Message-ID"] for m in standins.messages() if str(saga_id) in (m["Message-ID"] or "")},
    }


def assert_clean_end(standins: StandIns, saga_id: UUID, status: str) -> None:
    """I2-I5 for a finished job-posting saga, from the third parties' own records."""
    got = third_party_records(standins, saga_id)
    if status == "completed":
        assert len(got["objects"]) == 1, got["objects"]
        assert [p["status"] for p in got["postings"]] == ["live"]
        assert len(got["charged"]) == 1 and got["refunded"] == 0, got
        assert len(got["message_ids"]) == 1
    elif status == "compensated":
        assert got["objects"] == [] and got["postings"] == []
        charged = sum(pi["amount"] for pi in got["charged"])
        assert charged == got["refunded"], f"net charge {charged - got['refunded']}"
        assert got["message_ids"] == set()
    else:
        raise AssertionError(f"saga {saga_id} ended {status}")
