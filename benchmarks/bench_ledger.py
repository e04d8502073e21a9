"""Production-ledger figures: durable appends (one writer, and concurrent writers sharing commits), verification
(every signature; checkpoint-trusted), checkpoint cost and proof sizes - on SQLite and, when reachable, PostgreSQL.

    python benchmarks/bench_ledger.py            # ~2 minutes
    python benchmarks/bench_ledger.py --quick

Baselines measured in the same run: a bare durable SQLite commit per row (the fsync floor) for appends, and bare
single-thread Ed25519 verification for the full verify.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    n_append, n_verify = (2_000, 5_000) if quick else (8_000, 100_000)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    signer = Signer.generate()
    keys = {signer.kid: signer.public}
    with tempfile.TemporaryDirectory(prefix="lexecon-bench-") as tmp:
        work = Path(tmp)
        floor = bare_commits(work / "bare.db", n_append // 2)
        print(f"\nbaseline: bare durable SQLite commit per row {floor:,.0f}/s")
        targets = [("SQLite", sqlite_url(work / "append.db"), None)]
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
            results = {}
            for label, trust, workers_n in (("full, 1 thread", False, 1), ("full, all cores", False, None),
                                            ("checkpoint-trusted", True, None)):  # fmt: skip
                start = time.perf_counter()
                report = ledger.verify(keys, trust_checkpoints=trust, workers=workers_n)
                assert report.valid
                results[label] = total / (time.perf_counter() - start)
        key = nacl.signing.SigningKey.generate()
        message = os.urandom(56)
        signature = key.sign(message).signature
        start = time.perf_counter()
        for _ in range(20_000):
            key.verify_key.verify(message, signature)
        bare_verify = 20_000 / (time.perf_counter() - start)
        print(f"\nverify {total:,} entries (SQLite), entries/s; baseline bare Ed25519 verify {bare_verify:,.0f}/s")
        for label, rate in results.items():
            print(f"  {label:<20} {rate:>9,.0f}/s ({rate / bare_verify:.2f}x bare Ed25519)")
        print(f"\ncheckpoint over {made.size:,} entries (tree built from scratch): {checkpoint_seconds:.2f} s")
        print(
            f"inclusion proof at size {proof.tree_size:,}: {len(proof.hashes)} hashes, {32 * len(proof.hashes)} bytes;"
            f" signed checkpoint note {len(made.note.encode())} bytes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
