"""The service's Celery settings, in one place. Postgres holds the truth; these make messages reliable wake-ups.

`saga.Sagas` (in `workers/app.py`) adds the engine's tasks, recovery inside beat's process (a thread, not a
task beat sends, so Flower's task list shows the sagas' steps rather than a `saga.recover` row every few
seconds), and a check at worker start that refuses settings its guarantees cannot live with (prefetch,
visibility timeout, pool, ...).
"""

from workers.settings import service_settings

_settings = service_settings()

broker_url = _settings.broker_url
# Every module declaring saga types, and the webhooks' delivering task (run by workers of the `webhooks` queue).
imports = (*_settings.module_list, "webhooks.delivery")

# Ack after the step ran, so a message whose worker dies mid-step is delivered again.
task_acks_late = True
# A pool child killed mid-step (SIGKILL, OOM) requeues its message instead of failing it.
task_reject_on_worker_lost = True
# Failed or timed-out steps are acked: the ledger and the errback own what happens next (a requeued
# hard-timeout message would loop forever, firing the errback each time).
task_acks_on_failure = True
task_acks_on_timeout = True
# Take one message at a time, so a busy or dying worker holds no backlog of unacked steps.
worker_prefetch_multiplier = 1
# Redis redelivers unacked messages after this (SAGA_VISIBILITY_TIMEOUT); the worker refuses to start if a step
# can outlast it.
# The socket timeouts keep a broker that accepts connections but never answers from hanging a publish.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout, "socket_connect_timeout": 2, "socket_timeout": 5,
}
# Give up publishing quickly: the ledger already holds the saga, and recovery sends what was not sent.
task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
# Stop late-acked tasks when the broker connection drops, so they are not run twice (celery#3430).
worker_cancel_long_running_tasks_on_connection_loss = True
# Keep retrying the broker at start-up instead of dying when it is briefly unreachable.
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None
# Flower needs task events, and the "sent" event to show queued steps.
worker_send_task_events = True
task_send_sent_event = True

# Results live in the ledger; Celery's result backend is not used.
task_ignore_result = True
task_store_errors_even_if_ignored = False
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
timezone = "UTC"
enable_utc = True
worker_hijack_root_logger = False
