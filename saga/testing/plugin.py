"""A pytest plugin for crash-testing your saga types: `pytest_plugins = ["saga.testing.plugin"]` in a conftest.

Options (command line, or the same names with underscores in the ini file):

    --saga-app           what `celery -A` gets to load your Celery app (the module that calls `Sagas(app)`)
    --saga-database-url  a PostgreSQL server the session may create a database on
                         (default $SAGA_TEST_DATABASE_URL, else postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
    --saga-broker-url    a Redis server; the session claims an empty database number on it
                         (default $SAGA_TEST_BROKER_URL, else redis://127.0.0.1:6379)

Fixtures:

    saga_stack    (session) a `Stack`: a private, migrated ledger database and Redis DB, and beat running
                  recovery; workers and beat find them through SAGA_DATABASE_URL and CELERY_BROKER_URL, so
                  let `Sagas(app)` take its database from the environment
    saga_crashes  a `CrashTester` on that stack: `run(saga_type, input, point)` crashes its worker once at
                  `point` (see `crash_points`) and returns the ended saga and how often each body ran; other
                  workers of the stack are stopped while it runs (start them again after, if you need them)

Recovery runs fast in the stack (every 0.5 s, a step left waiting 4 s is dispatched again); after a crash, a
step that is not transactional runs again once its lease ends: its time limit plus 7 seconds, so give saga
types short time limits in crash tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga.testing.crashes import CrashTester
from saga.testing.stack import Stack

FAST_RECOVERY = {"SAGA_PICKUP_TIMEOUT": "4", "SAGA_RECOVERY_INTERVAL": "0.5", "SAGA_LEASE_MARGIN": "1"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("saga", "crash tests of saga types")
    for name, help_ in (("app", "celery -A target of the Celery app that holds your saga types"),
                        ("database-url", "PostgreSQL server to create the test ledger on"),
                        ("broker-url", "Redis server to claim an empty database on")):
        group.addoption(f"--saga-{name}", default=None, help=help_)
        parser.addini(f"saga_{name.replace('-', '_')}", help_)


def _option(config: pytest.Config, name: str, env: str | None = None, default: str | None = None) -> str | None:
    return (config.getoption(f"--saga-{name}") or config.getini(f"saga_{name.replace('-', '_')}")
            or (os.environ.get(env) if env else None) or default)


@pytest.fixture(scope="session")
def saga_stack(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app = _option(pytestconfig, "app")
    if not app:
        raise pytest.UsageError("saga.testing: set --saga-app (or saga_app in the ini file) to your Celery app")
    stack = Stack(
        data_dir=Path(tmp_path_factory.mktemp("saga")), app=app,
        database_server_url=_option(pytestconfig, "database-url", "SAGA_TEST_DATABASE_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),  # type: ignore[arg-type]
        broker_url=_option(pytestconfig, "broker-url", "SAGA_TEST_BROKER_URL", "redis://127.0.0.1:6379"),  # type: ignore[arg-type]
        settings=dict(FAST_RECOVERY), cwd=Path.cwd(),
    ).start()
    try:
        stack.beat()
        yield stack
    finally:
        stack.stop()


@pytest.fixture()
def saga_crashes(saga_stack: Stack) -> Iterator[CrashTester]:
    """Stops the stack's other workers while it runs; stops its own after the test."""
    tester = CrashTester(saga_stack)
    try:
        yield tester
    finally:
        tester.close()
