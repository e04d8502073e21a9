"""The RFC 6962 / RFC 9162 Merkle tree of ``lexecon_core.ledger._merkle``, on its own (no database).

Two kinds of evidence:

- property tests (hypothesis) of the fast paths (``CompactRange``, ``range_hash`` over the stored subtrees, proof
  generation and verification) against ``root_of``, the recursive MTH of RFC 6962 §2.1;
- known-answer vectors from outside this project: the Certificate Transparency reference tree of 8 leaves, with the
  roots, inclusion proofs and consistency proofs exactly as published in the Go reference implementation
  (github.com/transparency-dev/merkle, ``proof/verify_test.go``, the vectors Trillian and CT also use). Nothing in
  those vectors was computed with our code.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lexecon_core.ledger._merkle import (
    EMPTY_ROOT,
    CompactRange,
    SubtreeSource,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- helpers ---------------------------------------------------------------------------------------------------------


def make_leaves(n: int, salt: int) -> list[bytes]:
    """``n`` distinct leaf hashes (generated, not drawn byte by byte: hypothesis' buffer is too small for 300x32)."""
    prefix = salt.to_bytes(8, "big")
    return [leaf_hash(prefix + i.to_bytes(4, "big")) for i in range(n)]


def grow(leaves: list[bytes]) -> tuple[CompactRange, dict[tuple[int, int], bytes]]:
    """A compact range over ``leaves`` and every ``(level, index) -> hash`` it reported completing."""
    edge = CompactRange()
    stored: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, value in edge.append(leaf):
            assert (level, index) not in stored, "a subtree was reported twice"
            stored[(level, index)] = value
    return edge, stored


def source(stored: dict[tuple[int, int], bytes]) -> SubtreeSource:
    return lambda level, index: stored[(level, index)]


def flip(value: bytes, bit: int = 0) -> bytes:
    if not value:
        return b"\x01"
    i = (bit // 8) % len(value)
    return value[:i] + bytes([value[i] ^ (1 << (bit % 8))]) + value[i + 1 :]


sizes = st.integers(min_value=1, max_value=300)
salts = st.integers(min_value=0, max_value=2**32)


# == 1. the fast paths agree with the recursive reference ===========================================================


def test_empty_tree_and_single_leaf() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT
    leaf = leaf_hash(b"x")
    assert root_of([leaf]) == leaf
    edge, stored = grow([leaf])
    assert edge.root() == leaf
    assert stored == {(0, 0): leaf}


def test_hash_prefixes_follow_rfc6962() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    # The split is the largest power of two smaller than n: for 5 leaves, 4 + 1 (no duplicated tail).
    leaves = make_leaves(5, 1)
    expected = node_hash(
        node_hash(node_hash(leaves[0], leaves[1]), node_hash(leaves[2], leaves[3])),
        leaves[4],
    )
    assert root_of(leaves) == expected


@FAST
@given(n=sizes, salt=salts)
def test_compact_range_root_and_stored_subtrees_match_the_reference(n: int, salt: int) -> None:
    leaves = make_leaves(n, salt)
    edge, stored = grow(leaves)
    reference = root_of(leaves)
    assert edge.size == n
    assert edge.root() == reference
    assert range_hash(0, n, source(stored)) == reference
    # Exactly the complete, aligned subtrees are stored, each with the right hash.
    expected_keys = {(level, index) for level in range(n.bit_length()) for index in range(n >> level)}
    assert set(stored) == expected_keys
    for level, index in list(stored)[:: max(1, len(stored) // 40)]:
        width = 1 << level
        assert stored[(level, index)] == root_of(leaves[index * width : (index + 1) * width])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=1, max_value=70), salt=salts)
def test_compact_range_root_at_every_intermediate_size(n: int, salt: int) -> None:
    leaves = make_leaves(n, salt)
    edge = CompactRange()
    for k, leaf in enumerate(leaves, start=1):
        edge.append(leaf)
        assert edge.root() == root_of(leaves[:k])


@FAST
@given(start=st.integers(min_value=0, max_value=300), cuts=st.lists(sizes, max_size=6), salt=salts)
def test_extend_in_bulk_is_appending_leaf_by_leaf(start: int, cuts: list[int], salt: int) -> None:
    """The verifier's bulk path: from any size, any run of leaves added at once leaves exactly the compact range that
    appending them one at a time does (so the root is right at every size where it is asked for)."""
    leaves = make_leaves(start + sum(cuts), salt)
    bulk, single = CompactRange(), CompactRange()
    bulk.extend(leaves[:start])
    for leaf in leaves[:start]:
        single.append(leaf)
    done = start
    for cut in [0, *cuts]:
        bulk.extend(leaves[done : done + cut])
        for leaf in leaves[done : done + cut]:
            single.append(leaf)
        done += cut
        assert (bulk.size, bulk._peaks) == (single.size, single._peaks) == (done, single._peaks)
        assert bulk.root() == root_of(leaves[:done])


@settings(max_examples=10, deadline=None)
@given(salt=salts)
def test_extend_from_every_size_by_every_count_up_to_70(salt: int) -> None:
    leaves = make_leaves(140, salt)
    roots = [root_of(leaves[:k]) for k in range(141)]
    for start in range(71):
        for count in range(71):
            edge = CompactRange()
            edge.extend(leaves[:start])
            edge.extend(leaves[start : start + count])
            assert edge.size == start + count
            assert edge.root() == roots[start + count], (start, count)


@FAST
@given(n=sizes, salt=salts, data=st.data())
def test_range_hash_of_any_prefix_is_that_prefix_root(n: int, salt: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, salt)
    _, stored = grow(leaves)
    m = data.draw(st.integers(min_value=1, max_value=n))
    assert range_hash(0, m, source(stored)) == root_of(leaves[:m])


def test_range_hash_of_an_empty_range_raises() -> None:
    _, stored = grow(make_leaves(4, 0))
    with pytest.raises(ValueError):
        range_hash(2, 2, source(stored))


# == 2. inclusion proofs ==============================================================================================


@FAST
@given(n=sizes, salt=salts, data=st.data())
def test_inclusion_proofs_verify_and_reject_every_corruption(n: int, salt: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, salt)
    _, stored = grow(leaves)
    root = root_of(leaves)
    indices = data.draw(st.lists(st.integers(min_value=0, max_value=n - 1), min_size=1, max_size=6, unique=True))
    for i in {*indices, 0, n - 1}:
        proof = inclusion_proof(i, n, source(stored))
        leaf = leaves[i]
        assert verify_inclusion(leaf, i, n, proof, root), (i, n)
        assert len(proof) <= n.bit_length()
        # wrong index (every other index in range, and out of range)
        for j in {i - 1, i + 1, i ^ 2, i ^ 1}:
            if j != i and 0 <= j < n:
                assert not verify_inclusion(leaf, j, n, proof, root), (i, j, n)
        assert not verify_inclusion(leaf, -1, n, proof, root)
        assert not verify_inclusion(leaf, n, n, proof, root)
        # wrong leaf, wrong root
        assert not verify_inclusion(flip(leaf), i, n, proof, root)
        assert not verify_inclusion(leaves[(i + 1) % n], i, n, proof, root) or n == 1
        assert not verify_inclusion(leaf, i, n, proof, flip(root, 77))
        assert not verify_inclusion(leaf, i, n, proof, EMPTY_ROOT)
        # wrong size (the probes of the reference implementation: tree twice or half as large)
        assert not verify_inclusion(leaf, i, n * 2, proof, root)
        assert not verify_inclusion(leaf, i, n // 2, proof, root)
        # truncated, extended, prefixed proof; each element altered
        if proof:
            assert not verify_inclusion(leaf, i, n, proof[:-1], root)
            assert not verify_inclusion(leaf, i, n, proof[1:], root)
        assert not verify_inclusion(leaf, i, n, [*proof, root], root)
        assert not verify_inclusion(leaf, i, n, [*proof, b""], root)
        assert not verify_inclusion(leaf, i, n, [root, *proof], root)
        assert not verify_inclusion(leaf, i, n, [b"", *proof], root)
        for k in range(len(proof)):
            altered = [*proof[:k], flip(proof[k], 3), *proof[k + 1 :]]
            assert not verify_inclusion(leaf, i, n, altered, root), (i, n, k)


def test_inclusion_proof_alone_does_not_bind_the_tree_size() -> None:
    """A property of RFC 9162 inclusion proofs, not a bug: the proof of leaf 0 in a tree of 5 also "verifies" as leaf
    0 of a tree of 6 against the *5-leaf root*. The size must come from the signed checkpoint, together with the root,
    never from the proof's claims alone."""
    leaves = make_leaves(5, 9)
    _, stored = grow(leaves)
    proof = inclusion_proof(0, 5, source(stored))
    assert verify_inclusion(leaves[0], 0, 5, proof, root_of(leaves))
    assert verify_inclusion(leaves[0], 0, 6, proof, root_of(leaves))


def test_inclusion_proof_generation_rejects_out_of_range() -> None:
    _, stored = grow(make_leaves(3, 0))
    for index, size in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(ValueError):
            inclusion_proof(index, size, source(stored))


# == 3. consistency proofs ============================================================================================


@FAST
@given(n=sizes, salt=salts, data=st.data())
def test_consistency_proofs_verify_and_reject_every_corruption(n: int, salt: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, salt)
    _, stored = grow(leaves)
    new_root = root_of(leaves)
    olds = data.draw(st.lists(st.integers(min_value=1, max_value=n), min_size=1, max_size=4, unique=True))
    for m in {*olds, 1, n}:
        old_root = root_of(leaves[:m])
        proof = consistency_proof(m, n, source(stored))
        assert verify_consistency(m, n, old_root, new_root, proof), (m, n)
        assert len(proof) <= 2 * n.bit_length()
        if m == n:
            assert proof == []
        assert not verify_consistency(m, n, flip(old_root, 5), new_root, proof)
        assert not verify_consistency(m, n, old_root, flip(new_root, 5), proof)
        for k in range(len(proof)):
            altered = [*proof[:k], flip(proof[k], 12), *proof[k + 1 :]]
            assert not verify_consistency(m, n, old_root, new_root, altered), (m, n, k)
        if m < n:
            assert not verify_consistency(n, m, new_root, old_root, proof)  # sizes (and roots) swapped
            assert not verify_consistency(n, m, old_root, new_root, proof)
            assert not verify_consistency(m, n, new_root, old_root, proof)  # roots swapped
            assert not verify_consistency(m, n, old_root, new_root, [])
            assert not verify_consistency(m, n, old_root, new_root, proof[:-1])
            assert not verify_consistency(m, n, old_root, new_root, [*proof, old_root])
            assert not verify_consistency(m, n, old_root, new_root, [*proof, new_root])
            assert not verify_consistency(m, n, old_root, new_root, [old_root, *proof])
            assert not verify_consistency(m, n, old_root, new_root, [proof[0], *proof])
            # a proof between other sizes does not pass for these
            if m > 1:
                assert not verify_consistency(m - 1, n, old_root, new_root, proof)
            if m + 1 < n:
                assert not verify_consistency(m + 1, n, old_root, new_root, proof)
            assert not verify_consistency(m, n * 2, old_root, new_root, proof)
        else:
            assert not verify_consistency(m, n, old_root, new_root, [new_root])  # same size: proof must be empty


def test_consistency_proof_generation_rejects_bad_sizes() -> None:
    _, stored = grow(make_leaves(4, 0))
    for old, new in ((0, 4), (5, 4), (3, 2), (-1, 4)):
        with pytest.raises(ValueError):
            consistency_proof(old, new, source(stored))


# == 4. CompactRange rebuilt from its peaks ==========================================================================


@FAST
@given(n=st.integers(min_value=0, max_value=300), more=st.integers(min_value=0, max_value=40), salt=salts)
def test_compact_range_rebuilt_from_peak_positions(n: int, more: int, salt: int) -> None:
    leaves = make_leaves(n + more, salt)
    original, stored = grow(leaves[:n])
    positions = CompactRange.peak_positions(n)
    assert len(positions) == bin(n).count("1")
    # The peaks tile [0, n) from the left, largest first.
    start = 0
    for level, index in positions:
        assert index << level == start
        start += 1 << level
    assert start == n
    assert [lv for lv, _ in positions] == sorted((lv for lv, _ in positions), reverse=True)
    rebuilt = CompactRange(n, [stored[p] for p in positions])
    assert rebuilt.size == n
    assert rebuilt.root() == original.root() == root_of(leaves[:n])
    for leaf in leaves[n:]:
        assert rebuilt.append(leaf) == original.append(leaf)
    assert rebuilt.root() == root_of(leaves)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 255])
def test_compact_range_with_wrong_peak_count_raises(n: int) -> None:
    _, stored = grow(make_leaves(n, 3))
    peaks = [stored[p] for p in CompactRange.peak_positions(n)]
    with pytest.raises(ValueError):
        CompactRange(n, peaks[:-1])
    with pytest.raises(ValueError):
        CompactRange(n, [*peaks, peaks[0]])
    with pytest.raises(ValueError):
        CompactRange(0, peaks)


# == 5. verification never raises on garbage =========================================================================

garbage_sizes = st.one_of(
    st.integers(min_value=-3, max_value=70),
    st.integers(min_value=-(2**70), max_value=2**70),
)
garbage_hashes = st.binary(max_size=40)


@settings(max_examples=400, deadline=None)
@given(
    leaf=garbage_hashes,
    index=garbage_sizes,
    size=garbage_sizes,
    proof=st.lists(garbage_hashes, max_size=70),
    root=garbage_hashes,
)
def test_verify_inclusion_on_garbage_returns_false(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    assume(leaf != root)  # (leaf, 0, 1, [], leaf) is a genuine one-leaf proof
    assert verify_inclusion(leaf, index, size, proof, root) is False


@settings(max_examples=400, deadline=None)
@given(
    old_size=garbage_sizes,
    new_size=garbage_sizes,
    old_root=garbage_hashes,
    new_root=garbage_hashes,
    proof=st.lists(garbage_hashes, max_size=70),
)
def test_verify_consistency_on_garbage_returns_false(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    assume(old_root != new_root)  # equal sizes with equal roots and no proof is a genuine proof
    assert verify_consistency(old_size, new_size, old_root, new_root, proof) is False


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=1, max_value=64), salt=salts, data=st.data())
def test_verify_on_real_roots_with_garbage_sizes_never_raises(n: int, salt: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, salt)
    _, stored = grow(leaves)
    root = root_of(leaves)
    proof = inclusion_proof(n - 1, n, source(stored))
    index, size = data.draw(garbage_sizes), data.draw(garbage_sizes)
    assert isinstance(verify_inclusion(leaves[-1], index, size, proof, root), bool)
    old = data.draw(garbage_sizes)
    assert isinstance(verify_consistency(old, size, root, root, proof), bool)


# == 6. known-answer vectors (Certificate Transparency / transparency-dev/merkle) ====================================
# Source: github.com/transparency-dev/merkle, proof/verify_test.go (``leaves``, ``roots``, ``inclusionProofs``,
# ``consistencyProofs``). Inclusion vectors there give the leaf 1-based; below they are 0-based indices.

KAT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
KAT_ROOTS = [  # MTH of the first 1..8 leaves
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
KAT_INCLUSION = [  # (leaf index, tree size, audit path)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
KAT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
KAT_SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def kat_tree() -> tuple[list[bytes], dict[tuple[int, int], bytes]]:
    hashes = [leaf_hash(data) for data in KAT_LEAVES]
    _, stored = grow(hashes)
    return hashes, stored


def test_kat_empty_tree_hash() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("size", range(1, 9))
def test_kat_roots(size: int) -> None:
    hashes = [leaf_hash(data) for data in KAT_LEAVES[:size]]
    expected = KAT_ROOTS[size - 1]
    assert root_of(hashes).hex() == expected
    edge, stored = grow(hashes)
    assert edge.root().hex() == expected
    assert range_hash(0, size, source(stored)).hex() == expected
    _, stored8 = grow([leaf_hash(data) for data in KAT_LEAVES])  # a prefix of the full tree, from its subtrees
    assert range_hash(0, size, source(stored8)).hex() == expected


@pytest.mark.parametrize(("index", "size", "path"), KAT_INCLUSION)
def test_kat_inclusion(index: int, size: int, path: list[str]) -> None:
    hashes, stored = kat_tree()
    proof = [bytes.fromhex(h) for h in path]
    root = bytes.fromhex(KAT_ROOTS[size - 1])
    assert inclusion_proof(index, size, source(stored)) == proof  # generation reproduces the published path
    assert verify_inclusion(hashes[index], index, size, proof, root)
    # The corruption probes of the reference implementation's verifierCheck.
    leaf = hashes[index]
    probes = [
        (index - 1, size, root, leaf, proof),
        (index + 1, size, root, leaf, proof),
        (index ^ 2, size, root, leaf, proof),
        (index, size * 2, root, leaf, proof),
        (index, size // 2, root, leaf, proof),
        (index, size, root, b"WrongLeaf", proof),
        (index, size, EMPTY_ROOT, leaf, proof),
        (index, size, KAT_SOME_HASH, leaf, proof),
        (index, size, root, leaf, [*proof, b""]),
        (index, size, root, leaf, [*proof, root]),
        (index, size, root, leaf, [b"", *proof]),
        (index, size, root, leaf, [root, *proof]),
    ]
    for k in range(len(proof)):
        probes.append((index, size, root, leaf, [*proof[:k], flip(proof[k], 3), *proof[k + 1 :]]))
    if proof:
        probes.append((index, size, root, leaf, proof[:-1]))
    if len(proof) > 1:
        probes.append((index, size, root, leaf, [proof[0], KAT_SOME_HASH, *proof[1:]]))
    for i, (p_index, p_size, p_root, p_leaf, p_proof) in enumerate(probes):
        assert not verify_inclusion(p_leaf, p_index, p_size, p_proof, p_root), f"probe {i} verified"


@pytest.mark.parametrize(("old", "new", "path"), KAT_CONSISTENCY)
def test_kat_consistency(old: int, new: int, path: list[str]) -> None:
    _, stored = kat_tree()
    proof = [bytes.fromhex(h) for h in path]
    root1, root2 = bytes.fromhex(KAT_ROOTS[old - 1]), bytes.fromhex(KAT_ROOTS[new - 1])
    assert consistency_proof(old, new, source(stored)) == proof  # generation reproduces the published proof
    assert verify_consistency(old, new, root1, root2, proof)
    if not proof:
        return
    wrong = b"WrongRoot"
    probes = [
        (old - 1, new, root1, root2, proof),
        (old + 1, new, root1, root2, proof),
        (old ^ 2, new, root1, root2, proof),
        (old, new * 2, root1, root2, proof),
        (old, new // 2, root1, root2, proof),
        (old, new, wrong, root2, proof),
        (old, new, root1, wrong, proof),
        (old, new, root2, root1, proof),
        (old, new, root1, root2, []),
        (old, new, root1, root2, [*proof, b""]),
        (old, new, root1, root2, [*proof, root1]),
        (old, new, root1, root2, [*proof, root2]),
        (old, new, root1, root2, [b"", *proof]),
        (old, new, root1, root2, [root1, *proof]),
        (old, new, root1, root2, [root2, *proof]),
        (old, new, root1, root2, [proof[0], *proof]),
        (old, new, root1, root2, proof[:-1]),
    ]
    for k in range(len(proof)):
        probes.append((old, new, root1, root2, [*proof[:k], flip(proof[k], 4), *proof[k + 1 :]]))
    for i, (s1, s2, r1, r2, p) in enumerate(probes):
        assert not verify_consistency(s1, s2, r1, r2, p), f"probe {i} verified"


def test_kat_trivial_consistency_cases() -> None:
    """TestVerifyConsistency's table, for the sizes our verifier accepts (it refuses size 0: a ledger is never
    checkpointed empty)."""
    root1, root2 = b"don't care 1", b"don't care 2"
    assert not verify_consistency(1, 1, root1, root2, [])  # same size, different roots
    assert verify_consistency(1, 1, root2, root2, [])
    assert not verify_consistency(1, 0, root1, root2, [])  # time travel to the past
    assert not verify_consistency(2, 1, root1, root2, [])
    assert not verify_consistency(1, 2, root1, root2, [])  # empty proof
    assert not verify_consistency(1, 1, EMPTY_ROOT, root2, [])
    assert not verify_consistency(1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])  # roots match, proof not empty
