"""The HTTP API's behaviour: decisions, idempotency, token checks, the ledger, policies, API keys, health, metrics."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_POLICY  # tests/conftest.py
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from lexecon_core import init_node, load_settings
from lexecon_core.auth import Role
from lexecon_core.keys import b64url
from lexecon_core.ledger._bundle import verify_bundle
from lexecon_core.ledger._checkpoint import origin_for, verify_checkpoint
from lexecon_core.ledger._merkle import leaf_hash, verify_inclusion
from lexecon_core.server import create_app, sync_policy
from lexecon_core.tokens import capability_claims, sign_claims
from tests.server.conftest import auth, decide, ledger_of

API_KEY_RE = r"^lxk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$"

SEARCH = {"actor": "ai_agent:support", "tool": "search", "tool_args": {"q": "refund policy"}}
DENIED = {"actor": "ai_agent:support", "tool": "delete_account", "tool_args": {"id": 7}}
ESCALATED = {"actor": "ai_agent:support", "tool": "refund", "tool_args": {"amount": 10}, "risk_level": "critical"}

NEW_POLICY = {
    "name": "lookup-policy",
    "mode": "strict",
    "terms": [
        {"term_id": "agents", "term_type": "actor", "value": "ai_agent:*"},
        {"term_id": "lookup", "term_type": "tool", "value": "lookup"},
    ],
    "relations": [{"relation_type": "permits", "source_term_id": "agents", "target_term_id": "lookup"}],
}


def key_id(key: str) -> str:
    return key[4:20]


def token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def jws(sign: Callable[[bytes], bytes], kid: str, claims: dict[str, Any]) -> str:
    """A compact EdDSA JWS with any kid: for tokens that claim one key and are signed by another."""
    header = {"alg": "EdDSA", "typ": "lexecon-cap+jwt", "kid": kid}
    signing_input = ".".join(b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims))
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def tamper_body(home: Path, seq: int, old: bytes, new: bytes) -> None:
    """Edit a stored entry body directly in SQLite, as an attacker with database access would."""
    with sqlite3.connect(home / "ledger.db") as db:
        (body,) = db.execute("SELECT body FROM ledger_entries WHERE seq = ?", (seq,)).fetchone()
        assert old in body
        db.execute("UPDATE ledger_entries SET body = ? WHERE seq = ?", (body.replace(old, new), seq))


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- POST /decide ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "outcome"), [(SEARCH, "approved"), (DENIED, "denied"), (ESCALATED, "escalated")], ids=str
)
def test_decide_outcome_is_recorded_with_the_principal(
    app: FastAPI, client: TestClient, keys: dict[Role, str], body: dict[str, Any], outcome: str
) -> None:
    agent = keys[Role.AGENT]
    decision = decide(client, agent, body)
    assert decision["outcome"] == outcome
    assert decision["actor"] == body["actor"] and decision["tool"] == body["tool"]
    assert (decision["capability_token"] is not None) == (outcome == "approved")
    assert (decision["token_id"] is not None) == (outcome == "approved")
    assert (decision["escalation_id"] is not None) == (outcome == "escalated")

    entry = ledger_of(app).get(decision["ledger_entry_id"])
    assert entry is not None and entry.entry_type == "decision"
    assert entry.entry_hash.hex() == decision["ledger_entry_hash"]
    data = entry.data
    assert data["decision_id"] == decision["decision_id"]
    assert data["outcome"] == outcome
    assert data["principal"] == f"apikey:{key_id(agent)}"
    assert data["request"]["tool"] == body["tool"]
    assert data["request"]["args_sha256"] == decision["args_sha256"]
    assert "refund policy" not in entry.body.decode()  # tool arguments are hashed, never stored

    # The same facts through the API, as an auditor sees them.
    seen = client.get(f"/ledger/entries/{decision['ledger_entry_id']}", headers=auth(keys[Role.AUDITOR])).json()
    assert json.loads(seen["body"])["data"]["principal"] == f"apikey:{key_id(agent)}"
    found = client.get(
        "/ledger/entries", params={"outcome": outcome, "entry_type": "decision"}, headers=auth(keys[Role.AUDITOR])
    ).json()
    assert [e["seq"] for e in found["entries"]] == [decision["ledger_entry_id"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"tool": "search"}, "body.actor"),
        ({"actor": "ai_agent:a"}, "body.tool"),
        ({**SEARCH, "surprise": 1}, "body.surprise"),
        ({**SEARCH, "risk_level": "extreme"}, "body.risk_level"),
        # The 1-5 scale takes integers 1 to 5 only: not 0 or 6, no floats, no bools (an int in Python).
        ({**SEARCH, "risk_level": 0}, "body.risk_level"),
        ({**SEARCH, "risk_level": 6}, "body.risk_level"),
        ({**SEARCH, "risk_level": 2.0}, "body.risk_level"),
        ({**SEARCH, "risk_level": 2.5}, "body.risk_level"),
        ({**SEARCH, "risk_level": True}, "body.risk_level"),
        ({**SEARCH, "risk_level": "2"}, "body.risk_level"),
        ({**SEARCH, "tool_args": [1, 2]}, "body.tool_args"),
        ({**SEARCH, "actor": ""}, "body.actor"),
    ],
)
def test_decide_rejects_invalid_requests(
    app: FastAPI, client: TestClient, keys: dict[Role, str], body: dict[str, Any], loc: str
) -> None:
    before = ledger_of(app).head()[0]
    response = client.post("/decide", json=body, headers=auth(keys[Role.AGENT]))
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "invalid_request"
    assert loc in [f["loc"] for f in error["fields"]]
    assert ledger_of(app).head()[0] == before


SEED_QUICK_START = {
    # The request the project's seed documents show, verbatim.
    "actor": "ai_agent:customer_service",
    "proposed_action": "read customer transaction history",
    "tool": "database_query",
    "user_intent": "answer customer support question",
    "data_classes": ["pii", "financial"],
    "risk_level": 2,
    "policy_mode": "strict",
}


def test_the_seed_quick_start_request_gets_a_decision(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    decision = decide(client, keys[Role.AGENT], SEED_QUICK_START)
    assert decision["outcome"] in {"approved", "denied", "escalated"}
    recorded = ledger_of(app).get(decision["ledger_entry_id"]).data["request"]
    assert recorded["declared_risk_level"] == "medium"  # 2 on the 1-5 scale
    assert recorded["data_classes"] == ["pii", "financial"]


@pytest.mark.parametrize(
    ("number", "level"), [(1, "low"), (2, "medium"), (3, "high"), (4, "critical"), (5, "critical")]
)
def test_risk_level_numbers_map_onto_levels(
    app: FastAPI, client: TestClient, keys: dict[Role, str], number: int, level: str
) -> None:
    decision = decide(client, keys[Role.AGENT], {**SEARCH, "risk_level": number})
    assert ledger_of(app).get(decision["ledger_entry_id"]).data["request"]["declared_risk_level"] == level
    # The declared level is a floor: the computed level is never below it.
    order = ["low", "medium", "high", "critical"]
    assert order.index(decision["risk_level"]) >= order.index(level)


def test_decide_denies_and_records_floats_it_cannot_hash_canonically(client: TestClient, keys: dict[Role, str]) -> None:
    response = client.post(
        "/decide",
        content=b'{"actor": "ai_agent:a", "tool": "search", "tool_args": {"x": NaN}}',
        headers={**auth(keys[Role.AGENT]), "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["outcome"] == "denied" and body["args_sha256"] is None and body["capability_token"] is None
    assert "cannot be bound to a capability token" in body["reasoning"]


# -- idempotency -----------------------------------------------------------------------------------------------------


def _entries_for(app: FastAPI, decision_id: str) -> int:
    return len(ledger_of(app).entries(decision_id=decision_id))


def test_idempotent_retry_returns_the_first_decision(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    agent = keys[Role.AGENT]
    first = decide(client, agent, SEARCH, **{"Idempotency-Key": "order-1"})
    head = ledger_of(app).head()[0]
    again = decide(client, agent, SEARCH, **{"Idempotency-Key": "order-1"})
    assert again["decision_id"] == first["decision_id"]
    assert again["ledger_entry_id"] == first["ledger_entry_id"]
    assert again["ledger_entry_hash"] == first["ledger_entry_hash"]
    assert again["token_id"] == first["token_id"]
    assert token_claims(again["capability_token"])["jti"] == token_claims(first["capability_token"])["jti"]
    assert ledger_of(app).head()[0] == head  # the retry wrote nothing
    assert _entries_for(app, first["decision_id"]) == 1
    # One capability, not two: consuming the retry's token uses up the first one too.
    check = {"tool": SEARCH["tool"], "args": SEARCH["tool_args"], "consume": True}
    used = client.post("/decide/verify", json={**check, "token": again["capability_token"]}, headers=auth(agent))
    assert used.json()["valid"] is True
    replay = client.post("/decide/verify", json={**check, "token": first["capability_token"]}, headers=auth(agent))
    assert replay.json()["valid"] is False
    assert replay.json()["reason"] == "replayed"


@pytest.mark.parametrize("body", [DENIED, ESCALATED], ids=["denied", "escalated"])
def test_idempotent_retry_of_a_refusal(
    app: FastAPI, client: TestClient, keys: dict[Role, str], body: dict[str, Any]
) -> None:
    first = decide(client, keys[Role.AGENT], body, **{"Idempotency-Key": "k"})
    again = decide(client, keys[Role.AGENT], body, **{"Idempotency-Key": "k"})
    assert again["decision_id"] == first["decision_id"]
    assert again["outcome"] == first["outcome"]
    assert again["escalation_id"] == first["escalation_id"]
    assert again["capability_token"] is None
    assert _entries_for(app, first["decision_id"]) == 1


@pytest.mark.parametrize(
    "other",
    [
        {**SEARCH, "tool_args": {"q": "something else"}},
        {**SEARCH, "tool": "refund"},
        {**SEARCH, "actor": "ai_agent:other"},
    ],
    ids=["args", "tool", "actor"],
)
def test_idempotency_key_reused_for_another_request_is_422(
    app: FastAPI, client: TestClient, keys: dict[Role, str], other: dict[str, Any]
) -> None:
    first = decide(client, keys[Role.AGENT], SEARCH, **{"Idempotency-Key": "k-1"})
    head = ledger_of(app).head()[0]
    response = client.post("/decide", json=other, headers={**auth(keys[Role.AGENT]), "Idempotency-Key": "k-1"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "idempotency key" in response.json()["message"]
    assert ledger_of(app).head()[0] == head
    assert _entries_for(app, first["decision_id"]) == 1


@pytest.mark.parametrize(
    "stricter",
    [
        {"risk_level": "critical"},
        {"policy_mode": "paranoid", "risk_level": "high"},
        {"data_classes": ["payment_card"]},
        {"context": {"resource": "vault"}},
    ],
    ids=["risk_level", "policy_mode", "data_classes", "context"],
)
def test_idempotency_key_reused_with_a_stricter_request_is_422(
    app: FastAPI, client: TestClient, keys: dict[Role, str], stricter: dict[str, Any]
) -> None:
    """Regression: a retry used to be matched on (actor, tool, args) only, so the same key with a request that
    differs in a field that changes the outcome silently got the first decision (an approval)."""
    decide(client, keys[Role.AGENT], SEARCH, **{"Idempotency-Key": "k-2"})
    head = ledger_of(app).head()[0]
    response = client.post(
        "/decide", json={**SEARCH, **stricter}, headers={**auth(keys[Role.AGENT]), "Idempotency-Key": "k-2"}
    )
    assert response.status_code == 422, response.json().get("outcome")
    assert "idempotency key" in response.json()["message"]
    assert ledger_of(app).head()[0] == head


def test_idempotent_retry_has_the_same_expiry_across_a_second_boundary(
    app: FastAPI, client: TestClient, keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the first token's iat was taken after the ledger commit and the retry's from the entry's time, so
    a commit that straddled a second boundary gave the retry a token expiring one second earlier."""
    ledger = ledger_of(app)
    real_write = ledger._appender._write_batch

    def slow_commit(batch: Any) -> None:
        real_write(batch)
        now = time.time()
        time.sleep(math.ceil(now) - now + 0.02)  # the commit "finishes" in the next second

    monkeypatch.setattr(ledger._appender, "_write_batch", slow_commit)
    first = decide(client, keys[Role.AGENT], SEARCH, **{"Idempotency-Key": "exp"})
    monkeypatch.undo()
    again = decide(client, keys[Role.AGENT], SEARCH, **{"Idempotency-Key": "exp"})
    assert again["token_id"] == first["token_id"]
    assert again["token_expires_at"] == first["token_expires_at"]
    assert token_claims(again["capability_token"]) == token_claims(first["capability_token"])


