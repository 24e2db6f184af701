"""`make bench`: plain Celery chains, the project's sagas and two peer engines, the same one-row steps, alternating.

    python -m bench.run [--n 300] [--rounds 4] [--warmup 20] [--solo 20] [--long 60] [--blob 100] [--api 500]
                        [--concurrency 2] [--no-peers]

Everything runs on the same PostgreSQL and Redis, each engine on one worker of concurrency 2, and every step of
every workload inserts one row into bench_rows. A round runs one phase of N of each 4-step workload:

- plain Celery chains of 4 tasks;
- sagas with continuation (a worker that finished a step runs the next one in the same task), with transactional
  steps (the row commits with the step) and with bodies that commit on their own (own transaction);
- the same two without continuation (every step a message of its own through the broker);
- the peers, each in a virtual environment of its own (bench/peers): DBOS queue workflows of 4 transaction steps
  and celery-saga sagas of 4 Celery tasks (their bodies commit on their own). `--no-peers` leaves them out.

Odd rounds run them in that order, even rounds in reverse, so a machine that drifts favours none. A phase starts
its clock, submits all N (submission is timed) and stops when the last one is done: for chains and peers, when N
step-4 rows of the phase are in bench_rows; for sagas, when N sagas of the phase are 'completed' (one COUNT on
`sagas`). The peers' workers are started once, after the bench's own, and frozen (SIGSTOP) while they are not
measured: DBOS's worker polls its queue in PostgreSQL every 10 ms, and that idle work would otherwise slow every
other phase.

Then `--long`: 20-task chains against 20-step sagas with and without continuation, two rounds alternating;
`--solo K`: K chains, sagas with and without continuation, and K of each peer, one at a time, each timed on this
process's clock from submission to its completion seen (polled every 2 ms); `--blob`: sagas with a 100 B input, a
1 MiB large field and the same 1 MiB inline; `--api`: POST /v1/sagas with one API process while workers are busy.

It prints each workload's throughput, its ratio to plain chains by round and the median, CPU ms per unit (all
processes, and the worker alone), the latency of one alone, and whether each goal (GOALS, on medians of this run's
rounds) is met. Figures also go to .saga/bench/result.json. Exits non-zero only on errors: a figure below its goal
is a result, not a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench import cpu
from bench.peers import PEERS, Peer
from devstack.servers import start_services
from devstack.service_stack import ServiceStack

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".saga" / "bench"
QUEUE = "bench"
POLL = 0.02
SOLO_POLL = 0.002  # one-at-a-time runs poll faster: their latency is the figure

# The 4-step workloads in the order of odd rounds: key, label, saga type (None: plain chains, or a peer).
WORKLOADS = (
    ("chains", "plain Celery chains", None),
    ("sagas", "sagas, transactional, continuation", "bench_saga"),
    ("sagas_own_tx", "sagas, own tx, continuation", "bench_saga_own_tx"),
    ("sagas_broker", "sagas, transactional, no continuation", "bench_saga_broker"),
    ("sagas_own_tx_broker", "sagas, own tx, no continuation", "bench_saga_own_tx_broker"),
    ("dbos", "DBOS queue workflows", None),
    ("celery_saga", "celery-saga sagas", None),
)
PEER_OF = {"dbos": "dbos", "celery_saga": "celery-saga"}  # workload key -> bench.peers.PEERS name
LONG_WORKLOADS = (("chains", "20-task chains", None), ("sagas", "20-step sagas, continuation", "bench_long"),
                  ("sagas_broker", "20-step sagas, no continuation", "bench_long_broker"))
SOLO = ("chains", "sagas", "sagas_broker", "dbos", "celery_saga")

# Goals: what, the figure it is judged on (read from the result; None when not measured), ">=" or "<", target.
GOALS: tuple[tuple[str, Callable[[dict[str, Any]], float | None], str, float], ...] = (
    ("sagas ÷ chains, transactional, continuation", lambda r: _ratio(r, "sagas"), ">=", 1.5),
    ("sagas ÷ chains, own tx, continuation", lambda r: _ratio(r, "sagas_own_tx"), ">=", 1.3),
    ("20-step sagas ÷ 20-task chains, continuation", lambda r: _ratio(r.get("long"), "sagas"), ">=", 3.0),
    ("one saga alone, p50 ÷ one chain's p50", lambda r: _solo_p50(r, "sagas") / _solo_p50(r, "chains")
     if "solo" in r else None, "<=", 0.7),
    ("sagas ÷ DBOS, transactional, continuation", lambda r: _beats(r, "sagas", "dbos"), ">=", 1.5),
    ("sagas ÷ celery-saga, own tx, continuation", lambda r: _beats(r, "sagas_own_tx", "celery_saga"), ">=", 2.5),
    ("sagas ÷ chains, transactional, no continuation", lambda r: _ratio(r, "sagas_broker"), ">=", 0.9),
    ("sagas ÷ chains, own tx, no continuation", lambda r: _ratio(r, "sagas_own_tx_broker"), ">=", 0.8),
    ("CPU per saga ÷ per chain, transactional, continuation",
     lambda r: r["workloads"]["sagas"]["cpu_ms"]["total"] / r["workloads"]["chains"]["cpu_ms"]["total"], "<", 1.0),
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Runner(Protocol):
    """What a round needs of a workload: the bench's own (`Workload`) and the peers' drivers alike."""

    def phase(self, n: int) -> dict[str, Any]: ...

    def solo(self, k: int) -> list[float]: ...


class Bench:
    """The bench's own side: its worker's pid, the ledger's database, and its workloads."""

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

    def wait(self, probe: Callable[[], bool], what: str, interval: float = POLL) -> None:
        deadline = time.monotonic() + self.timeout
        while not probe():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {self.timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def chains(self, length: int = 4) -> Workload:
        """Chains of `length` one-row tasks; the last writes step 4, which `chains_done` counts."""
        tasks = self.defs.PLAIN_TASKS if length == 4 else [self.defs.plain_1] * (length - 1) + [self.defs.plain_4]

        def submit(run_id: str, _: int) -> None:
            ref = str(uuid.uuid4())
            self.chain(*(t.si(run_id, ref).set(queue=QUEUE) for t in tasks)).apply_async()

        return Workload(self, f"chains{length}", submit, lambda run_id, count: self.chains_done(run_id) >= count)

    def sagas(self, type_name: str, **extra: Any) -> Workload:
        """Sagas of `type_name` (input: the run's id and `extra`), done when 'completed'."""
        return Workload(self, type_name, lambda run_id, i: self.submit_saga(run_id, i, type_name, **extra),
                        self.sagas_finished)

    def chains_done(self, run_id: str) -> int:
        with self.db.transaction() as conn:
            return conn.execute(self.text("SELECT count(*) FROM bench_rows WHERE run_id = :r AND step = 4"),
                                {"r": run_id}).scalar_one()

    def submit_saga(self, run_id: str, i: int, type_name: str = "bench_saga", **extra: Any) -> None:
        # Each run is its own tenant, so the polls below are index scans whatever the ledger's size.
        self.saga.start(type_name, {"run_id": run_id, **extra}, idempotency_key=f"{run_id}-{i}", tenant=run_id)

    def sagas_finished(self, run_id: str, count: int) -> bool:
        """Whether `count` sagas of this run are 'completed'; raises if any left the happy path.

        Only finished sagas are read (an index range on tenant and status), as the chains' poll reads only
        finished chains, so neither poll costs the database more than the other while a phase runs.
        """
        with self.db.transaction() as conn:
            completed, bad = conn.execute(self.text(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status <> 'completed') "
                "FROM sagas WHERE tenant = :r "
                "AND status IN ('completed', 'compensating', 'compensated', 'paused', 'failed')"),
                {"r": run_id}).one()
        if bad:
            raise RuntimeError(f"{bad} sagas of run {run_id} left the happy path (see the worker log)")
        return completed >= count


