"""Who created and revoked each API key: one row per change, written in the same transaction as the key's.

Revision ID: api_0002
Revises: api_0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "api_0002"
down_revision = "api_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_key_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        # No foreign key: the record of who made or revoked a key outlives the key's row.
        sa.Column("key_id", sa.BigInteger, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("by", JSONB, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("kind IN ('created', 'revoked')", name="api_key_events_kind_known"),
    )
    op.create_index("api_key_events_key", "api_key_events", ["key_id", "id"])


def downgrade() -> None:
    op.drop_table("api_key_events")
