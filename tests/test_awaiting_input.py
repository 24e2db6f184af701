"""Waiting for the client: a declined card holds the job posting in `awaiting_input` with what it did kept,
until another card comes (`POST /v1/sagas/{id}/input`) or the wait ends and everything is undone; through the
API, real workers and the stand-ins. Input that comes after the wait ended is refused, even before recovery has
begun the undo."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import saga
from saga import db
from saga.testing import Stack, wait_until
from standins import StandIns
from tests.jobs import assert_clean_end, posting, third_party_records
from tests.test_api import ApiServer, assert_error, settle, start

DECLINED = "pm_card_chargeDeclinedInsufficientFunds"


def awaiting(client: httpx.Client, saga_id: str) -> dict[str, Any]:
    """The saga once it awaits input, followed with the API's long poll."""
    def probe() -> dict[str, Any] | None:
        body = client.get(f"/v1/sagas/{saga_id}", params={"wait": 2}).json()
        assert body["status"] not in ("completed", "compensated", "failed", "paused"), body
        return body if body["status"] == "awaiting_input" else None

    return wait_until(probe, timeout=60, interval=0, what=f"saga {saga_id} to await input")


def send(client: httpx.Client, saga_id: str, patch: dict[str, Any], key: str | None = None) -> httpx.Response:
    return client.post(f"/v1/sagas/{saga_id}/input", json={"input": patch},
                       headers={"Idempotency-Key": key or str(uuid.uuid4())})


def executions(saga_id: str, kind: str = "step_started") -> dict[str, int]:
    """How many times each step's body started, from the event log (every execution, duplicates included)."""
    counts: dict[str, int] = {}
    for event in saga.events(uuid.UUID(saga_id)):
        if event.kind == kind:
            counts[event.step] = counts.get(event.step, 0) + 1  # type: ignore[index]
    return counts


def bodies_run(saga_id: str) -> Counter[tuple[str, str]]:
    """How many times each probe body (step, do/undo) ran, one row per execution as the body itself records it."""
    with db.transaction() as conn:
        return Counter((r.step, r.kind) for r in conn.execute(
            text("SELECT step, kind FROM probe_runs WHERE saga_id = :s"), {"s": saga_id}))


def past(moment: str) -> bool:
    """Whether the ledger's clock is past `moment`, as a new transaction there sees it."""
    with db.transaction() as conn:
        return bool(conn.execute(text("SELECT now() > CAST(:m AS timestamptz)"), {"m": moment}).scalar())


@pytest.fixture()
def recovery_held(workers: Stack) -> Iterator[Stack]:
    """The stack with beat, which runs recovery, stopped; the test starts it again when it wants recovery back
    (and the fixture does, if the test did not)."""
    for process in [p for p in workers.processes if p.name == "beat"]:
        process.stop()
        workers.processes.remove(process)
    try:
        yield workers
    finally:
        if not any(p.name == "beat" and p.alive() for p in workers.processes):
            workers.beat()


