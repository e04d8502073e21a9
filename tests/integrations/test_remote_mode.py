"""Remote mode: every adapter works unchanged with a RemoteGovernor talking to the real server app in-process, and
fails closed - the tool body never runs - when the server cannot be reached."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from lexecon_core import GovernanceError, RemoteGovernor, ReplayCache, load_settings
from lexecon_core.auth import Role
from lexecon_core.server import create_app

ACTOR = "ai_agent:test_bot"
BASE = "https://testserver"  # plain http is refused for hosts that are not loopback


class AppTransport(httpx.BaseTransport):
    """Sends an ``httpx.Client``'s requests to the in-process app. Starlette's ``TestClient`` is built on ``httpx2``
    here, so it is not an ``httpx.Client`` itself (see tests/server/test_remote.py)."""

    def __init__(self, app_client: TestClient) -> None:
        self.app_client = app_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in ("host", "content-length")]
        answer = self.app_client.request(request.method, str(request.url), content=request.read(), headers=headers)
        kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() != "content-length"]
        return httpx.Response(answer.status_code, headers=kept, content=answer.content, request=request)


@pytest.fixture
def app(home: Any) -> FastAPI:
    return create_app(load_settings(home, rate_limit_per_second=10_000, rate_limit_burst=10_000))


@pytest.fixture
def remote(app: FastAPI) -> Iterator[RemoteGovernor]:
    """Sync calls go through the app's TestClient, async ones through ASGITransport: both reach the same node."""
    key = app.state.lexecon.api_keys.create("remote-mode", Role.AGENT, by="test")[1]
    async_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    with TestClient(app) as app_client, httpx.Client(transport=AppTransport(app_client)) as client:
        yield RemoteGovernor(BASE, api_key=key, replay_cache=ReplayCache(), client=client, async_client=async_client)
    asyncio.run(async_client.aclose())


@pytest.fixture
def unreachable() -> Iterator[RemoteGovernor]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with RemoteGovernor(f"http://127.0.0.1:{port}", api_key="k-unused", timeout=1.0, backoff=0.001) as governor:
        yield governor


def outcomes(app: FastAPI) -> list[tuple[str, str]]:
    entries = app.state.lexecon.governor.node.ledger.entries(entry_type="decision")
    return [(e.data["request"]["tool"], e.data["outcome"]) for e in entries]


def decision_ids(app: FastAPI) -> set[str]:
    return {e.data["decision_id"] for e in app.state.lexecon.governor.node.ledger.entries(entry_type="decision")}


def refusal(governor: RemoteGovernor) -> str:
    return f"Lexecon server at {governor.base_url} is unreachable (ConnectError) after 3 attempts"


# -- LangChain ----------------------------------------------------------------------------------------------------


