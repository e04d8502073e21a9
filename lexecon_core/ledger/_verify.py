"""Verifying a ledger, entry by entry, as the format in ``_entry`` specifies.

For each entry, in sequence order, starting from the genesis hash of the node:

1. its sequence number is the next one (1, 2, 3, ... with no gap or repeat);
2. its ``prev_hash`` is the hash of the entry before it;
3. its ``entry_hash`` is SHA-256 over the tag, the previous hash and the stored body bytes;
4. the body is a JSON object whose ``seq``, ``type`` and ``node`` are the row's; entry 1 is the
   ``ledger_genesis`` entry (so an emptied or re-based ledger does not pass);
5. the copied columns (created_at = body ``ts``, decision id, actor, tool, outcome) agree with the signed body;
6. it is signed by a trusted key: the ``kid`` is known and the signature verifies over the entry hash.

Then each anchor (a ``(seq, entry_hash)`` pair the verifier learnt elsewhere, e.g. from a capability token or a
receipt) must be matched by the entry at that position: a ledger shorter than an anchor was truncated; one that
disagrees with it was rewritten. The first failure stops verification and is reported with its sequence number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from lexecon_core.keys import PublicKey
from lexecon_core.ledger._checkpoint import origin_for, verify_checkpoint
from lexecon_core.ledger._entry import (
    ENTRY_TAG,
    GENESIS_TYPE,
    TOMBSTONE_TYPE,
    entry_hash,
    genesis_hash,
    signing_message,
)
from lexecon_core.ledger._merkle import CompactRange, leaf_hash


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


@dataclass(slots=True)
class VerificationReport:
    valid: bool
    entries_verified: int
    chain_intact: bool
    signatures_valid: bool
    first_bad_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0
    head_hash: str | None = None
    key_source: str = "trusted keys"
    anchors_checked: int = 0
    checkpoints_checked: int = 0
    checkpoints_consistent: bool = True

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "valid": self.valid,
            "entries_verified": self.entries_verified,
            "chain_intact": self.chain_intact,
            "signatures_valid": self.signatures_valid,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "key_source": self.key_source,
            "anchors_checked": self.anchors_checked,
            "checkpoints_checked": self.checkpoints_checked,
            "checkpoints_consistent": self.checkpoints_consistent,
        }
        if not self.valid:
            data["first_bad_seq"] = self.first_bad_seq
            data["reason"] = self.reason
        return data


CHAIN, SIGNATURE, COLUMNS = "chain", "signature", "columns"


@dataclass(frozen=True, slots=True, order=True)
class _Failure:
    seq: int
    reason: str
    kind: str  # CHAIN: the hash chain or a body is broken; SIGNATURE: key or signature; COLUMNS: copied columns
    checkpoint: bool = False  # the failure is a signed checkpoint's (rejected, contradicted, or longer than the ledger)


def _check_links(row: StoredRow, expected_seq: int, prev: bytes) -> _Failure | None:
    """Checks 1-3: the hash chain alone."""
    seq = row.seq
    if seq != expected_seq:
        kind = "gap" if seq > expected_seq else "repeat or reorder"
        return _Failure(expected_seq, f"sequence {kind}: expected entry {expected_seq}, found {seq}", CHAIN)
    if row.prev_hash != prev:
        return _Failure(
            seq, "prev_hash does not link to the previous entry (entry removed, inserted or reordered)", CHAIN
        )
    if row.purged:  # the body is gone by design; the tombstone that covers it is checked at the end
        if row.body or any((row.decision_id, row.actor, row.tool, row.outcome)):
            return _Failure(seq, "a purged entry still carries content", COLUMNS)
        return None
    if entry_hash(prev, row.body) != row.entry_hash:
        return _Failure(seq, "entry_hash does not match the stored body (body edited)", CHAIN)
    return None


def _check_chain(row: StoredRow, expected_seq: int, prev: bytes, node_id: str) -> _Failure | None:
    """Checks 1-5: everything but the signature. Cheap, and inherently sequential."""
    failure = _check_links(row, expected_seq, prev)
    if failure is not None or row.purged:
        return failure
    seq = row.seq
    try:
        body = json.loads(row.body)
    except ValueError:
        return _Failure(seq, "body is not valid JSON", CHAIN)
    if not isinstance(body, dict):
        return _Failure(seq, "body is not a JSON object", CHAIN)
    if body.get("seq") != seq or body.get("type") != row.entry_type or body.get("node") != node_id:
        return _Failure(seq, "body seq/type/node disagree with the stored row", CHAIN)
    if seq == 1 and row.entry_type != GENESIS_TYPE:
        return _Failure(seq, f"entry 1 is not the {GENESIS_TYPE} entry", CHAIN)
    data = body.get("data")
    data = data if isinstance(data, dict) else {}
    request = data.get("request")
    request = request if isinstance(request, dict) else {}
    columns = (row.created_at, row.decision_id, row.actor, row.tool, row.outcome)
    expected = (body.get("ts"), data.get("decision_id"), request.get("actor"), request.get("tool"), data.get("outcome"))
    if columns != expected:
        reason = "copied columns (created_at/decision_id/actor/tool/outcome) disagree with the signed body"
        return _Failure(seq, reason, COLUMNS)
    return None


_Pending = list[tuple[int, PublicKey, bytes, bytes]]  # (seq, key, signature, entry_hash)


def _check_signatures(batch: _Pending) -> _Failure | None:
    """Check 6 for a batch. libsodium releases the GIL, so batches verify in parallel on threads."""
    for seq, key, signature, digest in batch:
        if not key.verify(signature, signing_message(digest)):
            return _Failure(seq, f"signature does not verify with key {key.kid!r}", SIGNATURE)
    return None


_BATCH = 2048


def verify_rows(
    rows: Iterable[StoredRow],
    *,
    node_id: str,
    keys: Mapping[str, PublicKey],
    anchors: Sequence[tuple[int, bytes]] = (),
    checkpoints: Sequence[str] = (),
    key_source: str = "trusted keys",
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    trust_checkpoints: bool = False,
) -> VerificationReport:
    """Verify a ledger given its rows in ascending sequence order. No I/O beyond iterating ``rows``.

    ``trust_checkpoints``: the fast path. Entries covered by a signed checkpoint are checked by hash only - sequence,
    links, entry hash and the recomputed root, which the checkpoint's signature vouches for - without parsing bodies
    or checking each entry's signature. Entries after the last checkpoint are checked in full.

    The chain is walked in order; signatures are checked in batches on ``workers`` threads (default: one per core).
    Each signed checkpoint note must verify with ``keys`` and its root must equal the RFC 6962 root of the first
    ``size`` entries, recomputed on the way (a ledger shorter than a checkpoint was truncated; a different root means
    history was rewritten). The report names the lowest-numbered failure, whichever check found it.
    """
    prev = genesis_hash(node_id)
    count = 0
    wanted = dict(anchors)
    anchors_checked = 0
    roots, failures = _trusted_roots(checkpoints, node_id, keys)
    tree = CompactRange()
    covered = max(roots, default=0) if trust_checkpoints else 0
    purged: list[int] = []  # entries whose body was purged: exactly the set some signed tombstone names
    tombstones: list[tuple[int, int, str]] = []
    batch: _Pending = []
    threads = workers if workers is not None else min(os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        futures: list[Future[_Failure | None]] = []
        for row in rows:
            if row.seq <= covered:
                # The hot loop of checkpoint-trusted verification: the common case inline, failures via the checks.
                intact = (
                    row.seq == count + 1
                    and row.prev_hash == prev
                    and not row.purged
                    and sha256(ENTRY_TAG + prev + row.body).digest() == row.entry_hash
                )
                failure = None if intact else _check_links(row, count + 1, prev)
                if failure is None and row.seq == 1 and row.entry_type != GENESIS_TYPE:
                    failure = _Failure(1, f"entry 1 is not the {GENESIS_TYPE} entry", CHAIN)
                if failure is None and wanted and wanted.get(row.seq, row.entry_hash) != row.entry_hash:
                    failure = _Failure(row.seq, "entry differs from an anchored hash (history rewritten)", CHAIN)
                if failure is not None:
                    failures.append(failure)
                    break
                if wanted:
                    anchors_checked += row.seq in wanted
                if row.purged:
                    purged.append(row.seq)
                elif row.entry_type == TOMBSTONE_TYPE:
                    tombstones.append(_tombstone_range(row.body))
                tree.push(sha256(b"\x00" + row.entry_hash).digest())  # leaf_hash, inline
                expected_root = roots.get(tree.size)
                if expected_root is not None and expected_root != tree.root():
                    failures.append(
                        _Failure(row.seq, "entries disagree with a signed checkpoint (history rewritten)", CHAIN, True)
                    )
                    break
                prev = row.entry_hash
                count += 1
                if progress is not None and count % 1024 == 0:
                    progress(count)
                continue
            failure = _check_chain(row, count + 1, prev, node_id)
            if failure is None:
                key = keys.get(row.kid)
                if key is None:
                    failure = _Failure(row.seq, f"signed by unknown key {row.kid!r}", SIGNATURE)
                elif wanted.get(row.seq, row.entry_hash) != row.entry_hash:
                    failure = _Failure(row.seq, "entry differs from an anchored hash (history rewritten)", CHAIN)
            if failure is not None:
                failures.append(failure)
                break
            anchors_checked += row.seq in wanted
            if row.purged:
                purged.append(row.seq)
            elif row.entry_type == TOMBSTONE_TYPE:
                tombstones.append(_tombstone_range(row.body))
            tree.push(leaf_hash(row.entry_hash))
            expected_root = roots.get(tree.size)
            if expected_root is not None and expected_root != tree.root():
                failures.append(
                    _Failure(row.seq, "entries disagree with a signed checkpoint (history rewritten)", CHAIN, True)
                )
                break
            batch.append((row.seq, key, row.signature, row.entry_hash))  # type: ignore[arg-type]
            if len(batch) >= _BATCH:
                futures.append(pool.submit(_check_signatures, batch))
                batch = []
            prev = row.entry_hash
            count += 1
            if progress is not None and count % 1024 == 0:
                progress(count)
        else:
            missing = sorted(seq for seq in wanted if seq > count)
            beyond = sorted(size for size in roots if size > count)
            if beyond:
                reason = f"ledger truncated: a signed checkpoint covers {beyond[-1]} entries, the ledger has {count}"
                failures.append(_Failure(count + 1, reason, CHAIN, True))
            elif missing:
                failures.append(
                    _Failure(count + 1, f"ledger truncated: anchored entry {missing[-1]} is missing", CHAIN)
                )
            elif count == 0:
                failures.append(_Failure(1, f"ledger is empty: no {GENESIS_TYPE} entry", CHAIN))
        if batch:
            futures.append(pool.submit(_check_signatures, batch))
        failure = _check_purges(purged, tombstones)
        if failure is not None:
            failures.append(failure)
        failures.extend(f for f in (fut.result() for fut in futures) if f is not None)
    if progress is not None:
        progress(count)

    if not failures:
        return VerificationReport(
            valid=True,
            entries_verified=count,
            chain_intact=True,
            signatures_valid=True,
            head_seq=count,
            head_hash=prev.hex() if count else None,
            key_source=key_source,
            anchors_checked=anchors_checked,
            checkpoints_checked=len(roots),
        )
    first = min(failures)
    return VerificationReport(
        valid=False,
        entries_verified=first.seq - 1,
        chain_intact=not any(f.kind == CHAIN for f in failures),
        signatures_valid=not any(f.kind == SIGNATURE for f in failures),
        first_bad_seq=first.seq,
        reason=first.reason,
        head_seq=count,
        head_hash=prev.hex() if count else None,
        key_source=key_source,
        anchors_checked=anchors_checked,
        checkpoints_checked=len(roots),
        checkpoints_consistent=not any(f.checkpoint for f in failures),
    )


def _tombstone_range(body: bytes) -> tuple[int, int, str]:
    try:
        data = json.loads(body).get("data") or {}
        return int(data["from_seq"]), int(data["to_seq"]), str(data["seqs_sha256"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return (0, -1, "")  # an unreadable tombstone covers nothing


def _check_purges(purged: list[int], tombstones: list[tuple[int, int, str]]) -> _Failure | None:
    """Every purged entry lies in a signed tombstone's range, and each tombstone names exactly the purged entries in
    its range (by digest): blanking any other entry - a legal hold, say - and marking it purged is caught."""
    for lo, hi, digest in tombstones:
        inside = [s for s in purged if lo <= s <= hi]
        if sha256(",".join(map(str, inside)).encode()).hexdigest() != digest:
            return _Failure(min(inside, default=lo), "purged entries differ from those the tombstone signed", CHAIN)
    unaccounted = [s for s in purged if not any(lo <= s <= hi for lo, hi, _ in tombstones)]
    if unaccounted:
        return _Failure(unaccounted[0], "entry body removed without a signed tombstone (purge not recorded)", CHAIN)
    return None


def _trusted_roots(
    notes: Sequence[str], node_id: str, keys: Mapping[str, PublicKey]
) -> tuple[dict[int, bytes], list[_Failure]]:
    """The roots of the checkpoints that verify; a note that does not is itself a failure (at its size)."""
    roots: dict[int, bytes] = {}
    failures: list[_Failure] = []
    for note in notes:
        try:
            checkpoint = verify_checkpoint(note, keys, origin=origin_for(node_id))
        except ValueError as exc:
            failures.append(_Failure(_note_size(note), f"checkpoint rejected: {exc}", SIGNATURE, True))
            continue
        if roots.setdefault(checkpoint.size, checkpoint.root) != checkpoint.root:
            failures.append(
                _Failure(checkpoint.size, "two signed checkpoints of one size disagree (a fork)", CHAIN, True)
            )
    return roots, failures


def _note_size(note: str) -> int:
    lines = note.split("\n")
    size = lines[1] if len(lines) > 1 else ""
    return int(size) if size.isascii() and size.isdigit() and int(size) > 0 else 1
