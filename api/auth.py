"""Bearer API keys: each request's key names its tenant, and every read and write is scoped to it."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import keys as apikeys
from api.errors import ApiError
from api.metrics import KEY_LOOKUPS

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


class KeyRing:
    """Finds the tenant of a key: `SAGA_API_KEYS` first, then stored keys, remembered for `ttl` seconds.

    The memory keeps the start of a saga to one database transaction; a revoked key stops working within
    `ttl` seconds. A key that cannot be a stored one (they all look like `saga_` and 43 characters) is refused
    without asking the database, an unknown one is remembered as unknown for a second, and at most
    `lookups_per_second` unknown keys are looked up (the others are answered 429, since a genuine new key may
    be among them): a flood of bad keys costs a few queries, not one each.
    """

    def __init__(self, configured: dict[str, str], ttl: float = 10.0, lookups_per_second: float = 20.0) -> None:
        self._configured = configured
        self._ttl = ttl
        self._stored: dict[str, tuple[str, float]] = {}
        self._unknown: dict[str, float] = {}
        self._rate = lookups_per_second
        self._budget = lookups_per_second
        self._refilled = time.monotonic()

    async def tenant(self, key: str) -> str | None:
        key_hash = apikeys.hash_key(key)
        if key_hash in self._configured:
            return self._configured[key_hash]
        if not apikeys.STORED_KEY.fullmatch(key):
            KEY_LOOKUPS.labels("malformed").inc()
            return None
        now = time.monotonic()
        remembered = self._stored.get(key_hash)
        if remembered and remembered[1] > now:
            return remembered[0]
        if self._unknown.get(key_hash, 0.0) > now:
            KEY_LOOKUPS.labels("known_bad").inc()
            return None
        if not self._spend(now):
            KEY_LOOKUPS.labels("throttled").inc()
            raise ApiError(429, "too_many_requests", "too many unknown API keys at once; try again in a second",
                           headers={"Retry-After": "1"})
        KEY_LOOKUPS.labels("database").inc()
        tenant = await run_in_threadpool(apikeys.stored_tenant, key_hash)
        if tenant is None:
            self._stored.pop(key_hash, None)
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[key_hash] = now + 1.0
        else:
            self._stored[key_hash] = (tenant, now + self._ttl)
        return tenant

    def _spend(self, now: float) -> bool:
        """Take one database lookup from a bucket refilled at `lookups_per_second`."""
        self._budget = min(self._rate, self._budget + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True


async def tenant_of(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The calling tenant; 401 without a valid key."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "unauthorized", "send an API key as `Authorization: Bearer <key>`",
                       headers={"WWW-Authenticate": "Bearer"})
    tenant = await request.app.state.keyring.tenant(credentials.credentials)
    if tenant is None:
        raise ApiError(401, "unauthorized", "the API key is not valid",
                       headers={"WWW-Authenticate": "Bearer"})
    # Who asked, for the audit log of operator actions: the tenant and its key by fingerprint, never the key.
    request.state.caller = {"via": "api", "tenant": tenant,
                            "key": f"sha256:{apikeys.hash_key(credentials.credentials)[:12]}"}
    return tenant


Tenant = Annotated[str, Depends(tenant_of)]
