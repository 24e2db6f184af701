"""The key that seals a commit retried by message: a step's result travels in a task message only with an
HMAC under this key, which only the ledger holds, so whoever can merely send a task (through Flower, or the
broker) cannot have a step recorded as done without running it. One row, 32 random bytes made here, one key per
ledger.

Revision ID: 0011
Revises: 0010
"""
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saga_seal_key",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="saga_seal_key_one_row"),
    )
    # The key is made here, by the machine that migrates, never shipped with the code.
    op.execute(sa.text("INSERT INTO saga_seal_key (id, key) VALUES (1, :key)")
               .bindparams(sa.bindparam("key", secrets.token_bytes(32), type_=sa.LargeBinary)))


def downgrade() -> None:
    op.drop_table("saga_seal_key")
