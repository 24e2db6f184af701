"""Where a saga type's messages go: its forward steps to its own queue, its compensations (and the task that settles
the saga after them) to that queue's `.compensations` queue, which every worker of the forward queue consumes too.

So an undo never waits behind forward work: a backlog of thousands of forward steps on `orders` leaves
`orders.compensations` empty but for the undos, and a worker fetching its next message takes from both queues in
turn (Redis and RabbitMQ alike).
"""

from __future__ import annotations

from typing import Any

from celery.signals import celeryd_after_setup

SUFFIX = ".compensations"


def compensation_queue(queue: str) -> str:
    """The queue of the compensations of a saga type whose steps go to `queue`."""
    return queue + SUFFIX


def install(app: Any) -> None:
    """Have every worker of `app` consume the compensation queue of each queue it consumes (`-Q orders` gives
    `orders` and `orders.compensations`), however its queues were chosen."""

    def add(sender: Any = None, instance: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is not app:
            return
        queues = app.amqp.queues
        for name in list(queues.consume_from):
            if not name.endswith(SUFFIX) and compensation_queue(name) not in queues.consume_from:
                queues.select_add(compensation_queue(name))

    celeryd_after_setup.connect(add, weak=False)
