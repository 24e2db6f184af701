"""A saga, its steps and its events, and a tenant's webhook endpoints, as JSON: what the HTTP API answers and the
Python client reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from saga.states import SagaStatus, StepKind, StepStatus


class Progress(BaseModel):
    done: int = Field(description="Steps that succeeded.")
    total: int = Field(description="Steps the saga has.")


class Step(BaseModel):
    """One step of a saga, in order."""

    name: str
    kind: StepKind
    status: StepStatus
    attempts: int
    compensation_attempts: int
    effect_unknown: bool = Field(default=False, description=(
        "An attempt ended without a definite answer (timeout, crash, lost reply), so the step's effect may "
        "exist: its compensation runs if the saga is undone, and finds out what happened first."))
    result: Any = None
    checkpoint: dict[str, Any] | None = Field(default=None, description=(
        "What the step recorded while it ran, before its effect was finished (e.g. a PaymentIntent id)."))
    compensation_result: Any = Field(default=None, description=(
        "What the compensation reported when it finished (e.g. the refund id)."))
    error: str | None = None
    task_id: str | None = Field(default=None, description="Celery task id of the latest execution (Flower).")
    started_at: str | None = None
    finished_at: str | None = None
    compensated_at: str | None = None


class AwaitingInput(BaseModel):
    """What a saga in `awaiting_input` waits for: new values of some input fields, sent with
    `POST /v1/sagas/{id}/input` before `until`; after that it is undone as a failure would be."""

    step: str = Field(description="The step that asked; it runs again with the new input.")
    fields: list[str] = Field(description="The input fields to send new values of.")
    reason: str = Field(description="Why, e.g. `card declined: insufficient_funds: ...`.")
    until: str = Field(description="When the wait ends (ISO 8601).")


class Saga(BaseModel):
    """A saga with its steps; `progress` counts the steps done."""

    id: str
    type: str
    version: int = Field(default=1, description="The version of its type it started on, and runs by.")
    status: SagaStatus
    input: dict[str, Any] | None = Field(default=None, description=(
        "The input, without the fields its saga type declares large (a logo, a document); null in a listing "
        "unless `include_input=true`."))
    idempotency_key: str | None = None
    cancel_requested: bool = False
    error: str | None = Field(default=None, description=(
        "Why the saga compensated, paused or failed, or what it awaits input for."))
    progress: Progress
    steps: list[Step]
    created_at: str
    updated_at: str
    restart_of: str | None = Field(default=None, description="The saga this one started again (`restart`).")
    restarted_as: str | None = Field(default=None, description="The saga that started this one again.")
    awaiting_input: AwaitingInput | None = Field(default=None, description=(
        "Set while the saga is `awaiting_input`: what to send, and by when."))
    rewinding_to: str | None = Field(default=None, description=(
        "Set while a rewind undoes steps (status `compensating`): the step the saga then runs forward from."))
    admitted: bool = Field(default=True, description=(
        "false while the saga waits `pending` for a slot of its tenant (SAGA_TENANT_MAX_ACTIVE): it starts, oldest "
        "first, as the tenant's sagas in flight end; it stays false on a saga cancelled while it waited."))


class SagaPage(BaseModel):
    """A page of sagas, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[Saga]
    next_cursor: str | None = None


class Event(BaseModel):
    """One entry of a saga's audit log."""

    id: int
    step: str | None = None
    kind: str
    detail: dict[str, Any]
    created_at: str


class EventPage(BaseModel):
    """Events oldest first; pass `next_after` as `after` for the next page."""

    items: list[Event]
    next_after: int | None = None


class Webhook(BaseModel):
    """A webhook endpoint of the key's tenant: where events of its sagas are POSTed, signed as Standard Webhooks
    specifies. `secret` is set only in the answer to a creation or a rotation, the one time the API shows it."""

    id: str
    url: str
    event_types: list[str] = Field(description="The event types it gets (`saga.completed`, `step.failed`, ...).")
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = Field(default=None, description=(
        "Why it is disabled: by the tenant, a 410 from the receiver, or every delivery failing for the retry "
        "period."))
    created_at: str
    updated_at: str
    pending: int = Field(description="Events waiting to be delivered (each saga's in order).")
    failed: int = Field(description="Events given up on, kept for a replay (`replay_failed_webhooks`).")
    secret: str | None = Field(default=None, description=(
        "The signing secret (`whsec_...`): only from `create_webhook` and `rotate_webhook_secret`."))


class WebhookAttempt(BaseModel):
    """One attempt to deliver an event to an endpoint."""

    at: str
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came (an error).")
    error: str | None = Field(description="What went wrong: a timeout, a refused connection, a status that is "
                              "not 2xx.")
    duration_ms: float
    webhook_id: str = Field(description="The event's `webhook-id` header: the same on every attempt and replay.")
    saga_id: str
    type: str = Field(description="The event type, e.g. `saga.completed`.")
    delivery_status: str = Field(description="Where the event's delivery stands now: pending, delivered or failed.")


class WebhookDetail(Webhook):
    """A webhook endpoint with its latest delivery attempts, newest first."""

    recent_attempts: list[WebhookAttempt]


class Breaker(BaseModel):
    """A third party's circuit breaker, shared by the fleet: `closed` (calls go through), `open` (the steps that
    depend on it wait, and new sagas that would wait on it before their point of no return are refused) or
    `half_open` (one call at a time probes it)."""

    name: str = Field(description="The dependency, as steps name it in `depends_on`.")
    state: str = Field(description="`closed`, `open` or `half_open`.", json_schema_extra={
        "enum": ["closed", "open", "half_open"]})
    failures: int = Field(description="Consecutive transient failures counted (it opens at its threshold).")
    opens: int = Field(description="Times it opened from closed.")
    opened_at: str | None = Field(default=None, description="When it last opened (ISO 8601).")
    retry_at: str | None = Field(default=None, description="When it half-opens, or did (ISO 8601).")
    probing: bool = Field(description="A probe call is in flight.")
    retry_after: float = Field(description=(
        "Seconds until a step may call it again: 0 when closed, or half-open with no probe in flight."))


class BreakerPage(BaseModel):
    """Every circuit breaker that has counted a failure, by name."""

    items: list[Breaker]
