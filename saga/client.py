"""A small typed client of the HTTP API: start sagas safely, follow them, act on them.

    from saga.client import SagaClient

    with SagaClient("http://127.0.0.1:8000", api_key) as client:
        saga = client.run("demo", {"customer": "ann", "amount_cents": 1200}, timeout=120)
        print(saga.status, saga.progress.done, "/", saga.progress.total)

Every start carries an idempotency key (yours, or one the client makes), so a start retried after a
network error or a 502/503/504 gets the same saga back instead of a second one. Waiting uses the API's
long poll, so it returns as soon as the saga changes without polling in a tight loop.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import httpx

from saga.errors import SagaError
from saga.models import EventPage, Saga, SagaPage
from saga.states import FINAL, WAITING

_RETRY_STATUSES = frozenset({502, 503, 504})


class ApiError(SagaError):
    """The API refused a request; `code`, `message` and `details` come from its error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message, details)
        self.status = status
        self.code = code


class MissingScope(ApiError):
    """The API key lacks the scope this request needs (403 `insufficient_scope`): `scope` names it, and a key
    created with it (`python -m service keys create --scope ...`) is what the request takes."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(status, code, message, details)
        self.scope: str | None = details.get("scope") if isinstance(details, dict) else None


class ApiUnreachable(ApiError):
    """No answer from the API after every retry (connection refused, timeouts, gateway errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "api_unreachable", message)


@dataclass(frozen=True)
class Started:
    saga: Saga
    created: bool  # False when an earlier request with the same idempotency key made it


