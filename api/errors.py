"""One error shape everywhere: `{"error": {"code", "message", "details"}}`, and never a stack trace.

Engine errors (`SagaError`) keep their code (`dependency_unavailable` is a 503 with `Retry-After`); FastAPI's
request validation, Starlette's HTTP errors and anything unexpected are turned into the same shape here.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import ErrorResponse
from saga.errors import DependencyUnavailable, InvalidInput, SagaError

log = logging.getLogger("api.errors")

# HTTP status of each engine error code.
SAGA_ERROR_STATUS = {
    "unknown_saga_type": 404,
    "invalid_input": 422,
    "idempotency_key_reused": 422,
    "saga_not_found": 404,
    "action_not_allowed": 409,
    "saga_version_not_declared": 409,
    "unknown_step": 422,
    "dependency_unavailable": 503,
}

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 413: "payload_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
    503: "unavailable",
}
# Seconds a client is asked to wait before trying again when the ledger is unreachable.
RETRY_AFTER = 2

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ApiError(Exception):
    """An error the API answers with directly (authentication, a missing header, a bad cursor)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


# What a 503 of a route that starts a saga means.
STARTS_UNAVAILABLE = (
    "Nothing was done; try again after `Retry-After` seconds (with the same Idempotency-Key). `unavailable`: the saga "
    "ledger is unreachable. `dependency_unavailable`: a third party that a step before the saga type's point of no "
    "return depends on is down (its circuit breaker is open), so a new saga would only wait; `details` names the "
    "`dependency`, its breaker's `state` and `retry_after` (seconds, as in the header).")
_RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                       "schema": {"type": "integer", "minimum": 1}}}


def responses(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries saying these statuses answer with the error shape (`described` gives some a description of
    their own); a 503 carries `Retry-After`."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = (described or {}).get(status) or _HTTP_CODES.get(status, "error").replace("_", " ")
        entries[status] = {"model": ErrorResponse, "description": text}
        if status == 503:
            entries[status]["headers"] = _RETRY_AFTER_HEADER
    return entries


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one shape."""
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(SagaError, _saga_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for unreachable in (OperationalError, InterfaceError):
        app.add_exception_handler(unreachable, _ledger_unreachable)  # type: ignore[arg-type]
    # The last resort, for an error in a middleware outside `CatchAll`.
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _saga_error(_: Request, exc: SagaError) -> JSONResponse:
    details = exc.details
    headers = None
    if isinstance(exc, InvalidInput) and isinstance(details, list):
        # The engine names fields inside the input; the API names them inside the request body.
        details = [{**p, "field": p["field"] if p["field"] == "input" else f"input.{p['field']}"}
                   for p in details]
    if isinstance(exc, DependencyUnavailable):
        headers = {"Retry-After": str(details["retry_after"])}
    return error_response(SAGA_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message, details, headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [{"field": _field(e), "message": e["msg"]} for e in exc.errors()]
    missing = ("missing", "string_too_short")
    if any(_field(e) == IDEMPOTENCY_HEADER and e["type"] in missing for e in exc.errors()):
        return error_response(400, "idempotency_key_required",
                              f"the {IDEMPOTENCY_HEADER} header is required: send a unique key per request "
                              "(a new saga, new input) and repeat it when you retry",
                              [{"field": IDEMPOTENCY_HEADER, "message": "required"}])
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return error_response(422, "invalid_request", f"invalid request: {summary}", problems)


def _field(error: Any) -> str:
    """`body.input.x` -> `input.x`; `query.limit` -> `limit`; the body itself (not JSON, say) -> `body`."""
    if error["type"] == "json_invalid":
        return "body"
    parts = [str(p) for p in error["loc"]]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:] or parts
    return ".".join(parts)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's 400 for a body it could not decode
        problem = {"field": "body", "message": f"is not valid UTF-8 JSON ({exc.__cause__.reason} at byte "
                                               f"{exc.__cause__.start})"}
        return error_response(422, "invalid_request", f"invalid request: body: {problem['message']}", [problem])
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # Starlette names only the first route matching the path; a path can have several (GET and POST).
        headers["Allow"] = ", ".join(sorted({
            method for route in request.app.router.routes
            if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
            for method in route.methods or ()}))
    return error_response(exc.status_code, code, message, headers=headers or None)


async def _ledger_unreachable(request: Request, exc: DBAPIError) -> JSONResponse:
    """PostgreSQL down or restarting: nothing was done, and the same request (same Idempotency-Key) may be sent
    again."""
    cause = str(exc.orig or exc).splitlines()
    log.warning("ledger unreachable on %s %s: %s", request.method, request.url.path,
                cause[0] if cause else type(exc).__name__)
    return error_response(503, "unavailable", "the saga ledger is unreachable; nothing was done, try again "
                          "(with the same Idempotency-Key)", headers={"Retry-After": str(RETRY_AFTER)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _internal_error()


def _internal_error() -> JSONResponse:
    return error_response(500, "internal_error", "internal error; it was logged on the server")


class CatchAll:
    """ASGI middleware answering an unexpected exception with a 500 in the error shape, and logging it.

    Starlette's own last-resort handler re-raises after answering, which makes the server drop the
    keep-alive connection; answering here keeps it usable for the client's next request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch_start)
        except Exception as exc:
            if started:
                raise  # half an answer is out: only dropping the connection tells the client
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            await _internal_error()(scope, receive, send)
