"""RemoteGovernor key pinning: a spoofed endpoint cannot approve a call with a key of its own, new keys are trusted only
through the node's signed key hand-over, node ids are checked, and plain http leaves loopback only when allowed.

The servers are the real app in-process (see tests/server/test_remote.py); the attacker's endpoint is a second node
with its own signing key, serving the same API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import GovernanceError, RemoteGovernor, TokenError, init_node, load_settings
from lexecon_core.auth import Role
from lexecon_core.cli import main as cli_main
from lexecon_core.keys import PublicKey, Signer, b64url, jwks_of
from lexecon_core.ledger import entry_hash, signing_message
from lexecon_core.ledger._entry import make_body, utc_timestamp
from lexecon_core.remote import INFO_PATH, JWKS_PATH, ROTATIONS_PATH
from lexecon_core.server import create_app
from lexecon_core.tokens import issue_token
from tests.server.test_remote import (
    ACTOR,
    BASE,
    SEARCH,
    AppTransport,
    RewriteToken,
    _b64,
    _issue_args,
    async_client,
    remote_for,
    server_jwks,
)

NODE = "test-node"
UNPINNED_WARNING = "capability tokens are checked against keys served by the same server"
DELETE_CUSTOMER = {"actor": ACTOR, "tool": "delete_customer", "tool_args": {"customer_id": 42}}

# The attacker's node approves what the real node's policy forbids.
ATTACKER_POLICY = """
name: attacker
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: anything, term_type: tool, value: "*"}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: anything}
"""


def node_signer(app: FastAPI) -> Signer:
    return app.state.lexecon.governor.node.keys.signer  # type: ignore[no-any-return]


def resign_with(signer: Signer) -> Callable[[str], str]:
    """Re-sign a capability token, claims unchanged, with ``signer``: what a holder of that key could mint."""

    def resign(token: str) -> str:
        return issue_token(signer, **_issue_args(json.loads(_b64(token.split(".")[1]))))

    return resign


def hand_over(
    signer: Signer,
    new: PublicKey,
    *,
    node: str = NODE,
    seq: int = 99,
    entry_type: str = "key_rotated",
    old_kid: str | None = None,
    new_kid: str | None = None,
) -> dict[str, Any]:
    """A hand-over entry as the endpoint serves it, made and signed here, so a test can get any part of it wrong."""
    data = {"old_kid": old_kid or signer.kid, "new_kid": new_kid or new.kid, "new_public_key": b64url(new.raw)}
    body = make_body(seq=seq, entry_type=entry_type, timestamp=utc_timestamp(), node_id=node, data=data)
    prev = bytes(range(32))
    digest = entry_hash(prev, body)
    return {
        "seq": seq,
        "prev_hash": prev.hex(),
        "entry_hash": digest.hex(),
        "kid": signer.kid,
        "signature": base64.b64encode(signer.sign(signing_message(digest))).decode(),
        "body": base64.b64encode(body).decode(),
    }


class Forger(RewriteToken):
    """Re-signs every approval's token with ``attacker``, and serves ``attacker``'s key in the JWKS and/or forged
    entries in the key hand-over document: a compromised or impersonated server."""

    def __init__(
        self,
        app_client: TestClient,
        attacker: Signer,
        *,
        jwks: bool = False,
        entries: list[dict[str, Any]] | None = None,
        rotations_node: str = NODE,
    ) -> None:
        super().__init__(app_client, resign_with(attacker))
        self.attacker, self.jwks, self.entries, self.rotations_node = attacker, jwks, entries, rotations_node

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == JWKS_PATH and self.jwks:
            self.requests.append(request)
            served = json.loads(self.forward(request).content)["keys"]
            return httpx.Response(200, json={"keys": [*served, self.attacker.public.to_jwk()]}, request=request)
        if request.url.path == ROTATIONS_PATH and self.entries is not None:
            self.requests.append(request)
            document = {"node_id": self.rotations_node, "entries": self.entries}
            return httpx.Response(200, json=document, request=request)
        return super().handle_request(request)


@dataclass
class Spoof:
    app: FastAPI
    client: TestClient
    key: str


@pytest.fixture
def spoof(tmp_path: Path) -> Iterator[Spoof]:
    """A second node claiming the same node id, with its own signing key and a policy that approves everything."""
    node = init_node(tmp_path / "attacker", node_id=NODE)
    (tmp_path / "attacker.yaml").write_text(ATTACKER_POLICY)
    node.load_policy_file(tmp_path / "attacker.yaml")
    node.close()
    app = create_app(load_settings(tmp_path / "attacker", rate_limit_per_second=10_000, rate_limit_burst=10_000))
    # A real spoof accepts any API key; here the governor is simply given one the attacker's node knows.
    key = app.state.lexecon.api_keys.create("victim", Role.AGENT, by="attacker")[1]
    with TestClient(app) as client:
        yield Spoof(app, client, key)


def approvals(app: FastAPI) -> list[str]:
    entries = app.state.lexecon.governor.node.ledger.entries(entry_type="decision")
    return [e.data["request"]["tool"] for e in entries if e.data["outcome"] == "approved"]


def warnings_about_pinning(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lexecon.remote" and UNPINNED_WARNING in r.getMessage()]


# -- a spoofed endpoint -------------------------------------------------------------------------------------------


def test_a_spoofed_endpoint_cannot_get_a_governed_tool_run(
    app: FastAPI, spoof: Spoof, caplog: pytest.LogCaptureFixture
) -> None:
    langchain_tools = pytest.importorskip("langchain_core.tools")
    from lexecon_integrations.langchain import govern_tool

    ran: list[int] = []

    @langchain_tools.tool
    def delete_customer(customer_id: int) -> str:
        """Delete a customer and everything about them."""
        ran.append(customer_id)
        return "deleted"

    caplog.set_level(logging.WARNING, logger="lexecon.remote")
    transport = AppTransport(spoof.client)
    pinned = remote_for(spoof.key, transport, jwks=server_jwks(app), node_id=NODE)
    governed = govern_tool(delete_customer, pinned, actor=ACTOR, on_deny="raise")
    with pytest.raises(GovernanceError) as refused:
        governed.invoke({"customer_id": 42})
    assert ran == []
    message = str(refused.value)
    assert message.startswith(f"Lexecon server at {BASE} returned an approval whose capability token failed")
    assert "unknown_kid" in message and "not pinned and no verified key hand-over introduces it" in message
    assert spoof.key not in message and "lxk_" not in message
    assert approvals(spoof.app) == ["delete_customer"]  # the spoof said yes; only the pin stopped the call
    assert transport.count(JWKS_PATH) == 0  # what the spoof serves as its keys is never even asked for
    assert transport.count(ROTATIONS_PATH) == 1  # its hand-overs are: none is signed by a pinned key
    assert warnings_about_pinning(caplog) == []


def test_without_pinning_the_same_spoof_gets_the_tool_run(
    app: FastAPI, spoof: Spoof, caplog: pytest.LogCaptureFixture
) -> None:
    """Why pinning is the production default: unpinned, the spoof's JWKS vouches for the spoof's tokens."""
    langchain_tools = pytest.importorskip("langchain_core.tools")
    from lexecon_integrations.langchain import govern_tool

    ran: list[int] = []

    @langchain_tools.tool
    def delete_customer(customer_id: int) -> str:
        """Delete a customer and everything about them."""
        ran.append(customer_id)
        return "deleted"

    caplog.set_level(logging.WARNING, logger="lexecon.remote")
    unpinned = remote_for(spoof.key, AppTransport(spoof.client))
    governed = govern_tool(delete_customer, unpinned, actor=ACTOR, on_deny="raise")
    assert governed.invoke({"customer_id": 42}) == "deleted"
    governed.invoke({"customer_id": 43})
    assert ran == [42, 43]
    (warning,) = warnings_about_pinning(caplog)  # one per governor, however many calls
    assert warning.levelno == logging.WARNING
    assert "jwks=" in warning.getMessage() and BASE in warning.getMessage()
    remote_for(spoof.key, AppTransport(spoof.client))
    assert len(warnings_about_pinning(caplog)) == 2


def test_a_spoof_claiming_another_node_id_is_refused(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    for options in ({"node_id": "prod-1"}, {"node_id": "prod-1", "jwks": server_jwks(app)}):
        transport = AppTransport(client)
        with pytest.raises(GovernanceError) as refused:
            remote_for(keys[Role.AGENT], transport, **options).decide(SEARCH)
        assert str(refused.value) == (
            f"Lexecon server at {BASE} says it is node 'test-node', not the expected node 'prod-1'; "
            "the tool call is refused"
        )
        assert transport.count(INFO_PATH) == 1
    # the right node id passes, pinned or not
    for options in ({"node_id": NODE}, {"node_id": NODE, "jwks": server_jwks(app)}):
        assert remote_for(keys[Role.AGENT], AppTransport(client), **options).decide(SEARCH).approved


# -- key rotation: the signed hand-over -----------------------------------------------------------------------------


def test_a_pinned_client_follows_a_rotation_through_the_signed_hand_over(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    transport = AppTransport(client)
    pinned = remote_for(keys[Role.AGENT], transport, jwks=server_jwks(app), node_id=NODE)
    first = pinned.decide(SEARCH)
    old_kid = pinned.verify_token(first.capability_token or "", tool="search", args={"q": "refund policy"}).kid
    assert transport.count(ROTATIONS_PATH) == 0  # a pinned kid needs no hand-over
    governor = app.state.lexecon.governor
    middle_kid = governor.rotate_keys()
    new_kid = governor.rotate_keys()  # k1 -> k2 -> k3: followed link by link, oldest first
    second = pinned.decide(SEARCH)
    claims = pinned.verify_token(second.capability_token or "", tool="search", args={"q": "refund policy"})
    assert claims.kid == new_kid and len({old_kid, middle_kid, new_kid}) == 3
    assert transport.count(ROTATIONS_PATH) == 1
    assert transport.count(JWKS_PATH) == 0  # the server's JWKS played no part
    # the keys stay trusted: the next approval needs no request for keys
    pinned.decide(SEARCH)
    assert transport.count(ROTATIONS_PATH) == 1 and transport.count(INFO_PATH) == 2


def test_a_pinned_async_client_follows_a_rotation(app: FastAPI, keys: dict[Role, str]) -> None:
    pinned_keys = server_jwks(app)
    app.state.lexecon.governor.rotate_keys()

    async def main() -> str:
        async with (
            async_client(app) as http,
            RemoteGovernor(BASE, api_key=keys[Role.AGENT], async_client=http, jwks=pinned_keys, node_id=NODE) as gov,
        ):
            decision = await gov.adecide(SEARCH)
            return gov.verify_token(decision.capability_token or "", tool="search", args={"q": "refund policy"}).kid

    assert asyncio.run(main()) == app.state.lexecon.governor.node.keys.active_kid


def test_a_key_the_server_merely_serves_is_never_trusted(
    client: TestClient, app: FastAPI, keys: dict[Role, str]
) -> None:
    """The attacker added a key to the server's JWKS and signs tokens with it; there is no hand-over for it."""
    attacker = Signer.generate()
    forger = Forger(client, attacker, jwks=True)
    pinned = remote_for(keys[Role.AGENT], forger, jwks=server_jwks(app), node_id=NODE)
    with pytest.raises(GovernanceError, match=r"failed verification \(unknown_kid: .*not pinned"):
        pinned.decide(SEARCH)
    assert forger.count(JWKS_PATH) == 0 and forger.count(ROTATIONS_PATH) == 1
    # A client that trusts the served JWKS takes the forged token.
    assert remote_for(keys[Role.AGENT], Forger(client, attacker, jwks=True)).decide(SEARCH).approved


