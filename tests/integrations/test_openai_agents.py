"""OpenAI Agents SDK adapter: tool input guardrail, govern_tools/govern_agent, body binding - against a real ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("agents")

import agents
from agents import Agent, FunctionTool, Runner, RunResult, WebSearchTool, function_tool
from agents.exceptions import ToolInputGuardrailTripwireTriggered
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.tool_context import ToolContext
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from lexecon_core import LedgerError, LocalGovernor, TokenError, current_capability, verify_token
from lexecon_integrations._intercept import ToolCallGuard
from lexecon_integrations.openai_agents import govern_agent, govern_tools, lexecon_tool_guardrail

ACTOR = "ai_agent:test_bot"
FORBIDS = "forbids:agents->deletes"


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    agents.set_tracing_disabled(True)


# -- tools that record every real execution -----------------------------------------------------------------------


class Recorder:
    """Function tools (sync and async bodies) that record each execution and the capability current inside it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Any]] = []
        self.lock = threading.Lock()
        recorder = self

        @function_tool
        def search(q: str) -> str:
            """Search the knowledge base."""
            recorder._record("search", {"q": q})
            return f"results for {q}"

        @function_tool
        async def refund(order_id: int, amount_cents: int) -> str:
            """Refund an order."""
            await asyncio.sleep(0)  # let parallel calls interleave
            recorder._record("refund", {"order_id": order_id, "amount_cents": amount_cents})
            await asyncio.sleep(0)
            return f"refunded {amount_cents}"

        @function_tool
        def delete_user(user_id: int) -> str:
            """Delete a user."""
            recorder._record("delete_user", {"user_id": user_id})
            return "deleted"

        @function_tool
        async def delete_account(account_id: int) -> str:
            """Delete an account."""
            recorder._record("delete_account", {"account_id": account_id})
            return "deleted"

        self.search, self.refund, self.delete_user, self.delete_account = search, refund, delete_user, delete_account

    def _record(self, name: str, args: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((name, args, current_capability()))

    @property
    def tools(self) -> list[FunctionTool]:
        return [self.search, self.refund, self.delete_user, self.delete_account]

    def ran(self, name: str) -> int:
        return sum(1 for n, _, _ in self.calls if n == name)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def decisions(governor: LocalGovernor) -> list[dict[str, Any]]:
    return [e.data for e in governor.node.ledger.entries(entry_type="decision")]


# -- an offline scripted model ------------------------------------------------------------------------------------

Call = tuple[str, str, str]  # (tool name, raw JSON arguments, call id)


def call(name: str, args: dict[str, Any] | str, call_id: str) -> Call:
    return (name, args if isinstance(args, str) else json.dumps(args), call_id)


class ScriptedModel(Model):
    """Plays back turns: a list of tool calls (made in parallel in one response) or a final text message.

    Records the input of every request, so a test can read exactly what the model was shown as tool output.
    """

    def __init__(self, *turns: list[Call] | str) -> None:
        self.turns = list(turns)
        self.inputs: list[Any] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
        self.inputs.append(input)
        turn = self.turns.pop(0)
        output: list[Any]
        if isinstance(turn, str):
            output = [
                ResponseOutputMessage(
                    id="msg_final",
                    type="message",
                    role="assistant",
                    status="completed",
                    content=[ResponseOutputText(type="output_text", text=turn, annotations=[])],
                )
            ]
        else:
            output = [
                ResponseFunctionToolCall(type="function_call", call_id=cid, name=name, arguments=raw, id=f"fc_{cid}")
                for name, raw, cid in turn
            ]
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("this scripted model does not stream")

    def tool_outputs_seen(self) -> dict[str, str]:
        """call_id -> tool output, as sent to the model in the last request."""
        assert self.inputs, "the model was never called"
        last = self.inputs[-1]
        return {
            item["call_id"]: item["output"]
            for item in (last if isinstance(last, list) else [])
            if isinstance(item, dict) and item.get("type") == "function_call_output"
        }


def run(agent: Agent[Any], mode: str, prompt: str = "go") -> RunResult:
    if mode == "sync":
        return Runner.run_sync(agent, prompt)
    return asyncio.run(Runner.run(agent, prompt))


def output_infos(result: RunResult) -> list[dict[str, Any]]:
    return [r.output.output_info for r in result.tool_input_guardrail_results]


PARALLEL_TURN = [
    call("search", {"q": "refund policy"}, "c1"),
    call("refund", {"order_id": 5, "amount_cents": 250}, "c2"),
    call("delete_user", {"user_id": 9}, "c3"),
]


# -- the guarded run ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_parallel_calls_each_decided_and_the_run_continues(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    model = ScriptedModel(PARALLEL_TURN, "done")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR)
    result = run(agent, mode)

    assert result.final_output == "done"  # the run went on to the scripted answer
    assert rec.ran("search") == 1 and rec.ran("refund") == 1
    assert rec.ran("delete_user") == 0  # the forbidden body never ran

    seen = model.tool_outputs_seen()
    assert set(seen) == {"c1", "c2", "c3"}
    assert seen["c1"] == "results for refund policy"
    assert seen["c2"] == "refunded 250"
    assert "Lexecon denied tool 'delete_user'" in seen["c3"]
    assert FORBIDS in seen["c3"]
    assert "Traceback" not in seen["c3"]
    items = {i.raw_item["call_id"]: i.output for i in result.new_items if i.type == "tool_call_output_item"}
    assert "Lexecon denied tool 'delete_user'" in items["c3"]

    recorded = sorted((d["request"]["tool"], d["outcome"]) for d in decisions(governor))
    assert recorded == [("delete_user", "denied"), ("refund", "approved"), ("search", "approved")]
    report = governor.verify_ledger()
    assert report.valid and report.entries_verified >= 3


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_output_info_carries_the_decision(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    agent = govern_agent(Agent(name="bot", model=ScriptedModel(PARALLEL_TURN, "done"), tools=rec.tools), governor,
                         actor=ACTOR)  # fmt: skip
    result = run(agent, mode)
    infos = {info["tool"]: info for info in output_infos(result)}
    assert set(infos) == {"search", "refund", "delete_user"}
    by_id = {d["decision_id"]: d for d in decisions(governor)}
    seqs = {e.data["decision_id"]: e.seq for e in governor.node.ledger.entries(entry_type="decision")}
    for tool in ("search", "refund"):
        info = infos[tool]
        assert info["allowed"] is True and info["outcome"] == "approved"
        assert info["decision_id"] in by_id and by_id[info["decision_id"]]["request"]["tool"] == tool
        assert info["ledger_entry_id"] == seqs[info["decision_id"]]
    denied = infos["delete_user"]
    assert denied["allowed"] is False and denied["outcome"] == "denied"
    assert by_id[denied["decision_id"]]["outcome"] == "denied"
    assert FORBIDS in denied["reason"]
    # the recorded capability is the one the guardrail reported
    assert {c.decision_id for _, _, c in rec.calls} == {infos["search"]["decision_id"], infos["refund"]["decision_id"]}


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_raise_mode_stops_the_run(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    model = ScriptedModel([call("delete_user", {"user_id": 9}, "c1")], "never reached")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR, on_deny="raise")
    with pytest.raises(ToolInputGuardrailTripwireTriggered) as tripped:
        run(agent, mode)
    assert rec.ran("delete_user") == 0
    info = tripped.value.output.output_info
    assert info["outcome"] == "denied" and info["allowed"] is False
    assert info["decision_id"] == decisions(governor)[0]["decision_id"]
    assert "Lexecon denied tool 'delete_user'" in info["reason"]
    assert len(model.inputs) == 1  # the model was not asked again


def test_raise_mode_still_runs_allowed_calls(governor: LocalGovernor, rec: Recorder) -> None:
    model = ScriptedModel([call("search", {"q": "x"}, "c1")], "ok")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR, on_deny="raise")
    assert Runner.run_sync(agent, "go").final_output == "ok"
    assert rec.ran("search") == 1


# -- the capability inside the tool body --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_each_parallel_call_sees_its_own_capability(governor: LocalGovernor, rec: Recorder, mode: str) -> None:
    turn = [
        call("search", {"q": "alpha"}, "c1"),
        call("search", {"q": "beta"}, "c2"),
        call("refund", {"order_id": 1, "amount_cents": 10}, "c3"),
        call("refund", {"order_id": 2, "amount_cents": 20}, "c4"),
    ]
    agent = govern_agent(Agent(name="bot", model=ScriptedModel(turn, "done"), tools=rec.tools), governor, actor=ACTOR)
    result = run(agent, mode)
    assert result.final_output == "done"
    assert len(rec.calls) == 4
    ledger = {d["decision_id"]: d for d in decisions(governor)}
    for name, args, capability in rec.calls:
        assert capability is not None, f"{name} ran without a current capability"
        assert capability.tool == name
        claims = verify_token(capability.token, keys=governor.public_keys, tool=name, args=args, replay_cache=None)
        assert claims.decision_id == capability.decision_id
        assert ledger[capability.decision_id]["request"]["args_sha256"] == claims.args_sha256
    assert len({c.decision_id for _, _, c in rec.calls}) == 4  # four calls, four distinct capabilities
    name, args, capability = next(c for c in rec.calls if c[0] == "search" and c[1] == {"q": "alpha"})
    with pytest.raises(TokenError) as wrong:
        verify_token(capability.token, keys=governor.public_keys, tool="search", args={"q": "beta"}, replay_cache=None)
    assert wrong.value.reason == "args_mismatch"
    assert current_capability() is None  # nothing leaked to the caller


# -- escalation and failure ---------------------------------------------------------------------------------------


def test_escalation_is_reported_to_the_model(governor: LocalGovernor, rec: Recorder) -> None:
    model = ScriptedModel([call("refund", {"order_id": 1, "amount_cents": 1}, "c1")], "ok")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR,
                         describe=lambda name, args: {"risk_level": "critical"})  # fmt: skip
    result = Runner.run_sync(agent, "refund")
    assert result.final_output == "ok"
    message = model.tool_outputs_seen()["c1"]
    assert "Lexecon: tool 'refund' awaits human approval (escalation esc_" in message
    assert rec.ran("refund") == 0
    assert [d["outcome"] for d in decisions(governor)] == ["escalated"]
    assert output_infos(result)[0]["outcome"] == "escalated"


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_fails_closed_when_the_ledger_is_down(
    governor: LocalGovernor, rec: Recorder, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise LedgerError("ledger write failed: database is locked")

    monkeypatch.setattr(governor.node.ledger, "append", down)
    model = ScriptedModel([call("search", {"q": "x"}, "c1")], "ok")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR)
    result = run(agent, mode)
    message = model.tool_outputs_seen()["c1"]
    assert "Lexecon could not decide on tool 'search', so it was not run" in message
    assert "database is locked" in message
    assert rec.ran("search") == 0
    assert output_infos(result)[0]["outcome"] == "error"
    assert output_infos(result)[0]["decision_id"] is None


