"""Driving job postings through the API as a client would, and checking invariants I1 to I5 of every one of them
against the ledger and the third parties' own records (S3, the Stripe stand-in, the mail sink)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import text

from saga import db
from saga.states import FINAL
from saga.testing import Stack, wait_until
from standins import StandIns
from tests.jobs import CHARGE_CALLS, UNDO_CHARGE_CALLS, beyond_one_per_attempt, posting

DECLINED = "pm_card_chargeDeclined"


@dataclass
class Submitted:
    """The sagas a client asked for, by idempotency key, and the id the API answered."""

    ids: dict[str, str] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)  # HTTP status of every try
    lock: threading.Lock = field(default_factory=threading.Lock)


def submit(client: httpx.Client, count: int, into: Submitted, *, declined_every: int = 5, pace: float = 0.0,
           deadline: float = 120.0) -> None:
    """Ask for `count` job postings (every `declined_every`-th with a card that is declined), each retried with
    its Idempotency-Key until the API accepts it: a 5xx or a lost connection is tried again, as clients do."""
    for n in range(count):
        key = f"fault-{uuid.uuid4()}"
        body = {"type": "job_posting", "input": posting(
            title=f"Engineer {n}", payment_method=DECLINED if declined_every and n % declined_every == 0
            else "pm_card_visa")}
        give_up = time.monotonic() + deadline
        while True:
            try:
                answer = client.post("/v1/sagas", json=body, headers={"Idempotency-Key": key}, timeout=10)
                with into.lock:
                    into.answers[answer.status_code] += 1
                if answer.status_code in (200, 202):
                    with into.lock:
                        into.ids[key] = answer.json()["id"]
                    break
                assert answer.status_code >= 500, answer.text  # the request itself is fine
            except httpx.TransportError:
                with into.lock:
                    into.answers[0] += 1
            if time.monotonic() > give_up:
                raise AssertionError(f"the API did not accept {key} within {deadline:.0f} s")
            time.sleep(0.2)
        if pace:
            time.sleep(random.uniform(0, 2 * pace))


def in_background(*args: Any, **kwargs: Any) -> threading.Thread:
    """`submit` in a thread; join it to learn it is done (its errors go to `errors`)."""
    errors: list[BaseException] = kwargs.pop("errors")

    def run() -> None:
        try:
            submit(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the test that joins
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def statuses(ids: Iterable[str]) -> dict[str, str]:
    with db.transaction() as conn:
        rows = conn.execute(text("SELECT id::text, status FROM sagas WHERE id = ANY(CAST(:ids AS uuid[]))"),
                            {"ids": list(ids)}).all()
    return dict(rows)  # type: ignore[arg-type]


def settled(ids: Iterable[str], timeout: float, supervise: Stack | None = None) -> dict[str, str]:
    """Every saga's final status, once all are final (or what they were when `timeout` ran out). With
    `supervise`, workers that exit by themselves meanwhile are started again, as a supervisor would."""
    ids = list(ids)

    def probe() -> dict[str, str] | None:
        if supervise is not None:
            for name in supervise.revive():
                print(f"\n  worker {name} exited by itself; started again", flush=True)
        s = statuses(ids)
        return s if len(s) == len(ids) and all(v in FINAL for v in s.values()) else None

    try:
        return wait_until(probe, timeout=timeout, interval=0.5, what="every saga to end")
    except TimeoutError:
        return statuses(ids)


def outcome(standins: StandIns, submitted: Submitted, timeout: float = 240,
            supervise: Stack | None = None) -> Counter[str]:
    """Once every saga ended (or `timeout` ran out): the counts of `tally`."""
    return tally(standins, submitted, settled(submitted.ids.values(), timeout, supervise))


def attempt_starts(ids: Iterable[str]) -> dict[tuple[str, str, str], list[float]]:
    """When each attempt began, by (saga id, step, event kind: step_started or compensation_started)."""
    starts: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with db.transaction() as conn:
        rows = conn.execute(text(
            "SELECT saga_id::text, step, kind, created_at FROM saga_events WHERE saga_id = ANY(CAST(:ids AS uuid[])) "
            "AND kind IN ('step_started', 'compensation_started') ORDER BY created_at"), {"ids": list(ids)}).all()
    for saga_id, step, kind, at in rows:
        starts[(saga_id, step, kind)].append(at.timestamp())
    return starts


def tally(standins: StandIns, submitted: Submitted, final: dict[str, str]) -> Counter[str]:
    """The counts every fault test prints: how sagas ended, and every broken promise (each must be 0).

    Effects are counted once per execution, from each third party's own log: every PutObject S3 served, every
    delivery the mail sink took, every charge, cancel and refund call Stripe received; "effects twice in one
    attempt" counts those an attempt of their step made more than once (by when the third party took them)."""
    counts: Counter[str] = Counter(submitted=len(submitted.ids))
    intents = standins.payment_intents()
    refunds = standins.refunds()
    keys = standins.s3_keys()
    deliveries = standins.deliveries()  # every delivery, not distinct ids
    puts = standins.s3_puts("logos/")
    calls = [r for r in standins.stripe_requests() if r["method"] == "POST" and r.get("idempotency_key")]
    starts = attempt_starts(submitted.ids.values())
    with db.transaction() as conn:
        postings = conn.execute(text(
            "SELECT saga_id::text, status, logo_key FROM job_postings WHERE saga_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": list(submitted.ids.values())}).all()
    by_saga: dict[str, list[Any]] = {}
    for row in postings:
        by_saga.setdefault(row[0], []).append(row)
    for saga_id in submitted.ids.values():
        status = final.get(saga_id)
        if status not in FINAL:
            counts["lost"] += 1
            continue
        counts[status] += 1
        mine = [pi for pi in intents if pi.get("metadata", {}).get("saga_id") == saga_id]
        charged = sum(pi["amount"] for pi in mine if pi["status"] == "succeeded")
        refunded = sum(r["amount"] for r in refunds if r.get("status") == "succeeded"
                       and r.get("payment_intent") in {pi["id"] for pi in mine})
        net = charged - refunded
        succeeded = [pi for pi in mine if pi["status"] == "succeeded"]
        objects = [k for k in keys if saga_id in k]
        rows = by_saga.get(saga_id, [])
        receipts = [at for mid, at in deliveries if saga_id in mid]
        sent = len(receipts)
        counts["duplicate charges"] += max(0, len(succeeded) - 1)
        counts["duplicate emails"] += max(0, sent - 1)
        counts["uploads"] += len(uploads := [p["at"] for p in puts if saga_id in p["key"]])
        twice = beyond_one_per_attempt(uploads, starts[(saga_id, "upload_logo", "step_started")])
        twice += beyond_one_per_attempt(receipts, starts[(saga_id, "send_confirmation", "step_started")])
        mine_calls = [c for c in calls if saga_id in c["idempotency_key"]]
        for operations, kind in ((CHARGE_CALLS, "step_started"), (UNDO_CHARGE_CALLS, "compensation_started")):
            for operation in operations:
                twice += beyond_one_per_attempt([c["at"] for c in mine_calls if c["operation"] == operation],
                                                starts[(saga_id, "charge_payment", kind)])
        counts["effects twice in one attempt"] += twice
        if status == "completed":
            counts["charges without a posting"] += int(net > 0 and [r[1] for r in rows] != ["live"])
            counts["completed without charge, posting, logo or email"] += int(
                net <= 0 or [r[1] for r in rows] != ["live"] or len(objects) != 1 or sent == 0)
            counts["orphaned objects"] += len([k for k in objects if not rows or k != rows[0][2]])
            counts["orphaned postings"] += max(0, len(rows) - 1)
        elif status == "compensated":
            counts["charges without a posting"] += int(net > 0)
            counts["orphaned objects"] += len(objects)
            counts["orphaned postings"] += len(rows)
            counts["emails for a compensated saga"] += sent
    return counts


BROKEN = ("lost", "duplicate charges", "charges without a posting", "orphaned objects", "orphaned postings",
          "completed without charge, posting, logo or email", "emails for a compensated saga")


def report(name: str, counts: Counter[str]) -> str:
    order = ("submitted", "completed", "compensated", "paused", "failed", *BROKEN, "duplicate emails",
             "effects twice in one attempt", "uploads")
    line = ", ".join(f"{k} {counts.get(k, 0)}" for k in order)
    print(f"\n{name}: {line}")
    return line


def assert_kept(counts: Counter[str], duplicate_emails: int = 0, overtaken: int = 0) -> None:
    """No broken promise; at most `duplicate_emails` receipts sent again (I5's window), and at most `overtaken`
    effects more than one in an attempt (an execution overtaken while frozen or cut off may still make its effect
    late, after the attempt that took its step over began)."""
    broken = {k: counts[k] for k in BROKEN if counts.get(k)}
    assert not broken, f"broken promises: {broken}"
    assert counts.get("duplicate emails", 0) <= duplicate_emails, counts
    assert counts.get("effects twice in one attempt", 0) <= overtaken, counts
    assert counts.get("paused", 0) == counts.get("failed", 0) == 0, counts
