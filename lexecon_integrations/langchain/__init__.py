"""Lexecon for LangChain: a callback handler, LangChain 1.x agent middleware, and a tool wrapper.

Needs ``pip install 'lexecon[langchain]'``. Which to use:

- :class:`LexeconMiddleware` - the idiomatic LangChain 1.x path (``create_agent(..., middleware=[...])``): a denied
  call becomes an error ``ToolMessage`` the model reads, and the run goes on.
- :func:`govern_tool` - wraps one tool, wherever it is used; a denial is a tool error the model reads.
- :class:`LexeconCallbackHandler` - for code that passes callbacks: a denied call raises
  :class:`lexecon_core.GovernanceDenied` before the tool runs, on ``invoke`` and ``ainvoke`` alike.
"""

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("lexecon_integrations.langchain needs LangChain: pip install 'lexecon[langchain]'") from exc

from lexecon_integrations.langchain._callback import LexeconCallbackHandler
from lexecon_integrations.langchain._middleware import LexeconMiddleware
from lexecon_integrations.langchain._tool import govern_tool, govern_tools

__all__ = ["LexeconCallbackHandler", "LexeconMiddleware", "govern_tool", "govern_tools"]
