"""Versions of a saga type: each saga records the version it started on and its steps' fingerprint, and runs
by that version's steps only. Sagas from before this revision have no fingerprint: they are version 1.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")))
    op.add_column("sagas", sa.Column("fingerprint", sa.Text))


def downgrade() -> None:
    op.drop_column("sagas", "fingerprint")
    op.drop_column("sagas", "version")
