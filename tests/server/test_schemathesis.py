"""Schemathesis over the server's own OpenAPI document: no 5xx, and every response conforms to the schema.

The schema is loaded from the app under test (``GET /openapi.json``), so a new route is fuzzed without touching this
file. Every operation runs with an admin key (``/ledger/export`` only briefly: each call writes a bundle); ``/decide``
and ``/decide/verify`` run again with an agent key, the only role that may decide. Generation is derandomised and
bounded (``max_examples=25`` per operation, plus schemathesis' example and coverage phases).

Bugs it found earlier (an undocumented 400 for bodies that are not UTF-8, a 500 for timestamps at the edge of the
datetime range) are fixed and reproduced by their own tests; nothing is stepped around here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi import FastAPI  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lexecon_core import load_settings  # noqa: E402
from lexecon_core.auth import Role  # noqa: E402
from lexecon_core.server import create_app  # noqa: E402
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


@pytest.fixture
def fuzz_app(home: Path) -> FastAPI:
    # Limits out of the way; a short checkpoint interval so inclusion proofs exist while fuzzing; no policy follower.
    return create_app(
        load_settings(
            home,
            rate_limit_per_second=1_000_000,
            rate_limit_burst=1_000_000,
            policy_sync_seconds=0,
            checkpoint_interval=4,
        )
    )


@pytest.fixture
def fuzz_keys(fuzz_app: FastAPI) -> dict[Role, str]:
    store = fuzz_app.state.lexecon.api_keys
    return {role: store.create(f"fuzz-{role.value}", role, by="test")[1] for role in Role}


@pytest.fixture
def api_schema(fuzz_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def call_and_validate(case: Any, key: str) -> None:
    case.validate_response(case.call(headers=auth(key)), checks=CHECKS)


schema = schemathesis.pytest.from_fixture("api_schema")


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
