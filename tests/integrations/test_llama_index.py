"""LlamaIndex adapter: GovernedTool / govern_tools - sync and async, direct calls and whole agent runs, real ledger."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.agent.workflow import FunctionAgent, ReActAgent, ToolCallResult
from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import BaseTool, FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.workflow import Context

from lexecon_core import (
    GovernanceError,
    LedgerError,
    LocalGovernor,
    TokenError,
    current_capability,
    verify_token,
)
from lexecon_core._canonical import args_digest
from lexecon_integrations.llama_index import GovernedTool, govern_tools
from tests.conftest import TEST_POLICY

ACTOR = "ai_agent:test_bot"


class Recorder:
    """Tools that record each real execution and the capability they saw: sync fns, async fns, a plain BaseTool."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.capabilities: list[Any] = []
        self.lock = threading.Lock()
        recorder = self

        def search(q: str) -> str:
            """Search the knowledge base."""
            recorder.record("search", {"q": q})
            return f"results for {q}"

        def delete_user(user_id: int) -> str:
            """Delete a user."""
            recorder.record("delete_user", {"user_id": user_id})
            return "deleted"

        async def refund(order_id: int, amount_cents: int) -> str:
            """Refund an order."""
            await asyncio.sleep(0)
            recorder.record("refund", {"order_id": order_id, "amount_cents": amount_cents})
            return f"refunded {amount_cents} on order {order_id}"

        async def delete_order(order_id: int) -> str:
            """Delete an order."""
            await asyncio.sleep(0)
            recorder.record("delete_order", {"order_id": order_id})
            return "deleted"

        self.search = FunctionTool.from_defaults(fn=search)
        self.delete_user = FunctionTool.from_defaults(fn=delete_user)
        self.refund = FunctionTool.from_defaults(fn=refund)  # an async fn: FunctionTool runs it natively in acall
        self.delete_order = FunctionTool.from_defaults(fn=delete_order)
        self.plain_search = PlainTool("search", self)
        self.plain_delete = PlainTool("delete_notes", self)

    def record(self, name: str, args: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((name, args))
            self.capabilities.append(current_capability())

    @property
    def function_tools(self) -> list[BaseTool]:
        return [self.search, self.refund, self.delete_user]

    def ran(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


class PlainTool(BaseTool):
    """A plain (not async) BaseTool: LlamaIndex calls it with one positional input."""

    def __init__(self, name: str, recorder: Recorder) -> None:
        self._metadata = ToolMetadata(name=name, description=f"plain {name} tool taking one string")
        self.recorder = recorder

    @property
    def metadata(self) -> ToolMetadata:
        return self._metadata

    def __call__(self, input: Any) -> ToolOutput:
        self.recorder.record(self._metadata.get_name(), {"input": input})
        return ToolOutput(
            content=f"plain {input}", tool_name=self._metadata.get_name(), raw_input={"input": input}, raw_output=input
        )


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def decisions(governor: LocalGovernor) -> list[dict[str, Any]]:
    return [e.data for e in governor.node.ledger.entries(entry_type="decision")]


def outcomes(governor: LocalGovernor) -> list[tuple[str, str]]:
    return [(d["request"]["tool"], d["outcome"]) for d in decisions(governor)]


def run_tool(tool: GovernedTool, mode: str, *args: Any, **kwargs: Any) -> ToolOutput:
    if mode == "sync":
        return tool.call(*args, **kwargs)
    return asyncio.run(tool.acall(*args, **kwargs))


def assert_denied(output: ToolOutput, tool: str) -> None:
    assert isinstance(output, ToolOutput)
    assert output.is_error is True
    assert output.tool_name == tool
    assert output.raw_output is None
    assert "Traceback" not in output.content


# -- GovernedTool, direct calls -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_allowed_sync_fn_runs_once_and_returns_its_output(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    search = GovernedTool(rec.search, governor, actor=ACTOR)
    output = run_tool(search, mode, q="refunds")
    assert isinstance(output, ToolOutput)
    assert output.is_error is False
    assert output.content == "results for refunds"
    assert output.raw_output == "results for refunds"
    assert output.tool_name == "search"
    assert output.raw_input == {"args": (), "kwargs": {"q": "refunds"}}
    assert rec.calls == [("search", {"q": "refunds"})]
    assert outcomes(governor) == [("search", "approved")]
    assert decisions(governor)[0]["request"]["args_sha256"] == args_digest({"q": "refunds"})
    assert decisions(governor)[0]["request"]["actor"] == ACTOR


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_allowed_async_fn_runs_once_and_returns_its_output(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    refund = GovernedTool(rec.refund, governor, actor=ACTOR)
    output = run_tool(refund, mode, order_id=5, amount_cents=250)
    assert output.is_error is False
    assert output.content == "refunded 250 on order 5"
    assert rec.calls == [("refund", {"order_id": 5, "amount_cents": 250})]
    assert outcomes(governor) == [("refund", "approved")]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("tool", "args"), [("delete_user", {"user_id": 7}), ("delete_order", {"order_id": 3})])
def test_forbidden_tool_never_runs_and_returns_an_error_output(
    governor: LocalGovernor, rec: Recorder, mode: str, tool: str, args: dict[str, Any]
) -> None:
    governed = GovernedTool(getattr(rec, tool), governor, actor=ACTOR)  # delete_user: sync fn, delete_order: async
    output = run_tool(governed, mode, **args)
    assert_denied(output, tool)
    assert f"Lexecon denied tool '{tool}'" in output.content
    assert "forbids:agents->deletes" in output.content
    assert rec.calls == []  # the body never ran
    assert outcomes(governor) == [(tool, "denied")]
    decision_id = decisions(governor)[0]["decision_id"]
    assert decision_id in output.content
    assert output.raw_input == {"args": (), "kwargs": args}
    assert output.exception is not None and "forbids:agents->deletes" in str(output.exception)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_decision_per_call(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    search, refund, delete_user = govern_tools(rec.function_tools, governor, actor=ACTOR)
    run_tool(search, mode, q="a")
    run_tool(delete_user, mode, user_id=1)
    run_tool(refund, mode, order_id=1, amount_cents=1)
    run_tool(search, mode, q="b")
    assert search(q="c").content == "results for c"  # __call__ (used by to_langchain_tool etc.) is governed too
    assert delete_user(user_id=2).is_error is True
    assert outcomes(governor) == [
        ("search", "approved"),
        ("delete_user", "denied"),
        ("refund", "approved"),
        ("search", "approved"),
        ("search", "approved"),
        ("delete_user", "denied"),
    ]
    assert [n for n, _ in rec.calls] == ["search", "refund", "search", "search"]
    assert governor.verify_ledger().valid


# -- the capability inside the tool body --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("attr", ["search", "refund"])
def test_capability_is_current_in_the_body_and_bound_to_the_args(
    governor: LocalGovernor, rec: Recorder, mode: str, attr: str
) -> None:
    args: dict[str, Any] = {"q": "invoices"} if attr == "search" else {"order_id": 9, "amount_cents": 1200}
    other: dict[str, Any] = {"q": "passwords"} if attr == "search" else {"order_id": 9, "amount_cents": 999_999}
    assert current_capability() is None
    run_tool(GovernedTool(getattr(rec, attr), governor, actor=ACTOR), mode, **args)
    assert current_capability() is None  # reset after the call
    [capability] = rec.capabilities
    assert capability is not None
    assert capability.tool == attr
    decision = decisions(governor)[0]
    assert capability.decision_id == decision["decision_id"]
    assert capability.claims.args_sha256 == decision["request"]["args_sha256"]
    claims = verify_token(capability.token, keys=governor.public_keys, tool=attr, args=args, replay_cache=None)
    assert claims.decision_id == capability.decision_id
    assert claims.sub == ACTOR
    with pytest.raises(TokenError) as wrong:
        verify_token(capability.token, keys=governor.public_keys, tool=attr, args=other, replay_cache=None)
    assert wrong.value.reason == "args_mismatch"


def test_each_call_gets_its_own_capability(governor: LocalGovernor, rec: Recorder) -> None:
    search = GovernedTool(rec.search, governor, actor=ACTOR)
    search.call(q="one")
    asyncio.run(search.acall(q="two"))
    first, second = rec.capabilities
    assert first.decision_id != second.decision_id
    assert first.token != second.token
    verify_token(second.token, keys=governor.public_keys, tool="search", args={"q": "two"}, replay_cache=None)
    with pytest.raises(TokenError) as wrong:
        verify_token(first.token, keys=governor.public_keys, tool="search", args={"q": "two"}, replay_cache=None)
    assert wrong.value.reason == "args_mismatch"


# -- escalation and failing closed --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_escalation_is_an_error_output_naming_the_escalation(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    refund = GovernedTool(rec.refund, governor, actor=ACTOR, describe=lambda name, args: {"risk_level": "critical"})
    output = run_tool(refund, mode, order_id=1, amount_cents=100)
    assert_denied(output, "refund")
    assert "awaits human approval (escalation esc_" in output.content
    assert rec.calls == []
    [decision] = decisions(governor)
    assert decision["outcome"] == "escalated"
    assert decision["escalation_id"] in output.content


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fails_closed_when_the_ledger_is_down(
    governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise LedgerError("ledger write failed: database is locked")

    monkeypatch.setattr(governor.node.ledger, "append", down)
    output = run_tool(GovernedTool(rec.search, governor, actor=ACTOR), mode, q="x")
    assert_denied(output, "search")
    assert "could not decide on tool 'search', so it was not run" in output.content
    assert "database is locked" in output.content
    assert isinstance(output.exception, GovernanceError)
    assert rec.calls == []
    monkeypatch.undo()
    assert decisions(governor) == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_refuses_a_token_that_does_not_verify(
    governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    def bad_token(*args: Any, **kwargs: Any) -> None:
        raise TokenError("args_mismatch", "capability token was issued for different arguments")

    monkeypatch.setattr(governor, "verify_token", bad_token)
    output = run_tool(GovernedTool(rec.search, governor, actor=ACTOR), mode, q="x")
    assert_denied(output, "search")
    assert "capability token failed verification (args_mismatch)" in output.content
    assert isinstance(output.exception, TokenError) and output.exception.reason == "args_mismatch"
    assert rec.calls == []
    assert outcomes(governor) == [("search", "approved")]  # decided and logged, but not acted on


def test_an_unexpected_governor_error_fails_closed_without_detail(
    governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(governor, "decide", boom)
    output = GovernedTool(rec.search, governor, actor=ACTOR).call(q="x")
    assert_denied(output, "search")
    assert "could not decide on tool 'search', so it was not run" in output.content
    assert "RuntimeError" in output.content
    assert "secret internal detail" not in output.content
    assert rec.calls == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_arguments_that_cannot_be_hashed_are_denied_and_recorded(
    governor: LocalGovernor, rec: Recorder, mode: str
) -> None:
    output = run_tool(GovernedTool(rec.search, governor, actor=ACTOR), mode, q=object())
    assert_denied(output, "search")
    assert "Lexecon denied tool 'search': its arguments cannot be bound to a capability token" in output.content
    assert "JSON-serialisable" in output.content
    assert rec.calls == []
    (recorded,) = decisions(governor)  # the attempt is in the ledger for auditors, without the values
    assert recorded["outcome"] == "denied" and recorded["request"]["args_sha256"] is None
    assert "cannot be bound" in recorded["reason"] and recorded["token_id"] is None


# -- govern_tools -------------------------------------------------------------------------------------------------


def test_govern_tools_keeps_metadata_and_does_not_double_wrap(governor: LocalGovernor, rec: Recorder) -> None:
    originals = [rec.search, rec.refund, rec.delete_user, rec.plain_search]
    before = [(t.metadata.name, t.metadata.description, t.metadata.fn_schema) for t in originals]
    governed = govern_tools(originals, governor, actor=ACTOR)
    assert all(isinstance(t, GovernedTool) for t in governed)
    for original, wrapped in zip(originals, governed, strict=True):
        assert wrapped.metadata.name == original.metadata.name
        assert wrapped.metadata.description == original.metadata.description
        assert wrapped.metadata.fn_schema is original.metadata.fn_schema
        assert wrapped.metadata.get_parameters_dict() == original.metadata.get_parameters_dict()
        assert wrapped.metadata.to_openai_tool() == original.metadata.to_openai_tool()
    assert governed[0].metadata.fn_schema is not None
    assert set(governed[1].metadata.get_parameters_dict()["properties"]) == {"order_id", "amount_cents"}
    assert len({id(t.guard) for t in governed}) == 1  # one shared guard

    again = govern_tools([*governed, rec.delete_user], governor, actor="ai_agent:other")
    # already governed: governed afresh for the new actor from the tool it wraps, never wrapped twice
    assert all(a is not g and a.wrapped is g.wrapped for a, g in zip(again, governed, strict=False))
    assert again[4] is not governed[2] and again[4].tool is rec.delete_user
    assert not any(isinstance(t.tool, GovernedTool) or isinstance(t.wrapped, GovernedTool) for t in again)
    assert {t.guard.actor for t in again} == {"ai_agent:other"} and {t.guard.actor for t in governed} == {ACTOR}

    # the originals are untouched: still plain, ungoverned tools with their own metadata
    assert [(t.metadata.name, t.metadata.description, t.metadata.fn_schema) for t in originals] == before
    assert not any(isinstance(t, GovernedTool) for t in originals)
    assert rec.delete_user.call(user_id=1).content == "deleted"
    assert rec.ran("delete_user") == 1
    assert decisions(governor) == []  # calling an original is not governed
    assert governed[2].call(user_id=2).is_error is True
    assert rec.ran("delete_user") == 1


def test_govern_tools_requires_an_actor(governor: LocalGovernor, rec: Recorder) -> None:
    with pytest.raises(ValueError, match="actor"):
        govern_tools([rec.search], governor)
    with pytest.raises(TypeError, match="Governor"):
        GovernedTool(rec.search, object(), actor=ACTOR)  # type: ignore[arg-type]


# -- a plain BaseTool (one positional input) ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("style", ["positional", "keyword"])
def test_plain_base_tool_is_decided_with_input_arg(
    governor: LocalGovernor, rec: Recorder, mode: str, style: str
) -> None:
    search, delete_notes = govern_tools([rec.plain_search, rec.plain_delete], governor, actor=ACTOR)
    # agents call it as acall(**{"input": ...}) (the default fn schema); code may pass the input positionally
    call_args, call_kwargs = (("llamas",), {}) if style == "positional" else ((), {"input": "llamas"})
    output = run_tool(search, mode, *call_args, **call_kwargs)
    assert output.is_error is False
    assert output.content == "plain llamas"
    assert rec.calls == [("search", {"input": "llamas"})]
    [decision] = decisions(governor)
    assert decision["outcome"] == "approved"
    assert decision["request"]["args_sha256"] == args_digest({"input": "llamas"})
    [capability] = rec.capabilities
    verify_token(
        capability.token, keys=governor.public_keys, tool="search", args={"input": "llamas"}, replay_cache=None
    )
    assert current_capability() is None

    denied = run_tool(delete_notes, mode, "all of them")
    assert_denied(denied, "delete_notes")
    assert "Lexecon denied tool 'delete_notes'" in denied.content
    assert rec.ran("delete_notes") == 0
    assert decisions(governor)[1]["request"]["args_sha256"] == args_digest({"input": "all of them"})


# -- FunctionAgent ------------------------------------------------------------------------------------------------


PARALLEL_TURN = [
    ToolCallBlock(tool_call_id="c1", tool_name="search", tool_kwargs={"q": "refund policy"}),
    ToolCallBlock(tool_call_id="c2", tool_name="delete_user", tool_kwargs={"user_id": 9}),
    ToolCallBlock(tool_call_id="c3", tool_name="refund", tool_kwargs={"order_id": 5, "amount_cents": 250}),
]
FINAL_ANSWER = "Refund issued; I may not delete users."


def test_function_agent_parallel_calls_each_decided(governor: LocalGovernor, rec: Recorder) -> None:
    seen_by_model: list[ChatMessage] = []

    def model(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        tool_messages = [m for m in messages if m.role == MessageRole.TOOL]
        if tool_messages:
            seen_by_model.extend(tool_messages)
            return ChatMessage(role="assistant", content=FINAL_ANSWER)
        return ChatMessage(role="assistant", blocks=[TextBlock(text="On it."), *PARALLEL_TURN])

    async def main() -> tuple[str, list[ToolCallResult]]:
        agent = FunctionAgent(
            tools=govern_tools(rec.function_tools, governor, actor=ACTOR),
            llm=MockFunctionCallingLLM(response_generator=model),
        )
        handler = agent.run("Check the policy, delete user 9, refund order 5.")
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        return str(await handler), results

    answer, results = asyncio.run(main())
    assert answer == FINAL_ANSWER
    by_id = {r.tool_id: r for r in results}
    assert set(by_id) == {"c1", "c2", "c3"}
    assert by_id["c1"].tool_output.is_error is False
    assert by_id["c1"].tool_output.content == "results for refund policy"
    assert by_id["c3"].tool_output.is_error is False
    assert by_id["c3"].tool_output.content == "refunded 250 on order 5"
    denial = by_id["c2"].tool_output
    assert denial.is_error is True
    assert "Lexecon denied tool 'delete_user'" in denial.content
    assert "forbids:agents->deletes" in denial.content
    assert "Traceback" not in denial.content
    # the model was shown the denial as the tool's result
    assert any("Lexecon denied tool 'delete_user'" in m.content for m in seen_by_model)

    assert rec.ran("search") == 1 and rec.ran("refund") == 1 and rec.ran("delete_user") == 0
    assert sorted(outcomes(governor)) == [("delete_user", "denied"), ("refund", "approved"), ("search", "approved")]
    for (name, args), capability in zip(rec.calls, rec.capabilities, strict=True):
        assert capability is not None and capability.tool == name
        verify_token(capability.token, keys=governor.public_keys, tool=name, args=args, replay_cache=None)
    assert len({c.decision_id for c in rec.capabilities}) == 2
    assert governor.verify_ledger().valid


# -- ReActAgent (text protocol, scripted completion model) --------------------------------------------------------


class ScriptedReActLLM(CustomLLM):
    """A text-only (non function-calling) LLM that answers the n-th ReAct step with the n-th script entry.

    The step is the number of observations in the conversation part of the prompt (the instructions above it show
    the format once), so the answer does not depend on how often, or through which method, the agent asks.
    """

    script: list[str]

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=False, is_function_calling_model=False)

    def _reply(self, prompt: str) -> str:
        conversation = prompt.rpartition("## Current Conversation")[2]
        return self.script[min(conversation.count("Observation:"), len(self.script) - 1)]

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._reply(prompt))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._reply(prompt)

        def gen() -> CompletionResponseGen:
            sofar = ""
            for piece in text.splitlines(keepends=True):
                sofar += piece
                yield CompletionResponse(text=sofar, delta=piece)

        return gen()


REACT_SCRIPT = [
    'Thought: I should search first.\nAction: search\nAction Input: {"q": "refund policy"}\n',
    'Thought: Now delete the user.\nAction: delete_user\nAction Input: {"user_id": 9}\n',
    'Thought: Now the refund.\nAction: refund\nAction Input: {"order_id": 5, "amount_cents": 250}\n',
    "Thought: I can answer without using any more tools.\nAnswer: " + FINAL_ANSWER,
]


@pytest.mark.parametrize("streaming", [True, False])
def test_react_agent_run_is_governed(governor: LocalGovernor, rec: Recorder, streaming: bool) -> None:
    async def main() -> tuple[str, list[ToolCallResult]]:
        agent = ReActAgent(
            tools=govern_tools(rec.function_tools, governor, actor=ACTOR),
            llm=ScriptedReActLLM(script=REACT_SCRIPT),
            streaming=streaming,
        )
        handler = agent.run("Check the policy, delete user 9, refund order 5.")
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        return str(await handler), results

    answer, results = asyncio.run(main())
    assert answer == FINAL_ANSWER
    assert [r.tool_name for r in results] == ["search", "delete_user", "refund"]
    assert [r.tool_output.is_error for r in results] == [False, True, False]
    assert "Lexecon denied tool 'delete_user'" in results[1].tool_output.content
    assert "forbids:agents->deletes" in results[1].tool_output.content
    assert results[2].tool_output.content == "refunded 250 on order 5"
    assert rec.calls == [("search", {"q": "refund policy"}), ("refund", {"order_id": 5, "amount_cents": 250})]
    assert outcomes(governor) == [("search", "approved"), ("delete_user", "denied"), ("refund", "approved")]
    assert [c.tool for c in rec.capabilities] == ["search", "refund"]
    assert governor.verify_ledger().valid


# -- tools that take the workflow Context -------------------------------------------------------------------------


def test_function_agent_passes_the_context_to_a_governed_context_tool(governor: LocalGovernor, rec: Recorder) -> None:
    seen: list[Any] = []

    async def lookup(ctx: Context, q: str) -> str:
        """Look something up, using the workflow context."""
        seen.append(ctx)
        rec.record("search", {"q": q})
        return f"found {q}"

    # LlamaIndex finds the Context parameter by its annotation object; this module's postponed annotations are strings.
    lookup.__annotations__["ctx"] = Context

    def model(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role="assistant", content=FINAL_ANSWER)
        call = ToolCallBlock(tool_call_id="c1", tool_name="search", tool_kwargs={"q": "x"})
        return ChatMessage(role="assistant", blocks=[call])

    async def main() -> list[ToolCallResult]:
        tool = FunctionTool.from_defaults(fn=lookup, name="search")
        agent = FunctionAgent(
            tools=govern_tools([tool], governor, actor=ACTOR), llm=MockFunctionCallingLLM(response_generator=model)
        )
        handler = agent.run("look up x")
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        await handler
        return results

    [result] = asyncio.run(main())
    assert result.tool_output.is_error is False, result.tool_output.content
    assert result.tool_output.content == "found x"
    assert len(seen) == 1 and isinstance(seen[0], Context)
    [decision] = decisions(governor)
    assert decision["outcome"] == "approved"
    # the Context is plumbing, not a tool argument: it is neither hashed nor bound into the capability
    assert decision["request"]["args_sha256"] == args_digest({"q": "x"})
    verify_token(
        rec.capabilities[0].token, keys=governor.public_keys, tool="search", args={"q": "x"}, replay_cache=None
    )


# -- every callable a governed FunctionTool hands out decides (CodeActAgent reads real_fn) ----------------------------


@pytest.mark.parametrize("attribute", ["fn", "async_fn", "real_fn"])
def test_the_functions_of_a_governed_function_tool_decide(
    governor: LocalGovernor, rec: Recorder, attribute: str
) -> None:
    from lexecon_core import GovernanceDenied

    search, delete_user, refund = govern_tools([rec.search, rec.delete_user, rec.refund], governor, actor=ACTOR)

    def call(tool: GovernedTool, **kwargs: Any) -> Any:
        function = getattr(tool, attribute)
        result = function(**kwargs)
        return asyncio.run(result) if asyncio.iscoroutine(result) else result

    assert call(search, q="x") == "results for x"
    assert call(refund, order_id=1, amount_cents=5) == "refunded 5 on order 1"
    with pytest.raises(GovernanceDenied, match="delete_user"):
        call(delete_user, user_id=3)
    assert rec.calls == [("search", {"q": "x"}), ("refund", {"order_id": 1, "amount_cents": 5})]
    assert [c.tool for c in rec.capabilities] == ["search", "refund"]  # each body ran under its own decision
    assert outcomes(governor) == [("search", "approved"), ("refund", "approved"), ("delete_user", "denied")]
    for governed, raw in ((search, rec.search), (refund, rec.refund)):
        function = getattr(governed, attribute)
        assert not hasattr(function, "__wrapped__")  # the raw function is not handed out
        assert function.__name__ == raw.real_fn.__name__ and function.__doc__ == raw.real_fn.__doc__
        assert inspect.signature(function) == inspect.signature(raw.real_fn)
    assert inspect.iscoroutinefunction(refund.real_fn) and not inspect.iscoroutinefunction(search.real_fn)


class ScriptedCodeActLLM(CustomLLM):
    """Answers CodeAct's n-th step with the n-th script entry (text with an <execute> block, then a final answer)."""

    script: list[str]
    step: int = 0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=False, is_function_calling_model=False)

    def _next(self) -> str:
        text = self.script[min(self.step, len(self.script) - 1)]
        self.step += 1
        return text

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._next())

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._next()

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()


CODE_ACT_POLICY = TEST_POLICY.replace(
    "relations:",
    "  - {term_id: execute, term_type: tool, value: execute}\nrelations:\n"
    "  - {relation_type: permits, source_term_id: agents, target_term_id: execute}",
)


def test_code_act_agent_code_calls_governed_functions_and_its_execute_step_is_decided(home: Any, rec: Recorder) -> None:
    from llama_index.core.agent.workflow import CodeActAgent

    from lexecon_core.policy import parse_policy_text
    from lexecon_integrations.llama_index import govern_agent

    namespace: dict[str, Any] = {}

    async def code_execute_fn(code: str) -> dict[str, Any]:
        try:
            exec(code, namespace)
        except Exception as exc:  # the generated code sees a refusal as an exception, like any failing call
            return {"output": f"{type(exc).__name__}: {exc}"}
        return {"output": str(namespace.get("result"))}

    script = [
        "<execute>\nresult = search(q='policy')\n</execute>",
        "<execute>\nresult = delete_user(user_id=9)\n</execute>",
        "All done.",
    ]
    with LocalGovernor(home, policy=parse_policy_text(CODE_ACT_POLICY, source="codeact.yaml")) as governor:
        agent = CodeActAgent(
            code_execute_fn=code_execute_fn,
            tools=[rec.search, rec.delete_user],
            llm=ScriptedCodeActLLM(script=script),
        )
        govern_agent(agent, governor, actor=ACTOR)
        # The executor's namespace is built from the governed tools, as docs/integrations.md says to do.
        namespace.update({t.metadata.name: t.real_fn for t in agent.tools if t.metadata.name != "execute"})

        async def main() -> list[ToolCallResult]:
            handler = agent.run("Check the policy, then delete user 9.")
            results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
            await handler
            return results

        results = asyncio.run(main())
        assert [r.tool_name for r in results] == ["execute", "execute"]
        assert "GovernanceDenied" in results[1].tool_output.content and "delete_user" in results[1].tool_output.content
        assert rec.calls == [("search", {"q": "policy"})]  # delete_user's body never ran
        assert outcomes(governor) == [
            ("execute", "approved"),
            ("search", "approved"),
            ("execute", "approved"),
            ("delete_user", "denied"),
        ]
        assert decisions(governor)[0]["request"]["tool"] == "execute"
        assert governor.verify_ledger().valid


def test_govern_agent_refuses_a_tool_retriever_and_governs_a_workflow(governor: LocalGovernor, rec: Recorder) -> None:
    from llama_index.core.agent.workflow import AgentWorkflow

    from lexecon_integrations.llama_index import govern_agent

    picky = FunctionAgent(tools=[], llm=MockFunctionCallingLLM())
    picky.__dict__["tool_retriever"] = object()  # any retriever: what it would return is unknown in advance
    with pytest.raises(TypeError, match="tool_retriever"):
        govern_agent(picky, governor, actor=ACTOR)
    llm = MockFunctionCallingLLM()
    first = FunctionAgent(name="first", description="d", tools=[rec.search], llm=llm, can_handoff_to=["second"])
    second = FunctionAgent(name="second", description="d", tools=[rec.delete_user], llm=llm)
    workflow = AgentWorkflow(agents=[first, second], root_agent="first")
    assert govern_agent(workflow, governor, actor=ACTOR) is workflow
    assert all(isinstance(t, GovernedTool) for a in (first, second) for t in a.tools or [])


def test_a_tool_governed_for_one_actor_and_governed_again_decides_as_the_second(
    governor: LocalGovernor, rec: Recorder
) -> None:
    (first,) = govern_tools([rec.search], governor, actor=ACTOR)
    (second,) = govern_tools([first], governor, actor="ai_agent:other")
    assert second.call(q="x").content == "results for x"
    assert first.call(q="y").content == "results for y"
    assert [d["request"]["actor"] for d in decisions(governor)] == ["ai_agent:other", ACTOR]  # one decision each
