"""Per-tenant limits on sagas in flight, so one tenant's burst cannot starve another's.

A saga is in flight while it is admitted and `pending`, `running`, `compensating` or `awaiting_input`. A tenant with
a limit (`SAGA_TENANT_MAX_ACTIVE`, or its own in `SAGA_TENANT_LIMITS`) that has that many in flight gets its next
sagas accepted but held: `pending`, `admitted` false, no deadline (recovery never takes them for stuck) and not
dispatched. Whenever one of its sagas stops being in flight, the process that ended it admits the oldest held ones
into the free slots and dispatches them; each recovery pass does it too, for every tenant with sagas held, which
covers a crash between a saga's end and that admission, and a limit raised or removed.

Every decision runs under a transaction-scoped advisory lock of the tenant, so two of them never count the same
free slot twice; ends need no lock, since a saga leaving flight only frees slots.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from saga import db, dispatch
from saga.claims import patience
from saga.definitions import get_saga_type
from saga.errors import UnknownSagaType, VersionNotDeclared
from saga.settings import get_settings
from saga.states import ACTIVE, SagaStatus

log = logging.getLogger("saga.tenant_slots")


def limit_for(tenant: str) -> int | None:
    """How many sagas of `tenant` may be in flight at once; None: no limit."""
    settings = get_settings()
    return settings.tenant_limits.get(tenant, settings.tenant_max_active)


def configured() -> bool:
    """Whether any tenant has a limit in this process's settings."""
    settings = get_settings()
    return settings.tenant_max_active is not None or bool(settings.tenant_limits)


# Serializes the decisions about one tenant's slots (an accept, an admission) until the transaction ends; taken in a
# statement of its own, so the count that follows reads what the previous holder committed.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('saga-tenant:' || CAST(:tenant AS text), 0))")

# How many of the tenant's sagas are in flight, counted no further than the limit: the answer needed is only
# whether, and how many, slots are free.
_IN_FLIGHT = text("""
SELECT count(*) AS in_flight FROM (
    SELECT 1 FROM sagas WHERE tenant = :tenant AND admitted AND status = ANY(CAST(:active AS text[])) LIMIT :limit
) AS bounded
""")


def lock(conn: Connection, tenant: str) -> None:
    """Take the tenant's slot lock for the rest of `conn`'s transaction."""
    conn.execute(_LOCK, {"tenant": tenant})


def in_flight(conn: Connection, tenant: str, limit: int) -> int:
    """The tenant's sagas in flight, at most `limit` (call under `lock`)."""
    row = conn.execute(_IN_FLIGHT, {"tenant": tenant, "active": list(ACTIVE), "limit": limit}).mappings().one()
    return int(row["in_flight"])


# The tenant's oldest held sagas, in the order they were accepted; a row an operator holds (a cancel deciding) is
# skipped rather than waited for, and the next one takes the slot.
_HELD = text("""
SELECT id, type, version FROM sagas
WHERE tenant = :tenant AND NOT admitted AND status = :pending
ORDER BY created_at, id
LIMIT :free
FOR UPDATE SKIP LOCKED
""")

# Admit them: a deadline from now (recovery sends one whose dispatch is lost), `updated_at` now (recovery's backoff
# counts from the admission, not from the wait), and an event saying how long each waited.
_ADMIT = text("""
WITH u AS (
    UPDATE sagas s SET admitted = true, updated_at = now(), deadline = now() + make_interval(secs => a.patience)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:patiences AS double precision[])) AS a(id, patience)
    WHERE s.id = a.id AND NOT s.admitted AND s.status = :pending
    RETURNING s.id, s.type, s.version, s.created_at
), e AS (
    INSERT INTO saga_events (saga_id, kind, detail)
    SELECT id, 'saga_admitted', jsonb_build_object(
        'waited_seconds', round(CAST(extract(epoch FROM now() - created_at) AS numeric), 3)) FROM u
)
SELECT id, type, version FROM u ORDER BY created_at, id
""")


def admit(tenant: str) -> list[UUID]:
    """Admit as many of the tenant's held sagas as it has free slots (all, up to a recovery batch, if it has no
    limit now), oldest first, and dispatch them; the ids admitted. A dispatch the broker refuses is left to
    recovery, which sends the saga once its deadline passes."""
    limit = limit_for(tenant)
    with db.transaction() as conn:
        lock(conn, tenant)
        free = get_settings().recovery_batch if limit is None else limit - in_flight(conn, tenant, limit)
        if free <= 0:
            return []
        held = conn.execute(_HELD, {"tenant": tenant, "pending": SagaStatus.PENDING.value, "free": free}
                            ).mappings().all()
        if not held:
            return []
        admitted = conn.execute(_ADMIT, {
            "ids": [r["id"] for r in held], "patiences": [_patience(r["type"], r["version"]) for r in held],
            "pending": SagaStatus.PENDING.value,
        }).mappings().all()
    for row in admitted:
        log.info("saga %s of tenant %s admitted: a slot is free", row["id"], tenant)
        _send(row["id"], row["type"], row["version"])
    return [row["id"] for row in admitted]


def _patience(type_name: str, version: int) -> float:
    """The saga's first deadline, as `start` gives one (the pickup timeout and lease margin alone where this
    process does not declare its type: recovery then looks at it, and judges)."""
    try:
        return patience(get_saga_type(type_name, version))
    except (UnknownSagaType, VersionNotDeclared):
        settings = get_settings()
        return settings.pickup_timeout + settings.lease_margin


def _send(saga_id: UUID, type_name: str, version: int) -> None:
    try:
        dispatch.forward(saga_id, get_saga_type(type_name, version), 0)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the saga to recovery, by its deadline
        log.warning("saga %s admitted but not dispatched (%s: %s); recovery will dispatch it", saga_id,
                    type(exc).__name__, exc)


# Whose saga it was: needed to admit the next of the same tenant.
_TENANT_OF = text("SELECT tenant FROM sagas WHERE id = :saga_id")


def ended(saga_id: UUID, tenant: str | None = None) -> None:
    """A saga stopped being in flight (it completed, compensated, failed or paused) and that is committed: give
    its slot to the oldest held saga of its tenant. Without any limit configured, nothing (not even a query).
    Errors are logged, not raised: the caller's work is done, and recovery's next pass admits instead."""
    if not configured():
        return
    try:
        if tenant is None:
            with db.autocommit() as conn:
                row = conn.execute(_TENANT_OF, {"saga_id": saga_id}).mappings().first()
            if row is None:
                return
            tenant = row["tenant"]
        if limit_for(tenant) is not None:
            admit(tenant)
    except Exception:
        log.exception("saga %s ended; held sagas of its tenant not admitted now, recovery will", saga_id)


# Tenants with sagas held: read from the small `sagas_held` index, whether or not limits are configured here (a
# limit removed from the settings releases what it held).
_WAITING_TENANTS = text("""
SELECT DISTINCT tenant FROM sagas WHERE NOT admitted AND status = :pending LIMIT :batch
""")


def admit_waiting() -> dict[str, int]:
    """Recovery's pass: admit held sagas of every tenant with free slots; how many, by tenant."""
    params: dict[str, Any] = {"pending": SagaStatus.PENDING.value, "batch": get_settings().recovery_batch}
    with db.autocommit() as conn:
        tenants = [r["tenant"] for r in conn.execute(_WAITING_TENANTS, params).mappings()]
    admitted: dict[str, int] = {}
    for tenant in tenants:
        try:
            if ids := admit(tenant):
                admitted[tenant] = len(ids)
        except Exception:
            log.exception("held sagas of tenant %s not admitted; next pass tries again", tenant)
    return admitted
