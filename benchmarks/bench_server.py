"""Hosted-server figures: HTTP ``POST /decide`` throughput and latency under load on loopback (1 and 2 workers,
SQLite and PostgreSQL), and the :class:`RemoteGovernor` round trip.

    python benchmarks/bench_server.py            # ~2 minutes
    python benchmarks/bench_server.py --quick

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio (a few µs of CPU per request), run in its own
process with C concurrent connections, so most of the two cores go to the server. Baseline measured in the same run:
the same load against ``GET /health`` (the HTTP stack alone: uvicorn, routing, middleware, a database read), so the
ratio shows what deciding adds. Every server runs ``lexecon server --no-access-log`` with durable (fsync) ledger
writes and rate limits raised out of the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_ledger import drop_pg_schema, pg_schema_url

from lexecon_core import init_node
from lexecon_core.auth import ApiKeyStore, Role

POLICY = {
    "name": "bench",
    "mode": "strict",
    "terms": [
        {"term_id": "agents", "term_type": "actor", "value": "ai_agent:*"},
        {"term_id": "search", "term_type": "tool", "value": "search"},
    ],
    "relations": [{"relation_type": "permits", "source_term_id": "agents", "target_term_id": "search"}],
}
BODY = json.dumps({"actor": "ai_agent:bench", "tool": "search", "tool_args": {"q": "lexecon"}}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_node(root: Path, database_url: str | None) -> str:
    """A node with the bench policy and an agent key; returns the key."""
    from lexecon_core.policy import policy_from_document

    node = init_node(root, node_id="bench", database_url=database_url)
    node.adopt_policy(policy_from_document(POLICY), source="bench")
    store = ApiKeyStore(node.ledger)
    _, key = store.create("bench", Role.AGENT, by="bench")
    store.close()
    node.close()
    return key


def start_server(root: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LEXECON_RATE_LIMIT_PER_SECOND": "0",
        "LEXECON_CHECKPOINT_INTERVAL": "0",
    }
    argv = ["lexecon", "server", "--home", str(root), "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen([*argv, "--no-access-log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                time.sleep(0.5 if workers > 1 else 0.1)  # let every worker finish starting
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


# -- the load generator ------------------------------------------------------------------------------------------


async def _connection(port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(int(head[9:12]))
    finally:
        writer.close()


def _load(args: tuple[int, bytes, int, float, float]) -> tuple[list[float], list[int], float]:
    port, request, connections, warmup, duration = args

    async def run() -> tuple[list[float], list[int], float]:
        await asyncio.gather(
            *(_connection(port, request, time.perf_counter() + warmup, [], []) for _ in range(connections))
        )
        latencies: list[float] = []
        errors: list[int] = []
        started = time.perf_counter()
        stop_at = started + duration
        await asyncio.gather(*(_connection(port, request, stop_at, latencies, errors) for _ in range(connections)))
        return latencies, errors, time.perf_counter() - started

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(run())


def http_request(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def measure(port: int, request: bytes, connections: int, duration: float) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        latencies, errors, elapsed = pool.apply(_load, ((port, request, connections, 1.0, duration),))
    if errors:
        raise RuntimeError(f"{len(errors)} non-200 responses, e.g. {errors[:5]}")
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def remote_round_trip(port: int, key: str, count: int) -> float:
    """p50 of RemoteGovernor.decide (incl. token verification against the cached JWKS), one caller."""
    from lexecon_core import RemoteGovernor

    times = []
    with RemoteGovernor(f"http://127.0.0.1:{port}", api_key=key) as governor:
        request = {"actor": "ai_agent:bench", "tool": "search", "tool_args": {"q": "lexecon"}}
        for _ in range(50):
            governor.decide(request)
        for _ in range(count):
            started = time.perf_counter()
            governor.decide(request)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--connections", type=int, default=32)
    opts = parser.parse_args()
    duration = 2.0 if opts.quick else 8.0
    stores = ["SQLite"]
    probe = pg_schema_url()
    if probe is not None:
        drop_pg_schema(probe[1])
        stores.append("PostgreSQL")
    else:
        print("PostgreSQL unreachable: its rows are skipped")
    schemas: list[str] = []
    print(f"{opts.connections} connections, {duration:.0f} s per figure, durable ledger writes")
    print(f"{'store':<11} {'workers':>7} {'endpoint':<13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    try:
        for label in stores:
            for workers in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    url = None
                    if label == "PostgreSQL":  # a fresh schema per server: every run starts from an empty ledger
                        fresh = pg_schema_url()
                        assert fresh is not None
                        url = fresh[0]
                        schemas.append(fresh[1])
                    root = Path(tmp) / "home"
                    key = make_node(root, url)
                    port = free_port()
                    server = start_server(root, port, workers)
                    try:
                        rows = [
                            ("GET /health", http_request("GET", "/health", key)),
                            ("POST /decide", http_request("POST", "/decide", key, BODY)),
                        ]
                        for name, request in rows:
                            figures = measure(port, request, opts.connections, duration)
                            print(
                                f"{label:<11} {workers:>7} {name:<13} {figures['rps']:>8,.0f} "
                                f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f}",
                                flush=True,
                            )
                        if workers == 1:
                            p50 = remote_round_trip(port, key, 300 if opts.quick else 2000)
                            print(f"{label:<11} {workers:>7} RemoteGovernor.decide round trip p50 {p50:.2f} ms")
                    finally:
                        server.terminate()
                        server.wait(timeout=30)
    finally:
        for schema in schemas:
            drop_pg_schema(schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
