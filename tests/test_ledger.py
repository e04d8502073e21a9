"""The signed, hash-chained ledger: format, tamper detection, concurrency, failure handling.

Everything that can be recomputed from the spec (hashes, signatures, canonical JSON) is recomputed here independently
of ``lexecon_core``: the formulas below are written out from the docstring of ``lexecon_core/ledger/_entry.py``:

    genesis_hash = SHA-256("lexecon:ledger:genesis:v1" 0x00 node_id)
    entry_hash   = SHA-256("lexecon:ledger:entry:v1" 0x00 prev_hash body)
    signature    = Ed25519(key, "lexecon:ledger:sig:v1" 0x00 entry_hash)

The tamper tests edit the SQLite file directly with :mod:`sqlite3`, the way an attacker with file access would.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import multiprocessing
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lexecon_core import GovernanceError, InvalidRequest, LexeconError, LocalGovernor, open_node
from lexecon_core.cli import main as cli_main
from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, LedgerEntry, sqlite_url

NODE_ID = "test-node"
ENTRY_TAG = b"lexecon:ledger:entry:v1\x00"
SIG_TAG = b"lexecon:ledger:sig:v1\x00"
GENESIS_TAG = b"lexecon:ledger:genesis:v1\x00"

APPROVE = {"actor": "ai_agent:support", "tool": "search", "tool_args": {"q": "order 42"}}
REFUND = {"actor": "ai_agent:support", "tool": "refund", "tool_args": {"order": 42, "amount": 10}}
DENY = {"actor": "ai_agent:support", "tool": "delete_user", "tool_args": {"id": 7}}


# -- independent re-implementations of the spec --------------------------------------------------------------------


def spec_genesis(node_id: str) -> bytes:
    return hashlib.sha256(GENESIS_TAG + node_id.encode("utf-8")).digest()


def spec_entry_hash(prev: bytes, body: bytes) -> bytes:
    return hashlib.sha256(ENTRY_TAG + prev + body).digest()


def spec_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def spec_kid(raw: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:16]).rstrip(b"=").decode()


def b64url_json(segment: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, decoded by hand (signature not checked: that is the tokens tests' job)."""
    return b64url_json(token.split(".")[1])


