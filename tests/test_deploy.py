"""What the fleet runs: docker-compose.yml checked by a real Compose implementation (there is no Docker engine
here, so no container starts), its worker health check and its Redis command and health check run for real, its
database role's init script run on the local PostgreSQL, and the wheel the Dockerfile builds."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from psycopg import sql
from sqlalchemy import RowMapping, TextClause, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from devstack.servers import Services
from saga.testing import Stack, create_database, drop_database, wait_until, with_database
from saga.testing.databases import libpq_url
from standins import free_port
from tests.conftest import ROOT
from tests.test_import_graph import graph
from workers.settings import ServiceSettings

SECRETS = {"POSTGRES_PASSWORD": "s3cret-pw", "SAGA_DB_PASSWORD": "saga-db-pw", "REDIS_PASSWORD": "redis-pw",
           "FLOWER_BASIC_AUTH": "ops:flower-pw", "STRIPE_API_KEY": "sk_live_x", "SAGA_S3_BUCKET": "logos",
           "SAGA_SMTP_HOST": "smtp.example.com", "SAGA_SMTP_PORT": "587", "SAGA_MAIL_FROM": "jobs@example.com"}
APP_SERVICES = {"migrate", "api", "worker", "webhooks", "beat", "flower"}
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "10-saga-role.sh"


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose` where the plugin exists, else Debian's `docker-compose` (apt-get install docker-compose)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        argv = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        argv = ["docker-compose"]
    else:
        pytest.fail("no Compose implementation: apt-get install docker-compose (.ci/run does)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([*argv, "-f", str(ROOT / "docker-compose.yml"), *args], capture_output=True, text=True, check=False,
                          env={**clean, **env}, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    done = compose("config", env=SECRETS)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_of_its_secrets(missing: str) -> None:
    done = compose("config", env={k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0 and missing in done.stderr, done.stderr


def test_compose_runs_the_whole_stack_with_health_checks(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    for name, service in services.items():
        if name == "migrate":
            assert service.get("restart") == "no" and "healthcheck" not in service
            continue
        assert service.get("restart") == "unless-stopped", name
        assert service["healthcheck"]["test"], f"{name} has no health check"
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
        env = services[name]["environment"]
        assert env["SAGA_LOG_FORMAT"] == "json", name
        assert services[name]["image"] == "celery-sagas" and services[name]["build"]["context"] == str(ROOT)
        if name == "flower":
            continue  # the broker alone (test_flower_gets_the_broker_alone_and_none_of_the_apps_secrets)
        assert env["SAGA_DATABASE_URL"].startswith(f"postgresql+psycopg://saga:{SECRETS['SAGA_DB_PASSWORD']}@postgres:")
        third_parties = {k: v for k, v in SECRETS.items()
                         if k not in ("POSTGRES_PASSWORD", "SAGA_DB_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")}
        assert {k: env.get(k) for k in third_parties} == third_parties, name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert "noeviction" in services["redis"]["command"] and "--appendonly" in services["redis"]["command"]


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, from either Compose's long or short syntax."""
    published = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            *host, _container = str(port).split("/")[0].rsplit(":", 2)
            published.append((host[0] if len(host) == 2 else "", host[-1] if host else ""))
    return published


def test_only_the_api_and_flower_are_published_and_on_this_hosts_loopback_only(config: dict[str, Any]) -> None:
    published = {name: _published(service) for name, service in config["services"].items() if _published(service)}
    assert published == {"api": [("127.0.0.1", "8000")], "flower": [("127.0.0.1", "5555")]}


def test_the_app_connects_to_postgresql_as_the_services_own_role_not_the_superuser(config: dict[str, Any]) -> None:
    services = config["services"]
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    for name in APP_SERVICES - {"flower"}:  # Flower needs no database (below)
        url = make_url(services[name]["environment"]["SAGA_DATABASE_URL"])
        assert (url.username, url.password, url.host, url.database) == (
            "saga", SECRETS["SAGA_DB_PASSWORD"], "postgres", "saga"), name
        assert url.username != superuser and url.password != SECRETS["POSTGRES_PASSWORD"], name
    # The init script that makes the role runs in the postgres container, with the role's password.
    postgres = services["postgres"]
    assert postgres["environment"]["SAGA_DB_PASSWORD"] == SECRETS["SAGA_DB_PASSWORD"]
    assert "POSTGRES_DB" not in postgres["environment"], "the superuser's database would be the service's"
    mounts = [_mount(v) for v in postgres["volumes"]]
    assert (str(INIT_SCRIPT.parent), "/docker-entrypoint-initdb.d") in mounts, mounts
    assert os.access(INIT_SCRIPT, os.X_OK), "the postgres image runs an init script that is not executable in its shell"
    # Healthy only once the init scripts ran: the server they run on listens on no TCP port.
    assert postgres["healthcheck"]["test"] == ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "saga", "-d", "saga"]


