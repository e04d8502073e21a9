"""The ledger on a real PostgreSQL server: decisions, verification, tampering, many writers.

Reads ``LEXECON_TEST_DATABASE_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each test gets a
schema of its own. Skipped when no server answers - except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import TEST_POLICY
from sqlalchemy.engine import make_url

from lexecon_core import LocalGovernor, init_node, load_settings
from lexecon_core.cli import main as cli_main
from lexecon_core.ledger import Ledger
from lexecon_core.ledger._migrate import SCHEMA_REVISION

BASE_URL = os.environ.get("LEXECON_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        admin = psycopg.connect(_conninfo(BASE_URL), autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true and is not reachable at {BASE_URL}: {exc}")
        pytest.skip(f"no PostgreSQL at {BASE_URL}")
    schema = f"lexecon_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(BASE_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


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


def _append_worker(url: str, node_id: str, count: int, start: Any) -> None:
    from lexecon_core.keys import Signer

    signer = Signer.generate()
    with Ledger(url, node_id=node_id, signer=signer) as ledger:
        ledger.publish_key(signer.public)
        start.wait()
        for i in range(count):
            ledger.append("note", {"worker": os.getpid(), "i": i})


def test_many_processes_append_one_dense_chain(pg_url: str) -> None:
    from lexecon_core.keys import Signer

    signer = Signer.generate()
    with Ledger(pg_url, node_id="multi", signer=signer):
        pass  # creates the schema and the genesis entry
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    workers = [ctx.Process(target=_append_worker, args=(pg_url, "multi", 2_000, start)) for _ in range(4)]
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
        db = governor.node.ledger._append_dbapi()
        assert db.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        assert governor.decide({"actor": "ai_agent:a", "tool": "search"}).approved
        assert governor.verify_ledger().valid
