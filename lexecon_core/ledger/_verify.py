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

The checks themselves, and the state a walk carries from one page of rows to the next, are in ``_walk``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from itertools import islice
from operator import attrgetter
from typing import Any

from lexecon_core.keys import PublicKey
from lexecon_core.ledger._checkpoint import origin_for, verify_checkpoint
from lexecon_core.ledger._entry import genesis_hash
from lexecon_core.ledger._governance import entry_data, purge_problem
from lexecon_core.ledger._merkle import CompactRange
from lexecon_core.ledger._row import Row, StoredRow
from lexecon_core.ledger._walk import CHAIN, SIGNATURE, Failure, Walk


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
    # False when the keys came from the ledger or bundle itself: then "valid" proves internal consistency only, not
    # that the node signed it (whoever can write the file can also write its keys).
    keys_pinned: bool = True

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
            "keys_pinned": self.keys_pinned,
        }
        if not self.valid:
            data["first_bad_seq"] = self.first_bad_seq
            data["reason"] = self.reason
        return data


_FIELDS = attrgetter(*(f.name for f in fields(StoredRow)))
_PAGE = 1024  # rows checked together; about what stays in the CPU cache between reading a page and checking it


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

    The chain is walked in order; signatures are checked in batches on ``workers`` threads (default: one per core;
    1: on the calling thread, which beats handing batches to one other thread that then waits for the GIL).
    Each signed checkpoint note must verify with ``keys`` and its root must equal the RFC 6962 root of the first
    ``size`` entries, recomputed on the way (a ledger shorter than a checkpoint was truncated; a different root means
    history was rewritten). The report names the lowest-numbered failure, whichever check found it.
    """
    values = map(_FIELDS, rows)
    pages = iter(lambda: list(islice(values, _PAGE)), [])
    return verify_pages(
        pages,
        node_id=node_id,
        keys=keys,
        anchors=anchors,
        checkpoints=checkpoints,
        key_source=key_source,
        progress=progress,
        workers=workers,
        trust_checkpoints=trust_checkpoints,
    )


def verify_pages(
    pages: Iterable[Sequence[Row]],
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
    """:func:`verify_rows` over pages of rows straight from a database driver: no object built per row."""
    roots, failures = _trusted_roots(checkpoints, node_id, keys)
    threads = workers if workers is not None else min(os.cpu_count() or 1, 8)
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    walk = Walk(node_id, keys, anchors, roots, trust_checkpoints=trust_checkpoints, pool=pool)
    try:
        for page in pages:
            if page and not walk.page(page):
                break
            if progress is not None:
                progress(walk.count)
        else:
            walk.finish()
        walk.flush()
        problem = purge_problem(walk.purged, _parsed(walk.governance))
        if problem is not None:
            failures.append(Failure(*problem, CHAIN))
        failures.extend(walk.failures)
        failures.extend(f for f in (fut.result() for fut in walk.futures) if f is not None)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    count, prev = walk.count, walk.prev
    if progress is not None:
        progress(count)
    first = min(failures, default=None)
    return VerificationReport(
        valid=first is None,
        entries_verified=count if first is None else first.seq - 1,
        chain_intact=not any(f.kind == CHAIN for f in failures),
        signatures_valid=not any(f.kind == SIGNATURE for f in failures),
        first_bad_seq=None if first is None else first.seq,
        reason=None if first is None else first.reason,
        head_seq=count,
        head_hash=prev.hex() if count else None,
        key_source=key_source,
        anchors_checked=walk.anchors_checked,
        checkpoints_checked=len(roots),
        checkpoints_consistent=not any(f.checkpoint for f in failures),
    )


def _parsed(governance: list[tuple[int, str, bytes]]) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    for seq, kind, body in governance:
        try:
            ts, data = entry_data(body)
        except (ValueError, AttributeError):
            ts, data = "", {}  # hashed and signed, yet not an entry body: it governs nothing
        yield seq, kind, ts, data


@dataclass(slots=True)
class Continued:
    """What :func:`continue_walk` verified: the entries after ``start``, up to ``size``."""

    size: int
    head: bytes
    tree: CompactRange  # over entries 1..size
    keys: Mapping[str, PublicKey]  # the trusted keys, with those handed over by verified key_rotated entries
    hashes: list[bytes]  # of the entries verified by this walk, in order
    governance: list[tuple[int, str, str, dict[str, Any]]]  # (seq, type, ts, data) of its governance entries
    failure: tuple[int, str] | None  # (seq, reason) of the first entry that did not verify; then nothing is usable


def continue_walk(
    pages: Iterable[Sequence[Row]],
    *,
    node_id: str,
    keys: Mapping[str, PublicKey],
    start: tuple[int, bytes, CompactRange] | None = None,
    roots: Mapping[int, bytes] | None = None,
    observe: Callable[[Sequence[Row]], None] | None = None,
    anchors: Sequence[tuple[int, bytes]] = (),
    macs: Mapping[str, bytes] | None = None,
) -> Continued:
    """Verify the entries after ``start`` (``(size, head hash, tree)`` of a prefix already verified; None: from the
    genesis), as a node does before it acts on them. Entries under one of the signed checkpoint ``roots`` are
    checked by hash (the checkpoint vouches for them) except governance entries, whose signatures are always
    checked; the rest in full. Keys handed over by verified ``key_rotated`` entries are trusted after them.
    Purged entries must be exactly those signed tombstones name (so a blanked hold cannot vanish from the state);
    a walk that continues from ``start`` cannot see whole tombstone ranges, so a purged entry fails it (the caller
    then walks from the genesis entry).
    ``observe`` is shown each page whose rows all passed their checks so far (signatures may still fail at the end:
    use what it saw only if the walk succeeds). Single-threaded: the walks a node makes while it runs are short."""
    begin = start if start is not None else (0, genesis_hash(node_id), CompactRange())
    trusted = dict(roots or {})
    walk = Walk(
        node_id,
        keys,
        anchors,
        trusted,
        trust_checkpoints=bool(trusted),
        pool=None,
        start=(begin[0], begin[1], begin[2].copy()),
        learn_keys=True,
        macs=macs,
    )
    for page in pages:
        if page and not walk.page(page):
            break
        if observe is not None:
            observe(page)
    else:
        walk.finish(empty_ok=True)  # shorter than a signed checkpoint or an anchor says: truncated
    walk.flush()
    governance = list(_parsed(walk.governance))
    if start is None:
        problem = purge_problem(walk.purged, governance)
        if problem is not None:
            walk.failures.append(Failure(*problem, CHAIN))
    elif walk.purged:
        walk.failures.append(Failure(walk.purged[0], "purged after this handle last verified the ledger", CHAIN))
    first = min(walk.failures, default=None)
    return Continued(
        walk.count,
        walk.prev,
        walk.tree,
        walk.keys,
        walk.hashes,
        governance,
        None if first is None else (first.seq, first.reason),
    )


def trusted_roots(notes: Sequence[str], node_id: str, keys: Mapping[str, PublicKey]) -> dict[int, bytes]:
    """The roots of the checkpoint notes that verify with ``keys``; the others are not trusted (and not fatal)."""
    roots, failures = _trusted_roots(notes, node_id, keys)
    for failure in failures:  # two notes of one size that disagree: trust neither
        roots.pop(failure.seq, None)
    return roots


def _trusted_roots(
    notes: Sequence[str], node_id: str, keys: Mapping[str, PublicKey]
) -> tuple[dict[int, bytes], list[Failure]]:
    """The roots of the checkpoints that verify; a note that does not is itself a failure (at its size)."""
    roots: dict[int, bytes] = {}
    failures: list[Failure] = []
    for note in notes:
        try:
            checkpoint = verify_checkpoint(note, keys, origin=origin_for(node_id))
        except ValueError as exc:
            failures.append(Failure(_note_size(note), f"checkpoint rejected: {exc}", SIGNATURE, True))
            continue
        if roots.setdefault(checkpoint.size, checkpoint.root) != checkpoint.root:
            failures.append(
                Failure(checkpoint.size, "two signed checkpoints of one size disagree (a fork)", CHAIN, True)
            )
    return roots, failures


def _note_size(note: str) -> int:
    lines = note.split("\n")
    size = lines[1] if len(lines) > 1 else ""
    return int(size) if size.isascii() and size.isdigit() and int(size) > 0 else 1
