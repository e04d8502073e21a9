"""Retention and legal holds, recorded as ledger entries, and the one purge that honours both.

Entries are never updated or deleted by application code, with one exception: a purge may remove the *body* of
``decision`` entries (and their copied columns) once they are past retention and under no legal hold. The entry's
hash, links and signature stay, so the chain, every signature and every checkpoint still verify, and the purge itself
is recorded in the same transaction as a signed ``entries_purged`` tombstone covering the purged sequence numbers.

A purge decides from verified data only: the holds and retention in force come from the governance state folded from
verified entries (``_governance``), and each candidate's age from its own body, authenticated by the walk that found
it - never from the copied ``created_at`` column or an unverified row. The tombstone records what it decided by
(``retention_days``, ``as_of``, ``newest_ts``), so verification can prove, later, that every purge was allowed by the
holds and retention in force at its place in the chain (``_governance.purge_problem``).

``seqs_sha256`` binds the exact set of purged sequence numbers (SHA-256 of them in ascending order, comma-separated),
so no other entry in the tombstone's range can later be blanked and passed off as purged.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection

from lexecon_core.errors import LedgerError
from lexecon_core.ledger import _schema
from lexecon_core.ledger._governance import Governance, parse_ts, seqs_digest

DEFAULT_RETENTION_DAYS = 3650  # ten years
PURGEABLE_TYPES = frozenset({"decision"})  # governance entries (keys, policies, holds, tombstones) are kept forever

_t = _schema.entries


def policy(days: int, reason: str) -> dict[str, object]:
    """The data of a ``retention_policy`` entry."""
    if not 1 <= days <= 36_500:
        raise LedgerError("retention must be between 1 and 36,500 days")
    return {"retention_days": days, "reason": reason}


def new_hold(from_seq: int, to_seq: int, reason: str) -> dict[str, object]:
    """The data of a ``legal_hold`` entry, under a new hold id."""
    if not 1 <= from_seq <= to_seq:
        raise LedgerError("a legal hold covers entries from_seq..to_seq with 1 <= from_seq <= to_seq")
    return {"hold_id": f"hold_{uuid.uuid4().hex[:16]}", "from_seq": from_seq, "to_seq": to_seq, "reason": reason}


def require_active(hold_id: str, governance: Governance) -> None:
    if hold_id not in governance.holds:
        raise LedgerError(f"no active legal hold {hold_id!r}")


def plan_purge(
    candidates: Sequence[tuple[int, str | None]],
    governance: Governance,
    *,
    reason: str,
    now: datetime,
    default_days: int,
) -> tuple[list[int], dict[str, Any]] | None:
    """The entries to purge and the tombstone recording it, from ``candidates`` - verified ``(seq, ts)`` of the
    decision entries in range not yet purged. Refuses (LedgerError), purging nothing, if any of them is held or
    inside retention, or if the governance state could not be read. None: nothing is due."""
    if governance.damaged is not None:
        raise LedgerError(f"purge refused, the ledger's retention records are unreadable: {governance.damaged}")
    days = governance.retention(default_days)
    cutoff = now - timedelta(days=days)
    for seq, ts in candidates:
        for hold in governance.holds.values():
            if hold.covers(seq):
                raise LedgerError(f"entry {seq} is under legal hold {hold.hold_id} ({hold.reason}); nothing purged")
        try:
            created = parse_ts(ts or "")
        except ValueError:
            raise LedgerError(f"entry {seq} has no readable time; nothing purged") from None
        if created > cutoff:
            until = (created + timedelta(days=days)).date().isoformat()
            raise LedgerError(f"entry {seq} is inside the {days}-day retention period (until {until}); nothing purged")
    if not candidates:
        return None
    seqs = [seq for seq, _ in candidates]
    tombstone = {
        "from_seq": seqs[0],
        "to_seq": seqs[-1],
        "purged": len(seqs),
        "seqs_sha256": seqs_digest(seqs),
        "newest_ts": max(str(ts) for _, ts in candidates),
        "retention_days": days,
        "as_of": now.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "reason": reason,
    }
    return seqs, tombstone


def erase(conn: Connection, seqs: list[int]) -> None:
    """Remove the bodies and copied columns of ``seqs``; hashes, links and signatures stay."""
    if seqs:
        conn.execute(
            update(_t)
            .where(_t.c.seq.in_(seqs))
            .values(body=b"", decision_id=None, actor=None, tool=None, outcome=None, purged=True)
        )
