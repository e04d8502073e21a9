"""Hardening: security headers, CORS, body limits, malformed input, rate limits, error hygiene, no secrets leaked."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import load_settings
from lexecon_core.auth import Role
from lexecon_core.server import create_app
from tests.server.conftest import auth

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "strict-transport-security": "max-age=63072000; includeSubDomains",
}
SEARCH = {"actor": "ai_agent:support", "tool": "search", "tool_args": {"q": "x"}}
LIMIT = 4096  # LEXECON_MAX_REQUEST_BYTES in these tests


def make_app(home: Path, **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {
        "rate_limit_per_second": 10_000, "rate_limit_burst": 10_000, "policy_sync_seconds": 0,
        "max_request_bytes": LIMIT,
    }  # fmt: skip
    values.update(overrides)
    return create_app(load_settings(home, **values))


def make_keys(app: FastAPI) -> dict[Role, str]:
    store = app.state.lexecon.api_keys
    return {role: store.create(f"h-{role.value}", role, by="test")[1] for role in Role}


@pytest.fixture
def hard_app(home: Path) -> FastAPI:
    return make_app(home)


@pytest.fixture
def hard_keys(hard_app: FastAPI) -> dict[Role, str]:
    return make_keys(hard_app)


@pytest.fixture
def hard_client(hard_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(hard_app, raise_server_exceptions=False) as client:
        yield client


def assert_json_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= {"error", "message", "fields"} and isinstance(body["message"], str)
    if code is not None:
        assert body["error"] == code
    return body  # type: ignore[no-any-return]


# -- security headers ------------------------------------------------------------------------------------------------


def _responses(client: TestClient, keys: dict[Role, str]) -> dict[str, Any]:
    agent = auth(keys[Role.AGENT])
    return {
        "200": client.get("/health"),
        "200-authenticated": client.post("/decide", json=SEARCH, headers=agent),
        "200-metrics": client.get("/metrics"),
        "401": client.get("/apikeys"),
        "403": client.get("/apikeys", headers=agent),
        "404": client.get("/no/such/route"),
        "404-entry": client.get("/ledger/entries/999999", headers=auth(keys[Role.AUDITOR])),
        "405": client.put("/decide", json=SEARCH, headers=agent),
        "422": client.post("/decide", json={"tool": "search"}, headers=agent),
        "413": client.post("/decide", content=b"x" * (LIMIT + 1), headers=agent),
    }


@pytest.mark.parametrize(
    "kind", ["200", "200-authenticated", "200-metrics", "401", "403", "404", "404-entry", "405", "422", "413"]
)
def test_security_headers(hard_client: TestClient, hard_keys: dict[Role, str], kind: str) -> None:
    response = _responses(hard_client, hard_keys)[kind]
    assert str(response.status_code) == kind.split("-")[0]
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (kind, name)


def test_security_headers_on_429(home: Path) -> None:
    app = make_app(home, rate_limit_per_second=0.01, rate_limit_burst=1)
    key = make_keys(app)[Role.AUDITOR]
    with TestClient(app) as client:
        client.get("/policies", headers=auth(key))
        limited = client.get("/policies", headers=auth(key))
    assert limited.status_code == 429
    for name, value in SECURITY_HEADERS.items():
        assert limited.headers.get(name) == value, name


def test_security_headers_on_500(hard_app: FastAPI, hard_client: TestClient, hard_keys: dict[Role, str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _explode(hard_app, monkeypatch)
    response = hard_client.get("/ledger/checkpoints", headers=auth(hard_keys[Role.AUDITOR]))
    assert response.status_code == 500
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name


# -- CORS ------------------------------------------------------------------------------------------------------------

ORIGIN = "https://console.example"


def _preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/decide",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


def test_cors_allows_a_configured_origin(home: Path) -> None:
    app = make_app(home, cors_origins=f"{ORIGIN}, https://other.example")
    keys = make_keys(app)
    with TestClient(app) as client:
        preflight = _preflight(client, ORIGIN)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "idempotency-key"} <= allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in preflight.headers
        assert _preflight(client, "https://other.example").headers["access-control-allow-origin"] == (
            "https://other.example"
        )
        actual = client.post("/decide", json=SEARCH, headers={**auth(keys[Role.AGENT]), "Origin": ORIGIN})
        assert actual.status_code == 200
        assert actual.headers["access-control-allow-origin"] == ORIGIN


def test_cors_refuses_other_origins(home: Path) -> None:
    app = make_app(home, cors_origins=ORIGIN)
    keys = make_keys(app)
    with TestClient(app) as client:
        for origin in ("https://evil.example", "https://console.example.evil", "null", "http://console.example"):
            preflight = _preflight(client, origin)
            assert preflight.status_code >= 400, origin
            assert "access-control-allow-origin" not in preflight.headers, origin
            simple = client.post("/decide", json=SEARCH, headers={**auth(keys[Role.AGENT]), "Origin": origin})
            assert "access-control-allow-origin" not in simple.headers, origin


def test_refused_preflight_is_a_json_error(home: Path) -> None:
    app = make_app(home, cors_origins=ORIGIN)
    with TestClient(app) as client:
        assert_json_error(_preflight(client, "https://evil.example"), 400)


def test_no_cors_without_configured_origins(hard_client: TestClient, hard_keys: dict[Role, str]) -> None:
    preflight = _preflight(hard_client, ORIGIN)
    assert preflight.status_code == 405
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    simple = hard_client.post("/decide", json=SEARCH, headers={**auth(hard_keys[Role.AGENT]), "Origin": ORIGIN})
    assert simple.status_code == 200
    assert not [h for h in simple.headers if h.startswith("access-control-")]


# -- request size ----------------------------------------------------------------------------------------------------


def test_413_for_a_declared_large_body(hard_app: FastAPI, hard_client: TestClient,
                                       hard_keys: dict[Role, str]) -> None:  # fmt: skip
    head = hard_app.state.lexecon.governor.node.ledger.head()[0]
    big = {**SEARCH, "user_intent": "x" * LIMIT}
    response = hard_client.post("/decide", json=big, headers=auth(hard_keys[Role.AGENT]))
    body = assert_json_error(response, 413, "request_too_large")
    assert "LEXECON_MAX_REQUEST_BYTES" in body["message"]
    # Refused before authentication: an anonymous sender cannot make the server read a large body either.
    assert_json_error(hard_client.post("/decide", content=b"{" * (LIMIT + 1)), 413, "request_too_large")
    assert hard_app.state.lexecon.governor.node.ledger.head()[0] == head


def test_body_at_the_limit_is_read(hard_client: TestClient, hard_keys: dict[Role, str]) -> None:
    body = {**SEARCH, "user_intent": ""}
    size = len(json.dumps(body).encode())
    body["user_intent"] = "x" * (LIMIT - size)
    content = json.dumps(body).encode()
    assert len(content) == LIMIT
    response = hard_client.post(
        "/decide", content=content, headers={**auth(hard_keys[Role.AGENT]), "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


def _stream(chunks: list[bytes]) -> Any:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return body()


async def _asgi_post(app: FastAPI, path: str, chunks: list[bytes], headers: dict[str, str]) -> httpx.Response:
    """POST a chunked body (no Content-Length) in several ASGI messages, as a streaming client sends it."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post(path, content=_stream(chunks), headers=headers)


