"""RemoteGovernor against the real server app in-process: decisions, token checks, retries, failing closed."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import (
    DecisionRequest,
    GovernanceError,
    Governor,
    InvalidRequest,
    LexeconError,
    Outcome,
    RemoteGovernor,
    ReplayCache,
    TokenError,
    verify_token,
)
from lexecon_core.auth import Role
from lexecon_core.keys import Signer
from lexecon_core.remote import JWKS_PATH
from lexecon_core.tokens import DEFAULT_REPLAY_CACHE, issue_token
from lexecon_integrations._intercept import ToolCallGuard
from tests._servers import free_port

BASE = "https://testserver"  # plain http is refused for hosts that are not loopback
ACTOR = "ai_agent:test_bot"
SEARCH = {"actor": ACTOR, "tool": "search", "tool_args": {"q": "refund policy"}}
DELETE = {"actor": ACTOR, "tool": "delete_user", "tool_args": {"user_id": 7}}


class AppTransport(httpx.BaseTransport):
    """Sends an ``httpx.Client``'s requests to the in-process app and records them.

    Starlette's ``TestClient`` is built on ``httpx2`` in this environment, not ``httpx``, so it is not an
    ``httpx.Client`` and cannot be handed to ``RemoteGovernor`` itself; this bridge keeps the client a real one.
    Subclasses override :meth:`handle_request` to lose, delay or rewrite answers.
    """

    def __init__(self, app_client: TestClient) -> None:
        self.app_client = app_client
        self.requests: list[httpx.Request] = []

    def forward(self, request: httpx.Request) -> httpx.Response:
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in ("host", "content-length")]
        answer = self.app_client.request(request.method, str(request.url), content=request.read(), headers=headers)
        kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() != "content-length"]
        return httpx.Response(answer.status_code, headers=kept, content=answer.content, request=request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.forward(request)

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)


@pytest.fixture
def transport(client: TestClient) -> AppTransport:
    return AppTransport(client)


def remote_for(key: str, transport: httpx.BaseTransport, **options: Any) -> RemoteGovernor:
    options.setdefault("replay_cache", ReplayCache())
    options.setdefault("backoff", 0.001)
    return RemoteGovernor(BASE, api_key=key, client=httpx.Client(transport=transport), **options)


@pytest.fixture
def remote(keys: dict[Role, str], transport: AppTransport) -> Iterator[RemoteGovernor]:
    with remote_for(keys[Role.AGENT], transport) as governor:
        yield governor


def decision_entries(app: FastAPI) -> list[dict[str, Any]]:
    return [e.data for e in app.state.lexecon.governor.node.ledger.entries(entry_type="decision")]


def server_jwks(app: FastAPI) -> dict[str, Any]:
    return app.state.lexecon.governor.jwks()  # type: ignore[no-any-return]


def async_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def mock(
    handler: Callable[[httpx.Request], httpx.Response], key: str = "k-secret-123", **options: Any
) -> RemoteGovernor:
    options.setdefault("backoff", 0.001)
    return RemoteGovernor(BASE, api_key=key, client=httpx.Client(transport=httpx.MockTransport(handler)), **options)


def error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message}, headers=headers)


# -- decisions and tokens against the real app --------------------------------------------------------------------


def test_it_is_a_governor_and_defaults_to_the_process_replay_cache(keys: dict[Role, str]) -> None:
    governor = RemoteGovernor("https://lexecon.internal/", api_key=keys[Role.AGENT])
    assert isinstance(governor, Governor)
    assert governor.replay_cache is DEFAULT_REPLAY_CACHE
    assert governor.base_url == "https://lexecon.internal"


def test_approved_decision_carries_a_verified_token(
    app: FastAPI, remote: RemoteGovernor, transport: AppTransport
) -> None:
    decision = remote.decide(SEARCH)
    assert decision.outcome is Outcome.APPROVED and decision.capability_token
    entries = decision_entries(app)
    assert [e["decision_id"] for e in entries] == [decision.decision_id]
    assert entries[0]["principal"].startswith("apikey:")
    # every attempt carried the key and one idempotency key
    sent = [r for r in transport.requests if r.url.path == "/decide"]
    assert len(sent) == 1 and sent[0].headers["Authorization"].startswith("Bearer ")
    assert uuid.UUID(sent[0].headers["Idempotency-Key"]).version == 4
    # a third party with the published JWKS agrees
    claims = verify_token(decision.capability_token, keys=server_jwks(app), tool="search",
                          args={"q": "refund policy"}, issuer="test-node", replay_cache=None)  # fmt: skip
    assert claims.decision_id == decision.decision_id
    # the adapter-side check, which consumes the token
    used = remote.verify_token(decision.capability_token, tool="search", args={"q": "refund policy"})
    assert (used.decision_id, used.ledger_entry_id, used.jti) == (
        decision.decision_id,
        decision.ledger_entry_id,
        decision.token_id,
    )
    assert transport.count(JWKS_PATH) == 1  # fetched once, then cached


def test_denied_decision_needs_no_keys(app: FastAPI, remote: RemoteGovernor, transport: AppTransport) -> None:
    decision = remote.decide(DecisionRequest.model_validate(DELETE))
    assert decision.outcome is Outcome.DENIED
    assert decision.capability_token is None
    assert "forbids:agents->deletes" in decision.reasoning
    assert [e["outcome"] for e in decision_entries(app)] == ["denied"]
    assert transport.count(JWKS_PATH) == 0


def test_verify_token_consumes_the_token(remote: RemoteGovernor) -> None:
    token = remote.decide(SEARCH).capability_token
    assert token is not None
    remote.verify_token(token, tool="search", args={"q": "refund policy"})
    with pytest.raises(TokenError) as replayed:
        remote.verify_token(token, tool="search", args={"q": "refund policy"})
    assert replayed.value.reason == "replayed"


def test_verify_token_refuses_other_arguments_and_tools(remote: RemoteGovernor) -> None:
    token = remote.decide(SEARCH).capability_token
    assert token is not None
    with pytest.raises(TokenError) as wrong_args:
        remote.verify_token(token, tool="search", args={"q": "something else"})
    assert wrong_args.value.reason == "args_mismatch"
    with pytest.raises(TokenError) as wrong_tool:
        remote.verify_token(token, tool="refund", args={"q": "refund policy"})
    assert wrong_tool.value.reason == "wrong_tool"
    # the failed checks did not use it up
    remote.verify_token(token, tool="search", args={"q": "refund policy"})


def test_invalid_request_is_refused_before_any_request(remote: RemoteGovernor, transport: AppTransport) -> None:
    with pytest.raises(InvalidRequest, match="tool"):
        remote.decide({"actor": ACTOR, "tool": ""})
    assert transport.requests == []


def test_arguments_that_cannot_be_sent_are_denied_and_recorded_by_the_node(
    remote: RemoteGovernor, transport: AppTransport
) -> None:
    decision = remote.decide({"actor": ACTOR, "tool": "search", "tool_args": {"q": object()}})
    assert decision.outcome.value == "denied" and decision.args_sha256 is None and decision.capability_token is None
    assert "JSON-serialisable" in decision.reasoning
    sent = json.loads(transport.requests[-1].content)
    assert sent["tool_args"] == {} and "JSON-serialisable" in sent["unbindable_args"]  # the values never leave


def test_server_422_is_an_invalid_request_with_the_servers_message(
    app: FastAPI, remote: RemoteGovernor, transport: AppTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed = uuid.uuid4()
    monkeypatch.setattr("lexecon_core.remote.uuid.uuid4", lambda: fixed)
    remote.decide(SEARCH)
    with pytest.raises(InvalidRequest) as refused:  # same idempotency key, different request
        remote.decide({**SEARCH, "tool_args": {"q": "other"}})
    assert "idempotency key was already used for a different request" in str(refused.value)
    assert "https://testserver" in str(refused.value)
    assert transport.count("/decide") == 2  # not retried
    assert len(decision_entries(app)) == 1


class LoseFirstAnswer(AppTransport):
    """The first /decide reaches the server and is decided, but its answer never arrives (a read timeout)."""

    def __init__(self, app_client: TestClient) -> None:
        super().__init__(app_client)
        self.lost: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/decide" and not self.lost:
            self.lost.append(response.json())
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_retry_after_a_lost_answer_does_not_decide_twice(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    lossy = LoseFirstAnswer(client)
    with remote_for(keys[Role.AGENT], lossy) as governor:
        decision = governor.decide(SEARCH)
        assert decision.approved
        governor.verify_token(decision.capability_token or "", tool="search", args={"q": "refund policy"})
    attempts = [r for r in lossy.requests if r.url.path == "/decide"]
    assert len(attempts) == 2
    assert attempts[0].headers["Idempotency-Key"] == attempts[1].headers["Idempotency-Key"]
    assert lossy.lost[0]["decision_id"] == decision.decision_id
    assert lossy.lost[0]["token_id"] == decision.token_id  # the same single-use capability, not a second one
    entries = decision_entries(app)
    assert [e["decision_id"] for e in entries] == [decision.decision_id]


def test_retry_after_a_lost_answer_async(app: FastAPI, keys: dict[Role, str]) -> None:
    class LoseFirst(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.ASGITransport(app=app)
            self.keys: list[str] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.url.path == "/decide":
                self.keys.append(request.headers["Idempotency-Key"])
                if len(self.keys) == 1:
                    await response.aread()
                    raise httpx.ReadTimeout("the answer was lost", request=request)
            return response

    lossy = LoseFirst()

    async def main() -> Any:
        async with httpx.AsyncClient(transport=lossy) as http:
            governor = RemoteGovernor(BASE, api_key=keys[Role.AGENT], async_client=http, backoff=0.001)
            async with governor:
                return await governor.adecide(SEARCH)

    decision = asyncio.run(main())
    assert decision.approved
    assert len(lossy.keys) == 2 and lossy.keys[0] == lossy.keys[1]
    assert [e["decision_id"] for e in decision_entries(app)] == [decision.decision_id]


class RewriteToken(AppTransport):
    """Replaces the capability token in every /decide answer."""

    def __init__(self, app_client: TestClient, rewrite: Callable[[str], str]) -> None:
        super().__init__(app_client)
        self.rewrite = rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/decide" or response.status_code != 200:
            return response
        body = response.json()
        body["capability_token"] = self.rewrite(body["capability_token"])
        return httpx.Response(200, json=body, request=request)


def flip_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


def test_a_token_that_does_not_verify_is_refused_and_nothing_runs(client: TestClient, keys: dict[Role, str]) -> None:
    forged = RewriteToken(client, flip_signature)
    governor = remote_for(keys[Role.AGENT], forged)
    with pytest.raises(GovernanceError) as refused:
        governor.decide(SEARCH)
    message = str(refused.value)
    assert "Lexecon server at https://testserver" in message
    assert "capability token failed verification (bad_signature" in message
    assert "the tool call is refused" in message

    # What every adapter does before a tool body: the body runs only on an allowed verdict.
    verdict = ToolCallGuard(governor, actor=ACTOR).check("search", {"q": "refund policy"})
    assert not verdict.allowed and verdict.capability is None
    assert "Lexecon could not decide on tool 'search', so it was not run" in verdict.message
    assert "bad_signature" in verdict.message


def test_a_token_signed_by_a_foreign_key_is_refused(client: TestClient, keys: dict[Role, str]) -> None:
    foreign = Signer.generate()

    def resign(token: str) -> str:
        claims = json.loads(_b64(token.split(".")[1]))
        return issue_token(foreign, **_issue_args(claims))

    forged = RewriteToken(client, resign)
    governor = remote_for(keys[Role.AGENT], forged)
    with pytest.raises(GovernanceError, match=r"failed verification \(unknown_kid"):
        governor.decide(SEARCH)
    assert forged.count(JWKS_PATH) == 1  # just loaded: an unknown kid is not worth a second fetch
    with pytest.raises(GovernanceError, match=r"failed verification \(unknown_kid"):
        governor.decide(SEARCH)
    assert forged.count(JWKS_PATH) == 2  # cached keys: one refresh for the unknown kid


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _issue_args(claims: dict[str, Any]) -> dict[str, Any]:
    names = ("decision_id", "tool", "args_sha256", "ledger_entry_id", "ledger_entry_hash", "policy_version", "jti")
    return {
        **{n: claims[n] for n in names},
        "issuer": claims["iss"],
        "subject": claims["sub"],
        "audience": claims["aud"],
        "now": claims["iat"],
        "ttl_seconds": claims["exp"] - claims["iat"],
    }


def test_key_rotation_refreshes_the_jwks(app: FastAPI, remote: RemoteGovernor, transport: AppTransport) -> None:
    first = remote.decide(SEARCH)
    old_kid = remote.verify_token(first.capability_token or "", tool="search", args={"q": "refund policy"}).kid
    new_kid = app.state.lexecon.governor.rotate_keys()
    assert new_kid != old_kid
    second = remote.decide(SEARCH)
    claims = remote.verify_token(second.capability_token or "", tool="search", args={"q": "refund policy"})
    assert claims.kid == new_kid
    assert transport.count(JWKS_PATH) == 2


def test_a_flood_of_unknown_kids_costs_one_jwks_refresh(remote: RemoteGovernor, transport: AppTransport) -> None:
    remote.decide(SEARCH)
    assert transport.count(JWKS_PATH) == 1
    stranger = Signer.generate()
    forged_claims = {"issuer": "test-node", "subject": ACTOR, "tool": "search", "args_sha256": "0" * 64,
                     "ledger_entry_id": 1, "ledger_entry_hash": "00", "policy_version": "v"}  # fmt: skip
    for i in range(50):
        token = issue_token(stranger, **forged_claims, decision_id=f"dec_{i}")
        with pytest.raises(TokenError) as unknown:
            remote.verify_token(token, tool="search", args={})
        assert unknown.value.reason == "unknown_kid"
    assert transport.count(JWKS_PATH) == 2


# -- authentication -------------------------------------------------------------------------------------------------


def test_a_wrong_api_key_is_refused(transport: AppTransport, keys: dict[Role, str]) -> None:
    wrong = "lxk_this-key-does-not-exist-" + "x" * 20
    governor = remote_for(wrong, transport)
    with pytest.raises(GovernanceError) as refused:
        governor.decide(SEARCH)
    message = str(refused.value)
    assert "rejected the API key (401" in message and "https://testserver" in message
    assert wrong not in message
    assert transport.count("/decide") == 1  # never retried


def test_a_key_without_the_decide_permission_is_refused(transport: AppTransport, keys: dict[Role, str]) -> None:
    with pytest.raises(GovernanceError, match=r"lacks permission for POST /decide \(403"):
        remote_for(keys[Role.AUDITOR], transport).decide(SEARCH)
    assert transport.count("/decide") == 1


# -- async, against the real app ----------------------------------------------------------------------------------


def test_async_decisions_and_token_check(app: FastAPI, keys: dict[Role, str]) -> None:
    async def main() -> None:
        async with (
            async_client(app) as http,
            RemoteGovernor(BASE, api_key=keys[Role.AGENT], async_client=http, replay_cache=ReplayCache()) as governor,
        ):
            approved = await governor.adecide(SEARCH)
            denied = await governor.adecide(DELETE)
            assert approved.approved and approved.capability_token
            assert denied.outcome is Outcome.DENIED
            # the keys came with the approval: checking the token needs no (sync) request
            governor.verify_token(approved.capability_token, tool="search", args={"q": "refund policy"})
            with pytest.raises(TokenError, match="already been used"):
                governor.verify_token(approved.capability_token, tool="search", args={"q": "refund policy"})
            with pytest.raises(InvalidRequest):
                await governor.adecide({"actor": ACTOR})

    asyncio.run(main())
    assert [e["outcome"] for e in decision_entries(app)] == ["approved", "denied"]


def test_async_wrong_key_and_forged_token(app: FastAPI, keys: dict[Role, str]) -> None:
    class Forge(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.ASGITransport(app=app)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.url.path != "/decide":
                return response
            body = json.loads(await response.aread())
            body["capability_token"] = flip_signature(body["capability_token"])
            return httpx.Response(200, json=body, request=request)

    async def main() -> None:
        async with async_client(app) as http:
            with pytest.raises(GovernanceError, match=r"rejected the API key \(401"):
                await RemoteGovernor(BASE, api_key="wrong-key", async_client=http).adecide(SEARCH)
        async with httpx.AsyncClient(transport=Forge()) as http:
            with pytest.raises(GovernanceError, match="bad_signature"):
                await RemoteGovernor(BASE, api_key=keys[Role.AGENT], async_client=http).adecide(SEARCH)

    asyncio.run(main())


# -- retries and failing closed (scripted transports) -------------------------------------------------------------


def test_an_unreachable_server_fails_closed_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    governor = RemoteGovernor(url, api_key="k-secret-123", timeout=1.0, backoff=0.01)
    with governor, pytest.raises(GovernanceError) as refused:
        governor.decide(SEARCH)
    assert time.monotonic() - started < 2.0
    assert str(refused.value) == (
        f"Lexecon server at {url} is unreachable (ConnectError) after 3 attempts; the tool call is refused"
    )


RETRYING_PROGRAM = """
import logging, sys
from lexecon_core import GovernanceError, RemoteGovernor
with RemoteGovernor(sys.argv[1], api_key="k-secret-123", timeout=1.0, backoff=0.01) as governor:
    try:
        governor.decide({"actor": "ai_agent:a", "tool": "search"})
    except GovernanceError:
        print("refused")
