"""Place an order from the command line, as the shop's web view would: `python -m shop.orders A1 2 DE` starts the
saga, waits until it ends and prints how."""

import sys
import time
import uuid

import saga
from shop.celery import app

FINAL = ("completed", "compensated", "paused", "failed")


def place(sku: str, quantity: int, country: str) -> saga.SagaRecord:
    """Start an order and wait for its end (a real shop would answer at once and let the client poll)."""
    app.loader.import_default_modules()  # shop.tasks: the saga type
    started = saga.start("order", {"sku": sku, "quantity": quantity, "country": country},
                         idempotency_key=str(uuid.uuid4()))
    while (record := saga.load(started.saga.id)).status not in FINAL:
        time.sleep(0.2)
    return record


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m shop.orders SKU QUANTITY COUNTRY")
    order = place(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    print(order.id, order.status, order.error or "")
