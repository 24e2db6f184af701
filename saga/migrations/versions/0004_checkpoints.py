"""Checkpoints written by a step while it runs, and what a compensation reported when it finished.

Revision ID: 0004
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Progress a step recorded before its side effect finished (for the charge: the PaymentIntent id),
    # shared by its later attempts and its compensation.
    op.add_column("saga_steps", sa.Column("checkpoint", JSONB))
    op.add_column("saga_steps", sa.Column("compensation_result", JSONB))


def downgrade() -> None:
    op.drop_column("saga_steps", "compensation_result")
    op.drop_column("saga_steps", "checkpoint")
