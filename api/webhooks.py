"""The `/v1/webhooks` routes: a tenant's webhook endpoints (register, list, read with recent deliveries, rotate the
secret, disable, enable, delete) and replays. Every route needs the key's `webhooks:manage` scope; another
tenant's endpoint or saga answers 404."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Response

from api.auth import WebhookManager
from api.errors import ApiError, responses
from api.schemas import (
    CreateWebhook,
    Replayed,
    ReplayWebhooks,
    RotateSecret,
    Webhook,
    WebhookDetail,
    WebhookPage,
    WebhookWithSecret,
)
from saga import store
from webhooks import endpoints

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

EndpointId = Annotated[UUID, Path(description="The webhook endpoint's id.")]
SagaId = Annotated[UUID, Path(description="The saga's id.")]


def _not_found(endpoint_id: UUID) -> ApiError:
    return ApiError(404, "webhook_not_found", f"no webhook endpoint {endpoint_id}")


def _bad(exc: endpoints.BadEndpoint) -> ApiError:
    return ApiError(422, "invalid_webhook", str(exc), [{"field": exc.field, "message": str(exc)}])


@router.post("", status_code=201, response_model=WebhookWithSecret, responses=responses(401, 403, 422, 429, 503),
             summary="Register a webhook endpoint", operation_id="createWebhook")
def create_webhook(body: CreateWebhook, tenant: WebhookManager) -> dict[str, Any]:
    """Events of this tenant's sagas are POSTed to `url`, signed as Standard Webhooks specifies (`webhook-id`,
    `webhook-timestamp`, `webhook-signature`). The signing secret is in this answer and never again."""
    try:
        made, secret = endpoints.create(tenant, body.url, body.event_types, body.description)
    except endpoints.BadEndpoint as exc:
        raise _bad(exc) from None
    return made | {"secret": secret}


@router.get("", response_model=WebhookPage, responses=responses(401, 403, 429, 503),
            summary="List webhook endpoints", operation_id="listWebhooks")
def list_webhooks(tenant: WebhookManager) -> dict[str, Any]:
    return {"items": endpoints.list_for(tenant)}


@router.get("/{endpoint_id}", response_model=WebhookDetail, responses=responses(401, 403, 404, 422, 429, 503),
            summary="Read a webhook endpoint and its latest deliveries", operation_id="getWebhook")
def get_webhook(endpoint_id: EndpointId, tenant: WebhookManager) -> dict[str, Any]:
    try:
        return endpoints.detail(tenant, endpoint_id)
    except endpoints.EndpointNotFound:
        raise _not_found(endpoint_id) from None


@router.post("/{endpoint_id}/rotate-secret", response_model=WebhookWithSecret,
             responses=responses(401, 403, 404, 422, 429, 503), summary="Rotate a webhook endpoint's signing secret",
             operation_id="rotateWebhookSecret")
def rotate_secret(endpoint_id: EndpointId, tenant: WebhookManager, body: RotateSecret | None = None) -> dict[str, Any]:
    """A new secret signs from now on; the one before signs too for `keep_old_for` seconds (each delivery then
    carries both signatures), so receivers can switch without missing one."""
    try:
        rotated, secret = endpoints.rotate(tenant, endpoint_id, body.keep_old_for if body else None)
    except endpoints.EndpointNotFound:
        raise _not_found(endpoint_id) from None
    return rotated | {"secret": secret}


def _switch(enabled: bool) -> None:
    def switch(endpoint_id: EndpointId, tenant: WebhookManager) -> dict[str, Any]:
        try:
            return endpoints.set_enabled(tenant, endpoint_id, enabled)
        except endpoints.EndpointNotFound:
            raise _not_found(endpoint_id) from None

    name = "enable" if enabled else "disable"
    switch.__name__ = f"{name}_webhook"
    switch.__doc__ = ("Deliver again, from where deliveries stopped (a 410 or a give-up disables an endpoint)."
                      if enabled else "Stop delivering: the events it has waiting stay; events of sagas meanwhile are not kept for it (replay a saga to send them).")
    router.post(f"/{{endpoint_id}}/{name}", response_model=Webhook, responses=responses(401, 403, 404, 422, 429, 503),
                summary=f"{name.capitalize()} a webhook endpoint", operation_id=f"{name}Webhook")(switch)


_switch(False)
_switch(True)


@router.delete("/{endpoint_id}", status_code=204, responses=responses(401, 403, 404, 422, 429, 503),
               summary="Delete a webhook endpoint", operation_id="deleteWebhook")
def delete_webhook(endpoint_id: EndpointId, tenant: WebhookManager) -> Response:
    """The endpoint and every delivery still owed to it are gone."""
    try:
        endpoints.delete(tenant, endpoint_id)
    except endpoints.EndpointNotFound:
        raise _not_found(endpoint_id) from None
    return Response(status_code=204)


@router.post("/{endpoint_id}/replay-failed", response_model=Replayed,
             responses=responses(401, 403, 404, 422, 429, 503), summary="Deliver an endpoint's failed events again",
             operation_id="replayFailedWebhooks")
def replay_failed(endpoint_id: EndpointId, tenant: WebhookManager) -> dict[str, int]:
    """Events given up on (after the retry period) start their retries again; enable the endpoint first if it
    was disabled."""
    try:
        return {"deliveries": endpoints.replay_failed(tenant, endpoint_id)}
    except endpoints.EndpointNotFound:
        raise _not_found(endpoint_id) from None


# On the saga's path, not under /v1/webhooks/, where a name after the prefix is an endpoint's id.
saga_router = APIRouter(prefix="/v1/sagas", tags=["webhooks"])


@saga_router.post("/{saga_id}/replay-webhooks", response_model=Replayed,
                  responses=responses(401, 403, 404, 422, 429, 503), summary="Deliver a saga's events again",
                  operation_id="replaySagaWebhooks")
def replay_saga(saga_id: SagaId, tenant: WebhookManager, body: ReplayWebhooks | None = None) -> dict[str, int]:
    """Every event of the saga that an enabled endpoint subscribes to is delivered again, in order (with the
    same `webhook-id` as before: receivers that saw it can tell)."""
    store.load(saga_id, tenant)  # SagaNotFound (404) for another tenant's saga
    endpoint_id = body.endpoint_id if body else None
    try:
        return {"deliveries": endpoints.replay_saga(tenant, saga_id, endpoint_id)}
    except endpoints.EndpointNotFound:
        raise _not_found(endpoint_id) from None  # type: ignore[arg-type]
