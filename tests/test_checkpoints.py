"""Signed checkpoints, inclusion and consistency proofs on a real (SQLite) ledger, and the tamper classes that only a
checkpoint can catch (a truncated tail, history rewritten and re-signed with the real key).

The note format is checked against the C2SP signed-note spec (https://c2sp.org/signed-note) with ``cryptography``
alone; that independent check is itself first tested on the reference note of golang.org/x/mod/sumdb/note. Roots are
recomputed from the database rows with ``root_of`` (the recursive RFC 6962 MTH, tested against the CT vectors in
``test_merkle.py``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lexecon_core import GovernanceError, LocalGovernor
from lexecon_core.cli import main as cli_main
from lexecon_core.errors import LedgerError
from lexecon_core.keys import PublicKey, Signer
from lexecon_core.ledger import Ledger, sqlite_url
from lexecon_core.ledger._checkpoint import parse_checkpoint, sign_checkpoint, verify_checkpoint
from lexecon_core.ledger._merkle import leaf_hash, root_of, verify_consistency, verify_inclusion

NODE_ID = "test-node"
ORIGIN = f"lexecon/{NODE_ID}"
BARE_NODE = "cp-node"
ENTRY_TAG = b"lexecon:ledger:entry:v1\x00"
SIG_TAG = b"lexecon:ledger:sig:v1\x00"
EM_DASH = "\u2014"

APPROVE = {"actor": "ai_agent:support", "tool": "search", "tool_args": {"q": "order 42"}}
REFUND = {"actor": "ai_agent:support", "tool": "refund", "tool_args": {"order": 42, "amount": 10}}
DENY = {"actor": "ai_agent:support", "tool": "delete_user", "tool_args": {"id": 7}}


# -- independent implementations of the specs -----------------------------------------------------------------------


def spec_key_hash(name: str, raw_public: bytes) -> bytes:
    """C2SP signed-note: key ID = SHA-256(key name || 0x0A || signature type 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + raw_public).digest()[:4]


def spec_open_note(note: str, name: str, raw_public: bytes) -> str:
    """The note text if one of its signature lines is ``name``'s valid Ed25519 signature; AssertionError if not.

    The signed message is the text up to and including its final newline, without the blank separator line."""
    text, sep, signatures = note.partition("\n\n")
    assert sep, "no blank line between text and signatures"
    text += "\n"
    public = Ed25519PublicKey.from_public_bytes(raw_public)
    for line in signatures.splitlines():
        assert line.startswith(EM_DASH + " "), f"not a signature line: {line!r}"
        signer_name, blob_b64 = line[2:].split(" ")
        blob = base64.b64decode(blob_b64, validate=True)
        if signer_name != name or blob[:4] != spec_key_hash(name, raw_public):
            continue
        assert len(blob) == 4 + 64
        try:
            public.verify(blob[4:], text.encode())
        except InvalidSignature:
            raise AssertionError("signature does not verify") from None
        return text
    raise AssertionError(f"no signature by {name}")


def spec_entry_hash(prev: bytes, body: bytes) -> bytes:
    return hashlib.sha256(ENTRY_TAG + prev + body).digest()


def spec_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def raw_public(signer: Signer) -> bytes:
    """The raw public key, taken from the private key with ``cryptography`` (not from lexecon's PublicKey)."""
    return (
        signer.jose_key()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )  # fmt: skip


# -- direct database access -----------------------------------------------------------------------------------------