def _mount(volume: str | dict[str, Any]) -> tuple[str, str]:
    if isinstance(volume, dict):
        return str(volume["source"]), str(volume["target"])
    source, target, *_ = volume.split(":")
    return source, target


def test_flower_gets_the_broker_alone_and_none_of_the_apps_secrets(config: dict[str, Any]) -> None:
    """Flower shows operators the tasks and needs the broker only: no database URL, no Stripe key, no cloud or mail
    credentials in a process whose pages sit on the network. It serves with that environment alone."""
    flower = config["services"]["flower"]["environment"]
    assert set(flower) == {"SAGA_BROKER_URL", "SAGA_MODULES", "SAGA_LOG_FORMAT", "FLOWER_BASIC_AUTH"}, flower
    assert not {str(v) for v in flower.values()} & {v for k, v in SECRETS.items() if k != "FLOWER_BASIC_AUTH"}


def test_redis_requires_its_password_from_every_client(config: dict[str, Any]) -> None:
    services = config["services"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    for name in APP_SERVICES:
        url = urlsplit(services[name]["environment"]["SAGA_BROKER_URL"])
        assert (url.scheme, url.hostname, url.password) == ("redis", "redis", SECRETS["REDIS_PASSWORD"]), name
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]


def test_the_redis_health_check_passes_only_when_logged_in(config: dict[str, Any], tmp_path: Path) -> None:
    """Compose's Redis command on a real redis-server: it refuses a client without the password, and its health
    check passes with Compose's REDISCLI_AUTH and fails with a wrong one (redis-cli exits 0 on NOAUTH)."""
    redis = config["services"]["redis"]
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.fail("redis-server and redis-cli are needed: apt-get install redis-server")
    port = free_port()
    server = subprocess.Popen(["redis-server", *redis["command"][1:], "--appendonly", "no", "--save", "",
                               "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10,
                                  check=False, env={**os.environ, **(env or {})})

        answer = wait_until(lambda: cli("ping").stdout.strip(), timeout=20, what="redis-server to answer")
        assert answer.startswith("NOAUTH"), f"a client without the password is answered {answer!r}"
        test = redis["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        check = test[1].replace("$$", "$").replace("redis-cli", f"redis-cli -p {port}")

        def health(password: str) -> int:
            return subprocess.run(["sh", "-c", check], env={**os.environ, "REDISCLI_AUTH": password},
                                  capture_output=True, timeout=10, check=False).returncode

        assert health(redis["environment"]["REDISCLI_AUTH"]) == 0
        assert health("wrong") != 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_compose_loads_the_job_boards_saga_types_only(config: dict[str, Any]) -> None:
    """The default SAGA_MODULES loads the demo, whose steps sleep up to 30 s on anyone's say: Compose names its
    modules, and a process with its environment declares the job posting alone."""
    assert "tasks.demo" in ServiceSettings.model_fields["modules"].default  # why Compose has to say
    envs = {name: config["services"][name]["environment"] for name in APP_SERVICES}
    assert {name: env.get("SAGA_MODULES") for name, env in envs.items()} == dict.fromkeys(APP_SERVICES, "tasks.job_posting")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    loaded = subprocess.run(
        [sys.executable, "-c", ("from workers.app import load_modules; from saga.definitions import REGISTRY; "
                                "load_modules(); print(' '.join(sorted({n for n, _ in REGISTRY})))")],
        env={**clean, **{k: str(v) for k, v in envs["worker"].items()}}, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["job_posting"]


def test_compose_sends_mail_over_starttls_unless_told_otherwise(config: dict[str, Any]) -> None:
    env = config["services"]["worker"]["environment"]
    assert env["SAGA_SMTP_STARTTLS"] == "true"
    assert {env[k] for k in ("SAGA_SMTP_USERNAME", "SAGA_SMTP_PASSWORD", "SAGA_SMTP_CA_FILE")} == {""}  # unset
    told = compose("config", env={**SECRETS, "SAGA_SMTP_STARTTLS": "false", "SAGA_SMTP_USERNAME": "ops"})
    assert told.returncode == 0, told.stderr
    worker = yaml.safe_load(told.stdout)["services"]["worker"]["environment"]
    assert (worker["SAGA_SMTP_STARTTLS"], worker["SAGA_SMTP_USERNAME"]) == ("false", "ops")


# The init script on the real local PostgreSQL, as the postgres image runs it (psql as the superuser), with a role
# and a database of the test's own; then `python -m service migrate` as that role, as Compose's migrate runs it.

@dataclass
class RoleDatabase:
    role: str
    password: str
    superuser_url: str  # of the role's database, as the superuser

    def init_script(self, servers: Services) -> subprocess.CompletedProcess[str]:
        server = make_url(servers.database_url)
        env = {**os.environ, "PGHOST": server.host or "127.0.0.1", "PGPORT": str(server.port or 5432),
               "PGPASSWORD": server.password or "", "POSTGRES_USER": server.username or "postgres",
               "SAGA_DB_USER": self.role, "SAGA_DB_NAME": self.role, "SAGA_DB_PASSWORD": self.password}
        return subprocess.run([str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)

    def migrate(self, servers: Services, user: str, password: str | None) -> subprocess.CompletedProcess[str]:
        url = make_url(self.superuser_url).set(username=user, password=password)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}, **SECRETS,
               "SAGA_DATABASE_URL": url.render_as_string(hide_password=False), "SAGA_MODULES": "tasks.job_posting"}
        return subprocess.run([sys.executable, "-m", "service", "migrate"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)

    def owners(self) -> dict[str, str]:
        """The owner of each table, sequence and view in the role's database."""
        return {row["relname"]: row["owner"] for row in self._query(OWNERS)}

    def role_facts(self) -> dict[str, Any]:
        """What the role may do, and whether it owns the database."""
        [row] = self._query(ROLE_FACTS, role=self.role)
        return dict(row)

    def _query(self, statement: TextClause, **params: str) -> list[RowMapping]:
        """The rows of `statement`, run as the superuser in the role's database."""
        engine = create_engine(self.superuser_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(statement, params).mappings())
        finally:
            engine.dispose()


# What the role may do, and whether it has a password (the local server trusts 127.0.0.1, so a login proves none).
ROLE_FACTS = text("""
    SELECT r.rolsuper AS superuser, r.rolcreaterole AS createrole, r.rolcreatedb AS createdb,
           r.rolpassword IS NOT NULL AS has_password, d.datdba = r.oid AS owns_database,
           has_database_privilege('public', d.oid, 'CONNECT') AS anyone_may_connect
      FROM pg_authid r, pg_database d
     WHERE r.rolname = :role AND d.datname = current_database()""")
# The owner of every table, sequence and view in the public schema: all must be the service's role.
OWNERS = text("""
    SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')""")


@pytest.fixture()
def role_database(servers: Services) -> Iterator[RoleDatabase]:
    name = f"saga_role_{uuid.uuid4().hex[:10]}"
    made = RoleDatabase(name, f"pw-{uuid.uuid4().hex}", with_database(servers.database_url, name))
    try:
        yield made
    finally:
        drop_database(servers.database_url, name)
        with psycopg.connect(libpq_url(servers.database_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _service_tables(owners: dict[str, str]) -> set[str]:
    return {"sagas", "saga_steps", "api_keys", "saga_alembic_version", "service_alembic_version"} & set(owners)


def test_the_init_script_makes_a_role_that_owns_its_database_and_the_tables_migrate_creates(
        servers: Services, role_database: RoleDatabase) -> None:
    made = role_database.init_script(servers)
    assert made.returncode == 0, made.stderr
    migrated = role_database.migrate(servers, role_database.role, role_database.password)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert role_database.role_facts() == {"superuser": False, "createrole": False, "createdb": False,
                                          "has_password": True, "owns_database": True, "anyone_may_connect": False}
    owners = role_database.owners()
    assert len(_service_tables(owners)) == 5 and len(owners) > 5, owners
    assert set(owners.values()) == {role_database.role}, owners
    again = role_database.init_script(servers)  # idempotent: a second run changes nothing but the password
    assert again.returncode == 0, again.stderr


def test_the_init_script_hands_a_database_the_superuser_made_to_the_role(
        servers: Services, role_database: RoleDatabase) -> None:
    """A data directory from before the role existed: the superuser's database and tables become the role's."""
    superuser = make_url(servers.database_url)
    create_database(servers.database_url, role_database.role)
    before = role_database.migrate(servers, superuser.username or "postgres", superuser.password)
    assert before.returncode == 0, before.stdout + before.stderr
    assert set(role_database.owners().values()) == {superuser.username}
    made = role_database.init_script(servers)
    assert made.returncode == 0, made.stderr
    facts = role_database.role_facts()
    assert facts["owns_database"] and not facts["superuser"] and not facts["anyone_may_connect"], facts
    assert set(role_database.owners().values()) == {role_database.role}, role_database.owners()
    migrated = role_database.migrate(servers, role_database.role, role_database.password)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr


def test_the_init_script_refuses_to_run_without_the_roles_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAGA_DB_PASSWORD"}
    done = subprocess.run([str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "set SAGA_DB_PASSWORD" in done.stderr, done.stderr


def test_the_worker_scales_out(config: dict[str, Any]) -> None:
    """`--scale worker=4` needs a service with no container name, host port or fixed hostname; each replica
    names itself after its container and keeps its metrics files to itself."""
    worker = config["services"]["worker"]
    assert not {"container_name", "ports", "hostname"} & set(worker), worker
    assert "worker@%h" in worker["command"]
    assert worker["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")  # inside its own container
    assert worker["environment"]["SAGA_METRICS_PORT"] == "9100"
    assert worker["stop_grace_period"]


def test_the_worker_health_check_passes_for_a_live_worker_and_fails_for_a_missing_one(
        config: dict[str, Any], workers: Stack) -> None:
    test = config["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("$$", "$")  # Compose's escape for a literal `$`, undone when it runs the check
    host = socket.gethostname()
    workers.worker("worker", concurrency=1)  # as the compose command names it: worker@<its hostname>
    try:
        env = {**os.environ, **workers.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        alive = subprocess.run(["sh", "-c", command], env={**env, "HOSTNAME": host}, capture_output=True,
                               text=True, check=False, cwd=ROOT, timeout=60)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        quick = command.replace("--timeout 10", "--timeout 2")  # nobody will answer: do not wait the full 10 s
        missing = subprocess.run(["sh", "-c", quick], env={**env, "HOSTNAME": "no-such-host"},
                                 capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)
        assert missing.returncode != 0, missing.stdout
    finally:
        workers.stop_workers(keep=[p.name for p in workers.workers() if p.name != "worker"])


def _stage(name: str | None) -> list[str]:
    """The lines of the Dockerfile's build stage (`AS name`), or of its last stage (None)."""
    stages = (ROOT / "Dockerfile").read_text().split("\nFROM ")
    if name is None:
        return stages[-1].splitlines()
    [stage] = [s for s in stages if s.splitlines()[0].endswith(f" AS {name}")]
    return stage.splitlines()


def _copied(lines: list[str], into: Path) -> None:
    """Lay out in `into` what the stage's COPY lines (from the build context) copy into its working directory."""
    for line in lines:
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        *sources, dest = shlex.split(line)[1:]
        for source in sources:
            target = into / (Path(source).name if dest == "./" else dest)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)


def services_import() -> set[str]:
    """Every module of ours the service's command (all its subcommands but `dev`, which runs the local stack), the
    worker, beat and API load: the entry points, the saga types of the default SAGA_MODULES, and what they
    import, lazily or not."""
    edges = graph()
    todo = ["service", "celeryconfig", "workers.app", "api.app", *ServiceSettings.model_fields["modules"].default.split(",")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen and name.split(".")[0] != "devstack":
            seen.add(name)
            todo.extend(edges[name])
    return seen


def test_the_image_holds_the_library_wheel_and_every_service_module_the_services_import(tmp_path: Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    _copied(_stage("build"), context)
    assert "RUN pip wheel --no-deps --wheel-dir /wheels ." in _stage("build")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                           capture_output=True, text=True, check=False, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "wheels").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"saga"}
    data = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("saga/migrations/**/*")
            if p.is_file() and "__pycache__" not in p.parts]
    assert data and not [p for p in data if p not in names], "the ledger's migrations are missing from the wheel"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "saga = saga.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    final = _stage(None)
    assert any("--group service" in line and "/wheels/" in line for line in final), "the service's dependencies"
    assert any("PYTHONPATH=/app" in line for line in final), "the service runs from /app"
    app = tmp_path / "app"
    app.mkdir()
    _copied(final, app)
    needed = services_import()
    assert {"service", "api.app", "tasks.job_posting", "migrations"} <= needed
    assert not {n for n in needed if n.split(".")[0] in ("tests", "bench", "standins")}, "a service imports test code"
    missing = sorted(n for n in needed if n.split(".")[0] != "saga" and not (app / f"{n.replace('.', '/')}.py").exists()
                     and not (app / n.replace(".", "/") / "__init__.py").exists())
    assert not missing, f"modules the services import but the image lacks: {missing}"
    console = [p.relative_to(ROOT) for p in ROOT.glob("api/console/**/*") if p.is_file()]
    assert console and all((app / p).exists() for p in console), "the console's files are missing from the image"
    migrations = [p.relative_to(ROOT) for p in ROOT.glob("migrations/**/*.py")]
    assert migrations and all((app / p).exists() for p in migrations)
