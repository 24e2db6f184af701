"""Waiting for the client: a saga may be `awaiting_input` (a step asked for new values of some input fields),
with what it waits for in `awaiting`; recovery's index covers the new status, since its deadline ends the wait.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUSES = "'pending','running','compensating','awaiting_input','completed','compensated','paused','failed'"
OLD_STATUSES = "'pending','running','compensating','completed','compensated','paused','failed'"


def _statuses(allowed: str) -> None:
    # NOT VALID, then VALIDATE: the table is locked exclusively only for the swap, not for the scan.
    op.execute(f"ALTER TABLE sagas DROP CONSTRAINT sagas_status_known, "
               f"ADD CONSTRAINT sagas_status_known CHECK (status IN ({allowed})) NOT VALID")
    op.execute("ALTER TABLE sagas VALIDATE CONSTRAINT sagas_status_known")


def _active_index(statuses: str) -> None:
    # Built beside the old one without blocking writers, then swapped in under the same name.
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS sagas_active_next")
        op.execute(f"CREATE INDEX CONCURRENTLY sagas_active_next ON sagas (created_at) WHERE status IN ({statuses})")
        op.execute("DROP INDEX CONCURRENTLY sagas_active")
        op.execute("ALTER INDEX sagas_active_next RENAME TO sagas_active")


def upgrade() -> None:
    op.add_column("sagas", sa.Column("awaiting", JSONB))
    _statuses(STATUSES)
    _active_index("'pending', 'running', 'compensating', 'awaiting_input'")


def downgrade() -> None:
    op.execute("UPDATE sagas SET status = 'running' WHERE status = 'awaiting_input'")
    _active_index("'pending', 'running', 'compensating'")
    _statuses(OLD_STATUSES)
    op.drop_column("sagas", "awaiting")