class SagaClient:
    """Talks to one API with one key (the key decides the tenant). Use it as a context manager, or close()."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float = 10.0, retries: int = 4, backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "saga-client/1"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Starting and following -------------------------------------------------------------------------

    def start(self, saga_type: str, input: Mapping[str, Any], *,
              idempotency_key: str | None = None) -> Started:
        """Start a saga (or get back the one this key started before). Retrying is safe: same key."""
        key = idempotency_key or str(uuid.uuid4())
        response = self._request("POST", "/v1/sagas", json={"type": saga_type, "input": dict(input)},
                                 headers={"Idempotency-Key": key})
        return Started(Saga.model_validate(response.json()), created=response.status_code == 202)

    def get(self, saga_id: str | uuid.UUID) -> Saga:
        return Saga.model_validate(self._request("GET", f"/v1/sagas/{saga_id}").json())

    def watch(self, saga_id: str | uuid.UUID, *, timeout: float | None = None, poll: float = 30.0,
              until: frozenset[str] = FINAL) -> Iterator[Saga]:
        """Each new version of the saga, the current one first, until its status is one of `until` (by
        default: final), or `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        response = self._request("GET", f"/v1/sagas/{saga_id}")
        while True:
            saga = Saga.model_validate(response.json())
            yield saga
            if saga.status in until:
                return
            etag = response.headers.get("ETag")
            while True:
                left = poll if deadline is None else min(poll, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"saga {saga_id} is still {saga.status} after {timeout}s")
                response = self._request("GET", f"/v1/sagas/{saga_id}", params={"wait": round(left, 3)},
                                         headers={"If-None-Match": etag} if etag else None,
                                         timeout=left + self.timeout)
                if response.headers.get("ETag") != etag:
                    break

    def wait(self, saga_id: str | uuid.UUID, *, timeout: float | None = None) -> Saga:
        """The saga once it is completed, compensated, paused or failed, or awaits input from you (see
        `provide_input`); TimeoutError after `timeout`."""
        *_, last = self.watch(saga_id, timeout=timeout, until=WAITING)
        return last

    def run(self, saga_type: str, input: Mapping[str, Any], *, idempotency_key: str | None = None,
            timeout: float | None = None) -> Saga:
        """Start a saga and wait for its outcome (or its request for input). Calling it again with the same
        key is safe."""
        started = self.start(saga_type, input, idempotency_key=idempotency_key)
        return self.wait(started.saga.id, timeout=timeout)

    # Reading ------------------------------------------------------------------------------------------

    def list(self, *, status: str | None = None, type: str | None = None, limit: int = 50,
             cursor: str | None = None) -> SagaPage:
        """One page of sagas, newest first; pass `next_cursor` back as `cursor` for the next."""
        params = {k: v for k, v in {"status": status, "type": type, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        return SagaPage.model_validate(self._request("GET", "/v1/sagas", params=params).json())

    def events(self, saga_id: str | uuid.UUID, *, after: int = 0, limit: int = 500) -> EventPage:
        """The saga's audit log, oldest first, from after event id `after`."""
        page = self._request("GET", f"/v1/sagas/{saga_id}/events", params={"after": after, "limit": limit})
        return EventPage.model_validate(page.json())

    # Operator actions: each is refused with ApiError 409 `action_not_allowed` when it does not apply

    def cancel(self, saga_id: str | uuid.UUID) -> Saga:
        return Saga.model_validate(self._request("POST", f"/v1/sagas/{saga_id}/cancel").json())

    def resume(self, saga_id: str | uuid.UUID) -> Saga:
        return Saga.model_validate(self._request("POST", f"/v1/sagas/{saga_id}/resume").json())

    def compensate(self, saga_id: str | uuid.UUID) -> Saga:
        return Saga.model_validate(self._request("POST", f"/v1/sagas/{saga_id}/compensate").json())

    def restart(self, saga_id: str | uuid.UUID, input: Mapping[str, Any] | None = None, *,
                idempotency_key: str | None = None) -> Started:
        """Start a compensated or failed saga again, as a new saga with the fields in `input` replaced."""
        response = self._request("POST", f"/v1/sagas/{saga_id}/restart", json={"input": dict(input or {})},
                                 headers={"Idempotency-Key": idempotency_key} if idempotency_key else None)
        return Started(Saga.model_validate(response.json()), created=response.status_code == 202)

    def provide_input(self, saga_id: str | uuid.UUID, input: Mapping[str, Any], *,
                      idempotency_key: str | None = None) -> Saga:
        """Send an `awaiting_input` saga the fields it asked for; its step runs again with them. Retrying
        is safe: same key (one is made if you give none, and kept across this call's retries)."""
        key = idempotency_key or str(uuid.uuid4())
        response = self._request("POST", f"/v1/sagas/{saga_id}/input", json={"input": dict(input)},
                                 headers={"Idempotency-Key": key})
        return Saga.model_validate(response.json())

    def rewind(self, saga_id: str | uuid.UUID, to: str, input: Mapping[str, Any] | None = None, *,
               idempotency_key: str | None = None) -> Saga:
        """Take the saga back to step `to` (undone with every later step, then run again with the fields in
        `input` replaced). Retrying is safe: same key (one is made if you give none)."""
        key = idempotency_key or str(uuid.uuid4())
        response = self._request("POST", f"/v1/sagas/{saga_id}/rewind", json={"to": to, "input": dict(input or {})},
                                 headers={"Idempotency-Key": key})
        return Saga.model_validate(response.json())

    # Transport ----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None) -> httpx.Response:
        """Send, retrying network errors and gateway errors with backoff; raise ApiError for any error answer.

        Every request the API takes is safe to repeat: reads, starts (the idempotency key stays the same),
        and operator actions (a repeat is harmless, though a repeated resume may answer 409)."""
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers,
                                              timeout=timeout if timeout is not None else self.timeout)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUSES:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response
        raise ApiUnreachable(f"no answer from {self._http.base_url} after {self.retries + 1} tries "
                             f"({problem})")


def _error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        kind = MissingScope if response.status_code == 403 and error["code"] == "insufficient_scope" else ApiError
        return kind(response.status_code, str(error["code"]), str(error["message"]), error.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, f"http_{response.status_code}", response.text[:200] or "error")
