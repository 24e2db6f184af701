"""Redis and PostgreSQL go away while job postings run through the API, real workers and beat; every saga still
ends cleanly, checked against the ledger and the third parties' own records."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from saga import db
from saga.states import FINAL
from saga.testing import Stack, wait_until
from standins import StandIns
from tests.faults.load import Submitted, assert_kept, outcome, report, statuses, submit
from tests.faults.servers import Postgres, Redis, outage
from tests.jobs import posting
from tests.test_api import ApiServer, assert_error

pytestmark = pytest.mark.fault


def some_ended(submitted: Submitted, at_least: int) -> None:
    """Until a few sagas ended: the fault then meets sagas in every stage, not only new ones."""
    wait_until(lambda: sum(s in ("completed", "compensated") for s in statuses(submitted.ids.values()).values())
               >= at_least, timeout=120, interval=0.2, what=f"{at_least} sagas to end")


def under_way(submitted: Submitted) -> int:
    """How many of the sagas have not ended yet: those a fault beginning now meets."""
    return sum(s not in FINAL for s in statuses(submitted.ids.values()).values())


def test_redis_restarted_with_nothing_kept_while_100_sagas_run(
        workers: Stack, api: ApiServer, standins: StandIns, redis_server: Redis) -> None:
    submitted = Submitted()
    submit(api.client("alpha"), 100, submitted)
    some_ended(submitted, 10)
    broker = workers.redis()
    messages = broker.llen("celery") + broker.hlen("unacked")
    running = under_way(submitted)
    redis_server.kill()  # every queued and unacknowledged message is gone
    assert running and messages, f"the outage met {running} sagas under way and {messages} messages"
    outage(3)
    redis_server.start()
    # Celery 5.7 may exit a worker here (README, "Run workers under a supervisor"): start it again as one would.
    counts = outcome(standins, submitted, supervise=workers)
    report("redis restarted", counts)
    print(f"  when Redis was killed: {running} sagas under way, {messages} messages queued or unacknowledged")
    # The crash window: when the broker connection drops, Celery SIGTERMs the steps running (CELERY_FACTS), so
    # a receipt the SMTP server had just taken is sent again, at most one per pool process (2).
    assert_kept(counts, duplicate_emails=2)


def test_postgres_down_for_seconds_while_100_sagas_run(
        workers: Stack, api: ApiServer, standins: StandIns, postgres: Postgres) -> None:
    client = api.client("alpha")
    submitted = Submitted()
    submit(client, 100, submitted)
    some_ended(submitted, 10)
    running = under_way(submitted)
    assert running, "every saga had ended before the outage"
    postgres.stop("fast")  # every session cut off
    try:
        key = f"during-outage-{uuid.uuid4()}"
        body = {"type": "job_posting", "input": posting(title="Asked while the ledger was down")}
        refused = client.post("/v1/sagas", json=body, headers={"Idempotency-Key": key})
        assert_error(refused, 503, "unavailable")
        assert client.get("/healthz").status_code == 503
        outage(5)
    finally:
        postgres.start()
        db.dispose()  # this test's own pooled connections died with the server
    # Nobody restarted the workers, beat or the API: they reconnect by themselves. The client tries again.
    again = wait_until(lambda: (r := client.post("/v1/sagas", json=body, headers={"Idempotency-Key": key}))
                       .status_code in (200, 202) and r, timeout=60, what="the API to accept again")
    assert again.status_code == 202, again.text
    replay = client.post("/v1/sagas", json=body, headers={"Idempotency-Key": key})
    assert replay.status_code == 200 and replay.json()["id"] == again.json()["id"]
    with db.transaction() as conn:
        made = conn.execute(text("SELECT count(*) FROM sagas WHERE idempotency_key = :k"), {"k": key}).scalar()
    assert made == 1
    submitted.ids[key] = again.json()["id"]

    counts = outcome(standins, submitted)
    report("postgres restarted", counts)
    print(f"  when PostgreSQL stopped: {running} sagas under way")
    assert_kept(counts)
