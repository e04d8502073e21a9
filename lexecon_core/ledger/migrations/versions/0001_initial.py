"""The initial ledger schema: entries, meta, published keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())  # ledgers made before migrations: adopt, don't fail
    if "ledger_entries" not in existing:
        op.create_table(
            "ledger_entries",
            sa.Column(
                "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False
            ),
            sa.Column("entry_type", sa.String(64), nullable=False),
            sa.Column("created_at", sa.String(32), nullable=False),
            sa.Column("body", sa.LargeBinary(), nullable=False),
            sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
            sa.Column("entry_hash", sa.LargeBinary(32), nullable=False, unique=True),
            sa.Column("kid", sa.String(64), nullable=False),
            sa.Column("signature", sa.LargeBinary(64), nullable=False),
            sa.Column("decision_id", sa.String(64), nullable=True),
            sa.Column("actor", sa.String(256), nullable=True),
            sa.Column("tool", sa.String(256), nullable=True),
            sa.Column("outcome", sa.String(16), nullable=True),
        )
        op.create_index("ix_ledger_entries_decision_id", "ledger_entries", ["decision_id"])
        op.create_index("ix_ledger_entries_actor", "ledger_entries", ["actor"])
        op.create_index("ix_ledger_entries_tool", "ledger_entries", ["tool"])
    if "ledger_meta" not in existing:
        op.create_table(
            "ledger_meta",
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(256), nullable=False),
        )
    if "ledger_keys" not in existing:
        op.create_table(
            "ledger_keys",
            sa.Column("kid", sa.String(64), primary_key=True),
            sa.Column("public_key", sa.LargeBinary(32), nullable=False),
            sa.Column("created_at", sa.String(32), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("ledger_keys")
    op.drop_table("ledger_meta")
    op.drop_table("ledger_entries")
