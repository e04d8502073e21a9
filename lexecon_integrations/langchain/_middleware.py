"""LangChain 1.x agent middleware: every tool call of a ``create_agent`` agent goes through Lexecon."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain.agents.middleware.types import ToolCallRequest
from langchain_core.messages import ToolMessage
from langgraph.types import Command

from lexecon_core import Governor
from lexecon_core.capability import use_capability
from lexecon_integrations._intercept import CallDescriber, ToolCallGuard, Verdict, guard_for

ToolResult = ToolMessage | Command[Any]


class LexeconMiddleware(AgentMiddleware):
    """``create_agent(model, tools, middleware=[LexeconMiddleware(governor, actor="ai_agent:bot")])``.

    Approved: the tool runs once, with its capability current (:func:`lexecon_core.current_capability`).
    Denied, escalated, or the governor failed: the tool does not run and the model gets an error ``ToolMessage``
    naming the tool and the reason; the run goes on. Put it last in ``middleware`` (innermost) so the arguments it
    decides on are the ones the tool receives. Parallel tool calls are decided one by one, each on its own thread.
    """

    def __init__(
        self,
        governor: Governor | ToolCallGuard,
        *,
        actor: str | None = None,
        context: Mapping[str, Any] | None = None,
        describe: CallDescriber | None = None,
    ) -> None:
        super().__init__()
        self.guard = guard_for(governor, actor, context, describe)

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]) -> ToolResult:
        call = request.tool_call
        verdict = self.guard.check(call["name"], call.get("args") or {})
        if verdict.capability is None:
            return _denial(call, verdict)
        with use_capability(verdict.capability):
            return handler(request)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
    ) -> ToolResult:
        call = request.tool_call
        verdict = await self.guard.acheck(call["name"], call.get("args") or {})
        if verdict.capability is None:
            return _denial(call, verdict)
        with use_capability(verdict.capability):
            return await handler(request)


def _denial(call: Mapping[str, Any], verdict: Verdict) -> ToolMessage:
    return ToolMessage(content=verdict.message, tool_call_id=call.get("id") or "", name=call["name"], status="error")
