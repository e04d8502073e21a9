"""Capability tokens: compact JWS, EdDSA, typ ``lexecon-cap+jwt``, bound to one tool call and one ledger entry."""

from __future__ import annotations

import base64
import json
import types
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lexecon_core import LocalGovernor, TokenError, load_settings
from lexecon_core._canonical import args_digest
from lexecon_core.errors import KeyStoreError
from lexecon_core.keys import PublicKey, Signer
from lexecon_core.tokens import TOKEN_TYPE, CapabilityClaims, ReplayCache, issue_token, verify_token

ACTOR = "ai_agent:support_bot"
T0 = 1_700_000_000  # an explicit clock for every time-sensitive test


# -- helpers --------------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decide(gov: LocalGovernor, tool: str = "refund", args: dict[str, Any] | None = None) -> Any:
    decision = gov.decide({"actor": ACTOR, "tool": tool, "tool_args": args if args is not None else {"amount": 10}})
    assert decision.approved, decision.reasoning
    assert decision.capability_token
    return decision


def _issue(signer: Signer, *, tool: str = "refund", args: dict[str, Any] | None = None, **kw: Any) -> str:
    params: dict[str, Any] = {
        "issuer": "node-a",
        "subject": ACTOR,
        "tool": tool,
        "args_sha256": args_digest(args if args is not None else {"amount": 10}),
        "decision_id": "dec_0123",
        "ledger_entry_id": 7,
        "ledger_entry_hash": "ab" * 32,
        "policy_version": "sha256:" + "cd" * 32,
        "ttl_seconds": 60,
        "now": T0,
    }
    params.update(kw)
    return issue_token(signer, **params)


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "node-a",
        "sub": ACTOR,
        "aud": "refund",
        "iat": T0,
        "nbf": T0,
        "exp": T0 + 60,
        "jti": "jti-forged",
        "decision_id": "dec_0123",
        "tool": "refund",
        "args_sha256": args_digest({"amount": 10}),
        "ledger_entry_id": 7,
        "ledger_entry_hash": "ab" * 32,
        "policy_version": "sha256:" + "cd" * 32,
    }
    claims.update(overrides)
    return claims


def _reason(token: str, **kw: Any) -> str:
    """Verify and return the TokenError reason; fail the test if verification succeeds."""
    kw.setdefault("tool", "refund")
    kw.setdefault("args", {"amount": 10})
    kw.setdefault("replay_cache", None)
    kw.setdefault("now", T0 + 1)
    with pytest.raises(TokenError) as info:
        verify_token(token, **kw)
    return info.value.reason


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def keys(signer: Signer) -> dict[str, PublicKey]:
    return {signer.kid: signer.public}


# -- round trip -----------------------------------------------------------------------------------------------------


def test_round_trip_claims_match_decision_and_ledger_entry(governor: LocalGovernor) -> None:
    args = {"amount": 10, "order": "A-17"}
    decision = _decide(governor, args=args)

    claims = governor.verify_token(decision.capability_token, tool="refund", args=args)

    assert isinstance(claims, CapabilityClaims)
    assert claims.decision_id == decision.decision_id
    assert claims.tool == decision.tool == "refund"
    assert claims.ledger_entry_id == decision.ledger_entry_id
    assert claims.ledger_entry_hash == decision.ledger_entry_hash
    assert claims.policy_version == decision.policy_version
    assert claims.args_sha256 == decision.args_sha256 == args_digest(args)
    assert claims.jti == decision.token_id
    assert claims.exp == decision.token_expires_at
    assert claims.exp - claims.iat == governor.settings.token_ttl_seconds == 60
    assert claims.nbf == claims.iat
    assert claims.iss == "test-node"
    assert claims.sub == ACTOR
    assert claims.aud == "refund"  # no token_audience configured: the audience is the tool
    assert claims.kid == governor.node.keys.active_kid

    entry = governor.node.ledger.get(decision.ledger_entry_id)
    assert entry is not None
    assert entry.entry_type == "decision"
    assert entry.entry_hash.hex() == claims.ledger_entry_hash
    assert entry.data["decision_id"] == claims.decision_id
    assert entry.data["token_id"] == claims.jti
    assert entry.data["policy_version"] == claims.policy_version
    assert entry.data["request"]["args_sha256"] == claims.args_sha256


