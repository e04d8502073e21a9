"""Exception types raised by Lexecon.

Every error Lexecon raises on purpose derives from :class:`LexeconError`, so callers can catch one type. Messages are
written for the person reading them: they name what was wrong and never include secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lexecon_core.decisions import Decision

__all__ = [
    "AuthError",
    "ConfigError",
    "GovernanceDenied",
    "GovernanceError",
    "InvalidRequest",
    "KeyStoreError",
    "LedgerError",
    "LedgerTampered",
    "LexeconError",
    "PolicyError",
    "TokenError",
]


class LexeconError(Exception):
    """Base class of every error Lexecon raises on purpose."""

    #: Set by an adapter that raises this for a refused tool call: the sentence the model should read. Frameworks
    #: that show the model ``repr(exception)`` (LangGraph's ``ToolNode(handle_tool_errors=True)``) then show it.
    model_message: str | None = None

    def __repr__(self) -> str:
        return self.model_message if self.model_message is not None else super().__repr__()


class ConfigError(LexeconError):
    """Settings, the node home or its files are missing or invalid."""


class KeyStoreError(LexeconError):
    """A signing key is missing, unreadable, or cannot be decrypted."""


class PolicyError(LexeconError):
    """A policy document or term/relation is invalid."""


class AuthError(LexeconError):
    """A credential or role is missing, malformed, unknown or revoked, or an API key operation is invalid."""


class InvalidRequest(LexeconError):
    """A decision request is malformed."""


class LedgerError(LexeconError):
    """The ledger could not be read or written. A decision that hits this is never approved."""


class LedgerTampered(LedgerError):
    """A ledger row the node was about to act on does not verify (hash, signature or place in the chain): the node
    refuses to act on it. ``seq`` is the first entry that failed; the node keeps acting only on what it verified."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"ledger entry {seq} does not verify ({reason}); refusing to act on it")
        self.seq = seq
        self.reason = reason


class TokenError(LexeconError):
    """A capability token failed verification. ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class GovernanceError(LexeconError):
    """The governor could not reach a decision (ledger down, engine failure). The tool call must not run."""


class GovernanceDenied(LexeconError):
    """Raised by callers that want raising semantics when a decision is not an approval."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(
            f"tool {decision.tool!r} was {decision.outcome}: {decision.reasoning} (decision {decision.decision_id})"
        )
