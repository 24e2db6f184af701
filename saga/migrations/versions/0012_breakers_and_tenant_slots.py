"""Circuit breakers shared by the fleet (`saga_breakers`, one row per third party a step depends on), and sagas
held for a slot of their tenant (`sagas.admitted`): a saga over its tenant's in-flight limit is accepted
`pending` and not dispatched until one of the tenant's sagas ends.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saga_breakers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'closed'")),
        sa.Column("failures", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("cooldown", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("retry_at", sa.DateTime(timezone=True)),
        sa.Column("probe_token", sa.Text),
        sa.Column("probe_until", sa.DateTime(timezone=True)),
        sa.Column("opened_at", sa.DateTime(timezone=True)),
        sa.Column("opens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("state IN ('closed', 'open')", name="saga_breakers_state"),
    )
    op.add_column("sagas", sa.Column("admitted", sa.Boolean, nullable=False, server_default=sa.text("true")))
    op.create_index("sagas_held", "sagas", ["tenant", "created_at"], postgresql_where=sa.text("NOT admitted"))


def downgrade() -> None:
    op.drop_index("sagas_held", table_name="sagas")
    op.drop_column("sagas", "admitted")
    op.drop_table("saga_breakers")
