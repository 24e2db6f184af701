"""The shop's tasks: an order is a saga that takes the items off the shelf, then books the carrier."""

import functools
import os

from pydantic import BaseModel, Field
from sqlalchemy import Engine, create_engine, text

from saga import PermanentError, RetryPolicy, StepContext
from shop.celery import sagas

SHIPS_TO = frozenset({"DE", "FR", "NL"})


class Order(BaseModel):
    sku: str = Field(min_length=1, max_length=40)
    quantity: int = Field(gt=0, le=100)
    country: str = Field(pattern="^[A-Z]{2}$")


orders = sagas.saga_type("order", Order, default_time_limit=3,
                         default_retry=RetryPolicy(max_attempts=3, initial_delay=0.2, max_delay=1))


@orders.step(kind="compensable", transactional=True)
def reserve(ctx: StepContext[Order]) -> dict[str, int]:
    """Take the items off the shelf, in the same transaction that records the step."""
    left = ctx.db.execute(text(  # type: ignore[union-attr]
        "UPDATE shop_stock SET available = available - :q WHERE sku = :s AND available >= :q RETURNING available"
    ), {"q": ctx.input.quantity, "s": ctx.input.sku}).scalar()
    if left is None:
        raise PermanentError(f"not enough {ctx.input.sku} in stock")
    return {"left": left}


@reserve.compensate_with(transactional=True)
def release(ctx: StepContext[Order]) -> None:
    """Put them back."""
    ctx.db.execute(text("UPDATE shop_stock SET available = available + :q WHERE sku = :s"),  # type: ignore[union-attr]
                   {"q": ctx.input.quantity, "s": ctx.input.sku})


@orders.step(kind="pivot")
def ship(ctx: StepContext[Order]) -> dict[str, str]:
    """Book the carrier: its own system, which takes our idempotency key, so a repeated booking is one booking."""
    if ctx.input.country not in SHIPS_TO:
        raise PermanentError(f"we do not ship to {ctx.input.country}")
    with carrier().begin() as conn:
        conn.execute(text(
            "INSERT INTO shop_shipments (key, saga_id, sku, quantity, country) VALUES (:k, :id, :s, :q, :c) "
            "ON CONFLICT (key) DO NOTHING"
        ), {"k": ctx.idempotency_key, "id": ctx.saga_id, "s": ctx.input.sku, "q": ctx.input.quantity,
            "c": ctx.input.country})
    return {"shipment": ctx.idempotency_key}


@functools.cache
def carrier() -> Engine:
    """The carrier's system (here: a table beside the ledger, over connections of its own)."""
    return create_engine(os.environ.get("SAGA_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/shop"))
