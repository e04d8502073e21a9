"""Capability tokens: short-lived, single-use, EdDSA-signed compact JWS bound to one tool call.

A token says: *this* decision approved *this* tool with *these* arguments, and it is recorded in the ledger at *this*
entry. Header ``{"alg": "EdDSA", "typ": "lexecon-cap+jwt", "kid": ...}``; claims ``iss sub aud iat nbf exp jti``
plus ``decision_id tool args_sha256 ledger_entry_id ledger_entry_hash policy_version``. Any JOSE library can verify
the signature with the node's JWKS; :func:`verify_token` also checks everything that makes the token mean something.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from lexecon_core._canonical import args_digest
from lexecon_core.errors import TokenError
from lexecon_core.keys import PublicKey, Signer, jwks_to_keys

__all__ = [
    "TOKEN_TYPE",
    "CapabilityClaims",
    "IssuedTokens",
    "ReplayCache",
    "capability_claims",
    "check_claims",
    "issue_token",
    "sign_claims",
    "verify_signature",
    "verify_token",
]

MAX_LEEWAY_SECONDS = 300  # the largest leeway settings allow (config.Settings.token_leeway_seconds)
TOKEN_TYPE = "lexecon-cap+jwt"  # noqa: S105 - a JOSE "typ" value, not a secret
_ALGORITHM = "EdDSA"
_REQUIRED = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]
_CUSTOM = ("decision_id", "tool", "args_sha256", "ledger_entry_id", "ledger_entry_hash", "policy_version")


@dataclass(frozen=True, slots=True)
class CapabilityClaims:
    """The verified claims of a capability token."""

    iss: str
    sub: str
    aud: str
    iat: int
    nbf: int
    exp: int
    jti: str
    decision_id: str
    tool: str
    args_sha256: str
    ledger_entry_id: int
    ledger_entry_hash: str
    policy_version: str
    kid: str


class ReplayCache:
    """Remembers the ``jti`` of every token used until it expires, so each token authorises one call.

    In-process and thread-safe: it protects one process. Processes that accept each other's tokens need a shared
    store; this class is the single-process default.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def use(self, jti: str, expires_at: int, *, now: float | None = None) -> None:
        """Record ``jti`` as used; raise :class:`TokenError` (``replayed``) if it already was."""
        current = time.time() if now is None else now
        with self._lock:
            if current >= self._next_purge:
                self._seen = {k: exp for k, exp in self._seen.items() if exp >= current}
                self._next_purge = current + 30
            if jti in self._seen:
                raise TokenError("replayed", "capability token has already been used")
            self._seen[jti] = expires_at

    def __len__(self) -> int:
        return len(self._seen)


DEFAULT_REPLAY_CACHE = ReplayCache()


