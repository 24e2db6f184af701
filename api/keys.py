"""API keys: each belongs to one tenant and carries scopes (what it may do there), and only its SHA-256 is stored
(in the `api_keys` table).

Keys come from two places: the database (created with `python -m service keys create`, revocable) and the
`SAGA_API_KEYS` setting (`tenant:key,...`, for development and tests; these have every scope). A key is a long random token,
so a fast hash is enough to store it safely; the plain key is shown once, when it is created. Who created and
who revoked each stored key is kept in `api_key_events`, written in the same transaction as the change.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    Connection,
    DateTime,
    MetaData,
    RowMapping,
    Table,
    Text,
    desc,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from saga import callers, db
from workers.settings import service_settings

# The service's own table (migrations/), beside the ledger's: created by `python -m service migrate`.
api_keys = Table(
    "api_keys", MetaData(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant", Text, nullable=False),
    Column("name", Text),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    Column("scopes", ARRAY(Text), nullable=False),
)

# Who created or revoked a stored key, and when (migrations/versions/api_0002_key_events.py).
api_key_events = Table(
    "api_key_events", MetaData(),
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("key_id", BigInteger, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("by", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("scopes", ARRAY(Text)),  # a created key's, as it was made; null on a revocation
)

# What a key may do, each with what it allows (migrations/versions/api_0003_key_scopes.py gives keys from before
# scopes every one of these).
SCOPES: dict[str, str] = {
    "sagas:read": "read, list and follow sagas (long poll, event stream), their audit logs, the stats and the "
                  "circuit breakers",
    "sagas:start": "start sagas",
    "sagas:operate": "act on sagas: cancel, resume, compensate, rewind, give input, restart",
    "webhooks:manage": "manage webhook subscriptions",
}
EVERY_SCOPE: tuple[str, ...] = tuple(SCOPES)

KEY_PREFIX = "saga_"
# What every stored key looks like (the prefix and 32 random bytes, URL-safe base64).
STORED_KEY = re.compile(r"saga_[A-Za-z0-9_-]{43}")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without the key itself."""

    id: int
    tenant: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class KeyGrant:
    """What a valid key reaches: its tenant, and what it may do there."""

    tenant: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class KeyEvent:
    """A stored key was created or revoked, and by whom (as `saga.callers` describes a caller)."""

    id: int
    key_id: int
    tenant: str
    kind: str  # created, revoked
    by: dict[str, Any]
    at: datetime
    scopes: tuple[str, ...] | None  # a created key's; None on a revocation


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    """The tenant name, or ValueError if it is not 1-64 letters, digits, `_`, `.` or `-`."""
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    return tenant


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, each once, in `SCOPES` order; ValueError naming any unknown one, or if there are none."""
    if isinstance(scopes, str):
        raise TypeError(f"scopes must be a collection of scope names, not the string {scopes!r}")
    named = set(scopes)
    if unknown := sorted(named - set(SCOPES)):
        raise ValueError(f"unknown scope {', '.join(map(repr, unknown))}: the scopes are {', '.join(SCOPES)}")
    if not named:
        raise ValueError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in named)


def create_key(tenant: str, name: str | None = None, *, scopes: Iterable[str] = EVERY_SCOPE,
               by: Mapping[str, Any] | None = None) -> tuple[ApiKey, str]:
    """Store a new key for `tenant` allowed `scopes` (default every one; ValueError naming an unknown one); returns
    the record and the plain key (shown once, never stored). `by` says who asked (see `saga.callers`; default
    `{"via": "library"}`): its `created` event records it, with the scopes."""
    who = callers.recorded(by)
    allowed = list(check_scopes(scopes))
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as conn:
        row = conn.execute(
            insert(api_keys).values(tenant=check_tenant(tenant), name=name, key_hash=hash_key(key), scopes=allowed)
            .returning(api_keys)
        ).mappings().one()
        # In the key's own transaction: no key exists without the record of who made it, and with what scopes.
        conn.execute(insert(api_key_events).values(key_id=row["id"], tenant=row["tenant"], kind="created", by=who,
                                                   scopes=allowed))
    return _record(row), key


def list_keys(tenant: str | None = None) -> list[ApiKey]:
    """Stored keys, oldest first (the keys themselves are not stored, only who they belong to)."""
    query = select(api_keys).order_by(api_keys.c.id)
    if tenant is not None:
        query = query.where(api_keys.c.tenant == tenant)
    with db.transaction() as conn:
        return [_record(r) for r in conn.execute(query).mappings()]


def revoke_key(key_id: int, *, by: Mapping[str, Any] | None = None) -> bool:
    """Revoke a stored key; False if there is no such key or it was revoked already. `by` says who asked (see
    `saga.callers`; default `{"via": "library"}`): its `revoked` event records it."""
    who = callers.recorded(by)
    with db.transaction() as conn:
        done = conn.execute(
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=func.now()).returning(api_keys.c.id, api_keys.c.tenant)
        ).mappings().first()
        if done is not None:  # only a key this call revoked: a repeat records nothing
            conn.execute(insert(api_key_events).values(key_id=key_id, tenant=done["tenant"], kind="revoked", by=who))
    return done is not None


def key_events(key_id: int | None = None, tenant: str | None = None, limit: int = 100) -> list[KeyEvent]:
    """Who created and revoked stored keys (of one key, or one tenant's), the newest `limit`, oldest first."""
    query = select(api_key_events).order_by(desc(api_key_events.c.id)).limit(limit)
    if key_id is not None:
        query = query.where(api_key_events.c.key_id == key_id)
    if tenant is not None:
        query = query.where(api_key_events.c.tenant == tenant)
    with db.transaction() as conn:
        rows = conn.execute(query).mappings().all()
    return [KeyEvent(id=r["id"], key_id=r["key_id"], tenant=r["tenant"], kind=r["kind"], by=r["by"], at=r["at"],
                     scopes=None if r["scopes"] is None else tuple(r["scopes"]))
            for r in reversed(rows)]


def configured_keys() -> dict[str, KeyGrant]:
    """Key hash -> tenant and scopes (every one) for the keys in the `SAGA_API_KEYS` setting."""
    return {hash_key(key): KeyGrant(tenant, frozenset(EVERY_SCOPE))
            for tenant, key in service_settings().api_key_pairs}


def stored_tenant(key_hash: str) -> str | None:
    """The tenant of a live stored key with this hash, or None."""
    with db.transaction() as conn:
        return conn.execute(
            select(api_keys.c.tenant).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        ).scalar()


# Every stored key's hash, scopes and state, read whole each second by each API process (a few hundred bytes per
# key): revoked ones too, so that a revoked key is refused at once rather than waited on as a new one.
_ALL_KEYS = select(api_keys.c.key_hash, api_keys.c.tenant, api_keys.c.scopes, api_keys.c.revoked_at)


def stored_keys(conn: Connection) -> tuple[dict[str, KeyGrant], set[str]]:
    """(key hash -> tenant and scopes of every live stored key, the hashes of the revoked ones)."""
    live: dict[str, KeyGrant] = {}
    revoked: set[str] = set()
    for row in conn.execute(_ALL_KEYS).mappings():
        if row["revoked_at"] is None:
            live[row["key_hash"]] = KeyGrant(row["tenant"], frozenset(row["scopes"]))
        else:
            revoked.add(row["key_hash"])
    return live, revoked


def tenant_for_key(key: str) -> str | None:
    """The tenant a key belongs to (from `SAGA_API_KEYS` or the database), or None if it is not valid."""
    key_hash = hash_key(key)
    configured = configured_keys().get(key_hash)
    return configured.tenant if configured else stored_tenant(key_hash)


def ensure_dev_key(path: Path, tenant: str = "dev") -> str:
    """A key for `tenant` kept in `path` (mode 0600): the one there if it is still valid, else a new one, made
    by the OS user and host running the local stack (`{"via": "dev", "user", "host"}`)."""
    if path.exists():
        key = path.read_text().strip()
        if key and tenant_for_key(key) == tenant:
            return key
    _, key = create_key(tenant, name=f"dev key in {path}", by=callers.this_user("dev"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def _record(row: RowMapping) -> ApiKey:
    return ApiKey(id=row["id"], tenant=row["tenant"], name=row["name"], created_at=row["created_at"],
                  revoked_at=row["revoked_at"], scopes=tuple(row["scopes"]))
