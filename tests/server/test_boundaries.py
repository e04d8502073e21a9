"""What a key may do beyond its role, and what the server withholds: actor binding, consuming tokens, whole-ledger
jobs, database detail in errors, revocation against a racing check, API keys echoed back to RemoteGovernor."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import GovernanceError, LedgerError, RemoteGovernor
from lexecon_core.auth import Role
from tests.server.conftest import auth

SEARCH = {"actor": "ai_agent:support_bot", "tool": "search", "tool_args": {"q": "x"}}


def test_an_agent_key_decides_only_for_its_actors(app: FastAPI, client: TestClient) -> None:
    _, key = app.state.lexecon.api_keys.create("support", Role.AGENT, by="test", actors="ai_agent:support_*")
    assert client.post("/decide", json=SEARCH, headers=auth(key)).json()["outcome"] == "approved"
    other = client.post("/decide", json={**SEARCH, "actor": "ai_agent:admin_bot"}, headers=auth(key))
    assert other.status_code == 403
    assert "ai_agent:support_*" in other.json()["message"]
    assert app.state.lexecon.governor.node.ledger.entries(actor="ai_agent:admin_bot") == []  # nothing recorded


def test_an_agent_key_over_http_must_name_its_actors(client: TestClient, keys: dict[Role, str]) -> None:
    admin = auth(keys[Role.ADMIN])
    refused = client.post("/apikeys", json={"name": "bot", "role": "agent"}, headers=admin)
    assert refused.status_code == 422 and "actors" in refused.json()["message"]
    made = client.post("/apikeys", json={"name": "bot", "role": "agent", "actors": "ai_agent:bot"}, headers=admin)
    assert made.status_code == 201 and made.json()["actors"] == "ai_agent:bot"


def test_only_agents_consume_tokens(client: TestClient, keys: dict[Role, str]) -> None:
    decision = client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT])).json()
    check = {"token": decision["capability_token"], "tool": "search", "args": {"q": "x"}}
    for role in (Role.AUDITOR, Role.OPERATOR, Role.ADMIN):
        assert client.post("/decide/verify", json=check, headers=auth(keys[role])).json()["valid"]
        consumed = client.post("/decide/verify", json={**check, "consume": True}, headers=auth(keys[role]))
        assert consumed.status_code == 403
    first = client.post("/decide/verify", json={**check, "consume": True}, headers=auth(keys[Role.AGENT])).json()
    again = client.post("/decide/verify", json={**check, "consume": True}, headers=auth(keys[Role.AGENT])).json()
    assert first["valid"] and not again["valid"] and again["reason"] == "replayed"


def test_whole_ledger_jobs_refuse_rather_than_pile_up(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    auditor = auth(keys[Role.AUDITOR])
    app.state.lexecon.heavy = asyncio.Semaphore(0)  # as if a verification were running
    for path in ("/ledger/verify", "/ledger/export"):
        busy = client.get(path, headers=auditor)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "5", path
    assert client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT])).status_code == 200
    app.state.lexecon.heavy = asyncio.Semaphore(1)
    assert client.get("/ledger/verify", headers=auditor).json()["valid"]


def test_database_detail_stays_in_the_log(
    app: FastAPI,
    client: TestClient,
    keys: dict[Role, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = app.state.lexecon.governor.node.ledger

    def down(*_args: object, **_kwargs: object) -> None:
        raise LedgerError('ledger write failed: connection to server at "10.9.8.7", port 5432 failed')

    monkeypatch.setattr(ledger, "append", down)
    refused = client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT]))
    assert refused.status_code == 503 and refused.json()["error"] == "undecided"
    assert "10.9.8.7" not in refused.text and refused.headers["retry-after"] == "1"
    assert "10.9.8.7" in caplog.text

    monkeypatch.setattr(ledger, "get", lambda *_a, **_k: (_ for _ in ()).throw(LedgerError("disk at /srv/x failed")))
    unavailable = client.get("/ledger/entries/1", headers=auth(keys[Role.AUDITOR]))
    assert unavailable.status_code == 503 and unavailable.json()["error"] == "unavailable"
    assert "/srv/x" not in unavailable.text


def test_a_revocation_beats_a_check_that_read_the_key_before_it(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    import lexecon_core.auth.apikeys as apikeys

    store = app.state.lexecon.api_keys
    record, key = store.create("racer", Role.AGENT, by="test")
    real_compare = apikeys.hmac.compare_digest
    raced = []

    def compare_then_revoke(a: bytes, b: bytes) -> bool:
        # The check has read the row (active); the revocation commits before it caches its result.
        if not raced:
            raced.append(True)
            store.revoke(record.key_id, by="test")
        return real_compare(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", compare_then_revoke)
    assert store.authenticate(key) is None
    monkeypatch.undo()
    assert raced and store.cached(key) is None and store.authenticate(key) is None


def test_remote_errors_never_carry_a_key_echoed_back(keys: dict[Role, str]) -> None:
    key = keys[Role.AGENT]

    def echo(request: httpx.Request) -> httpx.Response:
        echoed = "x" * 280 + request.headers["authorization"]  # straddles the 300-character cut
        return httpx.Response(401, json={"error": "unauthorized", "message": echoed})

    governor = RemoteGovernor(
        "https://lexecon.test", api_key=key, client=httpx.Client(transport=httpx.MockTransport(echo))
    )
    with pytest.raises(GovernanceError) as refused:
        governor.decide(SEARCH)
    assert "lxk_" not in str(refused.value) and key[:12] not in str(refused.value)


def test_unauthenticated_database_routes_are_rate_limited_per_address(home: object) -> None:
    from lexecon_core import load_settings
    from lexecon_core.server import create_app

    app = create_app(load_settings(home, rate_limit_per_second=1, rate_limit_burst=3))  # type: ignore[arg-type]
    with TestClient(app) as client:
        statuses = [client.get("/health").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert client.get("/metrics").status_code == 429  # the same address, the same budget
        assert client.get("/.well-known/jwks.json").status_code == 200  # no database, no limit
