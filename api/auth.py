"""Bearer API keys: each request's key names its tenant, and every read and write is scoped to it."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import keys as apikeys
from api.errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


class KeyRing:
    """Finds the tenant of a key: `SAGA_API_KEYS` first, then stored keys, remembered for `ttl` seconds.

    The memory keeps the start of a saga to one database transaction; a revoked key stops working
    within `ttl` seconds.
    """

    def __init__(self, configured: dict[str, str], ttl: float = 10.0) -> None:
        self._configured = configured
        self._ttl = ttl
        self._stored: dict[str, tuple[str, float]] = {}

    async def tenant(self, key: str) -> str | None:
        key_hash = apikeys.hash_key(key)
        if key_hash in self._configured:
            return self._configured[key_hash]
        remembered = self._stored.get(key_hash)
        if remembered and remembered[1] > time.monotonic():
            return remembered[0]
        tenant = await run_in_threadpool(apikeys.stored_tenant, key_hash)
        if tenant is None:
            self._stored.pop(key_hash, None)
        else:
            self._stored[key_hash] = (tenant, time.monotonic() + self._ttl)
        return tenant


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
    return tenant


Tenant = Annotated[str, Depends(tenant_of)]
