"""The project's own static checks, so that the test command (and CI) proves them: ruff and mypy, as configured in
pyproject.toml. Part of the ``dev`` extra; without it these skip, except under ``CI=true``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is required under CI=true (the dev extra)")
        pytest.skip(f"{module} is not installed (the dev extra)")
    return subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_check() -> None:
    result = _tool("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _tool("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    # The packages and strictness come from [tool.mypy]; the cache stays in the checkout (.mypy_cache, ignored).
    result = _tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
