"""Running sagas for real in tests and benchmarks: a private database, a Redis DB, and worker processes."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from saga.local_services import Services, create_database, drop_database, start_services, with_database
from saga.processes import Process

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what or probe}")
        time.sleep(interval)


@dataclass
class Stack:
    """A throwaway database and Redis DB, with worker and beat processes pointed at them."""

    data_dir: Path
    modules: str = "tasks.demo"
    settings: dict[str, str] = field(default_factory=dict)
    services: Services | None = None
    database: str = ""
    redis_db: int = -1
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def start(self) -> Stack:
        """Create the database and claim an empty Redis DB; exports the settings to this process too."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.services = start_services(self.data_dir / "services")
        self.database = f"saga_test_{uuid.uuid4().hex[:10]}"
        server = self.services.database_url
        create_database(server, self.database)
        self.redis_db = self._claim_redis_db(self.services.broker_url)
        broker = self.services.broker_url.rstrip("/").rsplit("/", 1)
        base = self.services.broker_url.rstrip("/") if not broker[-1].isdigit() else broker[0]
        self.env = {
            "SAGA_DATABASE_URL": with_database(server, self.database),
            "SAGA_BROKER_URL": f"{base}/{self.redis_db}",
            "SAGA_MODULES": self.modules,
            **self.settings,
        }
        os.environ.update(self.env)
        from saga import migrate
        from saga.settings import get_settings

        get_settings.cache_clear()

        migrate.upgrade(self.env["SAGA_DATABASE_URL"])
        return self

    def _claim_redis_db(self, url: str) -> int:
        for number in range(15, 0, -1):
            client = redis.Redis.from_url(url, db=number)
            if client.dbsize() == 0 and client.set("saga:test-owner", os.getpid(), nx=True, ex=86400):
                return number
        raise RuntimeError("no empty Redis database (1-15) to run in")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["SAGA_BROKER_URL"])

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process.spawn(name, argv, {**self.env, **(env or {})}, self.data_dir)
        self.processes.append(process)
        return process

    def worker(self, name: str = "w1", concurrency: int = 2, queues: Iterable[str] = ("celery",),
               extra: Iterable[str] = (), env: dict[str, str] | None = None) -> Process:
        """Start a Celery worker in its own process group and wait until it consumes."""
        start = self._read_size(name)
        process = self._spawn(name, [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", f"--concurrency={concurrency}",
            f"--hostname={name}@%h", "--loglevel=INFO", "--without-gossip", "--without-mingle",
            f"--queues={','.join(queues)}", *extra,
        ], env)
        wait_until(lambda: process.popen.poll() is not None or " ready." in process.log_text()[start:],
                   timeout=60, what=f"worker {name} to be ready")
        if process.popen.poll() is not None:
            raise RuntimeError(f"worker {name} exited: {process.log_text()[-2000:]}")
        return process

    def replace_workers(self, *, kill: bool, queues: Iterable[str] = ("probe", "celery"),
                        env: dict[str, str] | None = None) -> Process:
        """SIGKILL (or stop) every worker, then start a fresh one, optionally with other settings."""
        for process in [p for p in self.processes if p.name.startswith("w")]:
            if kill:
                process.kill()
            else:
                process.stop()
            self.processes.remove(process)
        return self.worker("w1", concurrency=2, queues=queues, env=env)

    def beat(self) -> Process:
        return self._spawn("beat", [
            sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel=INFO",
            f"--schedule={self.data_dir / 'beat-schedule'}",
        ])

    def _read_size(self, name: str) -> int:
        log = self.data_dir / f"{name}.log"
        return len(log.read_text(errors="replace")) if log.exists() else 0

    def stop_processes(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()

    def stop(self) -> None:
        """Stop processes, drop the database, empty the Redis DB, stop embedded servers."""
        self.stop_processes()
        from saga import db

        db.dispose()
        if self.services is not None:
            drop_database(self.services.database_url, self.database)
            if self.redis_db > 0:
                self.redis().flushdb()
            self.services.stop()


def wait_for_status(saga_id: Any, statuses: Iterable[str], timeout: float = 60.0) -> Any:
    """The saga's record once its status is one of `statuses`."""
    from saga import store

    wanted = set(statuses)

    def probe() -> Any:
        record = store.load(saga_id)
        return record if record.status in wanted else None

    return wait_until(probe, timeout=timeout, interval=0.1, what=f"saga {saga_id} to reach {sorted(wanted)}")
