"""Bearer API keys: each request's key names its tenant, and every read and write is scoped to it; each route needs
one of the key's scopes (`Reader`, `Starter`, `Operator`), checked before anything is read, so a 403 reveals
nothing about the sagas there are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from api import background
from api import keys as apikeys
from api.errors import ApiError
from api.metrics import KEY_CHECKS

log = logging.getLogger("api.auth")

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer <key>`. Each key has scopes, and each operation lists the one "
                "it needs (in its `security` requirement and `x-required-scopes`): "
                + "; ".join(f"`{name}`: {allows}" for name, allows in apikeys.SCOPES.items()) + ".",
)


class KeyRing:
    """Knows every valid key by its hash, in memory: `SAGA_API_KEYS`, and every live stored key, read again by one
    query each `refresh` seconds whatever the traffic.

    A known key is answered from memory and never waits; so is a revoked one (refused), from the next read on. A
    key that cannot be a stored one (they all look like `saga_` and 43 characters) is refused at once. Any other
    key waits for the next read (a key created a moment ago is then known) and is refused if it is still unknown:
    a flood of made-up keys costs nothing but its own waiting, and valid keys never queue behind it.
    """

    def __init__(self, configured: dict[str, apikeys.KeyGrant], refresh: float = 1.0) -> None:
        self._configured = configured
        self._refresh = refresh
        self._stored: dict[str, apikeys.KeyGrant] = {}
        self._revoked: set[str] = set()
        self._last_ok = True
        # Set when the next read to start has ended: whoever waits on it sees keys created before it waited.
        self._next_read = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread = background.Thread()

    def known(self, key_hash: str) -> apikeys.KeyGrant | None:
        """The tenant and scopes of a key known right now (configured, or stored and live at the last read)."""
        return self._configured.get(key_hash) or self._stored.get(key_hash)

    def tenant_known(self, key_hash: str) -> str | None:
        """The tenant of a key known right now, else None."""
        known = self.known(key_hash)
        return known.tenant if known else None

    async def grant(self, key: str) -> apikeys.KeyGrant | None:
        """The tenant and scopes of `key`, or None if it is not valid; 503 if stored keys could not be read lately."""
        key_hash = apikeys.hash_key(key)
        if (known := self.known(key_hash)) is not None:
            return known
        if not apikeys.STORED_KEY.fullmatch(key):
            KEY_CHECKS.labels("malformed").inc()
            return None
        if key_hash in self._revoked:
            KEY_CHECKS.labels("revoked").inc()
            return None
        self._ensure_running()
        await self._next_read.wait()
        if (known := self.known(key_hash)) is not None:
            KEY_CHECKS.labels("new").inc()
            return known
        if not self._last_ok:
            KEY_CHECKS.labels("unchecked").inc()
            raise ApiError(503, "unavailable", "API keys cannot be checked right now (the database does not "
                           "answer); try again shortly", headers={"Retry-After": "2"})
        KEY_CHECKS.labels("unknown").inc()
        return None

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="api-key-reader")

    def start(self) -> None:
        """Start reading the stored keys (the first request would start it otherwise)."""
        self._ensure_running()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            this_read, self._next_read = self._next_read, asyncio.Event()
            try:
                self._stored, self._revoked = await self._thread.run(_read_stored_keys)
                if not self._last_ok:
                    log.info("the stored API keys can be read again")
                self._last_ok = True
            except Exception as exc:  # the database is unreachable: known keys keep working, unknown ones get 503
                if self._last_ok:  # the first failure in full, then nothing more until it is over
                    log.warning("could not read the stored API keys (%s); trying again every %.0fs",
                                type(exc).__name__, self._refresh, exc_info=True)
                self._last_ok = False
            this_read.set()
            await asyncio.sleep(self._refresh)


def _read_stored_keys() -> tuple[dict[str, apikeys.KeyGrant], set[str]]:
    with background.transaction() as conn:
        return apikeys.stored_keys(conn)


async def tenant_of(
    scopes: SecurityScopes, request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The calling tenant: 401 without a valid key, then 403 if the key lacks a scope the route needs (named in
    `Security(..., scopes=...)`). Both come before the route reads anything, so neither says whether a saga
    exists; a key with the scope still gets 404 for another tenant's saga."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "unauthorized", "send an API key as `Authorization: Bearer <key>`",
                       headers={"WWW-Authenticate": "Bearer"})
    grant = await request.app.state.keyring.grant(credentials.credentials)
    if grant is None:
        raise ApiError(401, "unauthorized", "the API key is not valid",
                       headers={"WWW-Authenticate": "Bearer"})
    for scope in scopes.scopes:
        if scope not in grant.scopes:
            raise ApiError(
                403, "insufficient_scope",
                f"this API key lacks the scope {scope}, which {request.method} {_route_path(request)} needs "
                f"(the key has {', '.join(sorted(grant.scopes))}); use a key created with --scope {scope}",
                {"scope": scope}, headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'})
    key_hash = apikeys.hash_key(credentials.credentials)
    request.state.key_hash = key_hash  # open streams end when this key stops being valid
    # Who asked, for the audit log of operator actions: the tenant and its key by fingerprint, never the key.
    request.state.caller = {"via": "api", "tenant": grant.tenant, "key": f"sha256:{key_hash[:12]}"}
    return grant.tenant


def _route_path(request: Request) -> str:
    """The route's path as the OpenAPI document names it (`/v1/sagas/{saga_id}/cancel`), not the saga's id."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or request.url.path


Reader = Annotated[str, Security(tenant_of, scopes=["sagas:read"])]
"""The tenant of a key with `sagas:read`: reading, listing and following sagas."""
Starter = Annotated[str, Security(tenant_of, scopes=["sagas:start"])]
"""The tenant of a key with `sagas:start`: starting sagas."""
Operator = Annotated[str, Security(tenant_of, scopes=["sagas:operate"])]
"""The tenant of a key with `sagas:operate`: cancel, resume, compensate, rewind, input, restart."""
WebhookManager = Annotated[str, Security(tenant_of, scopes=["webhooks:manage"])]
"""The tenant of a key with `webhooks:manage`: managing webhook subscriptions."""


def document_scopes(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with each operation's scopes (from its `security` requirement) also in
    `x-required-scopes` and a sentence of its description, where a reader or a client generator sees them."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            needed = sorted({scope for requirement in operation.get("security", ())
                             for scopes in requirement.values() for scope in scopes})
            if not needed:
                continue
            operation["x-required-scopes"] = needed
            sentence = f"Needs an API key with the scope {', '.join(f'`{s}`' for s in needed)} (403 without it)."
            operation["description"] = f"{operation.get('description', '').rstrip()}\n\n{sentence}".lstrip()
    return schema
