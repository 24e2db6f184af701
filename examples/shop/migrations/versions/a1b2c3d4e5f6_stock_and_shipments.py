"""The shop's stock and the carrier's shipments, with 100 of A1 on the shelf.

Revision ID: a1b2c3d4e5f6
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "a1b2c3d4e5f6"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shop_stock",
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("available", sa.Integer, sa.CheckConstraint("available >= 0"), nullable=False),
    )
    op.create_table(
        "shop_shipments",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("saga_id", sa.Uuid, nullable=False),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("country", sa.Text, nullable=False),
    )
    op.execute("INSERT INTO shop_stock (sku, available) VALUES ('A1', 100)")


def downgrade() -> None:
    op.drop_table("shop_shipments")
    op.drop_table("shop_stock")
