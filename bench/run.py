"""`make bench`: N plain Celery chains and N sagas of 4 one-row steps, on one worker, one Redis, one PostgreSQL.

    python -m bench.run [--n 300] [--concurrency 2] [--warmup 20] [--rounds 4] [--solo 20]

Each round runs N plain chains, N sagas and N sagas whose bodies commit on their own, through the same
worker on queue "bench"; odd rounds in that order, even rounds reversed. A phase
starts its clock, submits all N (submission is measured), and stops when the last one is done:
for chains, when N step-4 rows exist in bench_rows; for sagas, when N sagas of the phase are 'completed'
(one COUNT on `sagas`). Saga latency is `updated_at - created_at` (database clock) of those sagas; under
the burst it includes queueing behind the others. `--solo K` adds K sagas and K chains run one at a time
afterwards, for the latency of a single one on an idle worker. Figures go to stdout and
.saga/bench/result.json, with the CPU milliseconds each phase cost per chain or saga in the worker,
this process, PostgreSQL and Redis. Exits non-zero only on errors (a low ratio is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import cpu
from devstack.servers import start_services
from devstack.service_stack import ServiceStack
from saga.testing import Stack

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".saga" / "bench"
QUEUE = "bench"
POLL = 0.02
SOLO_POLL = 0.002  # one-at-a-time runs poll faster: their latency is the figure
GOAL = 0.9
# Sagas whose bodies commit on their own: a claim and a commit of their own per step.
GOAL_OWN_TX = 0.8


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Bench:
    def __init__(self, timeout: float) -> None:
        # Imported only once the stack has exported its settings (celeryconfig reads them on first use).
        from celery import chain
        from sqlalchemy import text

        import saga
        from bench import sagas as defs
        from saga import db

        self.chain, self.text, self.saga, self.defs, self.db = chain, text, saga, defs, db
        self.timeout = timeout
        self.worker_pid = 0

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.transaction() as conn:
            return conn.execute(self.text(sql), params).scalar()

    def wait(self, probe: Any, what: str, interval: float = POLL) -> None:
        deadline = time.monotonic() + self.timeout
        while not probe():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {self.timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    # --- chains ---------------------------------------------------------------------------------------------
    def submit_chain(self, run_id: str, length: int = 4) -> None:
        """A chain of `length` one-row tasks; its last one writes step 4, which `chains_done` counts."""
        ref = str(uuid.uuid4())
        tasks = [self.defs.plain_1] * (length - 1) + [self.defs.plain_4] if length != 4 else self.defs.PLAIN_TASKS
        self.chain(*(t.si(run_id, ref).set(queue=QUEUE) for t in tasks)).apply_async()

    def chains_done(self, run_id: str) -> int:
        return self.scalar("SELECT count(*) FROM bench_rows WHERE run_id = :r AND step = 4", r=run_id)

    def phase(self, run_id: str, n: int, submit: Any, finished: Any) -> dict[str, Any]:
        """Submit N, wait until all are done: wall and submit seconds, CPU milliseconds per unit."""
        cpu_before = cpu.snapshot(self.worker_pid)
        t0 = time.perf_counter()
        for i in range(n):
            submit(i)
        submitted = time.perf_counter()
        self.wait(finished, f"{n} of run {run_id}")
        done = time.perf_counter()
        return {"run_id": run_id, "submit_s": submitted - t0, "wall_s": done - t0,
                "cpu_ms": cpu.per_unit_ms(cpu_before, cpu.snapshot(self.worker_pid), n)}

    def chain_phase(self, n: int, length: int = 4) -> dict[str, Any]:
        run_id = f"chains-{uuid.uuid4().hex[:12]}"
        return self.phase(run_id, n, lambda _: self.submit_chain(run_id, length),
                          lambda: self.chains_done(run_id) >= n)

    # --- sagas ----------------------------------------------------------------------------------------------
    def submit_saga(self, run_id: str, i: int, type_name: str = "bench_saga", **extra: Any) -> Any:
        # Each run is its own tenant, so the polls below are index scans whatever the ledger's size.
        return self.saga.start(type_name, {"run_id": run_id, **extra}, idempotency_key=f"{run_id}-{i}",
                               tenant=run_id).saga.id

    def sagas_by_status(self, run_id: str) -> tuple[int, int]:
        """(completed, stuck for good) among the sagas of this run, in one query on `sagas`.

        Only finished sagas are read (an index range on tenant and status), as the chains' poll reads only
        finished chains, so neither poll costs the database more than the other while the phase runs.
        """
        with self.db.transaction() as conn:
            row = conn.execute(self.text(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status <> 'completed') "
                "FROM sagas WHERE tenant = :r "
                "AND status IN ('completed', 'compensating', 'compensated', 'paused', 'failed')"),
                {"r": run_id}).one()
        return row[0], row[1]

    def _sagas_finished(self, run_id: str, n: int) -> bool:
        completed, bad = self.sagas_by_status(run_id)
        if bad:
            raise RuntimeError(f"{bad} sagas of run {run_id} left the happy path (see the worker log)")
        return completed >= n

    def saga_latencies_ms(self, run_id: str) -> list[float]:
        with self.db.transaction() as conn:
            rows = conn.execute(self.text(
                "SELECT extract(epoch FROM updated_at - created_at) * 1000 FROM sagas "
                "WHERE tenant = :r AND status = 'completed'"), {"r": run_id})
            return [float(r[0]) for r in rows]

    def saga_phase(self, n: int, type_name: str = "bench_saga", **extra: Any) -> dict[str, Any]:
        run_id = f"{type_name}-{uuid.uuid4().hex[:12]}"
        return self.phase(run_id, n, lambda i: self.submit_saga(run_id, i, type_name, **extra),
                          lambda: self._sagas_finished(run_id, n))

    # --- one at a time --------------------------------------------------------------------------------------
    def solo(self, k: int) -> dict[str, list[float]]:
        chains_ms, run_id = [], f"solo-chains-{uuid.uuid4().hex[:12]}"
        for i in range(k):
            t0 = time.perf_counter()
            self.submit_chain(run_id)
            self.wait(lambda done=i + 1: self.chains_done(run_id) >= done, f"solo chain {i}", SOLO_POLL)
            chains_ms.append((time.perf_counter() - t0) * 1000)
        saga_run = f"solo-sagas-{uuid.uuid4().hex[:12]}"
        for i in range(k):
            self.submit_saga(saga_run, i)
            self.wait(lambda done=i + 1: self._sagas_finished(saga_run, done), f"solo saga {i}", SOLO_POLL)
        return {"chains_client_ms": chains_ms, "sagas_db_ms": self.saga_latencies_ms(saga_run)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="chains and sagas per measured phase (default 300)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool size (default 2)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured chains and sagas first (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="chain phase + saga phases repeated (default 4)")
    parser.add_argument("--solo", type=int, default=20, help="sagas/chains run one at a time after (default 20)")
    parser.add_argument("--api", type=int, default=500,
                        help="POST /v1/sagas requests for the API figures, 0 to skip (default 500)")
    parser.add_argument("--long", type=int, default=60,
                        help="20-step sagas and 20-task chains per phase, two rounds (default 60; 0: none)")
    parser.add_argument("--blob", type=int, default=100,
                        help="sagas per blob case: 100 B input, 1 MiB kept apart, 1 MiB inline (default 100; 0: none)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a phase may take before it is an error")
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 0 or args.solo < 0:
        parser.error("--n, --concurrency and --rounds must be positive; --warmup and --solo not negative")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    servers = start_services(DATA_DIR / "services")
    stack = ServiceStack(data_dir=DATA_DIR, database_server_url=servers.database_url, broker_url=servers.broker_url,
                  settings={"SAGA_MODULES": "tasks.demo,bench.sagas"}, cwd=ROOT)
    (DATA_DIR / "bench.log").unlink(missing_ok=True)  # the worker's log, appended to by each start: this run only
    try:
        stack.start()
        bench = Bench(args.timeout)
        with bench.db.transaction() as conn:
            conn.exec_driver_sql(bench.defs.CREATE_TABLE)
        bench.worker_pid = stack.worker("bench", concurrency=args.concurrency, queues=[QUEUE]).popen.pid

        if args.warmup:
            warm = f"warmup-{uuid.uuid4().hex[:8]}"
            for i in range(args.warmup):
                bench.submit_chain(warm)
                bench.submit_saga(warm, i)
            bench.wait(lambda: bench.chains_done(warm) >= args.warmup, "warm-up chains")
            bench.wait(lambda: bench._sagas_finished(warm, args.warmup), "warm-up sagas")

        rounds = []
        for r in range(args.rounds):
            # Odd rounds run chains first, even rounds last, so a machine that drifts favours neither.
            phases = [("chains", lambda: bench.chain_phase(args.n)), ("sagas", lambda: bench.saga_phase(args.n)),
                      ("sagas_own_tx", lambda: bench.saga_phase(args.n, "bench_saga_own_tx"))]
            measured = {name: run() for name, run in (phases if r % 2 == 0 else phases[::-1])}
            rounds.append({"round": r + 1, **measured,
                           "saga_latencies_ms": bench.saga_latencies_ms(measured["sagas"]["run_id"])})
        solo = bench.solo(args.solo) if args.solo else None
        result = summarize(args, rounds, solo, stack)
        if args.long:
            result["long"] = long_cases(bench, args.long)
        if args.blob:
            result["blob"] = blob_cases(bench, args.blob)
        if args.api:
            from bench import api

            busy = f"busy-{uuid.uuid4().hex[:8]}"
            counter = iter(range(10**9))

            def keep_workers_busy() -> None:
                for _ in range(100):
                    bench.submit_saga(busy, next(counter))

            figures = api.measure(stack, args.api, clients=4, background=keep_workers_busy)
            lat = figures["latencies_ms"]
            result["api"] = {"requests": args.api, "p50_ms": round(percentile(lat, 50), 2),
                             "p99_ms": round(percentile(lat, 99), 2),
                             "requests_per_s": round(figures["requests_per_s"], 1), "clients": figures["clients"]}
    except BaseException as exc:  # noqa: BLE001 - report, stop the stack, exit non-zero
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
        else:
            logging.getLogger("bench").error("benchmark failed: %s: %s", type(exc).__name__, exc)
            for process in stack.processes:
                tail = process.log_text()[-3000:]
                if tail:
                    print(f"--- last lines of {process.log} ---\n{tail}", file=sys.stderr)
        code = 1
    else:
        code = 0
    finally:
        try:
            stack.stop()
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("bench").error("stopping the stack failed: %s", exc)
            code = 1
        servers.stop()
    if code == 0:
        report(result)
        out = DATA_DIR / "result.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {out.relative_to(ROOT)}")
    return code


# A job-posting-shaped input: a 100-byte one, and a 1 MiB logo (as base64, 1.4 MB) read by the first step alone.
BLOB_CASES = (("100 B", "bench_blob", 100), ("1 MiB, a large field", "bench_blob", 1024 * 1024 * 4 // 3),
              ("1 MiB, inline (before)", "bench_blob_inline", 1024 * 1024 * 4 // 3))


def long_cases(bench: Bench, n: int) -> dict[str, Any]:
    """20-step sagas against 20-task chains, two rounds in alternating order: the median ratio."""
    steps = bench.defs.LONG_STEPS
    ratios, cpu_saga, cpu_chain = [], [], []
    for r in range(2):
        order = [("chains", lambda: bench.chain_phase(n, steps)), ("sagas", lambda: bench.saga_phase(n, "bench_long"))]
        measured = {name: run() for name, run in (order if r == 0 else order[::-1])}
        ratios.append(measured["chains"]["wall_s"] / measured["sagas"]["wall_s"])
        cpu_saga.append(measured["sagas"]["cpu_ms"])
        cpu_chain.append(measured["chains"]["cpu_ms"])
    return {"steps": steps, "n": n, "ratio_by_round": [round(x, 3) for x in ratios],
            "ratio": round(statistics.median(ratios), 3), "cpu_ms_per_saga": _mean_parts(cpu_saga),
            "cpu_ms_per_chain": _mean_parts(cpu_chain)}


def blob_cases(bench: Bench, n: int) -> list[dict[str, Any]]:
    """Each blob case twice, alternating, N sagas a time: sagas/s and CPU ms per saga (the medians)."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in BLOB_CASES}
    for r in range(2):
        for label, type_name, size in (BLOB_CASES if r == 0 else BLOB_CASES[::-1]):
            runs[label].append(bench.saga_phase(n, type_name, blob="x" * size))
    return [{"case": label, "input_bytes": size, "sagas_per_s": round(statistics.median(n / p["wall_s"] for p in runs[label]), 1),
             "cpu_ms_per_saga": _mean_parts([p["cpu_ms"] for p in runs[label]])}
            for label, _, size in BLOB_CASES]


