"""The shop's Celery app, with the saga engine bound to it (`celery -A shop worker` finds it here)."""

import os

from celery import Celery

from saga import Sagas

app = Celery("shop", broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"), include=["shop.tasks"])
app.conf.update(
    worker_prefetch_multiplier=1,  # the engine refuses to start a worker that holds messages it has not begun
    worker_cancel_long_running_tasks_on_connection_loss=True,  # ... or one that runs on after losing the broker
    broker_transport_options={"visibility_timeout": 3600},  # above every step's time limit plus backoff
)
sagas = Sagas(app)  # the ledger's database: SAGA_DATABASE_URL (or pass database_url=...)
