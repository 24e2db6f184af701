"""Whether the API's dependencies answer: the ledger database and the Celery broker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from saga import db

# Seconds a health check waits for the broker before calling it down.
BROKER_TIMEOUT = 2.0


def database() -> str | None:
    """None if the database answers a query, else the kind of error."""
    try:
        with db.engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return type(exc).__name__


def broker(celery_app: Any) -> str | None:
    """None if a connection to `celery_app`'s broker can be opened, else the kind of error."""
    try:
        with celery_app.connection_for_write(connect_timeout=BROKER_TIMEOUT,
                                             transport_options={"socket_connect_timeout": BROKER_TIMEOUT,
                                                                "socket_timeout": BROKER_TIMEOUT}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return type(exc).__name__
