"""The shop's tests run its saga through real workers with the engine's crash-test kit."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from shop.tasks import carrier
from sqlalchemy import text

from saga.testing import Stack

pytest_plugins = ["saga.testing.plugin"]


@pytest.fixture(scope="session")
def shop_stack(saga_stack: Stack) -> Stack:
    """The kit's stack (a private ledger database, beat), with the shop's own tables migrated beside the ledger
    and a worker running."""
    command.upgrade(Config("alembic.ini"), "head")  # env.py reads SAGA_DATABASE_URL, which the kit set
    saga_stack.worker("shop-worker", concurrency=2)
    return saga_stack


def stock(sku: str) -> int | None:
    with carrier().begin() as conn:
        return conn.execute(text("SELECT available FROM shop_stock WHERE sku = :s"), {"s": sku}).scalar()


def add_stock(sku: str, available: int) -> None:
    with carrier().begin() as conn:
        conn.execute(text("INSERT INTO shop_stock (sku, available) VALUES (:s, :a)"), {"s": sku, "a": available})


def shipments(saga_id: object) -> int:
    """Every booking the carrier holds for this saga (rows, not distinct keys)."""
    with carrier().begin() as conn:
        return conn.execute(text("SELECT count(*) FROM shop_shipments WHERE saga_id = :id"), {"id": saga_id}).scalar()
