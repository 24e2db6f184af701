"""One private database and Redis DB per test session, with real worker and beat processes of the service."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from devstack.servers import Services, start_services
from devstack.service_stack import ServiceStack
from saga.testing import Stack
from standins import StandIns, start_standins
from tests.receivers import Receiver

# The crash-test kit's fixtures (saga_crashes), on this session's stack (saga_stack below).
pytest_plugins = ["saga.testing.plugin"]
ROOT = Path(__file__).resolve().parent.parent
# This session's files (logs, stand-ins' data, embedded servers): one directory per pytest-xdist process.
TEST_DIR = ROOT / ".saga" / "-".join(filter(None, ("test", os.environ.get("PYTEST_XDIST_WORKER"))))

SETTINGS = {
    "SAGA_PICKUP_TIMEOUT": "4",
    "SAGA_RECOVERY_INTERVAL": "0.5",
    "SAGA_LEASE_MARGIN": "1",
    "SAGA_VISIBILITY_TIMEOUT": "600",
    # A declined card waits this long for another one (1800 in production): long enough for a test to send one.
    "SAGA_PAYMENT_RETRY_SECONDS": "8",
    # Webhooks to the tests' receivers on this machine, retried and dispatched quickly.
    "SAGA_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
    "SAGA_WEBHOOK_RETRY_BASE": "0.3",
    "SAGA_WEBHOOK_RETRY_MAX": "1",
    "SAGA_WEBHOOK_DISPATCH_INTERVAL": "0.2",
    "SAGA_WEBHOOK_TIMEOUT": "2",
    # The tests of retries count every attempt a third party's failures cost, so the shared workers' breakers
    # never open; the breaker tests start workers of their own with settings a deployment would use.
    "SAGA_BREAKERS": json.dumps({name: {"failures": 1_000_000} for name in ("s3", "stripe", "smtp")}),
}


@pytest.fixture(scope="session")
def servers() -> Iterator[Services]:
    """PostgreSQL and Redis: local ones if they answer, else embedded ones (devstack.servers)."""
    found = start_services(TEST_DIR / "services")
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="session")
def broker_url(servers: Services) -> Iterator[str]:
    """Redis (a DB number of its own), or with SAGA_TEST_BROKER=rabbitmq a RabbitMQ vhost of its own."""
    if os.environ.get("SAGA_TEST_BROKER", "redis") != "rabbitmq":
        yield servers.broker_url
        return
    vhost = f"saga_test_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def standins() -> Iterator[StandIns]:
    """S3 (moto), Stripe and SMTP stand-ins; every process of the stack is pointed at them (the service refuses
    to start without its third parties' settings)."""
    running = start_standins(TEST_DIR / "standins")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def stack(servers: Services, broker_url: str, standins: StandIns) -> Iterator[Stack]:
    s = ServiceStack(data_dir=TEST_DIR, database_server_url=servers.database_url,
                     broker_url=broker_url, queues=("probe", "celery"),
                     settings={"SAGA_MODULES": "tasks.demo,tasks.job_posting,tests.sagas", **SETTINGS, **standins.env},
                     cwd=ROOT).start()
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


@pytest.fixture(autouse=True)
def breakers_closed(request: pytest.FixtureRequest) -> None:
    """Each test that runs sagas starts with every circuit breaker closed and no failure counted."""
    if "stack" not in request.fixturenames:
        return
    request.getfixturevalue("stack")
    from saga import db

    with db.transaction() as conn:
        conn.execute(text("DELETE FROM saga_breakers"))


@pytest.fixture()
def fresh() -> Iterator[None]:
    """Forget the saga types (and their tasks) a test declares."""
    from saga.actions import TASKS
    from saga.definitions import REGISTRY

    names, tasks = set(REGISTRY), set(TASKS)
    yield
    for name in set(REGISTRY) - names:
        del REGISTRY[name]
    from workers.app import app

    for name in set(TASKS) - tasks:
        del TASKS[name]
        app.tasks.pop(name, None)  # so the next declaration of it registers its own task


@pytest.fixture()
def workers(stack: Stack, standins: StandIns) -> Stack:
    """A live worker (restarted if a crash test killed it) and beat running recovery."""
    alive = [p for p in stack.processes if p.popen.poll() is None]
    stack.processes[:] = alive
    if not stack.workers():
        stack.worker("w1", concurrency=2)
    if "beat" not in {p.name for p in alive}:
        stack.beat()
    return stack


def pytest_configure(config: pytest.Config) -> None:
    TEST_DIR.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[object]:
    """A real `python -m service api` process on this session's database and broker."""
    from tests.test_api import serve

    server = serve(stack)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def saga_stack(stack: Stack, standins: StandIns) -> Stack:
    """The kit's crash tests run on this session's stack, with the stand-ins."""
    return stack


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 that webhooks are delivered to: it answers 200 unless told otherwise."""
    running = Receiver().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def deliverers(workers: Stack) -> Stack:
    """The step workers and beat (whose dispatcher sends the delivering tasks), and a worker of the webhooks queue."""
    if "webhooks" not in {p.name for p in workers.workers()}:
        workers.worker("webhooks", concurrency=2, queues=["webhooks"])
    return workers
