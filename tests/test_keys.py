"""Keys, settings and the node home: init, permissions, master key, rotation, configuration precedence."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lexecon_core import (
    ConfigError,
    KeyStoreError,
    LocalGovernor,
    PolicyMode,
    init_node,
    load_settings,
    open_node,
    verify_token,
)
from lexecon_core.cli import main as cli_main
from lexecon_core.keys import KeyRing, PublicKey, Signer, jwks_to_keys, key_id

MASTER = "correct-horse-battery-staple-9f3a"

STRICT_POLICY = """
name: strict-test
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: search, term_type: tool, value: search}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: search}
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(pub_path: Path) -> bytes:
    loaded = serialization.load_pem_public_key(pub_path.read_bytes())
    assert isinstance(loaded, Ed25519PublicKey)
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "node"


# -- init -----------------------------------------------------------------------------------------------------------


def test_init_creates_keys_config_and_genesis(root: Path) -> None:
    node = init_node(root, node_id="node-1")
    try:
        kid = node.keys.active_kid
        keys_dir = root / "keys"
        key_file = keys_dir / f"{kid}.key"
        pub_file = keys_dir / f"{kid}.pub"

        assert key_file.is_file()
        assert _mode(key_file) == 0o600
        assert _mode(keys_dir) == 0o700
        assert _mode(root) == 0o700
        assert _mode(root / "ledger.db") == 0o600
        assert pub_file.is_file()
        assert (keys_dir / "active").read_text().strip() == kid
        assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # no master key: plain PKCS#8

        config = json.loads((root / "config.json").read_text())
        assert config["node_id"] == "node-1"
        assert node.node_id == "node-1"

        genesis = node.ledger.get(1)
        assert genesis is not None
        assert genesis.seq == 1
        assert genesis.entry_type == "ledger_genesis"
        assert genesis.kid == kid
        assert genesis.data["kid"] == kid
        assert genesis.data["node_id"] == "node-1"
        assert _unb64(genesis.data["public_key"]) == node.keys.signer.public.raw
        assert node.ledger.count() == 1
        assert node.ledger.verify(node.trusted_keys()).valid
    finally:
        node.close()


def test_reinit_is_refused_without_force(root: Path) -> None:
    init_node(root, node_id="node-1").close()
    before = {p.name: p.read_bytes() for p in (root / "keys").iterdir()}
    with pytest.raises(ConfigError, match="already a Lexecon home"):
        init_node(root, node_id="node-1")
    assert {p.name: p.read_bytes() for p in (root / "keys").iterdir()} == before


def test_reinit_with_force_keeps_the_keys(root: Path) -> None:
    first = init_node(root, node_id="node-1")
    kid = first.keys.active_kid
    first.close()
    key_bytes = (root / "keys" / f"{kid}.key").read_bytes()
    pub_bytes = (root / "keys" / f"{kid}.pub").read_bytes()

    second = init_node(root, node_id="node-1", force=True)
    try:
        assert second.keys.active_kid == kid
        assert sorted(p.name for p in (root / "keys").iterdir()) == sorted(["active", f"{kid}.key", f"{kid}.pub"])
        assert (root / "keys" / f"{kid}.key").read_bytes() == key_bytes
        assert (root / "keys" / f"{kid}.pub").read_bytes() == pub_bytes
        assert _mode(root / "keys" / f"{kid}.key") == 0o600
        # no second genesis: the existing ledger is kept as it was
        assert [e.entry_type for e in second.ledger.entries()] == ["ledger_genesis"]
    finally:
        second.close()


def test_force_with_a_different_node_id_is_refused_while_a_ledger_exists(root: Path) -> None:
    init_node(root, node_id="node-1").close()
    with pytest.raises(ConfigError, match="node-1"):
        init_node(root, node_id="node-2", force=True)
    assert json.loads((root / "config.json").read_text())["node_id"] == "node-1"
    node = open_node(root)
    try:
        assert node.node_id == "node-1"
    finally:
        node.close()


def test_force_with_a_different_node_id_is_refused_even_if_env_names_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_node(root, node_id="node-1").close()
    monkeypatch.setenv("LEXECON_NODE_ID", "node-2")
    try:
        with pytest.raises(ConfigError):
            init_node(root, node_id="node-2", force=True)
    finally:
        monkeypatch.delenv("LEXECON_NODE_ID")
        # whatever happened, the home must still open as node-1
        assert json.loads((root / "config.json").read_text())["node_id"] == "node-1"


