"""The Celery application shared by workers, beat, and every process that starts or acts on sagas."""

from __future__ import annotations

from celery import Celery

app = Celery("saga")
app.config_from_object("celeryconfig")
app.set_default()


def load_modules() -> None:
    """Import the engine's tasks and every module declaring saga types (the `imports` setting)."""
    app.loader.import_default_modules()
