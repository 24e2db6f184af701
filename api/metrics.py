"""Prometheus metrics of the API: requests by route and status, their latency, sagas started, and the gauges read
from the ledger (the oldest unfinished saga, the webhooks' backlog, each circuit breaker's state). The engine's
counters counted here are in the same registry (admission refused while a breaker is open, for one).

Metrics are per process (`python -m service api --workers N` gives each process its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saga.breakers import BreakerState
from saga.metrics import LedgerCollector
from webhooks.backlog import BacklogCollector


class LastLedgerReading:
    """Where the ledger's gauges come from: the app's last health reading (set by `create_app`), so a scrape
    makes no query of its own."""

    read: Callable[[], dict[str, float]] = dict
    webhooks: Callable[[], dict[str, float]] = dict
    breakers: Callable[[], list[BreakerState]] = list


LAST_LEDGER = LastLedgerReading()

# saga_breaker_state's value for each phase.
BREAKER_PHASES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class BreakerCollector(Collector):
    """`saga_breaker_state{dependency}` from the last reading `read()` gives (no query of its own at a scrape)."""

    def __init__(self, read: Callable[[], list[BreakerState]]) -> None:
        self._read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for state in self._read():
            family.add_metric([state.name], BREAKER_PHASES[state.phase])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("saga_breaker_state", "Each dependency's circuit breaker: 0 closed, 1 half-open "
                                 "(probing), 2 open (absent until it first counts a failure).", labels=["dependency"])


# No `_created` series: they double the output and nothing here reads them.
disable_created_metrics()
# The engine's own counters (sagas started here) are in the same registry; add what only the ledger knows.
REGISTRY.register(LedgerCollector(lambda: LAST_LEDGER.read()))
REGISTRY.register(BacklogCollector(lambda: LAST_LEDGER.webhooks()))
REGISTRY.register(BreakerCollector(lambda: LAST_LEDGER.breakers()))

REQUESTS = Counter("saga_api_requests_total", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram(
    "saga_api_request_seconds", "Time to answer an HTTP request (long polls included).", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
KEY_CHECKS = Counter("saga_api_key_checks_total", "API keys not known in memory, by outcome: malformed (refused at "
                     "once), revoked (refused at once), new (known after the next read of stored keys), unknown (refused after it), unchecked "
                     "(503: stored keys could not be read).", ["outcome"])
OPEN_STREAMS = Gauge("saga_api_open_streams", "Event streams and long polls open now, by kind.", ["kind"])
SAGAS_STARTED = Counter("saga_api_sagas_started_total", "POST /v1/sagas accepted, by saga type and outcome "
                        "(created, or replayed for a repeated idempotency key).", ["type", "outcome"])


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - started)


CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest()
