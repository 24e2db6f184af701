"""Alembic environment of the service's own tables (see `migrations/__init__.py`)."""

from alembic import context
from sqlalchemy import create_engine

from migrations import VERSION_TABLE

connectable = create_engine(context.config.get_main_option("sqlalchemy.url"))
with connectable.connect() as connection:
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
