"""Self-contained, signed ledger exports ("bundles") and their offline verification.

A bundle is a zip archive:

    manifest.json       format, node id, entry count, head hash, export time, SHA-256 of every other file
    manifest.sig        {"kid": ..., "signature": base64 Ed25519 over "lexecon:bundle:manifest:v1" 0x00 || manifest}
    entries.jsonl       one stored entry per line, the body as the exact stored bytes (base64)
    checkpoints.json    the signed checkpoint notes
    jwks.json           the public keys that signed entries, checkpoints and the manifest

Verifying a bundle checks the manifest signature and every file digest, then runs the same entry-by-entry and
checkpoint verification as a live ledger (``_verify.verify_pages``).

A bundle is untrusted input until its manifest signature verifies, and even a signed one may come from a hostile key
holder, so reading it is bounded (the ``MAX_*`` constants below): exactly the five members, each once (zipfile reads
the last of two same-named members, ``unzip`` the first: an auditor and the verifier would see different ledgers);
stored or deflated only (zipfile inflates other methods without an output bound); the small files and
checkpoints.json read whole up to a cap, counted as they are decompressed (a member's declared size is the archive's
claim, not a limit); entries.jsonl streamed line by line into the verifier, hashed on the way, never held whole.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lexecon_core.errors import LedgerError, LexeconError
from lexecon_core.keys import PublicKey, Signer, jwks_to_keys
from lexecon_core.ledger._entry import utc_timestamp
from lexecon_core.ledger._row import Row, StoredRow
from lexecon_core.ledger._verify import VerificationReport, verify_pages

FORMAT = "lexecon-ledger-bundle/1"
_MANIFEST_TAG = b"lexecon:bundle:manifest:v1\x00"
_FILES = ("entries.jsonl", "checkpoints.json", "jwks.json")
_MEMBERS = ("manifest.json", "manifest.sig", *_FILES)
_SMALL = ("manifest.json", "manifest.sig", "jwks.json")

# Limits on reading a bundle. Memory stays within a small multiple of these, whatever the bundle's size.
MAX_SMALL_MEMBER_BYTES = 1 << 20  # manifest.json, manifest.sig, jwks.json: a few KiB in any real bundle
# checkpoints.json is read whole: every root must be known before the walk reaches it. A note is about 300 bytes, so
# this holds some 200,000 checkpoints (200 million entries at the default interval of 1000).
MAX_CHECKPOINTS_BYTES = 64 << 20
# One line of entries.jsonl: an entry whose body is up to 12 MiB (base64). Bodies are bounded by the request fields
# and LEXECON_MAX_REQUEST_BYTES (1 MiB by default); a line is held, parsed and decoded at once, about 4 times its size.
MAX_LINE_BYTES = 16 << 20
# zipfile reads the central directory in one piece, at the size the archive's end record claims, and makes an
# object per listed member; five members need well under 1 KiB.
MAX_DIRECTORY_BYTES = 256 << 10
_CHUNK = 1 << 20  # decompressed bytes read from a member at a time
_PAGE_ROWS, _PAGE_BYTES = 1024, 8 << 20  # rows handed to the verifier at once: whichever limit is reached first
_ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_UNSUPPORTED_FLAGS = 0x01 | 0x20 | 0x40  # general purpose flags: encrypted, patched data, strongly encrypted
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)  # a damaged member, as zipfile reads it
_PARSE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError)  # JSON that is not what it should be


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


class _ArchiveFile(io.FileIO):
    """The bundle file. While zipfile reads the archive's directory, a read above MAX_DIRECTORY_BYTES is refused:
    zipfile reads the whole central directory at once, at a size the archive itself states, before any member could
    be checked. Reading members is bounded elsewhere (they are read a chunk at a time)."""

    reading_directory = True

    def read(self, size: int | None = -1, /) -> bytes:
        if self.reading_directory:
            wanted = size if size is not None and size >= 0 else os.fstat(self.fileno()).st_size - self.tell()
            if wanted > MAX_DIRECTORY_BYTES:
                raise LedgerError(f"damaged bundle: its zip directory is larger than {MAX_DIRECTORY_BYTES} bytes")
        return super().read(size)


def verify_bundle(
    path: Path,
    keys: Mapping[str, PublicKey] | None = None,
    *,
    key_source: str | None = None,
    anchors: Sequence[tuple[int, bytes]] = (),
    checkpoints: Sequence[str] = (),
) -> VerificationReport:
    """Verify a bundle offline. Without ``keys`` the bundle's own JWKS is used, and the report says it is unpinned
    (``keys_pinned`` False): that proves the bundle consistent, not that the node signed it.

    Raises LedgerError for a file that cannot be read as a bundle; contents that do not verify are a report.
    """
    try:
        file = _ArchiveFile(path)
    except OSError as exc:
        raise LedgerError(f"not a Lexecon ledger bundle: {exc}") from None
    with file:
        try:
            archive = zipfile.ZipFile(file)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise LedgerError(f"not a Lexecon ledger bundle: {exc}") from None
        file.reading_directory = False
        with archive:
            return _verify_archive(archive, keys, key_source, anchors, checkpoints)


def _verify_archive(
    archive: zipfile.ZipFile,
    keys: Mapping[str, PublicKey] | None,
    key_source: str | None,
    anchors: Sequence[tuple[int, bytes]],
    extra_notes: Sequence[str],
) -> VerificationReport:
    members = _members(archive)
    small = {name: _read_whole(archive, members[name], MAX_SMALL_MEMBER_BYTES) for name in _SMALL}
    try:
        manifest = json.loads(small["manifest.json"])
        signature = json.loads(small["manifest.sig"])
        jwks = json.loads(small["jwks.json"])
        if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
            raise ValueError("manifest.json is not a bundle manifest")
        if not (isinstance(signature, dict) and isinstance(signature.get("kid"), str)):
            raise ValueError("manifest.sig is not a signature record")
        if not isinstance(jwks, dict):
            raise ValueError("jwks.json has the wrong shape")
        bundle_keys = jwks_to_keys(jwks)
    except (*_PARSE_ERRORS, LexeconError) as exc:
        raise LedgerError(f"damaged bundle: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise LedgerError(f"unknown bundle format {manifest.get('format')!r}")
    pinned = keys is not None
    trusted = keys if keys is not None else bundle_keys
    source = key_source or ("trusted keys" if pinned else "keys inside the bundle (not independently pinned)")
    digests: Mapping[str, Any] = manifest["files"]
    # The signature first: with pinned keys a forged bundle is refused before anything large is read.
    problem = _signature_problem(signature, small["manifest.json"], trusted) or _digest_problem(
        digests, "jwks.json", small["jwks.json"]
    )
    if problem is None:
        raw_notes = _read_whole(archive, members["checkpoints.json"], MAX_CHECKPOINTS_BYTES)
        problem = _digest_problem(digests, "checkpoints.json", raw_notes)
    if problem is not None:
        return _rejected(problem, source, pinned=pinned)
    try:
        notes = json.loads(raw_notes)
        if not isinstance(notes, list):
            raise ValueError("checkpoints.json has the wrong shape")
    except _PARSE_ERRORS as exc:
        raise LedgerError(f"damaged bundle: {exc}") from None
    del raw_notes
    report = _verify_entries(
        archive,
        members["entries.jsonl"],
        digests.get("entries.jsonl"),
        node_id=str(manifest.get("node_id")),
        keys=trusted,
        anchors=anchors,
        checkpoints=[*(str(n) for n in notes), *extra_notes],
        key_source=source,
    )
    report.keys_pinned = pinned  # whatever the entries' outcome
    return report


def _verify_entries(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    digest: object,
    *,
    node_id: str,
    keys: Mapping[str, PublicKey],
    anchors: Sequence[tuple[int, bytes]],
    checkpoints: Sequence[str],
    key_source: str,
) -> VerificationReport:
    """Stream entries.jsonl through the entry verifier, then compare its digest with the signed one."""
    try:
        member = archive.open(info)
    except _READ_ERRORS as exc:
        raise LedgerError(f"damaged bundle: cannot read entries.jsonl ({exc})") from None
    report: VerificationReport | None = None
    damage = ""
    with member:
        entries = _Entries(member)
        pages = entries.pages()
        try:
            report = verify_pages(
                pages, node_id=node_id, keys=keys, anchors=anchors, checkpoints=checkpoints, key_source=key_source
            )
        except _Unreadable as exc:
            damage = str(exc)
        finally:
            pages.close()  # drops the page and partial line it may hold
        # The rest too, when the verifier stopped early: whether this is the file the manifest signed decides what a
        # failure means (changed after export, or exported so), and that finding comes first, as it always has.
        entries.drain()
    if not entries.matches(digest):
        return _rejected("bundle file entries.jsonl does not match the signed manifest", key_source)
    if report is None:
        raise LedgerError(f"damaged bundle: {damage}")
    return report


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The five members, each exactly once, stored or deflated, not encrypted: anything else is refused, not
    skipped, so that every zip tool shows the same contents the verifier checked."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.filename in members:
            raise LedgerError(f"damaged bundle: duplicate member {_shown(info.filename)}")
        members[info.filename] = info
    missing = [name for name in _MEMBERS if name not in members]
    if missing:
        raise LedgerError(f"not a Lexecon ledger bundle: no member {missing[0]}")
    unexpected = [name for name in members if name not in _MEMBERS]
    if unexpected:
        raise LedgerError(f"damaged bundle: unexpected member {unexpected[0]!r}")
    for name, info in members.items():
        if info.compress_type not in _ALLOWED_COMPRESSION:
            method = info.compress_type
            raise LedgerError(f"damaged bundle: {name} uses compression method {method} (bundles are deflated)")
        if info.flag_bits & _UNSUPPORTED_FLAGS:
            raise LedgerError(f"damaged bundle: {name} is encrypted or patched (zip flags {info.flag_bits:#06x})")
    return members


def _shown(name: str) -> str:
    return name if name in _MEMBERS else repr(name)  # a name from the archive may hold anything


def _read_whole(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytearray:
    """A member, read a chunk at a time and refused as soon as it passes ``limit`` (counted as decompressed)."""
    data = bytearray()
    try:
        with archive.open(info) as member:
            while chunk := member.read(min(_CHUNK, limit + 1 - len(data))):
                data += chunk
                if len(data) > limit:
                    raise LedgerError(f"damaged bundle: {info.filename} is larger than {limit} bytes")
    except _READ_ERRORS as exc:
        raise LedgerError(f"damaged bundle: cannot read {info.filename} ({exc})") from None
    return data


def _rejected(problem: str, source: str, *, pinned: bool = True) -> VerificationReport:
    return VerificationReport(False, 0, False, False, 1, problem, key_source=source, keys_pinned=pinned)


def _signature_problem(
    signature: Mapping[str, Any], manifest: bytes | bytearray, keys: Mapping[str, Any]
) -> str | None:
    key = keys.get(signature.get("kid", ""))
    if key is None:
        return f"bundle manifest is signed by an unknown key {signature.get('kid')!r}"
    try:
        raw_signature = base64.b64decode(signature.get("signature", ""), validate=True)
    except (ValueError, TypeError):
        return "bundle manifest signature is not base64"
    if not key.verify(raw_signature, _MANIFEST_TAG + manifest):
        return "bundle manifest signature does not verify"
    return None


def _digest_problem(digests: Mapping[str, Any], name: str, data: bytes | bytearray) -> str | None:
    if digests.get(name) != hashlib.sha256(data).hexdigest():
        return f"bundle file {name} does not match the signed manifest"
    return None


class _Unreadable(Exception):
    """A line of entries.jsonl that is no entry. Tampering or a damaged export: the file's digest tells which."""


