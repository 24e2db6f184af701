"""Stripe answers 500 for a minute while 100 job postings run on two workers: the breaker the fleet shares stops
the calls, no saga compensates or pauses because of the outage, and every one completes once Stripe is back."""

from __future__ import annotations

import json
import signal
import time

import pytest
from sqlalchemy import text

from saga import db
from saga.testing import Stack
from standins import StandIns
from tests.faults.load import Submitted, assert_kept, outcome, report, statuses, submit
from tests.test_api import ApiServer

pytestmark = pytest.mark.fault

OUTAGE = 60.0
# What a deployment would set for Stripe, with a shorter cool-down so the test ends sooner after the outage.
BREAKERS = {"stripe": {"failures": 5, "cooldown": 5, "max_cooldown": 10}}
# Each charge attempt's first request is its PaymentIntent's creation: one Stripe call per attempt that fails.
ALLOWED_CALLS = 40


def test_stripe_down_for_a_minute_while_100_postings_run(workers: Stack, api: ApiServer, standins: StandIns) -> None:
    workers.stop_workers()
    env = {"SAGA_BREAKERS": json.dumps(BREAKERS)}
    fleet = [workers.worker(name, env=env) for name in ("b1", "b2")]
    try:
        for process in fleet:  # the postings queue up, then all meet the outage at their charge
            process.send(signal.SIGSTOP)
        submitted = Submitted()
        submit(api.client("alpha"), 100, submitted, declined_every=0)
        standins.stripe_faults("500", 0, for_seconds=OUTAGE)
        began = time.time()
        for process in fleet:
            process.send(signal.SIGCONT)
        counts = outcome(standins, submitted, timeout=OUTAGE + 120)
        ended = time.time()
    finally:
        workers.stop_workers()

    during = [r for r in standins.stripe_requests() if began <= r["at"] < began + OUTAGE]
    failed = sum(r["status"] >= 500 for r in during)
    waits = {p.name: p.log_text().count("waits for stripe") for p in fleet}
    with db.transaction() as conn:
        opens = conn.execute(text("SELECT opens FROM saga_breakers WHERE name = 'stripe'")).scalar()
        events = dict(conn.execute(text(
            "SELECT kind, count(*) FROM saga_events WHERE saga_id = ANY(:ids) GROUP BY kind"),
            {"ids": list(submitted.ids.values())}).all())
    report("stripe down for a minute", counts)
    print(f"  Stripe calls during the {OUTAGE:.0f} s outage, all workers: {len(during)} ({failed} answered 5xx); "
          f"attempts put off while its breaker was open, by worker: {waits}; "
          f"all {len(submitted.ids)} ended {ended - began - OUTAGE:.1f} s after Stripe came back; "
          f"charge attempts that failed: {events.get('step_attempt_failed', 0)}; the breaker opened {opens} time(s)")
    assert counts["completed"] == 100, statuses(submitted.ids.values())
    assert_kept(counts)
    assert not events.get("compensation_started") and not events.get("saga_paused"), events
    assert len(during) <= ALLOWED_CALLS, f"{len(during)} Stripe calls during the outage"
    # Both workers read the one breaker: each put attempts off while the other's failures held it open.
    assert all(waits.values()), waits
