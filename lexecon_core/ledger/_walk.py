"""One verification walk: the checks ``_verify`` specifies, applied to a ledger's rows page after page.

The checks take the rows as the database driver returned them and build no object per row on their usual path: a
node walks what other processes appended before it acts on it, and a checkpoint-trusted walk runs at hundreds of
thousands of rows a second, where any object per row would be much of the cost.
"""

from __future__ import annotations

import hmac
import json
import json.scanner
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, NamedTuple

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from lexecon_core.keys import PublicKey
from lexecon_core.ledger._entry import ENTRY_TAG, GENESIS_TYPE, SIGNATURE_TAG, entry_hash, genesis_hash, row_mac
from lexecon_core.ledger._governance import DECISION_SUFFIX, GOVERNANCE_TYPES, KEY_ROTATED, body_type, handed_over_key
from lexecon_core.ledger._merkle import CompactRange
from lexecon_core.ledger._row import Row, StoredRow, blob, stored_row

CHAIN, SIGNATURE, COLUMNS = "chain", "signature", "columns"


@dataclass(frozen=True, slots=True, order=True)
class Failure:
    seq: int
    reason: str
    kind: str  # CHAIN: the hash chain or a body is broken; SIGNATURE: key or signature; COLUMNS: copied columns
    checkpoint: bool = False  # the failure is a signed checkpoint's (rejected, contradicted, or longer than the ledger)


def _check_links(row: StoredRow, expected_seq: int, prev: bytes) -> Failure | None:
    """Checks 1-3: the hash chain alone."""
    seq = row.seq
    if seq != expected_seq:
        return _sequence_failure(seq, expected_seq)
    if row.prev_hash != prev:
        return Failure(seq, _UNLINKED, CHAIN)
    if row.purged:  # the body is gone by design; the tombstone that covers it is checked at the end
        if row.body or any((row.decision_id, row.actor, row.tool, row.outcome)):
            return Failure(seq, _PURGED_WITH_CONTENT, COLUMNS)
        return None
    if entry_hash(prev, row.body) != row.entry_hash:
        return Failure(seq, _EDITED, CHAIN)
    return None


_UNLINKED = "prev_hash does not link to the previous entry (entry removed, inserted or reordered)"
_EDITED = "entry_hash does not match the stored body (body edited)"
_PURGED_WITH_CONTENT = "a purged entry still carries content"
_ANCHOR_DIFFERS = "entry differs from an anchored hash (history rewritten)"
_CHECKPOINT_DIFFERS = "entries disagree with a signed checkpoint (history rewritten)"
_NOT_GENESIS = f"entry 1 is not the {GENESIS_TYPE} entry"


def _sequence_failure(seq: int, expected_seq: int) -> Failure:
    kind = "gap" if seq > expected_seq else "repeat or reorder"
    return Failure(expected_seq, f"sequence {kind}: expected entry {expected_seq}, found {seq}", CHAIN)


_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: any decoder will do


def _parse(body: bytes) -> Any:
    """``json.loads(body)``, the same answers and errors, for less: a body that opens with ``{"`` goes straight to
    the C scanner, past the encoding sniffing (which can only answer UTF-8 for it) and the Python wrappers."""
    if not body.startswith(b'{"'):
        return json.loads(body)
    text = body.decode("utf-8", "surrogatepass")
    try:
        parsed, end = _scan(text, 0)
    except StopIteration:  # a value missing inside the object
        raise ValueError("expecting a value") from None
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after the JSON value")
    return parsed


def _check_body(seq: int, entry_type: str, body: bytes, node_id: str, columns: tuple[Any, ...]) -> Failure | None:
    """Checks 4-5 for an entry whose hash is good."""
    try:
        parsed = _parse(body)
    except ValueError:
        return Failure(seq, "body is not valid JSON", CHAIN)
    if not isinstance(parsed, dict):
        return Failure(seq, "body is not a JSON object", CHAIN)
    if parsed.get("seq") != seq or parsed.get("type") != entry_type or parsed.get("node") != node_id:
        return Failure(seq, "body seq/type/node disagree with the stored row", CHAIN)
    if seq == 1 and entry_type != GENESIS_TYPE:
        return Failure(seq, _NOT_GENESIS, CHAIN)
    data = parsed.get("data")
    data = data if isinstance(data, dict) else {}
    request = data.get("request")
    request = request if isinstance(request, dict) else {}
    expected = (
        parsed.get("ts"),
        data.get("decision_id"),
        request.get("actor"),
        request.get("tool"),
        data.get("outcome"),
    )
    if columns != expected:
        reason = "copied columns (created_at/decision_id/actor/tool/outcome) disagree with the signed body"
        return Failure(seq, reason, COLUMNS)
    return None


