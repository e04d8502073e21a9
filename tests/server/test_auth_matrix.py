"""The permission matrix, exhaustively: every route of the app against every kind of credential.

For each route the expected status is derived from :data:`lexecon_core.auth.PERMISSIONS`, never restated here: a
missing, malformed, unknown, wrong or revoked key is 401 (with ``WWW-Authenticate: Bearer``), a role without the
route's permission is 403, a role with it gets the route's success status. Unauthenticated routes answer whatever
credential is sent. ``test_every_route_is_in_the_matrix`` fails when a route is added without an entry here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_POLICY  # tests/conftest.py
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import init_node, load_settings
from lexecon_core.auth import PERMISSIONS, Permission, Role
from lexecon_core.policy import parse_policy_text
from lexecon_core.server import create_app
from tests.server.conftest import auth

PUBLIC = "public"  # no credential needed
METRICS = "metrics"  # public unless LEXECON_METRICS_PUBLIC=false, then READ_METRICS


# -- the matrix ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """How to call one route so that a caller who passes authorisation gets ``ok`` (a 2xx)."""

    permission: Permission | str
    build: Callable[[Ctx], dict[str, Any]]  # -> keyword arguments of TestClient.request (url, json, ...)
    ok: int = 200


@dataclass
class Ctx:
    app: FastAPI
    keys: dict[Role, str]

    def victim_key_id(self) -> str:
        """A fresh key for DELETE /apikeys/{key_id} to revoke."""
        record, _ = self.app.state.lexecon.api_keys.create("victim", Role.AGENT, by="test")
        return record.key_id


def _policy_document() -> dict[str, Any]:
    return parse_policy_text(TEST_POLICY, fmt="yaml").to_document()


ROUTES: dict[tuple[str, str], Call] = {
    ("POST", "/decide"): Call(
        Permission.DECIDE, lambda c: {"url": "/decide", "json": {"actor": "ai_agent:m", "tool": "search"}}
    ),
    ("POST", "/decide/verify"): Call(
        Permission.VERIFY_TOKEN, lambda c: {"url": "/decide/verify", "json": {"token": "x", "tool": "search"}}
    ),
    ("GET", "/ledger/entries"): Call(Permission.READ_LEDGER, lambda c: {"url": "/ledger/entries"}),
    ("GET", "/ledger/entries/{seq}"): Call(Permission.READ_LEDGER, lambda c: {"url": "/ledger/entries/1"}),
    ("GET", "/ledger/entries/{seq}/proof"): Call(Permission.READ_LEDGER, lambda c: {"url": "/ledger/entries/1/proof"}),
    ("GET", "/ledger/checkpoints"): Call(Permission.READ_LEDGER, lambda c: {"url": "/ledger/checkpoints"}),
    ("GET", "/ledger/keys"): Call(Permission.READ_LEDGER, lambda c: {"url": "/ledger/keys"}),
    ("GET", "/ledger/verify"): Call(Permission.VERIFY_LEDGER, lambda c: {"url": "/ledger/verify"}),
    ("GET", "/ledger/export"): Call(Permission.EXPORT_LEDGER, lambda c: {"url": "/ledger/export"}),
    ("GET", "/policies"): Call(Permission.READ_POLICY, lambda c: {"url": "/policies"}),
    ("POST", "/policies/load"): Call(
        Permission.LOAD_POLICY, lambda c: {"url": "/policies/load", "json": {"document": _policy_document()}}
    ),
    ("GET", "/apikeys"): Call(Permission.MANAGE_KEYS, lambda c: {"url": "/apikeys"}),
    ("POST", "/apikeys"): Call(
        Permission.MANAGE_KEYS,
        lambda c: {"url": "/apikeys", "json": {"name": "made", "role": "agent", "actors": "*"}},
        ok=201,
    ),
    ("DELETE", "/apikeys/{key_id}"): Call(Permission.MANAGE_KEYS, lambda c: {"url": f"/apikeys/{c.victim_key_id()}"}),
    ("GET", "/health"): Call(PUBLIC, lambda c: {"url": "/health"}),
    ("GET", "/metrics"): Call(METRICS, lambda c: {"url": "/metrics"}),
    ("GET", "/.well-known/jwks.json"): Call(PUBLIC, lambda c: {"url": "/.well-known/jwks.json"}),
    ("GET", "/.well-known/lexecon.json"): Call(PUBLIC, lambda c: {"url": "/.well-known/lexecon.json"}),
    ("GET", "/.well-known/lexecon-key-rotations.json"): Call(
        PUBLIC, lambda c: {"url": "/.well-known/lexecon-key-rotations.json"}
    ),
    ("GET", "/openapi.json"): Call(PUBLIC, lambda c: {"url": "/openapi.json"}),
}

#: Credentials that must never authenticate, by name -> headers (built from the live keys).
BAD_CREDENTIALS: dict[str, Callable[[Ctx, str], dict[str, str]]] = {
    "no_key": lambda c, revoked: {},
    "not_bearer": lambda c, revoked: {"Authorization": "Basic dXNlcjpwYXNz"},
    "empty_bearer": lambda c, revoked: {"Authorization": "Bearer "},
    "malformed": lambda c, revoked: auth("not-an-api-key"),
    "malformed_prefix": lambda c, revoked: auth("lxk_" + c.keys[Role.ADMIN][4:-1]),
    "wrong_secret": lambda c, revoked: auth(_with_other_secret(c.keys[Role.ADMIN])),
    "unknown_key": lambda c, revoked: auth(f"lxk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"),
    "revoked": lambda c, revoked: auth(revoked),
}
CREDENTIALS = [*BAD_CREDENTIALS, *(r.value for r in Role)]


def _with_other_secret(key: str) -> str:
    """The same key id with a different (well-formed) secret."""
    prefix, secret = key[:21], key[21:]
    other = secrets.token_urlsafe(32)
    assert other != secret
    return prefix + other


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, HEAD aside, including routes of included routers."""
    try:  # FastAPI >= 0.13x keeps included routers as branches; this flattens them
        from fastapi.routing import iter_route_contexts

        contexts: Iterator[Any] = iter_route_contexts(app.routes)
    except ImportError:  # older FastAPI: app.routes is already flat
        contexts = iter(app.routes)
    found = set()
    for route in contexts:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        assert path is not None and methods, f"a route without a path or methods: {route!r}"
        found |= {(m, path) for m in methods if m != "HEAD"}
    return found


