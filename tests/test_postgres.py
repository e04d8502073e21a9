"""The ledger on a real PostgreSQL server: decisions, verification, tampering, many writers.

Reads ``LEXECON_TEST_DATABASE_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each test gets a
schema of its own. Skipped when no server answers - except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import BASE_URL, TEST_POLICY, _conninfo
from sqlalchemy.engine import make_url

from lexecon_core import LocalGovernor, init_node, load_settings
from lexecon_core.cli import main as cli_main
from lexecon_core.ledger import Ledger
from lexecon_core.ledger._migrate import SCHEMA_REVISION


@pytest.fixture
def pg_home(tmp_path: Path, pg_url: str) -> Path:
    home = tmp_path / "pg-home"
    node = init_node(home, node_id="pg-node", database_url=pg_url)
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    node.load_policy_file(policy)
    node.close()
    return home


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    schema = make_url(url).query["options"].split("=", 1)[1]
    with psycopg.connect(_conninfo(BASE_URL), autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def test_decisions_on_postgres(pg_home: Path, pg_url: str) -> None:
    assert load_settings(pg_home).ledger_url == pg_url
    with LocalGovernor(pg_home) as governor:
        approved = governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": 1}})
        denied = governor.decide({"actor": "ai_agent:a", "tool": "delete_user", "tool_args": {"id": 1}})
        assert approved.approved and approved.capability_token
        assert denied.outcome.value == "denied"
        governor.verify_token(approved.capability_token, tool="search", args={"q": 1})
        report = governor.verify_ledger()
    assert report.valid and report.entries_verified == 4  # genesis, policy, two decisions
    rows = sql(pg_url, "SELECT seq, entry_type, outcome FROM ledger_entries ORDER BY seq")
    assert rows == [(1, "ledger_genesis", None), (2, "policy_loaded", None), (3, "decision", "approved"),
                    (4, "decision", "denied")]  # fmt: skip
    assert sql(pg_url, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]


def test_tampering_on_postgres_is_detected(pg_home: Path, pg_url: str) -> None:
    with LocalGovernor(pg_home) as governor:
        for i in range(3):
            governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": i}})
    edit = "convert_to(replace(convert_from(body, 'UTF8'), 'search', 'seerch'), 'UTF8')"
    sql(pg_url, f"UPDATE ledger_entries SET body = {edit} WHERE seq = 4")
    with LocalGovernor(pg_home) as governor:
        report = governor.verify_ledger()
    assert not report.valid and report.first_bad_seq == 4
    assert "body edited" in (report.reason or "")
    sql(pg_url, "DELETE FROM ledger_entries WHERE seq = 3")
    with LocalGovernor(pg_home) as governor:
        report = governor.verify_ledger()
    assert not report.valid and report.first_bad_seq == 3


def test_verify_ledger_cli_with_database_url(pg_home: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--database-url", pg_url, "--home", str(pg_home), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exited.value.code == 0
    assert report["valid"] and report["entries_verified"] == 2
    assert report["key_source"].startswith("node keys in")


def _append_worker(url: str, node_id: str, seed: bytes, count: int, start: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from lexecon_core.keys import Signer

    # The node's key, as every worker of one node has it: a row signed by any other key is refused, not appended to.
    signer = Signer(Ed25519PrivateKey.from_private_bytes(seed))
    with Ledger(url, node_id=node_id, signer=signer) as ledger:
        start.wait()
        for i in range(count):
            ledger.append("note", {"worker": os.getpid(), "i": i})


def test_many_processes_append_one_dense_chain(pg_url: str) -> None:
    from cryptography.hazmat.primitives import serialization

    from lexecon_core.keys import Signer

    signer = Signer.generate()
    with Ledger(pg_url, node_id="multi", signer=signer):
        pass  # creates the schema and the genesis entry
    seed = signer.jose_key().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    workers = [ctx.Process(target=_append_worker, args=(pg_url, "multi", seed, 2_000, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    with Ledger(pg_url, readonly=True) as ledger:
        assert ledger.count() == 1 + 4 * 2_000
        seqs = [s for (s,) in sql(pg_url, "SELECT seq FROM ledger_entries ORDER BY seq")]
        assert seqs == list(range(1, 8_002))
        report = ledger.verify()  # the keys the workers published in the database
    assert report.valid and report.entries_verified == 8_001


def test_process_durability_turns_off_synchronous_commit(pg_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_LEDGER_DURABILITY", "process")
    with LocalGovernor(pg_home) as governor:
        db = governor.node.ledger._appender._append_dbapi()
        assert db.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        assert governor.decide({"actor": "ai_agent:a", "tool": "search"}).approved
        assert governor.verify_ledger().valid


def _foreign_resign(pg_url: str, seq: int) -> None:
    from lexecon_core.keys import Signer

    stranger = Signer.generate()
    (digest,) = sql(pg_url, "SELECT entry_hash FROM ledger_entries WHERE seq = %s", seq)[0]
    signature = stranger.sign(b"lexecon:ledger:sig:v1\x00" + bytes(digest))
    sql(pg_url, "UPDATE ledger_entries SET signature = %s, kid = %s WHERE seq = %s", signature, stranger.kid, seq)


TAMPERS = {
    "edited body": (
        "UPDATE ledger_entries SET body = convert_to(replace(convert_from(body, 'UTF8'), 'search', 'seerch'), 'UTF8')"
        " WHERE seq = 4",
        4,
        "body edited",
    ),
    "deleted entry": ("DELETE FROM ledger_entries WHERE seq = 4", 4, "gap"),
    "reordered entries": (
        "UPDATE ledger_entries SET body = CASE seq WHEN 4 THEN (SELECT body FROM ledger_entries WHERE seq = 5)"
        " ELSE (SELECT body FROM ledger_entries WHERE seq = 4) END WHERE seq IN (4, 5)",
        4,
        "body edited",
    ),
    "inserted entry": (
        "INSERT INTO ledger_entries (seq, entry_type, created_at, body, prev_hash, entry_hash, kid, signature,"
        " decision_id, actor, tool, outcome, purged) SELECT 7, entry_type, created_at, body, prev_hash,"
        " sha256(random()::text::bytea), kid, signature, decision_id, actor, tool, outcome, purged"
        " FROM ledger_entries WHERE seq = 4",
        7,
        "prev_hash does not link",
    ),
    "edited column": ("UPDATE ledger_entries SET outcome = 'denied' WHERE seq = 4", 4, "copied columns"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tamper_classes_on_postgres(pg_home: Path, pg_url: str, name: str) -> None:
    with LocalGovernor(pg_home) as governor:
        for i in range(4):
            governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": i}})
    statement, first_bad, words = TAMPERS[name]
    sql(pg_url, statement)
    with LocalGovernor(pg_home) as governor:
        report = governor.verify_ledger()
    assert not report.valid
    assert report.first_bad_seq == first_bad
    assert words in (report.reason or "")


def test_foreign_key_and_truncation_on_postgres(pg_home: Path, pg_url: str) -> None:
    with LocalGovernor(pg_home) as governor:
        for i in range(4):
            governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": i}})
        note = governor.node.ledger.checkpoint().note
    _foreign_resign(pg_url, 3)
    with LocalGovernor(pg_home) as governor:
        report = governor.verify_ledger()
    assert not report.valid and report.first_bad_seq == 3 and "unknown key" in (report.reason or "")
    sql(pg_url, "DELETE FROM ledger_entries WHERE seq >= 3")
    sql(pg_url, "DELETE FROM ledger_checkpoints")
    with LocalGovernor(pg_home) as governor:
        kept = governor.node.ledger.verify(governor.public_keys, checkpoints=[note])
    assert not kept.valid and "truncated" in (kept.reason or "")