def test_413_for_a_chunked_body_over_the_limit(hard_app: FastAPI, hard_keys: dict[Role, str]) -> None:
    headers = {**auth(hard_keys[Role.AGENT]), "Content-Type": "application/json"}
    chunks = [b'{"actor": "ai_agent:a", "tool": "search", "user_intent": "'] + [b"y" * 1000] * 8 + [b'"}']
    response = asyncio.run(_asgi_post(hard_app, "/decide", chunks, headers))
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413, "request_too_large")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value
    # The same body through the TestClient (one message, no Content-Length).
    with TestClient(hard_app) as client:
        streamed = client.post("/decide", content=iter(chunks), headers=headers)
    assert_json_error(streamed, 413, "request_too_large")


def test_chunked_body_under_the_limit_is_accepted(hard_app: FastAPI, hard_keys: dict[Role, str]) -> None:
    headers = {**auth(hard_keys[Role.AGENT]), "Content-Type": "application/json"}
    chunks = [b'{"actor": "ai_agent:a", ', b'"tool": "search", ', b'"user_intent": "' + b"z" * 2000 + b'"}']
    response = asyncio.run(_asgi_post(hard_app, "/decide", chunks, headers))
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "approved"


# -- malformed requests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"{bad json", b"", b"[]", b"null", b'"text"', b'{"actor": "a", "tool": "t",}', b"\x00\x01"], ids=repr
)
def test_malformed_json_is_422(hard_app: FastAPI, hard_client: TestClient, hard_keys: dict[Role, str],
                               content: bytes) -> None:  # fmt: skip
    head = hard_app.state.lexecon.governor.node.ledger.head()[0]
    response = hard_client.post(
        "/decide", content=content, headers={**auth(hard_keys[Role.AGENT]), "Content-Type": "application/json"}
    )
    body = assert_json_error(response, 422, "invalid_request")
    assert body["fields"]
    assert hard_app.state.lexecon.governor.node.ledger.head()[0] == head


