"""`GET /v1/stats`: the caller's tenant at a glance, for the console's front page."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import Reader
from api.errors import responses
from api.schemas import Stats
from saga.disclosure import classified_reason
from saga.overview import overview

router = APIRouter(prefix="/v1", tags=["overview"])


@router.get("/stats", response_model=Stats, responses=responses(401, 403, 429, 503),
            summary="Counts, sagas that need an operator, and the last hour", operation_id="getStats")
def stats(tenant: Reader) -> JSONResponse:
    """How many of the tenant's sagas are in each status, by type; the sagas that need an operator (failed,
    awaiting input past half their wait, paused), most pressing first; and per minute of the last hour how many
    sagas started, completed, were compensated, paused or failed."""
    shown = overview(tenant).to_dict()
    for saga in shown["needs_operator"]:
        saga["reason"] = classified_reason(saga["reason"])
    return JSONResponse(shown)
