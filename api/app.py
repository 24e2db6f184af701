"""The FastAPI application: `/v1/sagas`, `/v1/breakers`, `/healthz`, `/metrics`, OpenAPI at `/openapi.json`, docs
at `/docs` and `/redoc` (with their scripts and styles, so they work without internet).

`create_app()` loads the Celery app it serves (`SAGA_APP`: the job board's `workers.app`, or a shop's own) with
every saga type it declares, once, so the API knows them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline

from api import breakers, console, errors, health, metrics, stats, webhooks
from api import keys as apikeys
from api.auth import KeyRing, document_scopes
from api.headers import SecurityHeaders
from api.limits import DEFAULT_MAX_BODY, BodySizeLimit
from api.routes import router
from api.streams import StreamSlots
from api.watch import ChangeWatcher
from saga import tracing
from saga.engine import find_sagas
from saga.settings import get_settings
from workers.settings import check_startup, service_settings

DESCRIPTION = """
Start multi-step business operations ("sagas") and follow them until every step happened exactly once
or everything that can be undone was undone.

Every `/v1` request carries an API key: `Authorization: Bearer <key>`. Each key belongs to one tenant;
a tenant sees only its own sagas (another tenant's saga is a 404).

Each key has scopes, and each operation needs one (listed in its `security` requirement, its
`x-required-scopes` and its description): `sagas:read` to read, list and follow sagas, their audit logs,
the stats and the circuit breakers; `sagas:start` to start sagas; `sagas:operate` for cancel, resume, compensate, rewind, input and
restart; `webhooks:manage` for webhook subscriptions. A key without the scope gets `403`
`insufficient_scope` naming it, whatever the saga (another tenant's saga is still a 404 with the scope).

Every error is `{"error": {"code", "message", "details"}}`.
"""


def create_app(max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The API application, ready to serve (uvicorn: `api.app:create_app` with `--factory`)."""
    celery_app = find_sagas(service_settings().app).app
    check_startup()
    traced = get_settings().tracing
    if traced:
        tracing.install("saga-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.keyring.start()
        yield
        await app.state.watcher.stop()
        await app.state.keyring.stop()

    # /docs and /redoc with their scripts and styles served from the package, not a CDN.
    app = FastAPIOffline(title="Durable sagas", version="1", description=DESCRIPTION, lifespan=lifespan,
                         static_url="/docs-assets")
    app.state.keyring = KeyRing(apikeys.configured_keys())
    app.state.watcher = ChangeWatcher()
    settings = service_settings()
    app.state.streams = StreamSlots(settings.api_streams_per_tenant, settings.api_streams)
    app.state.stream_seconds = settings.api_stream_seconds
    errors.install(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document (built once, then kept), with each operation's scopes where readers look."""
        if app.openapi_schema is None:
            document_scopes(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(webhooks.router)
    app.include_router(webhooks.saga_router)
    app.include_router(stats.router)
    app.include_router(breakers.router)
    console.install(app)

    probes = health.Probes(celery_app)
    metrics.LAST_LEDGER.read = probes.oldest_unfinished
    metrics.LAST_LEDGER.webhooks = probes.webhook_backlog
    metrics.LAST_LEDGER.breakers = probes.breakers
    # The text is built in a worker thread at most once a second: a flood of scrapes costs no more than one.
    exposition = health.Reading(metrics.exposition, 1.0)

    @app.get("/healthz", response_model=health.HealthReport, responses={503: {"model": health.HealthReport}},
             tags=["operations"], operation_id="health",
             summary="Whether the database and the broker answer, and each circuit breaker's state (no key needed; "
                     "read at most once a second)")
    async def healthz() -> JSONResponse:
        """200 `ok` while the database and the broker answer, else 503 `unavailable`. An open circuit breaker
        does not make the API unhealthy: it is listed in `breakers`, and only new sagas that would wait on it are
        refused."""
        database, broker = await asyncio.gather(probes.ledger.get(), probes.broker.get())
        ok = database.error is None and broker is None
        return JSONResponse({
            "status": "ok" if ok else "unavailable",
            "database": {"ok": database.error is None, "error": database.error},
            "broker": {"ok": broker is None, "error": broker},
            "breakers": [state.to_dict() for state in database.breakers],
        }, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response, tags=["operations"], operation_id="metrics",
             summary="Prometheus metrics (no key needed; read and built at most once a second)",
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        await probes.ledger.get()
        return Response(await exposition.get(), media_type=metrics.CONTENT_TYPE)

    # Outermost last: metrics see every answer, the size limit runs before anything reads the body.
    app.add_middleware(errors.CatchAll)
    app.add_middleware(BodySizeLimit, max_bytes=max_body)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(metrics.RequestMetrics)
    if traced:
        tracing.instrument_api(app)
    return app
