"""Retention: finding sagas that ended long ago without reading the whole ledger.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # created_at never changes and status is indexed already, so the per-step updates stay heap-only.
    op.create_index("sagas_ended", "sagas", ["created_at"],
                    postgresql_where=sa.text("status IN ('completed', 'compensated')"))


def downgrade() -> None:
    op.drop_index("sagas_ended", "sagas")
