"""The service's command: run its processes (`python -m service dev|api|worker|beat|flower`), migrate its
database, manage API keys and submit sagas. Operators act on sagas with the library's `saga -A workers.app ...`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from saga.callers import this_user
from saga.cli import (
    Commands,
    api_client,
    api_options,
    json_input,
    read_env_file,
    start_then_show,
)

# Written by `python -m service dev` while it runs, so other commands in the same directory (this one, and
# `saga --env-file .saga/env`) find its servers, app and API.
DEV_ENV_FILE = Path(".saga") / "env"


def _boot() -> None:
    """Load the app the service serves (SAGA_APP: the job board's, `workers.app`, unless told otherwise) with
    every saga type it declares, before any command touches sagas."""
    from saga.engine import find_sagas
    from workers.settings import service_settings

    find_sagas(service_settings().app)


@click.group(cls=Commands)
@click.pass_context
def main(ctx: click.Context) -> None:
    """The saga service: HTTP API, workers, beat and Flower for the job board's saga types (and yours)."""
    if ctx.invoked_subcommand != "dev" and DEV_ENV_FILE.exists():  # `dev` writes it; one left by a killed run is stale
        read_env_file(DEV_ENV_FILE)


@main.command()
def migrate() -> None:
    """Create or upgrade the ledger's tables and the service's own (API keys; the job board's postings when its
    saga types are loaded)."""
    import migrations
    from saga import migrate as ledger
    from saga.settings import get_settings

    _boot()
    url = get_settings().database_url
    ledger.upgrade(url)
    migrations.upgrade(url, migrations.BRANCHES if "tasks.job_posting" in sys.modules else ("api",))
    click.echo("ledger and service tables are up to date")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", default=2, show_default=True, help="Pool processes.")
@click.option("--hostname", "-n", default=None, help="Worker node name (default: celery@<host>).")
@click.pass_context
def worker(ctx: click.Context, concurrency: int, hostname: str | None) -> None:
    """Run a Celery worker that executes steps (extra options go to `celery worker`)."""
    from workers.app import app
    from workers.settings import service_settings

    argv = ["worker", f"--concurrency={concurrency}", f"--loglevel={service_settings().log_level}", *ctx.args]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run Celery beat, which schedules recovery."""
    from workers.app import app
    from workers.settings import service_settings

    app.start(["beat", f"--loglevel={service_settings().log_level}", *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.pass_context
def flower(ctx: click.Context, port: int, address: str) -> None:
    """Run Flower, Celery's live monitor (FLOWER_BASIC_AUTH=user:password protects it)."""
    from workers.app import app

    app.start(["flower", f"--port={port}", f"--address={address}", *ctx.args])


@main.command()
@click.option("--workers", default=2, show_default=True, help="Worker processes to start.")
@click.option("--demo/--no-demo", default=True, show_default=True, help="Submit the demo sagas.")
@click.option("--api-port", default=8000, show_default=True)
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--data-dir", default=".saga", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Embedded servers' data, stand-ins' records, logs, the dev key and the env file.")
def dev(workers: int, demo: bool, api_port: int, flower_port: int, data_dir: Path) -> None:
    """Start the whole stack locally and play the demo (what `make run` does); Ctrl-C or SIGTERM stops it all
    within seconds."""
    from devstack.supervisor import run

    run(data_dir, workers=workers, demo=demo, api_port=api_port, flower_port=flower_port)


