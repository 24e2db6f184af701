"""What `/healthz` and `/metrics` report of the API's dependencies, the ledger and the Celery broker, and of the
circuit breakers of the third parties that steps depend on (read from the ledger with it).

Both routes need no key, so any traffic may hit them: each dependency is read at most once per `interval` seconds
whatever the traffic (callers in between share the last reading, or the read in flight), off the event loop, and
every read is bounded by timeouts, so a locked table or a dead broker slows nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import Field
from sqlalchemy import text

from api import background
from api.schemas import Health
from saga import breakers
from saga.breakers import BreakerState
from saga.metrics import oldest_unfinished
from saga.models import Breaker
from webhooks import backlog

T = TypeVar("T")

# Seconds a health check waits for the broker before calling it down.
BROKER_TIMEOUT = 2.0
# Bounds on the ledger reading: a table locked by a migration or an operator must not hold it.
LEDGER_LOCK_TIMEOUT = "1s"
LEDGER_STATEMENT_TIMEOUT = "2s"


@dataclass(frozen=True)
class LedgerReading:
    """One reading of the ledger: None or the kind of error, the oldest unfinished saga per status, the webhooks'
    gauges, and every circuit breaker."""

    error: str | None
    oldest: dict[str, float] = field(default_factory=dict)
    webhooks: dict[str, float] = field(default_factory=dict)  # webhooks.backlog.read
    breakers: list[BreakerState] = field(default_factory=list)


def read_ledger() -> LedgerReading:
    """Whether the ledger answers, and what the metrics need of it, in one bounded query."""
    try:
        with background.transaction() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{LEDGER_LOCK_TIMEOUT}'"))
            conn.execute(text(f"SET LOCAL statement_timeout = '{LEDGER_STATEMENT_TIMEOUT}'"))
            return LedgerReading(None, oldest_unfinished(conn), backlog.read(conn), breakers.states(conn))
    except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
        return LedgerReading(type(exc).__name__)


def read_broker(celery_app: Any) -> str | None:
    """None if a connection to `celery_app`'s broker can be opened, else the kind of error."""
    try:
        with celery_app.connection_for_write(connect_timeout=BROKER_TIMEOUT,
                                             transport_options={"socket_connect_timeout": BROKER_TIMEOUT,
                                                                "socket_timeout": BROKER_TIMEOUT}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return type(exc).__name__


class Reading(Generic[T]):
    """The result of a blocking `read`, taken on a thread of its own at most once per `interval` seconds."""

    def __init__(self, read: Callable[[], T], interval: float) -> None:
        self._read = read
        self._interval = interval
        self._value: tuple[T] | None = None
        self._taken = float("-inf")
        self._pending: asyncio.Future[T] | None = None
        self._thread = background.Thread()

    @property
    def last(self) -> T | None:
        """The latest reading, without reading (None before the first)."""
        return self._value[0] if self._value is not None else None

    async def get(self) -> T:
        """The latest reading if it is fresh, else the one in flight or a new one."""
        if self._value is not None and time.monotonic() - self._taken < self._interval:
            return self._value[0]
        if self._pending is None:
            self._taken = time.monotonic()
            self._pending = asyncio.ensure_future(self._take())
        return await asyncio.shield(self._pending)

    async def _take(self) -> T:
        try:
            value = await self._thread.run(self._read)
            self._value = (value,)
            return value
        finally:
            self._pending = None


class Probes:
    """The ledger and the broker as `/healthz` and `/metrics` see them."""

    def __init__(self, celery_app: Any, interval: float = 1.0) -> None:
        self.ledger: Reading[LedgerReading] = Reading(read_ledger, interval)
        self.broker: Reading[str | None] = Reading(lambda: read_broker(celery_app), interval)

    def oldest_unfinished(self) -> dict[str, float]:
        """For the metrics: the last ledger reading's ages, without a query."""
        reading = self.ledger.last
        return reading.oldest if reading is not None else {}

    def webhook_backlog(self) -> dict[str, float]:
        """For the metrics: the last ledger reading's webhook gauges, without a query."""
        reading = self.ledger.last
        return reading.webhooks if reading is not None else {}

    def breakers(self) -> list[BreakerState]:
        """For the metrics: the last ledger reading's circuit breakers, without a query."""
        reading = self.ledger.last
        return reading.breakers if reading is not None else []


class HealthReport(Health):
    """`/healthz`: whether the database and the broker answer, and every circuit breaker's state."""

    breakers: list[Breaker] = Field(description=(
        "Each third party's circuit breaker, as of the last reading of the ledger (empty while it does not answer). "
        "An open breaker leaves `status` `ok`: the API serves, and refuses only new sagas that would wait on it."))
