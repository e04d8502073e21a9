"""The verifier's fast paths against its plain ones, on a real (SQLite) ledger tampered with in every way we know.

``Ledger.verify`` checks rows a page at a time, and under a trusted checkpoint it checks a whole page at once (hashes in
bulk, the Merkle tree grown level by level) and falls back to checking row by row only when something is off. Each
tampered ledger below must be reported

- with the failure and reason the row-by-row check gives, in the full and in the checkpoint-trusted mode;
- identically (the whole report) whatever the page size, whether the bulk check runs or the row-by-row one does
  instead, whether rows come as driver tuples or as ``StoredRow`` objects, and whether signatures are checked on the
  calling thread or on a pool.

The ledger: entry 1 (genesis), decisions 2-6 purged by the tombstone at 7, decisions up to 39, a note at 40,
decisions up to 45, and signed checkpoints at sizes 10, 23 and 40 - so the trusted range ends inside a page and
entries 41-45 are checked in full.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lexecon_core.keys import PublicKey, Signer
from lexecon_core.ledger import Ledger, StoredRow, sqlite_url, verify_rows
from lexecon_core.ledger._row import stored_row
from lexecon_core.ledger._verify import verify_pages
from lexecon_core.ledger._walk import Walk, _check_signatures, _parse

NODE = "verify-node"
ENTRY_TAG = b"lexecon:ledger:entry:v1\x00"
SIG_TAG = b"lexecon:ledger:sig:v1\x00"
LATER = datetime.now(UTC) + timedelta(days=3651)  # past the default retention


def decision(i: int) -> dict[str, Any]:
    return {
        "decision_id": f"dec_{i}",
        "outcome": "approved" if i % 3 else "denied",
        "request": {"actor": f"ai_agent:a{i % 4}", "tool": "search", "args_sha256": "0" * 64},
    }


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def db(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger(sqlite_url(path), node_id=NODE, signer=signer, durability="process") as ledger:
        for i in range(2, 7):
            ledger.append("decision", decision(i))
        tombstone = ledger.purge(6, reason="retention", now=LATER)
        assert tombstone is not None and tombstone.seq == 7
        for i in range(8, 11):
            ledger.append("decision", decision(i))
        ledger.checkpoint()  # size 10
        for i in range(11, 24):
            ledger.append("decision", decision(i))
        ledger.checkpoint()  # size 23
        for i in range(24, 40):
            ledger.append("decision", decision(i))
        ledger.append("note", {"n": 40})
        assert ledger.checkpoint().size == 40
        for i in range(41, 46):
            ledger.append("decision", decision(i))
        assert ledger.count() == 45
    return path


def sql(db: Path, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(statement, params).fetchall()


def rechain_from(db: Path, seq: int, signer: Signer, edit: Callable[[bytes], bytes] = lambda body: body) -> None:
    """Edit entry ``seq``'s body, then re-hash and re-sign it and every later entry: only a checkpoint can tell."""
    rows = sql(db, "SELECT seq, body, prev_hash FROM ledger_entries WHERE seq >= ? ORDER BY seq", (seq,))
    prev = bytes(rows[0][2])
    for row_seq, body, _ in rows:
        body = edit(bytes(body)) if row_seq == seq else bytes(body)
        digest = hashlib.sha256(ENTRY_TAG + prev + body).digest()
        sql(
            db,
            "UPDATE ledger_entries SET body = ?, prev_hash = ?, entry_hash = ?, signature = ? WHERE seq = ?",
            (body, prev, digest, signer.sign(SIG_TAG + digest), row_seq),
        )
        prev = digest


def edit_args(body: bytes) -> bytes:
    parsed = json.loads(body)
    parsed["data"]["request"]["args_sha256"] = "1" * 64  # not a copied column: only the signed body changes
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()


def flip_byte(db: Path, seq: int, column: str, at: int = 12) -> None:
    value = bytearray(sql(db, f"SELECT {column} FROM ledger_entries WHERE seq = ?", (seq,))[0][0])
    value[at] ^= 0x01
    sql(db, f"UPDATE ledger_entries SET {column} = ? WHERE seq = ?", (bytes(value), seq))


