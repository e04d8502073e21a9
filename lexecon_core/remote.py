"""A :class:`~lexecon_core.Governor` backed by a hosted Lexecon server (``POST /decide``), sync and async.

It fails closed: when no trustworthy decision comes back (server down, timeouts, 5xx after retries, a malformed answer,
a capability token that does not verify against the trusted keys) it raises :class:`GovernanceError`, and the tool
call must not run. Every decide call sends one idempotency key on all its attempts, so a retry after a lost response
gets the first decision back instead of a second one.

Which keys are trusted: with ``jwks=`` the node's published keys are pinned, and a new key is trusted only once a
``key_rotated`` ledger entry signed by an already trusted key hands over to it (``GET`` the key hand-over document).
Whatever answers at ``base_url`` cannot then approve a call with a key of its own. Without ``jwks=`` tokens are checked
against the JWKS the same server serves, which proves only that the server signed them; a warning says so.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from pydantic import ValidationError

from lexecon_core.decisions import Decision, DecisionRequest
from lexecon_core.errors import GovernanceError, InvalidRequest, TokenError
from lexecon_core.keys import PublicKey, jwks_to_keys
from lexecon_core.ledger import entry_hash, signing_message
from lexecon_core.tokens import (
    DEFAULT_REPLAY_CACHE,
    MAX_LEEWAY_SECONDS,
    CapabilityClaims,
    ReplayCache,
    check_claims,
    verify_signature,
)
from lexecon_core.wire import IDEMPOTENCY_HEADER, KEY_ROTATIONS_PATH

__all__ = ["RemoteGovernor"]

logger = logging.getLogger("lexecon.remote")

JWKS_PATH = "/.well-known/jwks.json"
INFO_PATH = "/.well-known/lexecon.json"
ROTATIONS_PATH = KEY_ROTATIONS_PATH
# Failures after which the server either did nothing or, thanks to the idempotency key, answers a repeat with the
# first decision. Write errors are left out: the request may have been cut off in a state we cannot know.
_RETRY_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
_RETRY_ERRORS += (httpx.ConnectTimeout, httpx.ReadTimeout, httpx.PoolTimeout)
_RETRY_STATUS = frozenset({429, 502, 503, 504})
# An agent waiting on a tool call should hear "refused" within seconds, not sit out a long Retry-After.
_MAX_TOTAL_SLEEP = 3.0

_Outcome = httpx.Response | Exception
_API_KEY = re.compile(r"lxk_[0-9A-Za-z_-]+|(?i:bearer)\s+\S+")


@dataclass(frozen=True, slots=True)
class _Trust:
    """What tokens from the server are checked against: its node facts, and its JWKS or the pinned keys."""

    node_id: str
    audience: str | None
    leeway: int
    keys: dict[str, PublicKey]


class _Call:
    """One logical request and its attempts; the retry policy shared by the sync and async send loops."""

    def __init__(self, method: str, path: str, retries: int, backoff: float) -> None:
        self.method, self.path, self.retries, self.backoff = method, path, retries, backoff
        self.made, self.slept = 0, 0.0

    def delay(self, outcome: _Outcome) -> float | None:
        """Seconds to wait before the next attempt, or None when ``outcome`` is final."""
        self.made += 1
        status = outcome.status_code if isinstance(outcome, httpx.Response) else None
        retryable = status in _RETRY_STATUS if status is not None else isinstance(outcome, _RETRY_ERRORS)
        if not retryable or self.made > self.retries:
            return None
        wait = self.backoff * 2.0 ** (self.made - 1) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
        if isinstance(outcome, httpx.Response) and status == 429:
            wait = max(wait, _retry_after(outcome))
        if self.slept + wait > _MAX_TOTAL_SLEEP:
            return None  # waiting that long would only delay the refusal
        self.slept += wait
        why = f"HTTP {status}" if status is not None else type(outcome).__name__
        logger.warning("%s %s failed (%s); retry %d of %d", self.method, self.path, why, self.made, self.retries)
        return wait


class RemoteGovernor:
    """Decides tool calls on the Lexecon server at ``base_url``, authenticating with ``api_key``.

    ``jwks`` pins the node's keys: a JWKS mapping (``lexecon keys export``) or the path of a JWKS file. Tokens are then
    checked against those keys and keys they handed over in signed ``key_rotated`` entries, never against what the
    server serves. ``node_id``, when given, is the node the server must say it is and the tokens' issuer.
    ``base_url`` must be ``https://`` unless its host is loopback or ``allow_insecure_http`` is set.

    ``client`` / ``async_client`` are used as given (their own timeouts apply) and never closed here; otherwise one
    pooled client of each kind is created on first use, with ``timeout`` for connect, read, write and pool.
    """

    jwks_refresh_interval = 10.0  # seconds between key refreshes triggered by tokens with an unknown kid

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        jwks: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        node_id: str | None = None,
        allow_insecure_http: bool = False,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.05,
        replay_cache: ReplayCache | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError):
            url = httpx.URL()
        if url.scheme not in ("http", "https") or not url.host or url.userinfo:
            raise ValueError("base_url must be an http(s) URL without credentials, e.g. https://lexecon.internal")
        if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
            # The API key and every decision would cross the network readable and forgeable by anyone on the path.
            raise ValueError(
                f"base_url {url.host!r} is plain http to a host that is not loopback: the API key and decisions would "
                "travel unencrypted; use https://, or pass allow_insecure_http=True for a network you trust"
            )
        if node_id is not None and (not isinstance(node_id, str) or not node_id):
            raise ValueError("node_id must be a non-empty string: the node id the server must have")
        # Checked up front: httpx would echo an illegal header value, key included, in its error.
        if not isinstance(api_key, str) or not api_key or not all(33 <= ord(c) <= 126 for c in api_key):
            raise ValueError("api_key must be a non-empty string of printable ASCII characters without spaces")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be positive; retries and backoff must not be negative")
        self.base_url = str(url.copy_with(query=None, fragment=None)).rstrip("/")
        self.replay_cache = DEFAULT_REPLAY_CACHE if replay_cache is None else replay_cache  # an empty cache is falsy
        self._where = f"Lexecon server at {self.base_url}"
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout, self._retries, self._backoff = httpx.Timeout(timeout), retries, backoff
        self._given_client, self._given_async = client, async_client
        self._client: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._trusted: _Trust | None = None  # the node facts and keys tokens are checked against
        self._next_refresh = 0.0
        self._node_id = node_id
        # Pinned keys plus keys they handed over; only grows, and only through a verified hand-over. None: not pinned.
        self._pinned: dict[str, PublicKey] | None = None if jwks is None else _pinned_keys(jwks)
        if self._pinned is None:
            logger.warning(
                "%r: capability tokens are checked against keys served by the same server, so whatever answers at "
                "that address can approve tool calls; in production pin the node's keys with jwks= (and node_id=)",
                self,
            )

    def __repr__(self) -> str:
        return f"RemoteGovernor({self.base_url!r})"

    # -- the Governor interface -----------------------------------------------------------------------------------

    def decide(self, request: DecisionRequest | Mapping[str, Any]) -> Decision:
        req, body, headers = _encode(request)
        decision, token = self._decision(req, self._send("POST", "/decide", body, headers))
        if token is not None:
            self._check_approval(req, decision, token, self._keys_for(token))
        return decision

    async def adecide(self, request: DecisionRequest | Mapping[str, Any]) -> Decision:
        req, body, headers = _encode(request)
        decision, token = self._decision(req, await self._asend("POST", "/decide", body, headers))
        if token is not None:
            self._check_approval(req, decision, token, await self._akeys_for(token))
        return decision

    def verify_token(self, token: str, *, tool: str, args: Mapping[str, Any]) -> CapabilityClaims:
        """Verify a capability token from this server for a call of ``tool`` with ``args``, and consume it.

        Usually no I/O: the decision that carried the token has already loaded the keys and the node facts.
        """
        trusted = self._keys_for(token)
        raw, kid = verify_signature(token, trusted.keys)
        return check_claims(
            raw, kid, tool=tool, args=args, audience=trusted.audience, issuer=trusted.node_id, leeway=trusted.leeway,
            replay_cache=self.replay_cache,
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        with self._lock:
            client, loop, self._async, self._async_loop = self._async, self._async_loop, None, None
        if client is not None and loop is asyncio.get_running_loop():  # another loop's connections are gone anyway
            await client.aclose()
        self.close()

    def __enter__(self) -> RemoteGovernor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteGovernor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- HTTP -----------------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        if self._given_client is not None:
            client = self._given_client
        else:
            with self._lock:
                client = self._client = self._client or httpx.Client(timeout=self._timeout)
        call, headers = _Call(method, path, self._retries, self._backoff), {**self._headers, **(headers or {})}
        while True:
            outcome: _Outcome
            try:
                outcome = client.request(method, self.base_url + path, content=body, headers=headers)
            except Exception as exc:  # fail closed on anything; _result classifies it
                outcome = exc
            if (wait := call.delay(outcome)) is None:
                return self._result(call, outcome)
            time.sleep(wait)

    async def _asend(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        client = self._given_async
        if client is None:
            loop = asyncio.get_running_loop()
            with self._lock:
                # Pooled connections belong to the loop that opened them; a later asyncio.run() needs a new client.
                if self._async is None or self._async_loop is not loop:
                    self._async, self._async_loop = httpx.AsyncClient(timeout=self._timeout), loop
                client = self._async
        call, headers = _Call(method, path, self._retries, self._backoff), {**self._headers, **(headers or {})}
        while True:
            outcome: _Outcome
            try:
                outcome = await client.request(method, self.base_url + path, content=body, headers=headers)
            except Exception as exc:  # fail closed on anything; _result classifies it
                outcome = exc
            if (wait := call.delay(outcome)) is None:
                return self._result(call, outcome)
            await asyncio.sleep(wait)

    def _result(self, call: _Call, outcome: _Outcome) -> bytes:
        """The body of a 200, or the error that says why there is none."""
        tries = f"after {call.made} attempt{'s' if call.made != 1 else ''}"
        if not isinstance(outcome, httpx.Response):
            kind = type(outcome).__name__
            if isinstance(outcome, httpx.TimeoutException):
                raise self._refused(f"timed out ({kind}) {tries}")
            if isinstance(outcome, httpx.TransportError):
                raise self._refused(f"is unreachable ({kind}) {tries}")
            raise self._refused(f"was not reached: {call.method} {call.path} failed with an unexpected {kind}")
        status = outcome.status_code
        if status == 200:
            return outcome.content
        detail = self._detail(outcome)
        if status == 401:
            raise self._refused(f"rejected the API key (401 {detail})")
        if status == 403:
            raise self._refused(f"refused: the API key lacks permission for {call.method} {call.path} (403 {detail})")
        if status in (400, 413, 422):
            raise InvalidRequest(f"{self._where} refused the request ({status} {detail})")
        if status == 429:
            raise self._refused(f"rate-limited the API key (429 {detail}) {tries}")
        if status >= 500:
            raise self._refused(f"failed with HTTP {status} ({detail}) {tries}")
        raise self._refused(f"answered {call.method} {call.path} with unexpected HTTP {status} ({detail})")

    def _refused(self, what: str) -> GovernanceError:
        return GovernanceError(f"{self._where} {what}; the tool call is refused")

    def _detail(self, response: httpx.Response) -> str:
        try:
            body = response.json()
            text = f"{body['error']}: {body['message']}"
        except (ValueError, KeyError, TypeError):
            text = response.text or response.reason_phrase
        # A server or proxy may echo the request back; the key must not travel on in our errors. Scrub before
        # truncating, so no part of a key survives at the cut.
        return _API_KEY.sub("[api key]", text.replace(self._api_key, "[api key]"))[:300]

    # -- decisions and tokens -------------------------------------------------------------------------------------

    def _decision(self, req: DecisionRequest, body: bytes) -> tuple[Decision, str | None]:
        """The decision in ``body``, and the capability token to check if it is an approval."""
        try:
            decision = Decision.model_validate_json(body)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "body"
            raise self._refused(f"returned a malformed decision ({where}: {error['msg']})") from None
        # A decision about some other call must never authorise this one.
        if (decision.actor, decision.tool, decision.args_sha256) != (req.actor, req.tool, req.binding()[0]):
            raise self._refused(f"returned decision {decision.decision_id} for a different request")
        if decision.approved and not decision.capability_token:
            raise self._refused(f"approved decision {decision.decision_id} without a capability token")
        return decision, decision.capability_token if decision.approved else None

    def _keys_for(self, token: str) -> _Trust:
        trusted, paths = self._plan(token)
        return trusted if trusted is not None else self._trust({path: self._send("GET", path) for path in paths})

    async def _akeys_for(self, token: str) -> _Trust:
        trusted, paths = self._plan(token)
        return trusted if trusted is not None else self._trust({path: await self._asend("GET", path) for path in paths})

    def _plan(self, token: str) -> tuple[_Trust | None, tuple[str, ...]]:
        """The node facts and keys to check ``token`` with, or None and the documents to (re)load first.

        An unknown kid means a key rotation (or a forged token): reload, but at most once per
        ``jwks_refresh_interval``, so a flood of bad tokens costs the server one request. Pinned, the reload is the
        key hand-over document, never the JWKS.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            kid = None  # verify_signature will say what is wrong with it
        with self._lock:
            trusted, now, pinned = self._trusted, time.monotonic(), self._pinned
            keys = trusted.keys if trusted is not None else pinned or {}
            refresh = isinstance(kid, str) and kid not in keys and now >= self._next_refresh
            if trusted is None and pinned is None:
                return None, (INFO_PATH, JWKS_PATH)  # the first load is not a refresh: it does not start the clock
            if refresh:
                self._next_refresh = now + self.jwks_refresh_interval
            elif trusted is not None:
                return trusted, ()
        if pinned is None:
            return None, (INFO_PATH, JWKS_PATH)
        return None, (INFO_PATH, ROTATIONS_PATH) if refresh else (INFO_PATH,)

    def _trust(self, bodies: Mapping[str, bytes]) -> _Trust:
        try:
            data = json.loads(bodies[INFO_PATH])
            node_id, audience, leeway = str(data["node_id"]), data["token_audience"], int(data["token_leeway_seconds"])
        except (ValueError, KeyError, TypeError):
            raise self._refused(f"served invalid node facts at {INFO_PATH}") from None
        if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
            raise self._refused(f"declares a token leeway of {leeway}s, outside 0-{MAX_LEEWAY_SECONDS}")
        if self._node_id is not None and node_id != self._node_id:
            raise self._refused(f"says it is node {node_id[:100]!r}, not the expected node {self._node_id!r}")
        if self._pinned is None:
            try:
                keys = jwks_to_keys(json.loads(bodies[JWKS_PATH]))
            except Exception as exc:  # a bad key document is as bad as none
                raise self._refused(f"served an invalid JWKS at {JWKS_PATH} ({type(exc).__name__})") from None
        else:
            if ROTATIONS_PATH in bodies:
                self._take_hand_overs(bodies[ROTATIONS_PATH], node_id)
            with self._lock:
                keys = dict(self._pinned)
        trusted = _Trust(node_id, None if audience is None else str(audience), leeway, keys)
        with self._lock:
            self._trusted = trusted
        return trusted

    def _take_hand_overs(self, body: bytes, node_id: str) -> None:
        """Trust the keys that verified ``key_rotated`` entries of node ``node_id`` hand over to."""
        try:
            document = json.loads(body)
            served_node, entries = document["node_id"], document["entries"]
            if not isinstance(served_node, str) or not isinstance(entries, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise self._refused(f"served an invalid key hand-over document at {ROTATIONS_PATH}") from None
        if served_node != node_id:
            raise self._refused(f"served the key hand-overs of node {served_node[:100]!r}, not of {node_id!r}")
        with self._lock:
            known = dict(self._pinned or {})
        added, rejected = _hand_overs(entries, node_id, known)
        for why in rejected:
            logger.warning("%s: a key hand-over was not accepted: %s", self._where, why)
        with self._lock:
            assert self._pinned is not None  # only called when pinned
            self._pinned.update(added)

    def _check_approval(self, req: DecisionRequest, decision: Decision, token: str, trusted: _Trust) -> None:
        try:
            raw, kid = verify_signature(token, trusted.keys)
            claims = check_claims(
                raw, kid, tool=req.tool, args_sha256=req.args_sha256, audience=trusted.audience,
                issuer=trusted.node_id, leeway=trusted.leeway,
                replay_cache=None,  # consumed later, by verify_token, right before the tool runs
            )  # fmt: skip
        except TokenError as exc:
            why = f"{exc.reason}: {exc}"
            if exc.reason == "unknown_kid" and self._pinned is not None:
                why += "; it is not pinned and no verified key hand-over introduces it"
            raise self._refused(f"returned an approval whose capability token failed verification ({why})") from None
        got = (claims.decision_id, claims.ledger_entry_id, claims.ledger_entry_hash, claims.jti, claims.sub)
        want = (decision.decision_id, decision.ledger_entry_id, decision.ledger_entry_hash, decision.token_id)
        if got != (*want, req.actor):
            raise self._refused(f"returned a capability token that does not match decision {decision.decision_id}")


def _encode(request: DecisionRequest | Mapping[str, Any]) -> tuple[DecisionRequest, bytes, dict[str, str]]:
    """The request, its JSON body and its headers: one idempotency key that every attempt of this call repeats."""
    req = DecisionRequest.parse(request)
    _, unbindable = req.binding()
    if unbindable is None:
        try:
            body = req.model_dump_json().encode()
        except ValueError as exc:
            unbindable = f"arguments are not JSON-serialisable: {exc}"
    if unbindable is not None:
        # The arguments cannot be sent, but the attempt can: the node denies it and records why (never the values).
        req = req.model_copy(update={"tool_args": {}, "unbindable_args": unbindable[:1024]})
        try:
            body = req.model_dump_json().encode()
        except ValueError as exc:  # the context itself cannot be sent
            raise InvalidRequest(f"decision request is not JSON-serialisable: {exc}") from None
    return req, body, {IDEMPOTENCY_HEADER: str(uuid.uuid4()), "Content-Type": "application/json"}


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0  # an HTTP-date: our own backoff applies


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _pinned_keys(jwks: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, PublicKey]:
    """The keys of a pinned JWKS (a mapping or a JSON file); ValueError if there are none or one is not what it says."""
    where = "jwks"
    document: Any = jwks
    if isinstance(jwks, str | os.PathLike):
        if isinstance(jwks, str) and jwks.lstrip().startswith("{"):
            raise ValueError("jwks= takes a JWKS mapping or a file path, not JSON text: pass json.loads(text)")
        path, where = Path(jwks), f"jwks file {os.fspath(jwks)!r}"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {where}: {type(exc).__name__}: {exc}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError(f'{where} must be a JWKS: {{"keys": [...]}}, as `lexecon keys export` prints')
    try:
        keys = jwks_to_keys(document)
    except Exception as exc:  # a swapped kid, a key of the wrong size, bad base64: nothing in it can be pinned
        raise ValueError(f"{where} is not a valid JWKS: {exc}") from None
    if not keys:
        raise ValueError(f"{where} holds no Ed25519 key to pin")
    return keys


class _NotAHandOver(Exception):
    """Why one entry of the hand-over document introduces no key."""


def _hand_overs(
    entries: list[Any], node_id: str, trusted: Mapping[str, PublicKey]
) -> tuple[dict[str, PublicKey], list[str]]:
    """The keys handed over by the verified entries, and why others were refused (for the log).

    Oldest first, so a chain k1 -> k2 -> k3 is followed in one pass. An entry signed by a key not trusted (yet) is
    skipped quietly: entries from before the pinned keys are expected, and such an entry can vouch for nothing.
    """
    keys, added, rejected = dict(trusted), dict[str, PublicKey](), list[str]()
    valid = [e for e in entries if isinstance(e, dict) and type(e.get("seq")) is int]
    if len(valid) != len(entries):
        rejected.append(f"{len(entries) - len(valid)} malformed entries")
    for entry in sorted(valid, key=lambda e: int(e["seq"])):
        kid = entry.get("kid")
        signer = keys.get(kid) if isinstance(kid, str) else None
        if signer is None:
            continue
        try:
            new = _hand_over(entry, node_id, signer)
        except _NotAHandOver as exc:
            rejected.append(f"entry {entry['seq']}: {exc}")
            continue
        if new.kid not in keys:
            keys[new.kid] = added[new.kid] = new
    return added, rejected


def _hand_over(entry: Mapping[str, Any], node_id: str, signer: PublicKey) -> PublicKey:
    """The key a ``key_rotated`` entry signed by ``signer`` hands over to; _NotAHandOver unless every check passes."""
    try:
        prev, stated = bytes.fromhex(entry["prev_hash"]), bytes.fromhex(entry["entry_hash"])
        body = base64.b64decode(entry["body"], validate=True)
        signature = base64.b64decode(entry["signature"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise _NotAHandOver("malformed hashes, body or signature") from None
    digest = entry_hash(prev, body)
    if not hmac.compare_digest(digest, stated):
        raise _NotAHandOver("its entry hash does not match its body")
    # The signature covers the hash, which covers the body: only after this is anything in the body believed.
    if not signer.verify(signature, signing_message(digest)):
        raise _NotAHandOver(f"its signature does not verify under key {signer.kid}")
    try:
        parsed = json.loads(body)
        data, new_kid, raw = parsed["data"], parsed["data"]["new_kid"], parsed["data"]["new_public_key"]
        if not isinstance(raw, str):
            raise TypeError
        new = PublicKey.from_raw(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except Exception:  # any shape the node never writes
        raise _NotAHandOver("its body is not a key_rotated entry") from None
    if parsed.get("type") != "key_rotated":
        raise _NotAHandOver(f"it is a {str(parsed.get('type'))[:50]!r} entry, not key_rotated")
    if parsed.get("node") != node_id:
        raise _NotAHandOver(f"it is an entry of node {str(parsed.get('node'))[:100]!r}, not of {node_id!r}")
    if parsed.get("seq") != entry["seq"] or data.get("old_kid") != signer.kid:
        raise _NotAHandOver("its sequence number or old key does not match the entry")
    if new.kid != new_kid:
        raise _NotAHandOver(f"new_kid {str(new_kid)[:50]!r} is not the kid of new_public_key ({new.kid})")
    return new
