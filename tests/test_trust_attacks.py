"""A database writer without the signing key cannot change what the node enforces or obtain capability tokens.

Each attack is mounted with plain SQL against a real node, on SQLite and on PostgreSQL, and the node's refusal is
asserted. The rule under test: before the node acts on a row - adopts it, re-signs from it, vouches for it, purges
by it - it checks the row's signature and its place in the chain (lexecon_core/ledger/_trust.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_POLICY  # tests/conftest.py
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from lexecon_core import GovernanceError, LedgerError, LedgerTampered, LocalGovernor, init_node, load_settings
from lexecon_core.auth import Role
from lexecon_core.decisions import idempotent_decision_id
from lexecon_core.keys import Signer
from lexecon_core.ledger._entry import ROW_MAC_PURPOSE, entry_hash, make_body, row_mac, signing_message, utc_timestamp
from lexecon_core.policy import parse_policy_text
from lexecon_core.server import create_app
from tests.server.conftest import auth

DELETE = {"actor": "ai_agent:x", "tool": "delete_customer", "tool_args": {"customer_id": 7}}
SEARCH = {"actor": "ai_agent:x", "tool": "search", "tool_args": {"q": "x"}}
LATER = datetime.now(UTC) + timedelta(days=3651)
PERMISSIVE = TEST_POLICY.replace("relation_type: forbids", "relation_type: permits")


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A node home on either store, with TEST_POLICY loaded (deletes forbidden)."""
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    root = tmp_path / "home"
    node = init_node(root, node_id="attacked", database_url=url)
    (tmp_path / "policy.yaml").write_text(TEST_POLICY)
    node.load_policy_file(tmp_path / "policy.yaml")
    node.close()
    return root


def url_of(home: Path) -> str:
    return load_settings(home).ledger_url


def sql(home: Path, statement: str, **params: Any) -> list[Any]:
    """Plain SQL, as an attacker with database access runs it."""
    engine = create_engine(url_of(home))
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def plant(
    home: Path,
    entry_type: str,
    data: dict[str, Any],
    *,
    signer: Signer | None = None,
    kid: str | None = None,
    mac: Callable[[bytes], bytes] | None = None,
) -> int:
    """Insert a well-formed entry at the head, hashed and linked correctly, signed by a key that is not the node's
    (``kid``: labelled as the node's key ``kid``, garbage where the signature goes), with the row MAC ``mac`` makes
    from the entry hash, if given. Returns its seq."""
    seq, prev = sql(home, "SELECT seq, entry_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1")[0]
    seq, prev = int(seq) + 1, bytes(prev)
    ts = utc_timestamp()
    body = make_body(seq=seq, entry_type=entry_type, timestamp=ts, node_id="attacked", data=data)
    digest = entry_hash(prev, body)
    forger = signer or Signer.generate()
    request = data.get("request") or {}
    sql(
        home,
        "INSERT INTO ledger_entries (seq, entry_type, created_at, body, prev_hash, entry_hash, kid, signature,"
        " decision_id, actor, tool, outcome, purged, mac) VALUES (:seq, :type, :ts, :body, :prev, :digest, :kid,"
        " :sig, :decision, :actor, :tool, :outcome, false, :mac)",
        seq=seq,
        type=entry_type,
        ts=ts,
        body=body,
        prev=prev,
        digest=digest,
        kid=kid or forger.kid,
        sig=bytes(64) if kid else forger.sign(signing_message(digest)),
        mac=mac(digest) if mac else None,
        decision=data.get("decision_id"),
        actor=request.get("actor"),
        tool=request.get("tool"),
        outcome=data.get("outcome"),
    )
    return seq


def forged_policy() -> dict[str, Any]:
    engine = parse_policy_text(PERMISSIVE, source="attacker")
    return {"policy_version": engine.version, "source": "attacker.yaml", "document": engine.to_document()}


def app_for(home: Path) -> FastAPI:
    return create_app(load_settings(home, rate_limit_per_second=10_000, rate_limit_burst=10_000))


