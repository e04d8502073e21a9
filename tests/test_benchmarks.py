"""Every benchmark script runs (``--quick``) against the current code and prints its figures with their baselines.

The figures themselves are not asserted: timing depends on the machine (docs/performance.md records them). What is
asserted is that the scripts work, so a change to the API cannot leave them broken until someone next measures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("bench_trust.py", ["start-up walk over", "baseline verify --trust-checkpoints", "row MACs", "signatures"]),
        ("bench_ledger.py", ["bare durable SQLite commit", "durable appends", "x bare Ed25519"]),
        ("bench_kernel.py", ["naive p50", "decisions/s", "bare Ed25519 verify"]),
        (
            "bench_integrations.py",
            ["bare p50", "governed p50", "each model turn takes 20 ms", "LlamaIndex FunctionAgent"],
        ),
        ("bench_server.py", ["GET /health", "POST /decide", "RemoteGovernor.decide round trip"]),
    ],
)
def test_benchmark_runs(script: str, expected: list[str]) -> None:
    if script == "bench_integrations.py":
        for framework in ("langchain", "llama_index.core", "agents"):
            pytest.importorskip(framework)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,  # bench_server starts `lexecon server` from this environment
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for text in expected:
        assert text in result.stdout, f"{text!r} missing from:\n{result.stdout[-2000:]}"
