"""The service's Celery app, with the saga engine on it: what workers, beat, the API and the CLI share."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init

from saga import Sagas
from webhooks import dispatcher
from workers.settings import check_startup

app = Celery("saga")
app.config_from_object("celeryconfig")
app.set_default()


@worker_init.connect
@beat_init.connect
def _refuse_without_settings(sender: Any = None, **_: Any) -> None:
    """A worker or beat of this app starts only with every setting its saga types' steps need (connected before
    the engine's own start-up, so recovery never starts in a beat that refuses)."""
    if getattr(sender, "app", None) is app:
        check_startup()


@beat_init.connect
def _dispatch_webhooks(sender: Any = None, **_: Any) -> None:
    """Beat sends the webhooks' delivering tasks (`webhooks.dispatcher`), as it runs the engine's recovery."""
    if getattr(sender, "app", None) is app:
        dispatcher.start(app)


# The ledger's database comes from SAGA_DATABASE_URL.
sagas = Sagas(app)


def load_modules() -> None:
    """Import every module declaring saga types (the `imports` setting, from SAGA_MODULES)."""
    app.loader.import_default_modules()