def test_a_failing_describe_fails_closed(governor: LocalGovernor, rec: Recorder) -> None:
    def describe(name: str, args: Any) -> dict[str, Any]:
        raise RuntimeError("classifier offline")

    model = ScriptedModel([call("search", {"q": "x"}, "c1")], "ok")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR, describe=describe)
    assert Runner.run_sync(agent, "go").final_output == "ok"
    message = model.tool_outputs_seen()["c1"]
    assert "Lexecon could not decide on tool 'search', so it was not run" in message
    assert "internal error (RuntimeError)" in message
    assert "classifier offline" not in message and "Traceback" not in message  # no internals for the model
    assert rec.calls == [] and decisions(governor) == []


def test_malformed_arguments_are_refused(governor: LocalGovernor, rec: Recorder) -> None:
    model = ScriptedModel([call("search", "not json", "c1"), call("refund", "[1, 2]", "c2")], "ok")
    agent = govern_agent(Agent(name="bot", model=model, tools=rec.tools), governor, actor=ACTOR)
    result = Runner.run_sync(agent, "go")
    assert rec.calls == []
    seen = model.tool_outputs_seen()
    assert "Lexecon refused tool 'search': unreadable arguments" in seen["c1"]
    assert "Lexecon refused tool 'refund': unreadable arguments" in seen["c2"]
    assert decisions(governor) == []  # nothing to decide on
    assert {info["outcome"] for info in output_infos(result)} == {"error"}
    assert result.final_output == "ok"