def sql(db: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def db_of(home: Path) -> Path:
    return home / "ledger.db"


def leaves_from_db(db: Path, size: int | None = None) -> list[bytes]:
    rows = sql(db, "SELECT seq, entry_hash FROM ledger_entries ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    hashes = [leaf_hash(bytes(r[1])) for r in rows]
    return hashes if size is None else hashes[:size]


def tree_rows(db: Path) -> set[tuple[int, int, int, bytes]]:
    """Every stored tree node with its SQLite rowid: a row deleted and re-inserted gets a new rowid."""
    return {(r[0], r[1], r[2], bytes(r[3])) for r in sql(db, "SELECT rowid, level, idx, hash FROM ledger_tree")}


def expected_tree_rows(size: int) -> int:
    return sum(size >> level for level in range(size.bit_length()))


def rechain_from(db: Path, seq: int, new_body: bytes, signer: Signer) -> None:
    """Replace entry ``seq``'s body and re-hash and re-sign it and every later entry with ``signer``: the chain and
    every signature stay valid, so only something signed earlier (a checkpoint) can tell."""
    rows = sql(db, "SELECT seq, body, prev_hash FROM ledger_entries WHERE seq >= ? ORDER BY seq", (seq,))
    prev = bytes(rows[0][2])
    for row_seq, body, _ in rows:
        body = new_body if row_seq == seq else bytes(body)
        digest = spec_entry_hash(prev, body)
        sql(
            db,
            "UPDATE ledger_entries SET body = ?, prev_hash = ?, entry_hash = ?, signature = ?, kid = ? WHERE seq = ?",
            (body, prev, digest, signer.sign(SIG_TAG + digest), signer.kid, row_seq),
        )
        prev = digest


def assert_invalid(report: Any, first_bad_seq: int, *words: str) -> None:
    assert report.valid is False, report
    assert report.first_bad_seq == first_bad_seq, report
    for word in words:
        assert word in (report.reason or ""), f"{word!r} not in {report.reason!r}"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli_main(list(argv))
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


# -- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def bare(tmp_path: Path, signer: Signer) -> Iterator[Ledger]:
    """A bare ledger (no node home): genesis + 6 notes = 7 entries."""
    ledger = Ledger(sqlite_url(tmp_path / "bare.db"), node_id=BARE_NODE, signer=signer)
    for i in range(6):
        ledger.append("note", {"n": i})
    yield ledger
    ledger.close()


@pytest.fixture
def bare_db(tmp_path: Path, bare: Ledger) -> Path:
    return tmp_path / "bare.db"


@pytest.fixture
def decided(governor: LocalGovernor) -> LocalGovernor:
    """Six decisions on top of the home's genesis (1) and policy (2) entries: seqs 3..8."""
    decisions = [governor.decide(r) for r in (APPROVE, DENY, REFUND, APPROVE, DENY, REFUND)]
    assert [d.ledger_entry_id for d in decisions] == [3, 4, 5, 6, 7, 8]
    return governor


# == 1. the note =====================================================================================================


def test_note_format(bare: Ledger) -> None:
    made = bare.checkpoint()
    lines = made.note.split("\n")
    assert len(lines) == 7, made.note
    assert lines[0] == f"lexecon/{BARE_NODE}" == made.origin
    assert lines[1] == "7" and made.size == 7
    assert base64.b64decode(lines[2], validate=True) == made.root and len(made.root) == 32
    assert re.fullmatch(r"timestamp \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", lines[3]), lines[3]
    assert lines[3] == f"timestamp {made.timestamp}"
    assert lines[4] == ""  # the blank line between text and signatures
    assert re.fullmatch(EM_DASH + r" lexecon/cp-node [A-Za-z0-9+/]+={0,2}", lines[5]), lines[5]
    assert lines[6] == ""  # the note ends with a newline
    assert made.body == "\n".join(lines[:4]) + "\n"
    assert len(base64.b64decode(lines[5].rsplit(" ", 1)[1])) == 68


def test_parse_round_trip(bare: Ledger, signer: Signer) -> None:
    made = bare.checkpoint()
    parsed, signatures = parse_checkpoint(made.note)
    assert parsed == made
    assert (parsed.origin, parsed.size, parsed.root, parsed.timestamp, parsed.note) == (
        made.origin,
        made.size,
        made.root,
        made.timestamp,
        made.note,
    )
    assert len(signatures) == 1
    name, blob = signatures[0]
    assert name == made.origin
    assert blob[:4] == spec_key_hash(name, raw_public(signer))
    again = sign_checkpoint(signer, origin=made.origin, size=made.size, root=made.root, timestamp=made.timestamp)
    assert again.note == made.note  # Ed25519 is deterministic: same body, same note


def test_verify_checkpoint_accepts_the_right_key_only(bare: Ledger, signer: Signer) -> None:
    made = bare.checkpoint()
    keys = {signer.kid: signer.public}
    assert verify_checkpoint(made.note, keys) == made
    assert verify_checkpoint(made.note, keys, origin=made.origin) == made
    other = Signer.generate()
    with pytest.raises(ValueError, match="not signed by a trusted key"):
        verify_checkpoint(made.note, {other.kid: other.public})
    with pytest.raises(ValueError):
        verify_checkpoint(made.note, {})
    with pytest.raises(ValueError, match="not 'lexecon/other-node'"):
        verify_checkpoint(made.note, keys, origin="lexecon/other-node")
    # The trusted key among others is still found.
    assert verify_checkpoint(made.note, {other.kid: other.public, signer.kid: signer.public}) == made


def test_every_one_byte_edit_of_the_note_is_refused(bare: Ledger, signer: Signer) -> None:
    made = bare.checkpoint()
    keys = {signer.kid: signer.public}
    for i in range(len(made.body) - 1):  # every character of the signed text except its final newline
        original = made.note[i]
        replacement = chr(ord(original) ^ 1) if original != "\n" else "x"
        edited = made.note[:i] + replacement + made.note[i + 1 :]
        with pytest.raises(ValueError):
            verify_checkpoint(edited, keys, origin=made.origin)
    # Every byte of the signature blob (key hash and signature). Edited as bytes and re-encoded: flipping a base64
    # character could touch only the unused low bits of the last group, which decodes to the same blob.
    prefix, blob_b64 = made.note[len(made.body) + 1 :].rstrip("\n").rsplit(" ", 1)
    blob = base64.b64decode(blob_b64)
    for i in range(len(blob)):
        altered = blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1 :]
        edited = f"{made.body}\n{prefix} {base64.b64encode(altered).decode()}\n"
        with pytest.raises(ValueError):
            verify_checkpoint(edited, keys, origin=made.origin)
    for name in (made.origin + "x", "lexecon/cp-nodf", ""):  # the signature line's key name
        with pytest.raises(ValueError):
            verify_checkpoint(f"{made.body}\n{EM_DASH} {name} {blob_b64}\n", keys, origin=made.origin)
    assert verify_checkpoint(f"{made.body}\n{prefix} {blob_b64}\n", keys) == made  # the re-assembly is faithful


def test_note_signature_per_c2sp_spec_with_cryptography_only(bare: Ledger, signer: Signer) -> None:
    made = bare.checkpoint()
    pub = raw_public(signer)
    text = spec_open_note(made.note, f"lexecon/{BARE_NODE}", pub)
    assert text == made.body
    # Under another name, or with another key, the independent check finds no signature.
    with pytest.raises(AssertionError):
        spec_open_note(made.note, "lexecon/other", pub)
    with pytest.raises(AssertionError):
        spec_open_note(made.note, f"lexecon/{BARE_NODE}", raw_public(Signer.generate()))
    # And a checkpoint that the independent check accepts is one lexecon accepts (same key, same bytes).
    assert verify_checkpoint(made.note, {signer.kid: PublicKey.from_raw(pub)}) == made


# The reference signed note of golang.org/x/mod/sumdb/note (note.go doc comment and ExampleSign): it checks the
# independent spec helper above, and lexecon's key hash for the same key and name.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT
    + "\n"
    + EM_DASH
    + " PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_spec_helper_and_key_hash_on_the_go_reference_note() -> None:
    verifier = base64.b64decode(GO_VERIFIER_KEY.split("+", 2)[2])
    assert verifier[0] == 1
    pub = verifier[1:]
    assert spec_key_hash("PeterNeumann", pub).hex() == "c74f20a3"
    assert spec_open_note(GO_NOTE, "PeterNeumann", pub) == GO_TEXT
    with pytest.raises(AssertionError):
        spec_open_note(GO_NOTE.replace("cryptography", "cryptographY"), "PeterNeumann", pub)
    # lexecon signing with the same private key: the same key hash, and a note the Go key verifies.
    seed = base64.b64decode(GO_SIGNER_KEY.split("+", 4)[4])
    assert seed[0] == 1
    go_signer = Signer(Ed25519PrivateKey.from_private_bytes(seed[1:]))
    assert go_signer.public.raw == pub
    made = sign_checkpoint(
        go_signer, origin="PeterNeumann", size=1, root=bytes(32), timestamp="2026-01-01T00:00:00.000000Z"
    )
    assert parse_checkpoint(made.note)[1][0][1][:4].hex() == "c74f20a3"
    assert spec_open_note(made.note, "PeterNeumann", pub) == made.body


# == 2. checkpoints on a ledger =======================================================================================


def test_checkpoint_is_idempotent_then_grows(bare: Ledger, bare_db: Path) -> None:
    first = bare.checkpoint()
    assert first.size == 7
    again = bare.checkpoint()
    assert again.size == 7 and again.note == first.note
    assert [c.size for c in bare.checkpoints()] == [7]
    for i in range(3):
        bare.append("note", {"more": i})
    grown = bare.checkpoint()
    assert grown.size == 10
    assert grown.root != first.root
    assert [c.note for c in bare.checkpoints()] == [first.note, grown.note]
    stored = sql(bare_db, "SELECT tree_size, root_hash, note FROM ledger_checkpoints ORDER BY tree_size")
    assert [(r[0], bytes(r[1]), r[2]) for r in stored] == [
        (7, first.root, first.note),
        (10, grown.root, grown.note),
    ]


def test_checkpoint_root_is_the_rfc6962_root_of_the_db_rows(bare: Ledger, bare_db: Path) -> None:
    first = bare.checkpoint()
    assert first.root == root_of(leaves_from_db(bare_db))
    for i in range(6):
        bare.append("note", {"more": i})
    grown = bare.checkpoint()
    leaves = leaves_from_db(bare_db)
    assert grown.size == len(leaves) == 13
    assert grown.root == root_of(leaves)
    assert first.root == root_of(leaves[:7])


def test_stored_tree_grows_incrementally_without_rewriting(bare: Ledger, bare_db: Path) -> None:
    assert sql(bare_db, "SELECT count(*) FROM ledger_tree")[0][0] == 0  # grown at checkpoint time only
    bare.checkpoint()
    before = tree_rows(bare_db)
    assert len(before) == expected_tree_rows(7)
    assert sql(bare_db, "SELECT value FROM ledger_meta WHERE key = 'tree_size'") == [("7",)]
    # From now on any UPDATE or DELETE of a tree node fails the statement (and so the checkpoint).
    sql(bare_db, "CREATE TRIGGER no_tree_update BEFORE UPDATE ON ledger_tree BEGIN SELECT RAISE(ABORT, 'rw'); END")
    sql(bare_db, "CREATE TRIGGER no_tree_delete BEFORE DELETE ON ledger_tree BEGIN SELECT RAISE(ABORT, 'rw'); END")
    for i in range(9):
        bare.append("note", {"more": i})
    grown = bare.checkpoint()
    assert grown.size == 16
    after = tree_rows(bare_db)
    assert before <= after  # every earlier row is still there, same rowid, same hash
    assert len(after) == expected_tree_rows(16)
    assert sql(bare_db, "SELECT value FROM ledger_meta WHERE key = 'tree_size'") == [("16",)]
    # The stored nodes are the right ones: level 0 holds the leaves, the single level-4 node is the root.
    leaves = leaves_from_db(bare_db)
    by_position = {(lv, ix): h for _, lv, ix, h in after}
    assert [by_position[(0, i)] for i in range(16)] == leaves
    assert by_position[(4, 0)] == grown.root == root_of(leaves)
    for sample in ((1, 3), (2, 2), (3, 1)):
        level, index = sample
        width = 1 << level
        assert by_position[sample] == root_of(leaves[index * width : (index + 1) * width])


def test_checkpoint_of_an_empty_ledger_or_without_a_signer(tmp_path: Path, signer: Signer) -> None:
    with Ledger(sqlite_url(tmp_path / "empty.db"), node_id="n") as empty:  # no signer: no genesis entry either
        assert empty.count() == 0
        with pytest.raises(LedgerError, match="empty"):
            empty.checkpoint(signer=signer)
        assert empty.checkpoints() == []
    with Ledger(sqlite_url(tmp_path / "l.db"), node_id="n", signer=signer) as ledger:
        ledger.append("note", {})
    with Ledger(sqlite_url(tmp_path / "l.db"), readonly=True) as ledger:
        with pytest.raises(LedgerError, match="read-only"):
            ledger.checkpoint()
        assert ledger.checkpoints() == []


# == 3. proofs ========================================================================================================


def test_inclusion_proof_of_every_entry_verifies(bare: Ledger, bare_db: Path, signer: Signer) -> None:
    first = bare.checkpoint()
    for i in range(5):
        bare.append("note", {"more": i})
    latest = bare.checkpoint()
    entry_hashes = {r[0]: bytes(r[1]) for r in sql(bare_db, "SELECT seq, entry_hash FROM ledger_entries")}
    for seq in range(1, latest.size + 1):
        proof = bare.inclusion_proof(seq)
        assert proof.tree_size == latest.size
        assert proof.root == latest.root
        assert proof.checkpoint == latest.note
        assert proof.entry_hash == entry_hashes[seq]
        leaf = leaf_hash(entry_hashes[seq])
        assert verify_inclusion(leaf, seq - 1, latest.size, list(proof.hashes), latest.root)
        assert not verify_inclusion(leaf, seq % latest.size, latest.size, list(proof.hashes), latest.root)
        as_dict = proof.to_dict()
        assert as_dict["leaf_index"] == seq - 1
        assert as_dict["leaf_hash"] == leaf.hex()
        assert as_dict["root"] == latest.root.hex()
        assert [bytes.fromhex(h) for h in as_dict["hashes"]] == list(proof.hashes)
    # The note carried by the proof is a checkpoint the verifier can check on its own.
    assert verify_checkpoint(bare.inclusion_proof(3).checkpoint or "", {signer.kid: signer.public}).root == latest.root
    # Against the older checkpoint.
    for seq in range(1, first.size + 1):
        proof = bare.inclusion_proof(seq, tree_size=first.size)
        assert proof.root == first.root and proof.checkpoint == first.note
        assert verify_inclusion(leaf_hash(entry_hashes[seq]), seq - 1, first.size, list(proof.hashes), first.root)
    # A size inside the tree that no checkpoint was made at: still a valid proof, without a note.
    proof = bare.inclusion_proof(2, tree_size=5)
    assert proof.checkpoint is None
    assert verify_inclusion(leaf_hash(entry_hashes[2]), 1, 5, list(proof.hashes), root_of(leaves_from_db(bare_db, 5)))


def test_inclusion_proof_errors(bare: Ledger) -> None:
    with pytest.raises(LedgerError, match="no checkpoint"):
        bare.inclusion_proof(1)
    made = bare.checkpoint()
    bare.append("note", {"after": True})
    for seq in (0, -1, made.size + 1):
        with pytest.raises(LedgerError):
            bare.inclusion_proof(seq)
    with pytest.raises(LedgerError):
        bare.inclusion_proof(made.size + 1, tree_size=made.size + 1)  # entry 8 exists, the tree does not reach it
    with pytest.raises(LedgerError):
        bare.inclusion_proof(3, tree_size=made.size + 1)
    with pytest.raises(LedgerError):
        bare.inclusion_proof(made.size, tree_size=made.size - 1)


def test_consistency_proofs_between_checkpoints(bare: Ledger, bare_db: Path) -> None:
    made = [bare.checkpoint()]
    for batch in (1, 4, 9):
        for i in range(batch):
            bare.append("note", {"batch": batch, "i": i})
        made.append(bare.checkpoint())
    assert [c.size for c in made] == [7, 8, 12, 21]
    for old in made:
        for new in made:
            if old.size > new.size:
                with pytest.raises(LedgerError):
                    bare.consistency_proof(old.size, new.size)
                continue
            proof = bare.consistency_proof(old.size, new.size)
            assert verify_consistency(old.size, new.size, old.root, new.root, proof), (old.size, new.size)
            if old.size < new.size:
                assert not verify_consistency(old.size, new.size, bytes(32), new.root, proof)
                assert not verify_consistency(old.size, new.size, old.root, old.root, proof)
    with pytest.raises(LedgerError):
        bare.consistency_proof(0, 7)
    bare.append("note", {"beyond": True})
    with pytest.raises(LedgerError):
        bare.consistency_proof(7, 22)  # the tree only reaches 21


# == 4. tamper detection with checkpoints ============================================================================


def test_truncated_tail_is_detected_by_the_stored_checkpoint(decided: LocalGovernor, home: Path) -> None:
    made = decided.node.ledger.checkpoint()
    assert made.size == 8
    assert decided.verify_ledger().valid
    sql(db_of(home), "DELETE FROM ledger_entries WHERE seq > 5")
    report = decided.verify_ledger()
    assert_invalid(report, 6, "truncated", "covers 8 entries", "has 5")
    assert report.chain_intact is False


def test_truncation_hidden_by_deleting_checkpoints_is_caught_by_a_saved_note(
    decided: LocalGovernor, home: Path
) -> None:
    ledger = decided.node.ledger
    note = ledger.checkpoint().note
    sql(db_of(home), "DELETE FROM ledger_entries WHERE seq > 6")
    sql(db_of(home), "DELETE FROM ledger_checkpoints")
    # With nothing kept elsewhere, the shortened chain is self-consistent: this is why notes are kept outside.
    assert decided.verify_ledger().valid
    report = ledger.verify(decided.public_keys, checkpoints=[note])
    assert_invalid(report, 7, "truncated")


def test_truncation_then_new_appends_disagrees_with_the_checkpoint(decided: LocalGovernor, home: Path) -> None:
    """Cut the tail and append fresh, validly signed entries in its place: the chain is fine, the root is not."""
    decided.node.ledger.checkpoint()
    sql(db_of(home), "DELETE FROM ledger_entries WHERE seq > 6")
    with pytest.raises(GovernanceError, match="ledger truncated"):  # the node that verified them will not go on
        decided.decide(APPROVE)
    # A node with no memory of them starts from the genesis entry; the signed checkpoint covers entries 1..8,
    # so it knows entries are missing and refuses as well.
    with LocalGovernor(home) as fresh, pytest.raises(GovernanceError, match="a signed checkpoint covers"):
        fresh.decide(APPROVE)
    assert_invalid(decided.verify_ledger(), 7, "ledger truncated")


def test_rewritten_and_resigned_history_disagrees_with_the_checkpoint(decided: LocalGovernor, home: Path) -> None:
    ledger = decided.node.ledger
    made = ledger.checkpoint()
    db = db_of(home)
    body = json.loads(sql(db, "SELECT body FROM ledger_entries WHERE seq = 5")[0][0])
    body["data"]["request"]["args_sha256"] = "0" * 64  # not a copied column: only the signed body changes
    rechain_from(db, 5, spec_canonical(body), decided.node.keys.signer)
    # The chain and every signature are valid again (checked without the checkpoints) ...
    saved = sql(db, "SELECT tree_size, root_hash, created_at, kid, note FROM ledger_checkpoints")
    sql(db, "DELETE FROM ledger_checkpoints")
    assert decided.verify_ledger().valid
    # ... but the signed checkpoint, stored or kept elsewhere, catches the rewrite.
    assert_invalid(ledger.verify(decided.public_keys, checkpoints=[made.note]), 8, "disagree with a signed checkpoint")
    sql(db, "INSERT INTO ledger_checkpoints VALUES (?, ?, ?, ?, ?)", saved[0])
    report = decided.verify_ledger()
    assert_invalid(report, 8, "disagree with a signed checkpoint", "history rewritten")
    assert report.chain_intact is False


def test_checkpoint_signed_by_a_foreign_key_is_rejected(decided: LocalGovernor, home: Path) -> None:
    ledger = decided.node.ledger
    made = ledger.checkpoint()
    foreign = sign_checkpoint(
        Signer.generate(), origin=ORIGIN, size=made.size, root=made.root, timestamp=made.timestamp
    )
    report = ledger.verify(decided.public_keys, checkpoints=[foreign.note])
    assert_invalid(report, 8, "checkpoint rejected", "not signed by a trusted key")
    assert report.signatures_valid is False
    # Stored in place of the real one.
    sql(db_of(home), "UPDATE ledger_checkpoints SET note = ? WHERE tree_size = 8", (foreign.note,))
    assert_invalid(decided.verify_ledger(), 8, "checkpoint rejected")


def test_checkpoint_for_another_origin_is_rejected(decided: LocalGovernor) -> None:
    ledger = decided.node.ledger
    made = ledger.checkpoint()
    other = sign_checkpoint(
        decided.node.keys.signer, origin="lexecon/other-node", size=made.size, root=made.root, timestamp=made.timestamp
    )
    assert_invalid(ledger.verify(decided.public_keys, checkpoints=[other.note]), 8, "checkpoint rejected")


def test_edited_root_in_a_stored_note_is_rejected(decided: LocalGovernor, home: Path) -> None:
    made = decided.node.ledger.checkpoint()
    forged_root = base64.b64encode(hashlib.sha256(b"forged").digest()).decode()
    forged = made.note.replace(base64.b64encode(made.root).decode(), forged_root)
    assert forged != made.note
    sql(db_of(home), "UPDATE ledger_checkpoints SET note = ? WHERE tree_size = 8", (forged,))
    assert_invalid(decided.verify_ledger(), 8, "checkpoint rejected")


def test_a_forked_checkpoint_of_one_size_is_reported(decided: LocalGovernor) -> None:
    ledger = decided.node.ledger
    made = ledger.checkpoint()
    fork = sign_checkpoint(decided.node.keys.signer, origin=ORIGIN, size=8, root=bytes(32), timestamp=made.timestamp)
    assert_invalid(ledger.verify(decided.public_keys, checkpoints=[fork.note]), 8, "disagree", "fork")


def test_malformed_stored_note_is_reported_not_raised(decided: LocalGovernor, home: Path) -> None:
    decided.node.ledger.checkpoint()
    sql(db_of(home), "UPDATE ledger_checkpoints SET note = 'not a note' WHERE tree_size = 8")
    report = decided.verify_ledger()
    assert report.valid is False
    assert "checkpoint rejected" in (report.reason or "")
    with pytest.raises(LedgerError, match="damaged"):  # listing them is a LexeconError, not a bare ValueError
        decided.node.ledger.checkpoints()


def test_cli_verify_ledger_reports_a_malformed_stored_note_as_invalid(
    cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home))
    sql(db_of(cli_home), "UPDATE ledger_checkpoints SET note = 'not a note'")
    code, out, _ = run_cli(capsys, "verify-ledger", "--home", str(cli_home), "--json")
    assert code == 1, out  # a finding (exit 1), not a crash (exit 2)
    assert "checkpoint rejected" in json.loads(out)["reason"]
    code, _, err = run_cli(capsys, "ledger", "checkpoints", "--home", str(cli_home))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "damaged" in err


