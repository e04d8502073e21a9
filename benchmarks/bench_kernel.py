"""Kernel figures: policy evaluation, decisions per second, ledger verification. Each against a same-run baseline.

    python benchmarks/bench_kernel.py            # full run (~1 min)
    python benchmarks/bench_kernel.py --quick    # smaller sizes, for a smoke check

Baselines, measured in the same run so the ratios mean something on any machine:
- evaluate: a naive evaluator that scans every relation (what the index avoids);
- decide:   a bare durable SQLite insert+commit per row (WAL, synchronous=FULL) - the floor that fsync sets;
- verify:   single-threaded libsodium Ed25519 verification alone - the single-core signature ceiling.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing

from lexecon_core import LocalGovernor, init_node
from lexecon_core._glob import matches
from lexecon_core.policy import PolicyEngine, PolicyRelation, PolicyTerm, RelationType, TermType


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_policy(relations: int, seed: int = 7) -> tuple[PolicyEngine, list[tuple[str, str, str]]]:
    """A policy with ``relations`` relations over teams of agents and families of tools, exact and wildcard."""
    rng = random.Random(seed)
    engine = PolicyEngine(mode="strict")
    teams = max(relations // 20, 2)
    tools = max(relations // 10, 5)  # teams * tools * 2 kinds always exceeds ``relations``
    for t in range(teams):
        engine.add_term(PolicyTerm(f"team{t}", TermType.ACTOR, f"ai_agent:team{t}_*"))
    for k in range(tools):
        value = f"tool_{k}" if k % 4 else f"tool_{k}_*"
        engine.add_term(PolicyTerm(f"tool{k}", TermType.TOOL, value))
    specs: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    while len(specs) < relations:
        kind = "forbids" if rng.random() < 0.2 else "permits"
        spec = (kind, f"team{rng.randrange(teams)}", f"tool{rng.randrange(tools)}")
        if spec in seen:
            continue
        seen.add(spec)
        specs.append(spec)
        engine.add_relation(PolicyRelation(RelationType(spec[0]), spec[1], spec[2]))
    return engine, specs


def naive_evaluate(engine: PolicyEngine, specs: list[tuple[str, str, str]], actor: str, tool: str) -> str:
    terms = {t.term_id: t for t in engine.terms}
    permitted = forbidden = False
    for kind, source, target in specs:
        if matches(terms[source].value, actor) and matches(terms[target].value, tool):
            if kind == "forbids":
                forbidden = True
            else:
                permitted = True
    return "denied" if forbidden or not permitted else "approved"


def bench_evaluate(sizes: list[int], iterations: int) -> list[dict[str, float]]:
    rows = []
    for size in sizes:
        engine, specs = build_policy(size)
        teams, tools = max(size // 20, 2), max(size // 10, 5)
        requests = [(f"ai_agent:team{i % teams}_bot", f"tool_{(i * 7) % tools}") for i in range(256)]
        samples = []
        for i in range(iterations):
            actor, tool = requests[i % len(requests)]
            start = time.perf_counter_ns()
            engine.evaluate(actor=actor, tool=tool, risk_level="low")
            samples.append((time.perf_counter_ns() - start) / 1000)
        naive = []
        for i in range(max(iterations // 50, 20)):
            actor, tool = requests[i % len(requests)]
            start = time.perf_counter_ns()
            naive_evaluate(engine, specs, actor, tool)
            naive.append((time.perf_counter_ns() - start) / 1000)
        rows.append(
            {
                "relations": size,
                "p50_us": statistics.median(samples),
                "p99_us": percentile(samples, 0.99),
                "naive_p50_us": statistics.median(naive),
            }
        )
    return rows


POLICY = """
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: refund, term_type: tool, value: refund}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: refund}
"""


def bench_decide(workdir: Path, count: int) -> dict[str, float]:
    home = workdir / "decide-home"
    node = init_node(home, node_id="bench")
    (workdir / "policy.yaml").write_text(POLICY)
    node.load_policy_file(workdir / "policy.yaml")
    node.close()
    with LocalGovernor(home) as governor:
        for i in range(50):  # warm-up
            governor.decide({"actor": "ai_agent:bench", "tool": "refund", "tool_args": {"order": i}})
        start = time.perf_counter()
        for i in range(count):
            decision = governor.decide(
                {
                    "actor": "ai_agent:bench",
                    "tool": "refund",
                    "tool_args": {"order_id": i, "amount_cents": 2500},
                    "user_intent": "refund a damaged item",
                }
            )
            assert decision.capability_token is not None
        elapsed = time.perf_counter() - start
    baseline = _bare_sqlite_commits(workdir / "bare.db", count)
    return {"decisions": count, "per_second": count / elapsed, "bare_commit_per_second": baseline}


def _bare_sqlite_commits(path: Path, count: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body BLOB, h BLOB, sig BLOB)")
    body, digest, sig = os.urandom(900), os.urandom(32), os.urandom(64)
    start = time.perf_counter()
    for i in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (i + 1, body, digest, sig))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return count / elapsed


def bench_verify(workdir: Path, entries: int) -> dict[str, float]:
    home = workdir / "verify-home"
    node = init_node(home, node_id="bench-verify")
    ledger = node.ledger
    record = {
        "decision_id": "dec_0",
        "outcome": "approved",
        "reason": "permitted by permits:agents->refund",
        "request": {"actor": "ai_agent:bench", "tool": "refund", "args_sha256": "0" * 64, "context": {}},
        "risk": {"score": 33, "level": "medium"},
    }
    for i in range(entries - 1):
        ledger.append("decision", {**record, "decision_id": f"dec_{i}"})
    keys = node.trusted_keys()
    results: dict[str, float] = {"entries": entries}
    for workers in (1, None):
        start = time.perf_counter()
        report = ledger.verify(keys, workers=workers)
        elapsed = time.perf_counter() - start
        assert report.valid
        assert report.entries_verified == entries
        results["per_second_1_thread" if workers == 1 else "per_second_all_cores"] = entries / elapsed
    node.close()
    key = nacl.signing.SigningKey.generate()
    message = b"lexecon:ledger:sig:v1\x00" + os.urandom(32)
    signature = key.sign(message).signature
    verify_key = key.verify_key
    n = min(entries, 20_000)
    start = time.perf_counter()
    for _ in range(n):
        verify_key.verify(message, signature)
    results["bare_signature_checks_per_second"] = n / (time.perf_counter() - start)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    quick = args.quick
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")

    evaluate_rows = bench_evaluate([10, 1_000, 10_000], 2_000 if quick else 50_000)
    print("\npolicy evaluate (index) vs naive scan of every relation")
    print(f"{'relations':>10} {'p50 us':>8} {'p99 us':>8} {'naive p50 us':>13} {'speed-up':>9}")
    for row in evaluate_rows:
        speedup = row["naive_p50_us"] / row["p50_us"]
        print(
            f"{row['relations']:>10,} {row['p50_us']:>8.1f} {row['p99_us']:>8.1f} "
            f"{row['naive_p50_us']:>13.1f} {speedup:>8.0f}x"
        )

    with tempfile.TemporaryDirectory(prefix="lexecon-bench-") as tmp:
        workdir = Path(tmp)
        decide = bench_decide(workdir, 500 if quick else 5_000)
        print("\ndecide (risk + policy + durable signed ledger append + token), one thread")
        floor = decide["bare_commit_per_second"]
        print(
            f"  {decide['per_second']:,.0f} decisions/s; bare durable SQLite commit {floor:,.0f}/s"
            f" (decide = {decide['per_second'] / floor:.2f}x of the fsync floor)"
        )
        verify = bench_verify(workdir, 2_000 if quick else 50_000)
        print(f"\nverify-ledger, {verify['entries']:,} entries, every signature checked")
        bare = verify["bare_signature_checks_per_second"]
        for label, key in (("1 thread", "per_second_1_thread"), ("all cores", "per_second_all_cores")):
            print(f"  {label:>9}: {verify[key]:,.0f} entries/s ({verify[key] / bare:.2f}x bare single-thread Ed25519)")
        print(f"  bare Ed25519 verify (libsodium, 1 thread): {bare:,.0f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
