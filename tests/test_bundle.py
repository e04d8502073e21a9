"""Signed ledger exports: a bundle verifies offline, and tampering with it - or with what it claims - is caught."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import pytest

from lexecon_core import LedgerError, LocalGovernor
from lexecon_core.cli import main as cli_main
from lexecon_core.keys import Signer
from lexecon_core.ledger._bundle import verify_bundle


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


def test_bundle_verifies_with_pinned_keys(bundle: Path, governor: LocalGovernor) -> None:
    report = verify_bundle(bundle, governor.public_keys)
    assert report.valid and report.entries_verified == 8
    assert report.checkpoints_checked == 1  # the export signed a checkpoint covering its tail
    unpinned = verify_bundle(bundle)
    assert unpinned.valid and "not independently pinned" in unpinned.key_source


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
    ("member", "data"), [("manifest.json", b"[]"), ("manifest.sig", b'{"kid": ["x"]}'), ("jwks.json", b"[]")]
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
