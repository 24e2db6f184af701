"""Drivers of the peers, run from the project's venv: each starts a worker and a submitter in its peer venv.

A phase is measured as `Bench.phase` in bench/run.py measures one: the clock starts, N are submitted (submission
is timed: the submitter's answer that all N are enqueued), and it stops when bench_rows holds N step-4 rows of
the phase's run_id (polled every 20 ms). CPU ms per unit come from bench/cpu.py with the peer worker's pid
(its pool children included), plus the submitter process's own CPU as the part "submitter". After the clock
stops, each of the N is checked to have reached the peer's own "done" status (not timed).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench import cpu
from bench.peers.peer_venvs import PEERS_DIR, ensure_venv, installed_version
from saga.testing.databases import create_database, drop_database, libpq_url, with_database
from saga.testing.processes import Process, die_with_parent
from saga.testing.stack import claim_redis_db, with_redis_db

SCRIPTS = Path(__file__).resolve().parent
LOG_DIR = PEERS_DIR / "logs"
POLL = 0.02  # as bench.run
SOLO_POLL = 0.002  # as bench.run: one-at-a-time runs poll faster, their latency is the figure
DATASOURCE_SCHEMA = "dbos_bench_peer"  # DBOS's checkpoints of its transaction steps, in the bench's database


class Submitter:
    """The peer's submitting process: one JSON command a line on its stdin, one JSON answer a line on its stdout."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
        self._log = log.open("ab")
        self.timeout = timeout
        self.popen = subprocess.Popen(argv, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=SCRIPTS,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                      start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
        self.log = log

    def ask(self, **command: Any) -> dict[str, Any]:
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        # One answer a command, so nothing is left in stdout's buffer between commands: select sees it all.
        if not select.select([stdout], [], [], self.timeout)[0]:
            raise TimeoutError(f"submitter gave no answer to {command['cmd']} in {self.timeout:.0f}s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"submitter exited ({self.popen.poll()}): {self.log.read_text()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"submitter: {answer['error']}")
        return answer

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.popen.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.ask(cmd="quit")
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


class Peer:
    """A peer engine running the bench's 4-step, one-row-per-step workload on one worker, concurrency 2.

    Subclasses set `name`, `distribution`, `requirements`, `done_status` and implement `_launch` (start the
    worker and the submitter, return them) and `_cleanup` (drop what `_launch` created).
    """

    name = ""
    distribution = ""
    requirements: tuple[str, ...] = ()
    done_status = ""

    def __init__(self, concurrency: int = 2, warmup: int = 20, timeout: float = 600.0) -> None:
        self.concurrency, self.warmup, self.timeout = concurrency, warmup, timeout
        self.version = ""
        self.worker: Process | None = None
        self.submitter: Submitter | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._submitted: dict[str, int] = {}

    # --- the API ----------------------------------------------------------------------------------------------
    def start(self, database_url: str, broker_url: str) -> Peer:
        """Create the venv if needed, create bench_rows in `database_url`, start worker and submitter, warm up."""
        from bench.sagas import CREATE_TABLE  # the bench's own table, created as bench.run creates it

        python = ensure_venv(self.name, self.requirements)
        self.version = installed_version(python, self.distribution)
        self.database_url = database_url
        self._conn = psycopg.connect(libpq_url(database_url), autocommit=True)
        self._conn.execute(CREATE_TABLE)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        try:
            self.worker, self.submitter = self._launch(python, database_url, broker_url)
            if self.warmup:
                run_id = f"{self.name}-warmup-{uuid.uuid4().hex[:8]}"
                self._submit(run_id, self.warmup)
                self._wait(lambda: self.rows_done(run_id) >= self.warmup, f"{self.warmup} warm-up of {self.name}")
                self._check_done(run_id)
            self.pause()
        except BaseException:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """Freeze the worker (SIGSTOP to its process group) while other workloads are measured: its idle work
        (DBOS's worker polls its queue every 10 ms) then costs them nothing."""
        if self.worker is not None:
            self.worker.send(signal.SIGSTOP)

    def resume(self) -> None:
        if self.worker is not None:
            self.worker.send(signal.SIGCONT)

    def phase(self, n: int) -> dict[str, Any]:
        """Submit N, wait until all are done: {"run_id", "submit_s", "wall_s", "cpu_ms"} as `Bench.phase`."""
        run_id = f"{self.name}-{uuid.uuid4().hex[:12]}"
        worker_pid = self._worker_pid()
        self.resume()
        cpu_before = self._cpu(worker_pid)
        t0 = time.perf_counter()
        self._submit(run_id, n)
        submitted = time.perf_counter()
        self._wait(lambda: self.rows_done(run_id) >= n, f"{n} of run {run_id}")
        done = time.perf_counter()
        cpu_after = self._cpu(worker_pid)
        self._check_done(run_id)
        self.pause()
        return {"run_id": run_id, "submit_s": submitted - t0, "wall_s": done - t0,
                "cpu_ms": cpu.per_unit_ms(cpu_before, cpu_after, n)}

    def solo(self, k: int) -> list[float]:
        """K run one at a time: milliseconds from submission to its step-4 row seen (client clock)."""
        run_id, latencies = f"{self.name}-solo-{uuid.uuid4().hex[:12]}", []
        self.resume()
        for i in range(k):
            t0 = time.perf_counter()
            self._submit(run_id, 1)
            self._wait(lambda done=i + 1: self.rows_done(run_id) >= done, f"solo {i} of {self.name}", SOLO_POLL)
            latencies.append((time.perf_counter() - t0) * 1000)
        self._check_done(run_id)
        self.pause()
        return latencies

    def stop(self) -> None:
        """Stop the submitter and the worker, drop what start created (bench_rows stays); idempotent."""
        if self.submitter is not None:
            self.submitter.stop()
            self.submitter = None
        if self.worker is not None:
            self.resume()  # a frozen worker would not act on the signal that stops it
            self.worker.stop()
            self.worker = None
        if self._conn is not None:
            self._cleanup()
            self._conn.close()
            self._conn = None

    # --- shared parts -----------------------------------------------------------------------------------------
    def rows_done(self, run_id: str) -> int:
        """Step-4 rows of `run_id` in bench_rows: the units finished."""
        assert self._conn is not None
        row = self._conn.execute("SELECT count(*) FROM bench_rows WHERE run_id = %s AND step = 4", (run_id,)).fetchone()
        return int(row[0]) if row else 0

    def _launch(self, python: Path, database_url: str, broker_url: str) -> tuple[Process, Submitter]:
        raise NotImplementedError

    def _cleanup(self) -> None:
        raise NotImplementedError

    def _worker_pid(self) -> int:
        assert self.worker is not None and self.worker.alive(), f"the {self.name} worker is not running"
        return self.worker.popen.pid

    def _submit(self, run_id: str, n: int) -> None:
        assert self.submitter is not None
        first = self._submitted.get(run_id, 0)
        self.submitter.ask(cmd="submit", run_id=run_id, n=n, first=first)
        self._submitted[run_id] = first + n

    def _cpu(self, worker_pid: int) -> dict[str, float]:
        assert self.submitter is not None
        return {**cpu.snapshot(worker_pid), "submitter": self.submitter.cpu_seconds()}

    def _wait(self, probe: Callable[[], bool], what: str, interval: float = POLL) -> None:
        deadline = time.monotonic() + self.timeout
        while not probe():
            if self.worker is not None and not self.worker.alive():
                raise RuntimeError(f"the {self.name} worker exited: {self.worker.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {self.timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def _check_done(self, run_id: str) -> None:
        """Every unit of `run_id` submitted has reached the peer's own done status (waits a little for it)."""
        assert self.submitter is not None
        expected, statuses = self._submitted[run_id], {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses = self.submitter.ask(cmd="status", run_id=run_id)
            if statuses.get(self.done_status, 0) == expected:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} run {run_id}: {expected} submitted, statuses {statuses}")

    def _spawn_worker(self, argv: list[str], env: dict[str, str], ready: str) -> Process:
        log = LOG_DIR / f"{self.name}-worker.log"
        start = log.stat().st_size if log.exists() else 0
        worker = Process.spawn(f"{self.name}-worker", argv, env, LOG_DIR, cwd=SCRIPTS)
        deadline = time.monotonic() + 120
        while ready not in log.read_bytes()[start:].decode(errors="replace"):
            if not worker.alive() or time.monotonic() > deadline:
                worker.stop()
                raise RuntimeError(f"the {self.name} worker did not start: {worker.log_text()[-2000:]}")
            time.sleep(0.1)
        return worker


class DbosPeer(Peer):
    """DBOS Transact: a workflow of 4 steps on a DBOS queue served by one worker process.

    `step_kind` "transaction" (default): each step a DBOS datasource transaction whose row commits with the step's
    checkpoint, as the project's transactional saga steps; "step": a `@DBOS.step()` writing its row in a
    transaction of its own. `poll_s`: the queue's polling interval (DBOS's default is 1.0 s). DBOS's system
    database is a database of its own on the same server, created by start and dropped by stop.
    """

    name = "dbos"
    distribution = "dbos"
    requirements = ("dbos>=3.4",)
    done_status = "SUCCESS"

    def __init__(self, concurrency: int = 2, warmup: int = 20, timeout: float = 600.0, poll_s: float = 0.01,
                 step_kind: str = "transaction") -> None:
        super().__init__(concurrency, warmup, timeout)
        self.poll_s, self.step_kind = poll_s, step_kind
        self.system_database = ""

    def _launch(self, python: Path, database_url: str, broker_url: str) -> tuple[Process, Submitter]:
        self.system_database = f"dbos_peer_{uuid.uuid4().hex[:10]}"
        create_database(database_url, self.system_database)
        system_url = with_database(database_url, self.system_database)
        script = str(SCRIPTS / "dbos_peer.py")
        worker = self._spawn_worker(
            [str(python), script, "worker", "--system-db", system_url, "--app-db", database_url,
             "--concurrency", str(self.concurrency), "--poll", str(self.poll_s), "--step-kind", self.step_kind,
             "--schema", DATASOURCE_SCHEMA],
            {}, "ready")
        submitter = Submitter([str(python), script, "submitter", "--system-db", system_url], {},
                              LOG_DIR / "dbos-submitter.log", self.timeout)
        return worker, submitter

    def _cleanup(self) -> None:
        assert self._conn is not None
        self._conn.execute(f"DROP SCHEMA IF EXISTS {DATASOURCE_SCHEMA} CASCADE")
        if self.system_database:
            drop_database(self.database_url, self.system_database)
            self.system_database = ""


class CelerySagaPeer(Peer):
    """celery-saga (PyPI): a saga of 4 Celery task steps, run by one Celery worker (prefork, concurrency 2).

    Broker and celery-saga's state backend: a Redis database number of its own on the bench's Redis server,
    claimed by start and emptied by stop; queue "bench_peer_saga".
    """

    name = "celery-saga"
    distribution = "celery-saga"
    requirements = ("celery-saga[redis]==0.1.1", "celery[redis]>=5.3", "psycopg[binary]>=3.1")
    done_status = "completed"
    queue = "bench_peer_saga"

    def __init__(self, concurrency: int = 2, warmup: int = 20, timeout: float = 600.0) -> None:
        super().__init__(concurrency, warmup, timeout)
        self.redis_url = ""

    def _launch(self, python: Path, database_url: str, broker_url: str) -> tuple[Process, Submitter]:
        self.redis_url = with_redis_db(broker_url, claim_redis_db(broker_url))
        env = {"PEER_BROKER_URL": self.redis_url, "PEER_APP_DB": database_url, "PEER_QUEUE": self.queue,
               "PYTHONPATH": str(SCRIPTS)}
        # --loglevel=INFO, gossip and mingle off: as saga.testing.Stack starts the bench's own worker.
        worker = self._spawn_worker(
            [str(python), "-m", "celery", "-A", "celery_saga_peer", "worker", f"--concurrency={self.concurrency}",
             f"--hostname={self.name}@%h", "--loglevel=INFO", "--without-gossip", "--without-mingle",
             f"--queues={self.queue}"], env, " ready.")
        submitter = Submitter([str(python), str(SCRIPTS / "celery_saga_peer.py"), "submitter"], env,
                              LOG_DIR / "celery-saga-submitter.log", self.timeout)
        return worker, submitter

    def _cleanup(self) -> None:
        if self.redis_url:
            import redis

            redis.Redis.from_url(self.redis_url).flushdb()
            self.redis_url = ""


PEERS: dict[str, type[Peer]] = {"dbos": DbosPeer, "celery-saga": CelerySagaPeer}
