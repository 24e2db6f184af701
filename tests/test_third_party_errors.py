"""A third party's words stay with operators: a job posting whose S3 cannot be reached, through a real API process
and real workers. The tenant hears which step failed and how (`S3 unreachable`); the ledger, which the CLI and
`saga.load` read, keeps boto3's text with the endpoint it could not reach."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlparse
from uuid import UUID

import pytest

import saga
from saga.testing import Stack, wait_until
from standins import StandIns
from tests.jobs import assert_clean_end, posting
from tests.proxy import Proxy
from tests.test_api import ApiServer, settle, start

UNREACHABLE = "TransientError: S3 unreachable"


@pytest.fixture()
def s3_cut_off(workers: Stack, standins: StandIns) -> Iterator[Proxy]:
    """The worker reaches S3 only through a proxy, cut until the test restores it; the usual worker is back for
    the next test (the `workers` fixture starts it)."""
    s3 = urlparse(standins.s3_endpoint_url)
    proxy = Proxy(s3.hostname or "127.0.0.1", s3.port or 80)
    proxy.cut()
    workers.replace_workers(kill=False, env={"SAGA_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"})
    try:
        yield proxy
    finally:
        workers.stop_workers()
        proxy.close()


def test_an_unreachable_s3_is_told_to_the_tenant_by_kind_and_to_operators_with_its_endpoint(
        api: ApiServer, s3_cut_off: Proxy, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting()).json()["id"]
    endpoint = f"127.0.0.1:{s3_cut_off.port}"

    retried = wait_until(lambda: (r := saga.load(UUID(saga_id))).steps[0].error and r, timeout=30,
                         what="the upload's first failed attempt")
    assert client.get(f"/v1/sagas/{saga_id}").json()["steps"][0]["error"] == UNREACHABLE
    assert (retried.steps[0].error or "").startswith(f"{UNREACHABLE}\ncaused by "), retried.steps[0].error
    assert endpoint in (retried.steps[0].error or ""), retried.steps[0].error

    # Out of attempts, the upload is undone; with S3 back, the undo deletes whatever it may have left.
    wait_until(lambda: saga.load(UUID(saga_id)).status == "compensating", timeout=60, what="the upload to give up")
    s3_cut_off.restore()
    shown = settle(client, saga_id)
    full = saga.load(UUID(saga_id))
    assert shown["status"] == full.status == "compensated", shown
    assert shown["error"] == f"step upload_logo failed: {UNREACHABLE}"
    assert (full.error or "").startswith(f"step upload_logo failed: {UNREACHABLE}\ncaused by "), full.error
    assert endpoint in (full.error or "")
    attempts = [e.detail["error"] for e in saga.events(UUID(saga_id)) if e.kind == "step_attempt_failed"]
    assert len(attempts) >= 2 and all(endpoint in a for a in attempts), attempts

    events = client.get(f"/v1/sagas/{saga_id}/events").json()["items"]
    told = json.dumps([shown, events])
    assert endpoint not in told and "caused by" not in told, told
    assert sum(UNREACHABLE in json.dumps(e["detail"]) for e in events) >= len(attempts)
    assert_clean_end(standins, UUID(saga_id), "compensated")
