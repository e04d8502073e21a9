"""API keys live in the signed ledger only: the ``api_keys`` table, which nothing linked to a signature, goes.

A node authenticates keys from verified ``api_key_created`` / ``api_key_revoked`` entries (lexecon_core.auth), so a
row inserted into that table by someone without the signing key made a key the node then honoured. Keys created
before their hash was signed into their creation entry no longer authenticate: create new ones.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "api_keys" in set(sa.inspect(op.get_bind()).get_table_names()):
        op.drop_table("api_keys")


def downgrade() -> None:
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
