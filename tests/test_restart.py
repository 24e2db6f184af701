"""Restart: a compensated or failed saga started again as a new saga of its type, input patched, linked both ways;
through the API, real workers and the stand-ins."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from api import keys as apikeys
from saga import db
from saga.testing import Stack
from standins import StandIns
from tests.jobs import assert_clean_end, posting, third_party_records
from tests.test_api import ApiServer, assert_error, settle, start

DECLINED = "pm_card_chargeDeclined"


def _sagas_in_ledger() -> int:
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT count(*) FROM sagas")).scalar_one())


def test_a_declined_posting_restarted_with_another_card_completes_and_both_are_linked(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    first = settle(client, start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"])
    assert first["status"] == "compensated", first
    assert_clean_end(standins, uuid.UUID(first["id"]), "compensated")

    answer = client.post(f"/v1/sagas/{first['id']}/restart", json={"input": {"payment_method": "pm_card_visa"}})
    assert answer.status_code == 202, answer.text
    again = answer.json()
    assert answer.headers["Location"] == f"/v1/sagas/{again['id']}"
    assert again["restart_of"] == first["id"] and again["id"] != first["id"]
    assert again["idempotency_key"] == f"restart-of:{first['id']}"
    done = settle(client, again["id"])
    assert done["status"] == "completed", done
    assert_clean_end(standins, uuid.UUID(again["id"]), "completed")  # one logo, one live posting, one charge
    charged = third_party_records(standins, uuid.UUID(again["id"]))["charged"]
    assert [pi["payment_method"] for pi in charged] and charged[0]["amount"] == 4900
    assert done["input"]["payment_method"] == "pm_card_visa" and done["input"]["title"] == first["input"]["title"]

    assert client.get(f"/v1/sagas/{first['id']}").json()["restarted_as"] == again["id"]
    listed = client.get("/v1/sagas", params={"restart_of": first["id"]}).json()["items"]
    assert [s["id"] for s in listed] == [again["id"]]
    events = client.get(f"/v1/sagas/{first['id']}/events").json()["items"]
    key = client.headers["Authorization"].removeprefix("Bearer ")
    by = {"via": "api", "tenant": apikeys.tenant_for_key(key), "key": f"sha256:{apikeys.hash_key(key)[:12]}"}
    assert [e["detail"] for e in events if e["kind"] == "saga_restarted"] == [
        {"as": again["id"], "changed": ["payment_method"], "by": by}]

    # Retrying the same request gives the same restart; one under another key is refused, naming the restart.
    replay = client.post(f"/v1/sagas/{first['id']}/restart", json={"input": {"payment_method": "pm_card_visa"}})
    assert replay.status_code == 200 and replay.json()["id"] == again["id"]
    assert_error(client.post(f"/v1/sagas/{first['id']}/restart", json={"input": {"payment_method": "pm_card_amex"}}),
                 422, "idempotency_key_reused")
    other = assert_error(client.post(f"/v1/sagas/{first['id']}/restart", headers={"Idempotency-Key": "another"}),
                         409, "action_not_allowed")
    assert other["details"]["restarted_as"] == again["id"]


def test_only_a_compensated_or_failed_saga_restarts_and_a_bad_patch_writes_nothing(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    completed = settle(client, start(client, "job_posting", posting()).json()["id"])
    assert completed["status"] == "completed"
    refused = assert_error(client.post(f"/v1/sagas/{completed['id']}/restart"), 409, "action_not_allowed")
    assert "only a compensated or failed saga" in refused["message"]

    declined = settle(client, start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"])
    before = _sagas_in_ledger()
    bad = assert_error(client.post(f"/v1/sagas/{declined['id']}/restart",
                                   json={"input": {"amount_cents": 10, "payment_method": "visa"}}),
                       422, "invalid_input")
    assert {d["field"] for d in bad["details"]} == {"input.amount_cents", "input.payment_method"}, bad
    unknown = assert_error(client.post(f"/v1/sagas/{declined['id']}/restart", json={"input": {"colour": "red"}}),
                           422, "invalid_input")
    assert unknown["details"] == [{"field": "input.colour", "message": "JobPosting has no such field"}]
    assert_error(client.post(f"/v1/sagas/{declined['id']}/restart", json={"inputs": {}}), 422, "invalid_request")
    assert _sagas_in_ledger() == before
    assert client.get(f"/v1/sagas/{declined['id']}").json()["restarted_as"] is None
