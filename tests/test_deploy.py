"""What the fleet runs: docker-compose.yml checked by a real Compose implementation (there is no Docker engine
here, so nothing starts), its worker health check run for real, and the wheel the Dockerfile builds."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga.testing import Stack
from tests.conftest import ROOT
from tests.test_import_graph import graph
from workers.settings import ServiceSettings

SECRETS = {"POSTGRES_PASSWORD": "s3cret-pw", "FLOWER_BASIC_AUTH": "ops:flower-pw", "STRIPE_API_KEY": "sk_live_x",
           "SAGA_S3_BUCKET": "logos", "SAGA_SMTP_HOST": "smtp.example.com", "SAGA_SMTP_PORT": "587",
           "SAGA_MAIL_FROM": "jobs@example.com"}
APP_SERVICES = {"migrate", "api", "worker", "beat", "flower"}


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
        assert env["SAGA_DATABASE_URL"].startswith(f"postgresql+psycopg://postgres:{SECRETS['POSTGRES_PASSWORD']}@postgres:")
        third_parties = {k: v for k, v in SECRETS.items() if k not in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")}
        assert {k: env.get(k) for k in third_parties} == third_parties, name
        assert services[name]["image"] == "celery-sagas" and services[name]["build"]["context"] == str(ROOT)
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert "noeviction" in services["redis"]["command"] and "--appendonly" in services["redis"]["command"]


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
