"""Secrets never leak: with a database password, a Stripe key and API keys of their own, a worker and the API run
a completed and a compensated job posting, refuse forged keys and fail on purpose; then none of those secrets is
in their logs, the audit log, the sagas as the API shows them, or the metrics of either."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api import keys as apikeys
from saga import db
from saga.testing import Stack, wait_until
from standins import StandIns, free_port
from tests.jobs import FINAL, posting
from tests.test_api import ApiServer, serve


@pytest.fixture()
def secrets(workers: Stack, standins: StandIns) -> Iterator[dict[str, Any]]:
    """A worker and an API whose settings hold secrets (the server takes any password: trust auth)."""
    found = {
        "database password": f"db-pw-{uuid.uuid4().hex}",
        "stripe key": f"sk_test_{uuid.uuid4().hex}",
    }
    database = make_url(workers.env["SAGA_DATABASE_URL"]).set(password=found["database password"])
    env = {"SAGA_DATABASE_URL": database.render_as_string(hide_password=False), "STRIPE_API_KEY": found["stripe key"]}
    metrics_port = free_port()
    workers.stop_workers()
    worker = workers.worker("w-secrets", concurrency=2, env={
        **env, "SAGA_METRICS_PORT": str(metrics_port), "PROMETHEUS_MULTIPROC_DIR": str(workers.data_dir / "m-sec")})
    api = serve(workers, name="api-secrets", **env)
    _, stored_key = apikeys.create_key(f"sec-{uuid.uuid4().hex[:8]}")
    found |= {"configured API key": api.keys["alpha"], "stored API key": stored_key}
    try:
        yield {"secrets": found, "api": api, "worker": worker, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        api.close()
        workers.stop_workers()


def test_no_secret_reaches_logs_events_answers_or_metrics(secrets: dict[str, Any]) -> None:
    api: ApiServer = secrets["api"]
    client = api.client(key=secrets["secrets"]["stored API key"])
    ids = []
    for card in ("pm_card_visa", "pm_card_chargeDeclined"):
        answer = client.post("/v1/sagas", json={"type": "job_posting", "input": posting(payment_method=card)},
                             headers={"Idempotency-Key": str(uuid.uuid4())})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    shown = [wait_until(lambda i=i: (s := client.get(f"/v1/sagas/{i}").json())["status"] in FINAL and s,
                        timeout=90, what="the sagas to end") for i in ids]
    assert [s["status"] for s in shown] == ["completed", "compensated"]
    # Forged, malformed and misplaced keys, and a request that fails: each is refused and logged.
    forged = secrets["secrets"]["configured API key"] + "x"
    assert api.client(key=forged).get("/v1/sagas").status_code == 401
    assert httpx.get(f"{api.url}/v1/sagas", headers={"Authorization": forged}, timeout=10).status_code == 401
    assert client.post(f"/v1/sagas/{ids[0]}/cancel").status_code == 409
    events = client.get(f"/v1/sagas/{ids[1]}/events").text

    with db.transaction() as conn:
        audit = " ".join(conn.execute(text("SELECT detail::text FROM saga_events WHERE saga_id = ANY(CAST(:i AS uuid[]))"),
                                      {"i": ids}).scalars())
    places = {
        "worker log": secrets["worker"].log_text(), "API log": api.process.log_text(),
        "audit log": audit, "events API": events, "sagas API": " ".join(str(s) for s in shown),
        "worker metrics": httpx.get(secrets["metrics"], timeout=10).text,
        "API metrics": httpx.get(f"{api.url}/metrics", timeout=10).text,
    }
    leaks = [f"{name} in the {place}" for name, secret in secrets["secrets"].items()
             for place, content in places.items() if secret in content]
    assert not leaks, leaks
    assert len(places["worker log"]) > 1000 and "upload_logo" in places["worker log"]  # the logs were read
