"""Shared fixtures: a fresh node home per test, and a governor over a small known policy."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from lexecon_core import LocalGovernor, init_node

TEST_POLICY = """
name: test-policy
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: search, term_type: tool, value: search}
  - {term_id: refund, term_type: tool, value: refund}
  - {term_id: deletes, term_type: tool, value: "delete_*"}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: search}
  - {relation_type: permits, source_term_id: agents, target_term_id: refund}
  - {relation_type: forbids, source_term_id: agents, target_term_id: deletes}
"""


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a developer's LEXECON_* settings."""
    import os

    for name in list(os.environ):
        if name.startswith("LEXECON_") and name != "LEXECON_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An initialised node home (node id ``test-node``) with TEST_POLICY loaded."""
    root = tmp_path / "home"
    node = init_node(root, node_id="test-node")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(TEST_POLICY)
    node.load_policy_file(policy_file)
    node.close()
    return root


@pytest.fixture
def governor(home: Path) -> Iterator[LocalGovernor]:
    gov = LocalGovernor(home)
    yield gov
    gov.close()


# -- PostgreSQL ---------------------------------------------------------------------------------------------------

BASE_URL = os.environ.get("LEXECON_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    import psycopg  # the `postgres` extra, part of `dev`

    try:
        admin = psycopg.connect(_conninfo(BASE_URL), autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true and is not reachable at {BASE_URL}: {exc}")
        pytest.skip(f"no PostgreSQL at {BASE_URL}")
    schema = f"lexecon_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(BASE_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


# -- Redis ---------------------------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("LEXECON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_url() -> str:
    """The test Redis URL, once Redis answers a PING. Tests share the database, so each must use its own key prefix."""
    import redis  # the `server` extra, part of `dev`

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required under CI=true and is not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    finally:
        client.close()
    return REDIS_URL
