"""The service's Celery app, with the saga engine on it: what workers, beat, the API and the CLI share."""

from __future__ import annotations

from celery import Celery

from saga import Sagas

app = Celery("saga")
app.config_from_object("celeryconfig")
app.set_default()
# The ledger's database comes from SAGA_DATABASE_URL.
sagas = Sagas(app)


def load_modules() -> None:
    """Import every module declaring saga types (the `imports` setting, from SAGA_MODULES)."""
    app.loader.import_default_modules()