def test_note_with_a_non_ascii_digit_size_is_reported_not_raised(decided: LocalGovernor) -> None:
    ledger = decided.node.ledger
    made = ledger.checkpoint()
    odd = made.note.replace("\n8\n", "\n\u00b2\n", 1)
    report = ledger.verify(decided.public_keys, checkpoints=[odd])
    assert report.valid is False
    assert "checkpoint rejected" in (report.reason or "")


def test_parse_checkpoint_refuses_non_ascii_digits(bare: Ledger) -> None:
    made = bare.checkpoint()
    odd = made.note.replace("\n7\n", "\n\uff17\n", 1)
    with pytest.raises(ValueError):
        parse_checkpoint(odd)


# == 5. periodic checkpoints ==========================================================================================


def test_periodic_checkpoints_every_interval(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_CHECKPOINT_INTERVAL", "5")
    with LocalGovernor(home) as gov:
        assert gov.node.ledger.checkpoint_interval == 5
        first_seq = gov.node.ledger.head()[0] + 1
        seqs = [gov.decide((APPROVE, DENY, REFUND)[i % 3]).ledger_entry_id for i in range(12)]
        assert seqs == list(range(first_seq, first_seq + 12))
        made = gov.node.ledger.checkpoints()
        expected = [s for s in seqs if s % 5 == 0]
        assert [c.size for c in made] == expected == [5, 10]  # entries 1-2 (genesis, policy) count too
        leaves = leaves_from_db(db_of(home))
        for checkpoint in made:
            assert checkpoint.root == root_of(leaves[: checkpoint.size])
            assert verify_checkpoint(checkpoint.note, gov.public_keys, origin=ORIGIN) == checkpoint
        report = gov.verify_ledger()
        assert report.valid and report.checkpoints_checked == 2


def test_checkpoint_interval_zero_makes_none(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_CHECKPOINT_INTERVAL", "0")
    with LocalGovernor(home) as gov:
        for _ in range(12):
            gov.decide(APPROVE)
        assert gov.node.ledger.checkpoints() == []
        assert sql(db_of(home), "SELECT count(*) FROM ledger_tree")[0][0] == 0


def test_bare_ledger_interval(tmp_path: Path, signer: Signer) -> None:
    with Ledger(sqlite_url(tmp_path / "i.db"), node_id="n", signer=signer, checkpoint_interval=3) as ledger:
        for i in range(10):
            ledger.append("note", {"i": i})  # seqs 2..11 (genesis is 1)
        assert [c.size for c in ledger.checkpoints()] == [3, 6, 9]


# == 6. CLI ===========================================================================================================


@pytest.fixture
def cli_home(home: Path) -> Path:
    """The home with six decisions (seqs 3..8), the governor closed again."""
    with LocalGovernor(home) as gov:
        for request in (APPROVE, DENY, REFUND, APPROVE, DENY, REFUND):
            gov.decide(request)
    return home


def node_keys(home: Path) -> dict[str, PublicKey]:
    with LocalGovernor(home) as gov:
        return gov.public_keys


def test_cli_checkpoint_prints_a_verifiable_note(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home))
    assert code == 0
    made = verify_checkpoint(out, node_keys(cli_home), origin=ORIGIN)
    assert made.size == 8
    assert made.root == root_of(leaves_from_db(db_of(cli_home)))
    code, out, _ = run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tree_size"] == 8 and data["root"] == made.root.hex() and data["note"] == made.note


def test_cli_checkpoints_json(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "ledger", "checkpoints", "--home", str(cli_home), "--json")
    assert code == 0 and json.loads(out) == []
    run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home))
    with LocalGovernor(cli_home) as gov:
        gov.decide(APPROVE)
    run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home))
    code, out, _ = run_cli(capsys, "ledger", "checkpoints", "--home", str(cli_home), "--json")
    assert code == 0
    listed = json.loads(out)
    assert [c["tree_size"] for c in listed] == [8, 9]
    keys = node_keys(cli_home)
    for item in listed:
        checkpoint = verify_checkpoint(item["note"], keys, origin=ORIGIN)
        assert checkpoint.root.hex() == item["root"] and checkpoint.timestamp == item["timestamp"]
    code, out, _ = run_cli(capsys, "ledger", "checkpoints", "--home", str(cli_home))
    assert code == 0 and listed[0]["root"][:16] in out


