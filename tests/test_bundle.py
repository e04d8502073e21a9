"""Signed ledger exports: a bundle verifies offline, and tampering with it - or with what it claims - is caught."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from lexecon_core import LedgerError, LocalGovernor
from lexecon_core.cli import main as cli_main
from lexecon_core.keys import Signer
from lexecon_core.ledger import _bundle
from lexecon_core.ledger._bundle import verify_bundle

MEMBERS = ("manifest.json", "manifest.sig", "entries.jsonl", "checkpoints.json", "jwks.json")


@pytest.fixture
def bundle(governor: LocalGovernor, tmp_path: Path) -> Path:
    for i in range(5):
        governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": i}})
    governor.decide({"actor": "ai_agent:a", "tool": "delete_user", "tool_args": {"id": 1}})
    path = tmp_path / "ledger.zip"
    manifest = governor.node.ledger.export(path)
    assert manifest["entries"] == 8 and manifest["node_id"] == "test-node"
    return path


def rewrite(path: Path, **changes: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents.update({name.replace("_", "."): data for name, data in changes.items()})
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def read(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def signed_manifest(manifest: dict[str, object], signer: Signer) -> dict[str, bytes]:
    """manifest.json and manifest.sig as the key holder (or, for an unpinned check, anyone) would write them."""
    data = json.dumps(manifest).encode()
    signature = base64.b64encode(signer.sign(b"lexecon:bundle:manifest:v1\x00" + data)).decode()
    return {"manifest.json": data, "manifest.sig": json.dumps({"kid": signer.kid, "signature": signature}).encode()}


def resign(path: Path, signer: Signer, **changes: bytes) -> None:
    """Rewrite members, then sign a manifest over their new digests."""
    rewrite(path, **changes)
    manifest = json.loads(read(path, "manifest.json"))
    manifest["files"] = {name: hashlib.sha256(read(path, name)).hexdigest() for name in manifest["files"]}
    rewrite(path, **{name.replace(".", "_"): data for name, data in signed_manifest(manifest, signer).items()})


def test_bundle_verifies_with_pinned_keys(bundle: Path, governor: LocalGovernor) -> None:
    report = verify_bundle(bundle, governor.public_keys)
    assert report.valid and report.entries_verified == 8 and report.keys_pinned
    assert report.checkpoints_checked == 1  # the export signed a checkpoint covering its tail
    unpinned = verify_bundle(bundle)
    assert unpinned.valid and "not independently pinned" in unpinned.key_source
    assert not unpinned.keys_pinned and unpinned.to_dict()["keys_pinned"] is False


def test_bundle_from_another_key_is_refused(bundle: Path) -> None:
    stranger = Signer.generate()
    report = verify_bundle(bundle, {stranger.kid: stranger.public})
    assert not report.valid and "unknown key" in (report.reason or "")


def test_edited_entry_breaks_the_manifest(bundle: Path, governor: LocalGovernor) -> None:
    lines = read(bundle, "entries.jsonl").splitlines()
    entry = json.loads(lines[4])
    entry["body"] = base64.b64encode(base64.b64decode(entry["body"]).replace(b"search", b"seerch")).decode()
    lines[4] = json.dumps(entry).encode()
    rewrite(bundle, entries_jsonl=b"\n".join(lines) + b"\n")
    report = verify_bundle(bundle, governor.public_keys)
    assert not report.valid and "entries.jsonl does not match the signed manifest" in (report.reason or "")


def test_truncated_bundle_with_forged_manifest_is_caught(bundle: Path, governor: LocalGovernor) -> None:
    """Dropping the tail and fixing the digest needs a new manifest signature: without the key it fails."""
    import hashlib

    lines = read(bundle, "entries.jsonl").splitlines()[:5]
    entries = b"\n".join(lines) + b"\n"
    manifest = json.loads(read(bundle, "manifest.json"))
    manifest["files"]["entries.jsonl"] = hashlib.sha256(entries).hexdigest()
    manifest["entries"] = 5
    rewrite(bundle, entries_jsonl=entries, manifest_json=json.dumps(manifest).encode())
    report = verify_bundle(bundle, governor.public_keys)
    assert not report.valid and "manifest signature does not verify" in (report.reason or "")


def test_truncated_bundle_re_signed_by_the_operator_is_caught_by_the_checkpoint(
    bundle: Path, governor: LocalGovernor
) -> None:
    """Even the key holder cannot drop entries a signed checkpoint already covers."""
    import hashlib

    signer = governor.node.keys.signer
    lines = read(bundle, "entries.jsonl").splitlines()[:5]
    entries = b"\n".join(lines) + b"\n"
    manifest = json.loads(read(bundle, "manifest.json"))
    manifest["files"]["entries.jsonl"] = hashlib.sha256(entries).hexdigest()
    manifest_bytes = json.dumps(manifest).encode()
    signature = base64.b64encode(signer.sign(b"lexecon:bundle:manifest:v1\x00" + manifest_bytes)).decode()
    rewrite(
        bundle,
        entries_jsonl=entries,
        manifest_json=manifest_bytes,
        manifest_sig=json.dumps({"kid": signer.kid, "signature": signature}).encode(),
    )
    report = verify_bundle(bundle, governor.public_keys)
    assert not report.valid and "truncated" in (report.reason or "")


def test_cli_export_and_verify(governor: LocalGovernor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(governor.settings.home)
    out = tmp_path / "cli.zip"
    with pytest.raises(SystemExit) as exited:
        cli_main(["ledger", "export", "--home", home, "--out", str(out)])
    assert exited.value.code == 0 and out.is_file()
    assert "exported 2 entries" in capsys.readouterr().out  # genesis + policy: this test made no decisions
    with pytest.raises(SystemExit) as exited:
        cli_main(["keys", "export", "--home", home])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(out), "--jwks", str(jwks), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exited.value.code == 0 and report["valid"] and report["key_source"].startswith("pinned JWKS")
    rewrite(out, jwks_json=b"{}")
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(out), "--jwks", str(jwks), "--json"])
    assert exited.value.code == 1


def test_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(LedgerError, match="not a Lexecon ledger bundle"):
        verify_bundle(junk)


@pytest.mark.parametrize(
    ("member", "data"),
    [
        ("manifest.json", b"[]"),
        ("manifest.sig", b'{"kid": ["x"]}'),
        ("jwks.json", b"[]"),
        ("manifest.sig", b"[" * 100_000),  # nested past the parser's recursion limit
    ],
)
def test_malformed_bundle_members_are_a_clear_error(
    bundle: Path, governor: LocalGovernor, member: str, data: bytes
) -> None:
    rewrite(bundle, **{member.replace(".", "_"): data})
    with pytest.raises(LedgerError, match="damaged bundle"):
        verify_bundle(bundle, governor.public_keys)


def test_garbled_entries_fail_the_signed_digest(bundle: Path, governor: LocalGovernor) -> None:
    rewrite(bundle, entries_jsonl=b"{}\n")
    report = verify_bundle(bundle, governor.public_keys)
    assert not report.valid and "entries.jsonl does not match" in (report.reason or "")


# -- Reading a bundle: what zip tools show is what is verified, and a crafted archive costs bounded memory ----------


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, on writing the crafted archive
@pytest.mark.parametrize("member", MEMBERS)
def test_duplicate_member_is_refused(bundle: Path, governor: LocalGovernor, member: str) -> None:
    """zipfile reads the last of two same-named members, `unzip` shows the first: the copy an auditor reads first is
    the forged one, the verifier would check the genuine one behind it."""
    with zipfile.ZipFile(bundle) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr(member, b"forged")
        for name, data in contents.items():
            archive.writestr(name, data)
    with pytest.raises(LedgerError, match=rf"damaged bundle: duplicate member {re.escape(member)}$"):
        verify_bundle(bundle, governor.public_keys)


def test_unexpected_member_is_refused(bundle: Path, governor: LocalGovernor) -> None:
    rewrite(bundle, README_txt=b"nothing to see")
    with pytest.raises(LedgerError, match=r"damaged bundle: unexpected member 'README\.txt'"):
        verify_bundle(bundle, governor.public_keys)


def test_member_compressed_another_way_is_refused(bundle: Path, governor: LocalGovernor) -> None:
    """zipfile inflates bzip2 and LZMA without an output bound: a few KiB could become gigabytes in one call."""
    with zipfile.ZipFile(bundle) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in contents.items():
            method = zipfile.ZIP_BZIP2 if name == "entries.jsonl" else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    with pytest.raises(LedgerError, match=r"entries\.jsonl uses compression method 12"):
        verify_bundle(bundle, governor.public_keys)


def test_huge_zip_directory_is_refused_before_it_is_read(bundle: Path, governor: LocalGovernor) -> None:
    with zipfile.ZipFile(bundle, "a") as archive:
        for i in range(6000):  # about 500 KiB of directory; zipfile would read it whole and make 6000 objects
            archive.writestr(f"padding/{i:08d}-{'x' * 32}", b"")
    with pytest.raises(LedgerError, match="zip directory is larger than"):
        verify_bundle(bundle, governor.public_keys)


def test_oversized_small_member_is_refused(bundle: Path, governor: LocalGovernor) -> None:
    """manifest.sig is covered by no digest: padded with 2 MiB of JSON whitespace it still parsed and verified."""
    signature = json.loads(read(bundle, "manifest.sig"))
    rewrite(bundle, manifest_sig=json.dumps(signature).encode() + b" " * (2 << 20))
    with pytest.raises(LedgerError, match=r"manifest\.sig is larger than 1048576 bytes"):
        verify_bundle(bundle, governor.public_keys)


def test_checkpoints_cap(bundle: Path, governor: LocalGovernor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bundle, "MAX_CHECKPOINTS_BYTES", 64)
    with pytest.raises(LedgerError, match=r"checkpoints\.json is larger than 64 bytes"):
        verify_bundle(bundle, governor.public_keys)


def test_entries_stream_across_chunk_boundaries(
    bundle: Path, governor: LocalGovernor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines split across reads are put back together (a chunk of 7 bytes cuts every line several times)."""
    monkeypatch.setattr(_bundle, "_CHUNK", 7)
    report = verify_bundle(bundle, governor.public_keys)
    assert report.valid and report.entries_verified == 8