def swap(db: Path, a: int, b: int) -> None:
    sql(db, "UPDATE ledger_entries SET seq = -1 WHERE seq = ?", (a,))
    sql(db, "UPDATE ledger_entries SET seq = ? WHERE seq = ?", (a, b))
    sql(db, "UPDATE ledger_entries SET seq = ? WHERE seq = -1", (b,))


BLANK = "body = x'', decision_id = NULL, actor = NULL, tool = NULL, outcome = NULL"

# name -> (tampering, (first bad seq, words of the reason) in the full mode, the same in the trusted mode)
Expected = tuple[int, str] | None
CASES: dict[str, tuple[Callable[[Path, Signer], None], Expected, Expected]] = {
    "untouched": (lambda db, s: None, None, None),
    "body edited under a checkpoint": (
        lambda db, s: flip_byte(db, 15, "body"),
        (15, "body edited"),
        (15, "body edited"),
    ),
    "body edited after the checkpoints": (
        lambda db, s: flip_byte(db, 43, "body"),
        (43, "body edited"),
        (43, "body edited"),
    ),
    "genesis body edited": (lambda db, s: flip_byte(db, 1, "body"), (1, "body edited"), (1, "body edited")),
    "history rewritten and re-signed": (
        lambda db, s: rechain_from(db, 15, s, edit_args),
        (23, "disagree with a signed checkpoint"),
        (23, "disagree with a signed checkpoint"),
    ),
    "history rewritten from the last covered entry": (
        lambda db, s: rechain_from(db, 40, s, lambda body: body.replace(b'"n":40', b'"n":41')),
        (40, "disagree with a signed checkpoint"),
        (40, "disagree with a signed checkpoint"),
    ),
    "entry deleted": (lambda db, s: sql(db, "DELETE FROM ledger_entries WHERE seq = 20"), (20, "gap"), (20, "gap")),
    "entries reordered": (lambda db, s: swap(db, 20, 21), (20, "prev_hash"), (20, "prev_hash")),
    "prev_hash edited": (lambda db, s: flip_byte(db, 25, "prev_hash", 3), (25, "prev_hash"), (25, "prev_hash")),
    "entry_hash replaced by text": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET entry_hash = 'x' WHERE seq = 25"),
        (25, "body edited"),
        (25, "body edited"),
    ),
    "body stored as text, bytes unchanged": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET body = CAST(body AS TEXT) WHERE seq = 18"),
        None,
        None,
    ),
    "truncated below a checkpoint": (
        lambda db, s: sql(db, "DELETE FROM ledger_entries WHERE seq > 30"),
        (31, "covers 40 entries"),
        (31, "covers 40 entries"),
    ),
    "entry 1 typed as a decision": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET entry_type = 'decision' WHERE seq = 1"),
        (1, "body seq/type/node disagree"),
        (1, "entry 1 is not the ledger_genesis entry"),
    ),
    "marked purged, content kept": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET purged = 1 WHERE seq = 12"),
        (12, "still carries content"),
        (12, "still carries content"),
    ),
    "body removed without a tombstone": (
        lambda db, s: sql(db, f"UPDATE ledger_entries SET purged = 1, {BLANK} WHERE seq = 12"),
        (12, "without a signed tombstone"),
        (12, "without a signed tombstone"),
    ),
    "purged entry un-marked": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET purged = 0 WHERE seq = 2"),
        (2, "body edited"),
        (2, "body edited"),
    ),
    "purged entry with content put back": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET actor = 'x' WHERE seq = 2"),
        (2, "still carries content"),
        (2, "still carries content"),
    ),
    "copied column edited under a checkpoint": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET outcome = 'approved' WHERE seq = 12"),
        (12, "copied columns"),
        None,  # the columns are an index, not the record: the trusted mode vouches for hashes and the root only
    ),
    "copied column edited after the checkpoints": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET tool = 'refund' WHERE seq = 44"),
        (44, "copied columns"),
        (44, "copied columns"),
    ),
    "signature broken under a checkpoint": (
        lambda db, s: flip_byte(db, 15, "signature"),
        (15, "signature does not verify"),
        None,  # the checkpoint's signature vouches for the entry instead
    ),
    "signature broken after the checkpoints": (
        lambda db, s: flip_byte(db, 44, "signature"),
        (44, "signature does not verify"),
        (44, "signature does not verify"),
    ),
    "signature cut short": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET signature = substr(signature, 1, 63) WHERE seq = 44"),
        (44, "signature does not verify"),
        (44, "signature does not verify"),
    ),
    "signed by an unknown key": (
        lambda db, s: sql(db, "UPDATE ledger_entries SET kid = 'nobody' WHERE seq = 42"),
        (42, "unknown key"),
        (42, "unknown key"),
    ),
}


