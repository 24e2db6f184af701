"""The HTTP API's wire format: request, error and health bodies; a saga and its events are `saga.models`,
which the Python client (`saga.client`) parses responses with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from saga.models import Event, EventPage, Progress, Saga, SagaPage, Step
from saga.storable import storable

__all__ = [
    "ErrorDetail",
    "ErrorResponse",
    "Event",
    "EventPage",
    "FieldProblem",
    "Health",
    "Progress",
    "ProvideInput",
    "RestartSaga",
    "RewindSaga",
    "Saga",
    "SagaPage",
    "StartSaga",
    "Step",
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
