"""The `saga` command: act on the sagas of your own Celery app as an operator, and migrate its ledger.

    saga -A shop list                    # the app as `celery -A` takes it (SAGA_APP)
    saga -A shop status 5f0c...          # a saga and its steps
    saga -A shop cancel 5f0c...          # cancel, resume, compensate, rewind, input, restart
    saga -A shop migrate                 # the ledger's tables, in the app's database
    saga -A shop breakers                # each third party's circuit breaker
    saga webhooks list                   # the API key's tenant's webhook endpoints (through the HTTP API)

`-A` loads the app, which binds the engine (`Sagas(app, database_url=...)`) and declares its saga types; the
commands then work on that database. With `--api` they go through the HTTP API instead (the `client` extra).
Each action's audit event records who asked: on the database the OS user and host, through `--api` the API key.
`saga webhooks ...` manages webhook endpoints, which live in the service, so it always goes through the API.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import click

from saga.callers import this_user
from saga.errors import ConfigurationError, SagaError
from saga.states import FINAL


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a saga id (a UUID)") from None


class Commands(click.Group):
    """Errors the engine reports become one line on stderr and an exit code (2: the action is not allowed)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            click.echo(f"saga: {exc}", err=True)
            raise click.exceptions.Exit(1) from None
        except SagaError as exc:
            click.echo(f"error ({exc.code}): {exc.message}", err=True)
            raise click.exceptions.Exit(2 if exc.code == "action_not_allowed" else 1) from None


def read_env_file(path: Path) -> None:
    """Set `NAME=value` lines of `path` as environment variables, where the environment has none yet."""
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            os.environ.setdefault(name, value)


@click.group(cls=Commands)
@click.option("-A", "--app", "app", envvar="SAGA_APP", metavar="APP",
              help="Your Celery app, as `celery -A` takes it (module or module:attribute); default $SAGA_APP.")
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read NAME=value settings from this file (the environment wins).")
@click.pass_context
def main(ctx: click.Context, app: str | None, env_file: Path | None) -> None:
    """Act on the sagas of a Celery app that binds the engine (`Sagas(app)`)."""
    if env_file is not None:
        read_env_file(env_file)
    ctx.obj = app or os.environ.get("SAGA_APP")


def boot(*, need_app: bool = True) -> None:
    """Load the app named by `-A` (its `Sagas`, settings and saga types), before a command touches sagas. Without
    `-A`, commands that need no saga type run on the database named by SAGA_DATABASE_URL."""
    from saga.engine import find_sagas
    from saga.settings import get_settings

    target = click.get_current_context().find_root().obj
    if target:
        if os.getcwd() not in sys.path:  # as `celery -A` does: the app's module may sit in this directory
            sys.path.insert(0, os.getcwd())
        find_sagas(target)
    elif need_app:
        raise click.UsageError("this command needs your Celery app: -A APP (or SAGA_APP), as `celery -A` takes it")
    get_settings()


@main.command()
def migrate() -> None:
    """Create or upgrade the ledger's tables (and only those) in the app's database."""
    from saga import migrate as migrations
    from saga.settings import get_settings

    boot(need_app=False)
    migrations.upgrade(get_settings().database_url)
    click.echo("ledger is up to date")


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
    boot(need_app=False)
    total = retention.prune(age, batch, progress=lambda n: click.echo(f"deleted {n} saga(s) so far", err=True))
    click.echo(f"deleted {total} saga(s) that ended more than {older_than} ago")


def api_options(fn: Any) -> Any:
    """`--api` (and its URL and key) on an operator command: go through the HTTP API, not the database."""
    fn = click.option("--api-key", default=None, envvar="SAGA_API_KEY", help="API key for --api ($SAGA_API_KEY).")(fn)
    fn = click.option("--api-url", default=None, envvar="SAGA_API_URL", help="API for --api ($SAGA_API_URL).")(fn)
    return click.option("--api", "use_api", is_flag=True,
                        help="Act through the HTTP API instead of on the database.")(fn)


