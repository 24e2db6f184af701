"""The ledger's tables: one row per saga, one per step, an append-only event log, and the key that seals a
commit retried by message."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

sagas = Table(
    "sagas", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("type", Text, nullable=False),
    # The version of its type it started on, and that version's steps digested (`SagaType.fingerprint`;
    # NULL for sagas from before versions were recorded): it runs by those steps only.
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("fingerprint", Text),
    Column("status", Text, nullable=False),
    Column("input", JSONB, nullable=False),
    # The input's large fields (declared by the saga type): read only for the steps that need them.
    Column("large_input", JSONB),
    Column("idempotency_key", Text),
    # Digest of type and input, to tell a replay of an idempotency key from a different request under it.
    Column("request_hash", Text),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("error", Text),
    # When recovery should look at the saga again if nothing has moved it; NULL once it waits for nobody.
    Column("deadline", DateTime(timezone=True)),
    # While `awaiting_input`: {step, fields, reason, until}, what the step asked its client for and until when.
    Column("awaiting", JSONB),
    # While a rewind undoes steps: {to, step, input, large?, fields}, what the saga runs forward with afterwards.
    Column("rewind", JSONB),
    # The saga this one restarted (`restart`): it ended compensated or failed. At most one restart per saga.
    Column("restart_of", UUID(as_uuid=True), ForeignKey("sagas.id", ondelete="SET NULL",
                                                        name="sagas_restart_of_fkey")),
    # False while the saga waits `pending` for a slot of its tenant (`saga.tenant_slots`): not dispatched, and no
    # deadline, so recovery leaves it alone until a slot frees.
    Column("admitted", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("tenant", "idempotency_key", name="sagas_tenant_idempotency_key"),
    Index("sagas_tenant_created", "tenant", text("created_at DESC"), text("id DESC")),
    Index("sagas_tenant_status_created", "tenant", "status", text("created_at DESC")),
    Index("sagas_active", "created_at",
          postgresql_where=text("status IN ('pending', 'running', 'compensating', 'awaiting_input')")),
    # Retention's candidates: sagas that ended with nothing left to do.
    Index("sagas_ended", "created_at", postgresql_where=text("status IN ('completed', 'compensated')")),
    Index("sagas_restart_of", "restart_of", unique=True, postgresql_where=text("restart_of IS NOT NULL")),
    Index("sagas_held", "tenant", "created_at", postgresql_where=text("NOT admitted")),
)

saga_steps = Table(
    "saga_steps", metadata,
    Column("saga_id", UUID(as_uuid=True), ForeignKey("sagas.id", ondelete="CASCADE"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("compensation_attempts", Integer, nullable=False, server_default=text("0")),
    # Bumped by every claim; a commit carrying an older token comes from a worker that lost its lease.
    Column("fencing_token", BigInteger, nullable=False, server_default=text("0")),
    # Bumped by each rewind that resets the step: a new run, under a new idempotency key.
    Column("generation", Integer, nullable=False, server_default=text("0")),
    Column("lease_expires_at", DateTime(timezone=True)),
    # Earliest time the next attempt may start (retry backoff).
    Column("not_before", DateTime(timezone=True)),
    # Celery task id of the latest execution, to find it in Flower.
    Column("task_id", Text),
    # The step failed in a way that may have left its effect behind, so compensation must consider it.
    Column("effect_unknown", Boolean, nullable=False, server_default=text("false")),
    Column("result", JSONB),
    # Written by the running attempt (fenced by its token) before its effect finishes; read by later
    # attempts and by the compensation.
    Column("checkpoint", JSONB),
    Column("compensation_result", JSONB),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("compensated_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("saga_id", "idx"),
)

saga_events = Table(
    "saga_events", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("saga_id", UUID(as_uuid=True), nullable=False),
    Column("step", Text),
    Column("kind", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("saga_events_saga", "saga_id", "id"),
)

# One circuit breaker per third party steps depend on (`saga.breakers`), shared by every worker. `closed`: calls
# go through and `failures` counts consecutive transient failures; `open`: none until `retry_at`, then one probe
# at a time (`probe_token` until `probe_until`) whose success closes it and whose failure opens it for longer.
saga_breakers = Table(
    "saga_breakers", metadata,
    Column("name", Text, primary_key=True),
    Column("state", Text, nullable=False, server_default=text("'closed'")),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    # Seconds the breaker stays open this time: doubled by each failed probe, up to the dependency's cap.
    Column("cooldown", Float, nullable=False, server_default=text("0")),
    Column("retry_at", DateTime(timezone=True)),
    Column("probe_token", Text),
    Column("probe_until", DateTime(timezone=True)),
    Column("opened_at", DateTime(timezone=True)),
    Column("opens", BigInteger, nullable=False, server_default=text("0")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("state IN ('closed', 'open')", name="saga_breakers_state"),
)

# The key a worker seals a finished body's result with when the ledger cannot take it yet and a message carries
# it instead (`saga.commit_seal`): one row, 32 random bytes made by migration 0011. Whoever reads it can have a
# step recorded as done without running it, as whoever writes the ledger can: grant it to the engine's role alone.
saga_seal_key = Table(
    "saga_seal_key", metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("id = 1", name="saga_seal_key_one_row"),
)

# The version table of the ledger's own Alembic history (`saga.migrate`), apart from any other in the database.
VERSION_TABLE = "saga_alembic_version"
# Every table the ledger owns: leave them out of your own Alembic autogenerate (`include_name`).
TABLES = frozenset({*metadata.tables, VERSION_TABLE})
