"""The `saga` command: run the service's processes and act on sagas as an operator (`python -m cli`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import click

from saga.errors import SagaError
from saga.states import FINAL

# Where `make run` keeps a development API key, which `--api` uses when no other key is given.
DEV_KEY_FILE = Path(".saga") / "api-key"
# Written by `saga dev` while it runs, so other commands in the same directory find its servers.
DEV_ENV_FILE = Path(".saga") / "env"


def _boot() -> None:
    """Load settings (exits on a bad one) and every saga type, before any command touches sagas."""
    from saga.settings import get_settings
    from workers.app import load_modules

    get_settings()
    load_modules()


def _dev_env() -> None:
    """Take the running `saga dev` stack's servers from its env file, where the environment names none."""
    if DEV_ENV_FILE.exists():
        for line in DEV_ENV_FILE.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                os.environ.setdefault(name, value)


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a saga id (a UUID)") from None


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SagaError as exc:
            click.echo(f"error ({exc.code}): {exc.message}", err=True)
            sys.exit(2 if exc.code == "action_not_allowed" else 1)


@click.group(cls=_Group)
def main() -> None:
    """Durable sagas on Celery."""
    _dev_env()


@main.command()
def migrate() -> None:
    """Create or upgrade the ledger's tables."""
    from saga import migrate as migrations
    from saga.settings import get_settings

    migrations.upgrade(get_settings().database_url)
    click.echo("ledger is up to date")


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
def dev(workers: int, demo: bool, api_port: int, flower_port: int) -> None:
    """Start the whole stack locally (what `make run` does); Ctrl-C or SIGTERM stops it within seconds."""
    from devstack.supervisor import run

    run(Path(".saga"), render, workers=workers, demo=demo, api_port=api_port, flower_port=flower_port)


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
    """Manage API keys: each belongs to one tenant; only a hash is stored (works on the database)."""


