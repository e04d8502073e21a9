"""Lexecon for LlamaIndex: governed tools for ``FunctionAgent``, ``ReActAgent`` and direct calls.

Needs ``pip install 'lexecon[llama-index]'``. ``govern_tools(tools, governor, actor=...)`` returns tools to hand to
the agent; a refused call comes back as an error ``ToolOutput`` carrying the reason, which the agent shows the model.
``govern_agent(agent_or_workflow, governor, actor=...)`` governs an agent's tools in place, ``CodeActAgent``'s
code-execution step included. A governed ``FunctionTool``'s ``fn``, ``async_fn`` and ``real_fn`` decide as well.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("lexecon_integrations.llama_index needs LlamaIndex: pip install 'lexecon[llama-index]'") from exc

from lexecon_integrations.llama_index._tool import GovernedFunctionTool, GovernedTool, govern_agent, govern_tools

__all__ = ["GovernedFunctionTool", "GovernedTool", "govern_agent", "govern_tools"]
