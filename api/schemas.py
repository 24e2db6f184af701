"""The HTTP API's wire format: request, error and health bodies; a saga and its events are `saga.models`,
which the Python client (`saga.client`) parses responses with."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from saga.models import Event, EventPage, Progress, Saga, SagaPage, Step
from saga.states import SagaStatus
from saga.storable import storable
from webhooks.events import EVENT_TYPES

__all__ = [
    "CreateWebhook",
    "ErrorDetail",
    "ErrorResponse",
    "Event",
    "EventPage",
    "FieldProblem",
    "Health",
    "Minute",
    "NeedsOperator",
    "Progress",
    "ProvideInput",
    "ReplayWebhooks",
    "Replayed",
    "RestartSaga",
    "RewindSaga",
    "RotateSecret",
    "Saga",
    "SagaPage",
    "StartSaga",
    "Stats",
    "StatusCount",
    "Step",
    "Webhook",
    "WebhookAttempt",
    "WebhookDetail",
    "WebhookPage",
    "WebhookWithSecret",
]


class _WithInput(BaseModel):
    """A request body with an `input` object: nothing else is accepted, and the input must be storable."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("input", check_fields=False)
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        return storable(value)


class StartSaga(_WithInput):
    """Body of `POST /v1/sagas`."""

    type: str = Field(min_length=1, max_length=100, description="A declared saga type, e.g. `job_posting`.")
    input: dict[str, Any] = Field(description="The saga's input, validated against the type's model.")


class RestartSaga(_WithInput):
    """Body of `POST /v1/sagas/{id}/restart` (may be left out)."""

    input: dict[str, Any] = Field(default_factory=dict, description=(
        "Fields of the input to replace; the rest is the restarted saga's own. The whole is validated again."))


class ProvideInput(_WithInput):
    """Body of `POST /v1/sagas/{id}/input`."""

    input: dict[str, Any] = Field(min_length=1, description=(
        "New values of the fields the saga's `awaiting_input.fields` names; the rest of the input stays. The "
        "whole is validated again."))


class RewindSaga(_WithInput):
    """Body of `POST /v1/sagas/{id}/rewind`."""

    to: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00]*$", description=(
        "The step to go back to: it and every later step that acted are undone, newest first, then the saga "
        "runs forward from it."))
    input: dict[str, Any] = Field(default_factory=dict, description=(
        "Fields of the input to replace for the run forward; the whole is validated again."))


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. `saga_not_found`, `invalid_input`.")
    message: str
    details: Any = Field(default=None, description="For bad input: a list of {field, message}.")


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorDetail


class Check(BaseModel):
    ok: bool
    error: str | None = None


class Health(BaseModel):
    status: str = Field(description="`ok`, or `unavailable` when a dependency does not answer.")
    database: Check
    broker: Check


class StatusCount(BaseModel):
    type: str
    status: SagaStatus
    count: int = Field(ge=1)


class NeedsOperator(BaseModel):
    """A saga that needs an operator: `failed` (a compensation gave up), `awaiting_input` with less than half of
    its wait left, or `paused` (forward recovery needs a person)."""

    id: str
    type: str
    status: SagaStatus
    reason: str | None = Field(description="The saga's error, or what it awaits input for.")
    since: str = Field(description="When it stopped, or asked for input (ISO 8601).")
    until: str | None = Field(description="When its wait for input ends (ISO 8601); null for the others.")


class Minute(BaseModel):
    """One minute of the last hour: sagas started in it, and sagas that reached each ending in it."""

    at: str = Field(description="The minute's start (ISO 8601).")
    started: int = Field(ge=0)
    completed: int = Field(ge=0)
    compensated: int = Field(ge=0)
    paused: int = Field(ge=0)
    failed: int = Field(ge=0)


class Stats(BaseModel):
    """Body of `GET /v1/stats`: the caller's tenant at a glance."""

    now: str = Field(description="The server's clock when the figures were taken (ISO 8601).")
    counts: list[StatusCount] = Field(description=(
        "How many of the tenant's sagas are in each status, by type (pairs with none are left out)."))
    needs_operator: list[NeedsOperator] = Field(description=(
        "Failed sagas, then sagas awaiting input past half their wait (the soonest to end first), then paused "
        "ones; oldest first within each; at most 50."))
    needs_operator_total: int = Field(ge=0, description="How many sagas need an operator in all.")
    last_hour: list[Minute] = Field(description=(
        "Sixty minutes, oldest first, the current (partial) one last. A saga counts as ended in the minute it "
        "reached the status it is in now, if it was created within the last day."))


# The event types a webhook endpoint may subscribe to (webhooks.events.EVENT_TYPES).
EventType = Literal[tuple(EVENT_TYPES)]  # type: ignore[valid-type]


class CreateWebhook(BaseModel):
    """Body of `POST /v1/webhooks`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://", description=(
        "Where to POST the events: https (or http), resolving to public addresses only unless the operator allows "
        "others (`SAGA_WEBHOOK_ALLOWED_NETWORKS`). Redirects are not followed."))
    event_types: list[EventType] | None = Field(default=None, min_length=1, max_length=20, description=(
        "Which events to send (default: every `saga.*` type): saga.completed, saga.compensated, saga.paused, "
        "saga.failed, saga.awaiting_input, step.succeeded, step.failed, step.compensated, "
        "step.compensation_failed."))
    description: str | None = Field(default=None, max_length=500)


class RotateSecret(BaseModel):
    """Body of `POST /v1/webhooks/{id}/rotate-secret` (may be left out)."""

    model_config = ConfigDict(extra="forbid")

    keep_old_for: float | None = Field(default=None, strict=True, ge=0, le=7 * 24 * 3600, description=(
        "Seconds the secret before this one still signs beside the new one (default: the service's setting, "
        "a day): time for receivers to switch."))


class ReplayWebhooks(BaseModel):
    """Body of `POST /v1/sagas/{id}/replay-webhooks` (may be left out)."""

    model_config = ConfigDict(extra="forbid")

    endpoint_id: UUID | None = Field(default=None, description=(
        "Only to this endpoint (default: every enabled endpoint of the tenant that subscribes to them)."))


class Webhook(BaseModel):
    """A webhook endpoint (its secret is shown only when made or rotated)."""

    id: str
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why it is disabled: by the tenant, a 410 from the receiver, "
                                        "or every delivery failing for the retry period.")
    created_at: str
    updated_at: str
    pending: int = Field(description="Events waiting to be delivered (each saga's in order).")
    failed: int = Field(description="Events given up on, kept for replay (`POST /v1/webhooks/{id}/replay-failed`).")


class WebhookWithSecret(Webhook):
    secret: str = Field(description="The signing secret (Standard Webhooks, `whsec_...`): shown this once.")


class WebhookAttempt(BaseModel):
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float
    webhook_id: str
    saga_id: str
    type: str
    delivery_status: str


class WebhookDetail(Webhook):
    recent_attempts: list[WebhookAttempt] = Field(description="The latest delivery attempts, newest first.")


class WebhookPage(BaseModel):
    items: list[Webhook]


class Replayed(BaseModel):
    deliveries: int = Field(description="Events queued for delivery again.")