def test_cli_prove_json_verifies(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home))
    keys = node_keys(cli_home)
    rows = {r[0]: bytes(r[1]) for r in sql(db_of(cli_home), "SELECT seq, entry_hash FROM ledger_entries")}
    for seq in (1, 4, 8):
        code, out, _ = run_cli(capsys, "ledger", "prove", "--entry", str(seq), "--home", str(cli_home), "--json")
        assert code == 0
        proof = json.loads(out)
        checkpoint = verify_checkpoint(proof["checkpoint"], keys, origin=ORIGIN)  # trust comes from the note
        assert proof["tree_size"] == checkpoint.size == 8
        assert proof["entry_hash"] == rows[seq].hex()
        leaf = hashlib.sha256(b"\x00" + rows[seq]).digest()
        assert proof["leaf_hash"] == leaf.hex() and proof["leaf_index"] == seq - 1
        hashes = [bytes.fromhex(h) for h in proof["hashes"]]
        assert verify_inclusion(leaf, seq - 1, checkpoint.size, hashes, checkpoint.root)
    code, out, _ = run_cli(capsys, "ledger", "prove", "--entry", "4", "--home", str(cli_home))
    assert code == 0 and "entry 4 (leaf 3) in the tree of 8 entries" in out


def test_cli_prove_without_checkpoint_is_a_one_line_error(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "ledger", "prove", "--entry", "3", "--home", str(cli_home), "--json")
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "checkpoint" in lines[0]


