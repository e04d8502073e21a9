"""The OpenAI Agents SDK adapter: a tool input guardrail, plus wrappers that bind the capability to the tool body."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from agents import Agent, FunctionTool, ToolGuardrailFunctionOutput, ToolInputGuardrailData, tool_input_guardrail
from agents.tool_context import ToolContext
from agents.tool_guardrails import ToolInputGuardrail

from lexecon_core import GovernanceError, Governor
from lexecon_core.capability import current_capability, enter_capability, use_capability
from lexecon_integrations._intercept import CallDescriber, ToolCallGuard, Verdict, capability_mismatch, guard_for

OnDeny = Literal["reject", "raise"]
_GUARDRAIL_NAME = "lexecon"


def _parse_arguments(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    parsed = json.loads(raw)
    if not isinstance(parsed, dict):
        raise ValueError("tool arguments must be a JSON object")
    return parsed


def _output_info(verdict: Verdict) -> dict[str, Any]:
    decision = verdict.decision
    return {
        "tool": verdict.tool,
        "allowed": verdict.allowed,
        "outcome": decision.outcome.value if decision else "error",
        "decision_id": decision.decision_id if decision else None,
        "ledger_entry_id": decision.ledger_entry_id if decision else None,
        "reason": verdict.message or (decision.reasoning if decision else ""),
    }


def lexecon_tool_guardrail(
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
    on_deny: OnDeny = "reject",
) -> ToolInputGuardrail[Any]:
    """A tool input guardrail that decides each call with Lexecon.

    ``on_deny="reject"`` (default): the tool does not run, the model receives the reason as the tool's output, the
    run goes on. ``on_deny="raise"``: the run stops with ``ToolInputGuardrailTripwireTriggered``. Either way the
    decision is in ``output_info``. An approved call's capability is made current for the tool body.
    """
    return _guardrail(guard_for(governor, actor, context, describe), on_deny, None)


def _guardrail(guard: ToolCallGuard, on_deny: OnDeny, approved: _ApprovedCalls | None) -> ToolInputGuardrail[Any]:
    """The guardrail; with ``approved`` (shared with the bound tool bodies of :func:`govern_tools`), a call checked
    again before its body ran reuses its decision."""
    if on_deny not in ("reject", "raise"):
        raise ValueError("on_deny must be 'reject' or 'raise'")

    @tool_input_guardrail(name=_GUARDRAIL_NAME)
    async def lexecon_guardrail(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        name = data.context.tool_name
        try:
            args = _parse_arguments(data.context.tool_arguments)
        except ValueError as exc:
            verdict = Verdict(name, False, f"Lexecon refused tool '{name}': unreadable arguments ({exc})",
                              error=GovernanceError(f"unreadable arguments for tool {name!r}"))  # fmt: skip
        else:
            # The SDK may run the guardrail twice for one call (before a human approval and again after it, with
            # pre_approval_tool_input_guardrails): one call is one decision while its body has not run and its
            # capability still covers it. The bound body ends the reuse (see _bound_invoke).
            call_id = data.context.tool_call_id
            verdict = (approved and approved.get(call_id, name, args)) or await guard.acheck(name, args)
            if approved is not None:
                approved.put(call_id, verdict)
        # The SDK starts the tool body in a task created after this returns, so it inherits this context.
        enter_capability(verdict.capability)
        if verdict.allowed:
            return ToolGuardrailFunctionOutput.allow(output_info=_output_info(verdict))
        if on_deny == "raise":
            return ToolGuardrailFunctionOutput.raise_exception(output_info=_output_info(verdict))
        return ToolGuardrailFunctionOutput.reject_content(message=verdict.message, output_info=_output_info(verdict))

    return lexecon_guardrail


class _ApprovedCalls:
    """Approved verdicts by tool call id, until the call's body runs and only while their capability covers the
    call (tool, exact arguments, not expired). Bounded: the oldest go first."""

    _SIZE = 1024

    def __init__(self) -> None:
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, call_id: str | None, tool: str, args: Mapping[str, Any]) -> Verdict | None:
        with self._lock:
            verdict = self._verdicts.get(call_id) if call_id else None
        if verdict is None or capability_mismatch(verdict.capability, tool, args) is not None:
            return None
        return verdict

    def put(self, call_id: str | None, verdict: Verdict) -> None:
        if not call_id or verdict.capability is None:
            return
        with self._lock:
            self._verdicts[call_id] = verdict
            self._verdicts.move_to_end(call_id)
            while len(self._verdicts) > self._SIZE:
                self._verdicts.popitem(last=False)

    def ran(self, call_id: str | None) -> None:
        """The call's body is running: a later check of the same call id is a new call, decided afresh."""
        if call_id:
            with self._lock:
                self._verdicts.pop(call_id, None)


def _bound_invoke(
    name: str, invoke: Callable[[ToolContext[Any], str], Awaitable[Any]], approved: _ApprovedCalls
) -> Callable[[ToolContext[Any], str], Awaitable[Any]]:
    """Run the tool body only if the current capability covers exactly this call."""

    async def invoke_governed(ctx: ToolContext[Any], raw_arguments: str) -> Any:
        approved.ran(getattr(ctx, "tool_call_id", None))
        capability = current_capability()
        try:
            problem = capability_mismatch(capability, name, _parse_arguments(raw_arguments))
        except ValueError as exc:
            problem = f"unreadable arguments ({exc})"
        if problem is not None or capability is None:
            return f"Lexecon refused tool '{name}': {problem}; it was not run"
        with use_capability(capability):
            return await invoke(ctx, raw_arguments)

    invoke_governed.lexecon_inner = invoke  # type: ignore[attr-defined]  # re-governing binds the body, not this
    return invoke_governed


