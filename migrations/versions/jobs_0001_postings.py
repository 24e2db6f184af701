"""Job postings, the rows the job-posting saga creates, publishes and (when compensating) deletes. A ledger from
before the service had its own migrations made this table already: then it is kept as it is.

Revision ID: jobs_0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "jobs_0001"
down_revision = None
branch_labels = ("jobs",)
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("job_postings"):
        return
    op.create_table(
        "job_postings",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        # One posting per saga: a re-executed step finds the row instead of inserting a second one.
        sa.Column("saga_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("company", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("contact_email", sa.Text, nullable=False),
        sa.Column("logo_key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="draft"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('draft', 'live')", name="job_postings_status_known"),
    )


def downgrade() -> None:
    op.drop_table("job_postings")
