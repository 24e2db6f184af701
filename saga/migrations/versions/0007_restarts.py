"""Restarts: a saga started again from one that ended compensated or failed points at it (`restart_of`); at
most one restart per saga, so the link is one both ways.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("restart_of", UUID(as_uuid=True),
                                     sa.ForeignKey("sagas.id", ondelete="SET NULL", name="sagas_restart_of_fkey")))
    op.create_index("sagas_restart_of", "sagas", ["restart_of"], unique=True,
                    postgresql_where=sa.text("restart_of IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("sagas_restart_of", table_name="sagas")
    op.drop_column("sagas", "restart_of")
