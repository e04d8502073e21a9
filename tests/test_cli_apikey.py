"""``lexecon apikey`` and ``lexecon server`` argument handling, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lexecon_core.auth import ApiKeyStore
from lexecon_core.node import open_node
from tests.test_cli import run


def test_create_list_revoke(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["apikey", "create", "--name", "support-bot", "--role", "agent", "--actor", "ai_agent:support_*"]
    code, out, _ = run(capsys, *argv, "--home", str(home))
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("lxk_")
    node = open_node(home)
    store = ApiKeyStore(node.ledger)
    principal = store.authenticate(key)
    assert principal is not None and principal.name == "support-bot" and principal.role.value == "agent"

    code, out, _ = run(capsys, "apikey", "list", "--json", "--home", str(home))
    listed = json.loads(out)
    assert [k["name"] for k in listed] == ["support-bot"] and key not in out
    assert listed[0]["revoked_at"] is None

    code, out, _ = run(capsys, "apikey", "revoke", principal.key_id, "--home", str(home))
    assert code == 0 and "revoked" in out
    assert ApiKeyStore(node.ledger, cache_seconds=0).authenticate(key) is None
    types = [e.entry_type for e in node.ledger.entries()]
    assert types.count("api_key_created") == 1 and types.count("api_key_revoked") == 1
    secret = key.split("_", 2)[2]
    assert all(secret not in e.body.decode() for e in node.ledger.entries())  # no secret in the ledger
    store.close()
    node.close()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["apikey", "create", "--name", "x", "--role", "wizard"], "--role"),
        (["apikey", "create", "--name", "", "--role", "agent", "--actor", "*"], "name"),
        (["apikey", "create", "--name", "bot", "--role", "agent"], "--actor"),
        (["apikey", "revoke", "0123456789abcdef"], "no API key"),
        (["server", "--port", "70000"], "--port"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, *argv, "--home", str(home))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and expected in err


def test_server_refuses_a_missing_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "server", "--home", str(tmp_path / "nothing"))
    assert code == 2 and "lexecon init" in err
