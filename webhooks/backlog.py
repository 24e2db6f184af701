"""What the webhooks' gauges report, read by the API with its other ledger readings (at most once a second)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, text

# How far behind deliveries are (the oldest event still owed to an enabled endpoint), what was given up, and how
# many endpoints are disabled (by a 410, a give-up, or their tenant).
_BACKLOG = text("""
SELECT
    coalesce(extract(epoch FROM now() - (SELECT min(d.created_at) FROM webhook_deliveries d
        JOIN webhook_endpoints w ON w.id = d.endpoint_id WHERE d.status = 'pending' AND w.enabled)), 0) AS oldest,
    (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed') AS failed,
    (SELECT count(*) FROM webhook_endpoints WHERE NOT enabled) AS disabled
""")


def read(conn: Connection) -> dict[str, float]:
    row = conn.execute(_BACKLOG).mappings().one()
    return {key: float(row[key]) for key in ("oldest", "failed", "disabled")}


class BacklogCollector(Collector):
    """The webhooks' gauges, from the last reading `read()` gives (no query of its own at a scrape)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families({}))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(self._read()))

    @staticmethod
    def _families(reading: dict[str, float]) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, doc, value=reading.get(key, 0.0)) for name, doc, key in GAUGES]


# Each gauge: its name, help text, and key in the reading.
GAUGES = (
    ("saga_webhook_oldest_undelivered_seconds",
     "Age of the oldest event still owed to an enabled webhook endpoint (0: none).", "oldest"),
    ("saga_webhook_deliveries_failed",
     "Webhook events given up on after the retry period, kept for replay.", "failed"),
    ("saga_webhook_endpoints_disabled",
     "Webhook endpoints disabled (a 410, every delivery failing for the retry period, or their tenant).", "disabled"),
)
