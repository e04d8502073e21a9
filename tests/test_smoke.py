from lexecon_core import LocalGovernor


def test_governor_approves_permitted_and_denies_forbidden(governor: LocalGovernor) -> None:
    approved = governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": "x"}})
    denied = governor.decide({"actor": "ai_agent:a", "tool": "delete_user", "tool_args": {"id": 1}})
    assert approved.approved
    assert approved.capability_token
    assert denied.outcome == "denied"
    assert denied.capability_token is None
    assert governor.verify_ledger().valid


def test_core_imports_no_agent_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lexecon_core, lexecon_core.cli, lexecon_integrations, lexecon_integrations._intercept\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'langchain', 'langchain_core', 'langgraph',"
        " 'llama_index', 'agents', 'openai'})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