def test_init_refuses_an_invalid_node_id(root: Path) -> None:
    with pytest.raises(ConfigError, match="LEXECON_NODE_ID"):
        init_node(root, node_id="has spaces")
    assert not (root / "keys").exists()


def test_open_node_without_home_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lexecon init"):
        open_node(tmp_path / "nowhere")


# -- key ids and JWKS -----------------------------------------------------------------------------------------------


def test_kid_is_derived_from_the_public_key(root: Path) -> None:
    node = init_node(root, node_id="node-1")
    try:
        kid = node.keys.active_kid
        raw = _raw_public(root / "keys" / f"{kid}.pub")
        assert len(raw) == 32
        assert kid == key_id(raw)
        assert len(kid) == 22  # base64url of 16 bytes, unpadded
        assert "=" not in kid
        assert node.keys.signer.public.raw == raw

        (jwk,) = node.keys.jwks()["keys"]
        assert jwk["kty"] == "OKP"
        assert jwk["crv"] == "Ed25519"
        assert jwk["alg"] == "EdDSA"
        assert jwk["use"] == "sig"
        assert jwk["kid"] == kid
        assert _unb64(jwk["x"]) == raw
        assert "d" not in jwk  # never the private part
        assert jwks_to_keys(node.keys.jwks()) == {kid: PublicKey(kid, raw)}
    finally:
        node.close()


def test_signer_signatures_verify_with_the_public_half() -> None:
    signer = Signer.generate()
    signature = signer.sign(b"message")
    assert signer.public.verify(signature, b"message")
    assert not signer.public.verify(signature, b"massage")
    assert not Signer.generate().public.verify(signature, b"message")
    assert "PRIVATE" not in repr(signer)


def test_public_key_must_be_32_bytes() -> None:
    with pytest.raises(KeyStoreError):
        PublicKey.from_raw(b"\x00" * 31)


def test_jwks_kid_mismatch_is_refused() -> None:
    jwk = Signer.generate().public.to_jwk()
    with pytest.raises(KeyStoreError, match="does not match"):
        jwks_to_keys({"keys": [{**jwk, "kid": "forged-kid"}]})


def test_keyring_create_refuses_to_replace_a_key(tmp_path: Path) -> None:
    KeyRing.create(tmp_path / "keys")
    with pytest.raises(KeyStoreError, match="refusing"):
        KeyRing.create(tmp_path / "keys")


# -- master key -----------------------------------------------------------------------------------------------------


def test_master_key_encrypts_the_key_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = init_node(root, node_id="node-1", master_key=MASTER)
    kid = node.keys.active_kid
    node.close()
    pem = (root / "keys" / f"{kid}.key").read_text()
    assert "ENCRYPTED" in pem.splitlines()[0]
    assert _mode(root / "keys" / f"{kid}.key") == 0o600
    # the master key is written nowhere in the home
    for path in root.rglob("*"):
        if path.is_file():
            assert MASTER.encode() not in path.read_bytes(), path

    monkeypatch.setenv("LEXECON_MASTER_KEY", MASTER)
    reopened = open_node(root)
    try:
        assert reopened.keys.active_kid == kid
        assert MASTER not in repr(reopened.settings)
        assert MASTER not in str(reopened.settings.model_dump())
    finally:
        reopened.close()


def test_encrypted_key_without_master_key(root: Path) -> None:
    init_node(root, node_id="node-1", master_key=MASTER).close()
    with pytest.raises(KeyStoreError, match="LEXECON_MASTER_KEY") as info:
        open_node(root)
    assert MASTER not in str(info.value)
    # read-only opening needs no private key and so no master key
    reader = open_node(root, signer=False)
    try:
        assert reader.ledger.verify(reader.trusted_keys()).valid
    finally:
        reader.close()