def expected_status(call: Call, credential: str, *, metrics_public: bool = True) -> int:
    permission = call.permission
    if permission == METRICS:
        permission = PUBLIC if metrics_public else Permission.READ_METRICS
    if permission == PUBLIC:
        return call.ok
    if credential in BAD_CREDENTIALS:
        return 401
    assert isinstance(permission, Permission)
    return call.ok if permission in PERMISSIONS[Role(credential)] else 403


# -- fixtures: one app per module (the matrix is ~200 requests) -------------------------------------------------------


@dataclass
class Server:
    ctx: Ctx
    client: TestClient
    revoked: str

    def headers(self, credential: str) -> dict[str, str]:
        if credential in BAD_CREDENTIALS:
            return BAD_CREDENTIALS[credential](self.ctx, self.revoked)
        return auth(self.ctx.keys[Role(credential)])

    def request(self, route: tuple[str, str], credential: str) -> Any:
        kwargs = ROUTES[route].build(self.ctx)
        return self.client.request(route[0], headers=self.headers(credential), **kwargs)


def _server(root: Path, **overrides: Any) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before the per-test env isolation
        import os

        for name in list(os.environ):
            if name.startswith("LEXECON_") and name != "LEXECON_TEST_DATABASE_URL":
                mp.delenv(name)
        node = init_node(root / "home", node_id="test-node")
        (root / "policy.yaml").write_text(TEST_POLICY)
        node.load_policy_file(root / "policy.yaml")
        node.close()
        settings = load_settings(
            root / "home", rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000, policy_sync_seconds=0,
            **overrides,
        )  # fmt: skip
    app = create_app(settings)
    store = app.state.lexecon.api_keys
    keys = {role: store.create(f"matrix-{role.value}", role, by="test")[1] for role in Role}
    record, revoked = store.create("revoked-admin", Role.ADMIN, by="test")
    store.authenticate(revoked)  # cached while valid: revocation must still win at once
    store.revoke(record.key_id, by="test")
    app.state.lexecon.governor.node.ledger.checkpoint()  # so /ledger/entries/1/proof exists
    with TestClient(app) as client:
        yield Server(Ctx(app, keys), client, revoked)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(tmp_path_factory.mktemp("matrix"))