def open_ledger(db: Path) -> Ledger:
    return Ledger(sqlite_url(db), readonly=True)


def keys_of(signer: Signer) -> dict[str, PublicKey]:
    return {signer.kid: signer.public}


def report_of(ledger: Ledger, signer: Signer, *, trusted: bool, page: int = 1024, **options: Any) -> dict[str, Any]:
    return verify_pages(
        ledger._pages(page),
        node_id=ledger.node_id,
        keys=keys_of(signer),
        checkpoints=ledger._stored_notes(),
        trust_checkpoints=trusted,
        **options,
    ).to_dict()


def assert_reports(report: dict[str, Any], expected: Expected) -> None:
    if expected is None:
        assert report["valid"], report
        return
    seq, words = expected
    assert not report["valid"], report
    assert (report["first_bad_seq"], words in report["reason"]) == (seq, True), report


@pytest.fixture(params=sorted(CASES))
def tampered(request: pytest.FixtureRequest, db: Path, signer: Signer) -> Iterator[tuple[Ledger, Expected, Expected]]:
    tamper, full, trusted = CASES[request.param]
    tamper(db, signer)
    with open_ledger(db) as ledger:
        yield ledger, full, trusted


def test_each_tampering_is_reported_as_expected(tampered: tuple[Ledger, Expected, Expected], signer: Signer) -> None:
    ledger, full, trusted = tampered
    keys = keys_of(signer)
    assert_reports(ledger.verify(keys).to_dict(), full)
    assert_reports(ledger.verify(keys, trust_checkpoints=True).to_dict(), trusted)