def test_plain_guardrail_on_a_function_tool(governor: LocalGovernor) -> None:
    """lexecon_tool_guardrail attached by hand (no govern_tools), from a ready ToolCallGuard."""
    seen: list[Any] = []
    guard = ToolCallGuard(governor, actor=ACTOR)
    guardrail = lexecon_tool_guardrail(guard)

    @function_tool(tool_input_guardrails=[guardrail])
    async def refund(order_id: int, amount_cents: int) -> str:
        """Refund an order."""
        seen.append(current_capability())
        return "refunded"

    @function_tool(tool_input_guardrails=[guardrail])
    def delete_user(user_id: int) -> str:
        """Delete a user."""
        seen.append("delete_user ran")
        return "deleted"

    turn = [call("refund", {"order_id": 3, "amount_cents": 30}, "c1"), call("delete_user", {"user_id": 1}, "c2")]
    model = ScriptedModel(turn, "ok")
    result = Runner.run_sync(Agent(name="bot", model=model, tools=[refund, delete_user]), "go")
    assert result.final_output == "ok"
    assert len(seen) == 1 and seen[0] is not None and seen[0].tool == "refund"
    verify_token(seen[0].token, keys=governor.public_keys, tool="refund", args={"order_id": 3, "amount_cents": 30},
                 replay_cache=None)  # fmt: skip
    assert "Lexecon denied tool 'delete_user'" in model.tool_outputs_seen()["c2"]