def api_client(use_api: bool, api_url: str | None, api_key: str | None) -> Any:
    """A client of the API if one was asked for (`--api`), else None."""
    if not use_api:
        return None
    from saga.client import SagaClient

    if not api_url or not api_key:
        raise click.UsageError("--api needs --api-url (or $SAGA_API_URL) and --api-key (or $SAGA_API_KEY)")
    return SagaClient(api_url, api_key)


def json_input(value: str) -> Any:
    """`--input`: JSON, or @file.json."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--input is not JSON: {exc}") from None


def _patch(value: str | None) -> dict[str, Any]:
    """`--input` of fields to replace: a JSON object (or nothing)."""
    patch = json_input(value) if value else {}
    if not isinstance(patch, dict):
        raise click.BadParameter("--input must be a JSON object of the fields to replace")
    return patch


def start_then_show(client: Any, said: tuple[str, str], as_json: bool, wait: bool,
                    via_api: Callable[[Any], Any], on_database: Callable[[], Any], tenant: str | None = None) -> None:
    """What a command that starts a saga does: start it through the API (`client`) or on the database, print its id
    (`said[0]`, or `said[1]` for a replay), then follow it to its end (`--wait`) or print it as JSON (`--json`)."""
    if client is not None:
        with client:
            sent = via_api(client)
            _show_started(sent.saga.id, sent.created, said, as_json, wait,
                          lambda: follow_api(client, sent.saga.id, as_json), lambda: sent.saga.model_dump(mode="json"))
        return
    started = on_database()
    _show_started(started.saga.id, started.created, said, as_json, wait,
                  lambda: follow(started.saga.id, tenant, as_json), started.saga.to_dict)


def _show_started(saga_id: Any, created: bool, said: tuple[str, str], as_json: bool, wait: bool,
                  follow_it: Callable[[], None], dump: Callable[[], Any]) -> None:
    if not as_json:
        click.echo(f"{said[0] if created else said[1]}: {saga_id}")
    if wait:
        follow_it()
    elif as_json:
        click.echo(json.dumps(dump(), indent=2))


RESTARTED = ("restarted as", "already restarted as")


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--input", "input_", default=None, help="Fields of the input to replace, as JSON or @file.json.")
@click.option("--idempotency-key", "-k", default=None, help="The new saga's key (default restart-of:<id>).")
@click.option("--wait", is_flag=True, help="Follow the new saga until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@api_options
def restart(saga_id: UUID, input_: str | None, idempotency_key: str | None, wait: bool, as_json: bool,
            use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Start a compensated or failed saga again from its first step, as a new saga linked to it."""
    import saga

    patch = _patch(input_)

    def on_database() -> Any:
        boot()
        return saga.restart(saga_id, patch=patch, idempotency_key=idempotency_key, by=this_user())

    start_then_show(api_client(use_api, api_url, api_key), RESTARTED, as_json, wait,
                    lambda client: client.restart(saga_id, patch, idempotency_key=idempotency_key), on_database)


@main.command(name="input")
@click.argument("saga_id", type=_uuid)
@click.option("--input", "input_", required=True, help="The fields the saga awaits, as JSON or @file.json.")
@click.option("--idempotency-key", "-k", default=None,
              help="Repeat the same key to make a retry safe (default: a new one).")