@keys.command(name="create")
@click.option("--tenant", required=True, help="The tenant whose sagas the key reaches.")
@click.option("--name", default=None, help="What the key is for (shown by `saga keys list`).")
def keys_create(tenant: str, name: str | None) -> None:
    """Create a key and print it (only now: it is stored hashed)."""
    from api import keys as apikeys

    _boot()
    try:
        record, key = apikeys.create_key(tenant, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None
    click.echo(f"key {record.id} for tenant {record.tenant}; it is shown only once:", err=True)
    click.echo(key)


@keys.command(name="list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
def keys_list(tenant: str | None, as_json: bool) -> None:
    """List stored keys (not the keys themselves: who they belong to, and whether they are revoked)."""
    from dataclasses import asdict

    from api import keys as apikeys

    _boot()
    found = apikeys.list_keys(tenant)
    if as_json:
        click.echo(json.dumps([asdict(k) for k in found], indent=2, default=str))
        return
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        click.echo(f"{k.id:<6} {k.tenant:<20} {state:<24} {k.created_at:%Y-%m-%d %H:%M}  {k.name or ''}")


@keys.command(name="revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke a stored key (the API stops taking it within seconds)."""
    from api import keys as apikeys

    _boot()
    if not apikeys.revoke_key(key_id):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"key {key_id} revoked")


@main.command()
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="How long ago the sagas ended: 30d, 12h, 90m, 45s.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Sagas deleted per transaction.")
def prune(older_than: str, batch: int) -> None:
    """Delete sagas that ended (completed or compensated) longer ago than AGE, with their steps and events,
    in batches that never hold up workers. Paused and failed sagas are kept."""
    from saga import retention

    try:
        age = retention.parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    _boot()
    total = retention.prune(age, batch, progress=lambda n: click.echo(f"deleted {n} saga(s) so far", err=True))
    click.echo(f"deleted {total} saga(s) that ended more than {older_than} ago")


def _api_options(fn: Any) -> Any:
    """`--api` (and its URL and key) on an operator command: go through the HTTP API, not the database."""
    fn = click.option("--api-key", default=None, envvar="SAGA_API_KEY",
                      help=f"API key for --api (default: $SAGA_API_KEY, else the key in {DEV_KEY_FILE}).")(fn)
    fn = click.option("--api-url", default=None, help="API for --api (default: $SAGA_API_URL).")(fn)
    return click.option("--api", "use_api", is_flag=True,
                        help="Act through the HTTP API instead of on the database.")(fn)


def _client(use_api: bool, api_url: str | None, api_key: str | None) -> Any:
    """A client of the API if one was asked for (`--api`, `--api-url` or `--api-key`), else None."""
    if not (use_api or api_url or api_key):
        return None
    from saga.client import SagaClient
    from workers.settings import service_settings

    key = api_key or (DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else None)
    if not key:
        raise click.UsageError(f"--api needs a key: --api-key, $SAGA_API_KEY or {DEV_KEY_FILE}")
    return SagaClient(api_url or service_settings().api_url, key)


@main.command()
@click.argument("saga_type")
@click.option("--input", "input_", required=True, help="The input as JSON, or @file.json.")
@click.option("--idempotency-key", "-k", default=None, help="Repeat the same key to get the same saga back.")
@click.option("--tenant", default=None)
@click.option("--wait", is_flag=True, help="Follow progress until the saga ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_api_options
def submit(saga_type: str, input_: str, idempotency_key: str | None, tenant: str | None, wait: bool,
           as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Start a saga."""
    import saga

    data = _json_input(input_)
    client = _client(use_api, api_url, api_key)
    if client is not None:
        if tenant:
            raise click.UsageError("with --api the tenant is the API key's")
        with client:
            sent = client.start(saga_type, data, idempotency_key=idempotency_key)
            _show_started(sent.saga.id, sent.created, ("started", "already exists"), as_json, wait,
                          lambda: _follow_api(client, sent.saga.id, as_json), lambda: sent.saga.model_dump(mode="json"))
        return
    _boot()
    started = saga.start(saga_type, data, idempotency_key=idempotency_key, tenant=tenant)
    _show_started(started.saga.id, started.created, ("started", "already exists"), as_json, wait,
                  lambda: _follow(started.saga.id, tenant, as_json), started.saga.to_dict)


def _show_started(saga_id: Any, created: bool, said: tuple[str, str], as_json: bool, wait: bool,
                  follow: Any, dump: Any) -> None:
    """What `submit` and `restart` print: the new saga's id (`said[0]`, or `said[1]` for a replay), then the saga
    followed to its end (`--wait`) or as JSON (`--json`)."""
    if not as_json:
        click.echo(f"{said[0] if created else said[1]}: {saga_id}")
    if wait:
        follow()
    elif as_json:
        click.echo(json.dumps(dump(), indent=2))


def _json_input(value: str) -> Any:
    """`--input`: JSON, or @file.json."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--input is not JSON: {exc}") from None


RESTARTED = ("restarted as", "already restarted as")


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--input", "input_", default=None, help="Fields of the input to replace, as JSON or @file.json.")
@click.option("--idempotency-key", "-k", default=None, help="The new saga's key (default restart-of:<id>).")
@click.option("--wait", is_flag=True, help="Follow the new saga until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_api_options
def restart(saga_id: UUID, input_: str | None, idempotency_key: str | None, wait: bool, as_json: bool,
            use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Start a compensated or failed saga again from its first step, as a new saga linked to it."""
    import saga

    patch = _json_input(input_) if input_ else {}
    if not isinstance(patch, dict):
        raise click.BadParameter("--input must be a JSON object of the fields to replace")
    client = _client(use_api, api_url, api_key)
    if client is not None:
        with client:
            sent = client.restart(saga_id, patch, idempotency_key=idempotency_key)
            _show_started(sent.saga.id, sent.created, RESTARTED, as_json, wait,
                          lambda: _follow_api(client, sent.saga.id, as_json), lambda: sent.saga.model_dump(mode="json"))
        return
    _boot()
    started = saga.restart(saga_id, patch=patch, idempotency_key=idempotency_key)
    _show_started(started.saga.id, started.created, RESTARTED, as_json, wait,
                  lambda: _follow(started.saga.id, None, as_json), started.saga.to_dict)


@main.command(name="input")
@click.argument("saga_id", type=_uuid)
@click.option("--input", "input_", required=True, help="The fields the saga awaits, as JSON or @file.json.")
@click.option("--idempotency-key", "-k", default=None,
              help="Repeat the same key to make a retry safe (default: a new one).")
@click.option("--wait", is_flag=True, help="Follow the saga until it ends (or awaits input again).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_api_options
def input_(saga_id: UUID, input_: str, idempotency_key: str | None, wait: bool, as_json: bool, use_api: bool,
           api_url: str | None, api_key: str | None) -> None:
    """Give a saga awaiting input the fields its step asked for; that step runs again with them."""
    import uuid

    import saga

    patch = _json_input(input_)
    if not isinstance(patch, dict) or not patch:
        raise click.BadParameter("--input must be a JSON object of the fields the saga awaits")
    key = idempotency_key or str(uuid.uuid4())
    _act_then_show(_client(use_api, api_url, api_key), saga_id, wait, as_json,
                   lambda client: client.provide_input(saga_id, patch, idempotency_key=key).model_dump(mode="json"),
                   lambda: saga.provide_input(saga_id, patch, idempotency_key=key).saga.to_dict())


def _act_then_show(client: Any, saga_id: UUID, wait: bool, as_json: bool, via_api: Callable[[Any], Any],
                   on_database: Callable[[], Any]) -> None:
    """Act on a saga through the API (`client`) or on the database, then show it, or follow it (`--wait`)."""
    if client is not None:
        with client:
            data = via_api(client)
            if wait:
                _follow_api(client, saga_id, as_json)
                return
    else:
        _boot()
        data = on_database()
        if wait:
            _follow(saga_id, None, as_json)
            return
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--to", "to", required=True, metavar="STEP", help="The step to go back to.")
@click.option("--input", "input_", default=None, help="Fields of the input to replace, as JSON or @file.json.")
@click.option("--idempotency-key", "-k", default=None,
              help="Repeat the same key to make a retry safe (default: a new one).")
@click.option("--wait", is_flag=True, help="Follow the saga until it ends (or awaits input).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_api_options
def rewind(saga_id: UUID, to: str, input_: str | None, idempotency_key: str | None, wait: bool, as_json: bool,
           use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Take a saga back to step STEP: undo it and every later step, newest first, then run forward from it
    (refused past the point of no return, or over a step that cannot be undone)."""
    import getpass
    import socket
    import uuid

    import saga

    patch = _json_input(input_) if input_ else {}
    if not isinstance(patch, dict):
        raise click.BadParameter("--input must be a JSON object of the fields to replace")
    key = idempotency_key or str(uuid.uuid4())
    by = {"via": "cli", "user": getpass.getuser(), "host": socket.gethostname()}
    _act_then_show(_client(use_api, api_url, api_key), saga_id, wait, as_json,
                   lambda client: client.rewind(saga_id, to, patch, idempotency_key=key).model_dump(mode="json"),
                   lambda: saga.rewind(saga_id, to, patch, idempotency_key=key, by=by).to_dict())


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--json", "as_json", is_flag=True)
@_api_options
def status(saga_id: UUID, as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show a saga and its steps."""
    import saga

    client = _client(use_api, api_url, api_key)
    if client is not None:
        with client:
            data = client.get(saga_id).model_dump(mode="json")
    else:
        _boot()
        data = saga.load(saga_id).to_dict()
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--json", "as_json", is_flag=True, help="Print only the final state, as JSON.")
@_api_options
def watch(saga_id: UUID, as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show a saga's progress live until it is completed, compensated, paused or failed (a wait for input is
    shown, with what to send and by when, and followed until it ends)."""
    client = _client(use_api, api_url, api_key)
    if client is not None:
        with client:
            _follow_api(client, saga_id, as_json)
        return
    _boot()
    _follow(saga_id, None, as_json)


@main.command(name="list")
@click.option("--status", "status_", default=None)
@click.option("--type", "type_", default=None)
@click.option("--tenant", default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_api_options
def list_(status_: str | None, type_: str | None, tenant: str | None, limit: int, as_json: bool,
          use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """List sagas, newest first."""
    import saga
    from saga.settings import get_settings

    client = _client(use_api, api_url, api_key)
    if client is not None:
        if tenant:
            raise click.UsageError("with --api the tenant is the API key's")
        rows: list[dict[str, Any]] = []
        cursor = None
        with client:
            while len(rows) < limit:
                page = client.list(status=status_, type=type_, limit=min(limit - len(rows), 200),
                                   cursor=cursor)
                rows += [s.model_dump(mode="json") for s in page.items]
                if not (cursor := page.next_cursor):
                    break
    else:
        _boot()
        rows = [r.to_dict() for r in
                saga.list_sagas(tenant or get_settings().tenant, status=status_, type_=type_, limit=limit)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        p = r["progress"]
        created = datetime.fromisoformat(r["created_at"])
        click.echo(f"{r['id']}  {r['type']:<14} {r['status']:<13} {p['done']}/{p['total']}  "
                   f"{created:%Y-%m-%d %H:%M:%S}")


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--json", "as_json", is_flag=True)
@_api_options
def events(saga_id: UUID, as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show a saga's audit log, oldest first."""
    import saga

    client = _client(use_api, api_url, api_key)
    if client is not None:
        rows: list[dict[str, Any]] = []
        after: int | None = 0
        with client:
            while after is not None:
                page = client.events(saga_id, after=after)
                rows += [e.model_dump(mode="json") for e in page.items]
                after = page.next_after
    else:
        _boot()
        rows = [e.to_dict() for e in saga.events(saga_id)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for e in rows:
        detail = json.dumps(e["detail"]) if e["detail"] else ""
        at = datetime.fromisoformat(e["created_at"])
        click.echo(f"{at:%H:%M:%S.%f}  {e['kind']:<28} {e['step'] or '':<18} {detail}")


def _action(name: str, doc: str) -> None:
    @main.command(name=name, help=doc)
    @click.argument("saga_id", type=_uuid)
    @_api_options
    def command(saga_id: UUID, use_api: bool, api_url: str | None, api_key: str | None) -> None:
        import saga

        _act_then_show(_client(use_api, api_url, api_key), saga_id, False, False,
                       lambda client: getattr(client, name)(saga_id).model_dump(mode="json"),
                       lambda: getattr(saga, name)(saga_id))


_action("cancel", "Cancel a saga: compensate what was done (refused past the point of no return).")
_action("resume", "Resume a paused saga from its first unfinished step.")
_action("compensate", "Re-run the compensations of a failed saga.")


def render(record: Any) -> str:
    """A saga (a `SagaRecord`, or its JSON form as the API gives it) as a readable table of its steps."""
    data = record if isinstance(record, dict) else record.to_dict()
    p = data["progress"]
    progress = f"{p['done']}/{p['total']}"
    lines = [f"saga {data['id']}  type={data['type']}  status={data['status']}  progress={progress}"]
    waiting = data.get("awaiting_input")
    if waiting:
        lines.append(f"  awaiting input until {waiting['until']}: {', '.join(waiting['fields'])} for step "
                     f"{waiting['step']} ({waiting['reason']})")
        lines.append(f"  send it: saga input {data['id']} --input '{{\"{waiting['fields'][0]}\": ...}}'")
    elif data["error"]:
        lines.append(f"  reason: {data['error']}")
    if data.get("rewinding_to"):
        lines.append(f"  rewinding to {data['rewinding_to']}: undoing it and the later steps, then running forward")
    if data.get("cancel_requested"):
        lines.append("  cancel requested: the step in flight decides (a pivot that succeeds refuses it)")
    lines.append(f"  {'#':<3}{'step':<22}{'kind':<13}{'status':<14}{'tries':<7}error, or what the undo reported")
    for number, s in enumerate(data["steps"], 1):
        tries = f"{s['attempts']}" + (f"+{s['compensation_attempts']}u" if s["compensation_attempts"] else "")
        undone = s.get("compensation_result")
        note = s["error"] or (f"undone: {json.dumps(undone)}" if undone is not None else "")
        lines.append(f"  {number:<3}{s['name']:<22}{s['kind']:<13}{s['status']:<14}{tries:<7}{note[:60]}")
    return "\n".join(lines)


def _follow(saga_id: UUID, tenant: str | None, as_json: bool) -> None:
    import saga

    last = None
    while True:
        record = saga.load(saga_id, tenant)
        view = render(record)
        if view != last and not as_json:
            click.echo(view + "\n")
            last = view
        if record.status in FINAL:
            if as_json:
                click.echo(json.dumps(record.to_dict(), indent=2))
            return
        time.sleep(0.5)


def _follow_api(client: Any, saga_id: Any, as_json: bool) -> None:
    """Print the saga each time it changes (the API's long poll wakes us), until it is final."""
    last = None
    for version in client.watch(saga_id):
        data = version.model_dump(mode="json")
        view = render(data)
        if view != last and not as_json:
            click.echo(view + "\n")
            last = view
        if data["status"] in FINAL and as_json:
            click.echo(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
