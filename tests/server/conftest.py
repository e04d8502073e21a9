"""Server fixtures: an app over the ``home`` fixture's node, with one API key per role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import load_settings
from lexecon_core.auth import Role
from lexecon_core.ledger import Ledger
from lexecon_core.server import create_app


@pytest.fixture
def app(home: Path) -> FastAPI:
    """A server app for the test node; rate limits high enough not to interfere unless a test lowers them."""
    settings = load_settings(home, rate_limit_per_second=10_000, rate_limit_burst=10_000)
    return create_app(settings)


@pytest.fixture
def keys(app: FastAPI) -> dict[Role, str]:
    """One API key per role, e.g. ``keys[Role.AGENT]``."""
    store = app.state.lexecon.api_keys
    return {role: store.create(f"test-{role.value}", role, by="test")[1] for role in Role}


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client that runs the app's lifespan (startup and shutdown)."""
    with TestClient(app) as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ledger_of(app: FastAPI) -> Ledger:
    return app.state.lexecon.governor.node.ledger  # type: ignore[no-any-return]


def decide(client: TestClient, key: str, body: dict[str, Any], **headers: str) -> Any:
    """POST /decide, asserting it succeeded; the decision as JSON."""
    response = client.post("/decide", json=body, headers={**auth(key), **headers})
    assert response.status_code == 200, response.text
    return response.json()
