"""When to order more of an item.

Revision ID: c3d4e5f6a7b8
Revises: a1b2c3d4e5f6
"""
import sqlalchemy as sa
from alembic import op

revision = "c3d4e5f6a7b8"
down_revision = "a1b2c3d4e5f6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shop_stock", sa.Column("reorder_at", sa.Integer, nullable=False, server_default="10"))


def downgrade() -> None:
    op.drop_column("shop_stock", "reorder_at")