def test_a_declined_card_waits_and_another_card_completes_with_one_logo_posting_and_charge(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    held = awaiting(client, saga_id)
    wanted = held["awaiting_input"]
    assert wanted["step"] == "charge_payment" and wanted["fields"] == ["payment_method"]
    assert wanted["reason"].startswith("card declined: insufficient_funds"), wanted
    assert [s["status"] for s in held["steps"]] == ["succeeded", "succeeded", "pending", "pending", "pending"]
    kept = third_party_records(standins, uuid.UUID(saga_id))
    assert len(kept["objects"]) == 1 and [p["status"] for p in kept["postings"]] == ["draft"]
    assert kept["charged"] == []

    answer = send(client, saga_id, {"payment_method": "pm_card_visa"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "running" and answer.json()["awaiting_input"] is None
    done = settle(client, saga_id)
    assert done["status"] == "completed", done
    assert done["input"]["payment_method"] == "pm_card_visa" and done["input"]["title"] == "Rocket engineer"
    assert_clean_end(standins, uuid.UUID(saga_id), "completed")  # one logo, one live posting, one charge
    intents = [pi for pi in standins.payment_intents() if pi["metadata"].get("saga_id") == saga_id]
    assert len(intents) == 1 and intents[0]["status"] == "succeeded", "the declined intent is the one confirmed"
    assert executions(saga_id) == {"upload_logo": 1, "create_posting": 1, "charge_payment": 2, "publish_posting": 1,
                                   "send_confirmation": 1}
    kinds = [e["kind"] for e in client.get(f"/v1/sagas/{saga_id}/events").json()["items"]]
    assert kinds.index("input_requested") < kinds.index("input_received") < kinds.index("saga_completed")


def test_a_wait_without_input_undoes_the_posting_and_the_logo_and_cancels_the_payment(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    awaiting(client, saga_id)
    done = settle(client, saga_id)
    assert done["status"] == "compensated", done
    assert done["error"].startswith("no input for step charge_payment by "), done["error"]
    assert "insufficient_funds" in done["error"]
    assert [s["status"] for s in done["steps"]] == ["compensated", "compensated", "compensated", "skipped", "skipped"]
    charge = done["steps"][2]
    assert charge["compensation_result"]["outcome"] == "canceled: nothing charged"
    assert_clean_end(standins, uuid.UUID(saga_id), "compensated")
    kinds = [e["kind"] for e in client.get(f"/v1/sagas/{saga_id}/events").json()["items"]]
    assert kinds.index("input_requested") < kinds.index("compensation_begun")
    assert_error(send(client, saga_id, {"payment_method": "pm_card_visa"}), 409, "action_not_allowed")


def test_invalid_input_is_refused_and_changes_nothing(api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    before = awaiting(client, saga_id)
    events_before = client.get(f"/v1/sagas/{saga_id}/events").json()["items"]
    bad = assert_error(send(client, saga_id, {"payment_method": "card 4242"}), 422, "invalid_input")
    assert [p["field"] for p in bad["details"]] == ["input.payment_method"]
    other = assert_error(send(client, saga_id, {"title": "Something else"}), 422, "invalid_input")
    assert [p["field"] for p in other["details"]] == ["input.title"]
    assert_error(send(client, saga_id, {}), 422, "invalid_request")
    assert_error(client.post(f"/v1/sagas/{saga_id}/input", json={"input": {"payment_method": "pm_card_visa"}}),
                 400, "idempotency_key_required")
    after = client.get(f"/v1/sagas/{saga_id}").json()
    assert after["status"] == "awaiting_input" and after["input"] == before["input"]
    assert client.get(f"/v1/sagas/{saga_id}/events").json()["items"] == events_before


def test_two_concurrent_inputs_under_one_key_apply_once(api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    awaiting(client, saga_id)
    answers: list[httpx.Response] = []
    ready = threading.Barrier(2)

    def post() -> None:
        ready.wait()
        answers.append(send(client, saga_id, {"payment_method": "pm_card_visa"}, key="new-card-1"))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 200], [a.text for a in answers]
    done = settle(client, saga_id)
    assert done["status"] == "completed", done
    assert executions(saga_id, "input_received") == {"charge_payment": 1}
    assert executions(saga_id)["charge_payment"] == 2
    assert_clean_end(standins, uuid.UUID(saga_id), "completed")
    # The same key later gives the saga back; with other input it is refused.
    assert send(client, saga_id, {"payment_method": "pm_card_visa"}, key="new-card-1").status_code == 200
    assert_error(send(client, saga_id, {"payment_method": "pm_card_amex"}, key="new-card-1"), 422,
                 "idempotency_key_reused")


def test_input_is_refused_unless_the_saga_awaits_it(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe").json()["id"]
    assert settle(client, saga_id)["status"] == "completed"
    refused = assert_error(send(client, saga_id, {"n": 1}), 409, "action_not_allowed")
    assert refused["details"] == {"status": "completed"}


def test_a_saga_awaiting_input_can_be_cancelled(api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    awaiting(client, saga_id)
    assert client.post(f"/v1/sagas/{saga_id}/cancel").status_code == 200
    done = settle(client, saga_id)
    assert done["status"] == "compensated" and done["error"] == "cancelled", done
    assert_clean_end(standins, uuid.UUID(saga_id), "compensated")


def test_input_after_the_wait_ended_is_refused_naming_its_end_though_the_undo_has_not_begun(
        api: ApiServer, recovery_held: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe", {"ask": {"c": 1}}).json()["id"]
    until = awaiting(client, saga_id)["awaiting_input"]["until"]
    wait_until(lambda: past(until), timeout=10, what=f"the wait to end at {until}")
    before = client.get(f"/v1/sagas/{saga_id}").json()
    events_before = client.get(f"/v1/sagas/{saga_id}/events").json()["items"]
    assert before["status"] == "awaiting_input", "recovery is held back: nothing has begun the undo"
    assert bodies_run(saga_id) == {("a", "do"): 1, ("b", "do"): 1, ("c", "do"): 1}

    refused = assert_error(send(client, saga_id, {"answer": "42"}), 409, "action_not_allowed")
    assert refused["message"] == f"the wait for input ended at {until}; the saga is being undone", refused
    assert refused["details"] == {"status": "awaiting_input"}
    assert client.get(f"/v1/sagas/{saga_id}").json() == before, "status, input, steps and attempts as they were"
    assert client.get(f"/v1/sagas/{saga_id}/events").json()["items"] == events_before
    assert bodies_run(saga_id) == {("a", "do"): 1, ("b", "do"): 1, ("c", "do"): 1}, "step c did not run again"

    recovery_held.beat()  # recovery back: it undoes the saga whose wait ended
    done = settle(client, saga_id, timeout=30)
    assert done["status"] == "compensated" and done["error"] == f"no input for step c by {until}: c needs an answer"
    assert bodies_run(saga_id) == {("a", "do"): 1, ("b", "do"): 1, ("c", "do"): 1, ("b", "undo"): 1,
                                   ("a", "undo"): 1}, "every body once; c (the pivot) has no undo, d never ran"
    assert executions(saga_id, "input_received") == {}
