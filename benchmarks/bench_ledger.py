"""Production-ledger figures: durable appends (one writer, and concurrent writers sharing commits), verification
(every signature; checkpoint-trusted), checkpoint cost and proof sizes - on SQLite and, when reachable, PostgreSQL.

    python benchmarks/bench_ledger.py                 # ~2 minutes
    python benchmarks/bench_ledger.py --quick
    python benchmarks/bench_ledger.py --verify-only   # skip the appends (--rounds N: verification rounds)

Baselines measured in the same run: a bare durable SQLite commit per row (the fsync floor) for appends, and bare
single-thread Ed25519 verification for the full verify. Verification is measured in rounds (bare Ed25519, then each
mode), best of the rounds: on a shared machine the slowest runs measure the neighbours.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import nacl.signing

from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, sqlite_url

RECORD = {
    "decision_id": "dec_0",
    "outcome": "approved",
    "reason": "permitted by permits:agents->refund",
    "request": {"actor": "ai_agent:bench", "tool": "refund", "args_sha256": "0" * 64, "context": {}},
    "risk": {"score": 33, "level": "medium"},
}
PG_URL = os.environ.get("LEXECON_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def appends_per_second(ledger: Ledger, threads: int, total: int) -> float:
    per_thread = total // threads

    def work() -> None:
        for i in range(per_thread):
            ledger.append("decision", {**RECORD, "decision_id": f"dec_{i}"})

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return per_thread * threads / (time.perf_counter() - start)


def bare_commits(path: Path, count: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body BLOB)")
    body = os.urandom(600)
    start = time.perf_counter()
    for i in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (i + 1, body))
        db.execute("COMMIT")
    rate = count / (time.perf_counter() - start)
    db.close()
    return rate


def bare_ed25519_verifies(count: int = 20_000, *, distinct: bool = False) -> float:
    """One message and signature checked over and over (the baseline since the first figures), or ``distinct`` ones,
    as a verifier meets them: the CPU cannot learn libsodium's data-dependent branches then, and each costs more."""
    key = nacl.signing.SigningKey.generate()
    messages = [os.urandom(56) for _ in range(2_048 if distinct else 1)]
    pairs = [(message, key.sign(message).signature) for message in messages]
    verify = key.verify_key.verify
    start = time.perf_counter()
    for i in range(count):
        message, signature = pairs[i % len(pairs)]
        verify(message, signature)
    return count / (time.perf_counter() - start)


def pg_schema_url() -> tuple[str, str] | None:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        conninfo = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        schema = f"lexecon_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False), schema
    except Exception:  # no server: the PostgreSQL rows are skipped, and say so
        return None


def drop_pg_schema(schema: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def bench_appends(work: Path, signer: Signer, n_append: int) -> None:
    floor = bare_commits(work / "bare.db", n_append // 2)
    print(f"\nbaseline: bare durable SQLite commit per row {floor:,.0f}/s")
    targets: list[tuple[str, str, str | None]] = [("SQLite", sqlite_url(work / "append.db"), None)]
    pg = pg_schema_url()
    if pg is not None:
        targets.append(("PostgreSQL", pg[0], pg[1]))
    else:
        print("PostgreSQL: not reachable, skipped")
    print("\ndurable appends (signed, hash-chained), entries/s")
    for name, url, schema in targets:
        with Ledger(url, node_id="bench", signer=signer) as ledger:
            for threads in (1, 4, 16, 64):
                rate = appends_per_second(ledger, threads, n_append)
                extra = f" ({rate / floor:.2f}x the bare commit floor)" if name == "SQLite" else ""
                print(f"  {name:<10} {threads:>2} writer threads: {rate:>8,.0f}/s{extra}")
        if schema is not None:
            drop_pg_schema(schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--verify-only", action="store_true", help="skip the append benchmarks")
    parser.add_argument("--rounds", type=int, default=3, help="verification rounds (best of; default 3)")
    options = parser.parse_args()
    quick = options.quick
    n_append, n_verify = (2_000, 5_000) if quick else (8_000, 100_000)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    signer = Signer.generate()
    keys = {signer.kid: signer.public}
    with tempfile.TemporaryDirectory(prefix="lexecon-bench-") as tmp:
        work = Path(tmp)
        if not options.verify_only:
            bench_appends(work, signer, n_append)

        with Ledger(sqlite_url(work / "verify.db"), node_id="bench", signer=signer, durability="process") as ledger:
            for _ in range(n_verify // 1000):
                workers = [threading.Thread(target=lambda: [ledger.append("decision", RECORD) for _ in range(250)])
                           for _ in range(4)]  # fmt: skip
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            total = ledger.count()
            start = time.perf_counter()
            made = ledger.checkpoint()
            checkpoint_seconds = time.perf_counter() - start
            proof = ledger.inclusion_proof(total // 2)
            modes = (("full, 1 thread", False, 1), ("full, all cores", False, None), ("checkpoint-trusted", True, None))
            results: dict[str, list[float]] = {label: [] for label, _, _ in modes}
            bare: list[float] = []
            distinct: list[float] = []
            rounds = 1 if quick else max(options.rounds, 1)
            for _ in range(rounds):
                bare.append(bare_ed25519_verifies())
                distinct.append(bare_ed25519_verifies(distinct=True))
                for label, trust, workers_n in modes:
                    start = time.perf_counter()
                    report = ledger.verify(keys, trust_checkpoints=trust, workers=workers_n)
                    assert report.valid
                    results[label].append(total / (time.perf_counter() - start))
        bare_verify = max(bare)
        print(f"\nverify {total:,} entries (SQLite), entries/s, best of {rounds} rounds (all rounds in brackets)")
        for label, rates in (("bare Ed25519, 1 thread", bare), ("  distinct signatures", distinct)):
            print(f"  {label:<24} {max(rates):>9,.0f}/s  [{', '.join(f'{r:,.0f}' for r in rates)}]")
        for label, rates in results.items():
            rate = max(rates)
            shown = ", ".join(f"{r:,.0f}" for r in rates)
            print(f"  {label:<24} {rate:>9,.0f}/s  ({rate / bare_verify:.2f}x bare Ed25519)  [{shown}]")
        print(f"\ncheckpoint over {made.size:,} entries (tree built from scratch): {checkpoint_seconds:.2f} s")
        print(
            f"inclusion proof at size {proof.tree_size:,}: {len(proof.hashes)} hashes, {32 * len(proof.hashes)} bytes;"
            f" signed checkpoint note {len(made.note.encode())} bytes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
