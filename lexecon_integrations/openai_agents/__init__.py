"""Lexecon for the OpenAI Agents SDK: a tool input guardrail, and a helper that governs every function tool.

Needs ``pip install 'lexecon[openai-agents]'``. Guardrails attach per tool, so prefer :func:`govern_tools` (or
:func:`govern_agent`): it attaches the guardrail to every function tool, refuses tools a guardrail cannot cover
(hosted tools), and binds each approved call's capability to the arguments the tool body receives.
"""

try:
    import agents  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("lexecon_integrations.openai_agents needs the SDK: pip install 'lexecon[openai-agents]'") from exc

from lexecon_integrations.openai_agents._guardrail import govern_agent, govern_tools, lexecon_tool_guardrail

__all__ = ["govern_agent", "govern_tools", "lexecon_tool_guardrail"]
