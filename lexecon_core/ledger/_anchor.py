"""The ledger anchor: ``(seq, hash)`` of an entry this node wrote, kept in a file beside its keys.

A database writer can delete the tail of the chain and the checkpoints over it, but not this file, so a revocation or
hold cannot be cut off: a walk from the genesis entry must reach the anchored entry with that hash (see ``_trust``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("lexecon.ledger")


def read_anchor(path: Path | None) -> list[tuple[int, bytes]]:
    """The anchor recorded beside the node's keys, if any; one that cannot be read anchors nothing (and says so)."""
    if path is None or not path.is_file():
        return []
    try:
        seq, _, digest = path.read_text().strip().partition(":")
        return [(int(seq), bytes.fromhex(digest))]
    except (OSError, ValueError):
        logger.warning("ignoring the unreadable ledger anchor %s", path)
        return []


def write_anchor(path: Path | None, seq: int, digest: bytes) -> None:
    """Record ``(seq, hash)`` outside the database. Never fails the entry it follows: that is written already."""
    if path is None or seq == 0:
        return
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{seq}:{digest.hex()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot record the ledger anchor in %s: %s", path, exc.strerror)