_Pending = list[tuple[int, PublicKey, bytes, bytes]]  # (seq, key, signature, entry_hash)


def _check_signatures(batch: _Pending) -> Failure | None:
    """Check 6 for a batch. libsodium releases the GIL, so batches verify in parallel on threads.

    This is ``PublicKey.verify`` without PyNaCl's per-call wrapping (a VerifyKey lookup, argument checks, building
    the signed message): libsodium's ``crypto_sign_open`` over signature || message, which verifies exactly what
    ``crypto_sign_verify_detached`` does. The lengths are checked first: libsodium trusts them.
    """
    for seq, key, signature, digest in batch:
        public = key.raw
        if len(signature) == 64 and len(public) == 32:
            try:
                crypto_sign_open(signature + SIGNATURE_TAG + digest, public)
                continue
            except (BadSignatureError, ValueError, TypeError):
                pass
        return Failure(seq, f"signature does not verify with key {key.kid!r}", SIGNATURE)
    return None


def _mac_matches(key: bytes | None, digest: bytes, row: Row) -> bool:
    """Whether the row's stored MAC (column 14, after purged) is the node's MAC of its entry hash."""
    if key is None or len(row) < 14 or not isinstance(row[13], (bytes, memoryview)):
        return False
    return hmac.compare_digest(row_mac(key, digest), bytes(row[13]))


_BATCH = 2048


class _Checked(NamedTuple):
    """What checking a run of consecutive rows found, before the Merkle tree has seen them."""

    hashes: Sequence[bytes]  # of the rows that passed, in order (a prefix of the run)
    signatures: _Pending | None  # theirs, still to verify; None under a trusted checkpoint
    purged: list[int]  # positions in the run of purged rows
    governance: list[tuple[int, str, bytes]]  # (position, type, body) of governance entries (see _governance)
    failure: Failure | None  # of the row after the last that passed


