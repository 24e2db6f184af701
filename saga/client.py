"""A small typed client of the HTTP API: start sagas safely, follow them, act on them.

    from saga.client import SagaClient

    with SagaClient("http://127.0.0.1:8000", api_key) as client:
        saga = client.run("demo", {"customer": "ann", "amount_cents": 1200}, timeout=120)
        print(saga.status, saga.progress.done, "/", saga.progress.total)

Every start carries an idempotency key (yours, or one the client makes), so a start retried after a
network error or a 502/503/504 gets the same saga back instead of a second one. A start refused because a third
party the saga depends on is down raises `DependencyUnavailable` at once, with `retry_after`. Waiting uses the API's
long poll, so it returns as soon as the saga changes without polling in a tight loop.

It also manages the tenant's webhook endpoints (`create_webhook`, `list_webhooks`, ...; the key needs the
scope `webhooks:manage`).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx

from saga import errors
from saga.errors import SagaError
from saga.models import Breaker, EventPage, Saga, SagaPage, Webhook, WebhookDetail
from saga.states import FINAL, WAITING

_RETRY_STATUSES = frozenset({502, 503, 504})
# Transport errors after which the request surely never reached the API.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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


class DependencyUnavailable(ApiError, errors.DependencyUnavailable):
    """A new saga was refused (503 `dependency_unavailable`): a third party that one of its steps before the point
    of no return depends on is down (its circuit breaker is open). `dependency` names it; try again after
    `retry_after` seconds (with the same idempotency key). Not retried by the client: the wait is the breaker's
    cool-down, seconds to minutes. Also a `saga.DependencyUnavailable`, as `saga.start` raises it in-process."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(status, code, message, details)
        given = details if isinstance(details, dict) else {}
        self.dependency: str | None = given.get("dependency")
        self.state: str | None = given.get("state")
        self.retry_after: float | None = given.get("retry_after")


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
        """Start a saga (or get back the one this key started before). Retrying is safe: same key.
        DependencyUnavailable when a third party the saga would wait on before its point of no return is down."""
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

    def breakers(self) -> list[Breaker]:
        """Every circuit breaker that has counted a failure, by name (the key needs `sagas:read`)."""
        return [Breaker.model_validate(item) for item in self._request("GET", "/v1/breakers").json()["items"]]

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

    # Webhook endpoints: the key needs the scope `webhooks:manage`; an endpoint of another tenant (or none) is
    # ApiError 404 `webhook_not_found`, a URL or event type the API refuses ApiError 422 naming the field.

    def create_webhook(self, url: str, event_types: Sequence[str] | None = None,
                       description: str | None = None) -> Webhook:
        """Register an endpoint that gets the events of this tenant's sagas (`event_types`, default every
        `saga.*` type). Its `secret` is in this answer and never again. Not repeated after a lost answer (a
        repeat would register a second endpoint): ApiUnreachable then, and `list_webhooks` tells."""
        body: dict[str, Any] = {"url": url}
        if event_types is not None:
            body["event_types"] = list(event_types)
        if description is not None:
            body["description"] = description
        return Webhook.model_validate(self._request("POST", "/v1/webhooks", json=body, repeat=False).json())

    def list_webhooks(self) -> list[Webhook]:
        """The tenant's endpoints, oldest first."""
        page = self._request("GET", "/v1/webhooks").json()
        return [Webhook.model_validate(item) for item in page["items"]]

    def get_webhook(self, endpoint_id: str | uuid.UUID) -> WebhookDetail:
        """An endpoint and its latest delivery attempts, newest first."""
        return WebhookDetail.model_validate(self._request("GET", f"/v1/webhooks/{endpoint_id}").json())

    def rotate_webhook_secret(self, endpoint_id: str | uuid.UUID, keep_old_for: float | None = None) -> Webhook:
        """A new signing secret (in `secret`, shown this once); the one before still signs beside it for
        `keep_old_for` seconds (default: the service's setting, a day), time for receivers to switch. Not
        repeated after a lost answer: a second rotation would stop the secret receivers hold now at once."""
        body = None if keep_old_for is None else {"keep_old_for": float(keep_old_for)}
        response = self._request("POST", f"/v1/webhooks/{endpoint_id}/rotate-secret", json=body, repeat=False)
        return Webhook.model_validate(response.json())

    def disable_webhook(self, endpoint_id: str | uuid.UUID) -> Webhook:
        """Stop delivering to it; the events it has waiting stay until it is enabled, and events of sagas meanwhile
        are not kept for it (`replay_saga_webhooks` sends them)."""
        return Webhook.model_validate(self._request("POST", f"/v1/webhooks/{endpoint_id}/disable").json())

    def enable_webhook(self, endpoint_id: str | uuid.UUID) -> Webhook:
        """Deliver to it again, from where deliveries stopped (a 410 or a give-up disables an endpoint)."""
        return Webhook.model_validate(self._request("POST", f"/v1/webhooks/{endpoint_id}/enable").json())

    def delete_webhook(self, endpoint_id: str | uuid.UUID) -> None:
        """Delete the endpoint and every delivery still owed to it. A retry after a lost answer may find it gone
        already: ApiError 404 `webhook_not_found`."""
        self._request("DELETE", f"/v1/webhooks/{endpoint_id}")

    def replay_failed_webhooks(self, endpoint_id: str | uuid.UUID) -> int:
        """Deliver the endpoint's given-up events again (enable it first if it is disabled); how many."""
        return int(self._request("POST", f"/v1/webhooks/{endpoint_id}/replay-failed").json()["deliveries"])

    def replay_saga_webhooks(self, saga_id: str | uuid.UUID, endpoint_id: str | uuid.UUID | None = None) -> int:
        """Deliver every event of the saga again to each enabled endpoint that subscribes to it (or only to
        `endpoint_id`), with the `webhook-id` it had before; how many deliveries. A saga of another tenant is
        ApiError 404 `saga_not_found`."""
        body = None if endpoint_id is None else {"endpoint_id": str(endpoint_id)}
        response = self._request("POST", f"/v1/sagas/{saga_id}/replay-webhooks", json=body)
        return int(response.json()["deliveries"])

    # Transport ----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None,
                 repeat: bool = True) -> httpx.Response:
        """Send, retrying network errors and gateway errors with backoff (not a 503 `dependency_unavailable`: it is
        raised at once, as DependencyUnavailable); raise ApiError for any error answer.

        Most requests are safe to repeat: reads, starts (the idempotency key stays the same), operator actions
        (a repeat is harmless, though a repeated resume may answer 409), and webhook switches and replays. The
        others (`repeat=False`: registering a webhook endpoint, rotating its secret) are sent again only when
        the try before surely did nothing (no connection, or a 503); when an answer may have been lost on the
        way, ApiUnreachable says so at once."""
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers,
                                              timeout=timeout if timeout is not None else self.timeout)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if not repeat and not isinstance(exc, _NOT_SENT):
                    raise self._maybe_done(method, path, problem) from None
                continue
            if response.status_code in _RETRY_STATUSES and not _dependency_unavailable(response):
                problem = f"HTTP {response.status_code}"
                if not repeat and response.status_code != 503:
                    raise self._maybe_done(method, path, problem)
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response
        raise ApiUnreachable(f"no answer from {self._http.base_url} after {self.retries + 1} tries "
                             f"({problem})")

    def _maybe_done(self, method: str, path: str, problem: str) -> ApiUnreachable:
        """The error for a request that is not safe to repeat and whose answer was lost."""
        return ApiUnreachable(f"no answer from {self._http.base_url} to {method} {path} ({problem}): it may have "
                              "been done, so it is not sent again (a repeat would do it twice)")


def _code(response: httpx.Response) -> str | None:
    """The error code of an answer in the API's error shape, else None."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _dependency_unavailable(response: httpx.Response) -> bool:
    """A 503 refusing a new saga for a dependency that is down: retrying within seconds would only be refused."""
    return response.status_code == 503 and _code(response) == errors.DependencyUnavailable.code


def _error(response: httpx.Response) -> ApiError:
    kinds: dict[tuple[int, str], type[ApiError]] = {(403, "insufficient_scope"): MissingScope,
                                                     (503, errors.DependencyUnavailable.code): DependencyUnavailable}
    try:
        error = response.json()["error"]
        kind = kinds.get((response.status_code, error["code"]), ApiError)
        return kind(response.status_code, str(error["code"]), str(error["message"]), error.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, f"http_{response.status_code}", response.text[:200] or "error")
