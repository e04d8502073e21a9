"""Self-contained, signed ledger exports ("bundles") and their offline verification.

A bundle is a zip archive:

    manifest.json       format, node id, entry count, head hash, export time, SHA-256 of every other file
    manifest.sig        {"kid": ..., "signature": base64 Ed25519 over "lexecon:bundle:manifest:v1" 0x00 || manifest}
    entries.jsonl       one stored entry per line, the body as the exact stored bytes (base64)
    checkpoints.json    the signed checkpoint notes
    jwks.json           the public keys that signed entries, checkpoints and the manifest

Verifying a bundle checks the manifest signature and every file digest, then runs the same entry-by-entry and
checkpoint verification as a live ledger (``_verify.verify_rows``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lexecon_core.errors import LedgerError, LexeconError
from lexecon_core.keys import PublicKey, Signer, jwks_to_keys
from lexecon_core.ledger._entry import utc_timestamp
from lexecon_core.ledger._verify import StoredRow, VerificationReport, verify_rows

FORMAT = "lexecon-ledger-bundle/1"
_MANIFEST_TAG = b"lexecon:bundle:manifest:v1\x00"
_FILES = ("entries.jsonl", "checkpoints.json", "jwks.json")


def _row_json(row: StoredRow) -> str:
    return json.dumps(
        {
            "seq": row.seq,
            "entry_type": row.entry_type,
            "created_at": row.created_at,
            "body": base64.b64encode(row.body).decode(),
            "prev_hash": row.prev_hash.hex(),
            "entry_hash": row.entry_hash.hex(),
            "kid": row.kid,
            "signature": base64.b64encode(row.signature).decode(),
            "decision_id": row.decision_id,
            "actor": row.actor,
            "tool": row.tool,
            "outcome": row.outcome,
            "purged": row.purged,
        },
        separators=(",", ":"),
    )


def write_bundle(
    path: Path,
    *,
    node_id: str,
    rows: Iterator[StoredRow],
    checkpoints: list[str],
    jwks: Mapping[str, Any],
    signer: Signer,
) -> dict[str, Any]:
    """Write a bundle; returns its manifest. The file appears only when complete (written beside it, then renamed)."""
    entries = io.BytesIO()
    count, head = 0, ""
    for row in rows:
        entries.write(_row_json(row).encode() + b"\n")
        count, head = row.seq, row.entry_hash.hex()
    files = {
        "entries.jsonl": entries.getvalue(),
        "checkpoints.json": json.dumps(checkpoints, indent=1).encode(),
        "jwks.json": json.dumps(jwks, indent=1, sort_keys=True).encode(),
    }
    manifest = {
        "format": FORMAT,
        "node_id": node_id,
        "entries": count,
        "head_hash": head,
        "exported_at": utc_timestamp(),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    signature = {"kid": signer.kid, "signature": base64.b64encode(signer.sign(_MANIFEST_TAG + manifest_bytes)).decode()}
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", manifest_bytes)
        archive.writestr("manifest.sig", json.dumps(signature))
        for name, data in files.items():
            archive.writestr(name, data)
    partial.replace(path)
    return manifest


def is_bundle(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def verify_bundle(
    path: Path,
    keys: Mapping[str, PublicKey] | None = None,
    *,
    key_source: str | None = None,
    anchors: Sequence[tuple[int, bytes]] = (),
    checkpoints: Sequence[str] = (),
) -> VerificationReport:
    """Verify a bundle offline. Without ``keys`` the bundle's own JWKS is used, and the report says it is unpinned."""
    try:
        with zipfile.ZipFile(path) as archive:
            contents = {name: archive.read(name) for name in ("manifest.json", "manifest.sig", *_FILES)}
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise LedgerError(f"not a Lexecon ledger bundle: {exc}") from None
    try:
        manifest = json.loads(contents["manifest.json"])
        signature = json.loads(contents["manifest.sig"])
        jwks = json.loads(contents["jwks.json"])
        notes = json.loads(contents["checkpoints.json"])
        if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
            raise ValueError("manifest.json is not a bundle manifest")
        if not (isinstance(signature, dict) and isinstance(signature.get("kid"), str)):
            raise ValueError("manifest.sig is not a signature record")
        if not (isinstance(jwks, dict) and isinstance(notes, list)):
            raise ValueError("jwks.json or checkpoints.json has the wrong shape")
        bundle_keys = jwks_to_keys(jwks)
    except (ValueError, TypeError, AttributeError, KeyError, LexeconError) as exc:
        raise LedgerError(f"damaged bundle: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise LedgerError(f"unknown bundle format {manifest.get('format')!r}")
    trusted = keys if keys is not None else bundle_keys
    source = key_source or ("trusted keys" if keys is not None else "keys inside the bundle (not independently pinned)")
    problem = _manifest_problem(manifest, signature, contents, trusted)
    node_id = str(manifest.get("node_id"))
    if problem is not None:
        return VerificationReport(False, 0, False, False, 1, problem, key_source=source)
    try:
        rows = list(_rows(contents["entries.jsonl"]))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LedgerError(f"damaged bundle: entries.jsonl is unreadable ({exc})") from None
    return verify_rows(
        iter(rows),
        node_id=node_id,
        keys=trusted,
        anchors=anchors,
        checkpoints=[*(str(n) for n in notes), *checkpoints],
        key_source=source,
    )


def _manifest_problem(
    manifest: Mapping[str, Any], signature: Mapping[str, Any], contents: Mapping[str, bytes], keys: Mapping[str, Any]
) -> str | None:
    key = keys.get(signature.get("kid", ""))
    if key is None:
        return f"bundle manifest is signed by an unknown key {signature.get('kid')!r}"
    try:
        raw_signature = base64.b64decode(signature.get("signature", ""), validate=True)
    except ValueError:
        return "bundle manifest signature is not base64"
    if not key.verify(raw_signature, _MANIFEST_TAG + contents["manifest.json"]):
        return "bundle manifest signature does not verify"
    for name in _FILES:
        if manifest.get("files", {}).get(name) != hashlib.sha256(contents[name]).hexdigest():
            return f"bundle file {name} does not match the signed manifest"
    return None


def _rows(data: bytes) -> Iterator[StoredRow]:
    for line in data.splitlines():
        if not line:
            continue
        item = json.loads(line)
        yield StoredRow(
            int(item["seq"]),
            str(item["entry_type"]),
            base64.b64decode(item["body"]),
            bytes.fromhex(item["prev_hash"]),
            bytes.fromhex(item["entry_hash"]),
            str(item["kid"]),
            base64.b64decode(item["signature"]),
            item.get("created_at"),
            item.get("decision_id"),
            item.get("actor"),
            item.get("tool"),
            item.get("outcome"),
            bool(item.get("purged", False)),
        )
