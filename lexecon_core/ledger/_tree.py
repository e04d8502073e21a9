"""The ledger's Merkle tree on disk: grown level by level when a checkpoint is made, read for proofs.

Everything here runs on a connection the caller holds; growing the tree and signing a checkpoint happen inside the
ledger's write lock, so the tree always describes a prefix of the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, inspect, select, tuple_, update
from sqlalchemy.engine import Connection

from lexecon_core.errors import LedgerError, LedgerTampered
from lexecon_core.keys import PublicKey, Signer
from lexecon_core.ledger import _schema
from lexecon_core.ledger._checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint, verify_checkpoint
from lexecon_core.ledger._entry import utc_timestamp
from lexecon_core.ledger._merkle import (
    CompactRange,
    SubtreeSource,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_hash,
)

_TREE_SIZE_KEY = "tree_size"
_t = _schema.tree
_meta = _schema.meta
_entries = _schema.entries


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Proof that ledger entry ``seq`` (leaf ``seq - 1``) is in the tree of ``tree_size`` entries with ``root``."""

    seq: int
    tree_size: int
    entry_hash: bytes
    hashes: tuple[bytes, ...]
    root: bytes
    checkpoint: str | None  # the signed note for ``tree_size``, when there is one

    @property
    def leaf_index(self) -> int:
        return self.seq - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "entry_hash": self.entry_hash.hex(),
            "leaf_hash": leaf_hash(self.entry_hash).hex(),
            "hashes": [h.hex() for h in self.hashes],
            "root": self.root.hex(),
            "checkpoint": self.checkpoint,
        }


def tree_size(conn: Connection) -> int:
    value = conn.execute(select(_meta.c.value).where(_meta.c.key == _TREE_SIZE_KEY)).scalar()
    return int(value) if value is not None else 0


def subtrees(conn: Connection) -> SubtreeSource:
    """A lookup of stored complete subtrees, memoised for the life of one proof."""
    cache: dict[tuple[int, int], bytes] = {}

    def get(level: int, index: int) -> bytes:
        key = (level, index)
        if key not in cache:
            value = conn.execute(select(_t.c.hash).where(and_(_t.c.level == level, _t.c.idx == index))).scalar()
            if value is None:
                raise LookupError(f"tree node ({level}, {index}) is not stored; make a checkpoint first")
            cache[key] = bytes(value)
        return cache[key]

    return get


def _entry_hashes(conn: Connection, after: int, batch: int = 4096) -> Iterator[bytes]:
    last = after
    query = select(_entries.c.seq, _entries.c.entry_hash).order_by(_entries.c.seq).limit(batch)
    while True:
        page = conn.execute(query.where(_entries.c.seq > last)).all()
        for _, digest in page:
            yield bytes(digest)
        if len(page) < batch:
            return
        last = page[-1][0]


def grow(conn: Connection) -> CompactRange:
    """Extend the stored tree from its size to the ledger's head; return its right edge (root at the new size)."""
    size = tree_size(conn)
    head = conn.execute(select(_entries.c.seq).order_by(_entries.c.seq.desc()).limit(1)).scalar() or 0
    if size > head:
        raise LedgerError(f"the Merkle tree covers {size} entries but the ledger has {head}: entries were removed")
    if size:
        positions = CompactRange.peak_positions(size)
        rows = conn.execute(select(_t.c.level, _t.c.idx, _t.c.hash).where(tuple_(_t.c.level, _t.c.idx).in_(positions)))
        found = {(r[0], r[1]): bytes(r[2]) for r in rows}
        if len(found) != len(positions):
            raise LedgerError("the stored Merkle tree is damaged (missing nodes); the ledger needs inspection")
        edge = CompactRange(size, [found[p] for p in positions])
    else:
        edge = CompactRange()
    store = _node_writer(conn)
    pending: list[tuple[int, int, bytes]] = []
    for digest in _entry_hashes(conn, size):
        pending.extend(edge.append(leaf_hash(digest)))
        if len(pending) >= 8192:
            store(pending)
            pending.clear()
    if pending:
        store(pending)
    if edge.size != size:
        value = str(edge.size)
        if size:
            conn.execute(update(_meta).where(_meta.c.key == _TREE_SIZE_KEY).values(value=value))
        else:
            conn.execute(insert(_meta).values(key=_TREE_SIZE_KEY, value=value))
    return edge