@pytest.fixture
def server(home: Path) -> Iterator[tuple[FastAPI, TestClient, dict[Role, str]]]:
    app = app_for(home)
    store = app.state.lexecon.api_keys
    keys = {role: store.create(f"k-{role.value}", role, by="test")[1] for role in Role}
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client, keys


# -- 1. the policy in force ------------------------------------------------------------------------------------------


def test_a_planted_policy_row_is_not_adopted_running_or_after_restart(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    app, client, keys = server
    version = client.get("/policies", headers=auth(keys[Role.AUDITOR])).json()["policy_version"]
    seq = plant(home, "policy_loaded", forged_policy())
    from lexecon_core.server import sync_policy

    with pytest.raises(LedgerTampered, match=f"ledger entry {seq} does not verify"):
        sync_policy(app.state.lexecon)  # what the follower runs every LEXECON_POLICY_SYNC_SECONDS
    assert app.state.lexecon.governor.policy.version == version
    # Keys are known only from the verified ledger, so until it verifies again nobody is authenticated: fail closed.
    unavailable = client.get("/policies", headers=auth(keys[Role.AUDITOR]))
    assert (unavailable.status_code, unavailable.json()["error"]) == (503, "unavailable")
    refused = client.post("/decide", json=DELETE, headers=auth(keys[Role.AGENT]))
    assert refused.status_code == 503 and "capability_token" not in refused.text  # fail closed, no token
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["ledger"].startswith(f"entry {seq} does not verify")
    assert "lexecon_ledger_refusals_total" in client.get("/metrics").text
    # After a restart the forged policy is still not in force, and nothing is approved on top of the forged row.
    restarted = app_for(home)
    assert restarted.state.lexecon.governor.policy.version == version
    with TestClient(restarted, raise_server_exceptions=False) as again:
        assert again.post("/decide", json=DELETE, headers=auth(keys[Role.AGENT])).status_code in (401, 503)


def test_a_newer_policy_hidden_by_editing_its_column_is_still_the_one_in_force(home: Path) -> None:
    """Relabelling the newest policy_loaded row (a column outside the hash) to roll back to an older policy."""
    with LocalGovernor(home) as gov:
        old = gov.policy.version
    stricter = home.parent / "stricter.yaml"
    stricter.write_text(
        TEST_POLICY.replace("  - {relation_type: permits, source_term_id: agents, target_term_id: search}\n", "")
    )
    with LocalGovernor(home) as gov:
        loaded = gov.load_policy(stricter).version
        for _ in range(3):
            gov.decide(SEARCH)
    assert loaded != old
    sql(home, "UPDATE ledger_entries SET entry_type = 'decision' WHERE entry_type = 'policy_loaded' AND body LIKE :v",
        v=f"%{loaded}%")  # fmt: skip
    (home / "policy.json").unlink()  # a server of another home: it knows policies only from the ledger
    app = app_for(home)  # starting, it walks the chain from the genesis entry
    assert app.state.lexecon.governor.policy.version != old  # never rolled back to the older policy


# -- 1b. API keys ------------------------------------------------------------------------------------------------------


def made_up_key(fill: str) -> tuple[str, str, bytes]:
    """A key an attacker invents: its id, the key, and the hash a node would keep for it."""
    key_id = fill * 16
    key = f"lxk_{key_id}_" + fill.upper() * 43
    return key_id, key, hashlib.sha256(b"lexecon:apikey:v1\x00" + key.encode()).digest()


def test_an_api_keys_row_inserted_by_sql_grants_nothing(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    _, client, _ = server
    key_id, key, digest = made_up_key("a")
    blob = "BLOB" if "sqlite" in url_of(home) else "BYTEA"
    sql(home, "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, name TEXT, role TEXT, actors TEXT,"
        f" key_hash {blob}, created_at TEXT, revoked_at TEXT)")  # fmt: skip
    sql(home, "INSERT INTO api_keys VALUES (:k, 'evil', 'admin', '*', :h, 'now', NULL)", k=key_id, h=digest)
    policy = parse_policy_text(PERMISSIVE, source="x").to_document()
    loaded = client.post("/policies/load", json={"document": policy, "source": "evil"}, headers=auth(key))
    assert loaded.status_code == 401


def test_a_planted_key_creation_entry_grants_nothing(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    _, client, _ = server
    key_id, key, digest = made_up_key("c")
    facts = {"key_id": key_id, "name": "evil", "role": "admin", "actors": "*", "key_sha256": digest.hex(), "by": "x"}
    plant(home, "api_key_created", facts)
    response = client.get("/apikeys", headers=auth(key))
    assert response.status_code in (401, 503)  # unknown key, or the ledger refuses: never admitted


def test_a_revocation_removed_by_sql_does_not_bring_the_key_back(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    app, client, _ = server
    store = app.state.lexecon.api_keys
    record, key = store.create("leaked", Role.AUDITOR, by="test")
    store.revoke(record.key_id, by="test")
    sql(home, "DELETE FROM ledger_entries WHERE entry_type = 'api_key_revoked'")
    assert client.get("/policies", headers=auth(key)).status_code in (401, 503)
    restarted = app_for(home)
    with TestClient(restarted, raise_server_exceptions=False) as again:
        assert again.get("/policies", headers=auth(key)).status_code in (401, 503)


# -- 2. idempotent replay --------------------------------------------------------------------------------------------


def test_replay_does_not_re_sign_a_planted_approval(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    _, client, keys = server
    agent = keys[Role.AGENT]
    principal = f"apikey:{agent[4:20]}"
    decision_id = idempotent_decision_id("retry-1", principal)
    request = {"actor": "ai_agent:x", "action": None, "tool": "delete_customer",
               "args_sha256": hashlib.sha256(b'{"customer_id":7}').hexdigest(), "user_intent": "", "data_classes": [],
               "declared_risk_level": None, "policy_mode": None, "context": {}}  # fmt: skip
    plant(home, "decision", {"decision_id": decision_id, "outcome": "approved", "reason": "x", "request": request,
                             "policy_version": "x", "policy_mode": "strict", "matched_relations": [],
                             "risk": {"level": "low", "score": 1, "dimensions": {}}, "token_id": "j" * 32,
                             "escalation_id": None, "principal": principal})  # fmt: skip
    response = client.post("/decide", json=DELETE, headers={**auth(agent), "Idempotency-Key": "retry-1"})
    assert response.status_code == 503, response.text
    assert "capability_token" not in response.text


@pytest.mark.parametrize("body", [b"[]", b'{"data": [], "ts": "x"}', b'"text"'], ids=["array", "data array", "string"])
def test_replay_refuses_a_decision_replaced_by_a_body_that_is_not_an_entry(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]], body: bytes
) -> None:
    """The row's hash recomputed over a body of another JSON shape: refused like any other altered row, no crash."""
    _, client, keys = server
    headers = {**auth(keys[Role.AGENT]), "Idempotency-Key": "retry-3"}
    seq = client.post("/decide", json=DELETE, headers=headers).json()["ledger_entry_id"]
    client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT]))  # the altered row is not the head
    (prev,) = sql(home, "SELECT prev_hash FROM ledger_entries WHERE seq = :s", s=seq)[0]
    sql(home, "UPDATE ledger_entries SET body = :b, entry_hash = :h WHERE seq = :s",
        b=body, h=entry_hash(bytes(prev), body), s=seq)  # fmt: skip
    again = client.post("/decide", json=DELETE, headers=headers)
    assert (again.status_code, again.json()["error"]) == (503, "undecided")


