"""Retention and legal holds, recorded as ledger entries, and the one purge that honours both.

Entries are never updated or deleted by application code, with one exception: :func:`purge` may remove the *body* of
``decision`` entries (and their copied columns) once they are past retention and under no legal hold. The entry's
hash, links and signature stay, so the chain, every signature and every checkpoint still verify, and the purge itself
is recorded in the same transaction as a signed ``entries_purged`` tombstone covering the purged sequence numbers.
Verification rejects any purged entry no tombstone covers.

    retention_policy       {"retention_days": N, "reason": ...}           the latest one is in force
    legal_hold             {"hold_id", "from_seq", "to_seq", "reason"}     entries in range may not be purged...
    legal_hold_released    {"hold_id", "reason"}                          ...until the hold is released
    entries_purged         {"from_seq", "to_seq", "purged", "seqs_sha256", "reason", "retention_days"}

``seqs_sha256`` binds the exact set of purged sequence numbers (SHA-256 of them in ascending order, comma-separated),
so no other entry in the tombstone's range can later be blanked and passed off as purged.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Connection

from lexecon_core.errors import LedgerError
from lexecon_core.ledger import _schema

DEFAULT_RETENTION_DAYS = 3650  # ten years
PURGEABLE_TYPES = frozenset({"decision"})  # governance entries (keys, policies, holds, tombstones) are kept forever

_t = _schema.entries


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    from_seq: int
    to_seq: int
    reason: str


def seqs_digest(seqs: list[int]) -> str:
    return hashlib.sha256(",".join(str(s) for s in sorted(seqs)).encode()).hexdigest()


def new_hold_id() -> str:
    return f"hold_{uuid.uuid4().hex[:16]}"


def policy(days: int, reason: str) -> dict[str, object]:
    """The data of a ``retention_policy`` entry."""
    if not 1 <= days <= 36_500:
        raise LedgerError("retention must be between 1 and 36,500 days")
    return {"retention_days": days, "reason": reason}


def new_hold(from_seq: int, to_seq: int, reason: str) -> dict[str, object]:
    """The data of a ``legal_hold`` entry, under a new hold id."""
    if not 1 <= from_seq <= to_seq:
        raise LedgerError("a legal hold covers entries from_seq..to_seq with 1 <= from_seq <= to_seq")
    return {"hold_id": new_hold_id(), "from_seq": from_seq, "to_seq": to_seq, "reason": reason}


def _data(body: bytes) -> dict[str, object]:
    parsed = json.loads(body).get("data")
    return parsed if isinstance(parsed, dict) else {}


def state(conn: Connection, default_days: int) -> tuple[int, list[Hold]]:
    """The retention in force and the active holds, read from the ledger's own entries."""
    rows = conn.execute(
        select(_t.c.seq, _t.c.entry_type, _t.c.body, _t.c.purged)
        .where(_t.c.entry_type.in_(("retention_policy", "legal_hold", "legal_hold_released")))
        .order_by(_t.c.seq)
    )
    days, holds = default_days, {}
    for seq, entry_type, body, purged in rows:
        if purged:  # governance entries are never purged: this one was blanked behind the ledger's back
            raise LedgerError(f"retention record {seq} has been erased; refusing to act on retention or holds")
        data = _data(bytes(body))
        if entry_type == "retention_policy":
            days = int(str(data["retention_days"]))
        elif entry_type == "legal_hold":
            hold = Hold(str(data["hold_id"]), int(str(data["from_seq"])), int(str(data["to_seq"])), str(data["reason"]))
            holds[hold.hold_id] = hold
        else:
            holds.pop(str(data["hold_id"]), None)
    return days, list(holds.values())


def check_active(conn: Connection, hold_id: str, default_days: int) -> None:
    _, holds = state(conn, default_days)
    if hold_id not in {h.hold_id for h in holds}:
        raise LedgerError(f"no active legal hold {hold_id!r}")


def plan_purge(conn: Connection, up_to: int, *, now: datetime, default_days: int) -> tuple[list[int], int]:
    """The decision entries in 2..up_to to purge, and the retention applied. Raises LedgerError if any may not be."""
    days, holds = state(conn, default_days)
    cutoff = now - timedelta(days=days)
    candidates = conn.execute(
        select(_t.c.seq, _t.c.created_at)
        .where(and_(_t.c.seq >= 2, _t.c.seq <= up_to, _t.c.purged.is_(False), _t.c.entry_type.in_(PURGEABLE_TYPES)))
        .order_by(_t.c.seq)
    ).all()
    for seq, created_at in candidates:
        for hold in holds:
            if hold.from_seq <= seq <= hold.to_seq:
                raise LedgerError(f"entry {seq} is under legal hold {hold.hold_id} ({hold.reason}); nothing purged")
        created = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        if created > cutoff:
            until = (created + timedelta(days=days)).date().isoformat()
            raise LedgerError(f"entry {seq} is inside the {days}-day retention period (until {until}); nothing purged")
    return [int(seq) for seq, _ in candidates], days


def erase(conn: Connection, seqs: list[int]) -> None:
    """Remove the bodies and copied columns of ``seqs``; hashes, links and signatures stay."""
    if seqs:
        conn.execute(
            update(_t)
            .where(_t.c.seq.in_(seqs))
            .values(body=b"", decision_id=None, actor=None, tool=None, outcome=None, purged=True)
        )


def purge(conn: Connection, up_to: int, *, reason: str, now: datetime, default_days: int) -> dict[str, object] | None:
    """Erase what :func:`plan_purge` allows; return the data of the tombstone recording it (None: nothing was due)."""
    seqs, days = plan_purge(conn, up_to, now=now, default_days=default_days)
    if not seqs:
        return None
    erase(conn, seqs)
    return {"from_seq": seqs[0], "to_seq": seqs[-1], "purged": len(seqs), "seqs_sha256": seqs_digest(seqs),
            "reason": reason, "retention_days": days}  # fmt: skip
