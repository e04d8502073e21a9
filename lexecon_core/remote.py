"""A :class:`~lexecon_core.Governor` backed by a hosted Lexecon server (``POST /decide``), sync and async.

It fails closed: when no trustworthy decision comes back (server down, timeouts, 5xx after retries, a malformed answer,
a capability token that does not verify against the server's JWKS) it raises :class:`GovernanceError`, and the tool
call must not run. Every decide call sends one idempotency key on all its attempts, so a retry after a lost response
gets the first decision back instead of a second one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from pydantic import ValidationError

from lexecon_core.decisions import Decision, DecisionRequest
from lexecon_core.errors import GovernanceError, InvalidRequest, TokenError
from lexecon_core.keys import PublicKey, jwks_to_keys
from lexecon_core.tokens import (
    DEFAULT_REPLAY_CACHE,
    MAX_LEEWAY_SECONDS,
    CapabilityClaims,
    ReplayCache,
    check_claims,
    verify_signature,
)
from lexecon_core.wire import IDEMPOTENCY_HEADER

__all__ = ["RemoteGovernor"]

logger = logging.getLogger("lexecon.remote")

JWKS_PATH = "/.well-known/jwks.json"
INFO_PATH = "/.well-known/lexecon.json"
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
    """What tokens from the server are checked against: its node facts and its JWKS."""

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

    ``client`` / ``async_client`` are used as given (their own timeouts apply) and never closed here; otherwise one
    pooled client of each kind is created on first use, with ``timeout`` for connect, read, write and pool.
    """

    jwks_refresh_interval = 10.0  # seconds between JWKS refreshes triggered by tokens with an unknown kid

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
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

    def __repr__(self) -> str:
        return f"RemoteGovernor({self.base_url!r})"

    # -- the Governor interface -----------------------------------------------------------------------------------

    def decide(self, request: DecisionRequest | Mapping[str, Any]) -> Decision:
        req, body, headers = _encode(request)
        decision, token = self._decision(req, self._send("POST", "/decide", body, headers))
        if token is not None:
            trusted = self._cached(token) or self._trust(self._send("GET", INFO_PATH), self._send("GET", JWKS_PATH))
            self._check_approval(req, decision, token, trusted)
        return decision

    async def adecide(self, request: DecisionRequest | Mapping[str, Any]) -> Decision:
        req, body, headers = _encode(request)
        decision, token = self._decision(req, await self._asend("POST", "/decide", body, headers))
        if token is not None:
            trusted = self._cached(token) or self._trust(
                await self._asend("GET", INFO_PATH), await self._asend("GET", JWKS_PATH)
            )
            self._check_approval(req, decision, token, trusted)
        return decision

    def verify_token(self, token: str, *, tool: str, args: Mapping[str, Any]) -> CapabilityClaims:
        """Verify a capability token from this server for a call of ``tool`` with ``args``, and consume it.

        Usually no I/O: the decision that carried the token has already fetched the JWKS and the node facts.
        """
        trusted = self._cached(token) or self._trust(self._send("GET", INFO_PATH), self._send("GET", JWKS_PATH))
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
        if (decision.actor, decision.tool, decision.args_sha256) != (req.actor, req.tool, req.args_sha256):
            raise self._refused(f"returned decision {decision.decision_id} for a different request")
        if decision.approved and not decision.capability_token:
            raise self._refused(f"approved decision {decision.decision_id} without a capability token")
        return decision, decision.capability_token if decision.approved else None

    def _cached(self, token: str) -> _Trust | None:
        """The node facts and keys to check ``token`` with, or None to (re)load them first. An unknown kid means a key
        rotation (or a forged token): reload, but at most once per ``jwks_refresh_interval``, so a flood of bad tokens
        costs the server one request."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            kid = None  # verify_signature will say what is wrong with it
        with self._lock:
            trusted, now = self._trusted, time.monotonic()
            if trusted is None or not isinstance(kid, str) or kid in trusted.keys or now < self._next_refresh:
                return trusted
            self._next_refresh = now + self.jwks_refresh_interval
            return None

    def _trust(self, info_body: bytes, jwks_body: bytes) -> _Trust:
        try:
            data = json.loads(info_body)
            node_id, audience, leeway = str(data["node_id"]), data["token_audience"], int(data["token_leeway_seconds"])
        except (ValueError, KeyError, TypeError):
            raise self._refused(f"served invalid node facts at {INFO_PATH}") from None
        if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
            raise self._refused(f"declares a token leeway of {leeway}s, outside 0-{MAX_LEEWAY_SECONDS}")
        try:
            keys = jwks_to_keys(json.loads(jwks_body))
        except Exception as exc:  # a bad key document is as bad as none
            raise self._refused(f"served an invalid JWKS at {JWKS_PATH} ({type(exc).__name__})") from None
        trusted = _Trust(node_id, None if audience is None else str(audience), leeway, keys)
        with self._lock:
            self._trusted = trusted
        return trusted

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
            raise self._refused(f"returned an approval whose capability token failed verification ({why})") from None
        got = (claims.decision_id, claims.ledger_entry_id, claims.ledger_entry_hash, claims.jti, claims.sub)
        want = (decision.decision_id, decision.ledger_entry_id, decision.ledger_entry_hash, decision.token_id)
        if got != (*want, req.actor):
            raise self._refused(f"returned a capability token that does not match decision {decision.decision_id}")


def _encode(request: DecisionRequest | Mapping[str, Any]) -> tuple[DecisionRequest, bytes, dict[str, str]]:
    """The request, its JSON body and its headers: one idempotency key that every attempt of this call repeats."""
    req = DecisionRequest.parse(request)
    req.args_sha256  # noqa: B018 - raises InvalidRequest for arguments that cannot be hashed, before any I/O
    try:
        body = req.model_dump_json().encode()
    except ValueError as exc:
        raise InvalidRequest(f"decision request is not JSON-serialisable: {exc}") from None
    return req, body, {IDEMPOTENCY_HEADER: str(uuid.uuid4()), "Content-Type": "application/json"}


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0  # an HTTP-date: our own backoff applies