def test_denied_decision_has_no_token(governor: LocalGovernor) -> None:
    decision = governor.decide({"actor": ACTOR, "tool": "delete_user", "tool_args": {"id": 1}})
    assert not decision.approved
    assert decision.capability_token is None
    assert decision.token_id is None


def test_header_is_eddsa_with_lexecon_type_and_kid(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    assert token.count(".") == 2
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    assert header["typ"] == TOKEN_TYPE == "lexecon-cap+jwt"
    assert header["kid"] == governor.node.keys.active_kid


# -- third-party verification ---------------------------------------------------------------------------------------


def test_plain_pyjwt_verifies_with_published_jwks(governor: LocalGovernor) -> None:
    decision = _decide(governor)
    token = decision.capability_token
    header = jwt.get_unverified_header(token)
    (jwk,) = [k for k in governor.jwks()["keys"] if k["kid"] == header["kid"]]

    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        audience="refund",
        issuer="test-node",
        options={"require": ["exp", "iat", "nbf", "jti", "aud", "iss", "sub"]},
    )

    assert claims["decision_id"] == decision.decision_id
    assert claims["args_sha256"] == args_digest({"amount": 10})
    # And the signature really is bound to that key: another Ed25519 key rejects it.
    other = Signer.generate().public.to_cryptography()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["EdDSA"], audience="refund")


def test_raw_ed25519_signature_checks_without_any_jose_library(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    signing_input, _, signature = token.rpartition(".")
    jwk = governor.jwks()["keys"][0]
    public = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))
    public.verify(_unb64(signature), signing_input.encode("ascii"))  # raises InvalidSignature if wrong
    assert len(_unb64(signature)) == 64


# -- signature, header, format --------------------------------------------------------------------------------------


def test_tampered_signature_is_bad_signature(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer)
    head, payload, sig = token.split(".")
    raw = bytearray(_unb64(sig))
    raw[10] ^= 0x01
    forged = f"{head}.{payload}.{_b64(bytes(raw))}"
    assert forged != token
    assert _reason(forged, keys=keys) == "bad_signature"


def test_tampered_payload_is_bad_signature(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, args={"amount": 10})
    head, payload, sig = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["args_sha256"] = args_digest({"amount": 10000})  # try to widen the token to a bigger refund
    forged = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    assert _reason(forged, keys=keys, args={"amount": 10000}) == "bad_signature"


def test_key_substitution_with_known_kid_is_bad_signature(signer: Signer, keys: dict[str, PublicKey]) -> None:
    attacker = Signer.generate()
    forged = jwt.encode(
        _claims(), attacker.jose_key(), algorithm="EdDSA", headers={"kid": signer.kid, "typ": TOKEN_TYPE}
    )
    assert _reason(forged, keys=keys) == "bad_signature"


def test_unknown_kid(signer: Signer, keys: dict[str, PublicKey]) -> None:
    stranger = Signer.generate()
    assert _reason(_issue(stranger), keys=keys) == "unknown_kid"