class Walk:
    """One verification's state, carried from one page of rows to the next.

    A page is checked in two steps: the chain (checks 1-5, or hashes only under a trusted checkpoint) over its rows,
    then the Merkle tree over those that passed, compared at each signed checkpoint size. Only then is the outcome
    committed, up to the first failure, so that the report is what checking one row after another would say.
    """

    def __init__(
        self,
        node_id: str,
        keys: Mapping[str, PublicKey],
        anchors: Sequence[tuple[int, bytes]],
        roots: dict[int, bytes],
        *,
        trust_checkpoints: bool,
        pool: ThreadPoolExecutor | None,
        start: tuple[int, bytes, CompactRange] | None = None,
        learn_keys: bool = False,
        macs: Mapping[str, bytes] | None = None,
    ) -> None:
        self.node_id = node_id
        # Row MAC keys (kid -> key) of a node walking its own ledger: a row whose MAC checks needs no Ed25519
        # verification. Only the node holds them; a row without a good MAC has its signature checked as usual.
        self.macs = macs or None
        # With learn_keys, a verified key_rotated entry adds its new key for the entries after it: the signed
        # hand-over is how a node's next key becomes trusted (only this walk's copy of the keys changes).
        self.keys = dict(keys) if learn_keys else keys
        self.learn_keys = learn_keys
        self.wanted = dict(anchors)
        self.anchored = sorted(self.wanted)
        self.roots, self.sizes = roots, sorted(roots)
        self.covered = max(roots, default=0) if trust_checkpoints else 0
        # A walk may continue one that ended earlier (entries 1..count verified, ``prev`` the last hash, ``tree`` the
        # Merkle tree over them); then the tree grows over every entry, not just up to the last checkpoint.
        self.count, self.prev, self.tree = start if start is not None else (0, genesis_hash(node_id), CompactRange())
        self.whole_tree = start is not None
        self.anchors_checked = 0
        self.purged: list[int] = []  # entries whose body was purged: exactly the set some signed tombstone names
        self.governance: list[tuple[int, str, bytes]] = []  # (seq, type, body), verified; see _governance
        self.hashes: list[bytes] = []  # of every entry that passed, when continuing a walk (start given)
        self.failures: list[Failure] = []
        self.batch: _Pending = []
        self.pool = pool  # None: signatures are checked on this thread
        self.futures: list[Future[Failure | None]] = []

    def page(self, rows: Sequence[Row]) -> bool:
        """Check a page of rows; False once a failure ends the walk."""
        # Which check a row gets follows from its position: a row whose seq is not the expected one fails the same
        # way either way, and one whose seq is, is under the last checkpoint exactly when its position is.
        trusted = min(max(self.covered - self.count, 0), len(rows))
        if trusted and not self._commit(self._trusted(rows[:trusted] if trusted < len(rows) else rows)):
            return False
        return trusted == len(rows) or self._commit(self._full(rows[trusted:] if trusted else rows))

    def _trusted(self, rows: Sequence[Row]) -> _Checked:
        """Rows under a signed checkpoint, whose root vouches for them: checks 1-3 and the genesis type, a whole run
        at once. Anything unusual (a failure, a purged row, a column of the wrong type) and the run is checked again
        one row at a time, which names the failure exactly."""
        first = self.count + 1
        columns = list(zip(*rows, strict=True))
        seqs, types, bodies, prevs, hashes = columns[:5]
        if (
            seqs != tuple(range(first, first + len(rows)))
            or any(columns[12])  # purged
            or prevs[0] != self.prev
            or prevs[1:] != hashes[:-1]
            or (first == 1 and types[0] != GENESIS_TYPE)
        ):
            return self._trusted_rows(rows)
        try:
            if (
                tuple([sha256(ENTRY_TAG + prev + body).digest() for prev, body in zip(prevs, bodies, strict=True)])
                != hashes
            ):
                return self._trusted_rows(rows)
        except TypeError:
            return self._trusted_rows(rows)
        wanted = self.wanted
        if any(wanted[seq] != hashes[seq - first] for seq in self._anchored_in(first, first + len(rows) - 1)):
            return self._trusted_rows(rows)
        governance = []
        for i in [i for i, body in enumerate(bodies) if not body.endswith(DECISION_SUFFIX)]:
            if (kind := body_type(bodies[i])) in GOVERNANCE_TYPES:
                row = rows[i]
                if self._governance_signature(first + i, row[5], row[6], hashes[i], bodies[i]) is not None:
                    return self._trusted_rows(rows)
                governance.append((i, kind, bodies[i]))
        return _Checked(hashes, None, [], governance, None)

    def _governance_signature(self, seq: int, kid: Any, signature: Any, digest: bytes, body: bytes) -> Failure | None:
        """Under a checkpoint, a governance entry's own signature is checked as well: what the node acts on never
        rests on a checkpoint alone (one signed before a node checked what it covered could vouch for a planted row).
        A key it hands over is learnt here."""
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            return Failure(seq, f"signed by unknown key {kid!r}", SIGNATURE)
        failure = _check_signatures([(seq, key, blob(signature), digest)])
        if failure is None:
            self._learn(body)
        return failure

    def _learn(self, body: bytes) -> None:
        if not self.learn_keys or body_type(body) != KEY_ROTATED:
            return
        try:
            data = json.loads(body)["data"]
        except (ValueError, KeyError, TypeError):
            return  # a hand-over that names no usable key introduces none
        key = handed_over_key(data) if isinstance(data, dict) else None
        if key is not None:
            self.keys[key.kid] = key  # type: ignore[index]  # a dict whenever learn_keys is set

    def _trusted_rows(self, rows: Sequence[Row]) -> _Checked:
        prev, expected, wanted = self.prev, self.count + 1, self.wanted
        hashes: list[bytes] = []
        purged: list[int] = []
        governance: list[tuple[int, str, bytes]] = []
        failure = None
        for values in rows:
            row = stored_row(values)
            failure = _check_links(row, expected, prev)
            if failure is None and row.seq == 1 and row.entry_type != GENESIS_TYPE:
                failure = Failure(1, _NOT_GENESIS, CHAIN)
            if failure is None and wanted.get(row.seq, row.entry_hash) != row.entry_hash:
                failure = Failure(row.seq, _ANCHOR_DIFFERS, CHAIN)
            if failure is None and not row.purged and (kind := body_type(row.body)) in GOVERNANCE_TYPES:
                failure = self._governance_signature(row.seq, row.kid, row.signature, row.entry_hash, row.body)
                if failure is None:
                    governance.append((len(hashes), str(kind), row.body))
            if failure is not None:
                break
            if row.purged:
                purged.append(len(hashes))
            hashes.append(row.entry_hash)
            prev, expected = row.entry_hash, expected + 1
        return _Checked(hashes, None, purged, governance, failure)

    def _full(self, rows: Sequence[Row]) -> _Checked:
        """Checks 1-5, one row after another (each links to the last); the signatures are left for a batch."""
        node_id, keys, wanted, macs = self.node_id, self.keys, self.wanted, self.macs
        prev, expected = self.prev, self.count + 1
        hashes: list[bytes] = []
        signatures: _Pending = []
        purged: list[int] = []
        governance: list[tuple[int, str, bytes]] = []
        failure = None
        for row in rows:
            (seq, entry_type, body, prev_hash, digest, kid, signature,
             created_at, decision, actor, tool, outcome, gone) = row[:13]  # fmt: skip
            if not (type(body) is type(prev_hash) is type(digest) is type(signature) is bytes):
                body, prev_hash, digest, signature = blob(body), blob(prev_hash), blob(digest), blob(signature)
            if seq != expected:
                failure = _sequence_failure(seq, expected)
                break
            if prev_hash != prev:
                failure = Failure(seq, _UNLINKED, CHAIN)
                break
            if gone:  # purged: the body is gone by design; the tombstone that covers it is checked at the end
                if body or any((decision, actor, tool, outcome)):
                    failure = Failure(seq, _PURGED_WITH_CONTENT, COLUMNS)
                    break
                purged.append(len(hashes))
            else:
                if sha256(ENTRY_TAG + prev + body).digest() != digest:
                    failure = Failure(seq, _EDITED, CHAIN)
                    break
                failure = _check_body(seq, entry_type, body, node_id, (created_at, decision, actor, tool, outcome))
                if failure is not None:
                    break
                if entry_type in GOVERNANCE_TYPES:
                    governance.append((len(hashes), entry_type, body))
            key = keys.get(kid)
            if key is None:
                failure = Failure(seq, f"signed by unknown key {kid!r}", SIGNATURE)
                break
            if wanted and wanted.get(seq, digest) != digest:
                failure = Failure(seq, _ANCHOR_DIFFERS, CHAIN)
                break
            hashes.append(digest)
            if macs is None or not _mac_matches(macs.get(kid), digest, row):
                signatures.append((seq, key, signature, digest))
            prev, expected = digest, expected + 1
            if entry_type == KEY_ROTATED:
                self._learn(body)  # its own signature is checked with the batch; a bad one fails the walk there
        return _Checked(hashes, signatures, purged, governance, failure)

    def _commit(self, checked: _Checked) -> bool:
        """Grow the Merkle tree over the rows that passed, compare it at each signed checkpoint size, and take the
        outcome up to the first failure; False if there was one."""
        hashes, signatures, purged, governance, failure = checked
        count, sizes = self.count, self.sizes
        passed = booked = len(hashes)  # rows verified; rows whose anchors and purges count
        # No root is wanted past the last checkpoint, unless this walk continues (its tree must reach the head).
        needed = passed if self.whole_tree else max(min(passed, sizes[-1] - count if sizes else 0), 0)
        leaves = [sha256(b"\x00" + digest).digest() for digest in hashes[:needed]]  # leaf_hash, inline
        tree, done = self.tree, 0
        for size in sizes[bisect_right(sizes, count) : bisect_right(sizes, count + passed)]:
            tree.extend(leaves[done : size - count])
            done = size - count
            if tree.root() != self.roots[size]:
                failure = Failure(size, _CHECKPOINT_DIFFERS, CHAIN, True)
                passed, booked = done - 1, done  # the row completing the size was booked, not verified
                break
        else:
            tree.extend(leaves[done:])
        self.anchors_checked += len(self._anchored_in(count + 1, count + booked))
        self.purged.extend(count + 1 + i for i in purged if i < booked)
        self.governance.extend((count + 1 + i, kind, body) for i, kind, body in governance if i < passed)
        if self.whole_tree:
            self.hashes.extend(hashes[:passed])
        if signatures is not None:
            self.batch.extend(signatures[:passed])
            if len(self.batch) >= _BATCH:
                self.flush()
        if passed:
            self.count, self.prev = count + passed, hashes[passed - 1]
        if failure is not None:
            self.failures.append(failure)
            return False
        return True

    def _anchored_in(self, first: int, last: int) -> list[int]:
        anchored = self.anchored
        return anchored[bisect_left(anchored, first) : bisect_right(anchored, last)] if anchored else []

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        if self.pool is not None:
            self.futures.append(self.pool.submit(_check_signatures, batch))
        elif (failure := _check_signatures(batch)) is not None:
            self.failures.append(failure)

    def finish(self, *, empty_ok: bool = False) -> None:
        """After the last row: whatever should have come after it. ``empty_ok``: a ledger with no entry yet is not a
        finding (a node's own walk before its genesis entry is written)."""
        count = self.count
        missing = [seq for seq in self.anchored if seq > count]
        beyond = [size for size in self.sizes if size > count]
        if beyond:
            reason = f"ledger truncated: a signed checkpoint covers {beyond[-1]} entries, the ledger has {count}"
            self.failures.append(Failure(count + 1, reason, CHAIN, True))
        elif missing:
            self.failures.append(
                Failure(count + 1, f"ledger truncated: anchored entry {missing[-1]} is missing", CHAIN)
            )
        elif count == 0 and not empty_ok:
            self.failures.append(Failure(1, f"ledger is empty: no {GENESIS_TYPE} entry", CHAIN))
