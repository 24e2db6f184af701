"""Versions of a saga type: a saga runs by the steps of the version it started on, or not at all.

A worker whose code no longer declares that version (or declares it with other steps) never runs the saga:
recovery pauses it, with a reason naming the version, until a deployment that declares it again resumes it.
A version newer than this process knows is left alone: a deployment is rolling out, and its workers run it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text

from saga import db, tenant_slots
from saga.definitions import SagaType, get_saga_type, versions_of
from saga.errors import VersionNotDeclared
from saga.store import SagaRecord

log = logging.getLogger("saga.versions")

_PAUSE = text("""
WITH before AS (
    SELECT status FROM sagas WHERE id = :saga_id FOR NO KEY UPDATE
), u AS (
    UPDATE sagas SET status = 'paused', error = :reason, awaiting = NULL, deadline = NULL, updated_at = now()
    WHERE id = :saga_id AND status IN ('pending', 'running', 'compensating', 'awaiting_input')
        AND EXISTS (SELECT FROM before)  -- `before` read now: read later, it skips the row changed here
    RETURNING id
)
INSERT INTO saga_events (saga_id, kind, detail)
SELECT id, 'saga_paused', jsonb_build_object('reason', :reason, 'from', (SELECT status FROM before),
                                             'version', :version)
FROM u
RETURNING id
""")


def type_of(record: SagaRecord) -> SagaType[Any]:
    """The declaration the saga runs by: its own version, with the steps it started with; VersionNotDeclared
    (a 409 in the API) if this process has no such declaration."""
    saga_type = get_saga_type(record.type, record.version)
    if record.fingerprint is not None and record.fingerprint != saga_type.fingerprint:
        raise VersionNotDeclared(
            f"saga type {record.type!r} version {record.version} is declared here with other steps than the saga "
            f"started with (fingerprint {saga_type.fingerprint}, the saga's {record.fingerprint}): declare the "
            "changed steps as a new version", {"version": record.version})
    return saga_type


def stop(record: SagaRecord, why: VersionNotDeclared) -> bool:
    """Pause a saga this process cannot run by its own steps (True), unless its version is newer than any
    declared here: then a rolling deployment's newer workers run it, and it is left alone (False)."""
    declared = versions_of(record.type)
    if declared and record.version > declared[-1]:
        log.info("saga %s is on %s version %s, newer than this process declares: left to newer workers",
                 record.id, record.type, record.version)
        return False
    with db.transaction() as conn:
        paused = conn.execute(_PAUSE, {"saga_id": record.id, "reason": why.message, "version": record.version}).first()
    if paused:
        log.warning("saga %s paused: %s", record.id, why.message)
        tenant_slots.ended(record.id, record.tenant)
    return True
