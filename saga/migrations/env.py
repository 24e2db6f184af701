"""Alembic environment of the ledger: its own history, in its own version table (`saga_alembic_version`), so it
lives beside any other Alembic history in the same database."""

from alembic import context
from sqlalchemy import create_engine

from saga.ledger import VERSION_TABLE, metadata
from saga.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
else:
    connectable = create_engine(url)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()
