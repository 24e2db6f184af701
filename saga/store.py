"""Reading sagas, their steps and their events out of the ledger."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, select
from sqlalchemy.orm import aliased

from saga import db
from saga.errors import SagaNotFound
from saga.ledger import saga_events, saga_steps, sagas


@dataclass(frozen=True)
class StepRecord:
    index: int
    name: str
    kind: str
    status: str
    attempts: int
    compensation_attempts: int
    effect_unknown: bool
    result: Any
    checkpoint: dict[str, Any] | None
    compensation_result: Any
    error: str | None
    task_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    compensated_at: datetime | None


@dataclass(frozen=True)
class SagaRecord:
    id: UUID
    tenant: str
    type: str
    status: str
    input: dict[str, Any] | None  # without the large fields its type declares; None where not read
    idempotency_key: str | None
    cancel_requested: bool
    error: str | None
    created_at: datetime
    updated_at: datetime
    steps: list[StepRecord]
    version: int = 1  # of its type, which it runs by
    fingerprint: str | None = None  # of that version's steps when it started (None: before versions)
    restart_of: UUID | None = None  # the saga this one started again
    restarted_as: UUID | None = None  # the saga that started this one again
    awaiting: dict[str, Any] | None = None  # while awaiting_input: {step, fields, reason, until}
    rewind: dict[str, Any] | None = None  # while a rewind undoes steps: {to, step, input, large?, fields}
    admitted: bool = True  # False while it waits `pending` for a slot of its tenant (`saga.tenant_slots`)

    @property
    def undoing(self) -> list[StepRecord]:
        """The steps an undo of this saga covers: all, or during a rewind the one it goes back to and later."""
        return self.steps[self.rewind["to"]:] if self.rewind else self.steps

    @property
    def progress(self) -> dict[str, int]:
        return {"done": sum(s.status == "succeeded" for s in self.steps), "total": len(self.steps)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "type": self.type, "version": self.version, "status": self.status, "input": self.input,
            "idempotency_key": self.idempotency_key, "cancel_requested": self.cancel_requested,
            "error": self.error, "progress": self.progress,
            "steps": [
                {"name": s.name, "kind": s.kind, "status": s.status, "attempts": s.attempts,
                 "compensation_attempts": s.compensation_attempts, "effect_unknown": s.effect_unknown,
                 "result": s.result, "checkpoint": s.checkpoint, "compensation_result": s.compensation_result,
                 "error": s.error,
                 "task_id": s.task_id, "started_at": _iso(s.started_at), "finished_at": _iso(s.finished_at),
                 "compensated_at": _iso(s.compensated_at)}
                for s in self.steps
            ],
            "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
            "restart_of": _str(self.restart_of), "restarted_as": _str(self.restarted_as),
            "awaiting_input": self.awaiting,
            "rewinding_to": self.rewind["step"] if self.rewind else None,
            "admitted": self.admitted,
        }


@dataclass(frozen=True)
class Event:
    id: int
    step: str | None
    kind: str
    detail: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "step": self.step, "kind": self.kind, "detail": self.detail,
                "created_at": _iso(self.created_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _str(value: UUID | None) -> str | None:
    return str(value) if value else None


# What reading a saga loads: everything but the large input fields, which only their steps read.
_restarts = aliased(sagas, name="restarts")
# Every column but the large input, and the saga that restarted this one (one probe of a unique index).
_SHOWN = [*(c for c in sagas.c if c.name != "large_input"),
          select(_restarts.c.id).where(_restarts.c.restart_of == sagas.c.id).scalar_subquery().label("restarted_as")]


def load(saga_id: UUID, tenant: str | None = None, conn: Connection | None = None) -> SagaRecord:
    """The saga with its steps; SagaNotFound if it does not exist (or belongs to another tenant)."""
    if conn is None:
        with db.transaction() as own:
            return load(saga_id, tenant, own)
    query = select(*_SHOWN).where(sagas.c.id == saga_id)
    if tenant is not None:
        query = query.where(sagas.c.tenant == tenant)
    row = conn.execute(query).mappings().first()
    if row is None:
        raise SagaNotFound(f"saga {saga_id} not found")
    steps = conn.execute(
        select(saga_steps).where(saga_steps.c.saga_id == saga_id).order_by(saga_steps.c.idx)
    ).mappings().all()
    return _saga(row, steps)


def _saga(row: Any, steps: Any) -> SagaRecord:
    return SagaRecord(
        id=row["id"], tenant=row["tenant"], type=row["type"], version=row["version"],
        fingerprint=row["fingerprint"], status=row["status"], input=row.get("input"),
        idempotency_key=row["idempotency_key"], cancel_requested=row["cancel_requested"], error=row["error"],
        created_at=row["created_at"], updated_at=row["updated_at"], restart_of=row["restart_of"],
        restarted_as=row["restarted_as"], awaiting=row["awaiting"],
        rewind=row["rewind"], admitted=row["admitted"],
        steps=[
            StepRecord(
                index=s["idx"], name=s["name"], kind=s["kind"], status=s["status"], attempts=s["attempts"],
                compensation_attempts=s["compensation_attempts"], effect_unknown=s["effect_unknown"],
                result=s["result"], checkpoint=s["checkpoint"], compensation_result=s["compensation_result"],
                error=s["error"], task_id=s["task_id"], started_at=s["started_at"],
                finished_at=s["finished_at"], compensated_at=s["compensated_at"],
            )
            for s in steps
        ],
    )


def list_sagas(
    tenant: str, *, status: str | None = None, type_: str | None = None, limit: int = 50,
    before: tuple[datetime, UUID] | None = None, since: datetime | None = None, idempotency_key: str | None = None,
    with_input: bool = True, restart_of: UUID | None = None,
) -> list[SagaRecord]:
    """Newest first; `before` is the (created_at, id) of the last saga of the previous page; `since` keeps those
    created at or after it; `restart_of` the saga that restarted it. Without `with_input` each record's input is
    None (and not read)."""
    columns = _SHOWN if with_input else [c for c in _SHOWN if c.name != "input"]
    query = select(*columns).where(sagas.c.tenant == tenant)
    if restart_of is not None:
        query = query.where(sagas.c.restart_of == restart_of)
    if idempotency_key is not None:
        query = query.where(sagas.c.idempotency_key == idempotency_key)
    if since is not None:
        query = query.where(sagas.c.created_at >= since)
    if status:
        query = query.where(sagas.c.status == status)
    if type_:
        query = query.where(sagas.c.type == type_)
    if before:
        query = query.where((sagas.c.created_at, sagas.c.id) < before)  # type: ignore[operator]
    query = query.order_by(sagas.c.created_at.desc(), sagas.c.id.desc()).limit(limit)
    with db.transaction() as conn:
        rows = conn.execute(query).mappings().all()
        if not rows:
            return []
        steps = conn.execute(
            select(saga_steps).where(saga_steps.c.saga_id.in_([r["id"] for r in rows]))
            .order_by(saga_steps.c.saga_id, saga_steps.c.idx)
        ).mappings().all()
    by_saga: dict[UUID, list[Any]] = {}
    for s in steps:
        by_saga.setdefault(s["saga_id"], []).append(s)
    return [_saga(r, by_saga.get(r["id"], [])) for r in rows]


def digest(request: Any) -> str:
    """A fingerprint of a request's JSON body, to tell a replay of its idempotency key from another request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def requested_under(conn: Connection, saga_id: UUID, kind: str, key: str) -> str | None:
    """The digest of the request an earlier call with this idempotency key made of the saga (its `kind` event
    records both), if one did."""
    return conn.execute(
        select(saga_events.c.detail["hash"].astext)
        .where(saga_events.c.saga_id == saga_id, saga_events.c.kind == kind,
               saga_events.c.detail["idempotency_key"].astext == key)
    ).scalar()


def events(saga_id: UUID, tenant: str | None = None, after: int = 0, limit: int = 1000) -> list[Event]:
    """The saga's audit log, oldest first."""
    with db.transaction() as conn:
        load(saga_id, tenant, conn)
        rows = conn.execute(
            select(saga_events).where(saga_events.c.saga_id == saga_id, saga_events.c.id > after)
            .order_by(saga_events.c.id).limit(limit)
        ).mappings().all()
    return [Event(id=r["id"], step=r["step"], kind=r["kind"], detail=r["detail"], created_at=r["created_at"])
            for r in rows]
