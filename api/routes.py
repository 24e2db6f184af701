"""The `/v1/sagas` routes: start, read, list, audit log, long poll and stream, operator actions.

Every route is scoped to the caller's tenant: another tenant's saga answers 404, as if it did not exist. Each needs
one scope of the caller's key: starting `sagas:start`, reading and following `sagas:read`, operator actions
`sagas:operate` (403 without it, checked before the saga is looked at).
Blocking database work runs in FastAPI's threadpool (sync endpoints, or `run_in_threadpool`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

import saga
from api.auth import Operator, Reader, Starter
from api.errors import IDEMPOTENCY_HEADER, STARTS_UNAVAILABLE, ApiError, responses
from api.metrics import SAGAS_STARTED
from api.schemas import EventPage, ProvideInput, RestartSaga, RewindSaga, Saga, SagaPage, StartSaga
from saga.disclosure import event_for_tenant, saga_for_tenant
from saga.inputs import resume_index
from saga.runner import send_forward
from saga.states import FINAL, SagaStatus
from saga.store import SagaRecord

router = APIRouter(prefix="/v1/sagas", tags=["sagas"])

# Statuses after which a saga never changes again (paused and failed wait for an operator, so they may).
SETTLED = ("completed", "compensated")
# The longest long poll, in seconds.
MAX_WAIT = 60.0
# Seconds between keep-alive comments on a quiet event stream (proxies close idle connections).
KEEP_ALIVE = 15.0
# A query string may carry what PostgreSQL cannot compare with: refuse NUL characters up front.
NO_NUL = r"^[^\x00]*$"

SagaId = Annotated[UUID, Path(description="The saga's id.")]


def key_header(description: str) -> Any:
    """An `Idempotency-Key` header (printable ASCII; required unless its parameter has a default), with what
    repeating it means on this route."""
    return Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$",
                  description=description)


class SagaJSON(JSONResponse):
    """A saga's JSON with an `ETag` that changes whenever anything in it does (for `If-None-Match`)."""

    def __init__(self, record: SagaRecord, status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(saga_for_tenant(record.to_dict()), status_code=status_code, headers=headers)
        self.headers["ETag"] = _etag(self.body)


def _etag(body: bytes | memoryview) -> str:
    return '"' + hashlib.blake2b(bytes(body), digest_size=12).hexdigest() + '"'


def _bare(tag: str | None) -> str | None:
    return tag.strip().removeprefix("W/") if tag else None


# What a client can do next with the saga it started (OpenAPI links; Schemathesis follows them statefully).
_NEXT = {name: {"operationId": operation, "parameters": {"saga_id": "$response.body#/id"}}
         for name, operation in (("read", "getSaga"), ("events", "listSagaEvents"), ("cancel", "cancelSaga"),
                                 ("resume", "resumeSaga"), ("compensate", "compensateSaga"),
                                 ("restart", "restartSaga"), ("input", "provideInput"),
                                 ("rewind", "rewindSaga"))}


@router.post(
    "", status_code=202, response_model=Saga,
    responses={202: {"description": "The saga, accepted.", "links": _NEXT},
               200: {"model": Saga, "description": "A replay: the saga this idempotency key started before.",
                     "links": _NEXT},
               **responses(400, 401, 403, 404, 413, 422, 429, 503, described={503: STARTS_UNAVAILABLE})},
    summary="Start a saga", operation_id="startSaga",
)
def start_saga(
    body: StartSaga, tenant: Starter, background: BackgroundTasks,
    idempotency_key: Annotated[str, key_header(
        "Unique per saga (printable ASCII); repeat it when you retry. Same key and body: the same saga back "
        "(200); same key, other body: 422.")],
) -> SagaJSON:
    """Validate the input against the saga type's model, record the saga and its steps in one
    transaction, then dispatch it (if the broker is down it stays `pending` and recovery dispatches it).
    Nothing is written when the input is invalid. While the circuit breaker of a third party that a step before the
    type's point of no return depends on is open, a new saga is refused with 503 `dependency_unavailable` and
    `Retry-After` (unless the deployment holds such sagas instead: `SAGA_BREAKER_ADMISSION=hold`); a replay of a key
    is answered as always. A tenant with as many sagas in flight as its limit (`SAGA_TENANT_MAX_ACTIVE`) gets the saga
    `pending` with `admitted` false: it starts, oldest first, as the tenant's sagas end."""
    return _accepted(saga.start(body.type, body.input, idempotency_key=idempotency_key, tenant=tenant,
                                dispatch=False), background)


def _accepted(started: saga.Started, background: BackgroundTasks) -> SagaJSON:
    """The answer to a start or a restart: 202 and the new saga, dispatched once the answer is out (the ledger
    already holds it, and recovery sends it if this fails), or once a slot of its tenant frees if it is held
    (`admitted` false); 200 and the saga a replayed key made before."""
    record = started.saga
    SAGAS_STARTED.labels(record.type, "created" if started.created else "replayed").inc()
    if started.created and record.admitted:
        background.add_task(send_forward, record.id, record.type, 0, record.version)
    return SagaJSON(record, 202 if started.created else 200, headers={"Location": f"/v1/sagas/{record.id}"})


@router.get("", response_model=SagaPage, responses=responses(401, 403, 422, 429, 503), summary="List sagas, newest first",
            operation_id="listSagas")
def list_sagas(
    tenant: Reader,
    status: Annotated[SagaStatus | None, Query(description="Only sagas in this status.")] = None,
    type: Annotated[str | None, Query(
        max_length=100, pattern=NO_NUL, description="Only sagas of this type.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(
        max_length=200, description="`next_cursor` of the previous page.")] = None,
    created_after: Annotated[str | None, Query(
        max_length=40, json_schema_extra={"format": "date-time"},
        description="Only sagas created at or after this time (ISO 8601 with a time zone, e.g. "
                    "`2026-12-01T09:00:00Z`).")] = None,
    idempotency_key: Annotated[str | None, Query(
        max_length=255, pattern=NO_NUL, description="Only the saga started with this Idempotency-Key.")] = None,
    include_input: Annotated[bool, Query(description="Give each saga's input too (left out by default: "
                                                     "`input` is null).")] = False,
    restart_of: Annotated[UUID | None, Query(description="Only the saga that restarted this one.")] = None,
) -> JSONResponse:
    records = saga.list_sagas(tenant, status=status.value if status else None, type_=type, limit=limit + 1,
                              before=_decode_cursor(cursor) if cursor else None, since=_instant(created_after),
                              idempotency_key=idempotency_key, with_input=include_input, restart_of=restart_of)
    more = len(records) > limit
    records = records[:limit]
    return JSONResponse({
        "items": [saga_for_tenant(r.to_dict()) for r in records],
        "next_cursor": _encode_cursor(records[-1].created_at, records[-1].id) if more else None,
    })


def _instant(value: str | None) -> datetime | None:
    """An ISO 8601 time with a time zone (numbers are not times here), or a 422 saying what is expected."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ApiError(422, "invalid_request", f"created_after {value!r} is not an ISO 8601 time with a time zone, "
                       "e.g. 2026-12-01T09:00:00Z")
    return parsed


def _encode_cursor(created_at: datetime, saga_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{saga_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created, saga_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        return datetime.fromisoformat(created), UUID(saga_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "invalid_request", "cursor is not one this API returned",
                       [{"field": "cursor", "message": "not a cursor from next_cursor"}]) from None


@router.get("/{saga_id}", response_model=Saga, responses=responses(401, 403, 404, 422, 429, 503), summary="Read a saga",
            operation_id="getSaga")
async def get_saga(
    saga_id: SagaId, tenant: Reader, request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description=(
        "Long poll: hold the answer up to this many seconds until the saga changes (from the version in "
        "`If-None-Match`, else from the one when the request arrived). A saga that can no longer change "
        "answers at once."))] = 0,
    if_none_match: Annotated[str | None, Header(
        alias="If-None-Match", max_length=200,
        description="The `ETag` of a version you already have.")] = None,
) -> SagaJSON:
    """The saga with its steps, each step's status and attempts, and `progress`."""
    record = await run_in_threadpool(saga.load, saga_id, tenant)
    response = SagaJSON(record)
    known = _bare(if_none_match) or _bare(response.headers["ETag"])
    if wait <= 0 or known != _bare(response.headers["ETag"]):
        return response
    state = request.app.state
    key_hash: str = request.state.key_hash
    slot = state.streams.take(tenant, "long_poll")
    try:
        deadline = time.monotonic() + wait
        while record.status not in SETTLED and (remaining := deadline - time.monotonic()) > 0:
            # Looked at each second: a revoked key's long poll ends as its streams do.
            if not await state.watcher.changed(saga_id, record.updated_at, min(remaining, 1.0)):
                if state.keyring.tenant_known(key_hash) != tenant:
                    raise ApiError(401, "unauthorized", "the API key is no longer valid",
                                   headers={"WWW-Authenticate": "Bearer"})
                continue
            record = await run_in_threadpool(saga.load, saga_id, tenant)
            response = SagaJSON(record)
            if _bare(response.headers["ETag"]) != known:
                break
    finally:
        slot.give_back()
    return response


@router.get(
    "/{saga_id}/stream", response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description":
                     "Server-Sent Events: one `saga` event with the saga's JSON now and after every change; "
                     "the stream ends once the saga is completed, compensated, paused or failed."},
               **responses(401, 403, 404, 422, 429, 503)},
    summary="Follow a saga as Server-Sent Events", operation_id="streamSaga",
)
async def stream_saga(saga_id: SagaId, tenant: Reader, request: Request) -> StreamingResponse:
    """One `saga` event now and after every change, until the saga ends, the key stops being valid, or the
    stream reaches its maximum age (`SAGA_API_STREAM_SECONDS`; reconnect to go on). 429 over the open streams
    allowed per tenant or in all."""
    record = await run_in_threadpool(saga.load, saga_id, tenant)
    state = request.app.state
    slot = state.streams.take(tenant, "stream")
    key_hash: str = request.state.key_hash
    ends = time.monotonic() + state.stream_seconds

    def over() -> str | None:
        """Why the stream must end now, if it must."""
        if state.keyring.tenant_known(key_hash) != tenant:
            return "the API key is no longer valid"
        if time.monotonic() >= ends:
            return "the stream reached its maximum age; reconnect to go on"
        return None

    async def events() -> AsyncIterator[str]:
        try:
            current = record
            while True:
                yield f"event: saga\ndata: {json.dumps(saga_for_tenant(current.to_dict()))}\n\n"
                if current.status in FINAL:
                    return
                quiet = 0.0
                # Checked each second, so a revoked key's streams end within about two.
                while not await state.watcher.changed(saga_id, current.updated_at, 1.0):
                    if reason := over():
                        yield f": {reason}\n\n"
                        return
                    quiet += 1.0
                    if quiet >= KEEP_ALIVE:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                if reason := over():
                    yield f": {reason}\n\n"
                    return
                current = await run_in_threadpool(saga.load, saga_id, tenant)
        finally:
            slot.give_back()

    stream = events()
    slot.outlive(stream)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{saga_id}/events", response_model=EventPage, responses=responses(401, 403, 404, 422, 429, 503),
            summary="A saga's audit log, oldest first", operation_id="listSagaEvents")