def raw_public_key_from_pem(path: Path) -> bytes:
    key = serialization.load_pem_public_key(path.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- direct database access ----------------------------------------------------------------------------------------

COLUMNS = (
    "seq",
    "entry_type",
    "created_at",
    "body",
    "prev_hash",
    "entry_hash",
    "kid",
    "signature",
    "decision_id",
    "actor",
    "tool",
    "outcome",
)


def db_path(home: Path) -> Path:
    return home / "ledger.db"


def sql(home_or_db: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger file with the plain sqlite3 module, committed and closed."""
    path = db_path(home_or_db) if home_or_db.is_dir() else home_or_db
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def read_row(home: Path, seq: int) -> dict[str, Any]:
    rows = sql(home, f"SELECT {', '.join(COLUMNS)} FROM ledger_entries WHERE seq = ?", (seq,))
    assert rows, f"no row {seq}"
    return dict(zip(COLUMNS, rows[0], strict=True))


def insert_row(home: Path, row: dict[str, Any]) -> None:
    placeholders = ", ".join("?" for _ in COLUMNS)
    sql(
        home,
        f"INSERT INTO ledger_entries ({', '.join(COLUMNS)}) VALUES ({placeholders})",
        tuple(row[c] for c in COLUMNS),
    )


def shift_up(home: Path, from_seq: int) -> None:
    """Renumber rows ``seq >= from_seq`` to ``seq + 1`` (in two steps, so the primary key never collides)."""
    sql(home, "UPDATE ledger_entries SET seq = seq + 1000000 WHERE seq >= ?", (from_seq,))
    sql(home, "UPDATE ledger_entries SET seq = seq - 999999 WHERE seq >= 1000000")


def all_seqs(db: Path) -> list[int]:
    return [r[0] for r in sql(db, "SELECT seq FROM ledger_entries ORDER BY seq")]


def forged_row(home: Path, *, seq: int, prev: bytes, signer: Signer, kid: str, template: dict[str, Any]) -> dict:
    """A row whose body, prev_hash and entry_hash are all consistent (a 'correct-looking' chain link)."""
    data = json.loads(template["body"])["data"]
    data["decision_id"] = "dec_forged"
    data["outcome"] = "approved"
    body = spec_canonical(
        {"v": 1, "seq": seq, "type": "decision", "ts": "2030-01-01T00:00:00.000000Z", "node": NODE_ID, "data": data}
    )
    digest = spec_entry_hash(prev, body)
    return {
        "seq": seq,
        "entry_type": "decision",
        "created_at": "2030-01-01T00:00:00.000000Z",
        "body": body,
        "prev_hash": prev,
        "entry_hash": digest,
        "kid": kid,
        "signature": signer.sign(SIG_TAG + digest),
        "decision_id": "dec_forged",
        "actor": data["request"]["actor"],
        "tool": data["request"]["tool"],
        "outcome": "approved",
    }


def assert_invalid(report: Any, first_bad_seq: int, *reason_words: str) -> None:
    assert report.valid is False, report
    assert report.first_bad_seq == first_bad_seq, report
    assert report.reason, report
    for word in reason_words:
        assert word in report.reason, f"{word!r} not in {report.reason!r}"
    assert report.entries_verified == first_bad_seq - 1
    assert report.to_dict()["first_bad_seq"] == first_bad_seq


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture
def decided(governor: LocalGovernor) -> list[Any]:
    """Six decisions (approved and denied) on top of the home's genesis (1) and policy (2) entries: seqs 3..8."""
    requests = [APPROVE, DENY, REFUND, APPROVE, DENY, REFUND]
    decisions = [governor.decide(r) for r in requests]
    assert [d.ledger_entry_id for d in decisions] == [3, 4, 5, 6, 7, 8]
    assert governor.verify_ledger().valid
    return decisions


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(args)
    captured = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


# == 1. basics =======================================================================================================


def test_append_returns_durable_entries_with_dense_seq(governor: LocalGovernor, home: Path) -> None:
    ledger = governor.node.ledger
    before = ledger.count()
    assert before == 2  # genesis + policy_loaded
    entries = [ledger.append("note", {"n": i, "text": "héllo"}) for i in range(3)]
    assert all(isinstance(e, LedgerEntry) for e in entries)
    assert [e.seq for e in entries] == [before + 1, before + 2, before + 3]
    assert ledger.count() == before + 3
    assert ledger.head() == (entries[-1].seq, entries[-1].entry_hash)
    # Durable: visible to an unrelated sqlite3 connection, byte for byte as returned.
    for entry in entries:
        row = read_row(home, entry.seq)
        assert row["body"] == entry.body
        assert row["prev_hash"] == entry.prev_hash
        assert row["entry_hash"] == entry.entry_hash
        assert row["signature"] == entry.signature
        assert row["kid"] == entry.kid
        assert row["entry_type"] == "note"
        assert ledger.get(entry.seq) == entry
    assert entries[1].data == {"n": 1, "text": "héllo"}
    assert all_seqs(db_path(home)) == list(range(1, before + 4))


def test_entry_hash_matches_spec_and_chains_from_genesis(decided: list[Any], home: Path) -> None:
    prev = spec_genesis(NODE_ID)
    seqs = all_seqs(db_path(home))
    assert seqs == list(range(1, 9))
    for seq in seqs:
        row = read_row(home, seq)
        assert row["prev_hash"] == prev, f"entry {seq} does not link to its predecessor"
        assert row["entry_hash"] == spec_entry_hash(prev, row["body"])
        assert len(row["entry_hash"]) == 32
        prev = row["entry_hash"]
    # Tokens carry the entry hash too; it must be the stored one.
    for decision in decided:
        assert read_row(home, decision.ledger_entry_id)["entry_hash"].hex() == decision.ledger_entry_hash


def test_signatures_verify_with_the_raw_public_key(decided: list[Any], home: Path) -> None:
    active = (home / "keys" / "active").read_text().strip()
    raw = raw_public_key_from_pem(home / "keys" / f"{active}.pub")
    assert spec_kid(raw) == active
    public = Ed25519PublicKey.from_public_bytes(raw)
    for seq in all_seqs(db_path(home)):
        row = read_row(home, seq)
        assert row["kid"] == active
        assert len(row["signature"]) == 64
        public.verify(row["signature"], SIG_TAG + row["entry_hash"])  # raises InvalidSignature if wrong
        with pytest.raises(InvalidSignature):  # domain separation: the bare hash is not what was signed
            public.verify(row["signature"], row["entry_hash"])


def test_bodies_are_canonical_json_binding_seq_type_node(decided: list[Any], home: Path) -> None:
    for seq in all_seqs(db_path(home)):
        row = read_row(home, seq)
        parsed = json.loads(row["body"])
        assert spec_canonical(parsed) == row["body"]
        assert parsed["v"] == 1
        assert parsed["seq"] == seq
        assert parsed["type"] == row["entry_type"]
        assert parsed["node"] == NODE_ID


def test_floats_and_big_ints_are_refused_and_leave_no_row(governor: LocalGovernor, home: Path) -> None:
    ledger = governor.node.ledger
    before = ledger.count()
    head = ledger.head()
    with pytest.raises(InvalidRequest, match="float"):
        ledger.append("note", {"score": 0.5})
    with pytest.raises(InvalidRequest, match="float"):
        ledger.append("note", {"nested": {"deep": [1, 2, 3.25]}})
    with pytest.raises(InvalidRequest, match="2\\^53"):
        ledger.append("note", {"big": 2**60})
    assert ledger.count() == before
    assert ledger.head() == head
    assert len(all_seqs(db_path(home))) == before
    assert governor.verify_ledger().valid
    # The append path is still usable and the next entry takes the next number: no gap was burnt.
    entry = ledger.append("note", {"score": "0.5"})
    assert entry.seq == before + 1
    assert governor.verify_ledger().valid


def test_unencodable_string_is_refused_with_invalid_request(governor: LocalGovernor) -> None:
    ledger = governor.node.ledger
    before = ledger.count()
    with pytest.raises(InvalidRequest):
        ledger.append("note", {"text": "\ud800"})
    assert ledger.count() == before


def test_decide_with_unencodable_string_field_is_refused(governor: LocalGovernor) -> None:
    before = governor.node.ledger.count()
    with pytest.raises(InvalidRequest, match="user_intent"):
        governor.decide({**APPROVE, "user_intent": "\ud800"})
    assert governor.node.ledger.count() == before


def test_decide_with_unencodable_nested_string_in_context_raises_a_lexecon_error(governor: LocalGovernor) -> None:
    before = governor.node.ledger.count()
    with pytest.raises(LexeconError):
        governor.decide({**APPROVE, "context": {"note": "\ud800"}})
    assert governor.node.ledger.count() == before  # (in tool_args: denied and recorded, see test_decisions.py)


def test_decision_entry_stores_hashes_not_raw_args_or_token(governor: LocalGovernor, home: Path) -> None:
    secret = "card-4111-1111-1111-1111-xyzzy"
    args = {"query": secret, "limit": 3}
    decision = governor.decide({"actor": "ai_agent:support", "tool": "search", "tool_args": args})
    assert decision.approved and decision.capability_token
    row = read_row(home, decision.ledger_entry_id)
    body: bytes = row["body"]
    data = json.loads(body)["data"]
    expected_args_hash = hashlib.sha256(spec_canonical(args)).hexdigest()
    assert data["request"]["args_sha256"] == expected_args_hash == decision.args_sha256
    assert data["token_id"] == decision.token_id == token_claims(decision.capability_token)["jti"]
    assert data["decision_id"] == decision.decision_id
    # Never the raw arguments, never the bearer token (nor its signature part).
    assert secret.encode() not in body
    assert b"tool_args" not in body
    token = decision.capability_token
    assert token.encode() not in body
    for part in token.split("."):
        assert part.encode() not in body
    # The index columns copy only what the signed body says.
    assert (row["decision_id"], row["actor"], row["tool"], row["outcome"]) == (
        decision.decision_id,
        "ai_agent:support",
        "search",
        "approved",
    )


def test_denied_decision_is_recorded_without_token(governor: LocalGovernor, home: Path) -> None:
    decision = governor.decide(DENY)
    assert decision.outcome == "denied" and decision.capability_token is None
    data = json.loads(read_row(home, decision.ledger_entry_id)["body"])["data"]
    assert data["outcome"] == "denied"
    assert data["token_id"] is None


# == 2. tamper suite =================================================================================================


def test_untouched_ledger_verifies(decided: list[Any], governor: LocalGovernor) -> None:
    report = governor.verify_ledger()
    assert report.valid and report.chain_intact and report.signatures_valid
    assert report.entries_verified == report.head_seq == 8
    assert report.first_bad_seq is None and report.reason is None
    assert report.head_hash == read_row(Path(governor.node.paths.root), 8)["entry_hash"].hex()


def test_edited_body_one_byte(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    body = bytearray(read_row(home, 5)["body"])
    i = body.index(b'"actor":"') + len(b'"actor":"')
    body[i] = ord("A") if body[i] != ord("A") else ord("B")
    sql(home, "UPDATE ledger_entries SET body = ? WHERE seq = 5", (bytes(body),))
    report = governor.verify_ledger()
    assert_invalid(report, 5, "entry_hash does not match", "body edited")
    assert report.chain_intact is False


def test_edited_outcome_text_in_body(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    # Entry 4 is the denial of delete_user; the attacker turns it into an approval in the body and the column.
    row = read_row(home, 4)
    assert row["outcome"] == "denied"
    forged = row["body"].replace(b'"outcome":"denied"', b'"outcome":"approved"')
    assert forged != row["body"]
    sql(home, "UPDATE ledger_entries SET body = ?, outcome = 'approved' WHERE seq = 4", (forged,))
    assert_invalid(governor.verify_ledger(), 4, "body edited")


def test_edited_body_with_recomputed_hash_breaks_signature(
    decided: list[Any], governor: LocalGovernor, home: Path
) -> None:
    """Re-hashing an edited body is not enough: the old signature no longer covers the new hash."""
    row = read_row(home, 8)  # last entry, so no successor's prev_hash needs fixing
    forged = row["body"].replace(b'"outcome":"approved"', b'"outcome":"denied"')
    assert forged != row["body"]
    sql(
        home,
        "UPDATE ledger_entries SET body = ?, entry_hash = ?, outcome = 'denied' WHERE seq = 8",
        (forged, spec_entry_hash(row["prev_hash"], forged)),
    )
    report = governor.verify_ledger()
    assert_invalid(report, 8, "signature does not verify")
    assert report.signatures_valid is False


def test_deleted_entry_in_the_middle(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    sql(home, "DELETE FROM ledger_entries WHERE seq = 5")
    assert_invalid(governor.verify_ledger(), 5, "gap", "expected entry 5, found 6")


def test_deleted_entry_renumbered_is_still_detected(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    """Closing the gap by renumbering the rows after it leaves a broken link (and seq bound in the body)."""
    sql(home, "DELETE FROM ledger_entries WHERE seq = 5")
    sql(home, "UPDATE ledger_entries SET seq = seq - 1 WHERE seq > 5")
    assert all_seqs(db_path(home)) == list(range(1, 8))
    assert_invalid(governor.verify_ledger(), 5, "prev_hash does not link")


def test_deleted_first_entry(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    sql(home, "DELETE FROM ledger_entries WHERE seq = 1")
    assert_invalid(governor.verify_ledger(), 1, "gap", "expected entry 1, found 2")


@pytest.mark.parametrize("where", ["middle", "end"])
def test_inserted_forged_entry_signed_with_foreign_key(
    decided: list[Any], governor: LocalGovernor, home: Path, where: str
) -> None:
    attacker = Signer.generate()
    seq = 5 if where == "middle" else 9
    if where == "middle":
        shift_up(home, 5)
    prev = read_row(home, seq - 1)["entry_hash"]
    insert_row(
        home, forged_row(home, seq=seq, prev=prev, signer=attacker, kid=attacker.kid, template=read_row(home, 3))
    )
    assert all_seqs(db_path(home)) == list(range(1, 10))
    report = governor.verify_ledger()
    assert_invalid(report, seq, "unknown key", attacker.kid)
    assert report.signatures_valid is False


def test_inserted_forged_entry_claiming_the_real_kid(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    attacker = Signer.generate()
    real_kid = governor.node.keys.active_kid
    prev = read_row(home, 8)["entry_hash"]
    insert_row(home, forged_row(home, seq=9, prev=prev, signer=attacker, kid=real_kid, template=read_row(home, 3)))
    assert_invalid(governor.verify_ledger(), 9, "signature does not verify", real_kid)


def test_duplicated_row_renumbered(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    """Replay entry 5 as entry 6, re-linked so prev/entry hashes look right: the seq bound in the body gives it away."""
    original = read_row(home, 5)
    shift_up(home, 6)
    copy = dict(original, seq=6, prev_hash=original["entry_hash"])
    copy["entry_hash"] = spec_entry_hash(copy["prev_hash"], copy["body"])  # entry_hash is UNIQUE; keep it consistent
    insert_row(home, copy)
    assert all_seqs(db_path(home)) == list(range(1, 10))
    assert_invalid(governor.verify_ledger(), 6, "body seq/type/node disagree")


def test_duplicated_row_verbatim_copy(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    """A verbatim copy (only seq changed) breaks the link; its stored entry_hash must be nudged past UNIQUE."""
    original = read_row(home, 5)
    shift_up(home, 6)
    insert_row(home, dict(original, seq=6, entry_hash=bytes(32)))
    assert_invalid(governor.verify_ledger(), 6, "prev_hash does not link")


def swap_rows(home: Path, a: int, b: int) -> None:
    row_a, row_b = read_row(home, a), read_row(home, b)
    sql(home, "DELETE FROM ledger_entries WHERE seq IN (?, ?)", (a, b))
    insert_row(home, dict(row_b, seq=a))
    insert_row(home, dict(row_a, seq=b))


def test_reordered_entries(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    swap_rows(home, 4, 6)
    assert all_seqs(db_path(home)) == list(range(1, 9))
    report = governor.verify_ledger()
    assert_invalid(report, 4, "prev_hash does not link", "reordered")
    assert report.chain_intact is False


def test_reordered_adjacent_entries_relinked(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    """Swap 5 and 6 and rewrite their prev/entry hashes into a consistent chain: the body's seq still betrays it."""
    row5, row6 = read_row(home, 5), read_row(home, 6)
    prev = read_row(home, 4)["entry_hash"]
    new5 = dict(row6, seq=5, prev_hash=prev, entry_hash=spec_entry_hash(prev, row6["body"]))
    new6 = dict(row5, seq=6, prev_hash=new5["entry_hash"], entry_hash=spec_entry_hash(new5["entry_hash"], row5["body"]))
    sql(home, "DELETE FROM ledger_entries WHERE seq IN (5, 6)")
    insert_row(home, new5)
    insert_row(home, new6)
    assert_invalid(governor.verify_ledger(), 5, "body seq/type/node disagree")


def test_truncated_tail_needs_an_anchor(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    last = decided[-1]
    assert last.approved and last.capability_token
    claims = token_claims(last.capability_token)
    anchor = (claims["ledger_entry_id"], bytes.fromhex(claims["ledger_entry_hash"]))
    assert anchor[0] == 8
    keys = governor.public_keys

    with Ledger(sqlite_url(db_path(home)), readonly=True) as ledger:
        assert ledger.verify(keys, anchors=[anchor]).valid  # untouched: the anchor matches
        assert ledger.verify(keys, anchors=[anchor]).anchors_checked == 1

    sql(home, "DELETE FROM ledger_entries WHERE seq >= 7")
    # Without an anchor a truncated chain is indistinguishable from a shorter one.
    plain = governor.verify_ledger()
    assert plain.valid and plain.head_seq == 6
    with Ledger(sqlite_url(db_path(home)), readonly=True) as ledger:
        report = ledger.verify(keys, anchors=[anchor])
    assert_invalid(report, 7, "truncated", "anchored entry 8 is missing")


def test_rewritten_entry_at_anchored_position(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    """Drop the last entry and let the (legitimately keyed) node write a different one at the same seq."""
    last = decided[-1]
    claims = token_claims(last.capability_token)
    anchor = (claims["ledger_entry_id"], bytes.fromhex(claims["ledger_entry_hash"]))
    sql(home, "DELETE FROM ledger_entries WHERE seq = 8")
    # The process that verified entry 8 sees it gone and refuses to write in its place ...
    with pytest.raises(GovernanceError, match=r"ledger truncated: entries 8\.\.8 were verified and are gone"):
        governor.decide(DENY)
    # ... a process that never saw it (no checkpoint covers it) writes a different entry 8:
    with LocalGovernor(home) as other:
        replacement = other.decide(DENY)
    assert replacement.ledger_entry_id == 8
    assert governor.verify_ledger().valid  # every signature is genuine ...
    report = governor.node.ledger.verify(governor.public_keys, anchors=[anchor])
    assert_invalid(report, 8, "anchored hash", "history rewritten")  # ... but it is not the history the token saw


def test_entry_resigned_with_foreign_key_and_foreign_kid(
    decided: list[Any], governor: LocalGovernor, home: Path
) -> None:
    attacker = Signer.generate()
    row = read_row(home, 6)
    sql(
        home,
        "UPDATE ledger_entries SET signature = ?, kid = ? WHERE seq = 6",
        (attacker.sign(SIG_TAG + row["entry_hash"]), attacker.kid),
    )
    report = governor.verify_ledger()
    assert_invalid(report, 6, "unknown key", attacker.kid)
    assert report.signatures_valid is False


def test_entry_resigned_with_foreign_key_keeping_real_kid(
    decided: list[Any], governor: LocalGovernor, home: Path
) -> None:
    attacker = Signer.generate()
    row = read_row(home, 6)
    sql(home, "UPDATE ledger_entries SET signature = ? WHERE seq = 6", (attacker.sign(SIG_TAG + row["entry_hash"]),))
    report = governor.verify_ledger()
    assert_invalid(report, 6, "signature does not verify", row["kid"])
    assert report.signatures_valid is False
    assert report.chain_intact is True


def swap_public_key(home: Path) -> tuple[str, Signer]:
    kid = (home / "keys" / "active").read_text().strip()
    attacker = Signer.generate()
    (home / "keys" / f"{kid}.pub").write_bytes(attacker.public.to_pem())
    return kid, attacker


def test_public_key_swapped_fails_verification_with_node_keys(
    decided: list[Any], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_kid, attacker = swap_public_key(home)
    node = open_node(home, signer=False)  # the node's keys as a verifier without the private key sees them
    try:
        keys = node.trusted_keys()
        # the swapped file is not trusted at all: its contents are not the key its name promises
        assert real_kid not in keys and attacker.kid not in keys
        report = node.ledger.verify(keys)
    finally:
        node.close()
    assert_invalid(report, 1, "unknown key", real_kid)
    code, out, _ = run_cli(["verify-ledger", "--home", str(home), "--json"], capsys)
    assert code == 1
    result = json.loads(out)
    assert result["valid"] is False and result["first_bad_seq"] == 1 and "unknown key" in result["reason"]


def test_public_key_swapped_and_ledger_resigned_fails_against_pinned_jwks(
    decided: list[Any], governor: LocalGovernor, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The full attack: swap the published key and re-sign every entry with it. Only pinned keys can catch it."""
    code, jwks_text, _ = run_cli(["keys", "export", "--home", str(home)], capsys)
    assert code == 0
    pinned = tmp_path / "pinned-jwks.json"
    pinned.write_text(jwks_text)
    governor.close()

    _, attacker = swap_public_key(home)
    for seq in all_seqs(db_path(home)):
        digest = read_row(home, seq)["entry_hash"]
        sql(
            home,
            "UPDATE ledger_entries SET signature = ?, kid = ? WHERE seq = ?",
            (attacker.sign(SIG_TAG + digest), attacker.kid, seq),
        )
    code, out, _ = run_cli(["verify-ledger", "--home", str(home), "--jwks", str(pinned), "--json"], capsys)
    assert code == 1
    result = json.loads(out)
    assert result["valid"] is False and result["first_bad_seq"] == 1
    assert "unknown key" in result["reason"] and attacker.kid in result["reason"]
    assert "pinned JWKS" in result["key_source"]


def test_public_key_swapped_is_noticed_by_a_governor(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    governor.close()
    _, attacker = swap_public_key(home)
    try:
        fresh = LocalGovernor(home)
    except LexeconError:
        return  # refusing to open a node whose published key does not match its signing key is also correct
    try:
        report = fresh.verify_ledger()
        assert report.valid is False, "keys/<kid>.pub no longer holds the key that signed the ledger"
        assert attacker.kid not in fresh.public_keys, "a swapped-in foreign key must not become trusted"
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "ai_agent:innocent"),
        ("outcome", "denied"),
        ("tool", "search"),
        ("decision_id", "dec_other"),
        ("created_at", "2020-01-01T00:00:00.000000Z"),
    ],
)
def test_edited_index_column(decided: list[Any], governor: LocalGovernor, home: Path, column: str, value: str) -> None:
    seq = 5  # the first refund: approved, tool refund
    before = read_row(home, seq)
    assert before[column] != value
    sql(home, f"UPDATE ledger_entries SET {column} = ? WHERE seq = ?", (value, seq))
    assert read_row(home, seq)["body"] == before["body"]
    report = governor.verify_ledger()
    assert_invalid(report, seq, "copied columns", "disagree with the signed body")
    assert report.signatures_valid  # a column edit is not a signature failure


def test_edited_entry_type_column(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    sql(home, "UPDATE ledger_entries SET entry_type = 'note' WHERE seq = 5")
    assert_invalid(governor.verify_ledger(), 5, "body seq/type/node disagree")


# -- the CLI ---------------------------------------------------------------------------------------------------------


def test_cli_verify_untouched_and_tampered(decided: list[Any], home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["verify-ledger", "--home", str(home), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["valid"] is True and result["entries_verified"] == 8 and "first_bad_seq" not in result

    sql(home, "DELETE FROM ledger_entries WHERE seq = 6")
    code, out, _ = run_cli(["verify-ledger", "--home", str(home), "--json"], capsys)
    assert code == 1
    result = json.loads(out)
    assert result["valid"] is False
    assert result["first_bad_seq"] == 6
    assert "gap" in result["reason"]


def test_cli_anchor_detects_truncation(decided: list[Any], home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = token_claims(decided[-1].capability_token)
    anchor = f"{claims['ledger_entry_id']}:{claims['ledger_entry_hash']}"
    code, out, _ = run_cli(["verify-ledger", "--home", str(home), "--anchor", anchor, "--json"], capsys)
    assert code == 0 and json.loads(out)["anchors_checked"] == 1
    sql(home, "DELETE FROM ledger_entries WHERE seq = 8")
    code, out, _ = run_cli(["verify-ledger", "--home", str(home), "--anchor", anchor, "--json"], capsys)
    assert code == 1
    result = json.loads(out)
    assert result["first_bad_seq"] == 8 and "truncated" in result["reason"]


def copy_ledger(src: Path, dst: Path) -> None:
    """A consistent copy of a live WAL database (the backup API includes not-yet-checkpointed pages)."""
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def test_cli_ledger_file_copy_with_exported_jwks(
    decided: list[Any], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, jwks_text, _ = run_cli(["keys", "export", "--home", str(home)], capsys)
    assert code == 0
    jwks = json.loads(jwks_text)
    assert [k["kid"] for k in jwks["keys"]] == [(home / "keys" / "active").read_text().strip()]
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(jwks_text)
    copy = tmp_path / "elsewhere" / "copy.db"
    copy.parent.mkdir()
    copy_ledger(db_path(home), copy)

    args = ["verify-ledger", "--ledger-file", str(copy), "--jwks", str(jwks_file), "--json"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0, out
    result = json.loads(out)
    assert result["valid"] is True and result["entries_verified"] == 8
    assert "pinned JWKS" in result["key_source"]

    # The same copy tampered is caught; the original is unaffected.
    body = read_row(copy, 3)["body"]
    sql(copy, "UPDATE ledger_entries SET body = ? WHERE seq = 3", (body.replace(b"ai_agent", b"ai_AGENT"),))
    code, out, _ = run_cli(args, capsys)
    assert code == 1
    assert json.loads(out)["first_bad_seq"] == 3
    code, _, _ = run_cli(["verify-ledger", "--home", str(home), "--json"], capsys)
    assert code == 0

    # A JWKS of someone else's key trusts nothing in this ledger.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"keys": [Signer.generate().public.to_jwk()]}))
    copy_ledger(db_path(home), tmp_path / "copy2.db")
    code, out, _ = run_cli(
        ["verify-ledger", "--ledger-file", str(tmp_path / "copy2.db"), "--jwks", str(other), "--json"], capsys
    )
    assert code == 1 and "unknown key" in json.loads(out)["reason"]


def test_cli_ledger_file_without_jwks_uses_embedded_keys_and_says_so(
    decided: list[Any], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.lexecon here
    copy = tmp_path / "copy.db"
    copy_ledger(db_path(home), copy)
    code, out, _ = run_cli(["verify-ledger", "--ledger-file", str(copy), "--json"], capsys)
    assert code == 3  # consistent, but nothing says the node signed it: not a plain "valid"
    report = json.loads(out)
    assert "not independently pinned" in report["key_source"]
    assert (report["valid"], report["keys_pinned"], report["status"]) == (True, False, "unpinned")


@pytest.mark.parametrize("bad", ["8", "8:zz", "x:" + "00" * 32, "8:" + "00" * 31])
def test_cli_bad_anchor_format_exits_2(home: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, out, err = run_cli(["verify-ledger", "--home", str(home), "--anchor", bad], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--anchor must be SEQ:HEX_SHA256" in lines[0]


def test_cli_verify_is_read_only_on_a_non_ledger_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = other.read_bytes()

    code, out, err = run_cli(["verify-ledger", "--ledger-file", str(other), "--json"], capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "not a Lexecon ledger" in err
    tables = [r[0] for r in sql(other, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    assert tables == ["customers"]
    assert other.read_bytes() == before


def test_cli_verify_does_not_modify_a_ledger_copy(
    decided: list[Any], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy.db"
    copy_ledger(db_path(home), copy)
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    code, _, _ = run_cli(["verify-ledger", "--ledger-file", str(copy), "--json"], capsys)
    assert code == 3  # consistent, keys not pinned
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert all_seqs(copy) == list(range(1, 9))


# == 3. concurrency ==================================================================================================

PER_WORKER = 2_000  # the production-ledger issue: 4 processes x 2,000 appends


def _process_worker(home: str, worker: int, count: int, barrier: Any) -> None:
    """Runs in a spawned process: its own LocalGovernor on the shared home."""
    with LocalGovernor(home) as gov:
        barrier.wait(timeout=60)
        for i in range(count):
            request = APPROVE if i % 2 else DENY
            gov.decide({**request, "context": {"worker": worker, "i": i}})


def _check_dense_and_valid(home: Path, expected: int, *, workers: int, per_worker: int) -> None:
    """Dense 1..expected, no fork, every worker's entries present once and in its own order, full verify valid."""
    seqs = all_seqs(db_path(home))
    assert len(seqs) == expected
    assert seqs == list(range(1, expected + 1)), "sequence numbers must be dense with no duplicates"
    rows = sql(home, "SELECT seq, body FROM ledger_entries WHERE entry_type = 'decision' ORDER BY seq")
    by_worker: dict[int, list[int]] = {}
    for _seq, body in rows:
        context = json.loads(body)["data"]["request"]["context"]
        if context:  # decisions made before the workers started carry no worker context
            by_worker.setdefault(context["worker"], []).append(context["i"])
    assert sorted(by_worker) == list(range(workers))
    for items in by_worker.values():
        assert items == list(range(per_worker))
    links = sql(home, "SELECT prev_hash, entry_hash FROM ledger_entries ORDER BY seq")
    assert all(nxt[0] == cur[1] for cur, nxt in itertools.pairwise(links)), "the chain forked"
    node = open_node(home, signer=False)
    try:
        report = node.ledger.verify(node.trusted_keys())
    finally:
        node.close()
    assert report.valid, report
    assert report.entries_verified == expected


def test_concurrent_processes_append_without_fork_or_gap(home: Path) -> None:
    with LocalGovernor(home) as gov:
        gov.decide(APPROVE)
        pre_existing = gov.node.ledger.count()
    assert pre_existing == 3
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_process_worker, args=(str(home), w, PER_WORKER, barrier)) for w in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    _check_dense_and_valid(home, pre_existing + 4 * PER_WORKER, workers=4, per_worker=PER_WORKER)
    # The writers really interleaved (otherwise this test would not have exercised the sequencer).
    order = [
        json.loads(body)["data"]["request"]["context"]["worker"]
        for (body,) in sql(home, "SELECT body FROM ledger_entries WHERE seq > ? ORDER BY seq", (pre_existing,))
    ]
    assert sum(a != b for a, b in itertools.pairwise(order)) > 3


def test_concurrent_threads_share_one_governor(governor: LocalGovernor, home: Path) -> None:
    per_thread = 100
    pre_existing = governor.node.ledger.count()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    results: list[Any] = []

    def work(worker: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(per_thread):
                request = APPROVE if i % 2 else DENY
                results.append(governor.decide({**request, "context": {"worker": worker, "i": i}}))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 4 * per_thread
    entry_ids = sorted(d.ledger_entry_id for d in results)
    assert entry_ids == list(range(pre_existing + 1, pre_existing + 4 * per_thread + 1))
    assert len({d.ledger_entry_hash for d in results}) == 4 * per_thread
    _check_dense_and_valid(home, pre_existing + 4 * per_thread, workers=4, per_worker=per_thread)
    assert governor.verify_ledger().valid


# == 4. failure ======================================================================================================


def test_unwritable_ledger_refuses_the_decision(governor: LocalGovernor, home: Path) -> None:
    first = governor.decide(APPROVE)
    before = governor.node.ledger.count()
    sql(
        home,
        "CREATE TRIGGER refuse_all BEFORE INSERT ON ledger_entries BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
    )
    with pytest.raises(GovernanceError, match="could not be recorded") as exc:
        governor.decide(APPROVE)  # would be approved, so a token would have been issued
    assert "disk says no" in str(exc.value)
    assert "refused" in str(exc.value)
    assert exc.value.__class__ is GovernanceError
    # Repeated failures do not wedge the connection or leak a transaction.
    with pytest.raises(GovernanceError, match="could not be recorded"):
        governor.decide(DENY)
    assert governor.node.ledger.count() == before

    sql(home, "DROP TRIGGER refuse_all")
    report = governor.verify_ledger()
    assert report.valid and report.head_seq == before
    after = governor.decide(APPROVE)
    assert after.approved and after.capability_token
    assert after.ledger_entry_id == first.ledger_entry_id + 1 == before + 1  # no number was burnt
    assert token_claims(after.capability_token)["ledger_entry_id"] == after.ledger_entry_id
    assert governor.verify_ledger().valid


def test_locked_database_times_out_into_governance_error(
    governor: LocalGovernor, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock past the busy timeout: the decision is refused, not approved."""
    governor.decide(DENY)  # open the append connection first
    conn = governor.node.ledger._appender._append_dbapi()
    conn.execute("PRAGMA busy_timeout=50")
    blocker = sqlite3.connect(db_path(home), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(GovernanceError, match="could not be recorded"):
            governor.decide(APPROVE)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert governor.decide(APPROVE).approved
    assert governor.verify_ledger().valid


# == 5. property-based ===============================================================================================

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
data_dicts = st.dictionaries(SAFE_TEXT, json_values, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(data_dicts, min_size=1, max_size=6), flips=st.data())
def test_random_entries_verify_and_any_flipped_byte_is_caught(payloads: list[dict[str, Any]], flips: Any) -> None:
    signer = Signer.generate()
    keys = {signer.kid: signer.public}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        with Ledger(sqlite_url(path), node_id="hyp-node", signer=signer) as ledger:
            entries = [ledger.append("note", payload) for payload in payloads]
            # entry 1 is the genesis entry a new ledger writes for itself
            assert [e.seq for e in entries] == list(range(2, len(payloads) + 2))
            for entry, payload in zip(entries, payloads, strict=True):
                assert entry.data == payload
                assert spec_canonical(json.loads(entry.body)) == entry.body
            report = ledger.verify(keys)
            assert report.valid and report.entries_verified == len(payloads) + 1

            for _ in range(3):
                target = flips.draw(st.sampled_from(entries), label="entry")
                position = flips.draw(st.integers(0, len(target.body) - 1), label="byte")
                mask = flips.draw(st.integers(1, 255), label="xor")
                tampered = bytearray(target.body)
                tampered[position] ^= mask
                sql(path, "UPDATE ledger_entries SET body = ? WHERE seq = ?", (bytes(tampered), target.seq))
                bad = ledger.verify(keys)
                assert bad.valid is False
                assert bad.first_bad_seq == target.seq
                assert "body edited" in (bad.reason or "")
                sql(path, "UPDATE ledger_entries SET body = ? WHERE seq = ?", (target.body, target.seq))
                assert ledger.verify(keys).valid


def test_exported_copy_is_self_contained(decided: list[Any], home: Path, tmp_path: Path) -> None:
    """Keys published inside the database match the node's, so a bare copy verifies (and says its keys are embedded)."""
    copy = tmp_path / "bare.db"
    copy_ledger(db_path(home), copy)
    with Ledger(sqlite_url(copy), readonly=True) as ledger:
        embedded = ledger.published_keys()
        report = ledger.verify()
    assert list(embedded) == [read_row(home, 1)["kid"]]
    assert report.valid and "not independently pinned" in report.key_source


# -- structural checks added after review ------------------------------------------------------------------------


def test_emptied_ledger_is_invalid(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    sql(home, "DELETE FROM ledger_entries")
    report = governor.verify_ledger()
    assert report.valid is False
    assert report.first_bad_seq == 1
    assert "empty" in (report.reason or "")
    # reopening does not "heal" it with a fresh genesis entry: only a new ledger gets one
    with LocalGovernor(home) as reopened:
        assert reopened.node.ledger.count() == 0
        assert reopened.verify_ledger().valid is False


def test_first_entry_must_be_genesis(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    """Cutting the head off and re-basing the chain cannot pass: entry 1 must be the genesis entry."""
    signer = governor.node.keys.signer
    rows = [read_row(home, seq) for seq in all_seqs(db_path(home))]
    sql(home, "DELETE FROM ledger_entries")
    prev = hashlib.sha256(b"lexecon:ledger:genesis:v1\x00" + b"test-node").digest()
    for new_seq, row in enumerate(rows[1:], start=1):
        body = json.loads(row["body"])
        body["seq"] = new_seq
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        digest = hashlib.sha256(b"lexecon:ledger:entry:v1\x00" + prev + raw).digest()
        sql(
            home,
            "INSERT INTO ledger_entries (seq, entry_type, created_at, body, prev_hash, entry_hash, kid, signature,"
            " decision_id, actor, tool, outcome) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                new_seq, row["entry_type"], row["created_at"], raw, prev, digest, signer.kid,
                signer.sign(SIG_TAG + digest), row["decision_id"], row["actor"], row["tool"], row["outcome"],
            ),
        )  # fmt: skip
        prev = digest
    report = governor.verify_ledger()
    assert report.valid is False
    assert report.first_bad_seq == 1
    assert "ledger_genesis" in (report.reason or "")


def test_non_object_body_is_reported_not_crashed(decided: list[Any], governor: LocalGovernor, home: Path) -> None:
    row = read_row(home, 3)
    body = b"[1,2,3]"
    digest = hashlib.sha256(b"lexecon:ledger:entry:v1\x00" + row["prev_hash"] + body).digest()
    sql(home, "UPDATE ledger_entries SET body = ?, entry_hash = ? WHERE seq = 3", (body, digest))
    report = governor.verify_ledger()
    assert report.valid is False
    assert report.first_bad_seq == 3


def test_unsupported_database_url_is_a_clear_ledger_error() -> None:
    from lexecon_core import LedgerError

    with pytest.raises(LedgerError, match="mysql ledgers are not supported; use SQLite or PostgreSQL"):
        Ledger("mysql://root@127.0.0.1:3306/test", node_id="n")
    with pytest.raises(LedgerError, match="psycopg driver"):
        Ledger("postgresql+pg8000://postgres@127.0.0.1:5432/test", node_id="n")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger("::not a url::", node_id="n")


def test_two_ledger_handles_opening_a_new_file_write_one_genesis(tmp_path: Path) -> None:
    signer = Signer.generate()
    url = sqlite_url(tmp_path / "fresh.db")
    with Ledger(url, node_id="n", signer=signer) as first, Ledger(url, node_id="n", signer=signer) as second:
        assert first.head()[0] == 1
        assert second.head()[0] == 1
        assert [e.entry_type for e in second.entries()] == ["ledger_genesis"]


@pytest.mark.parametrize(("setting", "pragma"), [(None, 2), ("fsync", 2), ("process", 1)])
def test_ledger_durability_setting(
    home: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, pragma: int
) -> None:
    if setting is not None:
        monkeypatch.setenv("LEXECON_LEDGER_DURABILITY", setting)
    with LocalGovernor(home) as gov:
        db = gov.node.ledger._appender._append_dbapi()
        assert db.execute("PRAGMA synchronous").fetchone()[0] == pragma  # 2 = FULL, 1 = NORMAL
        assert gov.decide({"actor": "ai_agent:a", "tool": "search"}).approved
        assert gov.verify_ledger().valid


def test_unknown_durability_is_a_config_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lexecon_core import ConfigError

    monkeypatch.setenv("LEXECON_LEDGER_DURABILITY", "yolo")
    with pytest.raises(ConfigError, match="LEXECON_LEDGER_DURABILITY"):
        LocalGovernor(home)


def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "group.db"), node_id="n", signer=signer)
    batches: list[int] = []
    original = ledger._appender._write_batch

    def counted(batch: list[Any]) -> None:
        batches.append(len(batch))
        original(batch)

    ledger._appender._write_batch = counted  # type: ignore[method-assign]
    barrier = threading.Barrier(8)
    returned: list[LedgerEntry] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(100):
            entry = ledger.append("note", {"worker": n, "i": i})
            with lock:
                returned.append(entry)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.seq for e in returned) == list(range(2, 802))  # dense after the genesis entry
    assert sum(batches) == 800
    assert len(batches) < 800  # appends shared transactions
    # every returned entry is exactly what is stored
    for entry in returned[::50]:
        assert ledger.get(entry.seq) == entry
    assert ledger.verify({signer.kid: signer.public}).valid
    ledger.close()


def test_a_bad_request_in_a_batch_fails_alone(tmp_path: Path) -> None:
    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "mixed.db"), node_id="n", signer=signer)
    requests = [
        _store_request("note", {"ok": 1}, signer),
        _store_request("note", {"bad": 1.5}, signer),
        _store_request("note", {"ok": 2}, signer),
    ]
    ledger._appender._write_batch(requests)
    assert [r.entry.seq if r.entry else None for r in requests] == [2, None, 3]
    assert isinstance(requests[1].error, InvalidRequest)
    assert ledger.count() == 3
    assert ledger.verify({signer.kid: signer.public}).valid
    ledger.close()


def _store_request(entry_type: str, data: dict[str, Any], signer: Signer) -> Any:
    from lexecon_core.ledger._append import AppendRequest

    return AppendRequest(entry_type, data, signer, False)


def test_malformed_request_field_fails_alone_in_a_batch(tmp_path: Path) -> None:
    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "m.db"), node_id="n", signer=signer)
    requests = [_store_request("note", {"request": "not a mapping"}, signer), _store_request("note", {"ok": 1}, signer)]
    ledger._appender._write_batch(requests)
    assert isinstance(requests[0].error, InvalidRequest)
    assert requests[1].entry is not None and requests[1].entry.seq == 2
    ledger.close()


def test_a_failed_batch_connection_fails_every_caller_with_a_ledger_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lexecon_core import LedgerError

    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "f.db"), node_id="n", signer=signer)

    def no_connection() -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(ledger._appender, "_append_dbapi", no_connection)
    requests = [_store_request("note", {"i": i}, signer) for i in range(3)]
    ledger._appender._write_batch(requests)
    assert all(isinstance(r.error, LedgerError) and r.entry is None for r in requests)
    with pytest.raises(LedgerError, match="unable to open database file"):
        ledger.append("note", {"x": 1})
    ledger.close()


def test_an_interrupted_waiter_does_not_stall_the_queue(tmp_path: Path) -> None:
    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "q.db"), node_id="n", signer=signer)
    appender = ledger._appender
    appender._writing = True  # as if another thread were writing
    orphan = _store_request("note", {"i": 0}, signer)
    appender._queue.append(orphan)
    appender._abandon(orphan)  # what an interrupt while queued does
    assert appender._queue == []
    appender._writing = False
    woken = _store_request("note", {"i": 1}, signer)
    appender._writing = True
    woken.wake.set()  # made the writer, then interrupted before it took the queue
    appender._abandon(woken)
    assert appender._writing is False  # the pen was handed on (nobody waiting: released)
    assert ledger.append("note", {"i": 2}).seq == 2
    ledger.close()


def test_another_handle_of_the_node_checks_its_rows_by_mac_and_anyone_else_by_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lexecon_core.ledger import _walk

    checked: list[int] = []
    real = _walk._check_signatures

    def counting(batch: Any) -> Any:
        checked.append(len(batch))
        return real(batch)

    monkeypatch.setattr(_walk, "_check_signatures", counting)
    url, node, other = sqlite_url(tmp_path / "l.db"), Signer.generate(), Signer.generate()
    keys = {node.kid: node.public, other.kid: other.public}
    opened = {"signer": node, "trusted_keys": keys, "node_id": "n"}
    with Ledger(url, **opened) as writer, Ledger(url, **opened) as peer:
        writer.append("decision", {"n": 0})
        peer.trusted_state()
        for n in range(1, 6):
            writer.append("decision", {"n": n})
        checked.clear()
        assert peer.trusted_state().size == 7  # genesis, 6 decisions
        assert sum(checked) == 0  # the writer's row MACs, under a key only holders of the signing key derive
        with Ledger(url, signer=other, trusted_keys=keys, node_id="n") as stranger:
            stranger.trusted_state()
        assert sum(checked) == 7  # without the node's key, every signature
        assert writer.verify(keys).valid and sum(checked) == 14  # and verification for others never uses MACs