if sys.argv[2] == "configured":
    logging.basicConfig()  # after the fact: only the second run of decide below is shown
    with RemoteGovernor(sys.argv[1], api_key="k-secret-123", timeout=1.0, backoff=0.01) as governor:
        try:
            governor.decide({"actor": "ai_agent:a", "tool": "search"})
        except GovernanceError:
            print("refused")
"""


def test_retries_print_nothing_unless_the_application_configures_logging() -> None:
    # A library's warnings go where the application sends them; without a NullHandler on the "lexecon" logger they
    # reach Python's last-resort handler and print to stderr of a program that never set up logging.
    url = f"http://127.0.0.1:{free_port()}"
    quiet = subprocess.run(
        [sys.executable, "-c", RETRYING_PROGRAM, url, "quiet"], capture_output=True, text=True, timeout=60, check=True
    )
    assert (quiet.stdout, quiet.stderr) == ("refused\n", "")
    shown = subprocess.run(
        [sys.executable, "-c", RETRYING_PROGRAM, url, "configured"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shown.stdout == "refused\nrefused\n"
    assert shown.stderr.splitlines() == [
        f"WARNING:lexecon.remote:RemoteGovernor({url!r}): capability tokens are checked against keys served by the "
        "same server, so whatever answers at that address can approve tool calls; in production pin the node's keys "
        "with jwks= (and node_id=)",
        "WARNING:lexecon.remote:POST /decide failed (ConnectError); retry 1 of 2",
        "WARNING:lexecon.remote:POST /decide failed (ConnectError); retry 2 of 2",
    ]


def test_an_unreachable_server_fails_closed_async() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def main() -> None:
        async with RemoteGovernor(url, api_key="k-secret-123", timeout=1.0, retries=1, backoff=0.01) as governor:
            with pytest.raises(GovernanceError, match=r"unreachable \(ConnectError\) after 2 attempts"):
                await governor.adecide(SEARCH)

    asyncio.run(main())


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_are_bounded(retries: int) -> None:
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(GovernanceError, match=f"after {retries + 1} attempt"):
        mock(refuse, retries=retries).decide(SEARCH)
    assert len(seen) == retries + 1
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1


@pytest.mark.parametrize(
    ("failure", "what"),
    [
        (httpx.ReadTimeout, "timed out (ReadTimeout)"),
        (httpx.ConnectTimeout, "timed out (ConnectTimeout)"),
        (httpx.PoolTimeout, "timed out (PoolTimeout)"),
        (httpx.RemoteProtocolError, "is unreachable (RemoteProtocolError)"),
        (httpx.ReadError, "is unreachable (ReadError)"),
    ],
)
def test_transport_failures_are_retried(failure: type[httpx.TransportError], what: str) -> None:
    seen: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise failure("boom", request=request)

    with pytest.raises(GovernanceError, match=f"{what.replace('(', '[(]').replace(')', '[)]')} after 3 attempts"):
        mock(fail).decide(SEARCH)
    assert len(seen) == 3


@pytest.mark.parametrize("failure", [httpx.WriteTimeout, httpx.WriteError, httpx.UnsupportedProtocol])
def test_failures_that_are_not_safe_to_repeat_are_not_retried(failure: type[httpx.TransportError]) -> None:
    seen: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise failure("boom", request=request)

    with pytest.raises(GovernanceError, match="after 1 attempt;"):
        mock(fail).decide(SEARCH)
    assert len(seen) == 1


class Scripted(AppTransport):
    """Answers /decide from a script of statuses first, then lets the app answer."""

    def __init__(self, app_client: TestClient, *script: httpx.Response) -> None:
        super().__init__(app_client)
        self.script = list(script)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/decide" and self.script:
            self.requests.append(request)
            return self.script.pop(0)
        return super().handle_request(request)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_5xx_then_200_is_retried_and_succeeds(
    app: FastAPI, client: TestClient, keys: dict[Role, str], status: int
) -> None:
    scripted = Scripted(client, error(status, "unavailable", "try again", **{"Retry-After": "1"}))
    decision = remote_for(keys[Role.AGENT], scripted).decide(SEARCH)
    assert decision.approved
    assert scripted.count("/decide") == 2
    assert len(decision_entries(app)) == 1


def test_429_honours_retry_after(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    scripted = Scripted(client, error(429, "rate_limited", "slow down", **{"Retry-After": "0.2"}))
    started = time.monotonic()
    assert remote_for(keys[Role.AGENT], scripted).decide(SEARCH).approved
    assert time.monotonic() - started >= 0.2


def test_a_long_retry_after_is_not_sat_out() -> None:
    seen: list[httpx.Request] = []

    def limited(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return error(429, "rate_limited", "rate limit exceeded; retry later", **{"Retry-After": "60"})

    started = time.monotonic()
    with pytest.raises(GovernanceError, match=r"rate-limited the API key \(429 rate_limited: .*\) after 1 attempt;"):
        mock(limited).decide(SEARCH)
    assert time.monotonic() - started < 1.0
    assert len(seen) == 1


def test_5xx_after_every_retry_fails_closed() -> None:
    seen: list[httpx.Request] = []

    def down(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return error(503, "undecided", "ledger write failed: database is locked", **{"Retry-After": "1"})

    with pytest.raises(GovernanceError) as refused:
        mock(down, retries=2).decide(SEARCH)
    assert str(refused.value) == (
        "Lexecon server at https://testserver failed with HTTP 503 (undecided: ledger write failed: database is "
        "locked) after 3 attempts; the tool call is refused"
    )
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("status", "raised"),
    [(400, InvalidRequest), (413, InvalidRequest), (422, InvalidRequest), (401, GovernanceError),
     (403, GovernanceError), (404, GovernanceError), (409, GovernanceError), (500, GovernanceError)],
)  # fmt: skip
def test_client_errors_are_not_retried(status: int, raised: type[LexeconError]) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return error(status, "some_code", f"the server says {status}")

    with pytest.raises(raised) as refused:
        mock(answer).decide(SEARCH)
    assert f"the server says {status}" in str(refused.value)
    assert len(seen) == 1  # a 500 is a server bug, not a transient state: only 502/503/504 are retried


def test_unexpected_errors_end_as_governance_errors() -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("something inside the transport broke")

    with pytest.raises(GovernanceError, match="was not reached: POST /decide failed with an unexpected RuntimeError"):
        mock(explode).decide(SEARCH)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"<html>gateway</html>", "malformed decision"),
        (b'{"decision_id": "dec_1"}', "malformed decision"),
        (b"[]", "malformed decision"),
    ],
)
def test_a_malformed_answer_fails_closed(body: bytes, what: str) -> None:
    with pytest.raises(GovernanceError, match=what):
        mock(lambda request: httpx.Response(200, content=body)).decide(SEARCH)


def test_a_decision_for_another_request_is_refused(remote: RemoteGovernor, transport: AppTransport) -> None:
    other = remote.decide(DELETE).model_dump(mode="json")
    with pytest.raises(GovernanceError, match="for a different request"):
        mock(lambda request: httpx.Response(200, json=other)).decide(SEARCH)


def test_an_approval_without_a_token_is_refused(remote: RemoteGovernor) -> None:
    approved = remote.decide(SEARCH).model_dump(mode="json")
    approved["capability_token"] = None
    with pytest.raises(GovernanceError, match="without a capability token"):
        mock(lambda request: httpx.Response(200, json=approved)).decide(SEARCH)


def test_a_token_for_another_decision_is_refused(app: FastAPI, remote: RemoteGovernor, transport: AppTransport) -> None:
    first = remote.decide(SEARCH)
    second = remote.decide(SEARCH).model_dump(mode="json")
    second["capability_token"] = first.capability_token  # validly signed, right tool and args, wrong decision

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/decide":
            return httpx.Response(200, json=second)
        return transport.forward(request)

    with pytest.raises(GovernanceError, match="does not match decision"):
        mock(answer).decide(SEARCH)


def test_bad_node_facts_or_jwks_fail_closed(remote: RemoteGovernor, transport: AppTransport) -> None:
    approved = remote.decide(SEARCH).model_dump(mode="json")

    def answer_with(path: str, content: bytes) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/decide":
                return httpx.Response(200, json=approved)
            if request.url.path == path:
                return httpx.Response(200, content=content)
            return transport.forward(request)

        return answer

    with pytest.raises(GovernanceError, match=r"served an invalid JWKS at /\.well-known/jwks\.json"):
        mock(answer_with(JWKS_PATH, b'{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}')).decide(SEARCH)
    with pytest.raises(GovernanceError, match=r"served invalid node facts at /\.well-known/lexecon\.json"):
        mock(answer_with("/.well-known/lexecon.json", b'{"node_id": "x"}')).decide(SEARCH)
    info = {"node_id": "test-node", "token_audience": None, "token_leeway_seconds": 100_000}
    with pytest.raises(GovernanceError, match="leeway of 100000s"):
        mock(answer_with("/.well-known/lexecon.json", json.dumps(info).encode())).decide(SEARCH)


# -- the API key stays secret -------------------------------------------------------------------------------------


def test_the_api_key_never_appears_in_errors_logs_or_repr(
    client: TestClient, keys: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "lxk_super-secret-key-0123456789"
    caplog.set_level(logging.DEBUG)
    failures: list[BaseException] = []

    def echo(request: httpx.Request) -> httpx.Response:  # a proxy that echoes the request, headers included
        return error(502, "bad_gateway", f"upstream failed for {dict(request.headers)}")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['Authorization']}", request=request)

    attempts: list[Callable[[], Any]] = [
        lambda: mock(echo, key=secret).decide(SEARCH),
        lambda: mock(refuse, key=secret).decide(SEARCH),
        lambda: mock(lambda r: error(401, "unauthorized", "invalid or revoked API key"), key=secret).decide(SEARCH),
        lambda: mock(lambda r: error(422, "invalid_request", f"bad {r.headers}"), key=secret).decide(SEARCH),
        lambda: remote_for(secret, AppTransport(client)).decide(SEARCH),
        lambda: RemoteGovernor(f"http://127.0.0.1:{free_port()}", api_key=secret, backoff=0.001).decide(SEARCH),
        lambda: RemoteGovernor("https://user:pw@lexecon.internal", api_key=secret),
        lambda: RemoteGovernor(BASE, api_key=secret + "\r\nX-Injected: 1"),
    ]
    for attempt in attempts:
        with pytest.raises((LexeconError, ValueError)) as caught:
            attempt()
        failures.append(caught.value)
    for failure in failures:
        chain: BaseException | None = failure
        while chain is not None:  # nothing in the exception chain that a traceback would print
            assert secret not in str(chain) and secret not in repr(chain)
            chain = chain.__cause__ or (None if chain.__suppress_context__ else chain.__context__)
    assert "user:pw" not in str(failures[6]) and "pw" not in str(failures[6])
    assert isinstance(failures[0], GovernanceError) and "[api key]" in str(failures[0])
    assert secret not in caplog.text
    governor = RemoteGovernor(BASE, api_key=secret)
    assert secret not in repr(governor) and secret not in str(governor)


def test_constructor_checks_its_options() -> None:
    for bad in ("ftp://lexecon.internal", "lexecon.internal", "http://", "http://[::1"):
        with pytest.raises(ValueError, match="base_url"):
            RemoteGovernor(bad, api_key="k")
    with pytest.raises(ValueError, match="api_key"):
        RemoteGovernor(BASE, api_key="")
    with pytest.raises(ValueError, match="retries"):
        RemoteGovernor(BASE, api_key="k", retries=-1)


def test_clients_it_creates_are_reused_and_closed_but_given_ones_are_left_open() -> None:
    given = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    governor = RemoteGovernor(BASE, api_key="k", client=given, retries=0)
    with governor, pytest.raises(GovernanceError):
        governor.decide(SEARCH)
    assert not given.is_closed

    own = RemoteGovernor(f"http://127.0.0.1:{free_port()}", api_key="k", retries=0)
    for _ in range(2):
        with pytest.raises(GovernanceError):
            own.decide(SEARCH)
    created = own._client
    assert created is not None and not created.is_closed
    own.close()
    assert created.is_closed


# -- retries ------------------------------------------------------------------------------------------------------


def test_a_retried_approval_gets_the_very_same_token(client: TestClient, keys: dict[Role, str]) -> None:
    """A token's iat is its ledger entry's time, so a replayed decision re-signs the identical token (Ed25519 is
    deterministic), with the same expiry - not a second capability."""
    lossy = LoseFirstAnswer(client)
    decision = remote_for(keys[Role.AGENT], lossy).decide(SEARCH)
    assert decision.token_id == lossy.lost[0]["token_id"]
    assert decision.token_expires_at == lossy.lost[0]["token_expires_at"]
    assert decision.capability_token == lossy.lost[0]["capability_token"]
