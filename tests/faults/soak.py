"""`make soak`: job postings submitted through the API at a steady rate for ten minutes (settable) onto a ledger
seeded with finished sagas, while random faults from the fault suite hit the fleet; then the counts of
tests/faults/load.py, throughput, latency percentiles, the ledger's size and the p99 of the claim statement in
the first and the last minute (both fault-free), so a claim that grows slower with the ledger shows.

    python -m tests.faults.soak [--minutes 10] [--rate 4] [--seed 200000] [--fault-every 45]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from devstack.servers import Services
from devstack.service_stack import ServiceStack
from saga import db
from saga.testing import Stack
from standins import StandIns, free_port, start_standins
from tests.conftest import ROOT, SETTINGS
from tests.faults.load import BROKEN, Submitted, report, settled, submit, tally
from tests.faults.servers import Postgres, Redis, outage
from tests.test_api import ApiServer, serve
from tests.test_ledger_scale import grow

DATA = ROOT / ".saga" / "soak"
# The suite's settings, with the circuit breakers a deployment has (the suite's shared workers never open theirs).
DEPLOYED = {k: v for k, v in SETTINGS.items() if k != "SAGA_BREAKERS"}


class Fleet:
    """Two workers serving their metrics, beat, the API: the soak's processes, and the faults that hit them."""

    def __init__(self, stack: Stack, postgres: Postgres, redis: Redis, standins: StandIns) -> None:
        self.stack, self.postgres, self.redis, self.standins = stack, postgres, redis, standins
        self.ports: dict[str, int] = {}
        self.started = 0
        self.faults: list[str] = []
        self.exits: list[str] = []  # workers that exited by themselves, replaced as a supervisor would

    def worker(self) -> None:
        self.started += 1
        name, port = f"soak-w{self.started}", free_port()
        self.stack.worker(name, concurrency=2, env={"SAGA_METRICS_PORT": str(port),
                                                     "PROMETHEUS_MULTIPROC_DIR": str(DATA / f"metrics-{name}")})
        self.ports[name] = port

    def revive(self) -> None:
        """Start again every worker that exited on its own (what systemd or Compose's restart policy does)."""
        for name in self.stack.revive():
            self.exits.append(name)
            print(f"  {time.strftime('%H:%M:%S')} {name} exited by itself; started again", flush=True)

    def replace(self, victim: Any) -> None:
        self.stack.processes.remove(victim)
        self.ports.pop(victim.name, None)
        self.worker()

    # The faults, each of which the fault suite proves harmless on its own.
    def kill_worker(self) -> None:
        victim = random.choice(self.stack.workers())
        victim.kill()
        self.replace(victim)

    def freeze_worker(self) -> None:
        victim = random.choice(self.stack.workers())
        victim.send(signal.SIGSTOP)
        outage(25)
        victim.send(signal.SIGCONT)

    def restart_redis(self) -> None:
        self.redis.kill()
        outage(3)
        self.redis.start()

    def restart_postgres(self) -> None:
        self.postgres.stop("fast")
        outage(5)
        self.postgres.start()
        db.dispose()  # this process's own pooled connections died with the server

    def stripe_burst(self) -> None:
        self.standins.stripe_faults(random.choice(["500", "429", "hang"]), 5, seconds=12)

    def random_fault(self) -> None:
        self.revive()
        fault: Callable[[], None] = random.choice([self.kill_worker, self.freeze_worker, self.restart_redis,
                                                   self.restart_postgres, self.stripe_burst])
        self.faults.append(fault.__name__)
        print(f"  {time.strftime('%H:%M:%S')} fault: {fault.__name__}", flush=True)
        fault()

    def claim_histogram(self) -> dict[str, dict[float, float]]:
        """Per worker: cumulative count of forward claims by bucket upper bound."""
        found: dict[str, dict[float, float]] = {}
        for name, port in self.ports.items():
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            buckets: dict[float, float] = {}
            for family in text_string_to_metric_families(body):
                for sample in family.samples:
                    if sample.name == "saga_claim_seconds_bucket" and sample.labels.get("mode") == "forward":
                        bound = float(sample.labels["le"])
                        buckets[bound] = buckets.get(bound, 0.0) + sample.value
            found[name] = buckets
        return found


