"""Ledger entries: how a body is hashed into the chain and signed. Pure functions; no I/O.

    genesis_hash = SHA-256("lexecon:ledger:genesis:v1" 0x00 node_id)
    entry_hash   = SHA-256("lexecon:ledger:entry:v1" 0x00 prev_hash body)
    signature    = Ed25519(key, "lexecon:ledger:sig:v1" 0x00 entry_hash)
    row MAC      = HMAC-SHA256(HKDF(key, "lexecon/ledger-row-mac/v1"), "lexecon:ledger:row-mac:v1" 0x00 entry_hash)

The row MAC is stored beside the entry, not in it: a shortcut for the node's own processes, which hold the key (one
HMAC instead of one Ed25519 verification per entry another worker wrote). Auditors and exports use the signature.

``body`` is canonical JSON: ``{"v": 1, "seq": n, "type": ..., "ts": ..., "node": node_id, "data": {...}}``.
Binding the sequence number and node id into the signed body means a copied, reordered or transplanted entry cannot
pass as another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lexecon_core import _canonical

ENTRY_TAG = b"lexecon:ledger:entry:v1\x00"
SIGNATURE_TAG = b"lexecon:ledger:sig:v1\x00"
GENESIS_TAG = b"lexecon:ledger:genesis:v1\x00"
BODY_VERSION = 1
GENESIS_TYPE = "ledger_genesis"  # the type of entry 1 of every ledger
TOMBSTONE_TYPE = "entries_purged"  # records a retention purge; covers the purged entries' sequence numbers


def genesis_hash(node_id: str) -> bytes:
    return hashlib.sha256(GENESIS_TAG + node_id.encode("utf-8")).digest()


def entry_hash(prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.sha256(ENTRY_TAG + prev_hash + body).digest()


def signing_message(entry_hash_: bytes) -> bytes:
    return SIGNATURE_TAG + entry_hash_


ROW_MAC_PURPOSE = b"ledger-row-mac/v1"  # for Signer.derive_key
ROW_MAC_TAG = b"lexecon:ledger:row-mac:v1\x00"


def row_mac(key: bytes, entry_hash_: bytes) -> bytes:
    return hmac.digest(key, ROW_MAC_TAG + entry_hash_, "sha256")


def utc_timestamp() -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-25T12:00:00.123456Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def make_body(*, seq: int, entry_type: str, timestamp: str, node_id: str, data: Mapping[str, Any]) -> bytes:
    payload = data if isinstance(data, dict) else dict(data)
    return _canonical.canonical_bytes(
        {"v": BODY_VERSION, "seq": seq, "type": entry_type, "ts": timestamp, "node": node_id, "data": payload}
    )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One stored entry, exactly as persisted."""

    seq: int
    entry_type: str
    created_at: str
    body: bytes
    prev_hash: bytes
    entry_hash: bytes
    kid: str
    signature: bytes

    @property
    def data(self) -> dict[str, Any]:
        """The entry's payload (``body["data"]``)."""
        parsed: dict[str, Any] = json.loads(self.body)["data"]
        return parsed

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "entry_type": self.entry_type,
            "created_at": self.created_at,
            "entry_hash": self.entry_hash.hex(),
            "prev_hash": self.prev_hash.hex(),
            "kid": self.kid,
            "signature": self.signature.hex(),
            "body": json.loads(self.body),
        }
