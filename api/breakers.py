"""`GET /v1/breakers`: the circuit breakers of the third parties that steps depend on, for the console and clients.

Breakers are the fleet's, not a tenant's: every key with `sagas:read` sees the same list (`/healthz` shows it too,
without a key).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import Reader
from api.errors import responses
from saga import breakers
from saga.models import BreakerPage

router = APIRouter(prefix="/v1", tags=["operations"])


@router.get("/breakers", response_model=BreakerPage, responses=responses(401, 403, 429, 503),
            summary="Each third party's circuit breaker", operation_id="listBreakers")
def list_breakers(tenant: Reader) -> JSONResponse:
    """Every circuit breaker that has counted a failure, by name: `closed`, `open` (steps that depend on it wait,
    and new sagas that would wait on it before their point of no return are refused with 503) or `half_open` (one
    call probes it), with its consecutive failures, how often it opened, and the seconds until it may be called
    again."""
    return JSONResponse({"items": [state.to_dict() for state in breakers.states()]})
