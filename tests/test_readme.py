"""The README's commands, run as a new user would: every shell block, in order, in a scratch directory, offline.

Each line runs under bash in one shared environment (``export`` lines carry over, as in a terminal). Only what cannot
run here is changed, and each change is named: install lines are checked, not run (CI has installed the ``dev``
extra, a superset); the test-suite command is compared with ``.ci/run`` instead of running this suite inside itself;
the server block's placeholder database becomes the test PostgreSQL; ``lexecon server`` runs in the background on a
free local port, answers the README's ``POST /decide`` example, and stops. The seed's own CLI lines have a test here
too, so they keep working.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests._servers import free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()

PLACEHOLDER_DATABASE = "postgresql+psycopg://lexecon@db/lexecon"
INSTALL = re.compile(
    r"^(python3 -m pip install uv==[0-9.]+|uv sync --locked( --extra [a-z-]+)+ && \. \.venv/bin/activate)"
)
UV_RUN = re.compile(
    r"^python3 -m pip install uv==(?P<uv>[0-9.]+) && uv run --locked (--extra [a-z-]+ )+(?P<command>.+)$"
)


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.M | re.S)


def command_lines() -> list[str]:
    lines = [line for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    first, second = command_lines()[:2]
    assert README.index(first) < README.index("## ")  # before the first section: what a new user sees first
    assert "lexecon demo" in first and second.split("#")[0].rstrip().endswith("uv run --locked --extra dev pytest")
    test_command = second.split("#")[0].rstrip()
    assert test_command in CI_RUN.splitlines(), ".ci/run must run exactly the README's test command"
    pinned = {UV_RUN.match(line.split("  #")[0].rstrip()).group("uv") for line in (first, second)}  # type: ignore[union-attr]
    assert len(pinned) == 1, "both commands install the same uv"


class Terminal:
    """One shell session's worth of state: the working directory and the exported environment. It starts with
    none of the caller's LEXECON_* settings, with this environment's ``lexecon`` first on PATH, and ``HOME`` at
    ``cwd``."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEXECON_")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["HOME"] = str(cwd)
        self.outputs: list[str] = []
        self.server: subprocess.Popen[str] | None = None

    def run(self, line: str, pg_url: str | None) -> None:
        command = line.split("  #")[0].rstrip()  # a trailing comment, two spaces before it as the README writes them
        if INSTALL.match(command):
            match = UV_RUN.match(command)
            if match is None:
                assert "--locked" in command, f"installs without the lock: {line}"
                return
            command = match.group("command")
            if command == "pytest":
                return  # the suite itself; compared with .ci/run above
        command = command.replace(PLACEHOLDER_DATABASE, pg_url or PLACEHOLDER_DATABASE)
        words = shlex.split(command)
        if words[0] == "export":
            for word in words[1:]:
                name, _, value = word.partition("=")
                self.env[name] = value
            return
        if words[:2] == ["lexecon", "server"]:
            self.start_server(words)
            return
        result = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}"],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"README line failed ({result.returncode}): {line}\n{result.stderr}"
        self.outputs.append(result.stdout)

    def start_server(self, words: list[str]) -> None:
        # Listening on this machine only, on a free port; the options are otherwise the README's own.
        argv = list(words)
        argv[argv.index("--host") + 1] = "127.0.0.1"
        self.port = free_port()
        argv[argv.index("--port") + 1] = str(self.port)
        self.server = start_server(argv, self.env, self.cwd)


def _python_example(name: str) -> str:
    (found,) = [block for block in blocks("python") if name in block]
    return found


def test_every_readme_shell_block_runs(tmp_path: Path, pg_url: str) -> None:
    scratch = tmp_path / "work"
    scratch.mkdir()
    (scratch / "examples").symlink_to(ROOT / "examples")  # the README runs from a checkout
    terminal = Terminal(scratch)
    try:
        for line in command_lines():
            terminal.run(line, pg_url)
        assert terminal.server is not None, "the README starts a server"
        # The README's request, against that server, with the key its `apikey create` line printed.
        (api_key,) = re.findall(r"^lxk_\S+$", "".join(terminal.outputs), flags=re.M)
        source = _python_example("localhost:8000/decide").replace(
            "http://localhost:8000", f"http://127.0.0.1:{terminal.port}"
        )
        namespace: dict[str, Any] = {"api_key": api_key}
        exec(compile(source, "README.md", "exec"), namespace)  # the README's own example
        assert namespace["decision"]["outcome"] == "approved", namespace["decision"]
    finally:
        if terminal.server is not None:
            stop_server(terminal.server)
    assert (scratch / ".lexecon" / "ledger.db").is_file() and (scratch / "ledger.zip").is_file()


def test_the_seed_cli_lines_work(tmp_path: Path) -> None:
    terminal = Terminal(tmp_path)
    terminal.run("lexecon init --node-id seed-node", None)  # the default home, ./.lexecon
    terminal.run(
        "lexecon decide --actor ai_agent:customer_service --action 'read customer transaction history' "
        "--tool database_query --intent 'answer customer support question'",
        None,
    )
    assert terminal.outputs[-1].split()[0] in {"approved", "denied", "escalated"}
    terminal.start_server(["lexecon", "server", "--host", "127.0.0.1", "--port", "8000"])
    assert terminal.server is not None
    stop_server(terminal.server)
    # The seed kept its ledger in ./lexecon_ledger.db; a consistent copy of ours is a file of the same kind.
    with (
        sqlite3.connect(tmp_path / ".lexecon" / "ledger.db") as source,
        sqlite3.connect(tmp_path / "lexecon_ledger.db") as copy,
    ):
        source.backup(copy)
    terminal.run("lexecon verify-ledger --ledger-file lexecon_ledger.db", None)
    assert terminal.outputs[-1].startswith("valid")
