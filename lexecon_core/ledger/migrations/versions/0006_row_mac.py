"""A row MAC beside each ledger entry: the node's processes check each other's entries with an HMAC under a key
derived from the signing key, instead of an Ed25519 verification each (see ledger/_entry.py). Rows written before
have none; their signatures are checked, as for any row without a MAC that verifies.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("ledger_entries")}
    if "mac" not in columns:  # 0001 creates the table as the current schema declares it
        with op.batch_alter_table("ledger_entries") as batch:
            batch.add_column(sa.Column("mac", sa.LargeBinary(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("mac")