def govern_tools(
    tools: Iterable[Any],
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
    on_deny: OnDeny = "reject",
) -> list[FunctionTool]:
    """Copies of ``tools`` with the Lexecon guardrail attached and the body bound to the approved capability.

    Raises ``TypeError`` for a tool a function-tool guardrail cannot cover (hosted tools such as web search), so
    none is silently ungoverned. The original tools are not modified.
    """
    approved = _ApprovedCalls()
    guardrail = _guardrail(guard_for(governor, actor, context, describe), on_deny, approved)
    governed: list[FunctionTool] = []
    for tool in tools:
        if not isinstance(tool, FunctionTool):
            name = getattr(tool, "name", type(tool).__name__)
            raise TypeError(f"tool {name!r} is not a function tool; Lexecon guardrails cannot govern it")
        existing = [g for g in (tool.tool_input_guardrails or []) if g.get_name() != _GUARDRAIL_NAME]
        copy = dataclasses.replace(
            tool,
            tool_input_guardrails=[*existing, guardrail],
            on_invoke_tool=_bound_invoke(
                tool.name, getattr(tool.on_invoke_tool, "lexecon_inner", tool.on_invoke_tool), approved
            ),
        )
        # What the SDK sets on a tool besides its fields (an agent tool's agent, its identity) stays with the copy.
        fields = {f.name for f in dataclasses.fields(tool)}
        for name, value in vars(tool).items():
            if name not in fields:
                setattr(copy, name, value)
        governed.append(copy)
    return governed


def govern_agent(agent: Agent[Any], governor: Governor | ToolCallGuard, **options: Any) -> Agent[Any]:
    """A clone of ``agent`` whose tools are all governed (see :func:`govern_tools`), and so is every agent it can
    reach: the agents it hands off to (cloned) and the agents it exposes with ``Agent.as_tool`` (governed **in
    place**: the SDK's agent tool runs that very object), each once, cycles included. MCP servers get the Lexecon
    guardrail in their ``tool_input_guardrails`` (in place: a server is a shared connection), which the SDK copies
    onto every tool the server lists. Raises ``TypeError`` where something would escape governance: a custom
    ``Handoff`` object, an agent tool whose agent the SDK does not expose, or an MCP server without guardrail
    support."""
    guard = guard_for(governor, options.pop("actor", None), options.pop("context", None), options.pop("describe", None))
    return _Governing(guard, options).clone(agent)


class _Governing:
    """One govern_agent call: what was cloned and what was governed in place so far (each agent once)."""

    def __init__(self, guard: ToolCallGuard, options: dict[str, Any]) -> None:
        self.guard, self.options = guard, options
        self.guardrail = lexecon_tool_guardrail(guard, **options)
        self.cloned: dict[int, Agent[Any]] = {}
        self.in_place: set[int] = set()

    def clone(self, agent: Agent[Any]) -> Agent[Any]:
        if id(agent) in self.cloned:
            return self.cloned[id(agent)]
        governed = agent.clone(tools=[], handoffs=[])
        # Before recursing, so a handoff cycle ends here; and under its own id, since an agent governed in place
        # may already hand off to it.
        self.cloned[id(agent)] = self.cloned[id(governed)] = governed
        self._govern(agent, governed)
        return governed

    def govern_in_place(self, agent: Agent[Any]) -> None:
        if id(agent) in self.in_place:
            return
        self.in_place.add(id(agent))
        self._govern(agent, agent)

    def _govern(self, source: Agent[Any], target: Agent[Any]) -> None:
        for server in source.mcp_servers:
            self._govern_server(source, server)
        for tool in source.tools:
            inner = _agent_of(source, tool)
            if inner is not None:
                self.govern_in_place(inner)
        tools = govern_tools(source.tools, self.guard, **self.options)
        handoffs: list[Any] = []
        for handoff in source.handoffs:
            if not isinstance(handoff, Agent):
                raise TypeError(
                    f"agent {source.name!r} has a custom handoff {getattr(handoff, 'tool_name', handoff)!r} whose "
                    "agent Lexecon cannot govern in advance; hand off to Agent objects"
                )
            handoffs.append(self.clone(handoff))
        target.tools, target.handoffs = list(tools), handoffs

    def _govern_server(self, agent: Agent[Any], server: Any) -> None:
        if not hasattr(server, "tool_input_guardrails"):
            raise TypeError(
                f"agent {agent.name!r} uses MCP server {getattr(server, 'name', server)!r}, which takes no tool "
                "guardrails in this SDK version; Lexecon cannot govern its tools"
            )
        existing = [g for g in (server.tool_input_guardrails or []) if g.get_name() != _GUARDRAIL_NAME]
        server.tool_input_guardrails = [*existing, self.guardrail]


def _agent_of(owner: Agent[Any], tool: Any) -> Agent[Any] | None:
    """The agent behind an ``Agent.as_tool`` tool, or None for any other tool."""
    if not getattr(tool, "_is_agent_tool", False):
        return None
    inner = getattr(tool, "_agent_instance", None)
    if not isinstance(inner, Agent):
        raise TypeError(
            f"agent {owner.name!r} has agent tool {getattr(tool, 'name', tool)!r} whose agent this SDK version does "
            "not expose; Lexecon cannot govern that agent's tools"
        )
    return inner