@click.option("--wait", is_flag=True, help="Follow the saga until it ends (or awaits input again).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@api_options
def input_(saga_id: UUID, input_: str, idempotency_key: str | None, wait: bool, as_json: bool, use_api: bool,
           api_url: str | None, api_key: str | None) -> None:
    """Give a saga awaiting input the fields its step asked for; that step runs again with them."""
    import saga

    patch = json_input(input_)
    if not isinstance(patch, dict) or not patch:
        raise click.BadParameter("--input must be a JSON object of the fields the saga awaits")
    key = idempotency_key or str(uuid.uuid4())
    _act_then_show(api_client(use_api, api_url, api_key), saga_id, wait, as_json,
                   lambda client: client.provide_input(saga_id, patch, idempotency_key=key).model_dump(mode="json"),
                   lambda: saga.provide_input(saga_id, patch, idempotency_key=key, by=this_user()).saga.to_dict())


def _act_then_show(client: Any, saga_id: UUID, wait: bool, as_json: bool, via_api: Callable[[Any], Any],
                   on_database: Callable[[], Any]) -> None:
    """Act on a saga through the API (`client`) or on the database, then show it, or follow it (`--wait`)."""
    if client is not None:
        with client:
            data = via_api(client)
            if wait:
                follow_api(client, saga_id, as_json)
                return
    else:
        boot()
        data = on_database()
        if wait:
            follow(saga_id, None, as_json)
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
@api_options
def rewind(saga_id: UUID, to: str, input_: str | None, idempotency_key: str | None, wait: bool, as_json: bool,
           use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Take a saga back to step STEP: undo it and every later step, newest first, then run forward from it
    (refused past the point of no return, or over a step that cannot be undone)."""
    import saga

    patch = _patch(input_)
    key = idempotency_key or str(uuid.uuid4())
    _act_then_show(api_client(use_api, api_url, api_key), saga_id, wait, as_json,
                   lambda client: client.rewind(saga_id, to, patch, idempotency_key=key).model_dump(mode="json"),
                   lambda: saga.rewind(saga_id, to, patch, idempotency_key=key, by=this_user()).to_dict())


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--json", "as_json", is_flag=True)
@api_options
def status(saga_id: UUID, as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show a saga and its steps."""
    import saga

    client = api_client(use_api, api_url, api_key)
    if client is not None:
        with client:
            data = client.get(saga_id).model_dump(mode="json")
    else:
        boot(need_app=False)
        data = saga.load(saga_id).to_dict()
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


@main.command()
@click.argument("saga_id", type=_uuid)
@click.option("--json", "as_json", is_flag=True, help="Print only the final state, as JSON.")
@api_options
def watch(saga_id: UUID, as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show a saga's progress live until it is completed, compensated, paused or failed (a wait for input is
    shown, with what to send and by when, and followed until it ends)."""
    client = api_client(use_api, api_url, api_key)
    if client is not None:
        with client:
            follow_api(client, saga_id, as_json)
        return
    boot(need_app=False)
    follow(saga_id, None, as_json)


@main.command(name="list")
@click.option("--status", "status_", default=None)
@click.option("--type", "type_", default=None)
@click.option("--tenant", default=None, help="Whose sagas (default: $SAGA_TENANT, else `default`).")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@api_options
def list_(status_: str | None, type_: str | None, tenant: str | None, limit: int, as_json: bool,
          use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """List sagas, newest first."""
    import saga
    from saga.settings import get_settings

    client = api_client(use_api, api_url, api_key)
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
        boot(need_app=False)
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
@api_options
def events(saga_id: UUID, as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show a saga's audit log, oldest first."""
    import saga

    client = api_client(use_api, api_url, api_key)
    if client is not None:
        rows: list[dict[str, Any]] = []
        after: int | None = 0
        with client:
            while after is not None:
                page = client.events(saga_id, after=after)
                rows += [e.model_dump(mode="json") for e in page.items]
                after = page.next_after
    else:
        boot(need_app=False)
        rows = [e.to_dict() for e in saga.events(saga_id)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for e in rows:
        detail = json.dumps(e["detail"]) if e["detail"] else ""
        at = datetime.fromisoformat(e["created_at"])
        click.echo(f"{at:%H:%M:%S.%f}  {e['kind']:<28} {e['step'] or '':<18} {detail}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@api_options
def breakers(as_json: bool, use_api: bool, api_url: str | None, api_key: str | None) -> None:
    """Show each third party's circuit breaker: closed, open (the steps that depend on it wait) or half-open (one
    call probes it), its consecutive failures, how often it opened, and when it may be called again."""
    client = api_client(use_api, api_url, api_key)
    if client is not None:
        with client:
            rows = [b.model_dump(mode="json") for b in client.breakers()]
    else:
        from saga import breakers as circuit

        boot(need_app=False)
        rows = [state.to_dict() for state in circuit.states()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(render_breakers(rows))


def render_breakers(rows: list[dict[str, Any]]) -> str:
    """Breakers (their JSON form) as a table: name, state, failures, opens, when it may be called again, when it
    last opened."""
    if not rows:
        return "no breaker has counted a failure"
    lines = [f"{'dependency':<20}{'state':<11}{'failures':>9}{'opens':>7}  {'retry in':<10}{'opened at':<21}probe"]
    for b in rows:
        retry = f"{b['retry_after']:.0f} s" if b["state"] != "closed" and b["retry_after"] else "-"
        opened = _when(b["opened_at"]) if b["opened_at"] else "-"
        lines.append(f"{b['name']:<20}{b['state'].replace('_', '-'):<11}{b['failures']:>9}{b['opens']:>7}  "
                     f"{retry:<10}{opened:<21}{'in flight' if b['probing'] else ''}".rstrip())
    return "\n".join(lines)


def _action(name: str, doc: str) -> None:
    @main.command(name=name, help=doc)
    @click.argument("saga_id", type=_uuid)
    @api_options
    def command(saga_id: UUID, use_api: bool, api_url: str | None, api_key: str | None) -> None:
        import saga

        _act_then_show(api_client(use_api, api_url, api_key), saga_id, False, False,
                       lambda client: getattr(client, name)(saga_id).model_dump(mode="json"),
                       lambda: getattr(saga, name)(saga_id, by=this_user()))


_action("cancel", "Cancel a saga: compensate what was done (refused past the point of no return).")
_action("resume", "Resume a paused saga from its first unfinished step.")
_action("compensate", "Re-run the compensations of a failed saga.")


# Webhook endpoints: always through the HTTP API ------------------------------------------------------------------


def _endpoint_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a webhook endpoint id (a UUID)") from None


def webhook_options(fn: Any) -> Any:
    """`--api-url`, `--api-key` and `--json` on a `saga webhooks` command."""
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)
    fn = click.option("--api-key", default=None, envvar="SAGA_API_KEY",
                      help="API key with the scope webhooks:manage ($SAGA_API_KEY).")(fn)
    return click.option("--api-url", default=None, envvar="SAGA_API_URL", help="The HTTP API ($SAGA_API_URL).")(fn)


def webhook_client(api_url: str | None, api_key: str | None) -> Any:
    """A client of the API for a `saga webhooks` command; a usage error without the API's URL and key."""
    if not api_url or not api_key:
        raise click.UsageError("saga webhooks works through the HTTP API: it needs --api-url (or $SAGA_API_URL) and "
                               "--api-key (or $SAGA_API_KEY), a key with the scope webhooks:manage")
    from saga.client import SagaClient

    return SagaClient(api_url, api_key)


@main.group()
def webhooks() -> None:
    """Manage the webhook endpoints of the API key's tenant, through the HTTP API (--api-url and --api-key, or
    $SAGA_API_URL and $SAGA_API_KEY)."""


def _webhook_json(endpoint: Any) -> dict[str, Any]:
    """An endpoint as JSON; `secret` only where the API gave it (a creation or a rotation)."""
    return endpoint.model_dump(mode="json", exclude={"secret"} if endpoint.secret is None else None)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _when(iso: str) -> str:
    return f"{datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S}"


def render_webhook(data: dict[str, Any]) -> str:
    """A webhook endpoint (its JSON form) as a few readable lines."""
    state = "enabled" if data["enabled"] else f"disabled ({data['disabled_reason'] or 'no reason given'})"
    lines = [f"webhook {data['id']}  {state}",
             f"  url: {data['url']}",
             f"  events: {', '.join(data['event_types'])}"]
    if data["description"]:
        lines.append(f"  description: {data['description']}")
    lines.append(f"  pending={data['pending']} failed={data['failed']}  created {_when(data['created_at'])}  "
                 f"updated {_when(data['updated_at'])}")
    return "\n".join(lines)


def render_attempts(attempts: list[dict[str, Any]]) -> str:
    """An endpoint's delivery attempts (their JSON form), newest first, as a table: when, the receiver's HTTP status
    (`-` when none came), how long it took, the event, and where that event's delivery stands now."""
    if not attempts:
        return "  no deliveries yet"
    lines = ["  recent deliveries, newest first:",
             f"  {'at':<21}{'HTTP':<6}{'ms':>8}  {'event':<24}{'saga':<38}{'webhook-id':<16}{'now':<11}error"]
    for a in attempts:
        code = str(a["status_code"]) if a["status_code"] is not None else "-"
        error = (a["error"] or "").split("\n", 1)[0][:60]
        lines.append(f"  {_when(a['at']):<21}{code:<6}{a['duration_ms']:>8.1f}  {a['type']:<24}{a['saga_id']:<38}"
                     f"{a['webhook_id']:<16}{a['delivery_status']:<11}{error}".rstrip())
    return "\n".join(lines)


def _show_webhook(endpoint: Any, as_json: bool, overlap: str | None = None) -> None:
    """Print an endpoint, as JSON or readable, with its secret where it has one (shown this once) and then
    `overlap`, what a rotation says of the secret before."""
    if as_json:
        click.echo(json.dumps(_webhook_json(endpoint), indent=2))
        return
    click.echo(render_webhook(_webhook_json(endpoint)))
    if endpoint.secret is not None:
        click.echo(f"secret: {endpoint.secret}")
        click.echo("This secret is shown only this once: store it now where your receiver verifies signatures.")
        if overlap:
            click.echo(overlap)


@webhooks.command(name="create")
@click.argument("url")
@click.option("--event-type", "event_types", multiple=True, metavar="TYPE",
              help="An event type to send, e.g. saga.completed (repeat for more; default every saga.* type).")
@click.option("--description", default=None, help="What the endpoint is for.")
@webhook_options
def webhooks_create(url: str, event_types: tuple[str, ...], description: str | None, api_url: str | None,
                    api_key: str | None, as_json: bool) -> None:
    """Register an endpoint at URL for events of the tenant's sagas, and print its signing secret (once)."""
    with webhook_client(api_url, api_key) as client:
        made = client.create_webhook(url, list(event_types) or None, description)
    _show_webhook(made, as_json)


@webhooks.command(name="list")
@webhook_options
def webhooks_list(api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """List the tenant's endpoints, oldest first."""
    with webhook_client(api_url, api_key) as client:
        rows = [_webhook_json(e) for e in client.list_webhooks()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no webhook endpoints")
    for r in rows:
        state = "enabled" if r["enabled"] else "disabled"
        counts = f"pending={r['pending']} failed={r['failed']}"
        click.echo(f"{r['id']}  {state:<9} {counts:<22} {r['url']}")


@webhooks.command(name="show")
@click.argument("endpoint_id", metavar="ID", type=_endpoint_id)
@webhook_options
def webhooks_show(endpoint_id: UUID, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Show an endpoint and its latest delivery attempts, newest first, with the receiver's status codes."""
    with webhook_client(api_url, api_key) as client:
        data = client.get_webhook(endpoint_id).model_dump(mode="json", exclude={"secret"})
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render_webhook(data))
    click.echo(render_attempts(data["recent_attempts"]))


@webhooks.command(name="rotate-secret")
@click.argument("endpoint_id", metavar="ID", type=_endpoint_id)
@click.option("--keep-old-for", "keep_old_for", type=click.FloatRange(min=0), default=None,
              metavar="SECONDS", help="How long the secret before still signs beside the new one (default: the "
              "service's setting, a day).")
@webhook_options
def webhooks_rotate_secret(endpoint_id: UUID, keep_old_for: float | None, api_url: str | None,
                           api_key: str | None, as_json: bool) -> None:
    """Give an endpoint a new signing secret, and print it (once); the one before signs too for a while."""
    with webhook_client(api_url, api_key) as client:
        rotated = client.rotate_webhook_secret(endpoint_id, keep_old_for)
    overlap = ("The secret before it also signs each delivery for the service's overlap (a day unless set "
               "otherwise)." if keep_old_for is None else
               f"The secret before it also signs each delivery for {keep_old_for:g} more seconds.")
    _show_webhook(rotated, as_json, overlap)


def _switch(name: str, doc: str) -> None:
    @webhooks.command(name=name, help=doc)
    @click.argument("endpoint_id", metavar="ID", type=_endpoint_id)
    @webhook_options
    def command(endpoint_id: UUID, api_url: str | None, api_key: str | None, as_json: bool) -> None:
        with webhook_client(api_url, api_key) as client:
            _show_webhook(getattr(client, f"{name}_webhook")(endpoint_id), as_json)


_switch("disable", "Stop delivering to an endpoint; the events it has waiting stay until it is enabled.")
_switch("enable", "Deliver to an endpoint again, from where deliveries stopped.")


@webhooks.command(name="delete")
@click.argument("endpoint_id", metavar="ID", type=_endpoint_id)
@webhook_options
def webhooks_delete(endpoint_id: UUID, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Delete an endpoint and every delivery still owed to it."""
    with webhook_client(api_url, api_key) as client:
        client.delete_webhook(endpoint_id)
    click.echo(json.dumps({"deleted": str(endpoint_id)}) if as_json else f"deleted webhook {endpoint_id}")


@webhooks.command(name="replay-failed")
@click.argument("endpoint_id", metavar="ID", type=_endpoint_id)
@webhook_options
def webhooks_replay_failed(endpoint_id: UUID, api_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Deliver an endpoint's given-up events again (enable it first if it is disabled)."""
    with webhook_client(api_url, api_key) as client:
        count = client.replay_failed_webhooks(endpoint_id)
    click.echo(json.dumps({"deliveries": count}) if as_json else
               f"{_count(count, 'failed event')} of webhook {endpoint_id} queued for delivery again")


@webhooks.command(name="replay")
@click.argument("saga_id", type=_uuid)
@click.option("--endpoint", "endpoint_id", type=_endpoint_id, default=None, metavar="ID",
              help="Only to this endpoint (default: every enabled endpoint that subscribes to the events).")
@webhook_options
def webhooks_replay(saga_id: UUID, endpoint_id: UUID | None, api_url: str | None, api_key: str | None,
                    as_json: bool) -> None:
    """Deliver a saga's events again, with the webhook-id each had before."""
    with webhook_client(api_url, api_key) as client:
        count = client.replay_saga_webhooks(saga_id, endpoint_id)
    to = f"webhook {endpoint_id}" if endpoint_id else "the tenant's enabled endpoints"
    click.echo(json.dumps({"deliveries": count}) if as_json else
               f"{_count(count, 'delivery', 'deliveries')} of saga {saga_id}'s events queued to {to}")


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
        lines.append("  reason: " + data["error"].replace("\n", "\n          "))
    if data.get("rewinding_to"):
        lines.append(f"  rewinding to {data['rewinding_to']}: undoing it and the later steps, then running forward")
    if data.get("cancel_requested"):
        lines.append("  cancel requested: the step in flight decides (a pivot that succeeds refuses it)")
    lines.append(f"  {'#':<3}{'step':<22}{'kind':<13}{'status':<14}{'tries':<7}error, or what the undo reported")
    for number, s in enumerate(data["steps"], 1):
        tries = f"{s['attempts']}" + (f"+{s['compensation_attempts']}u" if s["compensation_attempts"] else "")
        undone = s.get("compensation_result")
        note = s["error"] or (f"undone: {json.dumps(undone)}" if undone is not None else "")
        note = note.split("\n", 1)[0]  # an error's causes are in `saga events` and `--json`
        lines.append(f"  {number:<3}{s['name']:<22}{s['kind']:<13}{s['status']:<14}{tries:<7}{note[:60]}")
    return "\n".join(lines)


def follow(saga_id: UUID, tenant: str | None, as_json: bool) -> None:
    """Print the saga each time it changes (read from the database), until it is final."""
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


def follow_api(client: Any, saga_id: Any, as_json: bool) -> None:
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
