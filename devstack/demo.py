"""The demo `make run` plays once its stack is up: a client of the HTTP API posts three jobs and sees each to its
end, then the evidence of what every third party holds is printed beside what the ledger says.

- Initech's card goes through: the posting completes.
- Globex's card is declined: its saga waits for another; the client sends one (`POST /v1/sagas/{id}/input`) and the
  saga completes, charging the same PaymentIntent.
- Umbrella's card is declined too, and its client gives up (`POST /v1/sagas/{id}/cancel`): everything is undone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from saga import db
from saga.cli import render
from saga.client import SagaClient
from saga.models import Saga
from saga.states import FINAL, SagaStatus
from standins import StandIns

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEW_CARD = {"payment_method": "pm_card_visa"}


@dataclass
class Posting:
    """One of the demo's jobs: its input, what its client does when the saga waits for input, and its saga."""

    company: str
    input: dict[str, Any]
    on_wait: Callable[[SagaClient, str], Any] | None = None
    saga: Saga | None = None


def postings() -> list[Posting]:
    posted = json.loads((EXAMPLES / "job_posting.json").read_text())
    declined = json.loads((EXAMPLES / "job_posting_declined.json").read_text())
    umbrella = {**declined, "company": "Umbrella", "contact_email": "jobs@umbrella.example"}
    return [
        Posting("Initech", posted),
        Posting("Globex", declined,
                lambda client, saga_id: client.provide_input(saga_id, NEW_CARD, idempotency_key=f"card-{saga_id}")),
        Posting("Umbrella", umbrella, lambda client, saga_id: client.cancel(saga_id)),
    ]


def play(api_url: str, api_key: str, standins: StandIns, say: Callable[[str], None], timeout: float = 120) -> None:
    """Post the three jobs through the API, print each saga's steps whenever they move, answer the waits as the
    clients would, and print the evidence once all three ended."""
    jobs = postings()
    say("Demo: three job postings, played as a client of the HTTP API would.\n"
        "  Initech's card goes through. Globex's is declined; its saga waits, the client sends another card,\n"
        "  and the same PaymentIntent is charged. Umbrella's is declined too; its client cancels, and\n"
        "  everything its saga did is undone.\n")
    with SagaClient(api_url, api_key) as client:
        for job in jobs:
            job.saga = client.start("job_posting", job.input, idempotency_key=f"demo-{job.company}-{time.time_ns()}").saga
        shown: dict[str, str] = {}
        answered: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            for job in jobs:
                assert job.saga is not None
                job.saga = client.get(job.saga.id)
                view = f"{job.company}: " + render(job.saga.model_dump(mode="json"))
                if shown.get(job.saga.id) != view:
                    say(view + "\n")
                    shown[job.saga.id] = view
                if job.saga.status == SagaStatus.AWAITING_INPUT and job.on_wait and job.saga.id not in answered:
                    answered.add(job.saga.id)
                    action = "sends another card" if job.company == "Globex" else "cancels"
                    say(f"{job.company}'s client {action}.\n")
                    job.on_wait(client, job.saga.id)
            if all(job.saga is not None and job.saga.status in FINAL for job in jobs):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo's sagas did not end within {timeout:.0f} s")
            time.sleep(0.3)
    say("What the third parties and the database hold now:")
    for line in evidence(jobs, standins):
        say(line)


def evidence(jobs: list[Posting], standins: StandIns) -> list[str]:
    """One line per posting: its saga's status, then the logo in S3, the posting row, the PaymentIntents at Stripe
    and the receipts in the mailbox that carry its saga id (each read from the third party's own records)."""
    keys, intents, mails = standins.s3_keys(), standins.payment_intents(), standins.messages()
    lines = []
    for job in jobs:
        assert job.saga is not None
        sid = job.saga.id
        logos = [k for k in keys if sid in k]
        charges = [f"{pi['id']} {pi['status']}" for pi in intents if pi.get("metadata", {}).get("saga_id") == sid]
        receipts = [m["Message-ID"].strip() for m in mails if sid in (m["Message-ID"] or "")]
        lines.append(f"  {job.company:<9} {job.saga.status:<12} logo {', '.join(logos) or 'none'}; "
                     f"posting {posting_status(sid) or 'none'}; stripe {', '.join(charges) or 'none'}; "
                     f"receipt {', '.join(receipts) or 'none'}")
    return lines


def posting_status(saga_id: str) -> str | None:
    with db.transaction() as conn:
        return conn.execute(text("SELECT status FROM job_postings WHERE saga_id = :s"), {"s": saga_id}).scalar()
