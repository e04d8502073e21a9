"""Mark entries whose body was purged under retention (the hash, links and signature stay).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("ledger_entries")}
    if "purged" not in columns:
        with op.batch_alter_table("ledger_entries") as batch:
            batch.add_column(sa.Column("purged", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("purged")
