"""The ledger's Merkle tree on disk: grown level by level when a checkpoint is made, read for proofs.

Everything here runs on a connection the caller holds; growing the tree and signing a checkpoint happen inside the
ledger's write lock, so the tree always describes a prefix of the chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, select, tuple_, update
from sqlalchemy.engine import Connection

from lexecon_core.errors import LedgerError
from lexecon_core.ledger import _schema
from lexecon_core.ledger._merkle import CompactRange, SubtreeSource, leaf_hash

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
    pending: list[dict[str, Any]] = []
    for digest in _entry_hashes(conn, size):
        pending.extend({"level": lv, "idx": ix, "hash": h} for lv, ix, h in edge.append(leaf_hash(digest)))
        if len(pending) >= 8192:
            conn.execute(insert(_t), pending)
            pending.clear()
    if pending:
        conn.execute(insert(_t), pending)
    if edge.size != size:
        value = str(edge.size)
        if size:
            conn.execute(update(_meta).where(_meta.c.key == _TREE_SIZE_KEY).values(value=value))
        else:
            conn.execute(insert(_meta).values(key=_TREE_SIZE_KEY, value=value))
    return edge
