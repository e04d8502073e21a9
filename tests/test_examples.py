"""Every example runs offline, governs its agent, and verifies its ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "framework", "ran", "refused"),
    [
        ("langchain_agent.py", "langchain", "['lookup_order']", "Lexecon denied tool 'delete_order'"),
        ("llama_index_agent.py", "llama_index.core", "['read_report']", "Lexecon denied tool 'drop_table'"),
        ("openai_agents_guardrail.py", "agents", "['get_weather']", "Lexecon denied tool 'transfer_funds'"),
    ],
)
def test_example(script: str, framework: str, ran: str, refused: str, tmp_path: Path) -> None:
    pytest.importorskip(framework)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"tools that ran: {ran}" in result.stdout
    assert refused in result.stdout
    assert "ledger valid: 4 entries verified" in result.stdout