class Workload:
    """One of the bench's own workloads on its worker: `phase` and `solo` as the peers' drivers have them."""

    def __init__(self, bench: Bench, name: str, submit: Callable[[str, int], None],
                 finished: Callable[[str, int], bool]) -> None:
        self.bench, self.name, self.submit, self.finished = bench, name, submit, finished

    def run_id(self, what: str = "") -> str:
        return f"{self.name}-{what}{uuid.uuid4().hex[:12]}"

    def phase(self, n: int) -> dict[str, Any]:
        """Submit N, wait until all are done: {"run_id", "submit_s", "wall_s", "cpu_ms" (per unit, by part)}."""
        run_id, pid = self.run_id(), self.bench.worker_pid
        cpu_before = cpu.snapshot(pid)
        t0 = time.perf_counter()
        for i in range(n):
            self.submit(run_id, i)
        submitted = time.perf_counter()
        self.bench.wait(lambda: self.finished(run_id, n), f"{n} of run {run_id}")
        done = time.perf_counter()
        return {"run_id": run_id, "submit_s": submitted - t0, "wall_s": done - t0,
                "cpu_ms": cpu.per_unit_ms(cpu_before, cpu.snapshot(pid), n)}

    def solo(self, k: int) -> list[float]:
        """K one at a time: milliseconds from submission to its completion seen (this process's clock)."""
        run_id, latencies = self.run_id("solo-"), []
        for i in range(k):
            t0 = time.perf_counter()
            self.submit(run_id, i)
            self.bench.wait(lambda done=i + 1: self.finished(run_id, done), f"solo {i} of {run_id}", SOLO_POLL)
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="units per measured phase (default 300)")
    parser.add_argument("--concurrency", type=int, default=2, help="each worker's pool size (default 2)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured units of each workload first (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every 4-step workload (default 4)")
    parser.add_argument("--solo", type=int, default=20, help="units of each run one at a time after (default 20)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="run the peers DBOS and celery-saga too (default: yes)")
    parser.add_argument("--api", type=int, default=500,
                        help="POST /v1/sagas requests for the API figures, 0 to skip (default 500)")
    parser.add_argument("--long", type=int, default=60,
                        help="20-task chains and 20-step sagas per phase, two rounds (default 60; 0: none)")
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
    peers: dict[str, Peer] = {}
    result: dict[str, Any] = {}
    try:
        stack.start()
        bench = Bench(args.timeout)
        with bench.db.transaction() as conn:
            conn.exec_driver_sql(bench.defs.CREATE_TABLE)
        bench.worker_pid = stack.worker("bench", concurrency=args.concurrency, queues=[QUEUE]).popen.pid
        if args.peers:
            for key, name in PEER_OF.items():
                peers[key] = PEERS[name](concurrency=args.concurrency, warmup=args.warmup, timeout=args.timeout)
                peers[key].start(stack.database_url, servers.broker_url)

        runners: dict[str, Runner] = {key: peers[key] if key in PEER_OF else
                                      bench.sagas(type_name) if type_name else bench.chains()
                                      for key, _, type_name in WORKLOADS if key in peers or key not in PEER_OF}
        for key, runner in runners.items():
            if args.warmup and isinstance(runner, Workload):  # the peers warm up as they start
                runner.phase(args.warmup)
        rounds = alternate(runners, args.n, args.rounds)
        labels = {key: label + (f" ({peers[key].version})" if key in peers else "") for key, label, _ in WORKLOADS}
        result = {"n": args.n, "rounds": args.rounds, "concurrency": args.concurrency, "warmup": args.warmup,
                  "peers": {PEER_OF[key]: peer.version for key, peer in peers.items()},
                  "workloads": summarize(rounds, args.n, labels), "worker_log": str(stack.data_dir / "bench.log")}
        if args.solo:
            result["solo"] = {key: latency(labels[key], runners[key].solo(args.solo)) for key in SOLO
                              if key in runners}
        if args.long:
            long_runners = {key: bench.sagas(type_name) if type_name else bench.chains(bench.defs.LONG_STEPS)
                            for key, _, type_name in LONG_WORKLOADS}
            result["long"] = {"steps": bench.defs.LONG_STEPS, "n": args.long, "workloads": summarize(
                alternate(long_runners, args.long, 2), args.long, {key: label for key, label, _ in LONG_WORKLOADS})}
        if args.blob:
            result["blob"] = blob_cases(bench, args.blob)
        if args.api:
            result["api"] = api_figures(bench, stack, args.api)
        result["goals"] = judge(result)
    except BaseException as exc:  # noqa: BLE001 - report, stop the stack, exit non-zero
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
        else:
            logging.getLogger("bench").error("benchmark failed: %s: %s", type(exc).__name__, exc)
            processes = [*stack.processes, *(p.worker for p in peers.values() if p.worker is not None)]
            for process in processes:
                tail = process.log_text()[-3000:]
                if tail:
                    print(f"--- last lines of {process.log} ---\n{tail}", file=sys.stderr)
        code = 1
    else:
        code = 0
    finally:
        for peer in peers.values():
            try:
                peer.stop()
            except Exception as exc:  # noqa: BLE001
                logging.getLogger("bench").error("stopping %s failed: %s", peer.name, exc)
                code = 1
        try:
            stack.stop()
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("bench").error("stopping the stack failed: %s", exc)
            code = 1
        servers.stop()
    if code == 0:
        print(report(result))
        out = DATA_DIR / "result.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {out.relative_to(ROOT)}")
    return code


