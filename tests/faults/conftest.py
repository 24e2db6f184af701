"""The fault tests run on a PostgreSQL and a Redis of their own (tests/faults/servers.py), which they stop and
start; everything else (stand-ins, workers, beat, the API) is the suite's own fixtures on those servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.servers import Services
from tests.faults.servers import Postgres, Redis


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    server = Redis().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def servers(postgres: Postgres, redis_server: Redis) -> Services:
    """Overrides the suite's: the stack below runs on the servers these tests may break."""
    return Services(database_url=postgres.url, broker_url=redis_server.url)
