"""The library as a Celery shop meets it: its wheel holds the engine alone and installs without the service's
stack; a Celery project of its own (`examples/shop`: `shop/celery.py`, `shop/tasks.py`, its own Alembic history)
runs on it through a real worker and beat in a fresh virtualenv, one order completing and one compensating, operated
with the library's `saga -A shop` command; its own crash tests pass there; and the service's HTTP API, pointed at
it, serves its saga type without the job board. README's "Add sagas to your Celery app" runs these commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from devstack.api_process import spawn as spawn_api
from devstack.servers import Services
from saga.callers import this_user
from saga.testing import (
    Process,
    claim_redis_db,
    create_database,
    drop_database,
    wait_until,
    with_database,
    with_redis_db,
)
from saga.testing.databases import libpq_url
from tests.conftest import ROOT, TEST_DIR
from tests.test_api import free_port

# What a shop that installs the engine must not get: the service's web stack, payment and storage SDKs, stand-ins.
NOT_IN_THE_CORE = {"fastapi", "uvicorn", "flower", "stripe", "boto3", "moto", "starlette", "aiosmtpd"}


@dataclass
class Shop:
    """The shop's project copied out of this repository, a fresh virtualenv with the library's wheel, and the
    database and Redis DB it runs on."""

    dir: Path
    venv: Path
    env: dict[str, str]
    database_url: str

    def run(self, *argv: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A command as the shop's engineer types it in the project's directory, the virtualenv first on PATH."""
        done = subprocess.run(argv, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check:
            assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done

    def query(self, sql: str) -> list[tuple]:
        with psycopg.connect(libpq_url(self.database_url)) as conn:
            return conn.execute(sql).fetchall()


def build_wheel(out: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    [wheel] = out.glob("celery_sagas-*.whl")
    return wheel


@pytest.fixture(scope="module")
def shop(servers: Services) -> Iterator[Shop]:
    work = TEST_DIR / "library-install"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wheel = build_wheel(work / "wheels")
    names = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    assert names == {"saga"}, f"the wheel installs top-level names besides saga: {sorted(names - {'saga'})}"

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    project = work / "shop"
    shutil.copytree(ROOT / "examples" / "shop", project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    database = f"shop_{uuid.uuid4().hex[:10]}"
    create_database(servers.database_url, database)
    redis_db = claim_redis_db(servers.broker_url)
    database_url = with_database(servers.database_url, database)
    broker = with_redis_db(servers.broker_url, redis_db)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "CELERY_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "SAGA_DATABASE_URL": database_url,
            "SHOP_BROKER_URL": broker, "PYTHONUNBUFFERED": "1"}
    try:
        _install(venv, wheel, "redis")
        yield Shop(project, venv, env, database_url)
    finally:
        drop_database(servers.database_url, database)
        redis.Redis.from_url(broker).flushdb()


def _install(venv: Path, wheel: Path, extras: str) -> None:
    """`pip install 'celery-sagas[extras]'`, from the wheel built here."""
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[{extras}]"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_core_install_is_the_engine_and_what_it_needs(shop: Shop) -> None:
    listed = shop.run("python", "-m", "pip", "list", "--format=json").stdout
    installed = {d["name"].lower() for d in json.loads(listed)}
    print(f"core install with the redis extra: {len(installed)} distributions")
    assert {"celery-sagas", "celery", "sqlalchemy", "alembic", "redis"} <= installed
    assert not NOT_IN_THE_CORE & installed, f"the core install brings {sorted(NOT_IN_THE_CORE & installed)}"
    found = shop.run("python", "-c", "import importlib.util as u; print([m for m in ('api', 'tasks', 'workers', "
                     "'celeryconfig', 'cli', 'service', 'standins', 'devstack') if u.find_spec(m)])", ).stdout
    assert found.strip() == "[]", f"the library installs modules of the service: {found}"


def test_a_shop_runs_sagas_on_the_library_from_its_wheel_and_operates_them_with_saga_dash_a(shop: Shop) -> None:
    # The README's commands, in its order.
    shop.run("alembic", "upgrade", "head")
    assert "ledger is up to date" in shop.run("saga", "-A", "shop", "migrate").stdout
    assert shop.query("SELECT version_num FROM alembic_version") == [("c3d4e5f6a7b8",)], "the shop's history moved"
    tables = {r[0] for r in shop.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert not {"api_keys", "job_postings"} & tables and {"sagas", "shop_stock"} <= tables

    logs = shop.dir / "logs"
    worker = Process.spawn("worker", ["celery", "-A", "shop", "worker", "--loglevel=INFO", "--concurrency=2"],
                           shop.env, logs, cwd=shop.dir)
    beat = Process.spawn("beat", ["celery", "-A", "shop", "beat", "--loglevel=INFO",
                                  f"--schedule={logs / 'beat-schedule'}"], shop.env, logs, cwd=shop.dir)
    try:
        wait_until(lambda: " ready." in worker.log_text() or not worker.alive(), timeout=60, what="the shop's worker")
        assert worker.alive(), worker.log_text()[-3000:]
        done = shop.run("python", "-m", "shop.orders", "A1", "2", "DE").stdout.split()
        refused = shop.run("python", "-m", "shop.orders", "A1", "2", "US").stdout.split()
        assert done[1] == "completed" and refused[1] == "compensated", (done, refused)
        assert shop.query("SELECT available FROM shop_stock WHERE sku = 'A1'") == [(98,)]
        assert shop.query("SELECT saga_id::text, country FROM shop_shipments") == [(done[0], "DE")]

        listed = shop.run("saga", "-A", "shop", "list").stdout
        assert re.search(rf"^{refused[0]}\s+order\s+compensated", listed, re.MULTILINE), listed
        assert re.search(rf"^{done[0]}\s+order\s+completed\s+2/2", listed, re.MULTILINE), listed
        status = shop.run("saga", "-A", "shop", "status", refused[0]).stdout
        assert "status=compensated" in status and "we do not ship to US" in status
        events = [e["kind"] for e in json.loads(shop.run("saga", "-A", "shop", "events", refused[0], "--json").stdout)]
        assert events[0] == "saga_accepted" and events[-1] == "saga_compensated" and "step_compensated" in events
        cancel = shop.run("saga", "-A", "shop", "cancel", done[0], check=False)
        assert cancel.returncode == 2 and "action_not_allowed" in cancel.stderr, cancel.stderr

        again = shop.run("saga", "-A", "shop", "restart", refused[0], "--input", '{"country": "FR"}', "--wait").stdout
        assert "status=completed" in again, again
        log = json.loads(shop.run("saga", "-A", "shop", "events", refused[0], "--json").stdout)
        assert [e["detail"]["by"] for e in log if e["kind"] == "saga_restarted"] == [this_user()], "who restarted it"
        assert shop.query("SELECT available FROM shop_stock WHERE sku = 'A1'") == [(96,)]
        assert sorted(c for _, c in shop.query("SELECT saga_id, country FROM shop_shipments")) == ["DE", "FR"]
        assert beat.alive() and "beat: Starting..." in beat.log_text(), beat.log_text()[-3000:]
    finally:
        worker.stop()
        beat.stop()


def test_the_shops_own_crash_tests_pass_on_the_installed_kit(shop: Shop, servers: Services) -> None:
    _install(shop.venv, next((shop.venv.parent / "wheels").glob("*.whl")), "redis,testing")
    done = shop.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--saga-database-url={servers.database_url}",
                    f"--saga-broker-url={servers.broker_url}", check=False, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(summary)
    # Two end-to-end orders, one refused input, four forward crash points and two while undoing.
    assert done.returncode == 0 and re.fullmatch(r"9 passed in [\d.]+s( \([\d:]+\))?", summary), \
        done.stdout[-5000:] + done.stderr[-2000:]


def test_the_services_api_and_console_serve_the_shops_saga_types(shop: Shop, tmp_path: Path) -> None:
    """The service run from this repository, pointed at the shop's app and database, as its image would be."""
    env = {**shop.env, "PATH": os.environ["PATH"], "SAGA_APP": "shop", "PYTHONPATH": str(shop.dir),
           "SAGA_API_KEYS": "shop:shop-key"}
    migrated = subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    tables = {r[0] for r in shop.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "api_keys" in tables and "job_postings" not in tables, "the job board's table came with the API"

    worker = Process.spawn("api-worker", ["celery", "-A", "shop", "worker", "--loglevel=INFO", "--concurrency=1"],
                           shop.env, tmp_path, cwd=shop.dir)
    port = free_port()
    api = spawn_api("shop-api", {k: v for k, v in env.items() if k != "PATH"}, tmp_path, port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer shop-key"}, timeout=10) as client:
            started = client.post("/v1/sagas", headers={"Idempotency-Key": "order-api-1"},
                                  json={"type": "order", "input": {"sku": "A1", "quantity": 1, "country": "NL"}})
            assert started.status_code == 202, started.text
            saga_id = started.json()["id"]
            deadline = time.monotonic() + 60
            while (body := client.get(f"/v1/sagas/{saga_id}").json())["status"] not in ("completed", "compensated"):
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
            assert body["status"] == "completed" and [s["name"] for s in body["steps"]] == ["reserve", "ship"]
            refused = client.post("/v1/sagas", headers={"Idempotency-Key": "posting-1"},
                                  json={"type": "job_posting", "input": {}})
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "unknown_saga_type"
            page = client.get("/ui")
            assert page.status_code == 200 and "<title>" in page.text
        assert shop.query(f"SELECT count(*) FROM shop_shipments WHERE saga_id = '{saga_id}'") == [(1,)]
    finally:
        api.stop()
        worker.stop()
