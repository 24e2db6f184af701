"""Retention: deleting sagas that ended long ago (`completed` or `compensated`) with their steps and events, a
batch per short transaction, so workers and the API never wait on it. `paused` and `failed` sagas are kept:
they wait for an operator however old they are."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import text

from saga import db

log = logging.getLogger("saga.retention")

# One batch: rows already locked (a saga being read for update) are skipped, not waited for; steps go with their
# saga (ON DELETE CASCADE), events by their saga id.
_PRUNE = text("""
WITH doomed AS (
    SELECT id FROM sagas
    WHERE status IN ('completed', 'compensated')
      AND created_at < now() - make_interval(secs => :age) AND updated_at < now() - make_interval(secs => :age)
    ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED
), events AS (
    DELETE FROM saga_events WHERE saga_id IN (SELECT id FROM doomed)
)
DELETE FROM sagas WHERE id IN (SELECT id FROM doomed) RETURNING id
""")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(value: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s` as a duration; ValueError naming the value otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if not found:
        raise ValueError(f"{value!r} is not a duration like 30d, 12h, 90m or 45s")
    return timedelta(seconds=float(found[1]) * _UNITS[found[2]])


def prune_batch(older_than: timedelta, batch: int = 1000) -> int:
    """Delete at most `batch` sagas that ended more than `older_than` ago; returns how many went."""
    with db.transaction() as conn:
        return len(conn.execute(_PRUNE, {"age": older_than.total_seconds(), "batch": batch}).all())


def prune(older_than: timedelta, batch: int = 1000, pause: float = 0.05,
          progress: Callable[[int], None] | None = None) -> int:
    """Delete every saga that ended more than `older_than` ago, batch after batch (with a `pause` between, so
    other writers get the table); `progress` hears the running total. Returns the total."""
    total = 0
    while True:
        done = prune_batch(older_than, batch)
        total += done
        if progress and done:
            progress(total)
        if done < batch:
            break
        time.sleep(pause)
    if total:
        log.info("retention deleted %d saga(s) that ended more than %s ago", total, older_than)
    return total