def test_concurrent_retries_leave_one_entry(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    agent = keys[Role.AGENT]
    head = ledger_of(app).head()[0]
    start = threading.Barrier(16)
    results: list[Any] = []

    def call() -> None:
        start.wait(timeout=10)
        results.append(client.post("/decide", json=SEARCH, headers={**auth(agent), "Idempotency-Key": "burst"}))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [r.status_code for r in results] == [200] * 16
    decisions = [r.json() for r in results]
    assert len({d["decision_id"] for d in decisions}) == 1
    assert len({d["ledger_entry_id"] for d in decisions}) == 1
    assert len({d["token_id"] for d in decisions}) == 1
    assert _entries_for(app, decisions[0]["decision_id"]) == 1
    assert ledger_of(app).head()[0] == head + 1


def test_idempotency_keys_are_scoped_per_api_key(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    store = app.state.lexecon.api_keys
    _, second_agent = store.create("second-agent", Role.AGENT, by="test")
    a = decide(client, keys[Role.AGENT], SEARCH, **{"Idempotency-Key": "shared"})
    b = decide(client, second_agent, SEARCH, **{"Idempotency-Key": "shared"})
    assert a["decision_id"] != b["decision_id"]
    assert a["ledger_entry_id"] != b["ledger_entry_id"]
    assert a["token_id"] != b["token_id"]
    principals = {ledger_of(app).get(d["ledger_entry_id"]).data["principal"] for d in (a, b)}  # type: ignore[union-attr]
    assert principals == {f"apikey:{key_id(keys[Role.AGENT])}", f"apikey:{key_id(second_agent)}"}


@pytest.mark.parametrize("value", ["", "k" * 257])
def test_idempotency_key_length_is_validated(client: TestClient, keys: dict[Role, str], value: str) -> None:
    response = client.post("/decide", json=SEARCH, headers={**auth(keys[Role.AGENT]), "Idempotency-Key": value})
    assert response.status_code == 422
    assert response.json()["fields"][0]["loc"] == "header.Idempotency-Key"


# -- POST /decide/verify ---------------------------------------------------------------------------------------------


@pytest.fixture
def approval(client: TestClient, keys: dict[Role, str]) -> dict[str, Any]:
    return decide(client, keys[Role.AGENT], SEARCH)  # type: ignore[no-any-return]


def verify(client: TestClient, key: str, token: str, **fields: Any) -> dict[str, Any]:
    body = {"token": token, "tool": SEARCH["tool"], "args": SEARCH["tool_args"], **fields}
    response = client.post("/decide/verify", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_verify_valid_token(client: TestClient, keys: dict[Role, str], approval: dict[str, Any]) -> None:
    for role in Role:  # every role may check a token
        result = verify(client, keys[role], approval["capability_token"])
        assert result["valid"] is True, result
        assert result["reason"] is None
        assert result["decision_id"] == approval["decision_id"]
        assert result["ledger_entry_id"] == approval["ledger_entry_id"]
        claims = result["claims"]
        assert claims["jti"] == approval["token_id"]
        assert claims["sub"] == SEARCH["actor"] and claims["tool"] == SEARCH["tool"]
        assert claims["iss"] == "test-node"
        assert claims["ledger_entry_hash"] == approval["ledger_entry_hash"]
        assert claims["args_sha256"] == approval["args_sha256"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"args": {"q": "other"}}, "args_mismatch"),
        ({"args": {}}, "args_mismatch"),
        ({"tool": "refund"}, "wrong_tool"),
    ],
)
def test_verify_wrong_call(
    client: TestClient, keys: dict[Role, str], approval: dict[str, Any], change: dict[str, Any], reason: str
) -> None:
    result = verify(client, keys[Role.AGENT], approval["capability_token"], **change)
    assert result["valid"] is False
    assert result["reason"] == reason
    assert result["claims"] is None


