"""Peers for the benchmark: the same 4-step workload (each step inserts one row into bench_rows) run by other engines.

Each peer runs in a virtual environment of its own, created on first use under .saga/bench/peers/<name>-venv
(its packages never enter the project's): DBOS Transact (`dbos`, a workflow of 4 steps on a DBOS queue) and
celery-saga (PyPI `celery-saga` 0.1.1, a saga of 4 Celery tasks). Both run one worker process with
concurrency 2, as the bench's own worker. The scripts those venvs run are `dbos_peer.py` and
`celery_saga_peer.py` beside this file; the drivers below run in the project's venv.

    from bench.peers import PEERS, DbosPeer, CelerySagaPeer

    peer = DbosPeer()                   # or CelerySagaPeer(), or PEERS["dbos"](); options: concurrency=2,
                                        # warmup=20, timeout=600.0; DbosPeer also poll_s=0.01, step_kind="transaction"
    peer.start(database_url, broker_url)  # SQLAlchemy URL of the database holding (or to hold) bench_rows, and the
                                        # Redis server's URL; creates the venv if needed, starts worker and
                                        # submitter, runs `warmup` unmeasured; returns the peer
    peer.phase(300)                     # -> {"run_id", "submit_s", "wall_s", "cpu_ms"}, as Bench.phase: done when
                                        # bench_rows holds 300 step-4 rows of run_id; cpu_ms per unit by part
                                        # (worker, bench, postgres, redis, submitter, total) from bench/cpu.py
    peer.solo(20)                       # -> [ms, ...]: one at a time, submission to its step-4 row (client clock)
    peer.version                        # the peer package's installed version, once started
    peer.stop()                         # stops its processes, drops its own databases / Redis DB; bench_rows stays

`python -m bench.peers --n 100` runs every peer once on servers of its own and prints the figures.
"""

from bench.peers.drivers import PEERS, CelerySagaPeer, DbosPeer, Peer

__all__ = ["PEERS", "CelerySagaPeer", "DbosPeer", "Peer"]
