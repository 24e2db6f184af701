"""DBOS Transact peer, run by the peer venv's python (never imported by the project): a worker or a submitter.

    python bench/peers/dbos_peer.py worker --system-db URL --app-db URL [--concurrency 2] [--poll 0.01]
        [--step-kind transaction|step] [--schema dbos]
    python bench/peers/dbos_peer.py submitter --system-db URL

The workflow `bench_workflow(run_id, ref)` has 4 steps, each inserting one row `(run_id, ref, step)` into
bench_rows of the app database. Step kind `transaction` (the default): a DBOS datasource transaction, whose row
and checkpoint commit together (as the project's transactional saga steps do); `step`: a `@DBOS.step()` whose
body writes its row in a transaction of its own (as the project's own-tx sagas and plain chains do).
The worker serves the DBOS queue "bench" with `worker_concurrency` workflows at once and prints `ready` once
launched. The submitter reads one JSON command a line on stdin and answers one JSON line on stdout:
`{"cmd": "submit", "run_id": R, "n": N, "first": F}` enqueues N workflows with ids `R:F`..`R:F+N-1` (answer
`{"submitted": N}`);
`{"cmd": "status", "run_id": R}` counts them by DBOS status (answer `{"SUCCESS": k, ...}`); `{"cmd": "quit"}`.
"""

from __future__ import annotations

import argparse
import threading
import uuid
from collections import Counter
from typing import Any

import psycopg
import sqlalchemy as sa
from dbos import DBOS, DBOSClient, DBOSConfig, SQLAlchemyDatasource
from submit_loop import serve

APP_NAME = "bench_peer"
QUEUE = "bench"
WORKFLOW = "bench_workflow"
INSERT = "INSERT INTO bench_rows (run_id, ref, step) VALUES (%s, %s, %s)"


def libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as psycopg takes it."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def worker(args: argparse.Namespace) -> None:
    config: DBOSConfig = {"name": APP_NAME, "system_database_url": args.system_db, "log_level": "WARNING"}
    DBOS(config=config)
    local = threading.local()

    def own_connection() -> psycopg.Connection[Any]:
        # One connection per DBOS executor thread, reused: as a pool would hand out.
        if getattr(local, "conn", None) is None:
            local.conn = psycopg.connect(libpq(args.app_db), autocommit=True)
        return local.conn

    if args.step_kind == "transaction":
        datasource = SQLAlchemyDatasource.create(args.app_db, schema=args.schema)

        def make_step(number: int) -> Any:
            @datasource.transaction(name=f"step_{number}", isolation_level="READ COMMITTED")
            def step(run_id: str, ref: str) -> None:
                datasource.sql_session().execute(
                    sa.text("INSERT INTO bench_rows (run_id, ref, step) VALUES (:r, :f, :s)"),
                    {"r": run_id, "f": ref, "s": number})
            return step
    else:
        def make_step(number: int) -> Any:
            @DBOS.step(name=f"step_{number}")
            def step(run_id: str, ref: str) -> None:
                conn = own_connection()
                with conn.transaction():
                    conn.execute(INSERT, (run_id, ref, number))
            return step

    steps = [make_step(number) for number in (1, 2, 3, 4)]

    @DBOS.workflow(name=WORKFLOW)
    def bench_workflow(run_id: str, ref: str) -> None:
        for step in steps:
            step(run_id, ref)

    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=args.poll,
                        on_conflict="always_update")
    print("ready", flush=True)
    threading.Event().wait()


def submitter(args: argparse.Namespace) -> None:
    client = DBOSClient(system_database_url=args.system_db, application_name=APP_NAME)

    def submit(run_id: str, first: int, n: int) -> None:
        for i in range(first, first + n):
            client.enqueue({"queue_name": QUEUE, "workflow_name": WORKFLOW, "workflow_id": f"{run_id}:{i}"},
                           run_id, str(uuid.uuid4()))

    def status(run_id: str) -> dict[str, int]:
        workflows = client.list_workflows(workflow_id_prefix=f"{run_id}:", load_input=False, load_output=False)
        return dict(Counter(w.status for w in workflows))

    try:
        serve(submit, status)
    finally:
        client.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--system-db", required=True)
    w.add_argument("--app-db", required=True)
    w.add_argument("--concurrency", type=int, default=2)
    w.add_argument("--poll", type=float, default=0.01, help="queue polling interval, seconds")
    w.add_argument("--step-kind", choices=("transaction", "step"), default="transaction")
    w.add_argument("--schema", default="dbos", help="schema of the transaction steps' checkpoints in the app db")
    s = sub.add_parser("submitter")
    s.add_argument("--system-db", required=True)
    args = parser.parse_args()
    (worker if args.role == "worker" else submitter)(args)


if __name__ == "__main__":
    main()