def test_verify_expired_token(
    app: FastAPI, client: TestClient, keys: dict[Role, str], approval: dict[str, Any]
) -> None:
    claims = token_claims(approval["capability_token"])
    old = capability_claims(
        issuer=claims["iss"], subject=claims["sub"], tool=claims["tool"], args_sha256=claims["args_sha256"],
        decision_id=claims["decision_id"], ledger_entry_id=claims["ledger_entry_id"],
        ledger_entry_hash=claims["ledger_entry_hash"], policy_version=claims["policy_version"], ttl_seconds=60,
        jti=claims["jti"], now=int(time.time()) - 3600,
    )  # fmt: skip
    token = sign_claims(app.state.lexecon.governor.node.keys.signer, old)
    assert verify(client, keys[Role.AGENT], token)["reason"] == "expired"


def test_verify_forged_tokens(
    tmp_path: Path, app: FastAPI, client: TestClient, keys: dict[Role, str], approval: dict[str, Any]
) -> None:
    claims = token_claims(approval["capability_token"])
    other = init_node(tmp_path / "other", node_id="test-node")  # same name, its own key
    try:
        foreign = sign_claims(other.keys.signer, claims)
        assert verify(client, keys[Role.AGENT], foreign)["reason"] == "unknown_kid"
        ours = app.state.lexecon.governor.node.keys.signer.kid
        posing = jws(other.keys.signer.sign, ours, claims)  # claims our kid, signed by the other key
        assert verify(client, keys[Role.AGENT], posing)["reason"] == "bad_signature"
    finally:
        other.close()
    # A token altered after signing.
    head, _payload, signature = approval["capability_token"].split(".")
    altered = b64url(json.dumps({**claims, "sub": "ai_agent:admin"}, separators=(",", ":")).encode())
    assert verify(client, keys[Role.AGENT], f"{head}.{altered}.{signature}")["reason"] == "bad_signature"
    assert verify(client, keys[Role.AGENT], "not.a.token")["valid"] is False


def test_verify_checks_the_decision_behind_the_token(
    app: FastAPI, client: TestClient, keys: dict[Role, str], approval: dict[str, Any]
) -> None:
    signer = app.state.lexecon.governor.node.keys.signer
    claims = token_claims(approval["capability_token"])
    genesis = ledger_of(app).get(1)
    assert genesis is not None
    # Signed by this node but naming an entry that is not this approval, or no entry at all.
    wrong_entry = sign_claims(signer, {**claims, "ledger_entry_id": 1, "ledger_entry_hash": genesis.entry_hash.hex()})
    assert verify(client, keys[Role.AGENT], wrong_entry)["reason"] == "decision_mismatch"
    missing = sign_claims(signer, {**claims, "ledger_entry_id": 10_000})
    assert verify(client, keys[Role.AGENT], missing)["reason"] == "no_decision"
    other_jti = sign_claims(signer, {**claims, "jti": "0" * 32})
    assert verify(client, keys[Role.AGENT], other_jti)["reason"] == "decision_mismatch"


