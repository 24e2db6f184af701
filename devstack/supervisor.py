"""`python -m service dev` (what `make run` runs): the whole stack on one machine, on embedded servers by default."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import time
from pathlib import Path

from devstack import flower
from devstack.servers import BROKER_ENV, DATABASE_ENV, create_database, start_services, with_database
from saga.testing.processes import Process, die_with_parent, stop_all

log = logging.getLogger("devstack.supervisor")
ROOT = Path(__file__).resolve().parent.parent
# Seconds the stack's processes get to exit after SIGTERM before they are killed.
STOP_GRACE = 1.5


def run(data_dir: Path, workers: int = 2, demo: bool = True, api_port: int = 8000, flower_port: int = 5555) -> None:
    """Start servers, migrate, start workers and beat, optionally run the demo sagas; Ctrl-C stops it all."""
    # Killed outright, `make` (our parent) takes us down too: SIGTERM, so we stop what we started.
    die_with_parent(signal.SIGTERM)
    missing = [m for m in ("moto", "aiosmtpd") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"service dev: the S3 and SMTP stand-ins need {', '.join(missing)}: "
                         "make venv installs them")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    data_dir.mkdir(parents=True, exist_ok=True)
    use_env = bool(os.environ.get(DATABASE_ENV) and os.environ.get(BROKER_ENV))
    services = start_services(data_dir, force_embedded=not use_env)
    processes: list[Process] = []
    extras: list[Process] = []
    standins = None
    env_file = data_dir / "env"

    def shutdown(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        if use_env:
            env = {DATABASE_ENV: services.database_url, BROKER_ENV: services.broker_url}
        else:
            create_database(services.database_url, "saga")
            env = {DATABASE_ENV: with_database(services.database_url, "saga"),
                   BROKER_ENV: services.broker_url.rstrip("/") + "/0"}
        from standins import start_standins

        standins = start_standins(data_dir / "standins")
        env |= standins.env | {"SAGA_TENANT": "dev",  # the tenant of the dev API key, so CLI and API agree
                               "SAGA_FLOWER_URL": f"http://127.0.0.1:{flower_port}",
                               # Webhooks to receivers on this machine (public addresses only in production).
                               "SAGA_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
                               # Long enough to send a new card by hand (1800 in production).
                               "SAGA_PAYMENT_RETRY_SECONDS": os.environ.get("SAGA_PAYMENT_RETRY_SECONDS", "120")}
        os.environ.update(env)
        import migrations
        from saga import migrate, settings

        settings.configure(database_url=env[DATABASE_ENV])
        migrate.upgrade(env[DATABASE_ENV])
        migrations.upgrade(env[DATABASE_ENV])
        logs = data_dir / "logs"
        saga_cmd = [sys.executable, "-m", "service"]
        for n in range(1, workers + 1):
            processes.append(Process.spawn(f"worker-{n}", [*saga_cmd, "worker", "-n", f"worker{n}@%h"], env, logs,
                                           cwd=ROOT))
        # Webhook deliveries run on a queue of their own, never in a step's worker slot.
        processes.append(Process.spawn("webhooks", [*saga_cmd, "worker", "-n", "webhooks@%h", "-Q", "webhooks",
                                                    "--concurrency", "2"], env, logs, cwd=ROOT))
        processes.append(Process.spawn("beat", [*saga_cmd, "beat", "-s", str(data_dir / "beat-schedule")],
                                       env, logs, cwd=ROOT))
        from api.keys import ensure_dev_key

        api_key = ensure_dev_key(data_dir / "api-key")
        api_url = f"http://127.0.0.1:{api_port}"
        # What `saga --env-file .saga/env` (the library's operator CLI) needs to act on this stack, here or --api.
        operator = {"SAGA_APP": "workers.app", "SAGA_API_URL": api_url, "SAGA_API_KEY": api_key}
        _write_private(env_file, "".join(f"{k}={v}\n" for k, v in (env | operator).items()))
        processes.append(_api(env, logs, api_port))
        # Flower is watched by nobody: if its port is taken the rest of the stack still runs.
        flower_password = data_dir / flower.PASSWORD_FILE
        extras.append(flower.spawn(env, logs, flower_port, flower.password(flower_password), cwd=ROOT))
        _wait_ready(processes[:workers])
        if demo:
            from devstack.demo import play

            play(api_url, api_key, standins, lambda line: print(line, flush=True))
        _banner(env, logs, env_file, data_dir / "api-key", api_url, flower_port, flower_password,
                env["SAGA_PAYMENT_RETRY_SECONDS"])
        print("Running. Ctrl-C stops every process started here.", flush=True)
        while all(p.alive() for p in processes):
            time.sleep(0.5)
        dead = [p.name for p in processes if not p.alive()]
        print(f"\n{', '.join(dead)} exited; see {logs}. Stopping.", flush=True)
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
    finally:
        # All at once, so the whole stack is down within about three seconds of Ctrl-C or SIGTERM; a step cut
        # short here is a crash the ledger recovers from at the next start.
        stop_all([*processes, *extras, *(standins.processes.values() if standins else ())], grace=STOP_GRACE)
        env_file.unlink(missing_ok=True)
        services.stop()
        print("Stopped.", flush=True)


def _wait_ready(workers: list[Process], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(" ready." in p.log_text() for p in workers):
        dead = [p for p in workers if not p.alive()]
        if dead:
            raise SystemExit(f"service dev: {dead[0].name} exited:\n{dead[0].log_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"service dev: workers did not become ready in time; see {workers[0].log.parent}")
        time.sleep(0.2)


def _api(env: dict[str, str], logs: Path, port: int) -> Process:
    from devstack.api_process import spawn

    try:
        return spawn("api", env, logs, port=port)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"service dev: the API could not start on port {port} ({exc}); is it in use?") from exc


def _write_private(path: Path, content: str) -> None:
    """Write `path` readable by this user alone (mode 0600): it holds the dev key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
    path.chmod(0o600)  # a file left by an earlier run keeps its mode through O_CREAT


