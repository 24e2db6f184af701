"""Beat's webhook dispatcher: a thread that sends a `webhooks.deliver` task for each enabled endpoint with events
due and nobody delivering them. It runs in beat's process as recovery does (no task every half second in
Flower's list); an endpoint's task is sent again only when the one sent before has not started for a while."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import text

from saga import db
from webhooks.settings import webhook_settings

log = logging.getLogger("webhooks.dispatcher")

QUEUE = "webhooks"
TASK = "webhooks.deliver"
# Seconds before an endpoint whose task has not started (lost, or queued behind others) is sent another.
RESEND_AFTER = 30.0

# Endpoints with a delivery due and no task on them (none holds the lease, none sent lately), marked as sent.
_DUE = text("""
UPDATE webhook_endpoints w SET dispatched_at = now()
WHERE w.enabled AND coalesce(w.lease_until, '-infinity') < now()
    AND coalesce(w.dispatched_at, '-infinity') < now() - make_interval(secs => :resend)
    AND EXISTS (SELECT FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending'
                AND d.next_attempt_at <= now())
RETURNING w.id
""")


# Delivered events older than `keep_days`, a batch at a time (their attempts go with them).
_PRUNE = text("""
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries WHERE status = 'delivered' AND delivered_at < now() - make_interval(days => :days)
    LIMIT :batch)
""")
PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000


def prune_once(keep_days: int) -> int:
    """Delete one batch of deliveries made more than `keep_days` days ago; how many."""
    with db.autocommit() as conn:
        return conn.execute(_PRUNE, {"days": keep_days, "batch": PRUNE_BATCH}).rowcount


def dispatch_once(app: Any) -> int:
    """Send a delivering task for every endpoint that needs one now; how many were sent."""
    with db.autocommit() as conn:
        due = [row.id for row in conn.execute(_DUE, {"resend": RESEND_AFTER})]
    for endpoint_id in due:
        app.send_task(TASK, args=[str(endpoint_id)], queue=QUEUE)
    return len(due)


def start(app: Any) -> threading.Thread:
    """Dispatch every `dispatch_interval` seconds in a daemon thread of this process (beat's), until it exits; once
    a minute, also delete a batch of deliveries older than `keep_days`."""
    settings = webhook_settings()
    interval = settings.dispatch_interval

    def loop() -> None:
        pruned_at = time.monotonic()
        while True:
            try:
                dispatch_once(app)
                if time.monotonic() - pruned_at >= PRUNE_EVERY:
                    pruned_at = time.monotonic()
                    prune_once(settings.keep_days)
            except Exception:
                log.exception("webhook dispatch failed; next in %.1f s", interval)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="webhooks-dispatcher", daemon=True)
    thread.start()
    return thread