def test_verify_consume_is_single_use(client: TestClient, keys: dict[Role, str], approval: dict[str, Any]) -> None:
    token = approval["capability_token"]
    agent = keys[Role.AGENT]
    assert verify(client, agent, token)["valid"] is True  # checking without consuming uses nothing
    assert verify(client, agent, token)["valid"] is True
    assert verify(client, agent, token, consume=True)["valid"] is True
    second = verify(client, agent, token, consume=True)
    assert second["valid"] is False
    assert second["reason"] == "replayed"


@pytest.mark.parametrize("rehash", [False, True], ids=["body-edited", "body-and-hash-edited"])
def test_verify_detects_a_tampered_ledger_entry(
    home: Path, client: TestClient, keys: dict[Role, str], approval: dict[str, Any], rehash: bool
) -> None:
    seq = approval["ledger_entry_id"]
    tamper_body(home, seq, b'"search"', b'"searcH"')
    if rehash:  # a careful attacker also recomputes the hash (but cannot re-sign)
        from lexecon_core.ledger import entry_hash

        with sqlite3.connect(home / "ledger.db") as db:
            prev, body = db.execute("SELECT prev_hash, body FROM ledger_entries WHERE seq = ?", (seq,)).fetchone()
            db.execute("UPDATE ledger_entries SET entry_hash = ? WHERE seq = ?", (entry_hash(prev, body), seq))
    result = verify(client, keys[Role.AGENT], approval["capability_token"])
    assert result["valid"] is False
    assert result["reason"] == "decision_mismatch"


def test_verify_rejects_invalid_bodies(client: TestClient, keys: dict[Role, str]) -> None:
    for body in ({"tool": "search"}, {"token": "", "tool": "search"}, {"token": "t", "tool": "search", "x": 1}):
        response = client.post("/decide/verify", json=body, headers=auth(keys[Role.AGENT]))
        assert response.status_code == 422, body


# -- the ledger ------------------------------------------------------------------------------------------------------


