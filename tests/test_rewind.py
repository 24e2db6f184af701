"""Rewind: a saga taken back to an earlier step (that step and the later ones undone, newest first, then run
forward again with the input patched); through the API, the client and the CLI, real workers and the
stand-ins."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import saga
from saga import ActionRefused, db
from saga.client import SagaClient
from saga.testing import Stack
from standins import StandIns
from tests.jobs import assert_clean_end, posting, third_party_records
from tests.test_api import ApiServer, assert_error, settle, start
from tests.test_api_client import saga_cli
from tests.test_awaiting_input import DECLINED, awaiting, bodies_run, executions


def events_of(client: httpx.Client, saga_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/sagas/{saga_id}/events").json()["items"]


def test_a_rewind_from_create_posting_with_a_new_title_redoes_the_posting_and_keeps_the_logo(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    awaiting(client, saga_id)  # the logo is up, the draft posting is in, the card was declined
    logo = third_party_records(standins, uuid.UUID(saga_id))["objects"]

    key = client.headers["Authorization"].removeprefix("Bearer ")
    with SagaClient(api.url, key) as saga_client:
        rewound = saga_client.rewind(saga_id, "create_posting",
                                     {"title": "Rocket scientist", "payment_method": "pm_card_visa"},
                                     idempotency_key="rewind-1")
    assert rewound.status == "compensating" and rewound.rewinding_to == "create_posting"
    done = settle(client, saga_id)
    assert done["status"] == "completed", done
    assert done["input"]["title"] == "Rocket scientist" and done["rewinding_to"] is None
    assert_clean_end(standins, uuid.UUID(saga_id), "completed")  # one logo, one live posting, one charge, one email
    assert third_party_records(standins, uuid.UUID(saga_id))["objects"] == logo
    with db.transaction() as conn:
        titles = conn.execute(text("SELECT title FROM job_postings WHERE saga_id = :s"), {"s": saga_id}).scalars().all()
    assert titles == ["Rocket scientist"]
    # The logo was uploaded once; the posting made, undone and made again; the open payment canceled, not charged.
    assert executions(saga_id) == {"upload_logo": 1, "create_posting": 2, "charge_payment": 2, "publish_posting": 1,
                                   "send_confirmation": 1}
    log = events_of(client, saga_id)
    assert [e["step"] for e in log if e["kind"] == "step_compensated"] == ["charge_payment", "create_posting"]
    begun = [e for e in log if e["kind"] == "rewind_begun"]
    assert len(begun) == 1 and begun[0]["step"] == "create_posting"
    assert begun[0]["detail"]["fields"] == ["payment_method", "title"]
    assert begun[0]["detail"]["by"]["via"] == "api" and begun[0]["detail"]["by"]["key"].startswith("sha256:")
    assert key not in json.dumps(log)
    kinds = [e["kind"] for e in log]
    assert kinds.index("rewind_begun") < kinds.index("saga_rewound") < kinds.index("saga_completed")
    intents = [pi for pi in standins.payment_intents() if pi["metadata"].get("saga_id") == saga_id]
    assert sorted(pi["status"] for pi in intents) == ["canceled", "succeeded"]

    # The same request again (a retry) changes nothing; the same key for another rewind is refused.
    again = client.post(f"/v1/sagas/{saga_id}/rewind", headers={"Idempotency-Key": "rewind-1"},
                        json={"to": "create_posting", "input": {"title": "Rocket scientist",
                                                                "payment_method": "pm_card_visa"}})
    assert again.status_code == 200 and again.json()["status"] == "completed"
    assert_error(client.post(f"/v1/sagas/{saga_id}/rewind", headers={"Idempotency-Key": "rewind-1"},
                             json={"to": "upload_logo"}), 422, "idempotency_key_reused")
    assert len([e for e in events_of(client, saga_id) if e["kind"] == "rewind_begun"]) == 1


def test_a_rewind_past_the_pivot_or_of_a_moving_saga_is_refused_and_changes_nothing(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    done = settle(client, start(client, "job_posting", posting()).json()["id"])
    assert done["status"] == "completed"
    before = events_of(client, done["id"])
    refused = assert_error(client.post(f"/v1/sagas/{done['id']}/rewind", headers={"Idempotency-Key": "r"},
                                       json={"to": "create_posting"}), 409, "action_not_allowed")
    assert "point of no return (step charge_payment succeeded)" in refused["message"], refused
    unknown = assert_error(client.post(f"/v1/sagas/{done['id']}/rewind", headers={"Idempotency-Key": "r2"},
                                       json={"to": "make_coffee"}), 422, "unknown_step")
    assert "no step 'make_coffee'" in unknown["message"]
    assert_error(client.post(f"/v1/sagas/{done['id']}/rewind", json={"to": "create_posting"}),
                 400, "idempotency_key_required")
    assert events_of(client, done["id"]) == before and client.get(f"/v1/sagas/{done['id']}").json() == done
    assert_clean_end(standins, uuid.UUID(done["id"]), "completed")

    moving = start(client, "probe_idle").json()["id"]  # pending: nobody reads its queue
    refused = assert_error(client.post(f"/v1/sagas/{moving}/rewind", headers={"Idempotency-Key": "r"},
                                       json={"to": "a"}), 409, "action_not_allowed")
    assert refused["details"] == {"status": "pending"}

    code, out = saga_cli("rewind", done["id"], "--to", "create_posting")  # the CLI, on the database
    assert code == 2 and "point of no return" in out, out


def test_a_rewind_with_invalid_input_is_refused_and_the_cli_rewinds_on_the_database(
        api: ApiServer, workers: Stack, standins: StandIns) -> None:
    client = api.new_tenant()
    saga_id = start(client, "job_posting", posting(payment_method=DECLINED)).json()["id"]
    held = awaiting(client, saga_id)
    bad = assert_error(client.post(f"/v1/sagas/{saga_id}/rewind", headers={"Idempotency-Key": "r"},
                                   json={"to": "upload_logo", "input": {"amount_cents": 1}}), 422, "invalid_input")
    assert [p["field"] for p in bad["details"]] == ["input.amount_cents"], bad
    assert client.get(f"/v1/sagas/{saga_id}").json()["steps"] == held["steps"]

    code, out = saga_cli("rewind", saga_id, "--to", "charge_payment", "--input",
                         '{"payment_method": "pm_card_visa"}', "--wait")
    assert code == 0 and "status=completed" in out, out
    begun = [e for e in saga.events(uuid.UUID(saga_id)) if e.kind == "rewind_begun"]
    assert begun[0].detail["by"]["via"] == "cli" and begun[0].detail["by"]["user"]
    # The tenant is told an operator did it, not who.
    told = [e for e in events_of(client, saga_id) if e["kind"] == "rewind_begun"]
    assert told[0]["detail"]["by"] == {"via": "operator"}
    assert executions(saga_id)["upload_logo"] == 1 and executions(saga_id)["create_posting"] == 1
    assert_clean_end(standins, uuid.UUID(saga_id), "completed")


def test_a_rewind_over_a_step_that_may_have_acted_without_a_compensation_is_refused(stack: Stack, fresh: None) -> None:
    from tests.test_definitions import declare

    declare("pivot_without_undo", ["compensable", "pivot"])  # s0 has a compensation, the pivot s1 none
    saga_id = saga.start("pivot_without_undo", {"email": "ann@example.com", "amount": 1}, dispatch=False).saga.id
    # What the workers leave when s0 succeeded and s1's attempt, which may have acted, asked for input.
    with db.transaction() as conn:
        conn.execute(text("UPDATE saga_steps SET status = 'succeeded', attempts = 1 WHERE saga_id = :s AND idx = 0"),
                     {"s": saga_id})
        conn.execute(text("UPDATE saga_steps SET attempts = 1, effect_unknown = true WHERE saga_id = :s AND idx = 1"),
                     {"s": saga_id})
        conn.execute(text("UPDATE sagas SET status = 'awaiting_input', awaiting = '{\"step\": \"s1\", \"fields\": "
                          "[\"amount\"], \"reason\": \"r\", \"until\": \"2999-01-01T00:00:00+00:00\"}' WHERE id = :s"),
                     {"s": saga_id})
    before = saga.events(saga_id)
    with pytest.raises(ActionRefused, match="step s1 cannot be undone"):
        saga.rewind(saga_id, "s0", idempotency_key="k", by={"via": "test"})
    assert saga.load(saga_id).status == "awaiting_input" and saga.events(saga_id) == before


def test_a_saga_awaiting_input_from_a_step_that_left_no_effect_is_rewound(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe", {"ask": {"c": 600}}).json()["id"]
    awaiting(client, saga_id)  # c's attempt asked for an answer and, unlike the declined card, left nothing
    rewound = client.post(f"/v1/sagas/{saga_id}/rewind", headers={"Idempotency-Key": "r"},
                          json={"to": "b", "input": {"answer": "42"}})
    assert rewound.status_code == 200, rewound.text
    assert [s["effect_unknown"] for s in rewound.json()["steps"]] == [False, False, False, False]
    assert settle(client, saga_id)["status"] == "completed"
    assert bodies_run(saga_id) == {("a", "do"): 1, ("b", "do"): 2, ("b", "undo"): 1, ("c", "do"): 2, ("d", "do"): 1}
