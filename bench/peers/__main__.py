"""`python -m bench.peers [--n 100] [--solo 20] [--peer dbos] [--dbos-poll 0.01] [--dbos-step-kind step]`

Starts PostgreSQL and Redis as `bench.run` does, gives the peers a database of its own for bench_rows, runs each
peer once (start, one phase of N, K one at a time, stop) and prints workflows/s, CPU ms per workflow by part,
and the one-at-a-time latency p50/p99. Exits non-zero on errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from typing import Any

from bench.peers.drivers import PEERS, DbosPeer, Peer
from bench.run import DATA_DIR, percentile
from devstack.servers import start_services
from saga.testing.databases import create_database, drop_database, with_database


def make_peer(name: str, args: argparse.Namespace) -> Peer:
    common: dict[str, Any] = {"concurrency": args.concurrency, "warmup": args.warmup, "timeout": args.timeout}
    if name == "dbos":
        return DbosPeer(**common, poll_s=args.dbos_poll, step_kind=args.dbos_step_kind)
    return PEERS[name](**common)


def run_peer(peer: Peer, database_url: str, broker_url: str, n: int, solo: int) -> dict[str, Any]:
    peer.start(database_url, broker_url)
    try:
        measured = peer.phase(n)
        latencies = peer.solo(solo) if solo else []
    finally:
        peer.stop()
    return {"version": peer.version, "per_s": n / measured["wall_s"], **measured, "solo_ms": latencies}


def describe(name: str, peer: Peer, r: dict[str, Any], n: int) -> str:
    detail = f", step kind {peer.step_kind}, queue poll {peer.poll_s} s" if isinstance(peer, DbosPeer) else ""
    parts = "  ".join(f"{key} {value:.2f}" for key, value in r["cpu_ms"].items() if key != "total")
    lines = [f"{name} {r['version']} (1 worker, concurrency {peer.concurrency}{detail})",
             f"  workflows/s         {r['per_s']:.1f}   (N {n}: wall {r['wall_s']:.2f} s, submit {r['submit_s']:.2f} s)",
             f"  CPU ms per workflow {r['cpu_ms']['total']:.2f}  ({parts})"]
    if r["solo_ms"]:
        lines.append(f"  one at a time       p50 {percentile(r['solo_ms'], 50):.1f} ms   "
                     f"p99 {percentile(r['solo_ms'], 99):.1f} ms   ({len(r['solo_ms'])}, client clock)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[1])
    parser.add_argument("--n", type=int, default=100, help="workflows in the measured phase (default 100)")
    parser.add_argument("--solo", type=int, default=20, help="workflows run one at a time after (default 20)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured workflows first (default 20)")
    parser.add_argument("--concurrency", type=int, default=2, help="the peer worker's concurrency (default 2)")
    parser.add_argument("--peer", action="append", choices=sorted(PEERS), help="only this peer (repeatable)")
    parser.add_argument("--dbos-poll", type=float, default=0.01, help="DBOS queue polling interval, s (default 0.01)")
    parser.add_argument("--dbos-step-kind", choices=("transaction", "step"), default="transaction")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a phase may take before it is an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    servers = start_services(DATA_DIR / "services")
    database = f"bench_peers_{uuid.uuid4().hex[:10]}"
    code, lines = 0, ["", "=== peers: 4 one-row steps per workflow ==="]
    try:
        create_database(servers.database_url, database)
        database_url = with_database(servers.database_url, database)
        for name in args.peer or list(PEERS):
            peer = make_peer(name, args)
            try:
                lines.append(describe(name, peer, run_peer(peer, database_url, servers.broker_url, args.n,
                                                           args.solo), args.n))
            except Exception as exc:  # noqa: BLE001 - one peer failing does not hide the others' figures
                logging.getLogger("bench.peers").error("%s failed: %s: %s", name, type(exc).__name__, exc)
                code = 1
    finally:
        try:
            drop_database(servers.database_url, database)
        finally:
            servers.stop()
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
