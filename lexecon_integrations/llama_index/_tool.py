"""``GovernedTool``: an ``AsyncBaseTool`` that asks Lexecon before delegating to the wrapped tool."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llama_index.core.tools import BaseTool, FunctionTool, ToolMetadata, ToolOutput, adapt_to_async_tool
from llama_index.core.tools.types import AsyncBaseTool

from lexecon_core import Governor
from lexecon_core.capability import use_capability
from lexecon_integrations._intercept import CallDescriber, ToolCallGuard, Verdict, call_args, guard_for


class GovernedTool(AsyncBaseTool):
    """Wraps any LlamaIndex tool. Subclasses ``AsyncBaseTool`` so agents call ``acall(**kwargs)`` on it directly
    (a plain ``BaseTool`` would be wrapped in an adapter that takes one positional input).

    Wrapping a ``FunctionTool`` gives a :class:`GovernedFunctionTool`, which is still a ``FunctionTool``: agents
    pass the workflow ``Context`` only to ``FunctionTool`` instances that ask for it.
    """

    def __new__(cls, tool: BaseTool, *args: Any, **kwargs: Any) -> GovernedTool:
        if cls is GovernedTool and isinstance(tool, FunctionTool):
            cls = GovernedFunctionTool
        return super().__new__(cls)

    def __init__(
        self,
        tool: BaseTool,
        governor: Governor | ToolCallGuard,
        *,
        actor: str | None = None,
        context: Mapping[str, Any] | None = None,
        describe: CallDescriber | None = None,
    ) -> None:
        if isinstance(self, FunctionTool):
            self.__dict__.update(tool.__dict__)  # FunctionTool's own state: context parameter, schema, callbacks
        self.tool = adapt_to_async_tool(tool)
        self.guard = guard_for(governor, actor, context, describe)
        context_param = getattr(tool, "ctx_param_name", None) if getattr(tool, "requires_context", False) else None
        self._context_param: str | None = context_param

    @property
    def metadata(self) -> ToolMetadata:
        return self.tool.metadata

    @property
    def name(self) -> str:
        return self.metadata.get_name()

    def _decided_args(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        # The workflow Context the agent injects is plumbing, not an argument the model chose.
        return call_args(args, {k: v for k, v in kwargs.items() if k != self._context_param})

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        call = self._decided_args(args, kwargs)
        verdict = self.guard.check(self.name, call)
        if verdict.capability is None:
            return self._refusal(verdict, args, kwargs)
        with use_capability(verdict.capability):
            return self.tool.call(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        call = self._decided_args(args, kwargs)
        verdict = await self.guard.acheck(self.name, call)
        if verdict.capability is None:
            return self._refusal(verdict, args, kwargs)
        with use_capability(verdict.capability):
            return await self.tool.acall(*args, **kwargs)

    def _refusal(self, verdict: Verdict, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> ToolOutput:
        return ToolOutput(
            content=verdict.message,
            tool_name=self.name,
            raw_input={"args": args, "kwargs": dict(kwargs)},
            raw_output=None,
            is_error=True,
            exception=verdict.exception(),
        )


class GovernedFunctionTool(GovernedTool, FunctionTool):
    """A governed ``FunctionTool`` (made by ``GovernedTool(function_tool, ...)``); keeps ``requires_context``."""


def govern_tools(
    tools: Iterable[BaseTool],
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
) -> list[GovernedTool]:
    """Wrap every tool of a list (one shared guard). Pass the result to ``FunctionAgent(tools=...)``."""
    guard = guard_for(governor, actor, context, describe)
    return [t if isinstance(t, GovernedTool) else GovernedTool(t, guard) for t in tools]
