"""The ``lexecon`` CLI, run in-process: outputs, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lexecon_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUPPORT_POLICY = ROOT / "examples" / "policies" / "support.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


@pytest.fixture
def cli_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    home = tmp_path / "node"
    code, out, _ = run(capsys, "init", "--node-id", "cli-node", "--home", str(home))
    assert code == 0 and "initialised node cli-node" in out
    code, out, _ = run(capsys, "policy", "load", str(SUPPORT_POLICY), "--home", str(home))
    assert code == 0 and "loaded policy support-agent" in out
    return home


def test_init_refuses_an_existing_home(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "init", "--node-id", "cli-node", "--home", str(cli_home))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "already a Lexecon home" in err and "--force" in err
    code, _, _ = run(capsys, "init", "--node-id", "cli-node", "--home", str(cli_home), "--force")
    assert code == 0


def test_decide_json_and_human(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "decide", "--home", str(cli_home), "--actor", "ai_agent:support_bot", "--tool", "issue_refund",
        "--arg", "order_id=1001", "--arg", "amount_cents=2500", "--context", "ticket_id=T-7", "--json",
    )  # fmt: skip
    assert code == 0
    decision = json.loads(out)
    assert decision["outcome"] == "approved" and decision["capability_token"]
    code, out, _ = run(
        capsys, "decide", "--home", str(cli_home), "--actor", "ai_agent:support_bot", "--tool", "delete_customer",
        "--intent", "close account",
    )  # fmt: skip
    assert code == 0 and out.startswith("denied") and "forbids:agents->deletes" in out
    code, out, _ = run(
        capsys, "decide", "--home", str(cli_home), "--actor", "ai_agent:support_bot", "--tool", "issue_refund",
        "--context", "ticket_id=T-7", "--risk-level", "critical",
    )  # fmt: skip
    assert code == 0 and out.startswith("escalated") and "esc_" in out


def test_requires_relation_via_cli(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "decide", "--home", str(cli_home), "--actor", "ai_agent:support_bot", "--tool", "issue_refund", "--json"
    )
    assert code == 0 and json.loads(out)["outcome"] == "denied"
    assert "requires:refunds->ticket" in json.loads(out)["reasoning"]


def test_verify_ledger_exit_codes(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify-ledger", "--home", str(cli_home), "--json")
    report = json.loads(out)
    assert code == 0 and report["valid"] and report["chain_intact"] and report["entries_verified"] == 2
    assert report["status"] == "valid" and report["keys_pinned"] is True  # the node's own keys
    import sqlite3

    with sqlite3.connect(cli_home / "ledger.db") as db:
        db.execute("UPDATE ledger_entries SET body = replace(body, 'support', 'suppXrt') WHERE seq = 2")
    code, out, _ = run(capsys, "verify-ledger", "--home", str(cli_home), "--json")
    report = json.loads(out)
    assert code == 1 and not report["valid"] and report["first_bad_seq"] == 2 and report["status"] == "invalid"
    code, out, _ = run(capsys, "verify-ledger", "--home", str(cli_home))
    assert code == 1 and "INVALID" in out and "first bad entry 2" in out


def test_policy_show_and_test(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "show", "--home", str(cli_home), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["name"] == "support-agent" and shown["version"].startswith("sha256:")
    code, out, _ = run(
        capsys, "policy", "test", str(SUPPORT_POLICY), "--actor", "ai_agent:support_bot", "--tool", "get_customer",
        "--data-class", "pii", "--json",
    )  # fmt: skip
    explained = json.loads(out)
    assert code == 0 and explained["outcome"] == "approved"
    assert {m["relation_id"] for m in explained["matched_relations"]} == {
        "implies:support_agents->role_support",
        "permits:role_support->customer_read",
    }
    code, out, _ = run(
        capsys, "policy", "test", str(SUPPORT_POLICY), "--actor", "ai_agent:support_bot", "--tool", "send_email",
        "--data-class", "pii", "--context", "destination=external",
    )  # fmt: skip
    assert code == 0 and out.startswith("denied") and "conflicts:pii->external" in out


def test_bad_policy_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mode": "strict", "terms": [{"term_id": "a", "term_type": "wizard", "value": "x"}]}))
    code, out, err = run(capsys, "policy", "test", str(bad), "--actor", "a", "--tool", "b")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "terms[0].term_type" in err and "Traceback" not in err


def test_keys_export_and_rotate(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "export", "--home", str(cli_home))
    first = json.loads(out)["keys"]
    assert code == 0 and len(first) == 1 and first[0]["kty"] == "OKP"
    code, out, _ = run(capsys, "keys", "rotate", "--home", str(cli_home))
    assert code == 0 and "rotated signing key" in out
    code, out, _ = run(capsys, "keys", "export", "--home", str(cli_home))
    assert len(json.loads(out)["keys"]) == 2
    code, out, _ = run(capsys, "verify-ledger", "--home", str(cli_home), "--json")
    assert code == 0 and json.loads(out)["valid"]


def test_ledger_list(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "decide", "--home", str(cli_home), "--actor", "ai_agent:support_bot", "--tool", "search_kb")
    code, out, _ = run(capsys, "ledger", "list", "--home", str(cli_home), "--json", "--type", "decision")
    entries = json.loads(out)
    assert code == 0 and len(entries) == 1 and entries[0]["body"]["data"]["request"]["tool"] == "search_kb"
    code, out, _ = run(capsys, "ledger", "list", "--home", str(cli_home), "--outcome", "denied", "--json")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "ledger", "list", "--home", str(cli_home))
    assert code == 0 and "policy_loaded" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["decide", "--actor", "x"],  # missing --tool
        ["no-such-command"],
        ["decide", "--actor", "x", "--tool", "y", "--arg", "novalue"],
        ["verify-ledger", "--anchor", "nonsense"],
        ["ledger", "list", "--limit", "0"],
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEXECON_HOME", str(tmp_path / "absent"))
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_invalid_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_home: Path) -> None:
    import os

    os.environ["LEXECON_TOKEN_TTL_SECONDS"] = "-5"
    try:
        code, _, err = run(capsys, "decide", "--home", str(cli_home), "--actor", "a", "--tool", "b")
    finally:
        del os.environ["LEXECON_TOKEN_TTL_SECONDS"]
    assert code == 2 and "LEXECON_TOKEN_TTL_SECONDS" in err and err.count("\n") == 1


def test_demo_runs_the_governed_langchain_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain")
    code, out, _ = run(capsys, "demo", "--home", str(tmp_path / "demo"))
    assert code == 0
    assert "ledger valid: 8 entries" in out
    assert "tools that actually ran: search_kb, get_customer, issue_refund" in out
    assert "Lexecon denied tool 'delete_customer'" in out
    assert "Lexecon denied tool 'send_email': conflict" in out
    assert "awaits human approval (escalation esc_" in out
    outcomes = [e["body"]["data"]["outcome"] for e in _ledger_json(capsys, tmp_path / "demo")]
    assert sorted(outcomes) == ["approved", "approved", "approved", "denied", "denied", "escalated"]


def _ledger_json(capsys: pytest.CaptureFixture[str], home: Path) -> list[dict]:
    code, out, _ = run(capsys, "ledger", "list", "--home", str(home), "--type", "decision", "--json")
    assert code == 0
    return json.loads(out)


def test_console_script_entry_point(tmp_path: Path) -> None:
    """The installed `lexecon` command works as a real subprocess (no traceback, exit 2 on a missing home)."""
    result = subprocess.run(
        [sys.executable, "-m", "lexecon_core", "verify-ledger", "--home", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: no Lexecon node") and "Traceback" not in result.stderr


def test_no_arguments_prints_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 0
    assert "Usage" in out + err
    assert "error:" not in err


def test_debug_shows_a_traceback_but_keeps_exit_2(
    cli_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lexecon_core.cli._node as node_cmds

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(node_cmds, "LocalGovernor", explode)
    code, _, err = run(capsys, "decide", "--home", str(cli_home), "--actor", "a", "--tool", "b")
    assert code == 2
    assert err.count("\n") == 1 and "unexpected RuntimeError: boom" in err
    monkeypatch.setenv("LEXECON_DEBUG", "1")
    code, _, err = run(capsys, "decide", "--home", str(cli_home), "--actor", "a", "--tool", "b")
    assert code == 2
    assert "Traceback" in err and "error: unexpected RuntimeError: boom" in err


def test_ledger_file_copy_is_verified_with_the_nodes_keys(
    cli_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    copy = tmp_path / "copy.db"
    with sqlite3.connect(cli_home / "ledger.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    code, out, _ = run(capsys, "verify-ledger", "--ledger-file", str(copy), "--home", str(cli_home), "--json")
    report = json.loads(out)
    assert code == 0 and report["valid"]
    assert report["key_source"].startswith("node keys in")
    # Another home: only the keys embedded in the file are at hand, which proves consistency, not authorship.
    code, out, _ = run(capsys, "verify-ledger", "--ledger-file", str(copy), "--home", str(tmp_path / "x"), "--json")
    report = json.loads(out)
    assert code == 3 and report["valid"] and report["status"] == "unpinned" and report["keys_pinned"] is False
    assert "not independently pinned" in report["key_source"]
    code, out, _ = run(capsys, "verify-ledger", "--ledger-file", str(copy), "--home", str(tmp_path / "x"))
    assert code == 3 and out.startswith("UNPINNED  2 entries consistent, but the keys came from the ledger itself")
    assert "pass --jwks" in out
    code, out, _ = run(capsys, "keys", "export", "--home", str(cli_home))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(out)
    code, out, _ = run(
        capsys, "verify-ledger", "--ledger-file", str(copy), "--home", str(tmp_path / "x"), "--jwks", str(jwks)
    )
    assert code == 0 and out.startswith("valid  2 entries verified")


def test_init_force_keeps_other_settings(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((cli_home / "config.json").read_text())
    (cli_home / "config.json").write_text(json.dumps({**config, "token_ttl_seconds": 30}))
    code, out, _ = run(capsys, "init", "--node-id", "cli-node", "--home", str(cli_home), "--force")
    assert code == 0 and "(unencrypted)" in out
    assert json.loads((cli_home / "config.json").read_text())["token_ttl_seconds"] == 30


def test_policy_test_uses_the_configured_risk_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("tool_rules:\n  - {pattern: get_customer, scores: {security: 100, privacy: 100}}\n")
    monkeypatch.setenv("LEXECON_RISK_RULES_FILE", str(rules))
    code, out, _ = run(
        capsys, "policy", "test", str(SUPPORT_POLICY), "--actor", "ai_agent:support_bot", "--tool", "get_customer",
        "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["risk"]["dimensions"]["security"] == 100


def test_server_sends_lexecon_warnings_to_stderr(
    cli_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The library's loggers have only a NullHandler; the server, an application, routes them through uvicorn's.
    uvicorn = pytest.importorskip("uvicorn")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("LEXECON_HOME", str(cli_home))  # the command sets it for its workers; undone afterwards
    code, _, _ = run(capsys, "server", "--home", str(cli_home), "--port", "0")
    assert code == 0
    config = seen["log_config"]
    assert config["loggers"]["lexecon"] == {"handlers": ["default"], "level": "INFO", "propagate": False}
    assert config["handlers"]["default"]["stream"] == "ext://sys.stderr"
