"""A shop's own Celery project, laid out as Celery's tutorial lays out `proj`: the app in `shop/celery.py`, its
tasks (here: a saga type) in `shop/tasks.py`, its tables under its own Alembic history in `migrations/`."""
