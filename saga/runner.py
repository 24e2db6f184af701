"""Starting a saga: validate everything, record it with its steps in one transaction, then dispatch."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, select, text

from saga import breakers, db, dispatch, metrics, store, tenant_slots, tracing
from saga.claims import patience
from saga.definitions import SagaType, get_saga_type
from saga.errors import DependencyUnavailable, IdempotencyConflict, InvalidInput
from saga.ledger import sagas
from saga.settings import get_settings
from saga.storable import Unstorable, storable
from saga.store import SagaRecord, StepRecord

log = logging.getLogger("saga.runner")

# The saga, its steps and its first event in one statement; nothing when the idempotency key is taken. A saga held
# for a slot of its tenant (`saga.tenant_slots`) gets no deadline: recovery leaves it alone until it is admitted.
_ACCEPT = text("""
WITH s AS (
    INSERT INTO sagas (id, tenant, type, version, fingerprint, status, input, large_input, idempotency_key,
                       request_hash, deadline, restart_of, admitted)
    VALUES (:id, :tenant, :type, :version, :fingerprint, 'pending', CAST(:input AS jsonb), CAST(:large AS jsonb),
            :key, :hash, CASE WHEN CAST(:admitted AS boolean) THEN now() + make_interval(secs => :pickup) END,
            :restart_of, :admitted)
    ON CONFLICT (tenant, idempotency_key) DO NOTHING
    RETURNING id, created_at
), st AS (
    INSERT INTO saga_steps (saga_id, idx, name, kind, status)
    SELECT s.id, x.idx, x.name, x.kind, 'pending'
    FROM s, unnest(CAST(:idxs AS int[]), CAST(:names AS text[]), CAST(:kinds AS text[])) AS x(idx, name, kind)
), e AS (
    INSERT INTO saga_events (saga_id, kind, detail) SELECT id, 'saga_accepted', CAST(:detail AS jsonb) FROM s
), r AS (
    -- a restart: the saga it starts again hears of it in the same statement
    INSERT INTO saga_events (saga_id, kind, detail)
    SELECT CAST(:restart_of AS uuid), 'saga_restarted', CAST(:restarted AS jsonb) FROM s
    WHERE CAST(:restart_of AS uuid) IS NOT NULL
)
SELECT id, created_at FROM s
""")


@dataclass(frozen=True)
class Started:
    saga: SagaRecord
    created: bool  # False when an earlier request with the same idempotency key made it


def start(
    type_name: str, input_data: Any, *, idempotency_key: str | None = None, tenant: str | None = None,
    dispatch: bool = True, restart_of: UUID | None = None, changed: tuple[str, ...] = (),
    by: Mapping[str, Any] | None = None,
) -> Started:
    """Accept a saga: raises UnknownSagaType, InvalidInput or IdempotencyConflict before writing anything.

    With `dispatch=False` the caller sends it later with `send_forward` (the API does, after answering), unless
    the saga was held for a slot of its tenant (`saga.admitted` false): `saga.tenant_slots` sends it once admitted.
    `restart_of` links it to the saga it starts again, whose log records it with the `changed` fields (see
    `operator.restart`). `by`, who asked (see `saga.callers`), goes in its `saga_accepted` event and a restarted
    saga's `saga_restarted`; without it they name nobody.
    """
    settings = get_settings()
    tenant = tenant or settings.tenant
    saga_type = get_saga_type(type_name)
    payload = valid_payload(saga_type, input_data)

    if settings.breaker_admission == "refuse":
        _admit(saga_type, tenant, idempotency_key)

    request = {"type": type_name, "input": payload} | ({"restart_of": str(restart_of)} if restart_of else {})
    request_hash = store.digest(request)
    saga_id = uuid4()
    stored, large = saga_type.split_input(payload)
    who = {} if by is None else {"by": dict(by)}
    limit = tenant_slots.limit_for(tenant)
    # Without a limit one statement, so autocommit: the ledger holds the saga before it is dispatched. With one,
    # the tenant's slots are counted and the saga recorded under its slot lock, in one transaction.
    with db.autocommit() if limit is None else db.transaction() as conn:
        admitted = limit is None or _slot_free(conn, tenant, limit)
        row = db.fetchone(conn, _ACCEPT, {
            "id": saga_id, "tenant": tenant, "type": type_name, "version": saga_type.version,
            "fingerprint": saga_type.fingerprint, "input": db.to_json(stored),
            "large": None if large is None else db.to_json(large),
            "key": idempotency_key, "hash": request_hash, "pickup": patience(saga_type),
            "idxs": [s.index for s in saga_type.steps], "names": [s.name for s in saga_type.steps],
            "kinds": [s.kind.value for s in saga_type.steps],
            "detail": db.to_json({"type": type_name, "version": saga_type.version, "idempotency_key": idempotency_key}
                                 | ({"restart_of": str(restart_of)} if restart_of else {}) | who),
            "restart_of": restart_of,
            "restarted": db.to_json({"as": str(saga_id), "changed": list(changed)} | who), "admitted": admitted,
        })
        if row is None:
            existing = conn.execute(
                select(sagas.c.id, sagas.c.request_hash)
                .where(sagas.c.tenant == tenant, sagas.c.idempotency_key == idempotency_key)
            ).one()
            if existing.request_hash != request_hash:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was already used with a different request",
                    {"saga_id": str(existing.id)},
                )
            return Started(store.load(existing.id, conn=conn), created=False)
    record = SagaRecord(
        id=saga_id, tenant=tenant, type=type_name, version=saga_type.version, status="pending", input=stored,
        idempotency_key=idempotency_key, cancel_requested=False, error=None, created_at=row[1],
        updated_at=row[1], restart_of=restart_of, admitted=admitted,
        steps=[StepRecord(index=s.index, name=s.name, kind=s.kind.value, status="pending", attempts=0,
                          compensation_attempts=0, effect_unknown=False, result=None, checkpoint=None,
                          compensation_result=None, error=None, task_id=None,
                          started_at=None, finished_at=None, compensated_at=None) for s in saga_type.steps],
    )
    tracing.accepted(saga_id, type_name, tenant)
    if not admitted:
        log.info("saga %s of tenant %s held: the tenant has its %s sagas in flight", saga_id, tenant, limit)
    elif dispatch:
        send_forward(saga_id, type_name, 0, saga_type.version)
    metrics.SAGAS_STARTED.labels(type_name).inc()
    return Started(record, created=True)


def _slot_free(conn: Connection, tenant: str, limit: int) -> bool:
    """Whether the tenant has a free slot for a saga started now; holds its slot lock until `conn` commits."""
    tenant_slots.lock(conn, tenant)
    return tenant_slots.in_flight(conn, tenant, limit) < limit


# A replay of an idempotency key is answered with its saga, whatever the breakers say.
_KEY_TAKEN = text("SELECT 1 FROM sagas WHERE tenant = :tenant AND idempotency_key = :key")


def _admit(saga_type: SagaType[Any], tenant: str, idempotency_key: str | None) -> None:
    """Refuse a new saga that would only wait: a breaker of a step before its point of no return is open."""
    held = breakers.blocking(saga_type)
    if held is None:
        return
    if idempotency_key is not None:
        with db.autocommit() as conn:
            if conn.execute(_KEY_TAKEN, {"tenant": tenant, "key": idempotency_key}).first():
                return
    metrics.ADMISSION_REFUSED.labels(saga_type.name, held.name).inc()
    wait = breakers.retry_after(held)
    raise DependencyUnavailable(
        f"{held.name} is unavailable (its circuit breaker is {held.phase.replace('_', '-')}): saga type "
        f"{saga_type.name!r} depends on it before its point of no return; try again in {wait} s",
        {"dependency": held.name, "state": held.phase, "retry_after": wait})


def valid_payload(saga_type: SagaType[Any], data: Any) -> dict[str, Any]:
    """The input as JSON the ledger can store, or InvalidInput naming every field that is wrong."""
    payload = saga_type.validate_input(data).model_dump(mode="json")
    try:
        payload = storable(payload)
    except Unstorable as exc:
        raise InvalidInput(f"invalid input for saga {saga_type.name!r}: {exc}",
                           [{"field": exc.path or "input", "message": str(exc)}]) from None
    oversized = [{"field": name, "message": f"{size} bytes as JSON; at most {saga_type.max_field_bytes} inline "
                                            "(declare it in large_fields to store it apart)"}
                 for name, value in payload.items() if name not in saga_type.large_fields
                 and (size := len(json.dumps(value, separators=(",", ":")).encode())) > saga_type.max_field_bytes]
    if oversized:
        raise InvalidInput(f"invalid input for saga {saga_type.name!r}: field "
                           f"{', '.join(repr(o['field']) for o in oversized)} too large", oversized)
    return payload


def send_forward(saga_id: UUID, type_name: str, start_index: int, version: int | None = None) -> None:
    """Dispatch the forward chain (of the saga's `version` of its type; default the newest); if the broker is
    down the saga stays accepted and recovery sends it."""
    try:
        dispatch.forward(saga_id, get_saga_type(type_name, version), start_index)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the work to recovery
        log.warning("saga %s accepted but not dispatched (%s: %s); recovery will dispatch it",
                    saga_id, type(exc).__name__, exc)
        with db.transaction() as conn:  # due at once: recovery's next pass sends it
            conn.execute(text("UPDATE sagas SET deadline = now() WHERE id = :id AND status IN ('pending', 'running')"),
                         {"id": saga_id})
