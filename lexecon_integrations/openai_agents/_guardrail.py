"""The OpenAI Agents SDK adapter: a tool input guardrail, plus wrappers that bind the capability to the tool body."""

from __future__ import annotations

import dataclasses
import json
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
    if on_deny not in ("reject", "raise"):
        raise ValueError("on_deny must be 'reject' or 'raise'")
    guard = guard_for(governor, actor, context, describe)

    @tool_input_guardrail(name=_GUARDRAIL_NAME)
    async def lexecon_guardrail(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        name = data.context.tool_name
        try:
            args = _parse_arguments(data.context.tool_arguments)
        except ValueError as exc:
            verdict = Verdict(name, False, f"Lexecon refused tool '{name}': unreadable arguments ({exc})",
                              error=GovernanceError(f"unreadable arguments for tool {name!r}"))  # fmt: skip
        else:
            verdict = await guard.acheck(name, args)
        # The SDK starts the tool body in a task created after this returns, so it inherits this context.
        enter_capability(verdict.capability)
        if verdict.allowed:
            return ToolGuardrailFunctionOutput.allow(output_info=_output_info(verdict))
        if on_deny == "raise":
            return ToolGuardrailFunctionOutput.raise_exception(output_info=_output_info(verdict))
        return ToolGuardrailFunctionOutput.reject_content(message=verdict.message, output_info=_output_info(verdict))

    return lexecon_guardrail


def _bound_invoke(
    name: str, invoke: Callable[[ToolContext[Any], str], Awaitable[Any]]
) -> Callable[[ToolContext[Any], str], Awaitable[Any]]:
    """Run the tool body only if the current capability covers exactly this call."""

    async def invoke_governed(ctx: ToolContext[Any], raw_arguments: str) -> Any:
        capability = current_capability()
        try:
            problem = capability_mismatch(capability, name, _parse_arguments(raw_arguments))
        except ValueError as exc:
            problem = f"unreadable arguments ({exc})"
        if problem is not None or capability is None:
            return f"Lexecon refused tool '{name}': {problem}; it was not run"
        with use_capability(capability):
            return await invoke(ctx, raw_arguments)

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
    guardrail = lexecon_tool_guardrail(governor, actor=actor, context=context, describe=describe, on_deny=on_deny)
    governed: list[FunctionTool] = []
    for tool in tools:
        if not isinstance(tool, FunctionTool):
            name = getattr(tool, "name", type(tool).__name__)
            raise TypeError(f"tool {name!r} is not a function tool; Lexecon guardrails cannot govern it")
        existing = [g for g in (tool.tool_input_guardrails or []) if g.get_name() != _GUARDRAIL_NAME]
        governed.append(
            dataclasses.replace(
                tool,
                tool_input_guardrails=[*existing, guardrail],
                on_invoke_tool=_bound_invoke(tool.name, tool.on_invoke_tool),
            )
        )
    return governed


def govern_agent(agent: Agent[Any], governor: Governor | ToolCallGuard, **options: Any) -> Agent[Any]:
    """A clone of ``agent`` whose tools are all governed (see :func:`govern_tools`), and so are the tools of every
    agent it can hand off to (handoff cycles included). Raises ``TypeError`` where a tool would escape governance:
    an agent with MCP servers (their tools appear only at run time) or a custom ``Handoff`` object."""
    guard = guard_for(governor, options.pop("actor", None), options.pop("context", None), options.pop("describe", None))
    return _govern_agent(agent, guard, options, {})


def _govern_agent(
    agent: Agent[Any], guard: ToolCallGuard, options: dict[str, Any], done: dict[int, Agent[Any]]
) -> Agent[Any]:
    if id(agent) in done:
        return done[id(agent)]
    if agent.mcp_servers:
        raise TypeError(
            f"agent {agent.name!r} uses MCP servers, whose tools Lexecon cannot govern through function-tool "
            "guardrails; expose them as function tools"
        )
    governed = agent.clone(tools=govern_tools(agent.tools, guard, **options), handoffs=[])
    done[id(agent)] = governed  # before recursing, so a handoff cycle ends here
    handoffs: list[Any] = []
    for target in agent.handoffs:
        if not isinstance(target, Agent):
            raise TypeError(
                f"agent {agent.name!r} has a custom handoff {getattr(target, 'tool_name', target)!r} whose agent "
                "Lexecon cannot govern in advance; hand off to Agent objects"
            )
        handoffs.append(_govern_agent(target, guard, options, done))
    governed.handoffs = handoffs
    return governed
