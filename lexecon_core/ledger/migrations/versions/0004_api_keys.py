"""API keys for agents and services (only a hash of each key is stored); an index on entry type.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "ix_ledger_entries_entry_type" not in {i["name"] for i in inspector.get_indexes("ledger_entries")}:
        # Servers look up the latest policy_loaded entry to follow policy changes made elsewhere.
        op.create_index("ix_ledger_entries_entry_type", "ledger_entries", ["entry_type"])
    if "api_keys" in set(inspector.get_table_names()):
        return
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("actors", sa.String(256), nullable=False, server_default="*"),
        sa.Column("key_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_ledger_entries_entry_type", "ledger_entries")
