"""Crash safety: writers killed with SIGKILL mid-append leave a ledger that verifies and holds every returned entry."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, sqlite_url

WRITER = """
import sys, json
from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
url, seed, durability = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
signer = Signer(Ed25519PrivateKey.from_private_bytes(seed))
ledger = Ledger(url, node_id="crash", signer=signer, durability=durability, checkpoint_interval=97)
i = 0
while True:
    entry = ledger.append("note", {"i": i, "pad": "x" * 200})
    sys.stdout.write(f"{entry.seq}\\n")
    sys.stdout.flush()
    i += 1
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "crash.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_sigkill_mid_append_loses_nothing_returned(ledger_url: str, durability: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()
    signer = Signer(private)
    url = ledger_url
    Ledger(url, node_id="crash", signer=signer).close()
    rng = random.Random(1234)
    acknowledged = 0
    for _ in range(6):
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER, url, seed, durability], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        # Kill at a random moment once both are appending (start-up time varies from machine to machine).
        first_lines = [writer.stdout.readline() for writer in writers]  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.02, 0.3))
        for writer in writers:
            writer.send_signal(signal.SIGKILL)
        for writer, first in zip(writers, first_lines, strict=True):
            out, _ = writer.communicate(timeout=30)
            seqs = [int(line) for line in (first + out).split()]
            acknowledged = max([acknowledged, *seqs])
            assert writer.returncode == -signal.SIGKILL
        with Ledger(url, readonly=True) as ledger:
            report = ledger.verify({signer.kid: signer.public})
            assert report.valid, report.to_dict()
            assert ledger.count() >= acknowledged  # every append that returned is there
            assert json.loads(ledger.get(1).body)["type"] == "ledger_genesis"  # type: ignore[union-attr]
    assert acknowledged > 10  # the writers really wrote while being killed
