"""The ledger: sagas, steps and the append-only event log.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SAGA_STATUSES = "'pending','running','compensating','completed','compensated','paused','failed'"
STEP_STATUSES = "'pending','running','succeeded','failed','compensating','compensated','skipped'"


def upgrade() -> None:
    op.create_table(
        "sagas",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("input", JSONB, nullable=False),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_hash", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("error", sa.Text),
        sa.Column("deadline", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("tenant", "idempotency_key", name="sagas_tenant_idempotency_key"),
        sa.CheckConstraint(f"status IN ({SAGA_STATUSES})", name="sagas_status_known"),
        # Room on each page, so the per-step updates (updated_at, deadline: no index) stay heap-only.
        postgresql_with={"fillfactor": 80},
    )
    op.create_index("sagas_tenant_created", "sagas", ["tenant", sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_index("sagas_tenant_status_created", "sagas", ["tenant", "status", sa.text("created_at DESC")])
    # Recovery scans the sagas still in motion; deadline itself is left out of every index (see fillfactor).
    op.create_index("sagas_active", "sagas", ["created_at"],
                    postgresql_where=sa.text("status IN ('pending', 'running', 'compensating')"))

    op.create_table(
        "saga_steps",
        sa.Column("saga_id", UUID(as_uuid=True), sa.ForeignKey("sagas.id", ondelete="CASCADE"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("compensation_attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("fencing_token", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("not_before", sa.DateTime(timezone=True)),
        sa.Column("task_id", sa.Text),
        sa.Column("effect_unknown", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("result", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("compensated_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("saga_id", "idx"),
        sa.CheckConstraint(f"status IN ({STEP_STATUSES})", name="saga_steps_status_known"),
        sa.CheckConstraint("kind IN ('compensable','pivot','retriable')", name="saga_steps_kind_known"),
        postgresql_with={"fillfactor": 70},
    )

    op.create_table(
        "saga_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        # No foreign key: only the engine appends here, and a key check per event costs a lock on the saga.
        sa.Column("saga_id", UUID(as_uuid=True), nullable=False),
        sa.Column("step", sa.Text),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("saga_events_saga", "saga_events", ["saga_id", "id"])
    # The audit log is append-only: rows are never rewritten.
    op.execute(
        """
        CREATE FUNCTION saga_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'saga_events is append-only'; END $$;
        CREATE TRIGGER saga_events_no_update BEFORE UPDATE ON saga_events
            FOR EACH ROW EXECUTE FUNCTION saga_events_append_only();
        """
    )


def downgrade() -> None:
    op.drop_table("saga_events")
    op.execute("DROP FUNCTION IF EXISTS saga_events_append_only()")
    op.drop_table("saga_steps")
    op.drop_table("sagas")
