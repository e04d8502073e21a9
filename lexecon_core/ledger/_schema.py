"""The ledger's tables. Entry bodies are stored as the exact canonical bytes that were hashed and signed."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

entries = Table(
    "ledger_entries",
    metadata,
    # INTEGER on SQLite so the column is the rowid alias (no second index); BIGINT elsewhere.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("entry_type", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("entry_hash", LargeBinary(32), nullable=False, unique=True),
    Column("kid", String(64), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
    # Copies of body fields for filtering. Verification checks they agree with the signed body.
    Column("decision_id", String(64), nullable=True),
    Column("actor", String(256), nullable=True),
    Column("tool", String(256), nullable=True),
    Column("outcome", String(16), nullable=True),
    # Set when retention purged the body (and the copied columns); hash, links and signature stay and still verify.
    Column("purged", Boolean, nullable=False, server_default=false()),
    # HMAC-SHA256 of entry_hash under a key derived from the signing key (see _entry.row_mac): lets the node's own
    # processes check each other's entries without an Ed25519 verification. Never part of what is signed or
    # exported; NULL (older rows, or a row someone inserted) means the signature is checked instead.
    Column("mac", LargeBinary(32), nullable=True),
    Index("ix_ledger_entries_decision_id", "decision_id"),
    Index("ix_ledger_entries_actor", "actor"),
    Index("ix_ledger_entries_tool", "tool"),
    Index("ix_ledger_entries_entry_type", "entry_type"),
)

meta = Table(
    "ledger_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

published_keys = Table(
    "ledger_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("created_at", String(32), nullable=False),
)

# Complete, aligned subtrees of the RFC 6962 tree over entry hashes: (level, idx) covers leaves
# [idx * 2**level, (idx + 1) * 2**level). Level 0 holds the leaves. Grown when a checkpoint is made.
tree = Table(
    "ledger_tree",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("kid", String(64), nullable=False),
    Column("note", Text, nullable=False),
)