def test_wrong_master_key(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_node(root, node_id="node-1", master_key=MASTER).close()
    wrong = "not-the-master-key-7c1e"
    monkeypatch.setenv("LEXECON_MASTER_KEY", wrong)
    with pytest.raises(KeyStoreError, match="LEXECON_MASTER_KEY") as info:
        open_node(root)
    assert wrong not in str(info.value)
    assert MASTER not in str(info.value)
    with pytest.raises(KeyStoreError) as info2:
        LocalGovernor(root)
    assert wrong not in str(info2.value)


def test_force_reinit_with_wrong_master_key_fails_without_touching_keys(root: Path) -> None:
    node = init_node(root, node_id="node-1", master_key=MASTER)
    kid = node.keys.active_kid
    node.close()
    before = (root / "keys" / f"{kid}.key").read_bytes()
    with pytest.raises(KeyStoreError) as info:
        init_node(root, node_id="node-1", force=True, master_key="another-secret-0000")
    assert "another-secret-0000" not in str(info.value)
    assert (root / "keys" / f"{kid}.key").read_bytes() == before


def test_key_file_with_loose_permissions_is_refused(root: Path) -> None:
    node = init_node(root, node_id="node-1")
    kid = node.keys.active_kid
    node.close()
    key_file = root / "keys" / f"{kid}.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyStoreError, match="0600") as info:
        open_node(root)
    assert "0644" in str(info.value)
    os.chmod(key_file, 0o600)
    open_node(root).close()


def test_key_file_readable_by_group_is_refused(root: Path) -> None:
    node = init_node(root, node_id="node-1")
    kid = node.keys.active_kid
    node.close()
    os.chmod(root / "keys" / f"{kid}.key", 0o640)
    with pytest.raises(KeyStoreError, match="0600"):
        KeyRing.load(root / "keys")


# -- rotation -------------------------------------------------------------------------------------------------------


def test_rotation(home: Path) -> None:
    actor = "ai_agent:support_bot"
    with LocalGovernor(home) as gov:
        before = gov.decide({"actor": actor, "tool": "refund", "tool_args": {"amount": 10}})
        assert before.approved
        old_kid = gov.node.keys.active_kid

    node = open_node(home)
    try:
        new_kid = node.rotate_keys()
        assert new_kid != old_kid
        assert node.keys.active_kid == new_kid
    finally:
        node.close()

    keys_dir = home / "keys"
    assert not (keys_dir / f"{old_kid}.key").exists()
    assert (keys_dir / f"{old_kid}.pub").exists()
    assert (keys_dir / f"{new_kid}.key").exists()
    assert _mode(keys_dir / f"{new_kid}.key") == 0o600
    assert (keys_dir / "active").read_text().strip() == new_kid

    with LocalGovernor(home) as gov:
        assert gov.node.keys.active_kid == new_kid
        after = gov.decide({"actor": actor, "tool": "search", "tool_args": {"q": "x"}})
        assert after.approved

        (rotated,) = gov.node.ledger.entries(entry_type="key_rotated")
        assert rotated.kid == old_kid  # the old key vouches for the new one
        assert rotated.data["old_kid"] == old_kid
        assert rotated.data["new_kid"] == new_kid
        assert key_id(_unb64(rotated.data["new_public_key"])) == new_kid
        assert rotated.seq < after.ledger_entry_id

        decision_entries = gov.node.ledger.entries(entry_type="decision")
        assert [e.kid for e in decision_entries] == [old_kid, new_kid]

        report = gov.verify_ledger()
        assert report.valid, report.reason
        assert report.entries_verified == gov.node.ledger.count()

        # a token issued before the rotation still verifies, and so does one issued after
        old_claims = gov.verify_token(before.capability_token, tool="refund", args={"amount": 10})
        assert old_claims.kid == old_kid
        assert gov.verify_token(after.capability_token, tool="search", args={"q": "x"}).kid == new_kid

        jwks = gov.jwks()
        assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}


def test_rotation_keys_export_lists_both(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = open_node(home)
    old_kid = node.keys.active_kid
    new_kid = node.rotate_keys()
    node.close()

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["keys", "export", "--home", str(home)])
    assert exit_info.value.code == 0
    exported = json.loads(capsys.readouterr().out)
    assert {k["kid"] for k in exported["keys"]} == {old_kid, new_kid}
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" and k["alg"] == "EdDSA" for k in exported["keys"])
    assert set(jwks_to_keys(exported)) == {old_kid, new_kid}