def test_missing_kid_is_unknown_kid(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = jwt.encode(_claims(), signer.jose_key(), algorithm="EdDSA", headers={"typ": TOKEN_TYPE})
    assert "kid" not in jwt.get_unverified_header(token)
    assert _reason(token, keys=keys) == "unknown_kid"


def test_non_string_kid_is_a_token_error(keys: dict[str, PublicKey]) -> None:
    header = _b64(json.dumps({"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": 123}).encode())
    token = f"{header}.{_b64(json.dumps(_claims()).encode())}.{_b64(bytes(64))}"
    assert _reason(token, keys=keys) in {"unknown_kid", "bad_header", "malformed"}


def test_wrong_typ_is_bad_header(signer: Signer, keys: dict[str, PublicKey]) -> None:
    for typ in ("JWT", "at+jwt", None):
        headers: dict[str, Any] = {"kid": signer.kid, "typ": typ}
        token = jwt.encode(_claims(), signer.jose_key(), algorithm="EdDSA", headers=headers)
        assert _reason(token, keys=keys) == "bad_header", typ


def test_hs256_token_is_bad_header(signer: Signer, keys: dict[str, PublicKey]) -> None:
    # Classic algorithm confusion: HMAC keyed with the (public) Ed25519 key bytes.
    headers = {"kid": signer.kid, "typ": TOKEN_TYPE}
    token = jwt.encode(_claims(), signer.public.raw, algorithm="HS256", headers=headers)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert _reason(token, keys=keys) == "bad_header"


def test_alg_none_is_bad_header(signer: Signer, keys: dict[str, PublicKey]) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": TOKEN_TYPE, "kid": signer.kid}).encode())
    token = f"{header}.{_b64(json.dumps(_claims()).encode())}."
    assert _reason(token, keys=keys) == "bad_header"


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "...", "not.a.jwt.at.all", "eyJ.eyJ.sig", "\x00\xff"])
def test_garbage_is_malformed(garbage: str, keys: dict[str, PublicKey]) -> None:
    assert _reason(garbage, keys=keys) == "malformed"


def test_header_that_is_not_an_object_is_malformed(keys: dict[str, PublicKey]) -> None:
    token = f"{_b64(b'[1,2]')}.{_b64(b'{}')}.{_b64(bytes(64))}"
    assert _reason(token, keys=keys) == "malformed"


def test_non_integer_time_claims_are_malformed(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = jwt.encode(
        _claims(exp=T0 + 60.5), signer.jose_key(), algorithm="EdDSA", headers={"kid": signer.kid, "typ": TOKEN_TYPE}
    )
    assert _reason(token, keys=keys) == "malformed"


# -- time -----------------------------------------------------------------------------------------------------------


def test_valid_inside_lifetime_with_explicit_clock(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, now=T0, ttl_seconds=60)
    for now in (T0, T0 + 30, T0 + 59):
        claims = verify_token(
            token, keys=keys, tool="refund", args={"amount": 10}, leeway=0, replay_cache=None, now=now
        )
        assert (claims.iat, claims.nbf, claims.exp) == (T0, T0, T0 + 60)


def test_expired_respects_leeway(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, now=T0, ttl_seconds=60)
    exp = T0 + 60
    # leeway 0: valid one second before exp, expired at exp
    assert _reason(token, keys=keys, leeway=0, now=exp) == "expired"
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, leeway=0, replay_cache=None, now=exp - 1)
    # default leeway 5: still valid at exp + 4, expired at exp + 5
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=None, now=exp + 4)
    assert _reason(token, keys=keys, now=exp + 5) == "expired"
    assert _reason(token, keys=keys, now=exp + 3600) == "expired"


def test_not_yet_valid_respects_leeway(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, now=T0)
    assert _reason(token, keys=keys, leeway=0, now=T0 - 1) == "not_yet_valid"
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, leeway=0, replay_cache=None, now=T0)
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, leeway=5, replay_cache=None, now=T0 - 5)
    assert _reason(token, keys=keys, leeway=5, now=T0 - 6) == "not_yet_valid"
    assert _reason(token, keys=keys, now=T0 - 3600) == "not_yet_valid"


def test_governor_token_expires_after_configured_ttl(governor: LocalGovernor) -> None:
    decision = _decide(governor)
    leeway = governor.settings.token_leeway_seconds
    keys = governor.public_keys
    expires = decision.token_expires_at
    assert expires is not None
    verify_token(
        decision.capability_token,
        keys=keys,
        tool="refund",
        args={"amount": 10},
        replay_cache=None,
        now=expires + leeway - 1,
    )
    assert _reason(decision.capability_token, keys=keys, now=expires + leeway) == "expired"


# -- binding to the call --------------------------------------------------------------------------------------------


