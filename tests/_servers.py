"""Real ``lexecon server`` processes for tests: a free local port, start and wait until healthy, stop cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """Run ``argv`` (a ``lexecon server`` command listening on 127.0.0.1 at ``--port``) until ``/health`` answers."""
    port = argv[argv.index("--port") + 1]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not become healthy in 30 s")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the server's output; it must have shut down cleanly."""
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    # One worker: uvicorn shuts down, then re-raises the signal (-15); several: the supervisor exits 0.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "Traceback" not in output, output
    return output
