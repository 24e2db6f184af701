"""Bringing the ledger's tables up to date with Alembic, under the ledger's own version table."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

from saga.ledger import VERSION_TABLE
from saga.settings import get_settings

# Alembic's default version table, which the ledger shared until it had its own.
SHARED_VERSION_TABLE = "alembic_version"
# The ledger's revisions as the shared table recorded them, and where each leaves the ledger's own history:
# 0002 and 0003 made the service's tables (api_keys, job_postings), which the service's own migrations now own.
SHARED_REVISIONS = {"0001": "0001", "0002": "0001", "0003": "0001", **{f"{n:04d}": f"{n:04d}" for n in range(4, 11)}}


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", (database_url or get_settings().database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None) -> None:
    """Create or upgrade the ledger's tables and nothing else; safe to run again."""
    url = database_url or get_settings().database_url
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            adopt_shared_history(conn)
    finally:
        engine.dispose()
    command.upgrade(alembic_config(url), "head")


# Whether the ledger's history is still in the shared table: the ledger's own version table is missing, while
# the shared one and the ledger's tables are there.
_SHARED_LEDGER = text(f"""
    SELECT to_regclass('{VERSION_TABLE}') IS NULL AND to_regclass('{SHARED_VERSION_TABLE}') IS NOT NULL
       AND to_regclass('saga_steps') IS NOT NULL AS shared
""")
# Which revision the shared table holds (one row per Alembic history kept there).
_SHARED_ROWS = text(f"SELECT version_num FROM {SHARED_VERSION_TABLE}")
# The ledger's own version table, as Alembic makes it.
_CREATE_OWN = text(f"""
    CREATE TABLE {VERSION_TABLE} (
        version_num varchar(32) NOT NULL, CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))
""")
_RECORD_OWN = text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:revision)")
# The ledger's row leaves the shared table; the table goes too once no other history is kept in it.
_FORGET_SHARED = text(f"DELETE FROM {SHARED_VERSION_TABLE} WHERE version_num = :revision")
_DROP_SHARED_IF_EMPTY = text(f"""
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM {SHARED_VERSION_TABLE}) THEN DROP TABLE {SHARED_VERSION_TABLE}; END IF;
    END $$
""")


def adopt_shared_history(conn: Connection) -> str | None:
    """Move a ledger made when it kept its revision in Alembic's shared `alembic_version` into its own version
    table, in the caller's transaction; the revision it moved, or None if there was nothing to move. The tables
    themselves, and every saga, step and event in them, stay as they are."""
    if not conn.execute(_SHARED_LEDGER).scalar_one():
        return None
    found = [r for r in conn.execute(_SHARED_ROWS).scalars() if r in SHARED_REVISIONS]
    if len(found) != 1:
        return None  # another application's history, not the ledger's
    conn.execute(_CREATE_OWN)
    conn.execute(_RECORD_OWN, {"revision": SHARED_REVISIONS[found[0]]})
    conn.execute(_FORGET_SHARED, {"revision": found[0]})
    conn.execute(_DROP_SHARED_IF_EMPTY)
    return found[0]
