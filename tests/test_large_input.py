"""Large input fields stay off the hot path: a job posting's logo (up to 1 MiB) is stored apart from the rest
of the input and read by `upload_logo` alone; reads and listings of sagas leave it out."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import text

import saga
from saga import StepContext, claims, db
from saga.actions import FORWARD
from saga.definitions import LargeField, get_saga_type
from saga.testing import Stack, wait_for_status
from standins import StandIns
from tests.jobs import FINAL, PNG, assert_clean_end, posting
from workers.app import sagas

BIG_PNG = PNG + b"\0" * (1024 * 1024 - len(PNG))  # 1 MiB that still starts like a PNG
BIG_LOGO = base64.b64encode(BIG_PNG).decode()


class Document(BaseModel):
    title: str
    body: str


def noop(ctx: StepContext[Document]) -> None:
    return None


def test_large_fields_and_needs_are_checked_when_declared(fresh: object) -> None:
    with pytest.raises(ValueError, match="large field 'pdf' is not a field of Document"):
        sagas.saga_type("t_large_unknown", Document, large_fields=("pdf",))
    saga_type = sagas.saga_type("t_large", Document, large_fields=("body",))
    with pytest.raises(ValueError, match="needs 'title', which is not one of its large_fields"):
        saga_type.step(noop, name="t.t_large.read", needs=("title",))


def test_a_step_that_did_not_ask_for_a_large_field_is_told_so(fresh: object) -> None:
    saga_type = sagas.saga_type("t_large_view", Document, large_fields=("body",))
    stored, large = saga_type.split_input({"title": "T", "body": "x" * 10})
    assert stored == {"title": "T"} and large == {"body": "x" * 10}
    view = saga_type.step_input(stored, None, ())
    assert isinstance(view, Document) and view.title == "T" and isinstance(view.body, LargeField)
    with pytest.raises(TypeError, match=r"not loaded for this step: declare it with needs=\('body',\)"):
        len(view.body)
    with pytest.raises(AttributeError, match="needs="):
        view.body.upper()
    assert saga_type.step_input(stored, large, ("body",)).body == "x" * 10


def test_only_the_upload_step_claims_the_logo(stack: Stack) -> None:
    job_posting = get_saga_type("job_posting")
    record = saga.start("job_posting", posting(logo=BIG_LOGO), idempotency_key=str(uuid.uuid4()),
                        dispatch=False).saga
    try:
        with db.transaction() as conn:
            stored, large = conn.execute(text("SELECT input, large_input FROM sagas WHERE id = :id"),
                                         {"id": record.id}).one()
        assert "logo" not in stored and large == {"logo": BIG_LOGO}
        upload = claims.claim(record.id, job_posting.steps[0], "task-upload", FORWARD)
        assert isinstance(upload, claims.Claim) and upload.large_input == {"logo": BIG_LOGO}
        claims.commit_success(record.id, job_posting.steps[0], upload.token, "{}", FORWARD)
        for step in job_posting.steps[1:]:  # each in its turn, once the one before it succeeded
            taken = claims.claim(record.id, step, f"task-{step.name}", FORWARD)
            assert isinstance(taken, claims.Claim), (step.name, taken)
            assert taken.large_input is None and "logo" not in taken.input, step.name
            claims.commit_success(record.id, step, taken.token, "{}", FORWARD)
        assert "logo" not in saga.load(record.id).input
    finally:
        with db.transaction() as conn:  # never dispatched: gone before recovery would send it
            conn.execute(text("DELETE FROM sagas WHERE id = :id"), {"id": record.id})


def test_a_1_mib_logo_goes_through_and_reads_leave_it_out(
        workers: Stack, standins: StandIns, api: Any) -> None:
    client: httpx.Client = api.client("alpha")
    answer = client.post("/v1/sagas", json={"type": "job_posting", "input": posting(logo=BIG_LOGO)},
                         headers={"Idempotency-Key": str(uuid.uuid4())})
    assert answer.status_code == 202, answer.text[:500]
    assert "logo" not in answer.json()["input"] and len(answer.content) < 10_000
    saga_id = uuid.UUID(answer.json()["id"])
    assert wait_for_status(saga_id, FINAL).status == "completed"
    assert_clean_end(standins, saga_id, "completed")
    shown = client.get(f"/v1/sagas/{saga_id}").json()
    assert shown["input"]["title"] == "Rocket engineer" and "logo" not in shown["input"]
    listed = client.get("/v1/sagas", params={"limit": 5}).json()["items"]
    assert listed and all(item["input"] is None for item in listed)
    mine = client.get("/v1/sagas", params={"include_input": "true", "limit": 5}).json()["items"]
    assert next(i for i in mine if i["id"] == str(saga_id))["input"] == shown["input"]