# -- the body-binding wrapper -------------------------------------------------------------------------------------


def tool_context(name: str, raw_arguments: str, call_id: str = "direct_1") -> ToolContext[Any]:
    return ToolContext(context=None, tool_name=name, tool_call_id=call_id, tool_arguments=raw_arguments)


def test_body_refuses_without_a_capability(governor: LocalGovernor, rec: Recorder) -> None:
    (search,) = govern_tools([rec.search], governor, actor=ACTOR)
    raw = json.dumps({"q": "x"})
    output = asyncio.run(search.on_invoke_tool(tool_context("search", raw), raw))
    assert "Lexecon refused tool 'search'" in output
    assert "no capability was granted" in output
    assert rec.calls == []


def test_body_refuses_a_capability_for_other_arguments(governor: LocalGovernor, rec: Recorder) -> None:
    """A guardrail approves one call; the body is then invoked with other arguments (or another tool)."""
    search, refund = govern_tools([rec.search, rec.refund], governor, actor=ACTOR)
    guardrail = search.tool_input_guardrails[-1]
    approved = json.dumps({"q": "harmless"})
    smuggled = json.dumps({"q": "everything"})

    async def scenario() -> list[Any]:
        data = agents.ToolInputGuardrailData(context=tool_context("search", approved), agent=Agent(name="bot"))
        verdict = await guardrail.run(data)
        assert verdict.behavior["type"] == "allow"
        # the guardrail made the capability current in this task: the body runs only for the approved call
        other_args = await search.on_invoke_tool(tool_context("search", smuggled), smuggled)
        other_tool = await refund.on_invoke_tool(
            tool_context("refund", '{"order_id": 1, "amount_cents": 1}'), '{"order_id": 1, "amount_cents": 1}'
        )
        bad_json = await search.on_invoke_tool(tool_context("search", "not json"), "not json")
        exact = await search.on_invoke_tool(tool_context("search", approved), approved)
        return [other_args, other_tool, bad_json, exact]

    other_args, other_tool, bad_json, exact = asyncio.run(scenario())
    assert "Lexecon refused tool 'search'" in other_args and "different arguments" in other_args
    assert "Lexecon refused tool 'refund'" in other_tool and "'search'" in other_tool
    assert "Lexecon refused tool 'search'" in bad_json and "unreadable arguments" in bad_json
    assert exact == "results for harmless"
    assert [(n, a) for n, a, _ in rec.calls] == [("search", {"q": "harmless"})]