def alternate(runners: dict[str, Runner], n: int, rounds: int) -> list[dict[str, dict[str, Any]]]:
    """`rounds` rounds of one phase of N per runner: odd rounds in the runners' order, even rounds reversed."""
    order = list(runners)
    return [{key: runners[key].phase(n) for key in (order if r % 2 == 0 else order[::-1])} for r in range(rounds)]


def summarize(rounds: list[dict[str, dict[str, Any]]], n: int, labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per workload: units/s over all rounds, the ratio to chains' by round (chains' wall ÷ its own) and the
    median, CPU ms per unit (mean of rounds, by part), and each round's wall and submit seconds."""
    out = {}
    for key in rounds[0]:
        walls = [r[key]["wall_s"] for r in rounds]
        ratios = [r["chains"]["wall_s"] / r[key]["wall_s"] for r in rounds]
        out[key] = {"label": labels[key], "per_s": round(n * len(rounds) / sum(walls), 2),
                    "ratio_by_round": [round(x, 3) for x in ratios], "ratio": round(statistics.median(ratios), 3),
                    "cpu_ms": _mean_parts([r[key]["cpu_ms"] for r in rounds]),
                    "wall_s": [round(w, 3) for w in walls], "submit_s": [round(r[key]["submit_s"], 3) for r in rounds]}
    return out