def summarize(args: argparse.Namespace, rounds: list[dict[str, Any]], solo: Any, stack: Stack) -> dict[str, Any]:
    n_total = args.n * len(rounds)
    chain_wall = sum(r["chains"]["wall_s"] for r in rounds)
    saga_wall = sum(r["sagas"]["wall_s"] for r in rounds)
    own_wall = sum(r["sagas_own_tx"]["wall_s"] for r in rounds)
    latencies = [ms for r in rounds for ms in r["saga_latencies_ms"]]
    chains_per_s = n_total / chain_wall
    sagas_per_s = n_total / saga_wall
    result: dict[str, Any] = {
        "n": args.n, "rounds": args.rounds, "concurrency": args.concurrency, "warmup": args.warmup,
        "order": "odd rounds: N plain chains, N sagas, N own-tx sagas; even rounds the reverse; one worker",
        "chains_per_s": round(chains_per_s, 2), "sagas_per_s": round(sagas_per_s, 2),
        "ratio": round(sagas_per_s / chains_per_s, 3), "goal": GOAL, "goal_own_tx": GOAL_OWN_TX,
        "ratio_by_round": [round(r["chains"]["wall_s"] / r["sagas"]["wall_s"], 3) for r in rounds],
        "sagas_own_tx_per_s": round(n_total / own_wall, 2),
        "ratio_own_tx": round(n_total / own_wall / chains_per_s, 3),
        "ratio_own_tx_by_round": [round(r["chains"]["wall_s"] / r["sagas_own_tx"]["wall_s"], 3) for r in rounds],
        "saga_latency_ms": {"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1),
                            "max": round(max(latencies), 1), "count": len(latencies)},
        "cpu_ms_per_unit": {kind: _mean_parts([r[phase]["cpu_ms"] for r in rounds])
                            for kind, phase in (("chain", "chains"), ("saga", "sagas"), ("saga_own_tx", "sagas_own_tx"))},
        "phases": [
            {"round": r["round"],
             "chains": {"submit_s": round(r["chains"]["submit_s"], 3), "wall_s": round(r["chains"]["wall_s"], 3)},
             "sagas": {"submit_s": round(r["sagas"]["submit_s"], 3), "wall_s": round(r["sagas"]["wall_s"], 3)},
             "sagas_own_tx": {"submit_s": round(r["sagas_own_tx"]["submit_s"], 3),
                              "wall_s": round(r["sagas_own_tx"]["wall_s"], 3)}}
            for r in rounds
        ],
        "worker_log": str(stack.data_dir / "bench.log"),
    }
    if solo:
        result["solo"] = {
            "count": args.solo,
            "chain_latency_ms_client_clock": {"p50": round(percentile(solo["chains_client_ms"], 50), 1),
                                              "p99": round(percentile(solo["chains_client_ms"], 99), 1)},
            "saga_latency_ms_db_clock": {"p50": round(percentile(solo["sagas_db_ms"], 50), 1),
                                         "p99": round(percentile(solo["sagas_db_ms"], 99), 1),
                                         "mean": round(statistics.fmean(solo["sagas_db_ms"]), 1)},
        }
    return result


