"""What each API key may do: its scopes. Keys from before scopes keep every one, and so do their `created` events
(they could do everything when they were made).

Revision ID: api_0003
Revises: api_0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "api_0003"
down_revision = "api_0002"
branch_labels = None
depends_on = None

# Every scope when this migration was written (api/keys.py SCOPES), as a PostgreSQL array.
EVERY_SCOPE = "ARRAY['sagas:read', 'sagas:start', 'sagas:operate', 'webhooks:manage']::text[]"


def upgrade() -> None:
    # The default fills the rows there are, and stays for a release still running beside this one during a rollout
    # (it creates keys without naming scopes, meaning every one); this release always names them.
    op.add_column("api_keys", sa.Column("scopes", ARRAY(sa.Text), nullable=False,
                                        server_default=sa.text(EVERY_SCOPE)))
    op.add_column("api_key_events", sa.Column("scopes", ARRAY(sa.Text)))
    # A key made before scopes could do everything: its creation says so.
    op.execute(f"UPDATE api_key_events SET scopes = {EVERY_SCOPE} WHERE kind = 'created'")


def downgrade() -> None:
    op.drop_column("api_key_events", "scopes")
    op.drop_column("api_keys", "scopes")
