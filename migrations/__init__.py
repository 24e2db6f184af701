"""The service's own tables, beside the ledger's, under a version table of their own (`service_alembic_version`).

Two independent histories (Alembic branches): `api`, the HTTP API's keys and webhooks (whose outbox a trigger on the
ledger's `saga_events` writes, so the ledger is migrated first); `jobs`, the job board's postings. A shop that runs
the API for its own saga types takes `api` alone.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

VERSION_TABLE = "service_alembic_version"
BRANCHES = ("api", "jobs")


def upgrade(database_url: str, branches: tuple[str, ...] = BRANCHES) -> None:
    """Create or upgrade the tables of `branches`; safe to run again."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    for branch in branches:
        command.upgrade(config, f"{branch}@head")