def test_line_cap(bundle: Path, governor: LocalGovernor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line over the cap in the signed file is a damaged bundle; the same line in a changed file is a finding."""
    monkeypatch.setattr(_bundle, "_CHUNK", 64)
    monkeypatch.setattr(_bundle, "MAX_LINE_BYTES", 200)
    with pytest.raises(LedgerError, match=r"entries\.jsonl line 1 is longer than 200 bytes"):
        verify_bundle(bundle, governor.public_keys)
    rewrite(bundle, entries_jsonl=read(bundle, "entries.jsonl") + b"x" * 1000)
    report = verify_bundle(bundle, governor.public_keys)
    assert not report.valid and "entries.jsonl does not match the signed manifest" in (report.reason or "")


def test_rows_that_verify_but_differ_from_the_signed_file_are_invalid(bundle: Path, governor: LocalGovernor) -> None:
    """The digest is computed as the entries stream past the verifier: the same rows, written differently, verify
    one by one, and the file is still not the one the manifest signed."""
    lines = read(bundle, "entries.jsonl").splitlines()
    rewrite(bundle, entries_jsonl=b"".join(json.dumps(json.loads(line)).encode() + b"\n" for line in lines))
    report = verify_bundle(bundle, governor.public_keys)
    assert not report.valid and report.reason == "bundle file entries.jsonl does not match the signed manifest"
    assert report.first_bad_seq == 1 and report.entries_verified == 0


def test_signed_but_unreadable_entries_are_a_damaged_bundle(bundle: Path, governor: LocalGovernor) -> None:
    resign(bundle, governor.node.keys.signer, entries_jsonl=read(bundle, "entries.jsonl") + b"\n[1]\n")
    with pytest.raises(LedgerError, match=r"damaged bundle: entries\.jsonl line 9 is empty"):
        verify_bundle(bundle, governor.public_keys)


def inflating_bundle(bundle: Path, piece: bytes, total: int, signer: Signer | None = None) -> Path:
    """``bundle`` with entries.jsonl replaced by ``piece`` repeated to ``total`` bytes, deflated as it is written, so
    neither the test nor the disk holds it: the archive is a few hundred KiB. With ``signer``, the manifest is signed
    over the new digest (what a hostile key holder, or anyone for an unpinned check, can do)."""
    with zipfile.ZipFile(bundle) as archive:
        others = {name: archive.read(name) for name in archive.namelist() if name != "entries.jsonl"}
    digest = hashlib.sha256()
    out = bundle.with_name("inflating.zip")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("entries.jsonl", "w") as member:
            for _ in range(total // len(piece)):
                member.write(piece)
                digest.update(piece)
        if signer is not None:
            manifest = json.loads(others["manifest.json"])
            manifest["files"]["entries.jsonl"] = digest.hexdigest()
            others.update(signed_manifest(manifest, signer))
        for name, data in others.items():
            archive.writestr(name, data)
    return out


@pytest.mark.parametrize("shape", ["one endless line", "the first entry over and over, signed"])
def test_inflating_entries_keep_memory_flat(bundle: Path, governor: LocalGovernor, shape: str) -> None:
    """A bundle of a few hundred KiB whose entries.jsonl inflates to 256 MiB: the verifier read every member whole
    and built every row first (a 399 KiB bundle took 890 MB). Now it streams, within a small, fixed amount."""
    total = 256 << 20
    if shape == "one endless line":
        crafted = inflating_bundle(bundle, b"x" * (1 << 20), total)
    else:
        first = read(bundle, "entries.jsonl").splitlines()[0] + b"\n"
        crafted = inflating_bundle(bundle, first * ((1 << 20) // len(first)), total, governor.node.keys.signer)
    assert crafted.stat().st_size < 4 << 20
    tracemalloc.start()
    started = time.perf_counter()
    try:
        report = verify_bundle(crafted, governor.public_keys)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak traced memory {peak / 2**20:.0f} MiB"
    assert elapsed < 30
    assert not report.valid
    if shape == "one endless line":
        assert report.reason == "bundle file entries.jsonl does not match the signed manifest"
    else:  # the file is the one the manifest signed: the finding is the entries'
        assert report.first_bad_seq == 2 and "sequence repeat" in (report.reason or "")


def test_cli_unpinned_bundle_is_not_plain_valid(
    bundle: Path, governor: LocalGovernor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --jwks a bundle is checked against its own keys: consistent, not proven the node's. Exit 3."""
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(bundle)])
    out = capsys.readouterr().out
    assert exited.value.code == 3
    assert out.startswith("UNPINNED  8 entries consistent, but the keys came from the bundle itself")
    assert "pass --jwks" in out and "valid" not in out.split("\n")[0]
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(bundle), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exited.value.code == 3 and report["status"] == "unpinned" and report["valid"]
    assert report["keys_pinned"] is False
    jwks = tmp_path / "jwks.json"
    jwks.write_text(read(bundle, "jwks.json").decode())
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(bundle), "--jwks", str(jwks), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exited.value.code == 0 and report["status"] == "valid" and report["keys_pinned"] is True
    rewrite(bundle, entries_jsonl=b"{}\n")
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(bundle), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exited.value.code == 1 and report["status"] == "invalid" and report["keys_pinned"] is False


def test_cli_report_prints_what_the_file_says_literally(
    bundle: Path, governor: LocalGovernor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kid from the file is quoted in the reason: as text, never as console markup that could restyle the line."""
    signature = json.loads(read(bundle, "manifest.sig"))
    rewrite(bundle, manifest_sig=json.dumps({**signature, "kid": "[/][bold green]valid"}).encode())
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify-ledger", "--ledger-file", str(bundle)])
    out = capsys.readouterr().out
    assert exited.value.code == 1
    assert out.startswith(
        "INVALID  first bad entry 1: bundle manifest is signed by an unknown key '[/][bold green]valid'"
    )
