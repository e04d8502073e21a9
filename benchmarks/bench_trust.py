"""What acting only on verified rows costs (lexecon_core/ledger/_trust.py), each against a same-run baseline.

    python benchmarks/bench_trust.py            # 50,000-entry ledger (~1-2 minutes)
    python benchmarks/bench_trust.py --quick    # 5,000 entries

- start-up: the walk from the genesis entry a node makes before it first acts (by hash under signed checkpoints,
  governance entries by signature, the tail in full). Baseline: ``Ledger.verify(trust_checkpoints=True)`` over the
  same ledger, on one thread - the same reading and hashing, which the walk should not exceed by much.
- catch-up: verifying entries another process appended before appending after them (chain, body, and the row MAC
  when the reader holds the node's key - another worker of the node - or else the signature). Baseline: bare
  single-thread Ed25519 verification of as many signatures - the floor of a check by signature.
The writer's own bookkeeping per append (head check, Merkle edge, recent hashes) is measured by running
``bench_kernel.py`` before and after the change, interleaved (docs/performance.md). Best of ``--rounds`` for each:
on a shared machine the slowest runs measure the neighbours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nacl.signing

sys.path.insert(0, str(Path(__file__).parent))
from bench_ledger import RECORD  # the same decision record as the append benchmarks

from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, sqlite_url


def build(path: Path, signer: Signer, entries: int) -> None:
    with Ledger(
        sqlite_url(path), node_id="bench", signer=signer, durability="process", checkpoint_interval=1000
    ) as ledger:
        for i in range(entries):
            ledger.append("decision", {**RECORD, "decision_id": f"dec_{i}"})
            if i % 5000 == 0:  # a few governance entries, as a real ledger has
                ledger.append("retention_policy", {"retention_days": 3650, "reason": "bench"})


def best(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    entries = 5_000 if args.quick else 50_000
    tail = 1_000 if args.quick else 10_000
    signer = Signer.generate()
    keys = {signer.kid: signer.public}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        print(f"building a ledger of {entries:,} decisions (checkpoint every 1,000) ...", flush=True)
        build(path, signer, entries)
        url = sqlite_url(path)

        def startup() -> float:
            with Ledger(url, node_id="bench", signer=signer, durability="process") as ledger:
                started = time.perf_counter()
                state = ledger.trusted_state()
                elapsed = time.perf_counter() - started
                assert state.size >= entries
            return elapsed

        def trusted_verify() -> float:
            with Ledger(url, readonly=True) as ledger:
                started = time.perf_counter()
                report = ledger.verify(keys, trust_checkpoints=True, workers=1)
                elapsed = time.perf_counter() - started
                assert report.valid, report.to_dict()
            return elapsed

        size = entries + entries // 5000 + 1
        walk = best(args.rounds, startup)
        base = best(args.rounds, trusted_verify)
        print(f"\nstart-up walk over {size:,} entries: {walk:.2f} s = {size / walk:,.0f} entries/s")
        print(f"  baseline verify --trust-checkpoints, one thread: {base:.2f} s = {size / base:,.0f} entries/s")
        print(f"  ratio: {walk / base:.2f}x the baseline's time ({walk / size * 1e6:.2f} µs per entry)")

        # Catch-up: a second handle (another process, as far as the ledger can tell) appends `tail` entries; the
        # first one, already verified to the old head, verifies them before it appends.
        stranger = Signer.generate()  # a handle without the node's key (no MAC key): signatures only

        def catch_up(reader_signer: Signer) -> float:
            with (
                Ledger(url, node_id="bench", signer=reader_signer, durability="process", trusted_keys=keys) as reader,
                Ledger(url, node_id="bench", signer=signer, durability="process") as other,
            ):
                reader.trusted_state()
                for i in range(tail):
                    other.append("decision", {**RECORD, "decision_id": f"tail_{i}"})
                started = time.perf_counter()
                reader.trusted_state()
                return time.perf_counter() - started

        key = nacl.signing.SigningKey.generate()
        signed = [key.sign(b"%064d" % i) for i in range(tail)]

        def bare() -> float:
            verify = key.verify_key.verify
            started = time.perf_counter()
            for message in signed:
                verify(message)
            return time.perf_counter() - started

        by_mac = best(args.rounds, lambda: catch_up(signer))
        by_signature = best(args.rounds, lambda: catch_up(stranger))
        floor = best(args.rounds, bare)
        print(
            f"\ncatch-up on {tail:,} entries appended elsewhere (baseline bare Ed25519 verify: {tail / floor:,.0f}/s)"
        )
        print(f"  another process of the node (row MACs): {tail / by_mac:,.0f} entries/s = {floor / by_mac:.2f}x")
        print(
            f"  a handle without the node's key (signatures): {tail / by_signature:,.0f}/s"
            f" = {floor / by_signature:.2f}x"
        )


if __name__ == "__main__":
    main()