class _Entries:
    """entries.jsonl as it is decompressed: hashed a chunk at a time, cut into lines, parsed into rows and handed to
    the verifier in pages. Only the chunk at hand, a line that spans chunks and the page being filled are held."""

    def __init__(self, member: IO[bytes]) -> None:
        self._member = member
        self._sha256 = hashlib.sha256()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._member.read(_CHUNK)
            except _READ_ERRORS as exc:
                raise LedgerError(f"damaged bundle: cannot read entries.jsonl ({exc})") from None
            if not chunk:
                return
            self._sha256.update(chunk)
            yield chunk

    def drain(self) -> None:
        """Read (and hash) what the verifier did not ask for."""
        for _ in self._chunks():
            pass

    def matches(self, digest: object) -> bool:
        return self._sha256.hexdigest() == digest

    def _lines(self) -> Iterator[bytes]:
        pending: list[bytes] = []  # the start of a line that continues in the next chunk
        held = done = 0
        for chunk in self._chunks():
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if lines and pending:
                lines[0] = b"".join([*pending, lines[0]])
                pending, held = [], 0
                if len(lines[0]) > MAX_LINE_BYTES:  # the others lie within one chunk, which is smaller
                    raise _Unreadable(f"entries.jsonl line {done + 1} is longer than {MAX_LINE_BYTES} bytes")
            yield from lines
            done += len(lines)
            if tail:
                pending.append(tail)
                held += len(tail)
                if held > MAX_LINE_BYTES:
                    raise _Unreadable(f"entries.jsonl line {done + 1} is longer than {MAX_LINE_BYTES} bytes")
        if pending:
            yield b"".join(pending)  # the last line, without its newline

    def pages(self) -> Generator[list[Row], None, None]:
        page: list[Row] = []
        size = 0
        for number, line in enumerate(self._lines(), 1):
            if not line:  # never written; refused rather than skipped, which a file of newlines would make slow
                raise _Unreadable(f"entries.jsonl line {number} is empty")
            try:
                page.append(_row(line))
            except _PARSE_ERRORS as exc:
                raise _Unreadable(
                    f"entries.jsonl line {number} is not an entry ({type(exc).__name__}: {exc})"
                ) from None
            size += len(line)
            if len(page) == _PAGE_ROWS or size >= _PAGE_BYTES:
                yield page
                page, size = [], 0
        if page:
            yield page


def _row(line: bytes) -> Row:
    """A line as a row for ``verify_pages``: StoredRow's fields, in its order."""
    item = json.loads(line)
    return (
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
