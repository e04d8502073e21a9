"""The node's governance state, derived from verified ledger entries only. Pure: no I/O.

What the node *acts on* - the policy in force, the retention period, the legal holds, the API keys - is a function of
the signed chain, never of a table or a copied column: whoever can write the database but not sign cannot change it.
:class:`Governance` folds governance entries, in sequence order, into that state; the ledger feeds it only entries it
has verified (hash, signature, place in the chain). Verification replays the same fold to check that every purge
was allowed by the holds and retention in force when it was made.

    policy_loaded          {"policy_version", "source", "document"}        the latest is in force
    retention_policy       {"retention_days", "reason"}                    the latest is in force
    legal_hold             {"hold_id", "from_seq", "to_seq", "reason"}     entries in range may not be purged...
    legal_hold_released    {"hold_id", "reason"}                           ...until the hold is released
    api_key_created        {"key_id", "name", "role", "actors", "key_sha256", "by"}
    api_key_revoked        {"key_id", "name", "role", "by"}
    entries_purged         {"from_seq", "to_seq", "purged", "seqs_sha256", "newest_ts", "retention_days", "as_of",
                            "reason"}: ``newest_ts`` is the time of the newest entry purged, ``as_of`` the node's
                            clock when it judged retention
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from lexecon_core.errors import LexeconError
from lexecon_core.keys import PublicKey, _b64url_decode
from lexecon_core.ledger._entry import TOMBSTONE_TYPE

KEY_ROTATED = "key_rotated"
GOVERNANCE_TYPES = frozenset(
    {
        "policy_loaded",
        "retention_policy",
        "legal_hold",
        "legal_hold_released",
        "api_key_created",
        "api_key_revoked",
        KEY_ROTATED,
        TOMBSTONE_TYPE,
    }
)
# Canonical bodies end with their type and version (keys sorted: data, node, seq, ts, type, v), so most rows - the
# decisions - are told apart from governance entries without parsing them.
DECISION_SUFFIX = b',"type":"decision","v":1}'
_TYPE_MARK = b',"type":"'
_TS_MARK = b',"ts":"'


def handed_over_key(data: Mapping[str, Any]) -> PublicKey | None:
    """The key a ``key_rotated`` entry's data hands over to, if it names one whose kid is its own; else None. Whether
    the entry itself is to be believed (its signature by the old key) is the caller's to have checked."""
    try:
        key = PublicKey.from_raw(_b64url_decode(str(data["new_public_key"])))
    except (KeyError, TypeError, ValueError, LexeconError):
        return None
    return key if key.kid == data.get("new_kid") else None


def body_type(body: bytes) -> str | None:
    """The ``type`` of a canonical entry body, read from its end; None if the body does not end as ours do."""
    if body.endswith(DECISION_SUFFIX):
        return "decision"
    if not body.endswith(b'","v":1}'):
        return None
    start = body.rfind(_TYPE_MARK)
    if start < 0:
        return None
    value = body[start + len(_TYPE_MARK) : -len(b'","v":1}')]
    return value.decode("ascii") if value.isascii() and b'"' not in value and b"\\" not in value else None