class IssuedTokens:
    """The tokens one issuer signed recently, with their claims, so the issuer can recognise its own tokens without
    re-verifying a signature it just made. Entries leave at expiry; the size is bounded (oldest dropped first)."""

    def __init__(self, limit: int = 65_536) -> None:
        self._entries: dict[str, tuple[dict[str, Any], str]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def remember(self, token: str, claims: Mapping[str, Any], kid: str) -> None:
        with self._lock:
            if len(self._entries) >= self._limit:
                now = time.time()
                self._entries = {t: e for t, e in self._entries.items() if e[0]["exp"] >= now}
                while len(self._entries) >= self._limit:
                    del self._entries[next(iter(self._entries))]
            self._entries[token] = (dict(claims), kid)

    def recall(self, token: str) -> tuple[dict[str, Any], str] | None:
        with self._lock:
            return self._entries.get(token)


class _SodiumEdDSA(Algorithm):
    """EdDSA for our own PyJWS instance, with libsodium doing the Ed25519 work (about twice as fast as the OpenSSL
    path, and on every decision's hot path). PyJWT still parses, frames and pins the algorithm; the tests check that
    stock PyJWT with the published JWKS verifies our tokens, as any third party would."""

    def prepare_key(self, key: Any) -> Signer | PublicKey:
        if not isinstance(key, Signer | PublicKey):
            raise TypeError("expected a lexecon Signer or PublicKey")
        return key

    def sign(self, msg: bytes, key: Signer | PublicKey) -> bytes:
        if not isinstance(key, Signer):
            raise TypeError("signing needs a Signer")
        return key.sign(msg)

    def verify(self, msg: bytes, key: Signer | PublicKey, sig: bytes) -> bool:
        public = key.public if isinstance(key, Signer) else key
        return public.verify(sig, msg)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise TypeError("publish keys with KeyRing.jwks()")

    @staticmethod
    def from_jwk(jwk: str | dict[str, Any]) -> Any:
        raise TypeError("load keys with keys.jwks_to_keys()")


_jws = jwt.PyJWS(algorithms=[])
_jws.register_algorithm(_ALGORITHM, _SodiumEdDSA())
_claims_encoder = json.JSONEncoder(separators=(",", ":"))


def capability_claims(
    *,
    issuer: str,
    subject: str,
    tool: str,
    args_sha256: str,
    decision_id: str,
    ledger_entry_id: int,
    ledger_entry_hash: str,
    policy_version: str,
    ttl_seconds: int = 60,
    audience: str | None = None,
    jti: str | None = None,
    now: int | None = None,
) -> dict[str, Any]:
    """The claims of a capability token. ``audience`` defaults to the tool name."""
    issued = int(time.time()) if now is None else now
    return {
        "iss": issuer,
        "sub": subject,
        "aud": audience or tool,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": jti or uuid.uuid4().hex,
        "decision_id": decision_id,
        "tool": tool,
        "args_sha256": args_sha256,
        "ledger_entry_id": ledger_entry_id,
        "ledger_entry_hash": ledger_entry_hash,
        "policy_version": policy_version,
    }


def sign_claims(signer: Signer, claims: Mapping[str, Any]) -> str:
    """The compact JWS of ``claims``: header ``{"alg": "EdDSA", "typ": "lexecon-cap+jwt", "kid": ...}``."""
    headers = {"kid": signer.kid, "typ": TOKEN_TYPE}
    payload = _claims_encoder.encode(dict(claims)).encode("utf-8")
    return _jws.encode(payload, signer, algorithm=_ALGORITHM, headers=headers)  # type: ignore[arg-type]


def issue_token(signer: Signer, **claims: Any) -> str:
    """Sign a capability token; the keyword arguments are those of :func:`capability_claims`."""
    return sign_claims(signer, capability_claims(**claims))


def verify_token(
    token: str,
    *,
    keys: Mapping[str, PublicKey] | Mapping[str, Any],
    tool: str,
    args: Mapping[str, Any] | None = None,
    args_sha256: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: int = 5,
    replay_cache: ReplayCache | None = DEFAULT_REPLAY_CACHE,
    now: int | None = None,
) -> CapabilityClaims:
    """Verify a capability token for a call of ``tool`` with ``args``; raise :class:`TokenError` if anything is off.

    ``keys`` is ``{kid: PublicKey}`` or a JWKS document. Give the call's ``args`` (re-hashed here) or their
    ``args_sha256``. With a ``replay_cache`` (the process-wide one by default) the token is consumed: a second
    verification of the same token fails with ``replayed``. Pass ``replay_cache=None`` to check without consuming.
    """
    claims, kid = verify_signature(token, keys)
    return check_claims(
        claims,
        kid,
        tool=tool,
        args=args,
        args_sha256=args_sha256,
        audience=audience,
        issuer=issuer,
        leeway=leeway,
        replay_cache=replay_cache,
        now=now,
    )


def verify_signature(token: str, keys: Mapping[str, PublicKey] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The first half of :func:`verify_token`: header (alg pinned, typ, kid), structure and signature.

    Returns the *unchecked* claims and the kid; :func:`check_claims` must follow before anything relies on them.
    """
    key_map = _key_map(keys)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("malformed", "capability token is not a compact JWS with a valid header") from None
    if header.get("alg") != _ALGORITHM:
        raise TokenError("bad_header", f"capability token algorithm must be {_ALGORITHM}")
    if header.get("typ") != TOKEN_TYPE:
        raise TokenError("bad_header", f"token type must be {TOKEN_TYPE!r}; this is not a Lexecon capability token")
    kid = header.get("kid")
    key = key_map.get(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise TokenError("unknown_kid", f"capability token was signed by an unknown key {kid!r}")
    try:
        payload = _jws.decode_complete(token, key, algorithms=[_ALGORITHM])["payload"]  # type: ignore[arg-type]
        claims = json.loads(payload)
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature", "capability token signature does not verify") from None
    except (jwt.PyJWTError, ValueError) as exc:
        raise TokenError("malformed", f"capability token is invalid: {exc}") from None
    if not isinstance(claims, dict):
        raise TokenError("malformed", "capability token payload is not a JSON object")
    return claims, kid


def check_claims(
    claims: Mapping[str, Any],
    kid: str,
    *,
    tool: str,
    args: Mapping[str, Any] | None = None,
    args_sha256: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: int = 5,
    replay_cache: ReplayCache | None = DEFAULT_REPLAY_CACHE,
    now: int | None = None,
) -> CapabilityClaims:
    """The second half of :func:`verify_token`: everything that makes a signed token authorise *this* call."""
    current = int(time.time()) if now is None else now
    for name in (*_REQUIRED, *_CUSTOM):
        if name not in claims:
            raise TokenError("missing_claim", f"capability token lacks the {name!r} claim")
    if not all(type(claims[name]) is int for name in ("iat", "nbf", "exp")):
        raise TokenError("malformed", "capability token time claims must be integers")
    if issuer is not None and claims["iss"] != issuer:
        raise TokenError("wrong_issuer", "capability token was issued by another node")
    if claims["exp"] + leeway <= current:
        raise TokenError("expired", "capability token has expired")
    if claims["nbf"] - leeway > current:
        raise TokenError("not_yet_valid", "capability token is not valid yet")
    if claims["tool"] != tool:
        raise TokenError("wrong_tool", f"capability token is for tool {claims['tool']!r}, not {tool!r}")
    if claims["aud"] != (audience or tool):
        raise TokenError("wrong_audience", "capability token was issued for another audience")
    expected_args = args_sha256 if args_sha256 is not None else args_digest(dict(args or {}))
    if not _equal(claims["args_sha256"], expected_args):
        raise TokenError("args_mismatch", "capability token was issued for different arguments")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise TokenError("malformed", "capability token jti must be a non-empty string")
    if replay_cache is not None:
        # Remember the jti for the longest leeway any verifier may use, not this caller's: verifiers sharing a cache
        # with different leeways must not reopen a window for replay.
        replay_cache.use(claims["jti"], int(claims["exp"]) + MAX_LEEWAY_SECONDS, now=now)
    return CapabilityClaims(**{k: claims[k] for k in (*_REQUIRED, *_CUSTOM)}, kid=kid)


def _equal(a: Any, b: str) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())


def _key_map(keys: Mapping[str, Any]) -> Mapping[str, PublicKey]:
    if "keys" in keys and isinstance(keys["keys"], list):
        return jwks_to_keys(keys)
    return keys
