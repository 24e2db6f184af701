"""Declaring saga types: what is accepted, and the clear errors for what is not."""

from __future__ import annotations

from uuid import uuid4

import pytest
from pydantic import BaseModel, EmailStr

from saga import InvalidInput, RetryPolicy, SagaType, StepContext, UnknownSagaType, continuation
from saga.definitions import get_saga_type
from workers.app import app, sagas


class Order(BaseModel):
    email: EmailStr
    amount: int


def noop(ctx: StepContext[Order]) -> None:
    return None


def declare(name: str, kinds: list[str], compensate: bool = True) -> SagaType[Order]:
    saga_type = sagas.saga_type(name, Order, default_retry=RetryPolicy(max_attempts=2), default_time_limit=7)
    for i, kind in enumerate(kinds):
        step = saga_type.step(noop, kind=kind, name=f"t.{name}.s{i}")
        step.name = f"s{i}"
        if compensate and kind == "compensable":
            step.compensate_with(noop, name=f"t.{name}.undo{i}")
    return saga_type


def test_a_saga_type_is_a_few_lines_and_each_step_is_a_named_celery_task(fresh: object) -> None:
    shop = sagas.saga_type("shop", Order)

    @shop.step(kind="compensable", retry=RetryPolicy(max_attempts=9), time_limit=12)
    def reserve(ctx: StepContext[Order]) -> dict[str, str]:
        return {"r": ctx.idempotency_key}

    @reserve.compensate_with
    def release(ctx: StepContext[Order]) -> None:
        return None

    @shop.step(kind="pivot")
    def charge(ctx: StepContext[Order]) -> None:
        return None

    assert get_saga_type("shop") is shop
    assert [s.name for s in shop.steps] == ["reserve", "charge"]
    assert reserve.retry.max_attempts == 9 and reserve.time_limit == 12
    task = app.tasks[f"{__name__}.reserve"]
    # Its message may also run the steps after it (continuation), each under its own limits: Celery's is the last resort.
    assert task.soft_time_limit == continuation.message_time_limit(reserve) > 12 and task.time_limit > task.soft_time_limit
    assert f"{__name__}.release" in app.tasks
    assert charge.compensation is None


@pytest.mark.parametrize("kinds, message", [
    (["pivot", "compensable"], "only retriable steps may follow the pivot"),
    (["pivot", "pivot"], "only one pivot"),
    (["retriable", "compensable"], "only retriable steps may follow a retriable step"),
])
def test_step_order_is_checked_when_declared(fresh: object, kinds: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        declare(f"bad_{uuid4().hex[:8]}", kinds)


def test_compensable_step_needs_a_compensation(fresh: object) -> None:
    declare("no_undo", ["compensable", "pivot"], compensate=False)
    with pytest.raises(ValueError, match="has no compensation"):
        get_saga_type("no_undo")


def test_retriable_step_cannot_be_compensated(fresh: object) -> None:
    saga_type = declare("undo_retriable", ["retriable"])
    with pytest.raises(ValueError, match="retriable and cannot have a compensation"):
        saga_type.steps[0].compensate_with(noop, name="t.undo_retriable.undo")


def test_names_are_checked(fresh: object) -> None:
    declare("twice", ["pivot"])
    with pytest.raises(ValueError, match="declared twice"):
        sagas.saga_type("twice", Order)
    with pytest.raises(ValueError, match="lowercase"):
        sagas.saga_type("Bad Name", Order)
    with pytest.raises(UnknownSagaType, match="unknown saga type 'missing'"):
        get_saga_type("missing")


def test_input_errors_name_every_bad_field(fresh: object) -> None:
    saga_type = declare("validated", ["pivot"])
    with pytest.raises(InvalidInput) as info:
        saga_type.validate_input({"email": "not-an-email"})
    fields = sorted(p["field"] for p in info.value.details)
    assert fields == ["amount", "email"]
    assert "email" in info.value.message and "amount" in info.value.message
    assert saga_type.validate_input({"email": "a@example.com", "amount": 3}).amount == 3


def test_what_claims_read_of_the_steps_follows_every_declaration(fresh: object) -> None:
    """Fingerprint, longest lease and undo attempts are worked out once, and again after each step or undo."""
    shop = sagas.saga_type("shop_derived", Order, default_retry=RetryPolicy(max_attempts=2), default_time_limit=5)
    reserve = shop.step(noop, kind="compensable", name="t.shop_derived.reserve")
    first = shop.fingerprint
    assert shop.undo_attempts == [0] and shop.fingerprint == first
    reserve.compensate_with(noop, name="t.shop_derived.release", retry=RetryPolicy(max_attempts=4))
    assert shop.undo_attempts == [4]
    lease = shop.longest_lease

    @shop.step(kind="pivot", name="t.shop_derived.charge", time_limit=50)
    def charge(ctx: StepContext[Order]) -> None:
        return None

    assert shop.fingerprint != first and shop.undo_attempts == [4, 0] and shop.longest_lease > lease + 40