# -- govern_tools / govern_agent ----------------------------------------------------------------------------------


def test_govern_tools_refuses_hosted_tools(governor: LocalGovernor, rec: Recorder) -> None:
    with pytest.raises(TypeError, match="not a function tool"):
        govern_tools([rec.search, WebSearchTool()], governor, actor=ACTOR)
    with pytest.raises(TypeError, match="not a function tool"):
        govern_agent(Agent(name="bot", tools=[WebSearchTool()]), governor, actor=ACTOR)


def test_govern_tools_leaves_the_originals_alone(governor: LocalGovernor, rec: Recorder) -> None:
    own = agents.tool_input_guardrail(lambda data: agents.ToolGuardrailFunctionOutput.allow())
    tagged = dataclasses.replace(rec.search, tool_input_guardrails=[own])
    originals = [tagged, rec.refund]
    before = [(t.tool_input_guardrails, t.on_invoke_tool) for t in originals]
    governed = govern_tools(originals, governor, actor=ACTOR)
    assert [(t.tool_input_guardrails, t.on_invoke_tool) for t in originals] == before
    assert tagged.tool_input_guardrails == [own] and not rec.refund.tool_input_guardrails
    assert [t.name for t in governed] == ["search", "refund"]
    assert governed[0].tool_input_guardrails[0] is own  # existing guardrails are kept, ours appended
    assert [g.get_name() for g in governed[0].tool_input_guardrails] == [own.get_name(), "lexecon"]
    # the original still runs ungoverned, straight to its body
    raw = json.dumps({"q": "plain"})
    assert asyncio.run(rec.search.on_invoke_tool(tool_context("search", raw), raw)) == "results for plain"
    assert decisions(governor) == []


def test_regoverning_does_not_attach_twice(governor: LocalGovernor, rec: Recorder) -> None:
    once = govern_tools([rec.search], governor, actor=ACTOR)
    twice = govern_tools(once, governor, actor=ACTOR)
    assert [g.get_name() for g in twice[0].tool_input_guardrails] == ["lexecon"]
    model = ScriptedModel([call("search", {"q": "x"}, "c1")], "ok")
    result = Runner.run_sync(Agent(name="bot", model=model, tools=twice), "go")
    assert result.final_output == "ok"
    assert rec.ran("search") == 1
    assert len(decisions(governor)) == 1  # decided once, not twice


def test_govern_agent_returns_a_governed_clone(governor: LocalGovernor, rec: Recorder) -> None:
    original = Agent(name="bot", instructions="be careful", model=ScriptedModel(PARALLEL_TURN, "done"), tools=rec.tools)
    governed = govern_agent(original, governor, actor=ACTOR)
    assert governed is not original
    assert governed.name == "bot" and governed.instructions == "be careful" and governed.model is original.model
    assert original.tools == rec.tools
    assert all(not t.tool_input_guardrails for t in original.tools)
    assert [t.name for t in governed.tools] == [t.name for t in rec.tools]
    assert all([g.get_name() for g in t.tool_input_guardrails] == ["lexecon"] for t in governed.tools)


def test_ungoverned_agent_runs_everything(governor: LocalGovernor, rec: Recorder) -> None:
    """Control: the same script without Lexecon runs the forbidden tool - so the tests above are meaningful."""
    Runner.run_sync(Agent(name="bot", model=ScriptedModel(PARALLEL_TURN, "done"), tools=rec.tools), "go")
    assert rec.ran("delete_user") == 1
    assert all(c is None for _, _, c in rec.calls)


