"""The capability of the tool call that is running now.

While a governed tool runs, its capability token (and the verified claims) sit in a context variable, so the tool -
or a service it calls - can check it: ``verify_token(current_capability().token, tool=..., args=...)``. Context
variables follow threads started with ``contextvars.copy_context()`` and asyncio tasks, as the frameworks use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from lexecon_core.tokens import CapabilityClaims

__all__ = ["Capability", "current_capability", "enter_capability", "exit_capability", "use_capability"]


@dataclass(frozen=True, slots=True)
class Capability:
    """An approved call's capability: the compact JWS and the claims it was verified to carry."""

    token: str
    claims: CapabilityClaims

    @property
    def tool(self) -> str:
        return self.claims.tool

    @property
    def decision_id(self) -> str:
        return self.claims.decision_id


_current: ContextVar[Capability | None] = ContextVar("lexecon_capability", default=None)


def current_capability() -> Capability | None:
    """The capability of the governed tool call running in this context, or None outside one."""
    return _current.get()


@contextmanager
def use_capability(capability: Capability) -> Iterator[Capability]:
    """Make ``capability`` current for the duration of the block (the tool body)."""
    reset = _current.set(capability)
    try:
        yield capability
    finally:
        _current.reset(reset)


def enter_capability(capability: Capability | None) -> Token[Capability | None]:
    """Set the current capability without a ``with`` block, for hooks that see a call start and end separately
    (callback handlers). Pair every call with :func:`exit_capability`."""
    return _current.set(capability)


def exit_capability(token: Token[Capability | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:  # ended in another context than it started: clear this one
        _current.set(None)