def _mean_parts(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(s[key] for s in samples), 2) for key in samples[0]}


def report(r: dict[str, Any]) -> None:
    median = statistics.median(r["ratio_by_round"])
    median_own = statistics.median(r["ratio_own_tx_by_round"])
    verdict = "meets" if median >= r["goal"] else "below"
    verdict_own = "meets" if median_own >= r["goal_own_tx"] else "below"
    lines = [
        "", "=== saga vs plain Celery benchmark ===",
        f"N per phase        {r['n']}  (x{r['rounds']} round(s), warm-up {r['warmup']})",
        f"worker             1 worker, concurrency {r['concurrency']}, queue 'bench'",
        f"order              {r['order']}",
        f"plain chains/s     {r['chains_per_s']:.1f}",
        f"sagas/s            {r['sagas_per_s']:.1f}   (transactional steps: each row written in the step's commit)",
        (f"ratio sagas/chains {r['ratio']:.3f}  (by round {' '.join(f'{x:.2f}' for x in r['ratio_by_round'])}, "
         f"median {median:.3f}: {verdict} the {r['goal']} goal)"),
        (f"sagas/s, own tx    {r['sagas_own_tx_per_s']:.1f}   (each body writes in a transaction of its own; "
         f"ratio {r['ratio_own_tx']:.3f}, by round {' '.join(f'{x:.2f}' for x in r['ratio_own_tx_by_round'])}, "
         f"median {median_own:.3f}: {verdict_own} the {r['goal_own_tx']} goal)"),
        (f"saga latency       p50 {r['saga_latency_ms']['p50']:.0f} ms   p99 {r['saga_latency_ms']['p99']:.0f} ms"
         "   (updated_at - created_at, all N submitted at once, so it includes queueing)"),
    ]
    for kind, parts in r["cpu_ms_per_unit"].items():
        split = "  ".join(f"{key} {value:.2f}" for key, value in parts.items() if key != "total")
        lines.append(f"CPU ms per {kind:<11} {parts['total']:.2f}  ({split})")
    for p in r["phases"]:
        lines.append(f"round {p['round']} wall      chains {p['chains']['wall_s']:.2f} s "
                     f"(submit {p['chains']['submit_s']:.2f} s)   sagas {p['sagas']['wall_s']:.2f} s "
                     f"(submit {p['sagas']['submit_s']:.2f} s)   own-tx sagas {p['sagas_own_tx']['wall_s']:.2f} s")
    if "solo" in r:
        s = r["solo"]
        lines.append(
            f"one at a time      {s['count']} each: saga p50 {s['saga_latency_ms_db_clock']['p50']:.1f} ms "
            f"p99 {s['saga_latency_ms_db_clock']['p99']:.1f} ms (db clock); chain p50 "
            f"{s['chain_latency_ms_client_clock']['p50']:.1f} ms p99 "
            f"{s['chain_latency_ms_client_clock']['p99']:.1f} ms (client clock, submit to last row seen)")
    if "long" in r:
        g = r["long"]
        lines.append(f"{g['steps']}-step sagas   ratio {g['ratio']:.3f} to {g['steps']}-task chains (median of "
                     f"{' '.join(f'{x:.2f}' for x in g['ratio_by_round'])}; {g['n']} each); CPU ms per saga "
                     f"{g['cpu_ms_per_saga']['total']:.1f}, per chain {g['cpu_ms_per_chain']['total']:.1f}")
    for case in r.get("blob", []):
        cpu_ms = case["cpu_ms_per_saga"]
        lines.append(f"input {case['case']:<23} {case['sagas_per_s']:6.1f} sagas/s   CPU ms per saga "
                     f"{cpu_ms['total']:.2f} (worker {cpu_ms.get('worker', 0):.2f}, postgres "
                     f"{cpu_ms.get('postgres', 0):.2f}, bench {cpu_ms.get('bench', 0):.2f})")
    if "api" in r:
        a = r["api"]
        lines.append(f"POST /v1/sagas     p50 {a['p50_ms']:.1f} ms   p99 {a['p99_ms']:.1f} ms   (one API process, "
                     f"{a['requests']} sequential requests while workers run sagas); {a['requests_per_s']:.0f} "
                     f"requests/s with {a['clients']} concurrent clients")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