def _node_writer(conn: Connection) -> Callable[[list[tuple[int, int, bytes]]], None]:
    """Inserts ``(level, idx, hash)`` rows through the driver's executemany: a checkpoint stores ~2 nodes per new
    entry, and SQLAlchemy's per-row parameter processing cost more than the inserts (it runs under the write lock)."""
    compiled = insert(_t).compile(dialect=conn.dialect)
    sql, order = str(compiled), compiled.positiontup
    if order is not None and list(order) != ["level", "idx", "hash"]:
        raise LedgerError("unexpected parameter order in the compiled tree insert")

    def store(rows: list[tuple[int, int, bytes]]) -> None:
        if order is not None:
            conn.exec_driver_sql(sql, rows)
        else:
            conn.exec_driver_sql(sql, [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in rows])

    return store


def checkpoint(
    conn: Connection, signer: Signer, origin: str, verified: tuple[int, bytes], keys: Mapping[str, PublicKey]
) -> Checkpoint:
    """Grow the tree to the ledger's head and sign a checkpoint of it (or return the stored one at that size).

    ``verified`` is ``(size, root)`` of the prefix the caller verified (hashes, signatures, links): a checkpoint
    vouches for every entry under it, so it is signed only if the stored rows and tree give exactly that tree -
    never over a row nobody checked. A stored note at that size is returned only if it verifies with ``keys``."""
    edge = grow(conn)
    if edge.size == 0:
        raise LedgerError("the ledger is empty: nothing to checkpoint")
    if (edge.size, edge.root()) != verified:
        raise LedgerTampered(edge.size, "the stored entries or Merkle tree disagree with the verified chain")
    table = _schema.checkpoints
    stored = conn.execute(select(table.c.note).where(table.c.tree_size == edge.size)).scalar()
    if stored is not None:
        try:
            found = verify_checkpoint(stored, keys, origin=origin)
        except ValueError as exc:
            raise LedgerTampered(edge.size, f"the stored checkpoint at this size does not verify ({exc})") from None
        if found.root != verified[1]:
            raise LedgerTampered(edge.size, "the stored checkpoint at this size has another root")
        return found
    made = sign_checkpoint(signer, origin=origin, size=edge.size, root=edge.root(), timestamp=utc_timestamp())
    conn.execute(
        insert(table).values(
            tree_size=made.size, root_hash=made.root, created_at=made.timestamp, kid=signer.kid, note=made.note
        )
    )
    return made


def stored_notes(conn: Connection) -> list[str]:
    table = _schema.checkpoints
    if not inspect(conn).has_table(table.name):  # a read-only ledger from before checkpoints existed
        return []
    return [str(n) for n in conn.execute(select(table.c.note).order_by(table.c.tree_size)).scalars()]


def parse_notes(notes: list[str]) -> list[Checkpoint]:
    try:
        return [parse_checkpoint(note)[0] for note in notes]
    except ValueError as exc:
        raise LedgerError(f"a stored checkpoint is damaged: {exc}") from None


def prove_inclusion(conn: Connection, seq: int, size: int | None, made: Mapping[int, Checkpoint]) -> InclusionProof:
    """Proof that entry ``seq`` is in the tree of ``size`` entries (default: the latest of the checkpoints ``made``)."""
    size = size if size is not None else max(made, default=0)
    if size == 0:
        raise LedgerError("no checkpoint yet: run `lexecon ledger checkpoint` first")
    if not 1 <= seq <= size:
        raise LedgerError(f"entry {seq} is not covered by a tree of {size} entries")
    if size > tree_size(conn):
        raise LedgerError(f"the Merkle tree does not reach size {size} yet; make a checkpoint first")
    get = subtrees(conn)
    hashes = inclusion_proof(seq - 1, size, get)
    root = range_hash(0, size, get)
    digest = conn.execute(select(_entries.c.entry_hash).where(_entries.c.seq == seq)).scalar()
    if digest is None:
        raise LedgerError(f"entry {seq} is missing from the ledger")
    note = made[size].note if size in made else None
    return InclusionProof(seq, size, bytes(digest), tuple(hashes), root, note)


def prove_consistency(conn: Connection, old_size: int, new_size: int) -> list[bytes]:
    """Proof that the tree of ``old_size`` entries is a prefix of the tree of ``new_size`` entries."""
    if new_size > tree_size(conn):
        raise LedgerError(f"the Merkle tree does not reach size {new_size} yet; make a checkpoint first")
    try:
        return consistency_proof(old_size, new_size, subtrees(conn))
    except ValueError as exc:
        raise LedgerError(str(exc)) from None
