"""The seal on a step's result that a retried message carries (`commit`), when a body finished but the ledger
could not record its result: an HMAC-SHA256 over the saga, step, mode, fencing token and result, keyed by a secret
only the ledger holds (`saga_seal_key`, made by migration 0011). Whoever can merely send a task (through Flower's
API, or the broker) cannot seal one, so cannot have a step recorded as done without running it."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from saga import db, metrics
from saga.errors import ConfigurationError
from saga.settings import get_settings

log = logging.getLogger("saga.commit_seal")

# The ledger's sealing key: one row, made at random when the ledger was migrated.
_KEY = text("SELECT key FROM saga_seal_key WHERE id = 1")

# This process's copy of each ledger's key, by database URL: read while the ledger answers, so a commit that
# finds it unreachable later can still be sealed.
_keys: dict[str, bytes] = {}


def load() -> bytes:
    """The ledger's sealing key, read once per process and kept. Raises what the database raises while it cannot
    be reached, and `ConfigurationError` if the ledger has no key (not migrated to 0011)."""
    url = get_settings().database_url
    key = _keys.get(url)
    if key is None:
        try:
            with db.autocommit() as conn:
                key = conn.execute(_KEY).scalar()
        except ProgrammingError as exc:  # the table is missing, or this role may not read it
            raise ConfigurationError(f"the ledger's saga_seal_key cannot be read ({str(exc.orig).splitlines()[0]}): run "
                                     "`saga migrate`, as the role that owns the ledger's tables") from exc
        if not key:
            raise ConfigurationError("the ledger's saga_seal_key table holds no key: run `saga migrate`")
        _keys[url] = key = bytes(key)
    return key


def seal(saga_id: UUID, step: str, mode: str, token: int, result: str) -> dict[str, Any]:
    """The `commit` a retried message carries: the attempt's token, its result as JSON text, and their seal."""
    return {"token": token, "result": result, "seal": _mac(load(), saga_id, step, mode, token, result)}


def opened(saga_id: UUID, step: str, mode: str, commit: Any) -> tuple[int, str] | None:
    """(token, result) of a `commit` this ledger's key sealed for this saga, step and mode; None for one without
    a seal, with a wrong one, or of the wrong shape: the message did not come from the engine."""
    if not isinstance(commit, dict):
        return None
    token, result, given = commit.get("token"), commit.get("result"), commit.get("seal")
    if type(token) is not int or not isinstance(result, str) or not isinstance(given, str):
        return None
    expected = _mac(load(), saga_id, step, mode, token, result)
    return (token, result) if hmac.compare_digest(expected.encode(), given.encode()) else None


def refused(saga_id: UUID, saga_type: str, step: str, mode: str) -> None:
    """Say that a message's `commit` was refused, and count it: nothing was recorded, the step is as it was."""
    metrics.COMMITS_REFUSED.labels(saga_type, step, mode).inc()
    log.warning("saga %s %s %s: refused a commit without a valid seal (forged or unauthenticated message); "
                "nothing recorded", saga_id, mode, step)


def _mac(key: bytes, saga_id: UUID, step: str, mode: str, token: int, result: str) -> str:
    message = json.dumps([str(saga_id), step, mode, token, result], separators=(",", ":"))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
