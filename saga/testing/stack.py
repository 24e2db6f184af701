"""A stack to run sagas for real in tests: a private database and Redis DB, worker and beat processes."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis

from saga.testing.databases import create_database, drop_database, with_database
from saga.testing.processes import Process

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
    """A throwaway database and Redis DB on servers you already run, with workers and beat of your Celery app.

    `database_server_url` names a PostgreSQL server (any database on it: the stack creates its own) and
    `broker_url` a Redis server (the stack claims an empty database number on it), or a RabbitMQ vhost of
    its own (`amqp://user:password@host:5672/vhost`, used as it is). Worker and beat processes
    run `celery -A <app>` and find both through the environment: `database_env` (read by `Sagas(app)` when
    it is given no `database_url`) and `broker_env` (Celery itself lets `CELERY_BROKER_URL` win over the
    app's configuration). `settings` adds other variables.
    """

    data_dir: Path
    database_server_url: str
    broker_url: str
    # Your Celery app, as `celery -A` takes it (the module that calls `Sagas(app)`).
    app: str
    # The queues a worker consumes unless told otherwise.
    queues: tuple[str, ...] = ("celery",)
    settings: dict[str, str] = field(default_factory=dict)
    database_env: str = "SAGA_DATABASE_URL"
    broker_env: str = "CELERY_BROKER_URL"
    cwd: Path | None = None
    database: str = ""
    redis_db: int = -1
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    worker_names: set[str] = field(default_factory=set)
    # How each worker was started, so `revive` starts it again the same way.
    _worker_args: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def start(self) -> Stack:
        """Create and migrate the database, claim an empty Redis DB; points this process at them too."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = f"saga_test_{uuid.uuid4().hex[:10]}"
        create_database(self.database_server_url, self.database)
        database_url = with_database(self.database_server_url, self.database)
        self.env = {self.database_env: database_url, self.broker_env: self._broker(), **self.settings}
        os.environ.update(self.env)
        from saga import db, migrate, settings

        settings.configure(database_url=database_url)
        db.dispose()
        migrate.upgrade(database_url)
        self._point_app_here()
        return self

    def _point_app_here(self) -> None:
        """Send this process's own messages to the stack's broker, even from an app that read its settings
        before `start()` set the environment (a test module importing the app, say)."""
        from celery.app.utils import find_app

        app = find_app(self.app)
        if app.conf.broker_url != self.env[self.broker_env]:
            app.conf.broker_url = self.env[self.broker_env]
            if app._pool is not None:  # connections already opened to the old broker
                app._pool.force_close_all()
                app._pool = None

    @property
    def database_url(self) -> str:
        return self.env[self.database_env]

    def _broker(self) -> str:
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        self.redis_db = claim_redis_db(self.broker_url)
        return with_redis_db(self.broker_url, self.redis_db)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env[self.broker_env])

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process.spawn(name, argv, {**self.env, **(env or {})}, self.data_dir, cwd=self.cwd)
        self.processes.append(process)
        return process

    def worker(self, name: str = "w1", concurrency: int = 2, queues: Iterable[str] | None = None,
               extra: Iterable[str] = (), env: dict[str, str] | None = None) -> Process:
        """Start a Celery worker in its own process group and wait until it consumes."""
        self.worker_names.add(name)
        self._worker_args[name] = {"concurrency": concurrency, "queues": queues, "extra": extra, "env": env}
        start = self._read_size(name)
        process = self._spawn(name, [
            sys.executable, "-m", "celery", "-A", self.app, "worker", f"--concurrency={concurrency}",
            f"--hostname={name}@%h", "--loglevel=INFO", "--without-gossip", "--without-mingle",
            f"--queues={','.join(queues or self.queues)}", *extra,
        ], env)
        wait_until(lambda: process.popen.poll() is not None or " ready." in process.log_text()[start:],
                   timeout=60, what=f"worker {name} to be ready")
        if process.popen.poll() is not None:
            raise RuntimeError(f"worker {name} exited: {process.log_text()[-2000:]}")
        return process

    def replace_workers(self, *, kill: bool, queues: Iterable[str] | None = None,
                        env: dict[str, str] | None = None) -> Process:
        """SIGKILL (or stop) every worker, then start a fresh one, optionally with other settings."""
        self.stop_workers(kill=kill)
        return self.worker("w1", concurrency=2, queues=queues, env=env)

    def workers(self) -> list[Process]:
        """The worker processes started here that still run."""
        return [p for p in self.processes if p.name in self.worker_names and p.alive()]

    def revive(self) -> list[str]:
        """Start again every worker that exited by itself, as systemd or Compose's restart policy would; the
        names of those started again. (Celery 5.7 can exit a worker when Redis goes away: README, fleet.)"""
        exited = [p for p in self.processes if p.name in self.worker_names and not p.alive()]
        for process in exited:
            self.processes.remove(process)
            self.worker(process.name, **self._worker_args[process.name])
        return [p.name for p in exited]

    def held(self, name: str) -> int | None:
        """How many messages worker `name` is running or has reserved, as it answers itself (None: no answer)."""
        from celery.app.utils import find_app

        hostname = f"{name}@{socket.gethostname()}"
        inspect = find_app(self.app).control.inspect(destination=[hostname], timeout=2)
        active, reserved = inspect.active(), inspect.reserved()
        if not active or not reserved or hostname not in active or hostname not in reserved:
            return None
        return len(active[hostname]) + len(reserved[hostname])

    def stop_workers(self, *, kill: bool = False, keep: Iterable[str] = ()) -> None:
        """Stop (or SIGKILL) every worker but those named in `keep`."""
        for process in [p for p in self.processes if p.name in self.worker_names and p.name not in keep]:
            if kill:
                process.kill()
            else:
                process.stop()
            self.processes.remove(process)

    def beat(self, env: dict[str, str] | None = None) -> Process:
        """Start Celery beat, which runs recovery."""
        return self._spawn("beat", [
            sys.executable, "-m", "celery", "-A", self.app, "beat", "--loglevel=INFO",
            f"--schedule={self.data_dir / 'beat-schedule'}",
        ], env)

    def _read_size(self, name: str) -> int:
        log = self.data_dir / f"{name}.log"
        return len(log.read_text(errors="replace")) if log.exists() else 0

    def stop_processes(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()

    def stop(self) -> None:
        """Stop processes, drop the database, empty the Redis DB."""
        self.stop_processes()
        from saga import db

        db.dispose()
        if self.database:
            drop_database(self.database_server_url, self.database)
        if self.redis_db > 0:
            self.redis().flushdb()


def claim_redis_db(url: str) -> int:
    """An empty database number (15 down to 1) on the Redis server of `url`, marked as taken for a day, so that
    test sessions sharing a server never share a database."""
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(url, db=number)
        if client.dbsize() == 0 and client.set("saga:test-owner", os.getpid(), nx=True, ex=86400):
            return number
    raise RuntimeError("no empty Redis database (1-15) to run in")


def with_redis_db(url: str, number: int) -> str:
    """The same Redis server URL naming database `number`."""
    return urlsplit(url)._replace(path=f"/{number}").geturl()


def wait_for_status(saga_id: Any, statuses: Iterable[str], timeout: float = 60.0) -> Any:
    """The saga's record once its status is one of `statuses`."""
    from saga import store

    wanted = set(statuses)

    def probe() -> Any:
        record = store.load(saga_id)
        return record if record.status in wanted else None

    return wait_until(probe, timeout=timeout, interval=0.1, what=f"saga {saga_id} to reach {sorted(wanted)}")
