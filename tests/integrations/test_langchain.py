"""LangChain adapters: callback handler, agent middleware, tool wrapper - sync and async, against a real ledger."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain")

from langchain.agents import create_agent
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

from lexecon_core import (
    GovernanceDenied,
    GovernanceError,
    LedgerError,
    LocalGovernor,
    TokenError,
    current_capability,
    verify_token,
)
from lexecon_integrations.langchain import LexeconCallbackHandler, LexeconMiddleware, govern_tool, govern_tools

ACTOR = "ai_agent:test_bot"


class Recorder:
    """Tools that record each real execution and what capability they saw."""

    def __init__(self, governor: LocalGovernor) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.capabilities: list[Any] = []
        self.lock = threading.Lock()
        recorder = self

        @tool
        def search(q: str) -> str:
            """Search the knowledge base."""
            recorder._record("search", {"q": q})
            return f"results for {q}"

        @tool
        def refund(order_id: int, amount_cents: int) -> str:
            """Refund an order."""
            recorder._record("refund", {"order_id": order_id, "amount_cents": amount_cents})
            return "refunded"

        @tool
        def delete_user(user_id: int) -> str:
            """Delete a user."""
            recorder._record("delete_user", {"user_id": user_id})
            return "deleted"

        self.search, self.refund, self.delete_user = search, refund, delete_user
        self.governor = governor

    def _record(self, name: str, args: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((name, args))
            self.capabilities.append(current_capability())

    @property
    def tools(self) -> list[BaseTool]:
        return [self.search, self.refund, self.delete_user]

    def ran(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


@pytest.fixture
def rec(governor: LocalGovernor) -> Recorder:
    return Recorder(governor)


def decisions(governor: LocalGovernor) -> list[dict[str, Any]]:
    return [e.data for e in governor.node.ledger.entries(entry_type="decision")]


class ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def scripted(*turns: list[dict[str, Any]] | str) -> ScriptedModel:
    def messages() -> Iterator[AIMessage]:
        for turn in turns:
            if isinstance(turn, str):
                yield AIMessage(content=turn)
            else:
                yield AIMessage(content="", tool_calls=turn)

    return ScriptedModel(messages=messages())


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id}


# -- callback handler ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_callback_allows_once_and_blocks_forbidden(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    handler = LexeconCallbackHandler(governor, actor=ACTOR)
    config = {"callbacks": [handler]}

    def invoke(t: BaseTool, args: dict[str, Any]) -> Any:
        if mode == "sync":
            return t.invoke(args, config=config)
        return asyncio.run(t.ainvoke(args, config=config))

    assert invoke(rec.search, {"q": "x"}) == "results for x"
    with pytest.raises(GovernanceDenied) as denied:
        invoke(rec.delete_user, {"user_id": 7})
    assert rec.ran("search") == 1
    assert rec.ran("delete_user") == 0  # the body never ran
    assert denied.value.decision.tool == "delete_user"
    assert "forbids:agents->deletes" in str(denied.value)
    outcomes = [(d["request"]["tool"], d["outcome"]) for d in decisions(governor)]
    assert outcomes == [("search", "approved"), ("delete_user", "denied")]
    capability = rec.capabilities[0]
    assert capability is not None and capability.tool == "search"
    assert current_capability() is None  # reset after the tool ended


def test_async_callback_trap_is_real_and_avoided(governor: LocalGovernor, rec: Recorder) -> None:
    """An AsyncCallbackHandler that raises does not stop the tool; our (sync, inline) handler does."""

    class NaiveAsyncGuard(AsyncCallbackHandler):
        raise_error = True

        async def on_tool_start(self, serialized: dict[str, Any], input_str: str, **kwargs: Any) -> None:
            raise RuntimeError("deny")

    with contextlib.suppress(RuntimeError):
        asyncio.run(rec.delete_user.ainvoke({"user_id": 1}, config={"callbacks": [NaiveAsyncGuard()]}))
    naive_ran = rec.ran("delete_user")
    assert naive_ran == 1  # the trap: the tool ran although the async handler raised
    with pytest.raises(GovernanceDenied):
        asyncio.run(
            rec.delete_user.ainvoke(
                {"user_id": 2}, config={"callbacks": [LexeconCallbackHandler(governor, actor=ACTOR)]}
            )
        )
    assert rec.ran("delete_user") == naive_ran  # ours stopped it


def test_callback_capability_is_bound_to_the_arguments(governor: LocalGovernor, rec: Recorder) -> None:
    rec.refund.invoke(
        {"order_id": 1, "amount_cents": 10}, config={"callbacks": [LexeconCallbackHandler(governor, actor=ACTOR)]}
    )
    capability = rec.capabilities[0]
    claims = verify_token(
        capability.token,
        keys=governor.public_keys,
        tool="refund",
        args={"order_id": 1, "amount_cents": 10},
        replay_cache=None,
    )
    assert claims.decision_id == capability.decision_id
    with pytest.raises(TokenError) as wrong:
        verify_token(
            capability.token,
            keys=governor.public_keys,
            tool="refund",
            args={"order_id": 1, "amount_cents": 10_000},
            replay_cache=None,
        )
    assert wrong.value.reason == "args_mismatch"


# -- middleware ---------------------------------------------------------------------------------------------------


def build_agent(governor: LocalGovernor, rec: Recorder, *turns: Any) -> Any:
    return create_agent(scripted(*turns), tools=rec.tools, middleware=[LexeconMiddleware(governor, actor=ACTOR)])


PARALLEL_TURN = [
    call("search", {"q": "refund policy"}, "c1"),
    call("refund", {"order_id": 5, "amount_cents": 250}, "c2"),
    call("delete_user", {"user_id": 9}, "c3"),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_middleware_parallel_calls_each_decided(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    agent = build_agent(governor, rec, PARALLEL_TURN, "done")
    question = {"messages": [{"role": "user", "content": "go"}]}
    result = agent.invoke(question) if mode == "sync" else asyncio.run(agent.ainvoke(question))
    tool_messages = {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}
    assert tool_messages["c1"].status == "success"
    assert tool_messages["c2"].status == "success"
    assert tool_messages["c3"].status == "error"
    assert "Lexecon denied tool 'delete_user'" in tool_messages["c3"].content
    assert "forbids:agents->deletes" in tool_messages["c3"].content
    assert "Traceback" not in tool_messages["c3"].content
    assert rec.ran("search") == 1 and rec.ran("refund") == 1 and rec.ran("delete_user") == 0
    recorded = sorted((d["request"]["tool"], d["outcome"]) for d in decisions(governor))
    assert recorded == [("delete_user", "denied"), ("refund", "approved"), ("search", "approved")]
    assert result["messages"][-1].content == "done"
    assert all(c is not None for c in rec.capabilities)
    assert {c.tool for c in rec.capabilities} == {"search", "refund"}
    assert governor.verify_ledger().valid


def test_middleware_escalation_is_a_denial_naming_the_escalation(governor: LocalGovernor, rec: Recorder) -> None:
    middleware = LexeconMiddleware(governor, actor=ACTOR, describe=lambda name, args: {"risk_level": "critical"})
    agent = create_agent(scripted([call("refund", {"order_id": 1, "amount_cents": 1}, "c1")], "ok"), tools=rec.tools,
                         middleware=[middleware])  # fmt: skip
    result = agent.invoke({"messages": [{"role": "user", "content": "refund"}]})
    message = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert message.status == "error"
    assert "awaits human approval (escalation esc_" in message.content
    assert rec.ran("refund") == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_middleware_fails_closed_when_the_ledger_is_down(
    governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise LedgerError("ledger write failed: database is locked")

    monkeypatch.setattr(governor.node.ledger, "append", down)
    agent = build_agent(governor, rec, [call("search", {"q": "x"}, "c1")], "ok")
    question = {"messages": [{"role": "user", "content": "search"}]}
    result = agent.invoke(question) if mode == "sync" else asyncio.run(agent.ainvoke(question))
    message = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert message.status == "error"
    assert "could not decide on tool 'search', so it was not run" in message.content
    assert "database is locked" in message.content
    assert rec.ran("search") == 0


def test_middleware_refuses_a_token_that_does_not_verify(
    governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_token(*args: Any, **kwargs: Any) -> None:
        raise TokenError("args_mismatch", "capability token was issued for different arguments")

    monkeypatch.setattr(governor, "verify_token", bad_token)
    agent = build_agent(governor, rec, [call("search", {"q": "x"}, "c1")], "ok")
    result = agent.invoke({"messages": [{"role": "user", "content": "search"}]})
    message = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert "capability token failed verification (args_mismatch)" in message.content
    assert rec.ran("search") == 0
    assert decisions(governor)[0]["outcome"] == "approved"  # decided and logged, but not acted on


# -- tool wrapper -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_govern_tool(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    search, delete_user = govern_tools([rec.search, rec.delete_user], governor, actor=ACTOR)

    def invoke(t: BaseTool, args: dict[str, Any]) -> Any:
        return t.invoke(args) if mode == "sync" else asyncio.run(t.ainvoke(args))

    assert invoke(search, {"q": "y"}) == "results for y"
    denial = invoke(delete_user, {"user_id": 1})
    assert "Lexecon denied tool 'delete_user'" in denial
    assert rec.ran("search") == 1 and rec.ran("delete_user") == 0
    assert rec.capabilities[0].tool == "search"
    # as a tool call, the denial is an error ToolMessage
    message = delete_user.invoke({"type": "tool_call", "name": "delete_user", "args": {"user_id": 2}, "id": "t1"})
    assert isinstance(message, ToolMessage) and message.status == "error"
    assert rec.ran("delete_user") == 0
    # the originals are untouched
    assert rec.delete_user.invoke({"user_id": 3}) == "deleted"


def test_govern_tool_raise_mode(governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    delete_user = govern_tool(rec.delete_user, governor, actor=ACTOR, on_deny="raise")
    with pytest.raises(GovernanceDenied):
        delete_user.invoke({"user_id": 1})
    monkeypatch.setattr(governor, "decide", lambda request: (_ for _ in ()).throw(GovernanceError("ledger down")))
    search = govern_tool(rec.search, governor, actor=ACTOR, on_deny="raise")
    with pytest.raises(GovernanceError, match="ledger down"):
        search.invoke({"q": "z"})
    assert rec.calls == []


def test_govern_tool_hands_langchain_resolved_hints(governor: LocalGovernor, rec: Recorder) -> None:
    # LangChain looks for the RunnableConfig parameter by reading _run's type hints on every call; resolved objects,
    # not strings, spare it an eval of each annotation per call.
    from langchain_core.runnables import RunnableConfig

    from lexecon_integrations.langchain._tool import _takes

    search = govern_tool(rec.search, governor, actor=ACTOR)
    for method in (type(search)._run, type(search)._arun):
        assert method.__annotations__["config"] is RunnableConfig
    search.invoke({"q": "a"})
    before = _takes.cache_info().hits
    search.invoke({"q": "b"})
    assert _takes.cache_info().hits == before + 1  # the wrapped tool's signature is read once, not per call
    assert rec.ran("search") == 2


def test_govern_tool_works_inside_an_agent(governor: LocalGovernor, rec: Recorder) -> None:
    tools = govern_tools(rec.tools, governor, actor=ACTOR)
    agent = create_agent(scripted(PARALLEL_TURN, "done"), tools=tools)
    result = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    statuses = {m.tool_call_id: m.status for m in result["messages"] if isinstance(m, ToolMessage)}
    assert statuses == {"c1": "success", "c2": "success", "c3": "error"}
    assert rec.ran("delete_user") == 0
    assert len(decisions(governor)) == 3


def test_adapters_require_an_actor(governor: LocalGovernor) -> None:
    with pytest.raises(ValueError, match="actor"):
        LexeconMiddleware(governor)
    with pytest.raises(TypeError, match="Governor"):
        LexeconCallbackHandler(object(), actor=ACTOR)  # type: ignore[arg-type]


# -- governing must not change how allowed tools behave ------------------------------------------------------------


@pytest.mark.parametrize("own_setting", [False, True, "it broke", None])
def test_govern_tool_leaves_the_tools_own_errors_as_they_were(governor: LocalGovernor, own_setting: Any) -> None:
    from langchain_core.tools import StructuredTool, ToolException

    def search(q: str) -> str:
        """Search."""
        raise ToolException(f"backend down for {q}")

    raw = StructuredTool.from_function(search)
    if own_setting is not None:
        raw.handle_tool_error = own_setting
    governed = govern_tool(raw, governor, actor=ACTOR)
    call = {"type": "tool_call", "name": "search", "args": {"q": "x"}, "id": "c1"}
    outcomes = []
    for candidate in (raw, governed):
        try:
            message = candidate.invoke(call)
            outcomes.append((message.status, message.content))
        except ToolException as exc:
            outcomes.append(("raised", str(exc)))
    assert outcomes[1] == outcomes[0]  # exactly as ungoverned: raised, or handled by the tool's own setting
    assert decisions(governor)[0]["outcome"] == "approved"
    denied = govern_tool(StructuredTool.from_function(search, name="delete_x"), governor, actor=ACTOR)
    message = denied.invoke({**call, "name": "delete_x"})
    assert message.status == "error" and "Lexecon denied tool 'delete_x'" in message.content  # denials: a message


def test_a_sync_call_of_an_async_only_tool_is_refused_before_any_decision(governor: LocalGovernor) -> None:
    from langchain_core.tools import StructuredTool

    async def search(q: str) -> str:
        """Search."""
        return f"results for {q}"

    governed = govern_tool(StructuredTool.from_function(coroutine=search), governor, actor=ACTOR)
    with pytest.raises(NotImplementedError, match="async-only"):
        governed.invoke({"q": "x"})
    assert decisions(governor) == []  # no approval (and no token) for a call that could not run
    assert asyncio.run(governed.ainvoke({"q": "y"})) == "results for y"
    assert [d["outcome"] for d in decisions(governor)] == ["approved"]


def test_a_tool_governed_again_for_another_actor_decides_once_as_that_actor(
    governor: LocalGovernor, rec: Recorder
) -> None:
    first = govern_tool(rec.search, governor, actor=ACTOR)
    second = govern_tool(first, governor, actor="ai_agent:other")
    assert type(second) is type(first)  # not a governed copy of a governed copy
    assert second.invoke({"q": "a"}) == "results for a" and first.invoke({"q": "b"}) == "results for b"
    assert [d["request"]["actor"] for d in decisions(governor)] == ["ai_agent:other", ACTOR]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_tool_node_that_handles_errors_shows_the_model_the_clean_denial(
    governor: LocalGovernor, rec: Recorder
) -> None:
    from langgraph.prebuilt import ToolNode, create_react_agent

    turns = [
        AIMessage(content="", tool_calls=[{"name": "delete_user", "args": {"user_id": 1}, "id": "c1"}]),
        AIMessage(content="ok"),
    ]
    agent = create_react_agent(
        ScriptedModel(messages=iter(turns)), ToolNode([rec.delete_user], handle_tool_errors=True)
    )
    handler = LexeconCallbackHandler(governor, actor=ACTOR)
    result = agent.invoke({"messages": [("user", "go")]}, config={"callbacks": [handler]})
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert "Lexecon denied tool 'delete_user': forbidden by forbids:agents->deletes" in message.content
    assert "GovernanceDenied(" not in message.content  # the adapter's sentence, not the exception's repr
    assert rec.ran("delete_user") == 0