def test_wrong_tool_with_configured_audience(home: Path) -> None:
    with LocalGovernor(home, settings=load_settings(home, token_audience="payments-gw")) as gov:
        token = _decide(gov, tool="search", args={"q": "x"}).capability_token
        with pytest.raises(TokenError) as info:
            gov.verify_token(token, tool="refund", args={"q": "x"})
        assert info.value.reason == "wrong_tool"
        # a failed verification does not consume the token
        assert gov.verify_token(token, tool="search", args={"q": "x"}).tool == "search"


def test_wrong_tool_with_explicit_audience(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, tool="search", audience="tools")
    assert _reason(token, keys=keys, tool="refund", audience="tools") == "wrong_tool"


def test_wrong_tool_default_governor(governor: LocalGovernor) -> None:
    """No token_audience: the audience is the tool, yet a token for another tool reports wrong_tool."""
    token = _decide(governor, tool="search", args={"q": "x"}).capability_token
    with pytest.raises(TokenError) as info:
        governor.verify_token(token, tool="refund", args={"q": "x"})
    assert info.value.reason == "wrong_tool"


@pytest.mark.parametrize(
    "presented",
    [
        {"amount": 10000},
        {"amount": 10, "currency": "USD"},
        {},
        {"amount": "10"},
        {"amount": 10.0},
        {"Amount": 10},
    ],
)
def test_different_args_are_args_mismatch(governor: LocalGovernor, presented: dict[str, Any]) -> None:
    token = _decide(governor, args={"amount": 10}).capability_token
    with pytest.raises(TokenError) as info:
        governor.verify_token(token, tool="refund", args=presented)
    assert info.value.reason == "args_mismatch"
    # the refused attempt did not consume it: the real call still goes through, once
    assert governor.verify_token(token, tool="refund", args={"amount": 10}).tool == "refund"


def test_args_key_order_does_not_matter(governor: LocalGovernor) -> None:
    issued = {"amount": 10, "order": {"id": "A-17", "lines": [1, 2]}, "currency": "EUR"}
    presented = {"currency": "EUR", "order": {"lines": [1, 2], "id": "A-17"}, "amount": 10}
    assert list(issued) != list(presented)
    token = _decide(governor, args=issued).capability_token
    assert governor.verify_token(token, tool="refund", args=presented).args_sha256 == args_digest(issued)


def test_list_order_does_matter(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, args={"ids": [1, 2]})
    assert _reason(token, keys=keys, args={"ids": [2, 1]}) == "args_mismatch"


def test_args_sha256_may_be_given_instead_of_args(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer, args={"amount": 10})
    claims = verify_token(
        token, keys=keys, tool="refund", args_sha256=args_digest({"amount": 10}), replay_cache=None, now=T0
    )
    assert claims.args_sha256 == args_digest({"amount": 10})
    assert _reason(token, keys=keys, args=None, args_sha256=args_digest({"amount": 11})) == "args_mismatch"


# -- replay ---------------------------------------------------------------------------------------------------------


def test_second_use_is_replayed(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    governor.verify_token(token, tool="refund", args={"amount": 10})
    with pytest.raises(TokenError) as info:
        governor.verify_token(token, tool="refund", args={"amount": 10})
    assert info.value.reason == "replayed"


def test_replay_with_explicit_cache(signer: Signer, keys: dict[str, PublicKey]) -> None:
    cache = ReplayCache()
    token = _issue(signer)
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=cache, now=T0)
    assert len(cache) == 1
    assert _reason(token, keys=keys, replay_cache=cache, now=T0 + 1) == "replayed"
    # a different cache (another process) has not seen it
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=ReplayCache(), now=T0)


def test_replay_cache_none_does_not_consume(signer: Signer, keys: dict[str, PublicKey]) -> None:
    token = _issue(signer)
    for _ in range(3):
        verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=None, now=T0)
    cache = ReplayCache()
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=cache, now=T0)
    assert _reason(token, keys=keys, replay_cache=cache, now=T0) == "replayed"


