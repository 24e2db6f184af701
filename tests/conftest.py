"""One private database and Redis DB per test session, with real worker and beat processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from saga.processes import ROOT
from saga.settings import get_settings
from saga.testing import Stack
from standins import StandIns, start_standins

SETTINGS = {
    "SAGA_PICKUP_TIMEOUT": "4",
    "SAGA_RECOVERY_INTERVAL": "0.5",
    "SAGA_LEASE_MARGIN": "1",
    "SAGA_VISIBILITY_TIMEOUT": "600",
}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack(data_dir=ROOT / ".saga" / "test", modules="tasks.demo,tasks.job_posting,tests.sagas",
              settings=SETTINGS).start()
    from saga import db
    from tests.sagas import PROBE_TABLES
    from workers.app import load_modules

    load_modules()
    with db.transaction() as conn:
        conn.execute(text(PROBE_TABLES))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def standins(stack: Stack) -> Iterator[StandIns]:
    """S3 (moto), Stripe and SMTP stand-ins; workers started after this point are pointed at them."""
    running = start_standins(stack.data_dir / "standins")
    stack.env.update(running.env)
    os.environ.update(running.env)
    get_settings.cache_clear()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def workers(stack: Stack, standins: StandIns) -> Stack:
    """A live worker (restarted if a crash test killed it) and beat running recovery."""
    alive = [p for p in stack.processes if p.popen.poll() is None]
    stack.processes[:] = alive
    names = {p.name for p in alive}
    if not any(n.startswith("w") for n in names):
        stack.worker("w1", concurrency=2, queues=("probe", "celery"))
    if "beat" not in names:
        stack.beat()
    return stack


def pytest_configure(config: pytest.Config) -> None:
    Path(ROOT / ".saga" / "test").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[object]:
    """A real `saga api` process on this session's database and broker."""
    from tests.test_api import serve

    server = serve(stack)
    try:
        yield server
    finally:
        server.close()
