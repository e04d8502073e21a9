"""Wrap a LangChain tool so the Lexecon guard runs inside ``invoke``/``ainvoke``, right before the tool body."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools.base import _handle_tool_error

from lexecon_core import Governor
from lexecon_core.capability import use_capability
from lexecon_integrations._intercept import CallDescriber, ToolCallGuard, Verdict, call_args, guard_for

OnDeny = Literal["message", "raise"]


class GovernanceToolException(ToolException):
    """Raised inside a governed tool when Lexecon refuses the call; LangChain turns it into an error ToolMessage."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


def _forward(method: Any, kwargs: dict[str, Any], config: RunnableConfig, run_manager: Any) -> dict[str, Any]:
    """Pass ``config``/``run_manager`` on only if the wrapped tool's own method takes them."""
    function = getattr(method, "__func__", method)
    try:
        takes_config, takes_run_manager = _takes(function)
    except TypeError:  # an unhashable callable: read its signature every time
        takes_config, takes_run_manager = _takes.__wrapped__(function)
    if takes_config:
        kwargs["config"] = config
    if takes_run_manager:
        kwargs["run_manager"] = run_manager
    return kwargs


@functools.lru_cache(maxsize=256)
def _takes(function: Any) -> tuple[bool, bool]:
    """Whether ``function`` accepts ``config`` and ``run_manager``; read once per function (every call used to pay
    for ``inspect.signature``)."""
    params = inspect.signature(function).parameters
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return "config" in params or takes_var_kw, "run_manager" in params or takes_var_kw


@functools.cache
def _governed_class(base: type[BaseTool]) -> type[BaseTool]:
    class Governed(base):  # type: ignore[valid-type,misc]
        def _run(self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> Any:
            if getattr(self, "func", True) is None and getattr(self, "coroutine", None) is not None:
                # An async-only tool cannot run on this path: say so before deciding, so no approval is recorded
                # (with a token issued) for a call that never happens.
                raise NotImplementedError(f"tool {self.name!r} is async-only: call it with ainvoke")
            verdict = self._lexecon_guard.check(self.name, call_args(args, kwargs))
            if verdict.capability is None:
                raise self._lexecon_refusal(verdict)
            with use_capability(verdict.capability):
                return super()._run(*args, **_forward(super()._run, kwargs, config, run_manager))

        async def _arun(self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> Any:
            verdict = await self._lexecon_guard.acheck(self.name, call_args(args, kwargs))
            if verdict.capability is None:
                raise self._lexecon_refusal(verdict)
            with use_capability(verdict.capability):
                return await super()._arun(*args, **_forward(super()._arun, kwargs, config, run_manager))

        def _lexecon_refusal(self, verdict: Verdict) -> Exception:
            if self._lexecon_on_deny == "raise":
                return verdict.exception()
            return GovernanceToolException(verdict)

    Governed.__name__ = Governed.__qualname__ = f"Governed{base.__name__}"
    for method in (Governed._run, Governed._arun):
        # LangChain reads these hints on every call (to find the RunnableConfig parameter); resolved once here, they
        # are not re-evaluated from their string form (this module's annotations are strings) each time.
        method.__annotations__ = typing.get_type_hints(method)
    return Governed


class _DenialsAsMessages:
    """``handle_tool_error`` for a governed copy: a Lexecon denial becomes the error ``ToolMessage`` the model reads,
    and the tool's own ``ToolException`` errors behave exactly as the tool's own setting says.

    LangChain asks ``if not self.handle_tool_error`` inside its ``except ToolException`` block, so the answer can
    depend on the exception being handled: true for a denial, the tool's own setting for anything else (falsy: the
    exception is re-raised through LangChain's usual path, ``on_tool_error`` callbacks included)."""

    __slots__ = ("original",)

    def __init__(self, original: Any) -> None:
        self.original = original

    def __bool__(self) -> bool:
        return isinstance(sys.exc_info()[1], GovernanceToolException) or bool(self.original)

    def __call__(self, error: ToolException) -> Any:
        if isinstance(error, GovernanceToolException):
            return error.verdict.message
        return _handle_tool_error(error, flag=self.original)

    def __repr__(self) -> str:
        return f"DenialsAsMessages({self.original!r})"


def govern_tool(
    tool: BaseTool,
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
    on_deny: OnDeny = "message",
) -> BaseTool:
    """A copy of ``tool`` whose every call is decided by Lexecon first; the original is left untouched. Given a
    governed copy, it governs the original tool again (for this actor), never the copy: one decision per call.

    ``on_deny="message"`` (default): a refused call raises a :class:`GovernanceToolException` that LangChain turns
    into an error ``ToolMessage`` for the model. The tool's own ``ToolException`` errors are handled as its own
    ``handle_tool_error`` says, unchanged.
    ``on_deny="raise"``: a refused call raises :class:`lexecon_core.GovernanceDenied` (or the governor's error) to
    the caller.
    """
    if on_deny not in ("message", "raise"):
        raise ValueError("on_deny must be 'message' or 'raise'")
    guard = guard_for(governor, actor, context, describe)
    original: BaseTool = getattr(tool, "_lexecon_original", tool)  # already governed: govern what it copied
    tool = original
    cls = _governed_class(type(tool))
    fields = {name: getattr(tool, name) for name in type(tool).model_fields}
    if on_deny == "message":
        fields["handle_tool_error"] = _DenialsAsMessages(fields.get("handle_tool_error"))
    governed = cls.model_construct(_fields_set=set(tool.model_fields_set), **fields)
    object.__setattr__(governed, "__pydantic_private__", dict(tool.__pydantic_private__ or {}))
    object.__setattr__(governed, "_lexecon_guard", guard)
    object.__setattr__(governed, "_lexecon_on_deny", on_deny)
    object.__setattr__(governed, "_lexecon_original", tool)
    return governed


def govern_tools(
    tools: Iterable[BaseTool],
    governor: Governor | ToolCallGuard,
    *,
    actor: str | None = None,
    context: Mapping[str, Any] | None = None,
    describe: CallDescriber | None = None,
    on_deny: OnDeny = "message",
) -> list[BaseTool]:
    """:func:`govern_tool` for every tool of a list, sharing one guard."""
    guard = guard_for(governor, actor, context, describe)
    return [govern_tool(t, guard, on_deny=on_deny) for t in tools]
