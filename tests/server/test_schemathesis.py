"""Schemathesis over the server's own OpenAPI document: no 5xx, and every response conforms to the schema.

The schema is loaded from the app under test (``GET /openapi.json`` on a node of this module's own), so a new route is
fuzzed without touching this file; each operation is a test of its own. Every operation runs with an admin key
(``/ledger/export`` only briefly: each call writes a bundle); ``/decide`` and ``/decide/verify`` run again with an agent
key, the only role that may decide. Generation is derandomised and bounded (``max_examples=25`` per operation, plus
schemathesis' example and coverage phases).

Bugs it found earlier (an undocumented 400 for bodies that are not UTF-8, a 500 for timestamps at the edge of the
datetime range) are fixed and reproduced by their own tests; nothing is stepped around here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lexecon_core import init_node, load_settings  # noqa: E402
from lexecon_core.auth import Role  # noqa: E402
from lexecon_core.server import create_app  # noqa: E402
from tests.conftest import TEST_POLICY  # noqa: E402
from tests.server.conftest import auth  # noqa: E402

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def _fuzz(max_examples: int) -> Any:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _fuzz_app() -> FastAPI:
    """A node of its own with TEST_POLICY; limits out of the way, a short checkpoint interval so inclusion proofs
    exist while fuzzing, no policy follower."""
    with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("LEXECON_")}, clear=True):
        node = init_node(FUZZ_HOME / "home", node_id="fuzz-node")
        (FUZZ_HOME / "policy.yaml").write_text(TEST_POLICY)
        node.load_policy_file(FUZZ_HOME / "policy.yaml")
        node.close()
        return create_app(
            load_settings(
                FUZZ_HOME / "home",
                rate_limit_per_second=1_000_000,
                rate_limit_burst=1_000_000,
                policy_sync_seconds=0,
                checkpoint_interval=4,
            )
        )


# The schema is built when the module is imported, not from a fixture: schemathesis' fixture-based loader
# (``schemathesis.pytest.from_fixture``) sets ``Function._nodeid``, which pytest 9.2 removed, so it fails on every
# test with the newest releases of both (schemathesis 4.32.5). A module-level schema has no such dependency.
FUZZ_HOME = Path(tempfile.mkdtemp(prefix="lexecon-fuzz-"))
atexit.register(shutil.rmtree, FUZZ_HOME, ignore_errors=True)
fuzz_app = _fuzz_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_app_lifespan() -> Iterator[None]:
    # Runs the app's start-up and shut-down once around this module's tests, which closes the node.
    with TestClient(fuzz_app):
        yield


@pytest.fixture(scope="module")
def fuzz_keys() -> dict[Role, str]:
    store = fuzz_app.state.lexecon.api_keys
    return {role: store.create(f"fuzz-{role.value}", role, by="test")[1] for role in Role}


def call_and_validate(case: Any, key: str) -> None:
    case.validate_response(case.call(headers=auth(key)), checks=CHECKS)


@schema.exclude(path="/ledger/export").parametrize()
@_fuzz(25)
def test_every_operation_as_admin(case: Any, fuzz_keys: dict[Role, str]) -> None:
    call_and_validate(case, fuzz_keys[Role.ADMIN])


@schema.include(path_regex="^/decide").parametrize()
@_fuzz(25)
def test_decide_as_agent(case: Any, fuzz_keys: dict[Role, str]) -> None:
    call_and_validate(case, fuzz_keys[Role.AGENT])


@schema.include(path="/ledger/export").parametrize()
@_fuzz(2)
def test_export_as_admin(case: Any, fuzz_keys: dict[Role, str]) -> None:
    call_and_validate(case, fuzz_keys[Role.ADMIN])
