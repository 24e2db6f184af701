"""The shop's order saga, end to end through real workers, and with a worker SIGKILLed at every step boundary."""

from __future__ import annotations

import uuid

import pytest
from conftest import add_stock, shipments, stock
from shop.tasks import orders

import saga
from saga.testing import CrashTester, Stack, crash_points, wait_for_status

FINAL = ("completed", "compensated", "paused", "failed")


def new_sku(available: int = 10) -> str:
    sku = f"sku-{uuid.uuid4().hex[:8]}"
    add_stock(sku, available)
    return sku


def test_an_order_ships_once_and_takes_its_items(shop_stack: Stack) -> None:
    sku = new_sku()
    started = saga.start("order", {"sku": sku, "quantity": 3, "country": "DE"}, idempotency_key=str(uuid.uuid4()))
    record = wait_for_status(started.saga.id, FINAL)
    assert record.status == "completed", record.error
    assert stock(sku) == 7
    assert shipments(record.id) == 1


def test_an_order_the_carrier_refuses_puts_the_items_back(shop_stack: Stack) -> None:
    sku = new_sku()
    started = saga.start("order", {"sku": sku, "quantity": 3, "country": "US"}, idempotency_key=str(uuid.uuid4()))
    record = wait_for_status(started.saga.id, FINAL)
    assert record.status == "compensated"
    assert "we do not ship to US" in (record.error or "")
    assert stock(sku) == 10
    assert shipments(record.id) == 0


def test_bad_input_is_refused_before_anything_happens(shop_stack: Stack) -> None:
    with pytest.raises(saga.InvalidInput, match="quantity"):
        saga.start("order", {"sku": "x", "quantity": 0, "country": "DE"}, idempotency_key=str(uuid.uuid4()))


@pytest.mark.parametrize("point", crash_points(orders), ids=str)
def test_a_crash_at_each_boundary_still_ships_once(shop_stack: Stack, saga_crashes: CrashTester,
                                                   point: object) -> None:
    sku = new_sku()
    outcome = saga_crashes.run(orders, {"sku": sku, "quantity": 2, "country": "FR"}, point)  # type: ignore[arg-type]
    assert outcome.record.status == "completed", outcome.record.error
    assert stock(sku) == 8, "the items were taken twice, or not at all"
    assert shipments(outcome.record.id) == 1
    assert outcome.runs[outcome.point.body] == 2, "the crashed body ran again"


@pytest.mark.parametrize("point", crash_points(orders, undo=True), ids=str)
def test_a_crash_while_undoing_still_puts_the_items_back_once(shop_stack: Stack, saga_crashes: CrashTester,
                                                              point: object) -> None:
    sku = new_sku()
    outcome = saga_crashes.run(orders, {"sku": sku, "quantity": 2, "country": "US"}, point)  # type: ignore[arg-type]
    assert outcome.record.status == "compensated"
    assert stock(sku) == 10, "the items were put back twice, or not at all"
    assert outcome.runs["undo reserve"] == 2
