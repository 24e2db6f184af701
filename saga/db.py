"""The one database layer: a connection pool per process and the short transactions the engine runs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, TextClause, create_engine, func
from sqlalchemy import exc as exc_module

from saga.settings import get_settings

_engine: Engine | None = None
_engine_pid: int | None = None


def engine() -> Engine:
    """This process's engine; a forked worker child builds its own instead of sharing the parent's sockets."""
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine = create_engine(
            get_settings().database_url,
            pool_size=4,
            max_overflow=8,
            pool_recycle=1800,
            connect_args={"connect_timeout": 5},  # a database host that does not answer fails fast
        )
        _engine_pid = os.getpid()
    return _engine


@contextmanager
def transaction(joined: Connection | None = None) -> Iterator[Connection]:
    """A connection inside one transaction, committed on success and rolled back on error.

    Given `joined`, a connection whose transaction the caller owns, the work joins that transaction.
    """
    if joined is not None:
        yield joined
        return
    with engine().begin() as conn:
        yield conn


@contextmanager
def autocommit(joined: Connection | None = None) -> Iterator[Connection]:
    """A connection for work that is a single statement, atomic by itself, so it needs no BEGIN or COMMIT
    round trip; given `joined`, the statement runs in that caller's transaction instead."""
    if joined is not None:
        yield joined
        return
    with engine().connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def dispose() -> None:
    """Drop this process's pool (used after fork and at shutdown)."""
    global _engine
    if _engine is not None and _engine_pid == os.getpid():
        _engine.dispose()
    _engine = None


def to_json(value: Any) -> str:
    """JSON text for a jsonb parameter; dates and UUIDs become strings."""
    return json.dumps(value, default=str)


_DRIVER_SQL: dict[str, str] = {}


def fetchone(conn: Connection, statement: TextClause, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """First row of a hot-path statement, run on the psycopg connection itself; its columns read by name.

    A step's claim and commit run often enough that SQLAlchemy's per-call work is a visible share of a
    worker's CPU; the statement, its transaction and the connection pool stay SQLAlchemy's.
    """
    sql = _DRIVER_SQL.get(statement.text)
    if sql is None:
        sql = _DRIVER_SQL[statement.text] = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", statement.text)
    driver = conn.connection.driver_connection
    try:
        return driver.cursor(row_factory=namedtuple_row).execute(sql, params).fetchone()  # type: ignore[union-attr]
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        if driver.broken or exc.sqlstate is None:  # the connection itself failed, not just the statement
            conn.invalidate()
        wrapper = exc_module.OperationalError if isinstance(exc, psycopg.OperationalError) else exc_module.InterfaceError
        raise wrapper(sql, params, exc) from exc


def seconds_from_now(seconds: float) -> Any:
    """A SQL expression for the database's clock plus `seconds` (every lease uses the database's time)."""
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
