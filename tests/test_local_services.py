"""The embedded PostgreSQL and Redis really start, answer, and stop (no mocks)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from sqlalchemy import create_engine, text

from devstack.servers import (
    create_database,
    drop_database,
    start_services,
    with_database,
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data directory the embedded PostgreSQL's unprivileged user can reach when we are root.

    (pytest's own tmp_path lives under a 0700 directory of root.)
    """
    path = Path(tempfile.mkdtemp(prefix="saga-embedded-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _gone(pid: int) -> bool:
    """The process no longer exists (an unreaped zombie counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
def test_embedded_servers_start_answer_and_stop(data_dir: Path) -> None:
    services = start_services(data_dir, force_embedded=True)
    try:
        assert services.embedded == ["postgres", "redis"]
        assert services.database_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert services.database_url.endswith("/postgres")
        assert ":5432/" not in services.database_url
        assert services.broker_url.startswith("redis://127.0.0.1:")
        assert not services.broker_url.endswith(":6379")

        engine = create_engine(services.database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
        postgres_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])

        create_database(services.database_url, "saga_probe")
        create_database(services.database_url, "saga_probe")  # already there: no error
        probe_url = with_database(services.database_url, "saga_probe")
        held = psycopg.connect(probe_url.replace("postgresql+psycopg://", "postgresql://"))
        assert held.execute("SELECT current_database()").fetchone() == ("saga_probe",)
        drop_database(services.database_url, "saga_probe")  # terminates `held` first
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        held.close()
        engine = create_engine(services.database_url)
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM pg_database WHERE datname = 'saga_probe'")
            assert conn.execute(query).scalar() == 0
        engine.dispose()

        client = redis.Redis.from_url(services.broker_url)
        assert client.ping() is True
        redis_pid = int(client.info("server")["process_id"])
        client.close()
        assert psutil.pid_exists(postgres_pid) and psutil.pid_exists(redis_pid)
    finally:
        services.stop()

    assert _gone(postgres_pid), "embedded PostgreSQL still running"
    assert _gone(redis_pid), "embedded Redis still running"
    services.stop()  # idempotent


def test_with_database_keeps_the_server() -> None:
    url = "postgresql+psycopg://user:p%40ss@db.example:5433/postgres?sslmode=require"
    assert with_database(url, "saga_test") == (
        "postgresql+psycopg://user:p%40ss@db.example:5433/saga_test?sslmode=require"
    )
