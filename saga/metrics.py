"""Prometheus metrics of the engine, counted in whichever process does the work (workers, the API, beat); with
the `metrics` extra (prometheus-client) installed, else counted nowhere.

Under Celery's prefork pool each worker process counts into files under PROMETHEUS_MULTIPROC_DIR, and the
worker's main process serves their sum on SAGA_METRICS_PORT (`serve`); beat serves its own there too. `LedgerCollector` reads
what only the ledger knows (how old the oldest unfinished saga is) when it is scraped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from saga import db
from saga.errors import WorkerRefused
from saga.states import ACTIVE

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the `metrics` extra is not installed: every metric below counts nothing
    AVAILABLE = False
    Collector = object  # type: ignore[assignment,misc]
else:
    AVAILABLE = True

log = logging.getLogger("saga.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_ENV):  # each process's counts go to files there, made as the metrics are declared
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)


class _Uncounted:
    """A metric that counts nothing, for processes without prometheus-client."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def labels(self, *_: Any) -> _Uncounted:
        return self

    def inc(self, *_: Any) -> None:
        pass

    def observe(self, *_: Any) -> None:
        pass


if not AVAILABLE:
    Counter = Histogram = _Uncounted  # type: ignore[assignment,misc]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

SAGAS_STARTED = Counter("saga_sagas_started_total", "Sagas accepted (not replays of an idempotency key).",
                        ["type"])
SAGAS_ENDED = Counter("saga_sagas_ended_total", "Sagas that became completed, compensated, paused or failed "
                      "(paused and failed need an operator).", ["type", "status"])
STEP_SECONDS = Histogram("saga_step_seconds", "How long a step body or compensation ran, every execution.",
                         ["type", "step", "mode"], buckets=_SECONDS)
STEP_ATTEMPTS = Counter("saga_step_attempts_total", "Executions of a step body or compensation by how they "
                        "ended: succeeded, retried (will run again), awaiting_input (waits for the client), failed (gave up), lost (its lease was lost, "
                        "its outcome discarded).", ["type", "step", "mode", "outcome"])
INPUT_REQUESTS = Counter("saga_input_requests_total", "Times a step asked its client for new input (the saga "
                         "became awaiting_input).", ["type", "step"])
RECOVERY_DISPATCHES = Counter("saga_recovery_dispatches_total", "Sagas recovery found past their deadline and "
                              "woke (a lost message, a dead worker, a failed dispatch).")
CLAIM_SECONDS = Histogram("saga_claim_seconds", "How long the statement that takes a step (or compensation) for "
                          "one execution took, every claim; it must not grow with the ledger.", ["mode"],
                          buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
LEDGER_ERRORS = Counter("saga_ledger_errors_total", "Ledger writes that failed (database unreachable, deadlock "
                        "or serialization conflict) and were tried again, once per try.", ["operation"])
CONTINUED = Counter("saga_steps_continued_total", "Steps run by continuation: in the task that finished the step "
                    "before them, without a message of their own.", ["type"])
COMMITS_REFUSED = Counter("saga_commits_refused_total", "Messages that asked to record a step's result without the "
                          "engine's seal on it (forged, or sent by something that is not a worker): refused, "
                          "nothing recorded.", ["type", "step", "mode"])
BREAKER_OPENED = Counter("saga_breaker_opened_total", "Times a dependency's circuit breaker opened after consecutive "
                         "transient failures of the steps that depend on it.", ["dependency"])
BREAKER_PROBES = Counter("saga_breaker_probes_total", "Probes of a half-open breaker: started, closed (it "
                         "succeeded), reopened (it failed).", ["dependency", "outcome"])
BREAKER_REFUSED = Counter("saga_breaker_refused_total", "Step attempts not made because a breaker they depend on "
                          "was open (each waits, using no attempt).", ["dependency"])

ADMISSION_REFUSED = Counter("saga_admission_refused_total", "Sagas not accepted because a breaker of a step before "
                            "their point of no return was open.", ["type", "dependency"])


def serve(port: int, *, pool: bool) -> None:
    """Serve this process's metrics on `port`; with `pool` (a worker's main process, before it forks), the sum
    of its pool processes' counts instead, which needs PROMETHEUS_MULTIPROC_DIR."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not pool and not directory:
        start_http_server(port)
        return
    if not directory:
        raise WorkerRefused(f"saga: SAGA_METRICS_PORT={port} needs {MULTIPROC_ENV} (a directory of this worker's "
                         "own) so that every pool process's counts are added up")
    for stale in Path(directory).glob("*.db"):  # counts of an earlier run of this worker (the pool is not forked)
        if not stale.stem.endswith(f"_{os.getpid()}"):
            stale.unlink(missing_ok=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    start_http_server(port, registry=registry)


class LedgerCollector(Collector):
    """The age of the oldest saga in each unfinished status, as `read()` gives it when scraped (by default, read
    from the ledger at every scrape; a process that must bound its queries passes a cached reading)."""

    def __init__(self, read: Callable[[], dict[str, float]] | None = None) -> None:
        self._read = read or _read_oldest_unfinished

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """What `collect` yields, without asking the ledger (the registry asks once, when it is registered)."""
        yield _oldest_family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = _oldest_family()
        for status, age in self._read().items():
            family.add_metric([status], age)
        yield family


def _oldest_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("saga_oldest_unfinished_seconds", "Age of the oldest saga still pending, running, "
                             "compensating or awaiting input, by status (absent when none is); sagas held for a "
                             "slot of their tenant are not counted.", labels=["status"])


# How long each unfinished status has been waiting, by its oldest saga: one pass over the `sagas_active` index. A
# saga held for a slot of its tenant (`saga.tenant_slots`) is left out: it waits its turn, it is not stuck.
_OLDEST_UNFINISHED = text(
    "SELECT status, EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8 AS age FROM sagas "
    "WHERE status IN :active AND admitted GROUP BY status"
).bindparams(bindparam("active", value=ACTIVE, expanding=True))


def oldest_unfinished(conn: Connection) -> dict[str, float]:
    """Seconds since the oldest saga in each unfinished status was created (statuses with none are absent)."""
    return {row.status: row.age for row in conn.execute(_OLDEST_UNFINISHED)}


def _read_oldest_unfinished() -> dict[str, float]:
    try:
        with db.autocommit() as conn:
            return oldest_unfinished(conn)
    except SQLAlchemyError as exc:  # the ledger is down: the other metrics still answer
        log.warning("saga_oldest_unfinished_seconds not read: %s", type(exc).__name__)
        return {}