def test_replay_refuses_an_earlier_decision_edited_in_place(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    """A genuine denial, its body turned into an approval and its hash recomputed (the signature cannot be)."""
    _, client, keys = server
    headers = {**auth(keys[Role.AGENT]), "Idempotency-Key": "retry-2"}
    first = client.post("/decide", json=DELETE, headers=headers).json()
    assert first["outcome"] == "denied"
    seq = first["ledger_entry_id"]
    body, prev = sql(home, "SELECT body, prev_hash FROM ledger_entries WHERE seq = :s", s=seq)[0]
    edited = bytes(body).replace(b'"outcome":"denied"', b'"outcome":"approved"')
    sql(home, "UPDATE ledger_entries SET body = :b, entry_hash = :h, outcome = 'approved' WHERE seq = :s",
        b=edited, h=entry_hash(bytes(prev), edited), s=seq)  # fmt: skip
    again = client.post("/decide", json=DELETE, headers=headers)
    assert again.status_code == 503 and "capability_token" not in again.text


# -- 3. retention and legal holds ------------------------------------------------------------------------------------


@pytest.fixture
def held(home: Path) -> tuple[LocalGovernor, str]:
    gov = LocalGovernor(home)
    for i in range(4):
        gov.decide({**SEARCH, "tool_args": {"q": i}})  # entries 3..6
    hold = gov.node.ledger.place_hold(3, 6, reason="litigation")  # entry 7
    return gov, hold


def test_aging_the_copied_column_does_not_purge_entries_in_retention(home: Path) -> None:
    with LocalGovernor(home) as gov:
        for i in range(3):
            gov.decide({**SEARCH, "tool_args": {"q": i}})
        gov.node.ledger.checkpoint()  # columns under a checkpoint are not re-checked: ages must not come from them
    sql(home, "UPDATE ledger_entries SET created_at = '2001-01-01T00:00:00.000000Z' WHERE entry_type = 'decision'")
    with LocalGovernor(home) as gov, pytest.raises(LedgerError, match="retention period"):
        gov.node.ledger.purge(5, reason="edited ages")
    assert not sql(home, "SELECT seq FROM ledger_entries WHERE purged = true")


def test_a_hold_erased_by_sql_still_blocks_the_purge(home: Path, held: tuple[LocalGovernor, str]) -> None:
    gov, _ = held
    gov.close()
    # The attacker removes the hold from the record: blanks its body and marks it purged, as a purge would.
    sql(home, "UPDATE ledger_entries SET body = :e, purged = true WHERE entry_type = 'legal_hold'", e=b"")
    with LocalGovernor(home) as fresh, pytest.raises(LedgerTampered, match="without a signed tombstone"):
        fresh.node.ledger.purge(6, reason="after the hold vanished", now=LATER)
    assert len(sql(home, "SELECT seq FROM ledger_entries WHERE purged = true")) == 1  # only the blanked hold


def test_a_hold_relabelled_by_sql_still_blocks_the_purge(home: Path, held: tuple[LocalGovernor, str]) -> None:
    gov, _ = held
    gov.close()
    sql(home, "UPDATE ledger_entries SET entry_type = 'note' WHERE entry_type = 'legal_hold'")
    with LocalGovernor(home) as fresh, pytest.raises(LedgerError, match=r"under legal hold|does not verify"):
        fresh.node.ledger.purge(6, reason="hold relabelled", now=LATER)
    assert not sql(home, "SELECT seq FROM ledger_entries WHERE purged = true")


def test_verification_rejects_a_tombstone_that_purged_held_entries(home: Path, held: tuple[LocalGovernor, str]) -> None:
    """Even a key holder's purge must match the signed holds: verification proves each tombstone was allowed."""
    gov, _ = held
    ledger = gov.node.ledger
    seqs = [3, 4]
    sql(home, "UPDATE ledger_entries SET body = :e, decision_id = NULL, actor = NULL, tool = NULL, outcome = NULL,"
        " purged = true WHERE seq IN (3, 4)", e=b"")  # fmt: skip
    newest = "2000-01-01T00:00:00.000000Z"
    tombstone = {"from_seq": 3, "to_seq": 4, "purged": 2, "seqs_sha256": hashlib.sha256(b"3,4").hexdigest(),
                 "newest_ts": newest, "retention_days": 3650, "as_of": LATER.isoformat().replace("+00:00", "Z"),
                 "reason": "ignoring the hold"}  # fmt: skip
    plant(home, "entries_purged", tombstone, signer=gov.node.keys.signer)
    report = ledger.verify(gov.public_keys)
    assert not report.valid and report.first_bad_seq == seqs[0]
    assert "purged while under legal hold" in (report.reason or "")
    gov.close()


# -- 4. checkpoints ----------------------------------------------------------------------------------------------------


def test_no_checkpoint_or_export_vouches_for_a_planted_head(home: Path, tmp_path: Path) -> None:
    with LocalGovernor(home) as gov:
        gov.decide(SEARCH)
        before = sql(home, "SELECT count(*) FROM ledger_checkpoints")[0][0]
        plant(home, "decision", {"decision_id": "dec_forged", "outcome": "approved", "request": {}})
        with pytest.raises(LedgerTampered, match="signed by unknown key"):
            gov.node.ledger.checkpoint()
        with pytest.raises(LedgerTampered):
            gov.node.ledger.export(tmp_path / "bundle.zip")
        with pytest.raises(GovernanceError, match="does not verify"):
            gov.decide(SEARCH)  # nothing is appended (and later vouched for) on top of it
    assert sql(home, "SELECT count(*) FROM ledger_checkpoints")[0][0] == before
    assert not (tmp_path / "bundle.zip").exists()


# -- row MACs: the node's own processes check each other's rows by HMAC instead of Ed25519 -------------------------


def test_a_row_mac_copied_or_made_with_another_key_vouches_for_nothing(home: Path) -> None:
    forged = {"decision_id": "dec_forged", "outcome": "approved", "request": {"actor": "ai_agent:x"}}
    attacker = Signer.generate().derive_key(ROW_MAC_PURPOSE)
    with LocalGovernor(home) as running:
        running.decide(SEARCH)  # this handle has verified the ledger; it grows by others' rows through their MACs
        kid, copied = sql(home, "SELECT kid, mac FROM ledger_entries ORDER BY seq DESC LIMIT 1")[0]
        assert copied is not None and len(bytes(copied)) == 32  # the node writes one with every entry
        for mac in (lambda _digest: bytes(copied), lambda digest: row_mac(attacker, digest)):
            seq = plant(home, "decision", forged, kid=kid, mac=mac)
            with pytest.raises(GovernanceError, match=f"entry {seq} does not verify"):
                running.decide(SEARCH)  # running: it extends what it verified
            with LocalGovernor(home) as fresh, pytest.raises(GovernanceError, match=f"entry {seq} does not verify"):
                fresh.decide(SEARCH)  # starting: it walks from the genesis entry
            sql(home, "DELETE FROM ledger_entries WHERE seq = :seq", seq=seq)


# -- 6. exported keys --------------------------------------------------------------------------------------------------


def test_the_served_ledger_keys_are_the_node_keys(
    home: Path, server: tuple[FastAPI, TestClient, dict[Role, str]]
) -> None:
    app, client, keys = server
    intruder = Signer.generate()
    sql(home, "INSERT INTO ledger_keys (kid, public_key, created_at) VALUES (:k, :p, 'now')",
        k=intruder.kid, p=intruder.public.raw)  # fmt: skip
    served = {k["kid"] for k in client.get("/ledger/keys", headers=auth(keys[Role.AUDITOR])).json()["keys"]}
    assert served == set(app.state.lexecon.governor.public_keys) and intruder.kid not in served


def test_an_exported_jwks_holds_only_the_node_keys(home: Path, tmp_path: Path) -> None:
    intruder = Signer.generate()
    sql(home, "INSERT INTO ledger_keys (kid, public_key, created_at) VALUES (:k, :p, 'now')",
        k=intruder.kid, p=intruder.public.raw)  # fmt: skip
    with LocalGovernor(home) as gov:
        gov.node.ledger.export(tmp_path / "bundle.zip")
        node_kids = set(gov.public_keys)
    import zipfile

    with zipfile.ZipFile(tmp_path / "bundle.zip") as archive:
        kids = {k["kid"] for k in json.loads(archive.read("jwks.json"))["keys"]}
    assert intruder.kid not in kids and kids == node_kids
