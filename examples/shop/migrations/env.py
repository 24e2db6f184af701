"""The shop's Alembic environment: its database is the one the ledger lives in (SAGA_DATABASE_URL)."""

import os

from alembic import context
from sqlalchemy import create_engine

import saga

url = os.environ.get("SAGA_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/shop")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """What `alembic revision --autogenerate` may compare: not the ledger's tables (`saga migrate` owns them)."""
    return not (type_ == "table" and name in saga.LEDGER_TABLES)


engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