def saga_events(
    saga_id: SagaId, tenant: Reader,
    after: Annotated[int, Query(ge=0, le=2**62, description="Only events after this event id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JSONResponse:
    found = saga.events(saga_id, tenant, after=after, limit=limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return JSONResponse({"items": [event_for_tenant(e.to_dict(), tenant) for e in found],
                         "next_after": found[-1].id if more else None})


def _action(name: str, summary: str, doc: str) -> None:
    def act(saga_id: SagaId, tenant: Operator, request: Request) -> SagaJSON:
        return SagaJSON(getattr(saga, name)(saga_id, tenant, by=request.state.caller))

    act.__name__ = f"{name}_saga"
    act.__doc__ = doc
    router.post(f"/{{saga_id}}/{name}", response_model=Saga, responses=responses(401, 403, 404, 409, 422, 429, 503),
                summary=summary, operation_id=f"{name}Saga")(act)


@router.post(
    "/{saga_id}/input", response_model=Saga, responses=responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    summary="Give a saga the input it awaits", operation_id="provideInput",
)
def provide_input(
    saga_id: SagaId, body: ProvideInput, tenant: Operator, background: BackgroundTasks, request: Request,
    idempotency_key: Annotated[str, key_header(
        "Unique per input you send (printable ASCII); repeat it when you retry. Same key and input: the saga "
        "back, nothing changed; same key, other input: 422.")],
) -> SagaJSON:
    """For a saga in `awaiting_input`: new values of the fields its `awaiting_input.fields` names. The
    whole input is validated again (nothing changes when it is invalid); the step that asked runs again with
    it, and the saga goes on from there, keeping what earlier steps did. The audit log records it
    (`input_received`) with who asked (this key's tenant and fingerprint) and the fields sent. 409 unless the saga
    awaits input (a wait that ended is undone instead)."""
    started = saga.provide_input(saga_id, body.input, tenant, idempotency_key=idempotency_key, dispatch=False,
                                 by=request.state.caller)
    if started.created:
        record = started.saga
        background.add_task(send_forward, saga_id, record.type, resume_index(record), record.version)
    return SagaJSON(started.saga)


@router.post(
    "/{saga_id}/rewind", response_model=Saga, responses=responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    summary="Take a saga back to an earlier step", operation_id="rewindSaga",
)
def rewind_saga(
    saga_id: SagaId, body: RewindSaga, tenant: Operator, request: Request,
    idempotency_key: Annotated[str, key_header(
        "Unique per rewind (printable ASCII); repeat it when you retry: the saga back, nothing changed.")],
) -> SagaJSON:
    """Undo, newest first, step `to` and every later step that acted, then run forward again from `to` with
    the fields in `input` replaced (validated as a whole first: 422 naming the fields, nothing changed). The
    answer shows the saga `compensating` with `rewinding_to`; the audit log records the rewind with who asked
    (this key's tenant and fingerprint) and the fields changed. 409 with the reason where it cannot be safe:
    past the point of no return (the pivot succeeded), over a step that may have acted and has no
    compensation, or while a step is in flight (only `awaiting_input`, `paused` and `completed` sagas)."""
    return SagaJSON(saga.rewind(saga_id, body.to, body.input, tenant, idempotency_key=idempotency_key,
                                by=request.state.caller))


_action("cancel", "Cancel a saga",
        "Compensate what was done (a saga awaiting input too); a step in flight finishes first (the answer then "
        "shows `cancel_requested`). "
        "If that step is the pivot and it succeeds, the cancel is refused then (event `cancel_refused`) and the "
        "saga goes forward; if it fails, the saga is undone with nothing charged. 409 once the saga is past its "
        "point of no return or over. Repeating a cancel is harmless. The audit log records the cancel "
        "(`cancel_requested`) with who asked (this key's tenant and fingerprint).")
_action("resume", "Resume a paused saga",
        "Continue a `paused` saga from its first unfinished step. 409 unless the saga is paused (so a "
        "repeated resume changes nothing). The audit log records it (`saga_resumed`) with who asked (this key's "
        "tenant and fingerprint).")
_action("compensate", "Re-run the compensations of a failed saga",
        "409 unless the saga is `failed` (so a repeated request changes nothing). The audit log records it "
        "(`compensation_rerun`) with who asked (this key's tenant and fingerprint).")


@router.post(
    "/{saga_id}/restart", status_code=202, response_model=Saga,
    responses={202: {"description": "The new saga, accepted.", "links": _NEXT},
               200: {"model": Saga, "description": "A replay: the restart this idempotency key made before.",
                     "links": _NEXT},
               **responses(400, 401, 403, 404, 409, 413, 422, 429, 503, described={503: STARTS_UNAVAILABLE})},
    summary="Start a compensated or failed saga again", operation_id="restartSaga",
)
def restart_saga(
    saga_id: SagaId, tenant: Operator, background: BackgroundTasks, request: Request, body: RestartSaga | None = None,
    idempotency_key: Annotated[str | None, key_header(
        "The new saga's key (default `restart-of:<id>`); repeat it when you retry.")] = None,
) -> SagaJSON:
    """A new saga of the same type from its first step, with this saga's input and the fields in `input`
    replaced (validated as a whole; nothing is written when it is invalid), linked both ways: the new saga's
    `restart_of` is this one, this one's `restarted_as` the new one. Both audit logs record who asked (this key's
    tenant and fingerprint): the new saga's `saga_accepted`, this one's `saga_restarted`. 409 unless this saga is
    `compensated` or `failed`, or once it was restarted under another key. 503 `dependency_unavailable` as for a
    start, while a breaker the new saga would wait on is open."""
    return _accepted(saga.restart(saga_id, tenant, (body or RestartSaga()).input, idempotency_key=idempotency_key,
                                  dispatch=False, by=request.state.caller), background)
