"""Alembic environment: migrates the database named by the settings (or by the caller's config)."""

from alembic import context
from sqlalchemy import create_engine

from saga.ledger import metadata
from saga.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connectable = create_engine(url)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()