def test_entries_paging(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    for i in range(7):
        decide(client, keys[Role.AGENT], {**SEARCH, "tool_args": {"i": i}})
    head = ledger_of(app).head()[0]
    seen: list[int] = []
    after: int | None = 0
    pages = 0
    while after is not None:
        page = client.get("/ledger/entries", params={"after": after, "limit": 3}, headers=auth(keys[Role.AUDITOR]))
        assert page.status_code == 200
        data = page.json()
        assert len(data["entries"]) <= 3
        seen += [e["seq"] for e in data["entries"]]
        after = data["next_after"]
        if after is not None:
            assert after == seen[-1]
        pages += 1
        assert pages <= head + 1
    assert seen == list(range(1, head + 1))
    # Each entry is exactly what the ledger stores.
    first = client.get("/ledger/entries", params={"limit": 1}, headers=auth(keys[Role.AUDITOR])).json()["entries"][0]
    stored = ledger_of(app).get(1)
    assert stored is not None
    assert first["body"] == stored.body.decode() and first["entry_hash"] == stored.entry_hash.hex()
    assert first["signature"] == stored.signature.hex() and first["kid"] == stored.kid


def test_entries_last_full_page_has_no_next(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    head = ledger_of(app).head()[0]
    page = client.get("/ledger/entries", params={"limit": head}, headers=auth(keys[Role.AUDITOR])).json()
    assert len(page["entries"]) == head
    assert page["next_after"] is None


def test_entries_filters(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    a = decide(client, keys[Role.AGENT], SEARCH)
    b = decide(client, keys[Role.AGENT], {**DENIED, "actor": "ai_agent:other"})
    c = decide(client, keys[Role.AGENT], ESCALATED)
    auditor = auth(keys[Role.AUDITOR])

    def seqs(**params: Any) -> list[int]:
        response = client.get("/ledger/entries", params=params, headers=auditor)
        assert response.status_code == 200, response.text
        return [e["seq"] for e in response.json()["entries"]]

    ids = [d["ledger_entry_id"] for d in (a, b, c)]
    assert seqs(entry_type="decision") == ids
    assert seqs(actor="ai_agent:other") == [ids[1]]
    assert seqs(actor="ai_agent:support") == [ids[0], ids[2]]
    assert seqs(tool="search") == [ids[0]]
    assert seqs(tool="refund", outcome="escalated") == [ids[2]]
    assert seqs(outcome="approved") == [ids[0]]
    assert seqs(outcome="denied") == [ids[1]]
    assert seqs(actor="nobody") == []
    assert seqs(entry_type="ledger_genesis") == [1]
    assert seqs(entry_type="api_key_created") == [e.seq for e in ledger_of(app).entries(entry_type="api_key_created")]
    assert len(seqs(entry_type="api_key_created")) == len(Role)

    # since (inclusive) / until (exclusive), in UTC or any offset.
    created = ledger_of(app).get(ids[1]).created_at  # type: ignore[union-attr]
    assert seqs(entry_type="decision", since=created) == ids[1:]
    assert seqs(entry_type="decision", until=created) == ids[:1]
    moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    shifted = moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert seqs(entry_type="decision", since=shifted) == ids[1:]
    assert seqs(entry_type="decision", since=created, until=created) == []
    later = (moment + timedelta(days=1)).isoformat()
    assert seqs(since=later) == []


@pytest.mark.parametrize(
    "params",
    [{"outcome": "maybe"}, {"limit": 0}, {"limit": 1001}, {"after": -1}, {"since": "yesterday"}, {"actor": "a" * 257}],
    ids=str,
)
def test_entries_rejects_invalid_parameters(client: TestClient, keys: dict[Role, str], params: dict[str, Any]) -> None:
    response = client.get("/ledger/entries", params=params, headers=auth(keys[Role.AUDITOR]))
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("params", [{"since": "0001-01-01T00:00:00+01:00"}, {"until": "9999-12-31T23:59:59-01:00"}])
def test_entries_extreme_timestamps_are_not_a_server_error(
    app: FastAPI, keys: dict[Role, str], params: dict[str, str]
) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/ledger/entries", params=params, headers=auth(keys[Role.AUDITOR]))
    assert response.status_code < 500, response.text


def test_entry_by_seq(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    auditor = auth(keys[Role.AUDITOR])
    head = ledger_of(app).head()[0]
    entry = client.get(f"/ledger/entries/{head}", headers=auditor)
    assert entry.status_code == 200 and entry.json()["seq"] == head
    missing = client.get(f"/ledger/entries/{head + 1}", headers=auditor)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert client.get("/ledger/entries/0", headers=auditor).status_code == 422
    assert client.get("/ledger/entries/abc", headers=auditor).status_code == 422


def test_inclusion_proofs(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    auditor = auth(keys[Role.AUDITOR])
    decide(client, keys[Role.AGENT], SEARCH)
    before = client.get("/ledger/entries/2/proof", headers=auditor)
    assert before.status_code == 404
    assert before.json()["error"] == "not_found"
    assert client.get("/ledger/checkpoints", headers=auditor).json() == []

    ledger = ledger_of(app)
    first = ledger.checkpoint()
    for _ in range(4):
        decide(client, keys[Role.AGENT], SEARCH)
    second = ledger.checkpoint()
    assert second.size > first.size

    trusted = app.state.lexecon.governor.public_keys
    checkpoints = client.get("/ledger/checkpoints", headers=auditor).json()
    assert [c["tree_size"] for c in checkpoints] == [first.size, second.size]
    for listed in checkpoints:
        note = verify_checkpoint(listed["note"], trusted, origin=origin_for("test-node"))
        assert note.size == listed["tree_size"] and note.root.hex() == listed["root_hash"]

    for seq in (1, 2, first.size, second.size):
        proof = client.get(f"/ledger/entries/{seq}/proof", headers=auditor)
        assert proof.status_code == 200, proof.text
        p = proof.json()
        entry = client.get(f"/ledger/entries/{seq}", headers=auditor).json()
        assert p["seq"] == seq and p["leaf_index"] == seq - 1 and p["tree_size"] == second.size
        assert p["entry_hash"] == entry["entry_hash"]
        assert p["leaf_hash"] == leaf_hash(bytes.fromhex(entry["entry_hash"])).hex()
        hashes = [bytes.fromhex(h) for h in p["hashes"]]
        assert verify_inclusion(bytes.fromhex(p["leaf_hash"]), p["leaf_index"], p["tree_size"], hashes,
                                bytes.fromhex(p["root"]))  # fmt: skip
        assert p["root"] == second.root.hex()
        signed = verify_checkpoint(p["checkpoint"], trusted, origin=origin_for("test-node"))
        assert signed.root.hex() == p["root"] and signed.size == p["tree_size"]
        # A proof that was tampered with does not verify.
        if hashes:
            bad = [hashes[0][::-1], *hashes[1:]]
            assert not verify_inclusion(bytes.fromhex(p["leaf_hash"]), p["leaf_index"], p["tree_size"], bad,
                                        bytes.fromhex(p["root"]))  # fmt: skip

    # Against the earlier checkpoint.
    old = client.get("/ledger/entries/1/proof", params={"tree_size": first.size}, headers=auditor).json()
    assert old["tree_size"] == first.size and old["root"] == first.root.hex()
    assert verify_inclusion(bytes.fromhex(old["leaf_hash"]), 0, first.size, [bytes.fromhex(h) for h in old["hashes"]],
                            first.root)  # fmt: skip
    # Outside any checkpoint: 404, not 500.
    assert client.get(f"/ledger/entries/{second.size + 1}/proof", headers=auditor).status_code == 404
    too_big = client.get("/ledger/entries/1/proof", params={"tree_size": second.size + 5}, headers=auditor)
    assert too_big.status_code == 404
    beyond = client.get(f"/ledger/entries/{first.size + 1}/proof", params={"tree_size": first.size}, headers=auditor)
    assert beyond.status_code == 404


def test_verify_ledger_and_tampering(home: Path, app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    auditor = auth(keys[Role.AUDITOR])
    decision = decide(client, keys[Role.AGENT], SEARCH)
    decide(client, keys[Role.AGENT], DENIED)
    good = client.get("/ledger/verify", headers=auditor).json()
    assert good["valid"] is True and good["chain_intact"] is True and good["signatures_valid"] is True
    assert good["entries_verified"] == ledger_of(app).head()[0]
    assert good["details"]["valid"] is True
    assert "first_bad_seq" not in good["details"]

    seq = decision["ledger_entry_id"]
    tamper_body(home, seq, b'"approved"', b'"denied"')
    bad = client.get("/ledger/verify", headers=auditor)
    assert bad.status_code == 200
    report = bad.json()
    assert report["valid"] is False
    assert report["details"]["valid"] is False
    assert report["details"]["first_bad_seq"] == seq
    assert report["details"]["reason"]
    assert not (report["chain_intact"] and report["signatures_valid"])
    metrics = metric_samples(client.get("/metrics").text)
    assert metrics[("lexecon_ledger_verify_valid", frozenset())] == 0


def test_verify_ledger_trusting_checkpoints(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    decide(client, keys[Role.AGENT], SEARCH)
    ledger_of(app).checkpoint()
    report = client.get("/ledger/verify", params={"trust_checkpoints": "true"}, headers=auth(keys[Role.AUDITOR]))
    assert report.status_code == 200 and report.json()["valid"] is True


def test_export_is_a_verifiable_bundle(
    app: FastAPI, client: TestClient, keys: dict[Role, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide(client, keys[Role.AGENT], SEARCH)
    decide(client, keys[Role.AGENT], ESCALATED)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the server stages the zip
    response = client.get("/ledger/export", headers=auth(keys[Role.AUDITOR]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert "lexecon-ledger-test-node.zip" in response.headers["content-disposition"]
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(response.content)
    assert zipfile.is_zipfile(io.BytesIO(response.content))
    report = verify_bundle(bundle, app.state.lexecon.governor.public_keys)
    assert report.valid, report.to_dict()
    assert report.entries_verified == ledger_of(app).head()[0]
    assert list(scratch.iterdir()) == []  # the staged file is removed once sent
    # A modified bundle does not verify.
    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["entries.jsonl"] = files["entries.jsonl"].replace(b'"decision"', b'"decisioN"', 1)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    assert not verify_bundle(broken, app.state.lexecon.governor.public_keys).valid


def test_ledger_keys(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    jwks = client.get("/ledger/keys", headers=auth(keys[Role.AUDITOR])).json()
    kids = {k["kid"] for k in jwks["keys"]}
    assert app.state.lexecon.governor.node.keys.active_kid in kids
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" and "d" not in k for k in jwks["keys"])
    public = client.get("/.well-known/jwks.json").json()
    assert {k["kid"] for k in public["keys"]} <= kids


@pytest.mark.parametrize("stored", [b"\xff\xfe not utf-8", "a text value, not a blob"], ids=["binary", "text"])
def test_reading_a_tampered_entry_is_not_a_server_error(
    home: Path, app: FastAPI, keys: dict[Role, str], stored: Any
) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        seq = decide(client, keys[Role.AGENT], SEARCH)["ledger_entry_id"]
        with sqlite3.connect(home / "ledger.db") as db:
            db.execute("UPDATE ledger_entries SET body = ? WHERE seq = ?", (stored, seq))
        auditor = auth(keys[Role.AUDITOR])
        assert client.get("/ledger/verify", headers=auditor).json()["valid"] is False  # verify copes
        assert client.get(f"/ledger/entries/{seq}", headers=auditor).status_code < 500
        assert client.get("/ledger/entries", headers=auditor).status_code < 500


# -- policies --------------------------------------------------------------------------------------------------------


def test_current_policy(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    policy = client.get("/policies", headers=auth(keys[Role.AUDITOR])).json()
    assert policy["policy_version"] == app.state.lexecon.governor.policy.version
    assert policy["name"] == "test-policy" and policy["mode"] == "strict"
    assert policy["terms"] == 4 and policy["relations"] == 3
    assert len(policy["document"]["terms"]) == 4


def test_load_policy(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    operator = keys[Role.OPERATOR]
    lookup = {"actor": "ai_agent:support", "tool": "lookup"}
    assert decide(client, keys[Role.AGENT], lookup)["outcome"] == "denied"
    old_version = client.get("/policies", headers=auth(operator)).json()["policy_version"]

    response = client.post("/policies/load", json={"document": NEW_POLICY, "source": "ci"}, headers=auth(operator))
    assert response.status_code == 200, response.text
    loaded = response.json()
    assert loaded["policy_version"] != old_version

    decision = decide(client, keys[Role.AGENT], lookup)
    assert decision["outcome"] == "approved"
    assert decision["policy_version"] == loaded["policy_version"]
    assert decide(client, keys[Role.AGENT], SEARCH)["outcome"] == "denied"  # the old policy is gone

    entry = ledger_of(app).get(loaded["ledger_entry_id"])
    assert entry is not None and entry.entry_type == "policy_loaded"
    assert entry.data["policy_version"] == loaded["policy_version"]
    assert entry.data["source"] == f"ci (by apikey:{key_id(operator)})"
    assert entry.data["document"]["name"] == "lookup-policy"
    current = client.get("/policies", headers=auth(operator)).json()
    assert current["policy_version"] == loaded["policy_version"] and current["name"] == "lookup-policy"


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({**NEW_POLICY, "mode": "lenient"}, "mode"),
        ({**NEW_POLICY, "relations": [{**NEW_POLICY["relations"][0], "relation_type": "allows"}]},
         "relations[0].relation_type"),
        ({**NEW_POLICY, "terms": [{"term_id": "x", "term_type": "actor"}]}, "terms[0].value"),
        ({**NEW_POLICY, "extra": True}, "extra"),
        ({**NEW_POLICY, "relations": [{"relation_type": "permits", "source_term_id": "agents",
                                       "target_term_id": "nowhere"}]}, "nowhere"),
    ],
)  # fmt: skip
def test_load_invalid_policy_is_422_naming_the_field(
    app: FastAPI, client: TestClient, keys: dict[Role, str], document: dict[str, Any], names: str
) -> None:
    head, version = ledger_of(app).head()[0], app.state.lexecon.governor.policy.version
    response = client.post("/policies/load", json={"document": document}, headers=auth(keys[Role.OPERATOR]))
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert names in response.json()["message"]
    assert ledger_of(app).head()[0] == head
    assert app.state.lexecon.governor.policy.version == version


def test_load_policy_body_validation(client: TestClient, keys: dict[Role, str]) -> None:
    for body in ({}, {"document": []}, {"document": NEW_POLICY, "source": ""}, {"document": NEW_POLICY, "x": 1}):
        response = client.post("/policies/load", json=body, headers=auth(keys[Role.OPERATOR]))
        assert response.status_code == 422, body


def test_pinned_policy_cannot_be_loaded(home: Path, tmp_path: Path) -> None:
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(TEST_POLICY)
    app = create_app(load_settings(home, policy_file=pinned, policy_sync_seconds=0))
    _, admin = app.state.lexecon.api_keys.create("admin", Role.ADMIN, by="test")
    with TestClient(app) as client:
        head = ledger_of(app).head()[0]
        response = client.post("/policies/load", json={"document": NEW_POLICY}, headers=auth(admin))
        assert response.status_code == 409
        assert response.json()["error"] == "conflict"
        assert "LEXECON_POLICY_FILE" in response.json()["message"]
        assert ledger_of(app).head()[0] == head
        # ...and a policy loaded elsewhere is not adopted either.
        ledger_of(app).append("policy_loaded", {"policy_version": "x", "source": "t", "document": NEW_POLICY})
        assert sync_policy(app.state.lexecon) is False
        assert client.get("/policies", headers=auth(admin)).json()["name"] == "test-policy"


@pytest.fixture
def second_app(home: Path) -> Iterator[tuple[FastAPI, TestClient]]:
    """Another server over the same home and database (as `lexecon server` on a second host would be)."""
    other = create_app(
        load_settings(home, rate_limit_per_second=10_000, rate_limit_burst=10_000, policy_sync_seconds=0)
    )
    with TestClient(other) as client:
        yield other, client


def test_policy_sync_between_servers(
    client: TestClient, keys: dict[Role, str], second_app: tuple[FastAPI, TestClient]
) -> None:
    other, other_client = second_app
    lookup = {"actor": "ai_agent:support", "tool": "lookup"}
    assert decide(other_client, keys[Role.AGENT], lookup)["outcome"] == "denied"  # keys are shared too
    assert sync_policy(other.state.lexecon) is False  # nothing new yet

    loaded = client.post("/policies/load", json={"document": NEW_POLICY}, headers=auth(keys[Role.OPERATOR])).json()
    assert decide(other_client, keys[Role.AGENT], lookup)["outcome"] == "denied"  # not followed yet (sync is off)
    assert sync_policy(other.state.lexecon) is True
    assert sync_policy(other.state.lexecon) is False  # idempotent
    decision = decide(other_client, keys[Role.AGENT], lookup)
    assert decision["outcome"] == "approved"
    assert decision["policy_version"] == loaded["policy_version"]
    assert other_client.get("/policies", headers=auth(keys[Role.AUDITOR])).json()["name"] == "lookup-policy"


def test_policy_follower_adopts_in_the_background(home: Path, client: TestClient, keys: dict[Role, str]) -> None:
    follower = create_app(load_settings(home, policy_sync_seconds=0.05))
    with TestClient(follower) as other_client:
        loaded = client.post("/policies/load", json={"document": NEW_POLICY}, headers=auth(keys[Role.OPERATOR]))
        version = loaded.json()["policy_version"]
        deadline = time.monotonic() + 10
        while follower.state.lexecon.governor.policy.version != version:
            assert time.monotonic() < deadline, "the follower never adopted the new policy"
            time.sleep(0.02)
        assert decide(other_client, keys[Role.AGENT], {"actor": "ai_agent:a", "tool": "lookup"})["outcome"] == (
            "approved"
        )


# -- API keys --------------------------------------------------------------------------------------------------------


def test_create_list_and_use_a_key(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    admin = auth(keys[Role.ADMIN])
    created = client.post(
        "/apikeys", json={"name": "billing bot", "role": "agent", "actors": "ai_agent:*"}, headers=admin
    )
    assert created.status_code == 201
    record = created.json()
    assert re.match(API_KEY_RE, record["api_key"])
    assert record["key_id"] == key_id(record["api_key"])
    assert record["role"] == "agent" and record["name"] == "billing bot" and record["revoked_at"] is None
    secret = record["api_key"]

    listed = client.get("/apikeys", headers=admin)
    assert listed.status_code == 200
    assert secret not in listed.text and secret[21:] not in listed.text
    mine = [k for k in listed.json() if k["key_id"] == record["key_id"]]
    assert mine == [{k: record[k] for k in ("key_id", "name", "role", "actors", "created_at", "revoked_at")}]
    assert all("api_key" not in k for k in listed.json())
    assert len(listed.json()) == len(Role) + 1

    assert decide(client, secret, SEARCH)["outcome"] == "approved"
    entry = ledger_of(app).entries(entry_type="api_key_created", newest_first=True, limit=1)[0]
    digest = hashlib.sha256(b"lexecon:apikey:v1\x00" + secret.encode()).hexdigest()
    by = f"apikey:{key_id(keys[Role.ADMIN])}"
    assert entry.data == {"key_id": record["key_id"], "name": "billing bot", "role": "agent",
                          "actors": "ai_agent:*", "by": by, "key_sha256": digest}  # fmt: skip
    assert secret[21:].encode() not in entry.body


def test_revoke_a_key(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    admin = auth(keys[Role.ADMIN])
    created = client.post("/apikeys", json={"name": "temp", "role": "agent", "actors": "*"}, headers=admin).json()
    secret = created["api_key"]
    assert decide(client, secret, SEARCH)["outcome"] == "approved"  # authenticated, so cached

    revoked = client.delete(f"/apikeys/{created['key_id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert "api_key" not in revoked.json()
    refused = client.post("/decide", json=SEARCH, headers=auth(secret))
    assert refused.status_code == 401  # at once, despite the cache
    assert refused.headers["www-authenticate"] == "Bearer"
    listed = {k["key_id"]: k for k in client.get("/apikeys", headers=admin).json()}
    assert listed[created["key_id"]]["revoked_at"] == revoked.json()["revoked_at"]

    again = client.delete(f"/apikeys/{created['key_id']}", headers=admin)
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"
    unknown = client.delete("/apikeys/0123456789abcdef", headers=admin)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    assert client.delete("/apikeys/NOT-A-KEY-ID", headers=admin).status_code == 422
    itself = client.delete(f"/apikeys/{key_id(keys[Role.ADMIN])}", headers=admin)
    assert itself.status_code == 409
    assert client.get("/apikeys", headers=admin).status_code == 200  # still valid

    entries = ledger_of(app).entries(entry_type="api_key_revoked")
    assert [e.data["key_id"] for e in entries] == [created["key_id"]]  # once, despite the second attempt
    assert entries[0].data["by"] == f"apikey:{key_id(keys[Role.ADMIN])}"
    assert secret[21:].encode() not in entries[0].body


def test_no_secret_in_any_ledger_entry(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    admin = auth(keys[Role.ADMIN])
    made = [client.post("/apikeys", json={"name": f"k{i}", "role": "auditor"}, headers=admin).json() for i in range(3)]
    client.delete(f"/apikeys/{made[0]['key_id']}", headers=admin)
    everything = b"".join(e.body for e in ledger_of(app).entries())
    for secret in [m["api_key"] for m in made] + list(keys.values()):
        assert secret[21:].encode() not in everything
        assert secret.encode() not in everything


@pytest.mark.parametrize(
    "body",
    [{"name": "", "role": "agent"}, {"name": " leading space", "role": "agent"}, {"name": "x" * 129, "role": "agent"},
     {"name": "ok", "role": "root"}, {"name": "ok"}, {"name": "bad\nname", "role": "agent"}],
    ids=str,
)  # fmt: skip
def test_create_key_validation(app: FastAPI, client: TestClient, keys: dict[Role, str], body: dict[str, Any]) -> None:
    head = ledger_of(app).head()[0]
    response = client.post("/apikeys", json=body, headers=auth(keys[Role.ADMIN]))
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert ledger_of(app).head()[0] == head


# -- health, node info and metrics ---------------------------------------------------------------------------------


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["node_id"] == "test-node"
    assert body["checks"] == {"database": "ok", "ledger": "ok"}


def _broken_engine() -> Any:
    return create_engine("sqlite:////nonexistent-lexecon-dir/nowhere/ledger.db")


@pytest.mark.parametrize("how", ["sqlite-gone", "postgres-unreachable", "head-raises"])
def test_health_is_503_without_a_database(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    ledger = ledger_of(app)
    if how == "sqlite-gone":
        monkeypatch.setattr(ledger, "_reader", _broken_engine())
    elif how == "postgres-unreachable":
        pytest.importorskip("psycopg")
        engine = create_engine("postgresql+psycopg://lexecon@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
        monkeypatch.setattr(ledger, "_reader", engine)
    else:

        def head() -> Any:
            raise RuntimeError("connection refused: secret-host:5432")

        monkeypatch.setattr(ledger, "head", head)
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("unavailable (")
    assert "secret-host" not in response.text


def test_database_outage_during_authentication_is_503(
    app: FastAPI, keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_of(app)
    monkeypatch.setattr(ledger, "_reader", _broken_engine())
    monkeypatch.setattr(ledger, "_synced_at", 0.0)  # keys must be looked up again: the ledger is unreachable
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT]))
    assert response.status_code == 503, response.text
    assert "retry-after" in response.headers


def test_decide_fails_closed_when_the_ledger_cannot_be_written(
    app: FastAPI, client: TestClient, keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = keys[Role.AGENT]
    decide(client, agent, SEARCH)  # the key is now cached: this exercises the ledger, not authentication
    ledger = ledger_of(app)
    monkeypatch.setattr(ledger, "_writer", _broken_engine())
    monkeypatch.setattr(ledger._appender, "_conn", None)
    response = client.post("/decide", json=SEARCH, headers=auth(agent))
    assert response.status_code == 503
    assert response.json()["error"] == "undecided"
    assert response.headers["retry-after"] == "1"
    assert "capability_token" not in response.text


def test_node_info(app: FastAPI, client: TestClient) -> None:
    info = client.get("/.well-known/lexecon.json").json()
    assert info["node_id"] == "test-node"
    assert info["jwks_uri"] == "/.well-known/jwks.json"
    assert info["token_ttl_seconds"] == 60 and info["token_leeway_seconds"] == 5
    jwks = client.get(info["jwks_uri"]).json()
    assert app.state.lexecon.governor.node.keys.active_kid in {k["kid"] for k in jwks["keys"]}


def test_metrics(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    decide(client, keys[Role.AGENT], SEARCH)
    decide(client, keys[Role.AGENT], SEARCH)
    decide(client, keys[Role.AGENT], DENIED)
    decide(client, keys[Role.AGENT], ESCALATED)
    client.get("/apikeys", headers=auth("lxk_0123456789abcdef_" + "A" * 43))  # an auth failure
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'lexecon_decisions_total{outcome="approved"} 2.0' in text
    samples = metric_samples(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("lexecon_decisions_total", outcome="approved") == 2
    assert value("lexecon_decisions_total", outcome="denied") == 1
    assert value("lexecon_decisions_total", outcome="escalated") == 1
    assert value("lexecon_decision_seconds_count") == 4
    assert value("lexecon_decision_seconds_bucket", le="+Inf") == 4
    assert value("lexecon_decision_seconds_sum") > 0
    assert value("lexecon_ledger_entries") == ledger_of(app).head()[0]
    assert value("lexecon_escalations_open") == 1
    assert value("lexecon_ledger_verify_valid") == -1  # no verification in this process yet
    assert value("lexecon_auth_failures_total") == 1
    client.get("/ledger/verify", headers=auth(keys[Role.AUDITOR]))
    assert metric_samples(client.get("/metrics").text)[("lexecon_ledger_verify_valid", frozenset())] == 1


def test_metrics_count_a_retry_as_a_replay_not_a_decision(client: TestClient, keys: dict[Role, str]) -> None:
    for _ in range(3):
        decide(client, keys[Role.AGENT], SEARCH, **{"Idempotency-Key": "order-9"})
    samples = metric_samples(client.get("/metrics").text)
    assert samples[("lexecon_decisions_total", frozenset({("outcome", "approved")}))] == 1
    assert samples[("lexecon_decision_replays_total", frozenset())] == 2
    assert samples[("lexecon_decision_seconds_count", frozenset())] == 3  # every request's time is still observed


# -- key rotation and the shared replay cache -------------------------------------------------------------------------


def test_tokens_and_ledger_survive_key_rotation(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    agent, auditor = keys[Role.AGENT], auth(keys[Role.AUDITOR])
    governor = app.state.lexecon.governor
    before = decide(client, agent, SEARCH)
    retried = decide(client, agent, SEARCH, **{"Idempotency-Key": "across-rotation"})
    old_kid = governor.node.keys.active_kid
    new_kid = governor.rotate_keys()
    assert new_kid != old_kid
    after = decide(client, agent, SEARCH)
    assert verify(client, agent, after["capability_token"])["valid"] is True
    assert verify(client, agent, after["capability_token"])["claims"]["kid"] == new_kid
    assert verify(client, agent, before["capability_token"])["valid"] is True  # the old key is within its grace
    again = decide(client, agent, SEARCH, **{"Idempotency-Key": "across-rotation"})
    assert again["decision_id"] == retried["decision_id"] and again["token_id"] == retried["token_id"]
    assert verify(client, agent, again["capability_token"])["valid"] is True
    assert {old_kid, new_kid} <= {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}
    assert {old_kid, new_kid} <= {k["kid"] for k in client.get("/ledger/keys", headers=auditor).json()["keys"]}
    assert client.get("/ledger/verify", headers=auditor).json()["valid"] is True


def test_consumed_tokens_are_shared_through_redis(home: Path, redis_url: str) -> None:
    """With LEXECON_REDIS_URL, a token consumed through one server is refused by every other."""
    servers = [
        create_app(load_settings(home, redis_url=redis_url, policy_sync_seconds=0, rate_limit_burst=10_000))
        for _ in range(2)
    ]
    _, agent = servers[0].state.lexecon.api_keys.create("redis-agent", Role.AGENT, by="test")
    with TestClient(servers[0]) as a, TestClient(servers[1]) as b:
        token = decide(a, agent, SEARCH)["capability_token"]
        assert verify(b, agent, token)["valid"] is True  # checking consumes nothing
        assert verify(a, agent, token, consume=True)["valid"] is True
        refused = verify(b, agent, token, consume=True)
        assert refused["valid"] is False and refused["reason"] == "replayed"


def test_consuming_fails_closed_when_redis_is_down(home: Path) -> None:
    app = create_app(load_settings(home, redis_url="redis://127.0.0.1:1/0", policy_sync_seconds=0))
    _, agent = app.state.lexecon.api_keys.create("agent", Role.AGENT, by="test")
    with TestClient(app) as client:
        token = decide(client, agent, SEARCH)["capability_token"]  # rate limiting falls back to memory
        assert verify(client, agent, token)["valid"] is True
        result = verify(client, agent, token, consume=True)
        assert result["valid"] is False
        assert result["reason"] == "replay_check_unavailable"