def test_guardrail_options_are_checked(governor: LocalGovernor) -> None:
    with pytest.raises(ValueError, match="on_deny"):
        lexecon_tool_guardrail(governor, actor=ACTOR, on_deny="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="actor"):
        lexecon_tool_guardrail(governor)
    with pytest.raises(TypeError, match="Governor"):
        govern_tools([], object(), actor=ACTOR)  # type: ignore[arg-type]


# -- known gaps: tools that run in a governed agent's run without a decision ----------------------------------------


def test_govern_agent_does_not_leave_mcp_tools_ungoverned(governor: LocalGovernor, rec: Recorder) -> None:
    pytest.importorskip("mcp")
    from agents.mcp import MCPServer
    from mcp.types import CallToolResult, TextContent
    from mcp.types import Tool as MCPTool

    called: list[Any] = []

    class FakeServer(MCPServer):
        @property
        def name(self) -> str:
            return "fake"

        async def connect(self) -> None: ...

        async def cleanup(self) -> None: ...

        async def list_tools(self, run_context: Any = None, agent: Any = None) -> list[MCPTool]:
            schema = {"type": "object", "properties": {"user_id": {"type": "integer"}}}
            return [MCPTool(name="delete_user", description="Delete a user.", inputSchema=schema)]

        async def call_tool(self, tool_name: str, arguments: Any, meta: Any = None) -> CallToolResult:
            called.append((tool_name, arguments))
            return CallToolResult(content=[TextContent(type="text", text="deleted")])

        async def list_prompts(self) -> Any:
            raise NotImplementedError

        async def get_prompt(self, name: str, arguments: Any = None) -> Any:
            raise NotImplementedError

    model = ScriptedModel([call("delete_user", {"user_id": 1}, "c1")], "ok")
    original = Agent(name="bot", model=model, tools=[rec.search], mcp_servers=[FakeServer()])
    try:
        agent = govern_agent(original, governor, actor=ACTOR)
    except (TypeError, ValueError):
        return  # refusing an agent whose MCP tools it cannot bind is correct too
    Runner.run_sync(agent, "go")
    assert called == []  # a forbidden MCP tool must not run
    assert [d["outcome"] for d in decisions(governor)] == ["denied"]


def test_govern_agent_does_not_leave_handoff_tools_ungoverned(governor: LocalGovernor, rec: Recorder) -> None:
    specialist = Agent(name="specialist", model=ScriptedModel([call("delete_user", {"user_id": 2}, "c2")], "done"),
                       tools=[rec.delete_user])  # fmt: skip
    original = Agent(name="bot", model=ScriptedModel([call("transfer_to_specialist", {}, "h1")], "never"),
                     tools=[rec.search], handoffs=[specialist])  # fmt: skip
    try:
        agent = govern_agent(original, governor, actor=ACTOR)
    except (TypeError, ValueError):
        return  # refusing an agent with ungoverned handoffs is correct too
    Runner.run_sync(agent, "go")
    assert rec.ran("delete_user") == 0  # the forbidden tool must not run after the handoff


def test_govern_agent_follows_handoff_cycles_and_leaves_originals(governor: LocalGovernor, rec: Recorder) -> None:
    first = Agent(name="first", tools=[rec.search])
    second = Agent(name="second", tools=[rec.delete_user], handoffs=[first])
    first.handoffs = [second]
    governed = govern_agent(first, governor, actor=ACTOR)
    (governed_second,) = governed.handoffs
    assert governed_second.name == "second" and governed_second is not second
    assert governed_second.handoffs == [governed]  # the cycle closes on the governed clone
    assert all(t.tool_input_guardrails for t in governed.tools + governed_second.tools)
    assert not rec.delete_user.tool_input_guardrails  # originals untouched
    assert first.handoffs == [second] and second.handoffs == [first]


# -- every agent a governed agent can reach: agents as tools, cycles, MCP servers -----------------------------------

REACH_POLICY = """
name: reach
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: allowed, term_type: tool, value: "search*"}
  - {term_id: ask, term_type: tool, value: "ask_*"}
  - {term_id: deletes, term_type: tool, value: "delete_*"}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: allowed}
  - {relation_type: permits, source_term_id: agents, target_term_id: ask}
  - {relation_type: forbids, source_term_id: agents, target_term_id: deletes}
"""


@pytest.fixture
def reach_governor(home: Any) -> Any:
    from lexecon_core.policy import parse_policy_text

    with LocalGovernor(home, policy=parse_policy_text(REACH_POLICY, source="reach.yaml")) as gov:
        yield gov


def test_an_agent_exposed_as_a_tool_runs_its_own_tools_governed(reach_governor: LocalGovernor, rec: Recorder) -> None:
    sub = Agent(
        name="sub",
        model=ScriptedModel(
            [call("delete_user", {"user_id": 4}, "s1")], [call("search", {"q": "y"}, "s2")], "sub done"
        ),
        tools=[rec.delete_user, rec.search],
    )
    parent = Agent(
        name="parent",
        model=ScriptedModel([call("ask_sub", {"input": "clean up"}, "p1")], "parent done"),
        tools=[sub.as_tool(tool_name="ask_sub", tool_description="Ask the sub-agent.")],
    )
    result = Runner.run_sync(govern_agent(parent, reach_governor, actor=ACTOR), "go")
    assert result.final_output == "parent done"
    assert rec.ran("delete_user") == 0 and rec.ran("search") == 1  # the sub-agent's forbidden tool never ran
    assert [(d["request"]["tool"], d["outcome"]) for d in decisions(reach_governor)] == [
        ("ask_sub", "approved"),
        ("delete_user", "denied"),
        ("search", "approved"),
    ]
    assert all(g.get_name() == "lexecon" for t in sub.tools for g in t.tool_input_guardrails)  # governed in place
    assert reach_governor.verify_ledger().valid


def test_govern_agent_reaches_agents_as_tools_through_cycles_once_each(
    reach_governor: LocalGovernor, rec: Recorder
) -> None:
    inner = Agent(name="inner", tools=[rec.delete_user])
    sub = Agent(name="sub", tools=[rec.search, inner.as_tool(tool_name="ask_inner", tool_description="d")])
    parent = Agent(name="parent", tools=[sub.as_tool(tool_name="ask_sub", tool_description="d")], handoffs=[sub])
    sub.handoffs = [parent]  # a cycle through a handoff
    inner.tools.append(sub.as_tool(tool_name="ask_sub_again", tool_description="d"))  # and through agent tools
    governed = govern_agent(parent, reach_governor, actor=ACTOR)
    for agent in (inner, sub):  # reached as tools: governed in place, each tool once
        assert all([g.get_name() for g in t.tool_input_guardrails] == ["lexecon"] for t in agent.tools)
    assert governed.handoffs[0].handoffs[0] is governed  # the handoff cycle closes on the clone
    assert [t.name for t in governed.tools] == ["ask_sub"]
    assert getattr(governed.tools[0], "_agent_instance", None) is sub  # the SDK's agent tool keeps its agent


def test_an_agent_tool_whose_agent_is_hidden_is_refused(reach_governor: LocalGovernor, rec: Recorder) -> None:
    hidden = Agent(name="sub", tools=[rec.delete_user]).as_tool(tool_name="ask_sub", tool_description="d")
    del hidden._agent_instance  # type: ignore[attr-defined]  # as an SDK version that does not expose it
    with pytest.raises(TypeError, match="cannot govern"):
        govern_agent(Agent(name="parent", tools=[hidden]), reach_governor, actor=ACTOR)


MCP_SERVER = """
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

marker = Path(sys.argv[1])
server = MCPServer("records")


@server.tool()
def search_docs(query: str) -> str:
    \"\"\"Search the documentation.\"\"\"
    return f"docs about {query}"


@server.tool()
def delete_records(table: str) -> str:
    \"\"\"Delete every record of a table.\"\"\"
    with marker.open("a") as handle:
        handle.write(table + "\\n")
    return "deleted"


server.run("stdio")
"""


def mcp_scenario(script: Any, marker: Any, model: ScriptedModel, govern: Any) -> Any:
    import sys

    from agents.mcp import MCPServerStdio

    async def scenario() -> Any:
        params = {"command": sys.executable, "args": [str(script), str(marker)]}
        async with MCPServerStdio(params=params, name="records", client_session_timeout_seconds=30) as server:
            return await Runner.run(govern(Agent(name="bot", model=model, mcp_servers=[server])), "go")

    return asyncio.run(scenario())


def test_an_ungoverned_mcp_server_runs_the_forbidden_tool(tmp_path: Any) -> None:
    """Control for the test below: without Lexecon the forbidden handler does run (so its absence there means it)."""
    pytest.importorskip("mcp.server.mcpserver")
    script, marker = tmp_path / "server.py", tmp_path / "deleted.txt"
    script.write_text(MCP_SERVER)
    model = ScriptedModel([call("delete_records", {"table": "users"}, "m1")], "done")
    assert mcp_scenario(script, marker, model, lambda agent: agent).final_output == "done"
    assert marker.read_text() == "users\n"


def test_mcp_server_tools_are_governed_in_the_server_process(
    reach_governor: LocalGovernor, rec: Recorder, tmp_path: Any
) -> None:
    pytest.importorskip("mcp.server.mcpserver")
    script, marker = tmp_path / "server.py", tmp_path / "deleted.txt"
    script.write_text(MCP_SERVER)
    model = ScriptedModel(
        [call("search_docs", {"query": "refunds"}, "m1")], [call("delete_records", {"table": "users"}, "m2")], "done"
    )
    result = mcp_scenario(script, marker, model, lambda agent: govern_agent(agent, reach_governor, actor=ACTOR))
    assert result.final_output == "done"
    assert not marker.exists()  # delete_records' handler never ran inside the MCP server
    outputs = [
        json.dumps(i) for i in model.inputs[-1] if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]
    assert any("docs about refunds" in o for o in outputs)  # the allowed MCP tool ran and answered
    assert any("Lexecon denied tool 'delete_records'" in o for o in outputs)
    assert [(d["request"]["tool"], d["outcome"]) for d in decisions(reach_governor)] == [
        ("search_docs", "approved"),
        ("delete_records", "denied"),
    ]


def test_a_tool_governed_again_for_another_actor_decides_as_that_actor(governor: LocalGovernor, rec: Recorder) -> None:
    (first,) = govern_tools([rec.search], governor, actor=ACTOR)
    (second,) = govern_tools([first], governor, actor="ai_agent:other")
    assert second.on_invoke_tool.lexecon_inner is rec.search.on_invoke_tool  # type: ignore[attr-defined]  # bound once
    model = ScriptedModel([call("search", {"q": "x"}, "c1")], "ok")
    assert Runner.run_sync(Agent(name="bot", model=model, tools=[second]), "go").final_output == "ok"
    assert rec.ran("search") == 1
    assert [d["request"]["actor"] for d in decisions(governor)] == ["ai_agent:other"]


def test_one_decision_per_call_when_guardrails_also_run_before_a_human_approval(
    governor: LocalGovernor, rec: Recorder
) -> None:
    from agents import RunConfig, ToolExecutionConfig

    (search,) = govern_tools([dataclasses.replace(rec.search, needs_approval=True)], governor, actor=ACTOR)
    agent = Agent(name="bot", model=ScriptedModel([call("search", {"q": "x"}, "c1")], "ok"), tools=[search])
    config = RunConfig(tool_execution=ToolExecutionConfig(pre_approval_tool_input_guardrails=True))

    async def scenario() -> Any:
        paused = await Runner.run(agent, "go", run_config=config)
        assert paused.interruptions and rec.ran("search") == 0  # waits for the human
        state = paused.to_state()
        for item in state.get_interruptions():
            state.approve(item)
        return await Runner.run(agent, state, run_config=config)

    assert asyncio.run(scenario()).final_output == "ok"
    assert rec.ran("search") == 1
    assert [d["outcome"] for d in decisions(governor)] == ["approved"]  # checked twice, decided once
    assert rec.calls[0][2] is not None and rec.calls[0][2].decision_id == decisions(governor)[0]["decision_id"]


def test_a_call_id_seen_again_after_its_body_ran_is_a_new_decision(governor: LocalGovernor, rec: Recorder) -> None:
    (search,) = govern_tools([rec.search], governor, actor=ACTOR)
    for _ in range(2):  # a model that repeats call ids: each call still gets its own decision and entry
        model = ScriptedModel([call("search", {"q": "x"}, "same_id")], "ok")
        assert Runner.run_sync(Agent(name="bot", model=model, tools=[search]), "go").final_output == "ok"
    assert rec.ran("search") == 2
    assert [d["outcome"] for d in decisions(governor)] == ["approved", "approved"]
    assert len({c.decision_id for _, _, c in rec.calls}) == 2
