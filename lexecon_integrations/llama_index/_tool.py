"""``GovernedTool``: an ``AsyncBaseTool`` that asks Lexecon before delegating to the wrapped tool."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from llama_index.core.agent.workflow import AgentWorkflow
from llama_index.core.agent.workflow.base_agent import BaseWorkflowAgent
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
        self.wrapped = tool  # the tool as given: re-governing (another actor) wraps it, not this copy
        self.tool = adapt_to_async_tool(tool)
        self.guard = guard_for(governor, actor, context, describe)
        context_param = getattr(tool, "ctx_param_name", None) if getattr(tool, "requires_context", False) else None
        self._context_param: str | None = context_param
        if isinstance(self, GovernedFunctionTool) and isinstance(tool, FunctionTool):
            self._govern_functions(tool)

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


def _look_like(governed: Callable[..., Any], real: Callable[..., Any]) -> None:
    """``functools.wraps`` without ``__wrapped__`` (which would hand out the ungoverned function)."""
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(real, name):
            setattr(governed, name, getattr(real, name))
    with contextlib.suppress(TypeError, ValueError):  # a builtin or a callable without one: the generic stays
        governed.__signature__ = inspect.signature(real)  # type: ignore[attr-defined]


class GovernedFunctionTool(GovernedTool, FunctionTool):
    """A governed ``FunctionTool`` (made by ``GovernedTool(function_tool, ...)``); keeps ``requires_context``."""

    def _govern_functions(self, tool: FunctionTool) -> None:
        """The copy's ``fn``, ``async_fn`` and ``real_fn`` decide too: ``CodeActAgent`` puts ``real_fn`` into the
        namespace of the code it runs, and other code calls ``tool.fn(...)`` directly. They keep the function's
        name, signature and docstring (which CodeAct shows the model), raise on a refusal as a function would, and
        do not expose the raw function as ``__wrapped__``."""
        raw_fn, raw_async_fn, real = tool.fn, tool.async_fn, tool.real_fn

        def fn(*args: Any, **kwargs: Any) -> Any:
            verdict = self.guard.check(self.name, self._decided_args(args, kwargs))
            if verdict.capability is None:
                raise verdict.exception()
            with use_capability(verdict.capability):
                return raw_fn(*args, **kwargs)

        async def async_fn(*args: Any, **kwargs: Any) -> Any:
            verdict = await self.guard.acheck(self.name, self._decided_args(args, kwargs))
            if verdict.capability is None:
                raise verdict.exception()
            with use_capability(verdict.capability):
                return await raw_async_fn(*args, **kwargs)

        for governed in (fn, async_fn):
            _look_like(governed, real)
        self._fn, self._async_fn = fn, async_fn
        self._real_fn = async_fn if inspect.iscoroutinefunction(real) else fn


def govern_tools(
    tools: Iterable[BaseTool],
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
) -> list[GovernedTool]:
    """Wrap every tool of a list (one shared guard). Pass the result to ``FunctionAgent(tools=...)``. A tool that is
    already governed is governed afresh from the tool it wraps, for this call's actor (never wrapped twice)."""
    guard = guard_for(governor, actor, context, describe)
    return [GovernedTool(t.wrapped if isinstance(t, GovernedTool) else t, guard) for t in tools]


def govern_agent(
    agent: BaseWorkflowAgent | AgentWorkflow,
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
) -> BaseWorkflowAgent | AgentWorkflow:
    """Govern, in place, every tool of a workflow agent - or of every agent of an ``AgentWorkflow`` - and return it.

    Plain functions in ``tools`` become governed ``FunctionTool`` objects. A ``CodeActAgent``'s code-execution step (its
    ``execute`` tool) is decided like any tool, as ``execute`` with the argument ``code``. Raises ``TypeError`` for
    an agent that picks its tools at run time through a ``tool_retriever``: those cannot be governed in advance.
    """
    guard = guard_for(governor, actor, context, describe)
    agents = list(agent.agents.values()) if isinstance(agent, AgentWorkflow) else [agent]
    for member in agents:
        if member.tool_retriever is not None:
            raise TypeError(
                f"agent {member.name!r} picks its tools at run time through a tool_retriever, which Lexecon cannot "
                "govern in advance; give it tools from govern_tools(...) instead"
            )
    for member in agents:
        tools = [t if isinstance(t, BaseTool) else FunctionTool.from_defaults(t) for t in member.tools or []]
        member.tools = govern_tools(tools, guard)  # type: ignore[assignment]  # list invariance: GovernedTool is one
    return agent