@pytest.fixture
def lc() -> ModuleType:
    pytest.importorskip("langchain")
    from . import test_langchain

    return test_langchain


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_govern_tool(app: FastAPI, remote: RemoteGovernor, lc: ModuleType, mode: str) -> None:
    from lexecon_integrations.langchain import govern_tools

    rec = lc.Recorder(remote)
    search, delete_user = govern_tools([rec.search, rec.delete_user], remote, actor=ACTOR)

    def invoke(tool: Any, args: dict[str, Any]) -> Any:
        return tool.invoke(args) if mode == "sync" else asyncio.run(tool.ainvoke(args))

    assert invoke(search, {"q": "y"}) == "results for y"
    denial = invoke(delete_user, {"user_id": 1})
    assert "Lexecon denied tool 'delete_user'" in denial and "forbids:agents->deletes" in denial
    assert rec.ran("search") == 1 and rec.ran("delete_user") == 0
    capability = rec.capabilities[0]
    assert capability.tool == "search" and capability.decision_id in decision_ids(app)
    assert outcomes(app) == [("search", "approved"), ("delete_user", "denied")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_middleware_agent_run(app: FastAPI, remote: RemoteGovernor, lc: ModuleType, mode: str) -> None:
    from langchain.agents import create_agent
    from langchain_core.messages import ToolMessage

    from lexecon_integrations.langchain import LexeconMiddleware

    rec = lc.Recorder(remote)
    model = lc.scripted(lc.PARALLEL_TURN, "done")
    agent = create_agent(model, tools=rec.tools, middleware=[LexeconMiddleware(remote, actor=ACTOR)])
    question = {"messages": [{"role": "user", "content": "go"}]}
    result = agent.invoke(question) if mode == "sync" else asyncio.run(agent.ainvoke(question))
    statuses = {m.tool_call_id: m.status for m in result["messages"] if isinstance(m, ToolMessage)}
    assert statuses == {"c1": "success", "c2": "success", "c3": "error"}
    assert rec.ran("search") == 1 and rec.ran("refund") == 1 and rec.ran("delete_user") == 0
    assert sorted(outcomes(app)) == [("delete_user", "denied"), ("refund", "approved"), ("search", "approved")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_fails_closed_when_the_server_is_unreachable(
    unreachable: RemoteGovernor, lc: ModuleType, mode: str
) -> None:
    from lexecon_integrations.langchain import govern_tool

    rec = lc.Recorder(unreachable)
    search = govern_tool(rec.search, unreachable, actor=ACTOR)
    denial = search.invoke({"q": "x"}) if mode == "sync" else asyncio.run(search.ainvoke({"q": "x"}))
    assert "Lexecon could not decide on tool 'search', so it was not run" in denial
    assert refusal(unreachable) in denial
    assert rec.calls == []
    raising = govern_tool(rec.search, unreachable, actor=ACTOR, on_deny="raise")
    with pytest.raises(GovernanceError, match="is unreachable"):
        raising.invoke({"q": "x"})
    assert rec.calls == []


# -- LlamaIndex ---------------------------------------------------------------------------------------------------


@pytest.fixture
def li() -> ModuleType:
    pytest.importorskip("llama_index.core")
    from . import test_llama_index

    return test_llama_index


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_governed_tool(app: FastAPI, remote: RemoteGovernor, li: ModuleType, mode: str) -> None:
    from lexecon_integrations.llama_index import GovernedTool

    rec = li.Recorder()
    search = GovernedTool(rec.search, remote, actor=ACTOR)
    refund = GovernedTool(rec.refund, remote, actor=ACTOR)  # an async body
    delete_user = GovernedTool(rec.delete_user, remote, actor=ACTOR)
    assert li.run_tool(search, mode, q="refunds").content == "results for refunds"
    assert li.run_tool(refund, mode, order_id=5, amount_cents=250).content == "refunded 250 on order 5"
    denied = li.run_tool(delete_user, mode, user_id=7)
    li.assert_denied(denied, "delete_user")
    assert "forbids:agents->deletes" in denied.content
    assert rec.calls == [("search", {"q": "refunds"}), ("refund", {"order_id": 5, "amount_cents": 250})]
    assert all(c is not None and c.decision_id in decision_ids(app) for c in rec.capabilities)
    assert outcomes(app) == [("search", "approved"), ("refund", "approved"), ("delete_user", "denied")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_fails_closed_when_the_server_is_unreachable(
    unreachable: RemoteGovernor, li: ModuleType, mode: str
) -> None:
    from lexecon_integrations.llama_index import GovernedTool

    rec = li.Recorder()
    output = li.run_tool(GovernedTool(rec.search, unreachable, actor=ACTOR), mode, q="x")
    li.assert_denied(output, "search")
    assert "could not decide on tool 'search', so it was not run" in output.content
    assert refusal(unreachable) in output.content
    assert isinstance(output.exception, GovernanceError)
    assert rec.calls == []


# -- OpenAI Agents SDK --------------------------------------------------------------------------------------------


@pytest.fixture
def oa() -> ModuleType:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    from . import test_openai_agents

    return test_openai_agents


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_openai_agents_govern_tools_guardrail(app: FastAPI, remote: RemoteGovernor, oa: ModuleType, mode: str) -> None:
    from agents import Agent

    from lexecon_integrations.openai_agents import govern_tools

    rec = oa.Recorder()
    model = oa.ScriptedModel(oa.PARALLEL_TURN, "done")
    agent = Agent(name="bot", model=model, tools=govern_tools(rec.tools, remote, actor=ACTOR))
    result = oa.run(agent, mode)
    assert result.final_output == "done"
    seen = model.tool_outputs_seen()
    assert seen["c1"] == "results for refund policy" and seen["c2"] == "refunded 250"
    assert "Lexecon denied tool 'delete_user'" in seen["c3"] and oa.FORBIDS in seen["c3"]
    assert rec.ran("search") == 1 and rec.ran("refund") == 1 and rec.ran("delete_user") == 0
    # the body binding held: each body ran with the capability the server granted for it
    assert all(
        cap is not None and cap.tool == name and cap.decision_id in decision_ids(app) for name, _, cap in rec.calls
    )
    assert sorted(outcomes(app)) == [("delete_user", "denied"), ("refund", "approved"), ("search", "approved")]
    infos = {info["tool"]: info for info in oa.output_infos(result)}
    assert infos["delete_user"]["outcome"] == "denied"


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_openai_agents_fail_closed_when_the_server_is_unreachable(
    unreachable: RemoteGovernor, oa: ModuleType, mode: str
) -> None:
    from agents import Agent

    from lexecon_integrations.openai_agents import govern_agent

    rec = oa.Recorder()
    model = oa.ScriptedModel([oa.call("search", {"q": "x"}, "c1")], "ok")
    result = oa.run(govern_agent(Agent(name="bot", model=model, tools=rec.tools), unreachable, actor=ACTOR), mode)
    message = model.tool_outputs_seen()["c1"]
    assert "Lexecon could not decide on tool 'search', so it was not run" in message
    assert refusal(unreachable) in message
    assert rec.ran("search") == 0
    assert oa.output_infos(result)[0]["outcome"] == "error"
