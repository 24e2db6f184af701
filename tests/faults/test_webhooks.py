"""Webhooks while things break: the delivering worker SIGKILLed mid-delivery and PostgreSQL restarted while 100 job
postings run. Every event the ledger recorded reaches the receiver at least once, signed, in order per saga, and
the receiver gets no event the ledger does not have."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from saga import db
from saga.testing import Stack, wait_until
from standins import StandIns
from tests.faults.load import Submitted, assert_kept, in_background, outcome, report
from tests.faults.servers import Postgres, outage
from tests.receivers import Receiver
from tests.test_api import ApiServer
from tests.test_webhooks import register
from webhooks.events import EVENT_TYPES

pytestmark = pytest.mark.fault


def ledger_events(ids: list[str]) -> dict[str, list[str]]:
    """Each saga's webhook ids in ledger order, for every event kind a webhook carries."""
    with db.transaction() as conn:
        rows = conn.execute(text("SELECT saga_id::text, id FROM saga_events WHERE saga_id = ANY(CAST(:ids AS uuid[])) "
                                 "AND kind = ANY(:kinds) ORDER BY id"),
                            {"ids": ids, "kinds": list(EVENT_TYPES.values())}).all()
    events: dict[str, list[str]] = {saga_id: [] for saga_id in ids}
    for saga_id, event_id in rows:
        events[saga_id].append(f"evt_{event_id}")
    return events


def undelivered() -> int:
    with db.transaction() as conn:
        return conn.execute(text("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'")).scalar_one()


def test_deliveries_survive_a_killed_delivering_worker_and_a_postgres_restart_while_100_sagas_run(
        workers: Stack, api: ApiServer, standins: StandIns, postgres: Postgres) -> None:
    hold, held, release = threading.Event(), threading.Event(), threading.Event()

    def answer() -> int:
        """200, a moment later; while `hold` is set, not before `release` (so a kill meets a delivery in flight)."""
        if hold.is_set():
            held.set()
            release.wait(10)
        time.sleep(0.02)
        return 200

    receiver = Receiver(answer=answer).start()
    try:
        deliverer = workers.worker("webhooks", concurrency=2, queues=["webhooks"])
        client = api.new_tenant()
        endpoint = register(client, receiver.url, list(EVENT_TYPES))
        submitted, errors = Submitted(), []
        feeder = in_background(client, 100, submitted, pace=0.02, errors=errors)

        wait_until(lambda: len(receiver.requests) >= 30, timeout=120, what="30 deliveries before the kill")
        hold.set()
        assert held.wait(30), "a delivery in flight"
        deliverer.kill()  # the worker and its pool processes at once, while the receiver holds a delivery of theirs
        hold.clear()
        release.set()
        killed_after = len(receiver.requests)
        workers.processes.remove(deliverer)
        workers.worker("webhooks-2", concurrency=2, queues=["webhooks"])

        wait_until(lambda: len(receiver.requests) >= killed_after + 30, timeout=120,
                   what="30 more deliveries before the restart")
        postgres.stop("fast")  # every session cut off: deliveries, the dispatcher, the steps
        try:
            outage(3)
        finally:
            postgres.start()
            db.dispose()
        feeder.join()
        assert not errors, errors
        counts = outcome(standins, submitted, supervise=workers)
        report("webhooks: delivering worker killed, postgres restarted", counts)
        assert_kept(counts, duplicate_emails=2)

        wait_until(lambda: undelivered() == 0, timeout=180, interval=0.5, what="every event delivered")
        expected = ledger_events(list(submitted.ids.values()))
        verifier = Webhook(endpoint["secret"])
        first_seen: dict[str, list[str]] = {}
        times = Counter[str]()
        for got in receiver.delivered():
            payload = verifier.verify(got.body, got.headers)  # raises unless signed with the endpoint's secret
            webhook_id = got.headers["webhook-id"]
            times[webhook_id] += 1
            if times[webhook_id] == 1:
                first_seen.setdefault(payload["data"]["saga_id"], []).append(webhook_id)
        missing = {s: [e for e in ev if e not in times] for s, ev in expected.items() if set(ev) - set(times)}
        invented = set(times) - {e for ev in expected.values() for e in ev}
        out_of_order = [s for s, ev in expected.items() if first_seen.get(s, []) != ev]
        again = sum(n - 1 for n in times.values())
        print(f"  webhooks: {sum(map(len, expected.values()))} events in the ledger, {len(times)} delivered, "
              f"{again} delivered more than once, {len(missing)} sagas missing some, {len(invented)} invented, "
              f"{len(out_of_order)} sagas out of order; killed after {killed_after} requests")
        assert not missing and not invented and not out_of_order
    finally:
        receiver.stop()
