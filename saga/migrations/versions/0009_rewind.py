"""Rewind: a saga taken back to an earlier step holds what it will run forward with (`rewind`) while that step
and the later ones are undone; each reset of a step starts a new run of it (`generation`, part of its
idempotency key).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("rewind", JSONB))
    op.add_column("saga_steps", sa.Column("generation", sa.Integer, nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    op.drop_column("saga_steps", "generation")
    op.drop_column("sagas", "rewind")
