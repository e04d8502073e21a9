"""A ledger row as storage returns it, before any of it is trusted: a tampered row may hold any type in any column,
and whatever reads it must report that, never crash."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A row as read from storage, before any of it is trusted."""

    seq: int
    entry_type: str
    body: bytes
    prev_hash: bytes
    entry_hash: bytes
    kid: str
    signature: bytes
    created_at: str | None = None
    decision_id: str | None = None
    actor: str | None = None
    tool: str | None = None
    outcome: str | None = None
    purged: bool = False


Row = Sequence[Any]  # StoredRow's fields in order, as the database driver returned them (so not yet of trusted types)


def stored_row(values: Row) -> StoredRow:
    """A row from the driver as a :class:`StoredRow`, its binary columns as bytes whatever a tampered row holds."""
    seq, entry_type, body, prev_hash, digest, kid, signature = values[:7]
    return StoredRow(seq, entry_type, blob(body), blob(prev_hash), blob(digest), kid, blob(signature), *values[7:13])


def blob(value: Any) -> bytes:
    """Stored bytes, whatever type a tampered row now holds: verification must report, never crash."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if value is None:
        return b""
    return bytes(value)