UNPARSEABLE = {
    "not-utf8": b'{"actor": "\xff\xfe", "tool": "search"}',
    "nested-1500": b'{"actor": "ai_agent:a", "tool": "search", "tool_args": {"a": ' + b"[" * 1500 + b"]" * 1500 + b"}}",
}


@pytest.mark.parametrize("content", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
@pytest.mark.parametrize("path", ["/decide", "/decide/verify", "/policies/load", "/apikeys"])
def test_unparseable_body_gets_a_documented_status(hard_client: TestClient, hard_keys: dict[Role, str],
                                                   path: str, content: bytes) -> None:  # fmt: skip
    key = hard_keys[Role.AGENT if path.startswith("/decide") else Role.ADMIN]
    response = hard_client.post(path, content=content, headers={**auth(key), "Content-Type": "application/json"})
    assert response.status_code < 500
    documented = hard_client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    assert str(response.status_code) in documented, response.text


@pytest.mark.parametrize("field", ["context", "tool_args"])
def test_deeply_nested_arguments_are_a_client_error(hard_app: FastAPI, hard_keys: dict[Role, str], field: str) -> None:
    """Hashing and recording walk these values recursively: nesting is bounded (MAX_NESTING) so a 1 KB body cannot
    exhaust the stack."""
    nested = b"[" * 600 + b"]" * 600
    content = b'{"actor": "ai_agent:a", "tool": "search", "' + field.encode() + b'": {"a": ' + nested + b"}}"
    with TestClient(hard_app, raise_server_exceptions=False) as client:
        response = client.post(
            "/decide", content=content, headers={**auth(hard_keys[Role.AGENT]), "Content-Type": "application/json"}
        )
    assert response.status_code == 422, response.text
    assert "nested deeper than" in response.json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_is_refused(hard_app: FastAPI, hard_client: TestClient, hard_keys: dict[Role, str],
                                       content_type: str) -> None:  # fmt: skip
    head = hard_app.state.lexecon.governor.node.ledger.head()[0]
    response = hard_client.post(
        "/decide",
        content=json.dumps(SEARCH).encode(),
        headers={**auth(hard_keys[Role.AGENT]), "Content-Type": content_type},
    )
    assert response.status_code in (415, 422), response.text
    assert_json_error(response, response.status_code)
    assert hard_app.state.lexecon.governor.node.ledger.head()[0] == head


def test_unknown_route_is_a_json_404(hard_client: TestClient, hard_keys: dict[Role, str]) -> None:
    for path in ("/nope", "/ledger/nope", "/ledger/entries/1/proof/extra", "/.well-known/other.json"):
        for headers in ({}, auth(hard_keys[Role.ADMIN])):
            assert_json_error(hard_client.get(path, headers=headers), 404, "not_found")


def test_wrong_method_is_a_json_405(hard_client: TestClient, hard_keys: dict[Role, str]) -> None:
    for method, path in (("GET", "/decide"), ("DELETE", "/policies"), ("POST", "/health"), ("PUT", "/apikeys")):
        response = hard_client.request(method, path, headers=auth(hard_keys[Role.ADMIN]))
        assert_json_error(response, 405, "method_not_allowed")
        assert response.headers.get("allow")


# -- rate limiting ---------------------------------------------------------------------------------------------------


def test_rate_limit_per_key(home: Path) -> None:
    app = make_app(home, rate_limit_per_second=0.01, rate_limit_burst=3)
    keys = make_keys(app)
    with TestClient(app) as client:
        statuses = [client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT])).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        limited = client.post("/decide", json=SEARCH, headers=auth(keys[Role.AGENT]))
        assert_json_error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        # Other keys have their own budget.
        assert client.get("/policies", headers=auth(keys[Role.AUDITOR])).status_code == 200
        assert client.post("/decide/verify", json={"token": "t", "tool": "x"},
                           headers=auth(keys[Role.OPERATOR])).status_code == 200  # fmt: skip
        # Refused requests are not decided.
        decisions = app.state.lexecon.governor.node.ledger.count(entry_type="decision")
        assert decisions == 3
        assert "lexecon_rate_limited_total 1.0" in client.get("/metrics").text