def latency(label: str, ms: list[float]) -> dict[str, Any]:
    return {"label": label, "count": len(ms), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1)}


def _ratio(result: dict[str, Any] | None, key: str) -> float | None:
    return result["workloads"][key]["ratio"] if result else None


def _solo_p50(result: dict[str, Any], key: str) -> float:
    return float(result["solo"][key]["p50_ms"])


def _beats(result: dict[str, Any], ours: str, peer: str) -> float | None:
    """Median of rounds of our throughput ÷ the peer's (the peer's wall ÷ ours, the same N)."""
    workloads = result["workloads"]
    if peer not in workloads:
        return None
    return statistics.median(p / o for p, o in zip(workloads[peer]["wall_s"], workloads[ours]["wall_s"]))


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of GOALS with its figure in this result and whether it is met (goals not measured are left out)."""
    judged = []
    for what, figure_of, op, target in GOALS:
        figure = figure_of(result)
        if figure is not None:
            meets = figure >= target if op == ">=" else figure <= target if op == "<=" else figure < target
            judged.append({"goal": what, "figure": round(figure, 3), "target": f"{op} {target}", "meets": meets})
    return judged


# A job-posting-shaped input: a 100-byte one, and a 1 MiB logo (as base64, 1.4 MB) read by the first step alone.
BLOB_CASES = (("100 B", "bench_blob", 100), ("1 MiB, a large field", "bench_blob", 1024 * 1024 * 4 // 3),
              ("1 MiB, inline (before)", "bench_blob_inline", 1024 * 1024 * 4 // 3))


def blob_cases(bench: Bench, n: int) -> list[dict[str, Any]]:
    """Each blob case twice, alternating, N sagas a time: sagas/s and CPU ms per saga (the medians)."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in BLOB_CASES}
    for r in range(2):
        for label, type_name, size in (BLOB_CASES if r == 0 else BLOB_CASES[::-1]):
            runs[label].append(bench.sagas(type_name, blob="x" * size).phase(n))
    return [{"case": label, "input_bytes": size,
             "sagas_per_s": round(statistics.median(n / p["wall_s"] for p in runs[label]), 1),
             "cpu_ms_per_saga": _mean_parts([p["cpu_ms"] for p in runs[label]])}
            for label, _, size in BLOB_CASES]


