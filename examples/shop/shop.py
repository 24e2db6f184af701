"""A Celery app of its own that adds one saga type in a few lines: the example of the README.

    export SAGA_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/shop    # a database that exists
    python shop.py setup                  # the ledger's tables, the shop's, and some stock
    celery -A shop worker                 # and, in another terminal: celery -A shop beat
    python shop.py order A1 2 DE          # completed
    python shop.py order A1 2 US          # compensated: we do not ship to US (the items go back)
"""

from __future__ import annotations

import functools
import os
import sys
import time
import uuid

from celery import Celery
from pydantic import BaseModel, Field
from sqlalchemy import Engine, create_engine, text

import saga
from saga import PermanentError, RetryPolicy, Sagas, StepContext

app = Celery("shop", broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    worker_prefetch_multiplier=1,  # the engine refuses to start a worker that holds messages it has not begun
    worker_cancel_long_running_tasks_on_connection_loss=True,  # ... or one that runs on after losing the broker
    broker_transport_options={"visibility_timeout": 3600},  # above every step's time limit plus backoff
)
sagas = Sagas(app)  # the ledger's database: SAGA_DATABASE_URL (or pass database_url=...)

SCHEMA = """
CREATE TABLE IF NOT EXISTS shop_stock (sku text PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
CREATE TABLE IF NOT EXISTS shop_shipments (
    key text PRIMARY KEY, saga_id uuid NOT NULL, sku text NOT NULL, quantity int NOT NULL, country text NOT NULL);
"""
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


def main(argv: list[str]) -> None:
    """`setup`, or `order SKU QUANTITY COUNTRY`: start one order and print how it ended."""
    if argv[:1] == ["setup"]:
        sagas.migrate()
        with carrier().begin() as conn:
            conn.execute(text(SCHEMA))
            conn.execute(text("INSERT INTO shop_stock VALUES ('A1', 100) ON CONFLICT DO NOTHING"))
        print("ledger and shop tables ready; 100 of A1 in stock")
    elif argv[:1] == ["order"] and len(argv) == 4:
        started = saga.start("order", {"sku": argv[1], "quantity": int(argv[2]), "country": argv[3]},
                             idempotency_key=str(uuid.uuid4()))
        while (record := saga.load(started.saga.id)).status not in ("completed", "compensated", "paused", "failed"):
            time.sleep(0.2)
        print(record.status, record.error or "")
    else:
        sys.exit("usage: python shop.py setup | order SKU QUANTITY COUNTRY")


if __name__ == "__main__":
    main(sys.argv[1:])
