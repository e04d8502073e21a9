"""Signed checkpoints in the C2SP signed-note format (https://c2sp.org/signed-note, tlog-checkpoint).

    lexecon/<node id>                  origin
    1234                               tree size
    <base64 root hash>                 RFC 6962 root of the first 1234 entries
    timestamp 2026-11-25T12:00:00Z     extension line
                                       blank line
    — lexecon/<node id> <base64(key hash[4] || Ed25519 signature[64])>

The signature covers the text above the blank line (each line ending in a newline). The key hash is the first four
bytes of SHA-256(key name || "\\n" || 0x01 || public key), as the signed-note spec defines for Ed25519 keys.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from lexecon_core.keys import PublicKey, Signer

__all__ = ["Checkpoint", "origin_for", "parse_checkpoint", "sign_checkpoint", "verify_checkpoint"]

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_ED25519 = b"\x01"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    timestamp: str
    note: str  # the whole signed note, exactly as signed and stored

    @property
    def body(self) -> str:
        return self.note.split("\n\n", 1)[0] + "\n"


def origin_for(node_id: str) -> str:
    return f"lexecon/{node_id}"


def _key_hash(name: str, key: PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + key.raw).digest()[:4]


def _body(origin: str, size: int, root: bytes, timestamp: str) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\ntimestamp {timestamp}\n"


def sign_checkpoint(signer: Signer, *, origin: str, size: int, root: bytes, timestamp: str) -> Checkpoint:
    body = _body(origin, size, root, timestamp)
    signature = _key_hash(origin, signer.public) + signer.sign(body.encode())
    note = f"{body}\n{_SIGNATURE_PREFIX}{origin} {base64.b64encode(signature).decode()}\n"
    return Checkpoint(origin, size, root, timestamp, note)


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[tuple[str, bytes]]]:
    """The checkpoint and its ``(key name, signature blob)`` lines. Raises ValueError on anything malformed."""
    body, sep, signatures = note.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 4:
        raise ValueError("not a signed note: expected origin, size, root, timestamp, a blank line, signatures")
    origin, size_text, root_text, *extensions = lines
    if not (size_text.isascii() and size_text.isdigit()) or (size_text.startswith("0") and size_text != "0"):
        raise ValueError("checkpoint size is not a decimal number")
    root = base64.b64decode(root_text, validate=True)
    if len(root) != 32:
        raise ValueError("checkpoint root is not 32 bytes")
    stamps = [e[len("timestamp ") :] for e in extensions if e.startswith("timestamp ")]
    parsed: list[tuple[str, bytes]] = []
    for line in signatures.split("\n"):
        if not line:
            continue
        if not line.startswith(_SIGNATURE_PREFIX):
            raise ValueError("malformed signature line")
        name, _, blob = line[len(_SIGNATURE_PREFIX) :].rpartition(" ")
        parsed.append((name, base64.b64decode(blob, validate=True)))
    if not parsed:
        raise ValueError("the note carries no signature")
    checkpoint = Checkpoint(origin, int(size_text), root, stamps[0] if stamps else "", note)
    return checkpoint, parsed


def verify_checkpoint(note: str, keys: Mapping[str, PublicKey], *, origin: str | None = None) -> Checkpoint:
    """Parse a note and check it is signed, under its origin's name, by one of ``keys``. Raises ValueError if not."""
    checkpoint, signatures = parse_checkpoint(note)
    if origin is not None and checkpoint.origin != origin:
        raise ValueError(f"checkpoint is for {checkpoint.origin!r}, not {origin!r}")
    message = checkpoint.body.encode()
    for name, blob in signatures:
        if name != checkpoint.origin or len(blob) != 68:
            continue
        for key in keys.values():
            if blob[:4] == _key_hash(name, key) and key.verify(blob[4:], message):
                return checkpoint
    raise ValueError("checkpoint is not signed by a trusted key")