def test_cli_verify_ledger_with_a_saved_checkpoint(
    cli_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, note, _ = run_cli(capsys, "ledger", "checkpoint", "--home", str(cli_home))
    assert code == 0
    saved = tmp_path / "checkpoint.txt"
    saved.write_text(note, encoding="utf-8")
    code, out, _ = run_cli(capsys, "verify-ledger", "--home", str(cli_home), "--checkpoint", str(saved), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["valid"] is True and data["checkpoints_checked"] == 1
    code, out, _ = run_cli(capsys, "verify-ledger", "--home", str(cli_home), "--checkpoint", str(saved))
    assert code == 0 and "checkpoints" in out
    # Truncate, and remove the stored checkpoints as an attacker would: the saved note still catches it.
    sql(db_of(cli_home), "DELETE FROM ledger_entries WHERE seq > 4")
    sql(db_of(cli_home), "DELETE FROM ledger_checkpoints")
    code, out, _ = run_cli(capsys, "verify-ledger", "--home", str(cli_home), "--json")
    assert code == 0  # without the note the shorter chain is self-consistent
    code, out, _ = run_cli(capsys, "verify-ledger", "--home", str(cli_home), "--checkpoint", str(saved), "--json")
    assert code == 1
    data = json.loads(out)
    assert data["valid"] is False and data["first_bad_seq"] == 5 and "truncated" in data["reason"]
    code, out, _ = run_cli(capsys, "verify-ledger", "--home", str(cli_home), "--checkpoint", str(saved))
    assert code == 1 and "INVALID" in out


def test_a_failed_periodic_checkpoint_does_not_fail_the_durable_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "p.db"), node_id="n", signer=signer, checkpoint_interval=2)

    def broken(**kwargs: object) -> None:
        raise LedgerError("disk full")

    monkeypatch.setattr(ledger, "checkpoint", broken)
    entry = ledger.append("note", {"x": 1})  # seq 2: a checkpoint is due and fails
    assert entry.seq == 2
    assert ledger.get(2) == entry
    ledger.close()