def body_ts(body: bytes) -> str | None:
    """The ``ts`` of a canonical entry body (it precedes ``type``), read without parsing the body."""
    end = body.rfind(_TYPE_MARK)
    start = body.rfind(_TS_MARK, 0, end)
    if start < 0 or end < 0:
        return None
    value = body[start + len(_TS_MARK) : end - 1]
    return value.decode("ascii") if value.isascii() and b'"' not in value else None


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def seqs_digest(seqs: Iterable[int]) -> str:
    """What a tombstone signs of the purged set: SHA-256 of the sequence numbers, ascending, comma-separated."""
    return hashlib.sha256(",".join(str(s) for s in sorted(seqs)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    from_seq: int
    to_seq: int
    reason: str

    def covers(self, seq: int) -> bool:
        return self.from_seq <= seq <= self.to_seq


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """The ``policy_loaded`` entry in force."""

    seq: int
    version: str
    source: str
    document: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as its signed creation (and revocation) entries describe it."""

    key_id: str
    name: str
    role: str
    actors: str
    key_sha256: bytes | None  # None for keys recorded before creation entries carried the key's hash: not usable
    created_at: str
    created_seq: int
    revoked_at: str | None = None


@dataclass
class Governance:
    """Governance state after the entries folded into it so far."""

    retention_days: int | None = None  # None: no retention_policy entry yet (the node's setting applies)
    holds: dict[str, Hold] = field(default_factory=dict)
    policy: PolicyRecord | None = None
    api_keys: dict[str, KeyRecord] = field(default_factory=dict)
    # A governance entry that could not be read: state after it is not trustworthy for anything it might have
    # changed, so acts that depend on it (purges, hold releases) refuse. Only a node bug or a key holder makes one.
    damaged: str | None = None

    def copy(self) -> Governance:
        """A snapshot: later entries folded into this state do not change it."""
        return Governance(self.retention_days, dict(self.holds), self.policy, dict(self.api_keys), self.damaged)

    def apply(self, seq: int, entry_type: str, ts: str, data: Mapping[str, Any]) -> None:
        """Fold one verified entry in. Entries of other types change nothing."""
        try:
            self._apply(seq, entry_type, ts, data)
        except (KeyError, TypeError, ValueError) as exc:
            self.damaged = self.damaged or f"governance entry {seq} ({entry_type}) is malformed: {exc!r}"

    def _apply(self, seq: int, entry_type: str, ts: str, data: Mapping[str, Any]) -> None:
        if entry_type == "policy_loaded":
            document = data["document"]
            if not isinstance(document, dict):
                raise TypeError("document is not an object")
            self.policy = PolicyRecord(seq, str(data["policy_version"]), str(data.get("source", "")), document)
        elif entry_type == "retention_policy":
            self.retention_days = _int(data["retention_days"])
        elif entry_type == "legal_hold":
            hold = Hold(str(data["hold_id"]), _int(data["from_seq"]), _int(data["to_seq"]), str(data["reason"]))
            self.holds[hold.hold_id] = hold
        elif entry_type == "legal_hold_released":
            self.holds.pop(str(data["hold_id"]), None)
        elif entry_type == "api_key_created":
            self.api_keys[str(data["key_id"])] = KeyRecord(
                str(data["key_id"]),
                str(data["name"]),
                str(data["role"]),
                str(data.get("actors", "*")),
                _sha256(data.get("key_sha256")),
                ts,
                seq,
            )
        elif entry_type == "api_key_revoked":
            found = self.api_keys.get(str(data["key_id"]))
            if found is not None and found.revoked_at is None:
                self.api_keys[found.key_id] = replace(found, revoked_at=ts)

    def retention(self, default_days: int) -> int:
        return self.retention_days if self.retention_days is not None else default_days


def _sha256(value: Any) -> bytes | None:
    """A hex SHA-256 as bytes, parsed once when the entry is folded in rather than on every key check."""
    try:
        digest = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def entry_data(body: bytes) -> tuple[str, dict[str, Any]]:
    """``(ts, data)`` of a verified body."""
    parsed = json.loads(body)
    data = parsed.get("data")
    return str(parsed.get("ts")), data if isinstance(data, dict) else {}


# -- purges, as verification re-checks them ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tombstone:
    seq: int
    from_seq: int
    to_seq: int
    seqs_sha256: str
    newest_ts: str | None
    retention_days: int | None
    as_of: str | None

    @classmethod
    def of(cls, seq: int, data: Mapping[str, Any]) -> Tombstone:
        try:
            lo, hi, digest = _int(data["from_seq"]), _int(data["to_seq"]), str(data["seqs_sha256"])
        except (KeyError, TypeError):
            lo, hi, digest = 0, -1, ""  # an unreadable tombstone covers nothing
        newest, days, as_of = data.get("newest_ts"), data.get("retention_days"), data.get("as_of")
        return cls(
            seq,
            lo,
            hi,
            digest,
            newest if isinstance(newest, str) else None,
            days if isinstance(days, int) and not isinstance(days, bool) else None,
            as_of if isinstance(as_of, str) else None,
        )


def purge_problem(
    purged: list[int], governance: Iterable[tuple[int, str, str, Mapping[str, Any]]]
) -> tuple[int, str] | None:
    """Check every purge against the signed record: each purged entry is named by a tombstone (by digest of the
    exact set), and each tombstone was allowed when it was written - no entry it purged was under a legal hold in
    force then, its retention is the one in force, and its newest purged entry was past that retention.

    ``governance`` are the governance entries as ``(seq, type, ts, data)`` in sequence order. Returns the lowest
    ``(seq, reason)`` found wrong, or None.
    """
    state = Governance()
    problems: list[tuple[int, str]] = []
    accounted: set[int] = set()
    for seq, entry_type, ts, data in governance:
        if entry_type == TOMBSTONE_TYPE:
            tombstone = Tombstone.of(seq, data)
            inside = [s for s in purged if tombstone.from_seq <= s <= tombstone.to_seq]
            accounted.update(inside)
            problem = _tombstone_problem(tombstone, inside, state)
            if problem is not None:
                problems.append(problem)
        state.apply(seq, entry_type, ts, data)
    unaccounted = [s for s in purged if s not in accounted]
    if unaccounted:
        problems.append((unaccounted[0], "entry body removed without a signed tombstone (purge not recorded)"))
    return min(problems, default=None)


def _tombstone_problem(tombstone: Tombstone, inside: list[int], state: Governance) -> tuple[int, str] | None:
    if seqs_digest(inside) != tombstone.seqs_sha256:
        return min(inside, default=tombstone.from_seq), "purged entries differ from those the tombstone signed"
    for hold in state.holds.values():
        held = [s for s in inside if hold.covers(s)]
        if held:
            return held[0], f"purged while under legal hold {hold.hold_id} (tombstone {tombstone.seq})"
    days = tombstone.retention_days
    if days is None or tombstone.newest_ts is None or tombstone.as_of is None:
        return tombstone.seq, "tombstone does not record the retention and age it purged by"
    if state.retention_days is not None and days != state.retention_days:
        signed = state.retention_days
        return tombstone.seq, f"tombstone applied {days} days of retention; the signed retention was {signed}"
    try:
        allowed = parse_ts(tombstone.newest_ts) + timedelta(days=days) <= parse_ts(tombstone.as_of)
    except ValueError:
        allowed = False
    if not allowed:
        return tombstone.seq, f"tombstone purged entries inside the {days}-day retention period"
    return None
