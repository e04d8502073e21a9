"""A LangChain callback handler that stops denied tool calls before they run."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextvars import Token
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from lexecon_core import Capability, Governor
from lexecon_core.capability import enter_capability, exit_capability
from lexecon_integrations._intercept import CallDescriber, ToolCallGuard, guard_for, normalise_args


class LexeconCallbackHandler(BaseCallbackHandler):
    """Raises :class:`lexecon_core.GovernanceDenied` (or the governor's error) from ``on_tool_start`` so a denied
    tool never runs. Pass it in ``config={"callbacks": [handler]}`` or to the tool/agent.

    This is deliberately a *synchronous* handler: LangChain ignores exceptions from an ``AsyncCallbackHandler``'s
    ``on_tool_start`` and runs the tool anyway. It runs inline on async paths too (``run_inline``), so the exception
    reaches the caller and the capability is visible to the tool; the decision itself then blocks the event loop
    for about half a millisecond. For fully async agents prefer :class:`LexeconMiddleware`.

    A callback cannot turn a call into a message: a denial ends the whole agent run (``create_agent``, LangGraph's
    ``create_react_agent`` and ``ToolNode`` alike), the model never learns why, and LangChain logs "Error in
    LexeconCallbackHandler.on_tool_start callback". Where the model should read the denial and go on, use
    :class:`LexeconMiddleware` or ``govern_tools``.
    """

    raise_error = True
    run_inline = True

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
        self._active: dict[UUID, Token[Capability | None]] = {}
        self._lock = threading.Lock()

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "unknown_tool"
        args = inputs if inputs is not None else normalise_args(input_str)
        verdict = self.guard.check(name, args)
        if not verdict.allowed:
            refusal = verdict.exception()
            refusal.model_message = verdict.message  # what a ToolNode with handle_tool_errors shows the model
            raise refusal
        token = enter_capability(verdict.capability)
        with self._lock:
            self._active[run_id] = token

    def _finish(self, run_id: UUID) -> None:
        with self._lock:
            token = self._active.pop(run_id, None)
        if token is not None:
            exit_capability(token)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id)