def p99(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> tuple[float, int]:
    """The 99th percentile (ms, a bucket's upper bound) of the claims between two scrapes, and their number;
    workers that were replaced in between are left out."""
    total: dict[float, float] = {}
    for name, buckets in after.items():
        if name in before:
            for bound, count in buckets.items():
                total[bound] = total.get(bound, 0.0) + count - before[name].get(bound, 0.0)
    bounds = sorted(total)
    count = total[bounds[-1]] if bounds else 0
    for bound in bounds:
        if count and total[bound] >= 0.99 * count:
            return bound * 1000, int(count)
    return float("nan"), int(count)


def ledger_size() -> tuple[int, str]:
    with db.transaction() as conn:
        row = conn.execute(text("SELECT count(*), pg_size_pretty(pg_total_relation_size('sagas') + "
                                "pg_total_relation_size('saga_steps') + pg_total_relation_size('saga_events')) "
                                "FROM sagas")).one()
    return int(row[0]), str(row[1])


def feed(client: httpx.Client, rate: float, until: float, into: Submitted, stop: threading.Event) -> None:
    """Submit at `rate` per second (Poisson arrivals) until `until`, each start retried with its key."""
    while time.monotonic() < until and not stop.is_set():
        submit(client, 1, into, declined_every=0 if random.random() > 0.2 else 1, deadline=300)
        time.sleep(random.expovariate(rate))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=4.0, help="sagas submitted per second")
    parser.add_argument("--seed", type=int, default=200_000, help="finished sagas in the ledger at the start")
    parser.add_argument("--fault-every", type=float, default=45.0, help="seconds between faults, on average")
    args = parser.parse_args()
    random.seed(7)
    shutil.rmtree(DATA, ignore_errors=True)  # a run starts from nothing: no stand-in records, no old logs
    DATA.mkdir(parents=True)
    postgres, redis_server = Postgres().start(), Redis().start()
    services = Services(database_url=postgres.url, broker_url=redis_server.url)
    standins = start_standins(DATA / "standins")
    stack = ServiceStack(data_dir=DATA, database_server_url=services.database_url, broker_url=services.broker_url,
                  queues=("celery",),
                  settings={"SAGA_MODULES": "tasks.demo,tasks.job_posting", **DEPLOYED, **standins.env},
                  cwd=ROOT).start()
    api: ApiServer | None = None
    try:
        print(f"seeding the ledger with {args.seed} finished sagas", flush=True)
        if args.seed:
            grow("soak-history", args.seed, "seed")
        fleet = Fleet(stack, postgres, redis_server, standins)
        fleet.worker()
        fleet.worker()
        stack.beat()
        api = serve(stack, name="soak-api")
        client = api.client("alpha", timeout=30)
        size_start = ledger_size()
        submitted, stop = Submitted(), threading.Event()
        started = time.monotonic()
        until = started + args.minutes * 60
        feeder = threading.Thread(target=feed, args=(client, args.rate, until, submitted, stop), daemon=True)
        print(f"submitting {args.rate}/s for {args.minutes} min; faults every ~{args.fault_every:.0f} s "
              "after the first minute and before the last", flush=True)
        scrape_0 = fleet.claim_histogram()
        feeder.start()
        outage(60)  # the first minute, fault-free
        scrape_1 = fleet.claim_histogram()
        while time.monotonic() < until - 60 - 30:
            next_fault = time.monotonic() + random.expovariate(1 / args.fault_every)
            while time.monotonic() < min(next_fault, until - 60 - 30):
                fleet.revive()
                outage(1)
            if time.monotonic() < until - 60 - 30:
                fleet.random_fault()
        while time.monotonic() < until - 60:
            fleet.revive()
            outage(1)
        scrape_2 = fleet.claim_histogram()  # the last minute, fault-free
        feeder.join()
        scrape_3 = fleet.claim_histogram()
        elapsed = time.monotonic() - started
        fleet.revive()
        final = settled(submitted.ids.values(), timeout=300)
        counts = tally(standins, submitted, final)
        report("soak", counts)
        with db.transaction() as conn:
            rows = conn.execute(text(
                "SELECT EXTRACT(EPOCH FROM updated_at - created_at) FROM sagas WHERE id = ANY(CAST(:ids AS uuid[]))"
                " AND status IN ('completed', 'compensated')"), {"ids": list(submitted.ids.values())}).scalars()
            latencies = sorted(float(r) for r in rows)
        ended = len(latencies)
        q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
        size_end = ledger_size()
        first, last = p99(scrape_0, scrape_1), p99(scrape_2, scrape_3)
        print(f"  throughput: {ended / elapsed:.2f} sagas/s ended over {elapsed:.0f} s ({len(submitted.ids)} "
              f"submitted); faults: {len(fleet.faults)} ({', '.join(sorted(set(fleet.faults)))}); workers that "
              f"exited by themselves and were replaced: {len(fleet.exits)}")
        print(f"  latency, accept to end: p50 {q[49]:.2f} s, p90 {q[89]:.2f} s, p99 {q[98]:.2f} s, "
              f"max {latencies[-1] if latencies else float('nan'):.2f} s")
        print(f"  ledger: {size_start[0]} sagas ({size_start[1]}) at the start, {size_end[0]} ({size_end[1]}) at "
              "the end")
        print(f"  claim statement p99: {first[0]:.1f} ms in the first minute ({first[1]} claims), {last[0]:.1f} ms "
              f"in the last ({last[1]} claims)")
        return 1 if any(counts.get(k) for k in BROKEN) else 0
    finally:
        if api is not None:
            api.close()
        stack.stop()
        standins.stop()
        redis_server.kill()
        postgres.destroy()


if __name__ == "__main__":
    sys.exit(main())
