"""An RFC 6962 / RFC 9162 Merkle tree over ledger entries: hashing, proofs, and proof verification.

Leaves are the entries' hashes: ``leaf = SHA-256(0x00 || entry_hash)``; interior nodes are
``SHA-256(0x01 || left || right)``; the hash of the empty tree is ``SHA-256("")``. A tree of ``n`` leaves splits at
``k``, the largest power of two smaller than ``n`` (RFC 6962 §2.1).

Proof *generation* works over a source of complete, aligned subtree hashes (``subtree(level, index)`` is the hash of
leaves ``[index * 2**level, (index + 1) * 2**level)``), so a tree kept on disk level by level answers in O(log n)
lookups. Proof *verification* needs nothing but the proof, and follows RFC 9162 §2.1.3.2 and §2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeSource = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 §2.1 straight from the leaf hashes: the reference the fast paths are tested against."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def range_hash(start: int, end: int, subtree: SubtreeSource) -> bytes:
    """The hash of leaves ``[start, end)`` as a subtree of a larger tree (``start`` aligned as RFC 6962 splits it)."""
    size = end - start
    if size <= 0:
        raise ValueError("empty range")
    if size & (size - 1) == 0 and start % size == 0:
        return subtree(size.bit_length() - 1, start // size)
    k = _split(size)
    return node_hash(range_hash(start, start + k, subtree), range_hash(start + k, end, subtree))


def inclusion_proof(index: int, size: int, subtree: SubtreeSource) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1: the audit path of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")

    def path(m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, start, start + k), range_hash(start + k, end, subtree)]
        return [*path(m - k, start + k, end), range_hash(start, start + k, subtree)]

    return path(index, 0, size)


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeSource) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 §2.1.2: proves the tree of ``old_size`` leaves is a prefix of ``new_size``."""
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")

    def subproof(m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [range_hash(start, end, subtree)]
        k = _split(n)
        if m <= k:
            return [*subproof(m, start, start + k, whole), range_hash(start + k, end, subtree)]
        return [*subproof(m - k, start + k, end, False), range_hash(start, start + k, subtree)]

    return subproof(old_size, 0, new_size, True)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show ``leaf`` at ``index`` in the tree of ``size`` leaves with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1  # 1. set fn to leaf_index and sn to tree_size - 1
    r = leaf  # 2. set r to hash
    for p in proof:  # 3. for each value p in the inclusion_path array:
        if sn == 0:  # a. if sn is 0, stop the iteration and fail the proof verification
            return False
        if fn & 1 or fn == sn:  # b. if LSB(fn) is set, or if fn is equal to sn, then:
            r = node_hash(p, r)  # i. set r to HASH(0x01 || p || r)
            if not fn & 1:  # ii. if LSB(fn) is not set, then right-shift both fn and sn equally until
                while fn & 1 == 0 and fn != 0:  # either LSB(fn) is set or fn is 0
                    fn >>= 1
                    sn >>= 1
        else:  # otherwise:
            r = node_hash(r, p)  # i. set r to HASH(0x01 || r || p)
        fn >>= 1  # c. finally, right-shift both fn and sn one time
        sn >>= 1
    return sn == 0 and r == root  # 4. compare sn to 0 and r against the root_hash


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree (old_size, old_root) is a prefix of (new_size, new_root)?"""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # 1. if first_tree_size is an exact power of 2, prepend first_hash
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1  # 2-3. set fn to first_tree_size - 1 and sn to second_tree_size - 1
    while fn & 1:  # 4. if LSB(fn) is set, right-shift both fn and sn equally until LSB(fn) is not set
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # 5. set both fr and sr to the first value in the consistency_path array
    for c in path[1:]:  # 6. for each subsequent value c in the consistency_path array:
        if sn == 0:  # a. if sn is 0, then stop the iteration and fail the proof verification
            return False
        if fn & 1 or fn == sn:  # b. if LSB(fn) is set, or if fn is equal to sn, then:
            fr = node_hash(c, fr)  # i. set fr to HASH(0x01 || c || fr)
            sr = node_hash(c, sr)  # ii. set sr to HASH(0x01 || c || sr)
            if not fn & 1:  # iii. if LSB(fn) is not set, then right-shift both fn and sn equally until
                while fn & 1 == 0 and fn != 0:  # either LSB(fn) is set or fn is 0
                    fn >>= 1
                    sn >>= 1
        else:  # otherwise:
            sr = node_hash(sr, c)  # i. set sr to HASH(0x01 || sr || c)
        fn >>= 1  # c. finally, right-shift both fn and sn one time
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root  # 7. compare


class CompactRange:
    """The right edge of a growing tree: the roots of its perfect subtrees, at most log2(n) of them.

    ``append(leaf)`` returns the complete aligned subtrees that the new leaf completes, as ``(level, index, hash)``
    (level 0 is the leaf itself), so a store can keep every level without ever rebuilding. ``root()`` is the tree's
    root at the current size. Verifying a ledger walks it alongside the entries to check checkpoints in one pass.
    """

    __slots__ = ("_peaks", "size")

    def __init__(self, size: int = 0, peaks: Iterable[bytes] = ()) -> None:
        self.size = size
        self._peaks = list(peaks)  # hashes of the perfect subtrees, largest first, per the bits of ``size``
        if len(self._peaks) != bin(size).count("1"):
            raise ValueError("peaks do not match the size")

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        index = self.size
        completed = [(0, index, leaf)]
        value, level = leaf, 0
        while index >> level & 1:  # a carry: merge with the peak of the same height
            value = node_hash(self._peaks.pop(), value)
            level += 1
            completed.append((level, index >> level, value))
        self._peaks.append(value)
        self.size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> None:
        """:meth:`append` of many leaves at once, hashed a level at a time rather than a leaf at a time, and without
        reporting the completed subtrees (the verifier's hot path).

        The same carries as appending one by one, in the order of the levels: at each level a peak of this range whose
        sibling has just arrived joins the new nodes in front, the nodes pair up, and an odd one out at the end is a
        new peak. A list comprehension per level instead of a loop per leaf is what makes it cheaper.
        """
        row = list(leaves)
        if len(row) == 1:  # one leaf (a writer's own append): the carry loop costs less than a pass per level
            self.append(row[0])
            return
        peaks = self._peaks
        self.size += len(row)
        index = self.size - len(row)  # of row[0], at the current level
        new: list[bytes] = []  # new peaks, smallest first
        sha256 = hashlib.sha256
        while row:
            if index & 1:
                row.insert(0, peaks.pop())
            if len(row) & 1:
                new.append(row.pop())
            pairs = iter(row)
            row = [sha256(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=True)]
            index >>= 1
        peaks.extend(reversed(new))

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._peaks)

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        value = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            value = node_hash(peak, value)
        return value

    @staticmethod
    def peak_positions(size: int) -> list[tuple[int, int]]:
        """``(level, index)`` of the perfect subtrees that make up a tree of ``size`` leaves, largest first."""
        positions, start = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                positions.append((level, start >> level))
                start += 1 << level
        return positions