def test_checkpoint_refuses_a_tree_longer_than_the_ledger(tmp_path: Path) -> None:
    import sqlite3

    signer = Signer.generate()
    path = tmp_path / "t.db"
    ledger = Ledger(sqlite_url(path), node_id="n", signer=signer)
    for i in range(5):
        ledger.append("note", {"i": i})
    ledger.checkpoint()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM ledger_entries WHERE seq > 3")
    with pytest.raises(LedgerError, match=r"ledger truncated: entries 4\.\.6 were verified and are gone"):
        ledger.checkpoint()
    ledger.close()


def test_receipt_carries_the_inclusion_proof_once_a_checkpoint_covers_it(governor: LocalGovernor) -> None:
    decision = governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": "r"}})
    early = governor.receipt(decision)
    assert early["entry"]["entry_hash"] == decision.ledger_entry_hash
    assert early["inclusion_proof"] is None and early["checkpoint"] is None
    governor.node.ledger.checkpoint()
    receipt = governor.receipt(decision)
    proof = receipt["inclusion_proof"]
    checkpoint = verify_checkpoint(receipt["checkpoint"], governor.public_keys)
    assert proof["tree_size"] == checkpoint.size
    assert verify_inclusion(
        leaf_hash(bytes.fromhex(decision.ledger_entry_hash)),
        proof["leaf_index"],
        checkpoint.size,
        [bytes.fromhex(h) for h in proof["hashes"]],
        checkpoint.root,
    )
    assert receipt["jwks"]["keys"]


def test_report_says_whether_checkpoints_are_consistent(governor: LocalGovernor, home: Path) -> None:
    for i in range(4):
        governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": i}})
    ledger = governor.node.ledger
    ledger.checkpoint()
    good = governor.verify_ledger().to_dict()
    assert good["checkpoints_consistent"] is True and good["checkpoints_checked"] == 1
    with sqlite3.connect(home / "ledger.db") as db:  # an ordinary column edit: not a checkpoint problem
        db.execute("UPDATE ledger_entries SET outcome = 'denied' WHERE seq = 3")
    column_only = governor.verify_ledger().to_dict()
    assert column_only["valid"] is False and column_only["checkpoints_consistent"] is True
    with sqlite3.connect(home / "ledger.db") as db:
        db.execute("UPDATE ledger_entries SET outcome = 'approved' WHERE seq = 3")
        db.execute("DELETE FROM ledger_entries WHERE seq > 4")
    truncated = governor.verify_ledger().to_dict()
    assert truncated["valid"] is False and truncated["checkpoints_consistent"] is False