@pytest.fixture(scope="module")
def private_metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(tmp_path_factory.mktemp("matrix-private"), metrics_public=False)


# -- tests ----------------------------------------------------------------------------------------------------------


def test_every_route_is_in_the_matrix(server: Server) -> None:
    served = app_routes(server.ctx.app)
    missing = served - set(ROUTES)
    gone = set(ROUTES) - served
    assert not missing, f"routes without a permission-matrix entry (add them to ROUTES): {sorted(missing)}"
    assert not gone, f"matrix entries for routes the app no longer serves: {sorted(gone)}"


def test_every_permission_a_route_needs_is_held_by_some_role() -> None:
    needed = {c.permission for c in ROUTES.values() if isinstance(c.permission, Permission)}
    held = set().union(*PERMISSIONS.values())
    assert needed <= held
    # Least privilege, as documented: only agents decide; only admins manage keys.
    assert [r for r in Role if Permission.DECIDE in PERMISSIONS[r]] == [Role.AGENT]
    assert [r for r in Role if Permission.MANAGE_KEYS in PERMISSIONS[r]] == [Role.ADMIN]


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("route", sorted(ROUTES), ids=lambda r: f"{r[0]} {r[1]}")
def test_matrix(server: Server, route: tuple[str, str], credential: str) -> None:
    response = server.request(route, credential)
    expected = expected_status(ROUTES[route], credential)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
        assert response.json()["error"] == "unauthorized"
    elif expected == 403:
        assert "www-authenticate" not in response.headers
        assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_private_metrics_matrix(private_metrics_server: Server, credential: str) -> None:
    response = private_metrics_server.request(("GET", "/metrics"), credential)
    expected = expected_status(ROUTES[("GET", "/metrics")], credential, metrics_public=False)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
    if expected == 200:
        assert "lexecon_ledger_entries" in response.text


def test_private_metrics_leaves_other_public_routes_public(private_metrics_server: Server) -> None:
    for route in [r for r, c in ROUTES.items() if c.permission == PUBLIC]:
        assert private_metrics_server.request(route, "no_key").status_code == 200, route


def test_openapi_declares_bearer_auth_exactly_on_authenticated_routes(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    for (method, path), call in ROUTES.items():
        if path == "/openapi.json":
            continue
        operation = spec["paths"][path][method.lower()]
        if path == "/metrics":  # anonymous or a bearer key, by configuration: both are declared
            assert operation.get("security") == [{}, {"HTTPBearer": []}]
            continue
        secured = bool(operation.get("security"))
        assert secured == isinstance(call.permission, Permission), (method, path)
        if secured:
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_private_metrics_are_documented_as_authenticated(private_metrics_server: Server) -> None:
    spec = private_metrics_server.client.get("/openapi.json").json()
    operation = spec["paths"]["/metrics"]["get"]
    assert operation.get("security")
    assert {"401", "403"} <= set(operation["responses"])


def test_revoked_key_worked_before_revocation(tmp_path: Path) -> None:
    """The `revoked` column of the matrix is meaningful: the same kind of key is accepted until it is revoked."""
    for server in _server(tmp_path):
        store = server.ctx.app.state.lexecon.api_keys
        record, key = store.create("soon-revoked", Role.ADMIN, by="test")
        assert server.client.get("/apikeys", headers=auth(key)).status_code == 200
        store.revoke(record.key_id, by="test")
        response = server.client.get("/apikeys", headers=auth(key))
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
