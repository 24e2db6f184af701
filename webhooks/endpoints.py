"""Tenants' webhook endpoints: register, list, rotate the signing secret, disable, enable, delete, and replay
events to them. Every statement names the tenant: another tenant's endpoint is not found."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from saga import db
from webhooks import addresses
from webhooks.events import EVENT_TYPES, SAGA_TYPES, webhook_id
from webhooks.settings import webhook_settings

# Endpoints one tenant may have.
MAX_ENDPOINTS = 20
MAX_DESCRIPTION = 500


class EndpointNotFound(LookupError):
    """No such endpoint for this tenant."""


class BadEndpoint(ValueError):
    """What the request asked for cannot be an endpoint; the message names the field and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes one: `whsec_` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _columns(row: Any) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secrets)."""
    return {
        "id": str(row["id"]), "url": row["url"], "event_types": list(row["event_types"]),
        "description": row["description"], "enabled": row["enabled"], "disabled_reason": row["disabled_reason"],
        "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat(),
        "pending": row["pending"], "failed": row["failed"],
    }


_SHOWN = """
SELECT w.id, w.url, w.event_types, w.description, w.enabled, w.disabled_reason, w.created_at, w.updated_at,
    (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending') AS pending,
    (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'failed') AS failed
FROM webhook_endpoints w
"""
# A new endpoint, unless the tenant has its fill already (counted under a lock on the tenant's rows' advisory key,
# so two requests at once cannot both pass).
_CREATE = text("""
WITH lock AS (SELECT pg_advisory_xact_lock(hashtext('webhook_endpoints:' || :tenant)))
INSERT INTO webhook_endpoints (id, tenant, url, event_types, description, secrets)
SELECT :id, :tenant, :url, :event_types, :description, CAST(:secrets AS jsonb) FROM lock
WHERE (SELECT count(*) FROM webhook_endpoints WHERE tenant = :tenant) < :most
RETURNING id
""")


def check_request(url: str, event_types: Iterable[str] | None, description: str | None) -> tuple[str, list[str]]:
    """The URL and event types of an endpoint, checked: BadEndpoint names what is wrong."""
    try:
        addresses.check(url)
    except addresses.RefusedURL as exc:
        raise BadEndpoint("url", str(exc)) from None
    types = list(dict.fromkeys(event_types)) if event_types else list(SAGA_TYPES)
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise BadEndpoint("event_types", f"unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})")
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise BadEndpoint("description", f"longer than {MAX_DESCRIPTION} characters")
    return url, types


def create(tenant: str, url: str, event_types: Iterable[str] | None = None,
           description: str | None = None) -> tuple[dict[str, Any], str]:
    """Register an endpoint; returns it and its signing secret (shown this once)."""
    url, types = check_request(url, event_types, description)
    secret = new_secret()
    endpoint_id = uuid.uuid4()
    with db.transaction() as conn:
        made = conn.execute(_CREATE, {"id": endpoint_id, "tenant": tenant, "url": url, "event_types": types,
                                      "description": description, "most": MAX_ENDPOINTS,
                                      "secrets": json.dumps([{"secret": secret, "expires_at": None}])}).first()
        if made is None:
            raise BadEndpoint("url", f"the tenant has {MAX_ENDPOINTS} endpoints already (delete one first)")
        return _get(conn, tenant, endpoint_id), secret


def _get(conn: Connection, tenant: str, endpoint_id: UUID) -> dict[str, Any]:
    row = conn.execute(text(_SHOWN + "WHERE w.tenant = :tenant AND w.id = :id"),
                       {"tenant": tenant, "id": endpoint_id}).mappings().first()
    if row is None:
        raise EndpointNotFound(str(endpoint_id))
    return _columns(row)


def list_for(tenant: str) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        rows = conn.execute(text(_SHOWN + "WHERE w.tenant = :tenant ORDER BY w.created_at, w.id"),
                            {"tenant": tenant}).mappings().all()
    return [_columns(r) for r in rows]


# The newest secret first; the ones before it sign until they expire (the one just rotated out, `overlap` from now).
_ROTATE = text("""
UPDATE webhook_endpoints SET updated_at = now(), secrets = jsonb_build_array(
        jsonb_build_object('secret', CAST(:secret AS text), 'expires_at', NULL),
        jsonb_build_object('secret', secrets -> 0 ->> 'secret', 'expires_at', CAST(:expires AS text)))
WHERE tenant = :tenant AND id = :id
RETURNING id
""")


def rotate(tenant: str, endpoint_id: UUID, overlap: float | None = None) -> tuple[dict[str, Any], str]:
    """A new signing secret; the one before still signs for `overlap` seconds (the setting by default)."""
    overlap = webhook_settings().rotation_overlap if overlap is None else overlap
    secret = new_secret()
    expires = (datetime.now(UTC) + timedelta(seconds=overlap)).isoformat()
    with db.transaction() as conn:
        if conn.execute(_ROTATE, {"tenant": tenant, "id": endpoint_id, "secret": secret,
                                  "expires": expires}).first() is None:
            raise EndpointNotFound(str(endpoint_id))
        return _get(conn, tenant, endpoint_id), secret


# Disabling keeps the endpoint's events; enabling delivers them again, from where they stopped.
_SET_ENABLED = text("""
UPDATE webhook_endpoints SET enabled = :enabled, updated_at = now(),
    disabled_reason = CASE WHEN :enabled THEN NULL ELSE CAST(:reason AS text) END
WHERE tenant = :tenant AND id = :id
RETURNING id
""")


def set_enabled(tenant: str, endpoint_id: UUID, enabled: bool, reason: str = "disabled by the tenant") -> dict[str, Any]:
    with db.transaction() as conn:
        if conn.execute(_SET_ENABLED, {"tenant": tenant, "id": endpoint_id, "enabled": enabled,
                                       "reason": reason}).first() is None:
            raise EndpointNotFound(str(endpoint_id))
        return _get(conn, tenant, endpoint_id)


def delete(tenant: str, endpoint_id: UUID) -> None:
    """Delete the endpoint and every delivery owed to it."""
    with db.transaction() as conn:
        gone = conn.execute(text("DELETE FROM webhook_endpoints WHERE tenant = :tenant AND id = :id RETURNING id"),
                            {"tenant": tenant, "id": endpoint_id}).first()
    if gone is None:
        raise EndpointNotFound(str(endpoint_id))


# An endpoint's given-up deliveries are tried again from the start of their schedule.
_REPLAY_FAILED = text("""
UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, first_attempt_at = NULL, next_attempt_at = now()
FROM webhook_endpoints w
WHERE w.id = d.endpoint_id AND w.tenant = :tenant AND w.id = :id AND d.status = 'failed'
""")


def replay_failed(tenant: str, endpoint_id: UUID) -> int:
    """Deliver an endpoint's failed events again; how many."""
    with db.transaction() as conn:
        _get(conn, tenant, endpoint_id)
        return conn.execute(_REPLAY_FAILED, {"tenant": tenant, "id": endpoint_id}).rowcount


# Every event of the saga that an enabled endpoint of its tenant subscribes to is delivered again (those it never
# had too, such as events from before the endpoint was registered); receivers dedupe by `webhook-id`.
_REPLAY_SAGA = text("""
WITH events AS (
    SELECT e.id, e.saga_id, t.type FROM saga_events e
    JOIN unnest(CAST(:types AS text[]), CAST(:kinds AS text[])) AS t(type, kind) ON t.kind = e.kind
    WHERE e.saga_id = :saga_id
), targets AS (
    SELECT w.id AS endpoint_id, events.id AS event_id, events.saga_id, events.type
    FROM webhook_endpoints w JOIN events ON events.type = ANY (w.event_types)
    WHERE w.tenant = :tenant AND w.enabled AND (CAST(:endpoint AS uuid) IS NULL OR w.id = :endpoint)
)
INSERT INTO webhook_deliveries (endpoint_id, event_id, saga_id, type)
SELECT endpoint_id, event_id, saga_id, type FROM targets
ON CONFLICT (endpoint_id, event_id) DO UPDATE SET status = 'pending', attempts = 0, first_attempt_at = NULL,
    next_attempt_at = now(), delivered_at = NULL
""")


def replay_saga(tenant: str, saga_id: UUID, endpoint_id: UUID | None = None) -> int:
    """Deliver a saga's events again to the tenant's endpoints (or one of them); how many deliveries."""
    with db.transaction() as conn:
        if endpoint_id is not None:
            _get(conn, tenant, endpoint_id)
        return conn.execute(_REPLAY_SAGA, {"tenant": tenant, "saga_id": saga_id, "endpoint": endpoint_id,
                                           "types": list(EVENT_TYPES), "kinds": list(EVENT_TYPES.values())}).rowcount


# An endpoint's most recent delivery attempts, newest first (for the console).
_ATTEMPTS = text("""
SELECT a.id, a.at, a.status_code, a.error, a.duration_ms, d.event_id, d.saga_id, d.type, d.status AS delivery_status
FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
WHERE a.endpoint_id = :id ORDER BY a.id DESC LIMIT :limit
""")


def detail(tenant: str, endpoint_id: UUID, limit: int = 50) -> dict[str, Any]:
    """The endpoint with its most recent attempts, read from one snapshot (REPEATABLE READ): its `pending` count and
    each attempt's `delivery_status` agree, even while a delivery is being recorded."""
    with db.engine().connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            shown = _get(conn, tenant, endpoint_id)
            rows = conn.execute(_ATTEMPTS, {"id": endpoint_id, "limit": limit}).mappings().all()
    return shown | {"recent_attempts": [
        {"at": r["at"].isoformat(), "status_code": r["status_code"], "error": r["error"],
         "duration_ms": round(r["duration_ms"], 1), "webhook_id": webhook_id(r["event_id"]),
         "saga_id": str(r["saga_id"]), "type": r["type"], "delivery_status": r["delivery_status"]} for r in rows]}
