"""A tenant's sagas at a glance: how many there are by type and status, which of them need an operator, and
how many started and ended in each minute of the last hour. What the console's front page draws.

Each figure is one statement, scoped to the tenant and led by the `(tenant, ...)` indexes of `sagas`; the
statuses are bound from `saga.states`, never spelled out in the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from saga import db
from saga.states import SagaStatus

# The operator list is cut here; `Overview.needs_operator_total` still counts every saga in it.
NEEDS_OPERATOR_LIMIT = 50
# A saga that ended in the last hour is looked for among those created in the last day, so the statement stays
# on the (tenant, status, created_at) index however large the ledger grows; one that took longer than that to
# end is in the counts but not in the per-minute figures.
ENDED_LOOKBACK = timedelta(days=1)
# How a saga can end (or stop for an operator), in the order the per-minute figures give them.
ENDINGS = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.PAUSED, SagaStatus.FAILED)


@dataclass(frozen=True)
class Count:
    type: str
    status: str
    count: int


@dataclass(frozen=True)
class NeedsOperator:
    """A saga an operator should look at: `failed`, `paused`, or `awaiting_input` with less than half of its
    wait left. `since` is when it stopped (or asked for input); `until` when a wait for input ends."""

    id: UUID
    type: str
    status: str
    reason: str | None
    since: datetime
    until: datetime | None


@dataclass(frozen=True)
class Minute:
    """How many sagas started in the minute from `at`, and how many reached each of `ENDINGS` in it."""

    at: datetime
    started: int
    completed: int
    compensated: int
    paused: int
    failed: int


@dataclass(frozen=True)
class Overview:
    now: datetime  # the database's clock when the figures were taken
    counts: list[Count]
    needs_operator: list[NeedsOperator]
    needs_operator_total: int
    last_hour: list[Minute]  # sixty minutes, oldest first; the last one is the current, partial minute

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "counts": [{"type": c.type, "status": c.status, "count": c.count} for c in self.counts],
            "needs_operator": [
                {"id": str(n.id), "type": n.type, "status": n.status, "reason": n.reason,
                 "since": n.since.isoformat(), "until": n.until.isoformat() if n.until else None}
                for n in self.needs_operator
            ],
            "needs_operator_total": self.needs_operator_total,
            "last_hour": [
                {"at": m.at.isoformat(), "started": m.started, "completed": m.completed,
                 "compensated": m.compensated, "paused": m.paused, "failed": m.failed}
                for m in self.last_hour
            ],
        }


def overview(tenant: str) -> Overview:
    """The tenant's figures, read in one transaction."""
    with db.transaction() as conn:
        now = conn.execute(text("SELECT now()")).scalar_one()
        return Overview(now=now, counts=counts(conn, tenant), **needs_operator(conn, tenant),
                        last_hour=last_hour(conn, tenant))


_COUNTS = text("""
SELECT type, status, count(*) FROM sagas WHERE tenant = :tenant GROUP BY type, status ORDER BY type, status
""")


def counts(conn: Connection, tenant: str) -> list[Count]:
    """How many of the tenant's sagas (those retention kept) are in each status, by type."""
    return [Count(type=r[0], status=r[1], count=r[2]) for r in conn.execute(_COUNTS, {"tenant": tenant})]


# Failed first (a compensation gave up: effects may be left behind), then waits for input in the order they end,
# then paused sagas; within failed and paused, the one that has waited longest first. A wait's start is its
# latest `input_requested` event, found backwards on the (saga_id, id) index.
_NEEDS_OPERATOR = text("""
WITH waiting AS (
    SELECT s.id, s.type, s.status, s.awaiting ->> 'reason' AS reason, asked.at AS since,
        CAST(s.awaiting ->> 'until' AS timestamptz) AS until
    FROM sagas s CROSS JOIN LATERAL (
        SELECT e.created_at AS at FROM saga_events e
        WHERE e.saga_id = s.id AND e.kind = 'input_requested' ORDER BY e.id DESC LIMIT 1
    ) asked
    WHERE s.tenant = :tenant AND s.status = :awaiting_input
), due AS (
    SELECT id, type, status, error AS reason, updated_at AS since, NULL::timestamptz AS until, 0 AS rank
    FROM sagas WHERE tenant = :tenant AND status = :failed
    UNION ALL
    SELECT id, type, status, reason, since, until, 1 FROM waiting WHERE until - now() < (until - since) / 2
    UNION ALL
    SELECT id, type, status, error, updated_at, NULL, 2 FROM sagas WHERE tenant = :tenant AND status = :paused
)
SELECT id, type, status, reason, since, until, count(*) OVER () AS total FROM due
ORDER BY rank, coalesce(until, since), id
LIMIT :limit
""")


def needs_operator(conn: Connection, tenant: str) -> dict[str, Any]:
    """The tenant's sagas that need an operator, most pressing first (at most `NEEDS_OPERATOR_LIMIT`), and how
    many there are in all."""
    rows = conn.execute(_NEEDS_OPERATOR, {
        "tenant": tenant, "failed": SagaStatus.FAILED.value, "paused": SagaStatus.PAUSED.value,
        "awaiting_input": SagaStatus.AWAITING_INPUT.value, "limit": NEEDS_OPERATOR_LIMIT,
    }).all()
    return {
        "needs_operator": [NeedsOperator(id=r[0], type=r[1], status=r[2], reason=r[3], since=r[4], until=r[5])
                           for r in rows],
        "needs_operator_total": rows[0][6] if rows else 0,
    }


# Sixty buckets, the current minute last. A saga is counted in the minute it was created, and (if it is in one
# of `ENDINGS` now) in the minute it got there: the statement that ends a saga is its last change.
_LAST_HOUR = text("""
WITH minutes AS (
    SELECT generate_series(date_trunc('minute', now()) - interval '59 minutes', date_trunc('minute', now()),
                           interval '1 minute') AS at
), started AS (
    SELECT date_trunc('minute', created_at) AS at, count(*) AS n FROM sagas
    WHERE tenant = :tenant AND created_at >= date_trunc('minute', now()) - interval '59 minutes'
    GROUP BY 1
), ended AS (
    SELECT date_trunc('minute', updated_at) AS at,
        count(*) FILTER (WHERE status = :completed) AS completed,
        count(*) FILTER (WHERE status = :compensated) AS compensated,
        count(*) FILTER (WHERE status = :paused) AS paused,
        count(*) FILTER (WHERE status = :failed) AS failed
    FROM sagas
    WHERE tenant = :tenant AND status IN (:completed, :compensated, :paused, :failed)
        AND created_at >= now() - make_interval(secs => :lookback)
        AND updated_at >= date_trunc('minute', now()) - interval '59 minutes'
    GROUP BY 1
)
SELECT m.at, coalesce(s.n, 0), coalesce(e.completed, 0), coalesce(e.compensated, 0), coalesce(e.paused, 0),
    coalesce(e.failed, 0)
FROM minutes m LEFT JOIN started s ON s.at = m.at LEFT JOIN ended e ON e.at = m.at
ORDER BY m.at
""")


def last_hour(conn: Connection, tenant: str) -> list[Minute]:
    """Per minute of the last hour: sagas started, and sagas that completed, were compensated, paused or failed."""
    rows = conn.execute(_LAST_HOUR, {
        "tenant": tenant, "lookback": ENDED_LOOKBACK.total_seconds(),
        **{status.value: status.value for status in ENDINGS},
    })
    return [Minute(at=r[0], started=r[1], completed=r[2], compensated=r[3], paused=r[4], failed=r[5]) for r in rows]