def test_failed_authentications_are_rate_limited_per_address(home: Path) -> None:
    app = make_app(home, rate_limit_per_second=0.01, rate_limit_burst=3)
    keys = make_keys(app)
    bad = "lxk_0123456789abcdef_" + "B" * 43
    with TestClient(app) as client:
        statuses = [client.get("/apikeys", headers=auth(bad)).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        limited = client.get("/apikeys", headers=auth("garbage"))
        assert_json_error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        # A valid key from the same address is charged to its own bucket.
        assert client.get("/apikeys", headers=auth(keys[Role.ADMIN])).status_code == 200


# -- errors never leak -----------------------------------------------------------------------------------------------


def _explode(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def checkpoints() -> Any:
        raise RuntimeError("secret-detail: password=hunter2")

    monkeypatch.setattr(app.state.lexecon.governor.node.ledger, "checkpoints", checkpoints)


def test_unexpected_exception_is_an_opaque_500(
    hard_app: FastAPI, hard_client: TestClient, hard_keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    _explode(hard_app, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="lexecon.server"):
        response = hard_client.get("/ledger/checkpoints", headers=auth(hard_keys[Role.AUDITOR]))
    body = assert_json_error(response, 500, "internal")
    assert body["message"] == "internal server error"
    assert "secret-detail" not in response.text and "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "secret-detail" in caplog.text  # the detail goes to the log


def test_api_keys_never_appear_in_responses_or_logs(
    hard_app: FastAPI, hard_client: TestClient, hard_keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    client = hard_client
    responses: list[Any] = []
    with caplog.at_level(logging.DEBUG):
        made = client.post(
            "/apikeys", json={"name": "leak-check", "role": "agent", "actors": "*"}, headers=auth(hard_keys[Role.ADMIN])
        )
        new_key = made.json()["api_key"]
        secrets_ = [*hard_keys.values(), new_key]
        wrong = new_key[:21] + ("A" if new_key[21] != "A" else "B") + new_key[22:]
        revoked_record, revoked = hard_app.state.lexecon.api_keys.create("to-revoke", Role.AGENT, by="test")
        secrets_ += [wrong, revoked]
        client.delete(f"/apikeys/{revoked_record.key_id}", headers=auth(hard_keys[Role.ADMIN]))
        for key in secrets_:
            responses += [
                client.post("/decide", json=SEARCH, headers=auth(key)),
                client.get("/apikeys", headers=auth(key)),
                client.get("/ledger/entries", headers=auth(key)),
                client.get("/metrics", headers=auth(key)),
            ]
        responses.append(client.get("/ledger/entries", params={"limit": 1000}, headers=auth(hard_keys[Role.AUDITOR])))
        responses.append(client.get("/ledger/export", headers=auth(hard_keys[Role.AUDITOR])))
        _explode(hard_app, monkeypatch)
        responses.append(client.get("/ledger/checkpoints", headers=auth(hard_keys[Role.AUDITOR])))
    assert {r.status_code for r in responses} >= {200, 401, 403, 500}
    for key in secrets_:
        secret = key[21:]
        assert secret not in caplog.text, "an API key secret was logged"
        for response in responses:
            assert secret.encode() not in response.content, response.request.url
    # Only the one creation response ever carried a key.
    assert made.status_code == 201


def test_policy_wildcards_cannot_make_a_decision_slow(hard_client: TestClient, hard_keys: dict[Role, str]) -> None:
    document = {
        "mode": "strict",
        "terms": [
            {"term_id": "bots", "term_type": "actor", "value": "*a*a*a*a*a*a*c"},
            {"term_id": "search", "term_type": "tool", "value": "search"},
        ],
        "relations": [{"relation_type": "permits", "source_term_id": "bots", "target_term_id": "search"}],
    }
    loaded = hard_client.post("/policies/load", json={"document": document}, headers=auth(hard_keys[Role.OPERATOR]))
    assert loaded.status_code == 200
    started = time.perf_counter()
    response = hard_client.post("/decide", json={"actor": "a" * 64, "tool": "search"},
                                headers=auth(hard_keys[Role.AGENT]))  # fmt: skip
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.json()["outcome"] == "denied"
    assert elapsed < 0.25, f"one decision took {elapsed:.2f} s"
