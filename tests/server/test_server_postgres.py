"""The server over PostgreSQL: decisions, concurrent idempotent retries, API keys, ledger verification, export.

Skipped without a PostgreSQL at LEXECON_TEST_DATABASE_URL (required under CI=true; see the ``pg_url`` fixture).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_POLICY  # tests/conftest.py
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from lexecon_core import LedgerError, init_node, load_settings
from lexecon_core.auth import Role
from lexecon_core.ledger._bundle import verify_bundle
from lexecon_core.server import create_app, sync_policy
from tests.server.conftest import auth, decide, ledger_of

SEARCH = {"actor": "ai_agent:support", "tool": "search", "tool_args": {"q": "x"}}
NUL_ACTOR = {"actor": "ai_agent:x\u0000", "tool": "search"}


def key_id(key: str) -> str:
    return key[4:20]


@pytest.fixture
def pg_home(tmp_path: Path, pg_url: str) -> Path:
    root = tmp_path / "pg-home"
    node = init_node(root, node_id="pg-node", database_url=pg_url)
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    node.load_policy_file(policy)
    node.close()
    return root


def _app(home: Path, **overrides: Any) -> FastAPI:
    return create_app(
        load_settings(home, rate_limit_per_second=10_000, rate_limit_burst=10_000, policy_sync_seconds=0, **overrides)
    )


@pytest.fixture
def pg_app(pg_home: Path) -> FastAPI:
    app = _app(pg_home)
    assert app.state.lexecon.settings.ledger_url.startswith("postgresql")
    return app


@pytest.fixture
def pg_keys(pg_app: FastAPI) -> dict[Role, str]:
    store = pg_app.state.lexecon.api_keys
    return {role: store.create(f"pg-{role.value}", role, by="test")[1] for role in Role}


@pytest.fixture
def pg_client(pg_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(pg_app, raise_server_exceptions=False) as client:
        yield client


def test_health(pg_client: TestClient) -> None:
    response = pg_client.get("/health")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "ledger": "ok"}
    assert response.json()["node_id"] == "pg-node"


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (SEARCH, "approved"),
        ({"actor": "ai_agent:support", "tool": "delete_user"}, "denied"),
        ({**SEARCH, "risk_level": "critical"}, "escalated"),
    ],
)
def test_decide(pg_app: FastAPI, pg_client: TestClient, pg_keys: dict[Role, str], body: dict[str, Any],
                outcome: str) -> None:  # fmt: skip
    decision = decide(pg_client, pg_keys[Role.AGENT], body)
    assert decision["outcome"] == outcome
    entry = ledger_of(pg_app).get(decision["ledger_entry_id"])
    assert entry is not None
    assert entry.data["outcome"] == outcome
    assert entry.data["principal"] == f"apikey:{key_id(pg_keys[Role.AGENT])}"
    listed = pg_client.get("/ledger/entries", params={"outcome": outcome}, headers=auth(pg_keys[Role.AUDITOR]))
    assert [e["seq"] for e in listed.json()["entries"]] == [decision["ledger_entry_id"]]
    if outcome == "approved":
        check = {"token": decision["capability_token"], "tool": body["tool"], "args": body["tool_args"]}
        result = pg_client.post("/decide/verify", json=check, headers=auth(pg_keys[Role.AGENT])).json()
        assert result["valid"] is True


def test_concurrent_idempotent_retries_leave_one_entry(
    pg_app: FastAPI, pg_client: TestClient, pg_keys: dict[Role, str]
) -> None:
    head = ledger_of(pg_app).head()[0]
    start = threading.Barrier(16)
    results: list[Any] = []

    def call() -> None:
        start.wait(timeout=10)
        headers = {**auth(pg_keys[Role.AGENT]), "Idempotency-Key": "pg-burst"}
        results.append(pg_client.post("/decide", json=SEARCH, headers=headers))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [r.status_code for r in results] == [200] * 16
    assert len({r.json()["decision_id"] for r in results}) == 1
    assert len({r.json()["token_id"] for r in results}) == 1
    assert len(ledger_of(pg_app).entries(decision_id=results[0].json()["decision_id"])) == 1
    assert ledger_of(pg_app).head()[0] == head + 1


def test_idempotency_across_two_servers(pg_home: Path, pg_app: FastAPI, pg_client: TestClient,
                                        pg_keys: dict[Role, str]) -> None:  # fmt: skip
    other = _app(pg_home)
    with TestClient(other) as other_client:
        headers = {"Idempotency-Key": "two-servers"}
        a = decide(pg_client, pg_keys[Role.AGENT], SEARCH, **headers)
        b = decide(other_client, pg_keys[Role.AGENT], SEARCH, **headers)
    assert a["decision_id"] == b["decision_id"] and a["ledger_entry_id"] == b["ledger_entry_id"]
    assert len(ledger_of(pg_app).entries(decision_id=a["decision_id"])) == 1


def test_api_keys(pg_app: FastAPI, pg_client: TestClient, pg_keys: dict[Role, str]) -> None:
    admin = auth(pg_keys[Role.ADMIN])
    created = pg_client.post(
        "/apikeys", json={"name": "pg agent", "role": "agent", "actors": "ai_agent:*"}, headers=admin
    )
    assert created.status_code == 201
    key = created.json()["api_key"]
    assert key not in pg_client.get("/apikeys", headers=admin).text
    assert decide(pg_client, key, SEARCH)["outcome"] == "approved"
    assert pg_client.delete(f"/apikeys/{key_id(key)}", headers=admin).status_code == 200
    assert pg_client.post("/decide", json=SEARCH, headers=auth(key)).status_code == 401
    assert pg_client.delete(f"/apikeys/{key_id(key)}", headers=admin).status_code == 409
    assert pg_client.delete("/apikeys/0123456789abcdef", headers=admin).status_code == 404
    assert pg_client.delete(f"/apikeys/{key_id(pg_keys[Role.ADMIN])}", headers=admin).status_code == 409
    # Only the hash is kept, signed into the key's creation entry; no table of keys exists to be edited.
    (made,) = [e for e in ledger_of(pg_app).entries(entry_type="api_key_created") if e.data["key_id"] == key_id(key)]
    assert made.data["key_sha256"] == hashlib.sha256(b"lexecon:apikey:v1\x00" + key.encode()).hexdigest()
    engine = create_engine(pg_app.state.lexecon.settings.ledger_url)
    try:
        with engine.connect() as conn:
            assert "api_keys" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
    kinds = [e.entry_type for e in ledger_of(pg_app).entries() if e.entry_type.startswith("api_key_")]
    assert kinds.count("api_key_revoked") == 1


def test_revocation_in_another_server_applies_after_the_cache_ttl(
    pg_home: Path, pg_client: TestClient, pg_keys: dict[Role, str]
) -> None:
    other = _app(pg_home, api_key_cache_seconds=0.2)
    _, key = other.state.lexecon.api_keys.create("shared", Role.AUDITOR, by="test")
    with TestClient(other) as other_client:
        assert other_client.get("/policies", headers=auth(key)).status_code == 200  # cached there
        assert pg_client.delete(f"/apikeys/{key_id(key)}", headers=auth(pg_keys[Role.ADMIN])).status_code == 200
        assert pg_client.get("/policies", headers=auth(key)).status_code == 401
        time.sleep(0.3)
        assert other_client.get("/policies", headers=auth(key)).status_code == 401


def test_ledger_verify_and_tampering(pg_app: FastAPI, pg_client: TestClient, pg_keys: dict[Role, str]) -> None:
    auditor = auth(pg_keys[Role.AUDITOR])
    decision = decide(pg_client, pg_keys[Role.AGENT], SEARCH)
    report = pg_client.get("/ledger/verify", headers=auditor).json()
    assert report["valid"] is True and report["entries_verified"] == ledger_of(pg_app).head()[0]

    ledger_of(pg_app).checkpoint()
    proof = pg_client.get(f"/ledger/entries/{decision['ledger_entry_id']}/proof", headers=auditor)
    assert proof.status_code == 200

    export = pg_client.get("/ledger/export", headers=auditor)
    assert export.status_code == 200
    bundle = Path(pg_app.state.lexecon.settings.home) / "export.zip"
    bundle.write_bytes(export.content)
    assert verify_bundle(bundle, pg_app.state.lexecon.governor.public_keys).valid

    engine = create_engine(pg_app.state.lexecon.settings.ledger_url)
    try:
        with engine.begin() as conn:
            body = bytes(conn.execute(text("SELECT body FROM ledger_entries WHERE seq = :s"),
                                      {"s": decision["ledger_entry_id"]}).scalar())  # fmt: skip
            conn.execute(text("UPDATE ledger_entries SET body = :b WHERE seq = :s"),
                         {"b": body.replace(b'"approved"', b'"denied"'), "s": decision["ledger_entry_id"]})  # fmt: skip
    finally:
        engine.dispose()
    bad = pg_client.get("/ledger/verify", headers=auditor).json()
    assert bad["valid"] is False
    assert bad["details"]["first_bad_seq"] == decision["ledger_entry_id"]
    check = {"token": decision["capability_token"], "tool": "search", "args": SEARCH["tool_args"]}
    result = pg_client.post("/decide/verify", json=check, headers=auth(pg_keys[Role.AGENT])).json()
    assert result["reason"] == "decision_mismatch"


def test_policy_sync(pg_home: Path, pg_client: TestClient, pg_keys: dict[Role, str]) -> None:
    document = {
        "mode": "strict",
        "terms": [{"term_id": "a", "term_type": "actor", "value": "ai_agent:*"},
                  {"term_id": "t", "term_type": "tool", "value": "lookup"}],
        "relations": [{"relation_type": "permits", "source_term_id": "a", "target_term_id": "t"}],
    }  # fmt: skip
    other = _app(pg_home)
    with TestClient(other) as other_client:
        lookup = {"actor": "ai_agent:x", "tool": "lookup"}
        assert decide(other_client, pg_keys[Role.AGENT], lookup)["outcome"] == "denied"
        loaded = pg_client.post("/policies/load", json={"document": document}, headers=auth(pg_keys[Role.OPERATOR]))
        assert loaded.status_code == 200
        assert sync_policy(other.state.lexecon) is True
        assert decide(other_client, pg_keys[Role.AGENT], lookup)["outcome"] == "approved"


# -- bugs specific to PostgreSQL -------------------------------------------------------------------------------------


def test_nul_in_actor_is_a_422(pg_app: FastAPI, pg_client: TestClient, pg_keys: dict[Role, str]) -> None:
    response = pg_client.post("/decide", json=NUL_ACTOR, headers=auth(pg_keys[Role.AGENT]))
    assert response.status_code == 422, response.text


def test_a_bad_row_does_not_fail_other_requests_in_its_batch(
    pg_app: FastAPI, pg_client: TestClient, pg_keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row PostgreSQL refuses (here NUL in an entry type, which the HTTP API cannot send) fails only its own append:
    the batch it shared is written again one request at a time."""
    ledger = ledger_of(pg_app)
    real_write = ledger._appender._write_batch
    writing, release = threading.Event(), threading.Event()
    calls = 0

    def held_write(batch: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # hold the first batch open so the next requests queue up behind it, together
            writing.set()
            release.wait(10)
        real_write(batch)

    monkeypatch.setattr(ledger._appender, "_write_batch", held_write)
    results: dict[str, int | str] = {}

    def send(name: str, body: dict[str, Any]) -> None:
        results[name] = pg_client.post("/decide", json=body, headers=auth(pg_keys[Role.AGENT])).status_code

    def bad_append() -> None:
        try:
            ledger.append("bad\u0000type", {"note": "refused by PostgreSQL"})
            results["bad"] = "written"
        except LedgerError:
            results["bad"] = "refused"

    first = threading.Thread(target=send, args=("first", SEARCH))
    first.start()
    assert writing.wait(10)
    others = [threading.Thread(target=bad_append), threading.Thread(target=send, args=("innocent", SEARCH))]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(ledger._appender._queue) < 2:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.01)
    release.set()
    for t in (first, *others):
        t.join(timeout=20)
    assert results == {"first": 200, "bad": "refused", "innocent": 200}
    assert ledger.verify(ledger.published_keys()).valid


@pytest.mark.parametrize("param", ["actor", "tool", "entry_type"])
def test_nul_in_a_filter_is_not_a_server_error(pg_client: TestClient, pg_keys: dict[Role, str], param: str) -> None:
    response = pg_client.get("/ledger/entries", params={param: "a\u0000"}, headers=auth(pg_keys[Role.AUDITOR]))
    assert response.status_code < 500, response.text