def test_a_flood_of_unknown_kids_costs_one_hand_over_fetch(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    transport = AppTransport(client)
    pinned = remote_for(keys[Role.AGENT], transport, jwks=server_jwks(app), node_id=NODE)
    token = pinned.decide(SEARCH).capability_token or ""
    forged = resign_with(Signer.generate())
    for _ in range(20):
        with pytest.raises(TokenError) as unknown:
            pinned.verify_token(forged(token), tool="search", args={"q": "refund policy"})
        assert unknown.value.reason == "unknown_kid"
    assert transport.count(ROTATIONS_PATH) == 1 and transport.count(JWKS_PATH) == 0


# name -> (make the entry from the node's signer and the attacker's, why it is refused in the log or None if silently)
FORGERIES: dict[str, tuple[Callable[[Signer, Signer], dict[str, Any]], str | None]] = {
    # signed by the attacker's own key, which nothing pinned vouches for: skipped without a word
    "self_signed": (lambda node, attacker: hand_over(attacker, attacker.public), None),
    # claims to be signed by the pinned key; the signature is the attacker's
    "bad_signature": (
        lambda node, attacker: {**hand_over(attacker, attacker.public, old_kid=node.kid), "kid": node.kid},
        "its signature does not verify",
    ),
    # a genuine signature by the node's key, but over an entry of another node (a key shared between nodes)
    "another_node": (
        lambda node, attacker: hand_over(node, attacker.public, node="other-node"),
        "it is an entry of node 'other-node', not of 'test-node'",
    ),
    # a genuine signature, then the body swapped for one that hands over to the attacker
    "swapped_body": (
        lambda node, attacker: {
            **hand_over(node, Signer.generate().public),
            "body": hand_over(node, attacker.public)["body"],
        },
        "its entry hash does not match its body",
    ),
    # ...and with the entry hash recomputed to match the swapped body
    "swapped_body_rehashed": (
        lambda node, attacker: _rehashed(hand_over(node, Signer.generate().public), hand_over(node, attacker.public)),
        "its signature does not verify",
    ),
    # a genuine signature over an entry that is not a key hand-over
    "wrong_type": (
        lambda node, attacker: hand_over(node, attacker.public, entry_type="policy_loaded"),
        "it is a 'policy_loaded' entry, not key_rotated",
    ),
    # a genuine signature, but the body names another old key than the one that signed
    "wrong_old_kid": (
        lambda node, attacker: hand_over(node, attacker.public, old_kid=Signer.generate().kid),
        "its sequence number or old key does not match the entry",
    ),
    # a genuine signature, but new_kid is not the kid of new_public_key
    "kid_mismatch": (
        lambda node, attacker: hand_over(node, attacker.public, new_kid=Signer.generate().kid),
        "is not the kid of new_public_key",
    ),
    # the body's sequence number is not the entry's
    "wrong_seq": (
        lambda node, attacker: {**hand_over(node, attacker.public, seq=5), "seq": 99},
        "its sequence number or old key does not match the entry",
    ),
}


def _rehashed(original: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    body = base64.b64decode(other["body"])
    digest = entry_hash(bytes.fromhex(original["prev_hash"]), body)
    return {**original, "body": other["body"], "entry_hash": digest.hex()}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_hand_over_is_refused(
    app: FastAPI, client: TestClient, keys: dict[Role, str], forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    attacker = Signer.generate()
    make, why = FORGERIES[forgery]
    entry = make(node_signer(app), attacker)
    forger = Forger(client, attacker, jwks=True, entries=[entry])
    pinned = remote_for(keys[Role.AGENT], forger, jwks=server_jwks(app), node_id=NODE)
    with pytest.raises(GovernanceError, match=r"failed verification \(unknown_kid"):
        pinned.decide(SEARCH)
    assert forger.count(ROTATIONS_PATH) == 1
    refusals = [r.getMessage() for r in caplog.records if "key hand-over was not accepted" in r.getMessage()]
    if why is None:  # signed by a key nobody trusts: it can vouch for nothing, and old entries look like that too
        assert refusals == []
    else:  # claims a trusted key: refused for this reason, and logged for the operator
        assert len(refusals) == 1 and why in refusals[0] and refusals[0].startswith(f"Lexecon server at {BASE}: ")


def test_the_same_hand_over_signed_properly_is_accepted(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    """The control for the forgeries: only the node's own key can introduce a key, and then it works."""
    attacker = Signer.generate()
    forger = Forger(client, attacker, entries=[hand_over(node_signer(app), attacker.public)])
    pinned = remote_for(keys[Role.AGENT], forger, jwks=server_jwks(app), node_id=NODE)
    assert pinned.decide(SEARCH).approved


def test_hand_overs_of_another_node_or_a_broken_document_fail_closed(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    attacker = Signer.generate()
    genuine = hand_over(node_signer(app), attacker.public)
    other = Forger(client, attacker, entries=[genuine], rotations_node="other-node")
    with pytest.raises(GovernanceError, match="served the key hand-overs of node 'other-node', not of 'test-node'"):
        remote_for(keys[Role.AGENT], other, jwks=server_jwks(app)).decide(SEARCH)

    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path == ROTATIONS_PATH:
            return httpx.Response(200, json={"node_id": NODE, "entries": "none"})
        return Forger(client, attacker).handle_request(request)

    governor = RemoteGovernor(
        BASE,
        api_key=keys[Role.AGENT],
        jwks=server_jwks(app),
        client=httpx.Client(transport=httpx.MockTransport(broken)),
    )
    with pytest.raises(GovernanceError, match="served an invalid key hand-over document"):
        governor.decide(SEARCH)


# -- the hand-over endpoint -----------------------------------------------------------------------------------------


def test_the_hand_over_document_is_the_ledgers_key_rotated_entries(app: FastAPI, client: TestClient) -> None:
    assert client.get(ROTATIONS_PATH).json() == {"node_id": NODE, "entries": []}
    governor = app.state.lexecon.governor
    first_kid = governor.node.keys.active_kid
    second_kid = governor.rotate_keys()
    governor.rotate_keys()
    response = client.get(ROTATIONS_PATH)  # no API key
    assert response.status_code == 200
    document = response.json()
    stored = governor.node.ledger.entries(entry_type="key_rotated")
    assert [e["seq"] for e in document["entries"]] == [e.seq for e in stored] and len(stored) == 2
    for served, entry in zip(document["entries"], stored, strict=True):
        assert served == {
            "seq": entry.seq,
            "prev_hash": entry.prev_hash.hex(),
            "entry_hash": entry.entry_hash.hex(),
            "kid": entry.kid,
            "signature": base64.b64encode(entry.signature).decode(),
            "body": base64.b64encode(entry.body).decode(),
        }
        assert base64.b64decode(served["body"]) == entry.body  # the exact bytes that were hashed and signed
        assert entry_hash(bytes.fromhex(served["prev_hash"]), entry.body).hex() == served["entry_hash"]
    assert [e.kid for e in stored] == [first_kid, second_kid]


def test_the_hand_over_document_is_rate_limited_per_address(home: Path) -> None:
    app = create_app(load_settings(home, rate_limit_per_second=1, rate_limit_burst=2))
    with TestClient(app) as client:
        assert [client.get(ROTATIONS_PATH).status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/health").status_code == 429  # the same address, the same budget


def test_the_hand_over_document_is_in_the_openapi_document(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][ROTATIONS_PATH]["get"]
    assert not operation.get("security")  # public, like the JWKS
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/KeyRotations"
    }
    assert {"429", "503"} <= set(operation["responses"])
    entry = spec["components"]["schemas"]["KeyRotationEntry"]
    assert set(entry["required"]) == {"seq", "prev_hash", "entry_hash", "kid", "signature", "body"}


# -- configuration --------------------------------------------------------------------------------------------------


def test_jwks_from_a_file_exported_by_the_cli(
    home: Path, client: TestClient, keys: dict[Role, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:  # lexecon keys export > node.jwks.json
        cli_main(["keys", "export", "--home", str(home)])
    assert exited.value.code in (0, None)
    path = tmp_path / "node.jwks.json"
    path.write_text(capsys.readouterr().out)
    for given in (path, str(path)):
        transport = AppTransport(client)
        pinned = remote_for(keys[Role.AGENT], transport, jwks=given, node_id=NODE)
        assert pinned.decide(SEARCH).approved
        assert transport.count(JWKS_PATH) == 0


def test_bad_pinned_keys_are_refused_at_construction(tmp_path: Path) -> None:
    key = Signer.generate().public
    swapped = {"keys": [{**key.to_jwk(), "kid": Signer.generate().kid}]}
    cases: list[tuple[Any, str]] = [
        (tmp_path / "missing.json", "cannot read jwks file"),
        (swapped, "not a valid JWKS: JWKS key .* does not match its public key"),
        ({"keys": []}, "holds no Ed25519 key to pin"),
        ({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}, "holds no Ed25519 key to pin"),
        ({"not": "a jwks"}, "must be a JWKS"),
        (json.dumps(jwks_of([key])), "not JSON text"),
        (42, "must be a JWKS"),
    ]
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    cases.append((tmp_path / "swapped.json", "not a valid JWKS"))
    for jwks, message in cases:
        with pytest.raises(ValueError, match=message):
            RemoteGovernor(BASE, api_key="k", jwks=jwks)
    with pytest.raises(ValueError, match="node_id"):
        RemoteGovernor(BASE, api_key="k", node_id="")


@pytest.mark.parametrize(
    "url", ["http://lexecon.internal", "http://10.0.0.5:8000", "http://localhost.evil.example", "http://[fe80::1]"]
)
def test_plain_http_to_a_host_that_is_not_loopback_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"base_url .* is plain http to a host that is not loopback.*allow_insecure"):
        RemoteGovernor(url, api_key="k")
    assert RemoteGovernor(url, api_key="k", allow_insecure_http=True).base_url == url


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000", "http://LOCALHOST", "http://127.0.0.1", "http://127.8.9.10:1", "http://[::1]:8000",
     "https://lexecon.internal"],
)  # fmt: skip
def test_loopback_http_and_https_are_allowed(url: str) -> None:
    RemoteGovernor(url, api_key="k")


def test_insecure_http_still_works_when_allowed(app: FastAPI, client: TestClient, keys: dict[Role, str]) -> None:
    http = httpx.Client(transport=AppTransport(client))
    governor = RemoteGovernor(
        "http://testserver", api_key=keys[Role.AGENT], client=http, allow_insecure_http=True, jwks=server_jwks(app)
    )
    assert governor.decide(SEARCH).approved
    assert not governor.decide(DELETE_CUSTOMER).approved