def test_rotation_with_master_key_encrypts_the_new_key(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_node(root, node_id="node-1", master_key=MASTER).close()
    monkeypatch.setenv("LEXECON_MASTER_KEY", MASTER)
    node = open_node(root)
    try:
        new_kid = node.rotate_keys()
    finally:
        node.close()
    assert "ENCRYPTED" in (root / "keys" / f"{new_kid}.key").read_text().splitlines()[0]
    reopened = open_node(root)
    try:
        assert reopened.keys.active_kid == new_kid
        assert reopened.ledger.verify(reopened.trusted_keys()).valid
    finally:
        reopened.close()


def test_token_from_before_rotation_verifies_with_exported_jwks(home: Path) -> None:
    with LocalGovernor(home) as gov:
        decision = gov.decide({"actor": "ai_agent:a", "tool": "refund", "tool_args": {"amount": 10}})
        gov.rotate_keys()
        jwks = gov.jwks()
    claims = verify_token(
        decision.capability_token, keys=jwks, tool="refund", args={"amount": 10}, issuer="test-node", replay_cache=None
    )
    assert claims.decision_id == decision.decision_id


def test_twice_rotated_ledger_verifies(home: Path) -> None:
    kids = []
    with LocalGovernor(home) as gov:
        kids.append(gov.node.keys.active_kid)
        for _ in range(2):
            kids.append(gov.rotate_keys())
            assert gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}}).approved
        assert len(set(kids)) == 3
        assert gov.verify_ledger().valid
        rotations = gov.node.ledger.entries(entry_type="key_rotated")
        assert [(e.kid, e.data["new_kid"]) for e in rotations] == [(kids[0], kids[1]), (kids[1], kids[2])]
    assert sorted(p.stem for p in (home / "keys").glob("*.key")) == [kids[2]]
    assert sorted(p.stem for p in (home / "keys").glob("*.pub")) == sorted(kids)


# -- settings -------------------------------------------------------------------------------------------------------


def test_load_settings_reads_config_json(root: Path) -> None:
    init_node(root, node_id="node-1").close()
    config = json.loads((root / "config.json").read_text())
    config.update({"token_ttl_seconds": 120, "token_audience": "gw", "policy_mode": "paranoid"})
    (root / "config.json").write_text(json.dumps(config))
    settings = load_settings(root)
    assert settings.home == root
    assert settings.node_id == "node-1"
    assert settings.token_ttl_seconds == 120
    assert settings.token_audience == "gw"
    assert settings.policy_mode is PolicyMode.PARANOID
    assert settings.ledger_url == f"sqlite:///{root / 'ledger.db'}"


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "empty")
    assert settings.node_id is None
    assert settings.token_ttl_seconds == 60
    assert settings.token_leeway_seconds == 5
    assert settings.policy_mode is None
    assert settings.master_key_value() is None


def test_home_from_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_node(root, node_id="node-1").close()
    monkeypatch.setenv("LEXECON_HOME", str(root))
    assert load_settings().node_id == "node-1"


def test_env_overrides_config_and_kwargs_override_env(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root).mkdir()
    (root / "config.json").write_text(json.dumps({"node_id": "node-1", "token_ttl_seconds": 120}))
    assert load_settings(root).token_ttl_seconds == 120
    monkeypatch.setenv("LEXECON_TOKEN_TTL_SECONDS", "30")
    settings = load_settings(root)
    assert settings.token_ttl_seconds == 30
    assert settings.node_id == "node-1"  # the rest still comes from config.json
    assert load_settings(root, token_ttl_seconds=15).token_ttl_seconds == 15


def test_ttl_from_env_reaches_issued_tokens(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_TOKEN_TTL_SECONDS", "17")
    with LocalGovernor(home) as gov:
        decision = gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}})
        claims = gov.verify_token(decision.capability_token, tool="search", args={})
    assert claims.exp - claims.iat == 17


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEXECON_TOKEN_TTL_SECONDS", "0"),
        ("LEXECON_TOKEN_TTL_SECONDS", "99999"),
        ("LEXECON_TOKEN_TTL_SECONDS", "soon"),
        ("LEXECON_TOKEN_LEEWAY_SECONDS", "-1"),
        ("LEXECON_NODE_ID", "has spaces"),
        ("LEXECON_NODE_ID", "-leading-dash"),
        ("LEXECON_POLICY_MODE", "lenient"),
    ],
)
def test_invalid_env_setting_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    message = str(info.value)
    assert variable in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("token_ttl_seconds", 0), ("token_ttl_seconds", 99999), ("node_id", "has spaces"), ("policy_mode", "lenient")],
)
def test_invalid_config_json_value_names_the_variable(tmp_path: Path, field: str, value: object) -> None:
    (tmp_path / "config.json").write_text(json.dumps({field: value}))
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert f"LEXECON_{field.upper()}" in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_keyword_setting_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LEXECON_TOKEN_TTL_SECONDS"):
        load_settings(tmp_path, token_ttl_seconds=0)


def test_unreadable_config_json_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_settings(tmp_path)


@pytest.mark.parametrize("content", ['"just a string"', "null", "42"])
def test_config_json_that_is_not_an_object_is_a_config_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_settings(tmp_path)


def test_master_key_from_env_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_MASTER_KEY", MASTER)
    settings = load_settings(tmp_path)
    assert settings.master_key_value() == MASTER
    assert MASTER not in repr(settings)
    assert MASTER not in str(settings)