def api_figures(bench: Bench, stack: ServiceStack, requests: int) -> dict[str, Any]:
    """POST /v1/sagas latency and requests/s with one API process while the worker runs sagas."""
    from bench import api

    busy = f"busy-{uuid.uuid4().hex[:8]}"
    counter = iter(range(10**9))

    def keep_workers_busy() -> None:
        for _ in range(100):
            bench.submit_saga(busy, next(counter))

    figures = api.measure(stack, requests, clients=4, background=keep_workers_busy)
    lat = figures["latencies_ms"]
    return {"requests": requests, "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
            "requests_per_s": round(figures["requests_per_s"], 1), "clients": figures["clients"]}


def _mean_parts(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(s[key] for s in samples), 2) for key in samples[0]}


def _table(workloads: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"{'':<46}{'per s':>7}   {'ratio to chains, by round':<26}{'median':>7}   CPU ms/unit  worker"]
    for key, w in workloads.items():
        by_round = "" if key == "chains" else " ".join(f"{x:.2f}" for x in w["ratio_by_round"])
        median = "" if key == "chains" else f"{w['ratio']:.2f}"
        lines.append(f"{w['label']:<46}{w['per_s']:>7.1f}   {by_round:<26}{median:>7}   "
                     f"{w['cpu_ms']['total']:>11.2f}  {w['cpu_ms'].get('worker', 0):>6.2f}")
    return lines


def report(r: dict[str, Any]) -> str:
    lines = ["", f"=== 4 one-row steps: N {r['n']} per phase, {r['rounds']} round(s), warm-up {r['warmup']} ===",
             (f"(odd rounds in this order, even rounds reversed; one worker per engine, concurrency "
              f"{r['concurrency']}, all on the same PostgreSQL and Redis)"), *_table(r["workloads"])]
    if "long" in r:
        g = r["long"]
        lines += ["", f"=== {g['steps']} one-row steps: N {g['n']} per phase, 2 rounds alternating ===",
                  *_table(g["workloads"])]
    if "solo" in r:
        count = next(iter(r["solo"].values()))["count"]
        lines += ["", (f"=== one alone, {count} each, client clock (submission to completion seen, "
                       f"{SOLO_POLL * 1000:.0f} ms polls) ===")]
        lines += [f"{s['label']:<46}p50 {s['p50_ms']:6.1f} ms   p99 {s['p99_ms']:6.1f} ms"
                  for s in r["solo"].values()]
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
    lines += ["", "=== goals (throughput ratios: medians of this run's rounds) ==="]
    lines += [f"{'meets' if g['meets'] else 'below':<6} {g['goal']:<56}{g['figure']:>7.2f}   goal {g['target']}"
              for g in r["goals"]]
    lines.append(f"\nworker log: {r['worker_log']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
