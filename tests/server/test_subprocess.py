"""A real ``lexecon server`` process (two workers) on a free localhost port, PostgreSQL as the store, Redis shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lexecon_core import GovernanceError, RemoteGovernor
from tests._servers import free_port, start_server, stop_server
from tests.conftest import TEST_POLICY

LEXECON = [sys.executable, "-m", "lexecon_core"]


def _cli(env: dict[str, str], *argv: str) -> str:
    result = subprocess.run([*LEXECON, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def served(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """(base URL, {role: key}, env) of a running two-worker server over PostgreSQL."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        "LEXECON_HOME": str(home),
        "LEXECON_REDIS_URL": redis_url,
        "LEXECON_API_KEY_CACHE_SECONDS": "0.5",
        "LEXECON_POLICY_SYNC_SECONDS": "0.2",
    }
    _cli(env, "init", "--node-id", "served", "--database-url", pg_url)
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    _cli(env, "policy", "load", str(policy))
    keys = {}
    for role in ("agent", "admin"):
        argv = ["apikey", "create", "--name", f"t-{role}", "--role", role, "--actor", "ai_agent:*", "--json"]
        created = json.loads(_cli(env, *argv))
        keys[role] = created["api_key"]
    port = free_port()
    proc = start_server([*LEXECON, "server", "--port", str(port), "--workers", "2", "--no-access-log"], env)
    try:
        time.sleep(0.5)  # both workers up
        yield f"http://127.0.0.1:{port}", keys, env
    finally:
        stop_server(proc)
        assert proc.returncode == 0  # two workers: the supervisor exits 0


def test_remote_governor_against_a_real_server(served: tuple[str, dict[str, str], dict[str, str]]) -> None:
    base, keys, _env = served
    with RemoteGovernor(base, api_key=keys["agent"]) as governor:
        decision = governor.decide({"actor": "ai_agent:bot", "tool": "refund", "tool_args": {"amount": 10}})
        assert decision.approved and decision.capability_token
        claims = governor.verify_token(decision.capability_token, tool="refund", args={"amount": 10})
        assert claims.decision_id == decision.decision_id
        assert not governor.decide({"actor": "ai_agent:bot", "tool": "delete_user"}).approved

    # Both workers share the database and Redis: one idempotency key, many connections -> one decision.
    headers = {"Authorization": f"Bearer {keys['agent']}", "Idempotency-Key": "same-call"}
    body = {"actor": "ai_agent:bot", "tool": "search", "tool_args": {"q": "x"}}
    ids = {httpx.post(f"{base}/decide", json=body, headers=headers).json()["decision_id"] for _ in range(12)}
    assert len(ids) == 1
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    page = httpx.get(f"{base}/ledger/entries", params={"tool": "search", "limit": 1000}, headers=admin).json()
    assert len(page["entries"]) == 1

    verified = httpx.get(f"{base}/ledger/verify", headers=admin).json()
    assert verified["valid"] and verified["chain_intact"]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'lexecon_decisions_total{outcome="approved"}' in metrics
    assert "lexecon_ledger_entries" in metrics


def test_revocation_and_shutdown(served: tuple[str, dict[str, str], dict[str, str]]) -> None:
    base, keys, env = served
    headers = {"Authorization": f"Bearer {keys['agent']}"}
    assert httpx.post(f"{base}/decide", json={"actor": "ai_agent:a", "tool": "search"}, headers=headers).is_success
    key_id = keys["agent"].split("_")[1]
    _cli(env, "apikey", "revoke", key_id)
    time.sleep(0.8)  # LEXECON_API_KEY_CACHE_SECONDS=0.5 in every worker
    for _ in range(4):  # whichever worker answers
        refused = httpx.post(f"{base}/decide", json={"actor": "ai_agent:a", "tool": "search"}, headers=headers)
        assert refused.status_code == 401
    with RemoteGovernor(base, api_key=keys["agent"]) as governor, pytest.raises(GovernanceError):
        governor.decide({"actor": "ai_agent:a", "tool": "search"})
