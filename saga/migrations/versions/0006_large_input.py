"""Large input fields (`saga_type(..., large_fields=...)`) in a column of their own, read only by the steps
that need them.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sagas", sa.Column("large_input", JSONB))


def downgrade() -> None:
    op.drop_column("sagas", "large_input")
