"""What a webhook carries: the event types an endpoint subscribes to, and the JSON body of one delivery."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from saga import store
from saga.disclosure import event_for_tenant, saga_for_tenant
from saga.errors import SagaNotFound

# The ledger's event kinds a webhook carries, by the type it is delivered as (the outbox trigger of
# migrations/versions/api_0004_webhooks.py writes exactly these).
EVENT_TYPES: dict[str, str] = {
    "saga.completed": "saga_completed",
    "saga.compensated": "saga_compensated",
    "saga.paused": "saga_paused",
    "saga.failed": "saga_failed",
    "saga.awaiting_input": "input_requested",
    "step.succeeded": "step_succeeded",
    "step.failed": "step_failed",
    "step.compensated": "step_compensated",
    "step.compensation_failed": "compensation_failed",
}
# What an endpoint gets when it names no types: how each saga ended or why it waits.
SAGA_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t.startswith("saga."))


def webhook_id(event_id: int) -> str:
    """The `webhook-id` of a ledger event: the same on every attempt and every endpoint, for receivers to dedupe."""
    return f"evt_{event_id}"


# The ledger's event and the saga's tenant, for a delivery's first attempt.
_EVENT = text("""
SELECT e.id, e.step, e.kind, e.detail, e.created_at, s.tenant
FROM saga_events e JOIN sagas s ON s.id = e.saga_id
WHERE e.id = :event_id AND e.saga_id = :saga_id
""")


def payload(conn: Connection, event_id: int, saga_id: UUID, event_type: str) -> str:
    """The body of a delivery: the event as the API's audit log shows it, and the saga as the API shows it when
    the body is first made (a later event of the saga is delivered after this one)."""
    row = conn.execute(_EVENT, {"event_id": event_id, "saga_id": saga_id}).mappings().first()
    body: dict[str, Any] = {"type": event_type, "timestamp": None, "data": {"saga_id": str(saga_id)}}
    if row is None:  # retention deleted the saga since: what is left to say
        return json.dumps(body | {"data": body["data"] | {"event": {"id": event_id}, "saga": None}})
    event = store.Event(id=row["id"], step=row["step"], kind=row["kind"], detail=row["detail"],
                        created_at=row["created_at"]).to_dict()
    try:
        saga = saga_for_tenant(store.load(saga_id, conn=conn).to_dict())
    except SagaNotFound:
        saga = None
    body["timestamp"] = event["created_at"]
    body["data"] |= {"event": event_for_tenant(event, row["tenant"]), "saga": saga}
    return json.dumps(body, separators=(",", ":"))