@pytest.mark.parametrize("trusted", [False, True])
def test_reports_do_not_depend_on_paging_or_the_bulk_path(
    tampered: tuple[Ledger, Expected, Expected], signer: Signer, trusted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tampered[0]
    reference = ledger.verify(keys_of(signer), trust_checkpoints=trusted).to_dict()
    for page in (1, 2, 3, 7, 16, 64):
        assert report_of(ledger, signer, trusted=trusted, page=page) == reference, page
    with monkeypatch.context() as patch:  # the row-by-row check in place of the bulk one
        patch.setattr(Walk, "_trusted", lambda self, rows: self._trusted_rows(rows))
        for page in (1, 5, 1024):
            assert report_of(ledger, signer, trusted=trusted, page=page) == reference, page
    for workers in (1, 2):
        assert report_of(ledger, signer, trusted=trusted, workers=workers) == reference, workers
    from_objects = verify_rows(
        ledger._rows(),
        node_id=ledger.node_id,
        keys=keys_of(signer),
        checkpoints=ledger._stored_notes(),
        trust_checkpoints=trusted,
    )
    assert from_objects.to_dict() == reference


def test_anchors_in_the_trusted_range(db: Path, signer: Signer) -> None:
    hashes = {seq: bytes(h) for seq, h in sql(db, "SELECT seq, entry_hash FROM ledger_entries")}
    keys = keys_of(signer)
    with open_ledger(db) as ledger:
        for trusted in (False, True):
            good = ledger.verify(keys, anchors=[(12, hashes[12]), (44, hashes[44])], trust_checkpoints=trusted)
            assert good.valid and good.anchors_checked == 2
            bad = ledger.verify(keys, anchors=[(12, hashes[13])], trust_checkpoints=trusted)
            assert (bad.valid, bad.first_bad_seq, "anchored hash" in (bad.reason or "")) == (False, 12, True)
            beyond = ledger.verify(keys, anchors=[(50, hashes[1])], trust_checkpoints=trusted)
            assert (beyond.first_bad_seq, "anchored entry 50 is missing" in (beyond.reason or "")) == (46, True)


def test_a_checkpoint_mismatch_inside_a_page_reports_what_row_by_row_would(db: Path, signer: Signer) -> None:
    """The bulk check compares roots only after hashing a whole page: the entry completing the contradicted size is
    the failure, the ones before it count as verified, and nothing after it counts at all."""
    rechain_from(db, 9, signer, edit_args)
    with open_ledger(db) as ledger:
        for trusted in (False, True):
            report = ledger.verify(keys_of(signer), trust_checkpoints=trusted)
            assert (report.first_bad_seq, report.entries_verified, report.head_seq) == (10, 9, 9)
            assert report.checkpoints_consistent is False and report.chain_intact is False
            assert report.signatures_valid is True


def test_progress_reaches_the_head(db: Path, signer: Signer) -> None:
    seen: list[int] = []
    with open_ledger(db) as ledger:
        assert ledger.verify(keys_of(signer), trust_checkpoints=True, progress=seen.append).valid
    assert seen[-1] == 45 and seen == sorted(seen)


# -- the pieces -------------------------------------------------------------------------------------------------------


def test_signature_check_refuses_malformed_lengths_and_types(signer: Signer) -> None:
    digest = hashlib.sha256(b"entry").digest()
    good = signer.sign(SIG_TAG + digest)
    key = signer.public
    assert _check_signatures([(1, key, good, digest)]) is None
    for signature in (good[:63], good + b"\x00", good[:32], b"", bytearray(good), "x" * 64):
        failure = _check_signatures([(1, key, signature, digest)])  # type: ignore[list-item]
        assert failure is not None and "does not verify" in failure.reason, signature
    for raw in (key.raw[:31], key.raw + b"\x00"):
        failure = _check_signatures([(1, PublicKey(key.kid, raw), good, digest)])
        assert failure is not None and "does not verify" in failure.reason
    other = Signer.generate().public
    failure = _check_signatures([(1, key, good, digest), (2, other, good, digest)])
    assert failure is not None and failure.seq == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1}',
        b'{"a":1} \t\r\n',
        b'{"a":1}x',
        b'{"a":1}{}',
        b'{"a":}',
        b'{"a":',
        b'{"a":[1,2,{"b":null}],"c":"\\u00e9\\ud800"}',
        b'{"a":NaN,"b":1e400}',
        b'{"a":1}\x0b',
        b'{"\xff":1}',
        b'{"a":"\x01"}',
        b' {"a":1}',
        b"[1]",
        b'"x"',
        b"",
        '{"a":"é"}'.encode("utf-16"),
        '{"a":1}'.encode("utf-16-le"),
        b'\xef\xbb\xbf{"a":1}',
    ],
)
def test_body_parsing_matches_json_loads(body: bytes) -> None:
    try:
        expected: Any = ("value", json.loads(body))
    except ValueError:
        expected = ("error",)
    try:
        found: Any = ("value", _parse(body))
    except ValueError:
        found = ("error",)
    assert repr(found) == repr(expected)  # repr: NaN is not equal to itself


def test_stored_row_normalises_what_a_driver_returns() -> None:
    row = stored_row((3, "decision", "body", None, memoryview(b"h"), "kid", b"s", None, None, None, None, None, 0))
    assert row == StoredRow(3, "decision", b"body", b"", b"h", "kid", b"s", purged=0)  # type: ignore[arg-type]
