"""A demo saga that `make run` starts: reserve stock, charge, ship, notify (all simulated, no third party)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from saga import PermanentError, RetryPolicy, StepContext
from workers.app import sagas


class DemoOrder(BaseModel):
    """The demo's input, every field bounded: an order the API accepts is small."""

    customer: str = Field(min_length=1, max_length=200)
    amount_cents: int = Field(gt=0)
    card: str = Field(default="ok", pattern="^(ok|declined)$")
    step_seconds: float = Field(default=1.0, ge=0, le=30)


demo = sagas.saga_type("demo", DemoOrder, default_retry=RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=5))


@demo.step(kind="compensable", time_limit=40)
def reserve_stock(ctx: StepContext[DemoOrder]) -> dict[str, Any]:
    """Hold one item for the customer."""
    time.sleep(ctx.input.step_seconds)
    return {"reservation": f"R-{ctx.idempotency_key[:8]}"}


@reserve_stock.compensate_with
def release_stock(ctx: StepContext[DemoOrder]) -> None:
    """Give the item back."""
    time.sleep(ctx.input.step_seconds / 2)


@demo.step(kind="pivot", time_limit=40)
def charge_card(ctx: StepContext[DemoOrder]) -> dict[str, Any]:
    """Take the money; the point of no return."""
    time.sleep(ctx.input.step_seconds)
    if ctx.input.card == "declined":
        raise PermanentError("card declined")
    return {"charge": f"ch_{ctx.idempotency_key[:8]}", "amount_cents": ctx.input.amount_cents}


@charge_card.compensate_with
def refund_card(ctx: StepContext[DemoOrder]) -> None:
    """Give the money back (only if the charge's outcome is unknown or the saga was cancelled)."""
    time.sleep(ctx.input.step_seconds / 2)


@demo.step(kind="retriable", time_limit=40)
def ship(ctx: StepContext[DemoOrder]) -> dict[str, Any]:
    time.sleep(ctx.input.step_seconds)
    return {"tracking": f"TRK-{ctx.idempotency_key[:8]}"}


@demo.step(kind="retriable", time_limit=40)
def notify(ctx: StepContext[DemoOrder]) -> None:
    time.sleep(ctx.input.step_seconds / 2)
