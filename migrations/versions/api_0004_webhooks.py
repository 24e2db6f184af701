"""Webhook endpoints per tenant, and their outbox: one delivery row per event and endpoint, written by a trigger on
the ledger's `saga_events` in the same transaction as the transition that wrote the event.

Revision ID: api_0004
Revises: api_0003
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision = "api_0004"
down_revision = "api_0003"
branch_labels = None
depends_on = None

# The ledger's event kinds a webhook can carry, and the type each is delivered as (webhooks/events.py EVENT_TYPES,
# as it was when this migration was written).
KINDS = {
    "saga_completed": "saga.completed",
    "saga_compensated": "saga.compensated",
    "saga_paused": "saga.paused",
    "saga_failed": "saga.failed",
    "input_requested": "saga.awaiting_input",
    "step_succeeded": "step.succeeded",
    "step_failed": "step.failed",
    "step_compensated": "step.compensated",
    "compensation_failed": "step.compensation_failed",
}


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("saga_events"):
        raise RuntimeError("the webhooks' outbox needs the ledger's tables: migrate the ledger first (saga migrate)")
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("event_types", ARRAY(sa.Text), nullable=False),
        sa.Column("description", sa.Text),
        # The signing secrets, newest first: [{"secret": "whsec_...", "expires_at": null or ISO time}]; a rotated-out
        # one signs too until it expires, so receivers can switch over.
        sa.Column("secrets", JSONB, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # The delivering task's lease on the endpoint, and its fencing token: one task delivers an endpoint at a time.
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
        # When the dispatcher last sent a delivering task for it (not sent again while that one waits in the queue).
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
    )
    op.create_index("webhook_endpoints_tenant", "webhook_endpoints", ["tenant", "created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", UUID(as_uuid=True), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
                  nullable=False),
        # The ledger's event (saga_events.id; no foreign key: retention may delete the event, the delivery stays).
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("saga_id", UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        # The body, made at the first attempt and sent unchanged on every later one.
        sa.Column("payload", sa.Text),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("endpoint_id", "event_id", name="webhook_deliveries_once"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="webhook_deliveries_status_known"),
    )
    # What is due, per endpoint; and a saga's events in order, per endpoint (a later one waits for an earlier one).
    op.create_index("webhook_deliveries_due", "webhook_deliveries", ["endpoint_id", "next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("webhook_deliveries_saga", "webhook_deliveries", ["endpoint_id", "saga_id", "event_id"],
                    postgresql_where=sa.text("status <> 'delivered'"))
    op.create_index("webhook_deliveries_event", "webhook_deliveries", ["saga_id", "event_id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.BigInteger, sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("endpoint_id", UUID(as_uuid=True), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("duration_ms", sa.Float, nullable=False),
    )
    op.create_index("webhook_attempts_endpoint", "webhook_attempts", ["endpoint_id", sa.text("id DESC")])
    op.create_index("webhook_attempts_delivery", "webhook_attempts", ["delivery_id"])

    mapping = " ".join(f"WHEN '{kind}' THEN '{type_}'" for kind, type_ in KINDS.items())
    kinds = ", ".join(f"'{kind}'" for kind in KINDS)
    # The outbox is written by the statement that records the transition: nothing can commit one without the other.
    op.execute(f"""
        CREATE FUNCTION webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            event_type text := CASE NEW.kind {mapping} END;
        BEGIN
            INSERT INTO webhook_deliveries (endpoint_id, event_id, saga_id, type)
            SELECT w.id, NEW.id, NEW.saga_id, event_type
            FROM sagas s JOIN webhook_endpoints w ON w.tenant = s.tenant
            WHERE s.id = NEW.saga_id AND w.enabled AND event_type = ANY (w.event_types);
            RETURN NULL;
        END $$;
        CREATE TRIGGER saga_events_webhooks AFTER INSERT ON saga_events
            FOR EACH ROW WHEN (NEW.kind IN ({kinds})) EXECUTE FUNCTION webhook_outbox();
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS saga_events_webhooks ON saga_events")
    op.execute("DROP FUNCTION IF EXISTS webhook_outbox()")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
