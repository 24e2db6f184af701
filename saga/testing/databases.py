"""Throwaway PostgreSQL databases for a test session, by name on a server you already run."""

from __future__ import annotations

import contextlib

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def with_database(url: str, name: str) -> str:
    """The same server URL (user, password, host, options kept) naming database ``name`` instead."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a libpq URI."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(server_url: str, name: str) -> None:
    """Create database ``name`` on the server of ``server_url``, unless it exists already.

    Connects to the database named in ``server_url`` (e.g. the ``postgres`` maintenance database).
    """
    with psycopg.connect(libpq_url(server_url), autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # created meanwhile by someone else
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, terminating its other connections first (``WITH (FORCE)``).

    Connects to the database named in ``server_url``, which must not be ``name``.
    """
    with psycopg.connect(libpq_url(server_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