def test_distinct_tokens_do_not_collide(signer: Signer, keys: dict[str, PublicKey]) -> None:
    cache = ReplayCache()
    for _ in range(5):
        verify_token(_issue(signer), keys=keys, tool="refund", args={"amount": 10}, replay_cache=cache, now=T0)
    assert len(cache) == 5


def test_replay_cache_purges_expired_entries() -> None:
    cache = ReplayCache()
    cache.use("a", 100, now=50)
    cache.use("b", 1000, now=51)
    assert len(cache) == 2
    with pytest.raises(TokenError) as info:
        cache.use("a", 100, now=60)
    assert info.value.reason == "replayed"
    cache.use("c", 2000, now=200)  # past the purge interval: "a" expired at 100 and is dropped
    assert len(cache) == 2
    cache.use("a", 300, now=201)  # "a" is forgotten (it could not verify anyway: it expired)
    with pytest.raises(TokenError) as info:
        cache.use("b", 1000, now=202)  # "b" has not expired and is still remembered
    assert info.value.reason == "replayed"


def test_replay_cache_keeps_entry_until_expiry_inclusive() -> None:
    cache = ReplayCache()
    cache.use("a", 100, now=0)
    with pytest.raises(TokenError) as info:
        cache.use("a", 100, now=100)  # purge runs (>= 30 s later) but exp == now is kept
    assert info.value.reason == "replayed"


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace the wall clock seen by lexecon_core.tokens with a controllable one."""
    clock = [float(T0)]
    import lexecon_core.tokens as tokens_module

    monkeypatch.setattr(tokens_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    return clock


def test_replay_cache_uses_the_verification_clock(
    signer: Signer, keys: dict[str, PublicKey], wall_clock: list[float]
) -> None:
    past = T0 - 100_000
    token = _issue(signer, now=past, ttl_seconds=60)
    cache = ReplayCache()
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=cache, now=past + 1)
    wall_clock[0] += 31  # the process lives on; the next use triggers a purge
    assert _reason(token, keys=keys, replay_cache=cache, now=past + 2) == "replayed"


# -- claims ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claim",
    [
        "args_sha256",
        "decision_id",
        "tool",
        "ledger_entry_id",
        "ledger_entry_hash",
        "policy_version",
        "jti",
        "exp",
        "nbf",
        "iat",
        "sub",
        "iss",
        "aud",
    ],
)
def test_missing_claim(signer: Signer, keys: dict[str, PublicKey], claim: str) -> None:
    claims = _claims()
    del claims[claim]
    token = jwt.encode(claims, signer.jose_key(), algorithm="EdDSA", headers={"kid": signer.kid, "typ": TOKEN_TYPE})
    # the forgery is correctly signed: only the missing claim is wrong
    jwt.decode(
        token,
        signer.public.to_cryptography(),
        algorithms=["EdDSA"],
        options={
            "verify_signature": True,
            "verify_aud": False,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        },
    )
    with pytest.raises(TokenError) as info:
        verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=None, now=T0 + 1)
    assert info.value.reason == "missing_claim"
    assert claim in str(info.value)


def test_forged_claims_with_right_key_verify(signer: Signer, keys: dict[str, PublicKey]) -> None:
    """Control for test_missing_claim: the same forging path with every claim present verifies."""
    token = jwt.encode(_claims(), signer.jose_key(), algorithm="EdDSA", headers={"kid": signer.kid, "typ": TOKEN_TYPE})
    claims = verify_token(token, keys=keys, tool="refund", args={"amount": 10}, replay_cache=None, now=T0 + 1)
    assert claims.jti == "jti-forged"


# -- keys -----------------------------------------------------------------------------------------------------------


def test_verify_accepts_jwks_document(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    jwks = json.loads(json.dumps(governor.jwks()))  # as a relying party would receive it
    claims = verify_token(token, keys=jwks, tool="refund", args={"amount": 10}, issuer="test-node", replay_cache=None)
    assert claims.kid == jwks["keys"][0]["kid"]


def test_jwks_with_mismatched_kid_is_refused(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    real = governor.jwks()["keys"][0]
    attacker = Signer.generate().public.to_jwk()
    swapped = {"keys": [{**attacker, "kid": real["kid"]}]}  # attacker's key dressed up with the node's kid
    with pytest.raises(KeyStoreError):
        verify_token(token, keys=swapped, tool="refund", args={"amount": 10}, replay_cache=None)
    relabelled = {"keys": [{**real, "kid": "not-the-kid"}]}
    with pytest.raises(KeyStoreError):
        verify_token(token, keys=relabelled, tool="refund", args={"amount": 10}, replay_cache=None)


def test_jwks_without_the_signing_key_is_unknown_kid(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    other = {"keys": [Signer.generate().public.to_jwk()]}
    assert _reason(token, keys=other, now=None) == "unknown_kid"


# -- audience and issuer --------------------------------------------------------------------------------------------


def test_wrong_audience_when_audience_configured(home: Path) -> None:
    with LocalGovernor(home, settings=load_settings(home, token_audience="payments-gw")) as gov:
        token = _decide(gov).capability_token
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == "payments-gw"
        keys = gov.public_keys
        assert _reason(token, keys=keys, audience="billing-gw", now=None) == "wrong_audience"
        # a verifier that does not know about the configured audience (so expects aud == tool) refuses it too
        assert _reason(token, keys=keys, now=None) == "wrong_audience"
        assert gov.verify_token(token, tool="refund", args={"amount": 10}).aud == "payments-gw"


def test_audience_from_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEXECON_TOKEN_AUDIENCE", "payments-gw")
    with LocalGovernor(home) as gov:
        token = _decide(gov).capability_token
        assert gov.verify_token(token, tool="refund", args={"amount": 10}).aud == "payments-gw"


def test_wrong_issuer(governor: LocalGovernor) -> None:
    token = _decide(governor).capability_token
    assert _reason(token, keys=governor.public_keys, issuer="other-node", now=None) == "wrong_issuer"
    # a token signed with this node's key but claiming another issuer is refused by the governor
    foreign = _issue(governor.node.keys.signer, issuer="other-node", now=None)
    with pytest.raises(TokenError) as info:
        governor.verify_token(foreign, tool="refund", args={"amount": 10})
    assert info.value.reason == "wrong_issuer"


# -- property -------------------------------------------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
_json_args = st.dictionaries(st.text(max_size=8), _json_values, max_size=5)
_PROPERTY_SIGNER = Signer.generate()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_json_args, b=_json_args)
def test_token_binds_exactly_its_args(a: dict[str, Any], b: dict[str, Any]) -> None:
    keys = {_PROPERTY_SIGNER.kid: _PROPERTY_SIGNER.public}
    token = _issue(_PROPERTY_SIGNER, args=a)
    claims = verify_token(token, keys=keys, tool="refund", args=a, replay_cache=None, now=T0)
    assert claims.args_sha256 == args_digest(a)
    # the same args in another key order are the same call
    reordered = dict(reversed(list(a.items())))
    verify_token(token, keys=keys, tool="refund", args=reordered, replay_cache=None, now=T0)
    if args_digest(a) != args_digest(b):
        assert _reason(token, keys=keys, args=b, now=T0) == "args_mismatch"
    else:
        verify_token(token, keys=keys, tool="refund", args=b, replay_cache=None, now=T0)


@settings(max_examples=50, deadline=None)
@given(a=_json_args, extra_key=st.text(max_size=8), extra_value=_json_values)
def test_adding_a_key_always_mismatches(a: dict[str, Any], extra_key: str, extra_value: Any) -> None:
    if extra_key in a:
        a = {k: v for k, v in a.items() if k != extra_key}
    keys = {_PROPERTY_SIGNER.kid: _PROPERTY_SIGNER.public}
    token = _issue(_PROPERTY_SIGNER, args=a)
    assert _reason(token, keys=keys, args={**a, extra_key: extra_value}, now=T0) == "args_mismatch"


# -- rotation and shared replay protection ------------------------------------------------------------------------


def test_tokens_of_a_retired_key_expire_with_the_grace_window(governor: LocalGovernor) -> None:
    decision = governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": 1}})
    assert decision.capability_token
    old_kid = governor.node.keys.active_kid
    governor.rotate_keys()
    grace = governor.settings.token_ttl_seconds + governor.settings.token_leeway_seconds
    assert old_kid in governor.node.keys.token_keys(grace)  # just retired: its tokens live out their TTL
    # once the grace window has passed, the retired key mints nothing the governor accepts
    retired_file = governor.node.keys.directory / f"{old_kid}.retired"
    retired_file.write_text(str(int(retired_file.read_text()) - grace - 1))
    assert old_kid not in governor.node.keys.token_keys(grace)
    with pytest.raises(TokenError) as info:
        governor.verify_token(decision.capability_token, tool="search", args={"q": 1})
    assert info.value.reason == "unknown_kid"
    # the ledger still trusts the retired key for what it signed
    assert governor.verify_ledger().valid


def test_governors_in_one_process_share_replay_protection(governor: LocalGovernor, home: Path) -> None:
    decision = governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": 2}})
    assert decision.capability_token
    governor.verify_token(decision.capability_token, tool="search", args={"q": 2})
    with LocalGovernor(home) as other, pytest.raises(TokenError) as info:
        other.verify_token(decision.capability_token, tool="search", args={"q": 2})
    assert info.value.reason == "replayed"


def test_a_given_empty_replay_cache_is_used(home: Path) -> None:
    mine = ReplayCache()
    with LocalGovernor(home, replay_cache=mine) as gov:
        assert gov.replay_cache is mine
        decision = gov.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": 9}})
        gov.verify_token(decision.capability_token, tool="search", args={"q": 9})  # type: ignore[arg-type]
    assert len(mine) == 1


def test_shared_cache_remembers_for_the_longest_leeway(signer: Signer, keys: dict[str, PublicKey]) -> None:
    cache = ReplayCache()
    token = _issue(signer)  # issued at T0, 60 s to live
    verify_token(token, keys=keys, tool="refund", args={"amount": 10}, leeway=0, replay_cache=cache, now=T0 + 1)
    with pytest.raises(TokenError) as again:  # a verifier with a bigger leeway, after the first one's window
        verify_token(token, keys=keys, tool="refund", args={"amount": 10}, leeway=60, replay_cache=cache, now=T0 + 95)
    assert again.value.reason == "replayed"


def test_integer_argument_names_are_refused() -> None:
    from lexecon_core import InvalidRequest

    with pytest.raises(InvalidRequest, match="argument names must be strings"):
        args_digest({1: "x"})


@pytest.mark.parametrize(
    "args",
    [
        {"a": {1: "x"}},
        {"a": {True: "x"}},
        {"a": {None: "x"}},
        {"a": [{"b": {2.5: "x"}}]},
        {"a": ({"b": {(1, 2): "x"}},)},
    ],
    ids=["int", "bool", "none", "float in a list", "tuple key in a tuple"],
)
def test_non_string_argument_names_are_refused_at_every_depth(
    args: dict[str, Any], signer: Signer, keys: dict[str, PublicKey]
) -> None:
    """JSON would write each as its string form: a token approved for one call would verify for another."""
    from lexecon_core import InvalidRequest

    with pytest.raises(InvalidRequest, match="argument names must be strings, at every depth"):
        args_digest(args)
    token = _issue(signer)
    with pytest.raises(InvalidRequest):
        verify_token(token, keys=keys, tool="refund", args=args, now=T0 + 1)


def test_a_decision_with_nested_non_string_names_is_denied_without_a_token(governor: Any) -> None:
    decision = governor.decide({"actor": "ai_agent:a", "tool": "refund", "tool_args": {"order": {1: "x"}}})
    assert decision.outcome.value == "denied" and decision.capability_token is None and decision.args_sha256 is None
    assert "at every depth" in decision.reasoning  # recorded for auditors; no token any argument could match