def test_invalid_setting_error_does_not_echo_the_master_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_MASTER_KEY", MASTER)
    monkeypatch.setenv("LEXECON_TOKEN_TTL_SECONDS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert MASTER not in str(info.value)


# -- policy mode from settings --------------------------------------------------------------------------------------


@pytest.fixture
def strict_policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "strict-policy.yaml"
    path.write_text(STRICT_POLICY)
    return path


def test_env_paranoid_tightens_a_strict_policy(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_POLICY_MODE", "paranoid")
    node = open_node(home)
    try:
        # the setting applies per evaluation; the loaded policy (and so its version hash) is untouched
        assert node.current_policy().mode is PolicyMode.STRICT
    finally:
        node.close()
    with LocalGovernor(home) as gov:
        decision = gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}})
        assert decision.policy_mode is PolicyMode.PARANOID
        assert decision.policy_version == gov.policy.version
        high = gov.decide({"actor": "ai_agent:a", "tool": "search", "data_classes": ["phi", "pci"]})
        assert high.outcome.value == "escalated"


def test_env_permissive_does_not_loosen_a_strict_policy(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_POLICY_MODE", "permissive")
    node = open_node(home)
    try:
        assert node.current_policy().mode is PolicyMode.STRICT
    finally:
        node.close()
    with LocalGovernor(home) as gov:
        assert gov.policy.mode is PolicyMode.STRICT
        # strict: a tool no relation permits is still denied
        unknown = gov.decide({"actor": "ai_agent:a", "tool": "launch_rockets", "tool_args": {}})
        assert not unknown.approved
        assert unknown.policy_mode is PolicyMode.STRICT


def test_env_mode_applies_to_policies_loaded_later(
    home: Path, monkeypatch: pytest.MonkeyPatch, strict_policy_file: Path
) -> None:
    monkeypatch.setenv("LEXECON_POLICY_MODE", "paranoid")
    with LocalGovernor(home) as gov:
        engine = gov.load_policy(strict_policy_file)
        decision = gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}})
        assert decision.policy_mode is PolicyMode.PARANOID
        assert decision.policy_version == engine.version  # the hash of the document that was loaded
    monkeypatch.setenv("LEXECON_POLICY_MODE", "permissive")
    with LocalGovernor(home) as gov:
        gov.load_policy(strict_policy_file)
        decision = gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}})
        assert decision.policy_mode is PolicyMode.STRICT


def test_mode_from_config_json_tightens_too(home: Path) -> None:
    config = json.loads((home / "config.json").read_text())
    (home / "config.json").write_text(json.dumps({**config, "policy_mode": "paranoid"}))
    with LocalGovernor(home) as gov:
        decision = gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}})
        assert decision.policy_mode is PolicyMode.PARANOID


def test_explicit_policy_gets_the_mode_floor_too(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lexecon_core.policy import PolicyEngine

    monkeypatch.setenv("LEXECON_POLICY_MODE", "strict")
    with LocalGovernor(home, policy=PolicyEngine(mode="permissive")) as gov:
        decision = gov.decide({"actor": "ai_agent:a", "tool": "anything"})
        assert decision.policy_mode is PolicyMode.STRICT
        assert decision.outcome.value == "denied"


def test_empty_node_is_strict_deny_all(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_node(root, node_id="node-1").close()
    monkeypatch.setenv("LEXECON_POLICY_MODE", "permissive")
    with LocalGovernor(root) as gov:
        assert gov.policy.mode is PolicyMode.STRICT
        assert not gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {}}).approved


def test_refused_init_creates_no_key(tmp_path: Path) -> None:
    """A home holding only another node's ledger: init is refused before any key is made."""
    other = tmp_path / "other"
    init_node(other, node_id="node-1").close()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "ledger.db").write_bytes((other / "ledger.db").read_bytes())
    with pytest.raises(ConfigError, match="node-1"):
        init_node(fresh, node_id="node-2")
    assert not (fresh / "keys").exists()
    assert not (fresh / "config.json").exists()


def test_derived_keys_are_per_purpose_and_per_signing_key() -> None:
    signer = Signer.generate()
    key = signer.derive_key(b"ledger-row-mac/v1")
    assert len(key) == 32 and key == signer.derive_key(b"ledger-row-mac/v1")
    assert key != signer.derive_key(b"another-purpose")
    assert key != Signer.generate().derive_key(b"ledger-row-mac/v1")