@main.command(name="api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, help="Server processes (each with its own metrics).")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
def api_(host: str, port: int, workers: int, access_log: bool) -> None:
    """Run the HTTP API (FastAPI on uvicorn; OpenAPI at /openapi.json, docs at /docs)."""
    from api.server import serve
    from workers.settings import service_settings

    serve(host, port, workers=workers, access_log=access_log, log_level=service_settings().log_level)


@main.group()
def keys() -> None:
    """Manage API keys: each belongs to one tenant; only a hash is stored (works on the database). Who created
    and revoked each key (the OS user and host) is kept: `keys events`."""


@keys.command(name="create")
@click.option("--tenant", required=True, help="The tenant whose sagas the key reaches.")
@click.option("--name", default=None, help="What the key is for (shown by `python -m service keys list`).")
@click.option("--scope", "scopes", multiple=True, metavar="SCOPE",
              help="What the key may do, repeatable: sagas:read, sagas:start, sagas:operate (cancel, resume, "
                   "compensate, rewind, input, restart), webhooks:manage. Default: every scope.")
def keys_create(tenant: str, name: str | None, scopes: tuple[str, ...]) -> None:
    """Create a key and print it (only now: it is stored hashed)."""
    from api import keys as apikeys

    try:
        allowed = apikeys.check_scopes(scopes or apikeys.EVERY_SCOPE)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from None
    _boot()
    try:
        record, key = apikeys.create_key(tenant, name, scopes=allowed, by=this_user())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None
    click.echo(f"key {record.id} for tenant {record.tenant} with scopes {' '.join(record.scopes)}; "
               "it is shown only once:", err=True)
    click.echo(key)


@keys.command(name="list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
def keys_list(tenant: str | None, as_json: bool) -> None:
    """List stored keys (not the keys themselves: who they belong to, what they may do, and whether they are
    revoked)."""
    from dataclasses import asdict

    from api import keys as apikeys

    _boot()
    found = apikeys.list_keys(tenant)
    if as_json:
        click.echo(json.dumps([asdict(k) for k in found], indent=2, default=str))
        return
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        click.echo(f"{k.id:<6} {k.tenant:<20} {state:<24} {k.created_at:%Y-%m-%d %H:%M}  {','.join(k.scopes):<52} "
                   f"{k.name or ''}".rstrip())


@keys.command(name="revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke a stored key (the API stops taking it within seconds)."""
    from api import keys as apikeys

    _boot()
    if not apikeys.revoke_key(key_id, by=this_user()):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"key {key_id} revoked")


@keys.command(name="events")
@click.option("--key", "key_id", type=int, default=None, help="Only this key's (its id, as `keys list` shows it).")
@click.option("--tenant", default=None, help="Only this tenant's keys'.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="The newest this many.")
@click.option("--json", "as_json", is_flag=True)
def keys_events(key_id: int | None, tenant: str | None, limit: int, as_json: bool) -> None:
    """Who created and revoked stored keys, and when, oldest first."""
    from dataclasses import asdict

    from api import keys as apikeys

    _boot()
    found = apikeys.key_events(key_id, tenant, limit)
    if as_json:
        click.echo(json.dumps([asdict(e) for e in found], indent=2, default=str))
        return
    for e in found:
        by = " ".join(f"{name}={value}" for name, value in sorted(e.by.items(), key=lambda i: (i[0] != "via", i[0])))
        scopes = f"  scopes {','.join(e.scopes)}" if e.scopes is not None else ""
        click.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  key {e.key_id:<6} {e.tenant:<20} {e.kind:<8} by {by}{scopes}")




@main.command()
@click.argument("saga_type")
@click.option("--input", "input_", required=True, help="The input as JSON, or @file.json.")
@click.option("--idempotency-key", "-k", default=None, help="Repeat the same key to get the same saga back.")
@click.option("--tenant", default=None)
@click.option("--wait", is_flag=True, help="Follow progress until the saga ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@api_options
def submit(saga_type: str, input_: str, idempotency_key: str | None, tenant: str | None, wait: bool,
           as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Start a saga."""
    import saga

    data = json_input(input_)
    client = api_client(use_api, api_url, api_key)
    if client is not None and tenant:
        raise click.UsageError("with --api the tenant is the API key's")

    def on_database() -> Any:
        _boot()
        return saga.start(saga_type, data, idempotency_key=idempotency_key, tenant=tenant)

    start_then_show(client, ("started", "already exists"), as_json, wait,
                    lambda api: api.start(saga_type, data, idempotency_key=idempotency_key), on_database, tenant)


if __name__ == "__main__":
    main(prog_name="python -m service")
