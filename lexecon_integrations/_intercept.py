"""The one interception path every adapter uses.

An adapter hands over the framework's tool name and arguments; :class:`ToolCallGuard` builds the
:class:`~lexecon_core.DecisionRequest`, asks the :class:`~lexecon_core.Governor`, and - for an approval - verifies the
capability token against these exact arguments before the adapter lets the tool body run. The result is a
:class:`Verdict` the adapter turns into its framework's allow or deny. Anything that goes wrong on the way (ledger
down, server unreachable, bad token) is a denial: the call does not run, and the message says why.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lexecon_core import (
    Capability,
    Decision,
    DecisionRequest,
    GovernanceDenied,
    GovernanceError,
    Governor,
    LexeconError,
    Outcome,
    TokenError,
)
from lexecon_core._canonical import args_digest

__all__ = [
    "CallDescriber",
    "ToolCallGuard",
    "Verdict",
    "call_args",
    "capability_mismatch",
    "guard_for",
    "normalise_args",
]

logger = logging.getLogger("lexecon.integrations")

#: Adds per-call fields to the decision request: ``describe(tool_name, args) -> {"data_classes": [...], ...}``.
#: Allowed keys: proposed_action, user_intent, data_classes, risk_level, policy_mode, context.
CallDescriber = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]

_DESCRIBABLE = frozenset({"proposed_action", "user_intent", "data_classes", "risk_level", "policy_mode", "context"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a tool call may run, and what to tell the model (or the caller) if not."""

    tool: str
    allowed: bool
    message: str
    decision: Decision | None = None
    capability: Capability | None = None
    error: LexeconError | None = None

    def exception(self) -> LexeconError:
        """The exception for raising adapters: GovernanceDenied for a decision, else the error that stopped the call."""
        if self.error is not None:
            return self.error
        assert self.decision is not None
        return GovernanceDenied(self.decision)


def call_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a wrapped tool body receives, as the dict that is decided on and bound into the token: keyword
    arguments as they are; a lone positional input as ``{"input": value}``; several as ``arg0``, ``arg1``, ..."""
    call = dict(kwargs)
    if args:
        call.update({"input": args[0]} if len(args) == 1 else {f"arg{i}": a for i, a in enumerate(args)})
    return call


def normalise_args(tool_input: Any) -> dict[str, Any]:
    """Tool arguments as the dict that is hashed into the request and the token: a dict as is, anything else
    (a single string input) as ``{"input": value}``."""
    if isinstance(tool_input, Mapping):
        return dict(tool_input)
    return {"input": tool_input}


class ToolCallGuard:
    """Decides tool calls for one actor through one governor. Thread-safe; holds no per-call state."""

    def __init__(
        self,
        governor: Governor,
        *,
        actor: str,
        context: Mapping[str, Any] | None = None,
        describe: CallDescriber | None = None,
    ) -> None:
        if not isinstance(governor, Governor):
            raise TypeError(f"governor must implement lexecon_core.Governor, got {type(governor).__name__}")
        if not actor:
            raise ValueError("actor must name who is calling, e.g. 'ai_agent:support_bot'")
        self.governor = governor
        self.actor = actor
        self.context = dict(context or {})
        self.describe = describe

    def request_for(self, tool: str, args: Mapping[str, Any]) -> DecisionRequest:
        fields: dict[str, Any] = {"actor": self.actor, "tool": tool, "tool_args": dict(args), "context": self.context}
        if self.describe is not None:
            extra = dict(self.describe(tool, args))
            unknown = set(extra) - _DESCRIBABLE
            if unknown:
                raise ValueError(f"describe() returned unknown fields {sorted(unknown)}")
            if "context" in extra:
                extra["context"] = {**self.context, **extra["context"]}
            fields.update(extra)
        return DecisionRequest.parse(fields)

    def check(self, tool: str, args: Mapping[str, Any]) -> Verdict:
        """Decide (blocking) and, for an approval, verify the token for these exact arguments."""
        try:
            decision = self.governor.decide(self.request_for(tool, args))
        except Exception as exc:  # fail closed, whatever went wrong
            return self._error(tool, exc)
        return self._conclude(tool, args, decision)

    async def acheck(self, tool: str, args: Mapping[str, Any]) -> Verdict:
        """:meth:`check` for async paths: the governor's ``adecide`` keeps the event loop free."""
        try:
            decision = await self.governor.adecide(self.request_for(tool, args))
        except Exception as exc:  # fail closed, whatever went wrong
            return self._error(tool, exc)
        return self._conclude(tool, args, decision)

    def _conclude(self, tool: str, args: Mapping[str, Any], decision: Decision) -> Verdict:
        if decision.outcome is Outcome.ESCALATED:
            message = (
                f"Lexecon: tool '{tool}' awaits human approval (escalation {decision.escalation_id}); "
                f"it was not run. Reason: {decision.reasoning}"
            )
            return Verdict(tool, False, message, decision)
        if decision.outcome is not Outcome.APPROVED or not decision.capability_token:
            message = f"Lexecon denied tool '{tool}': {decision.reasoning} (decision {decision.decision_id})"
            return Verdict(tool, False, message, decision)
        try:
            claims = self.governor.verify_token(decision.capability_token, tool=tool, args=args)
        except Exception as exc:  # a token that does not verify stops the call
            return self._error(tool, exc, decision)
        return Verdict(tool, True, "", decision, Capability(decision.capability_token, claims))

    def _error(self, tool: str, exc: Exception, decision: Decision | None = None) -> Verdict:
        if isinstance(exc, TokenError):
            error: LexeconError = exc
            message = f"Lexecon refused tool '{tool}': its capability token failed verification ({exc.reason}): {exc}"
        elif isinstance(exc, LexeconError):
            error = exc
            message = f"Lexecon could not decide on tool '{tool}', so it was not run: {exc}"
        else:
            # Unexpected: log the detail for operators, tell the model only the kind of failure.
            logger.exception("lexecon guard failed for tool %r", tool)
            error = GovernanceError(f"internal error ({type(exc).__name__}) while deciding on tool {tool!r}")
            message = f"Lexecon could not decide on tool '{tool}', so it was not run: {error}"
        return Verdict(tool, False, message, decision, error=error)


def capability_mismatch(capability: Capability | None, tool: str, args: Mapping[str, Any]) -> str | None:
    """Why ``capability`` does not cover calling ``tool`` with ``args`` now, or None if it does.

    For adapters whose decision happens a step before the tool body (a guardrail, then the body): the claims were
    verified when the decision came back; this binds them to the exact call that is about to run.
    """
    if capability is None:
        return "no capability was granted for this call"
    claims = capability.claims
    if claims.tool != tool:
        return f"the capability is for tool {claims.tool!r}"
    try:
        digest = args_digest(dict(args))
    except LexeconError as exc:
        return str(exc)
    if not hmac.compare_digest(digest, claims.args_sha256):
        return "the capability was issued for different arguments"
    if claims.exp <= time.time():
        return "the capability has expired"
    return None


def guard_for(
    governor: Governor | ToolCallGuard,
    actor: str | None,
    context: Mapping[str, Any] | None,
    describe: CallDescriber | None,
) -> ToolCallGuard:
    """Adapters accept a governor (plus options) or a ready guard."""
    if isinstance(governor, ToolCallGuard):
        return governor
    if actor is None:
        raise ValueError("actor is required, e.g. actor='ai_agent:support_bot'")
    return ToolCallGuard(governor, actor=actor, context=context, describe=describe)