def _banner(env: dict[str, str], logs: Path, env_file: Path, key_file: Path, api_url: str, flower_port: int,
            flower_password: Path, wait: str) -> None:
    """Where everything runs, and how to try each flow by hand."""
    key = f"$(cat {key_file})"
    saga = f".venv/bin/saga --env-file {env_file}"
    flower_url = f"http://127.0.0.1:{flower_port}"
    print(f"""
  API        {api_url}  (docs {api_url}/docs; the dev key is in {key_file})
  console    {api_url}/ui  (paste the dev key once)
  flower     {flower_url}  (Celery's live view of workers and tasks; user {flower.USER}, the password is in \
{flower_password})
  database   {env[DATABASE_ENV]}
  broker     {env[BROKER_ENV]}
  stand-ins  S3 {env["SAGA_S3_ENDPOINT_URL"]} (bucket {env["SAGA_S3_BUCKET"]}), Stripe {env["STRIPE_API_BASE"]}, \
SMTP {env["SAGA_SMTP_HOST"]}:{env["SAGA_SMTP_PORT"]} (mail in {logs.parent / "standins" / "maildir"})
  logs       {logs}/

Try each flow by hand, in another terminal in this directory ({env_file} tells the CLI where this stack is):
  a posting that completes
    .venv/bin/python -m service submit job_posting --input @examples/job_posting.json --wait
  a declined card: the saga waits {wait} s for another one; send it, and the same PaymentIntent is charged
    .venv/bin/python -m service submit job_posting --input @examples/job_posting_declined.json
    {saga} input <id> --input '{{"payment_method": "pm_card_visa"}}' --wait
  or give up on it: everything it did is undone
    {saga} cancel <id>
  look around
    {saga} list        {saga} status <id>        {saga} events <id>
  the same over HTTP
    curl -s {api_url}/v1/sagas -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
      -H "Idempotency-Key: my-posting-1" -d "{{\\"type\\": \\"job_posting\\", \\"input\\": $(cat examples/job_posting_declined.json)}}"
    curl -s {api_url}/v1/sagas/<id> -H "Authorization: Bearer {key}"
    curl -s {api_url}/v1/sagas/<id>/input -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
      -H "Idempotency-Key: my-card-2" -d '{{"input": {{"payment_method": "pm_card_visa"}}}}'
    curl -s -X POST {api_url}/v1/sagas/<id>/cancel -H "Authorization: Bearer {key}"
  Flower's API
    curl -s -u {flower.USER}:$(cat {flower_password}) {flower_url}/api/workers
""", flush=True)
