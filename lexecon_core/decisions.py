"""Decisions: the request/response models and the :class:`Governor` interface every integration talks to.

:class:`LocalGovernor` decides in-process: risk, policy, then the ledger entry, then (only for an approval) the
capability token. Log first, then answer: if the ledger write fails, ``decide`` raises :class:`GovernanceError` and
no approval exists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lexecon_core._canonical import args_digest, ledger_safe
from lexecon_core.config import Settings
from lexecon_core.errors import GovernanceDenied, GovernanceError, InvalidRequest, LedgerError
from lexecon_core.keys import PublicKey
from lexecon_core.ledger import LedgerEntry, VerificationReport
from lexecon_core.node import Node, open_node
from lexecon_core.policy import Outcome, PolicyEngine, PolicyMode
from lexecon_core.risk import DeclaredRiskLevel, RiskLevel, RiskRules, assess, load_risk_rules
from lexecon_core.tokens import (
    DEFAULT_REPLAY_CACHE,
    CapabilityClaims,
    IssuedTokens,
    ReplayCache,
    capability_claims,
    check_claims,
    sign_claims,
    verify_signature,
)

__all__ = ["Decision", "DecisionRequest", "Governor", "LocalGovernor"]


MAX_NESTING = 32


class DecisionRequest(BaseModel):
    """A proposed tool call. Field names follow the hosted server's ``POST /decide`` body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actor: str = Field(min_length=1, max_length=256, description="who is calling, e.g. ai_agent:support_bot")
    proposed_action: str | None = Field(default=None, max_length=256, description="e.g. read:customer")
    tool: str = Field(min_length=1, max_length=256)
    tool_args: dict[str, Any] = Field(default_factory=dict, description="hashed, never stored")
    user_intent: str = Field(default="", max_length=4096)
    data_classes: tuple[str, ...] = Field(default=(), max_length=64)
    risk_level: DeclaredRiskLevel | None = Field(
        default=None, description="declared risk, a level name or 1-5; raises the computed floor"
    )
    policy_mode: PolicyMode | None = Field(default=None, description="may tighten the node's mode, never loosen it")
    context: dict[str, Any] = Field(default_factory=dict)
    unbindable_args: str | None = Field(
        default=None,
        max_length=1024,
        description="set (with empty tool_args) by a client whose arguments cannot be sent or hashed: why. The call "
        "is then denied, and recorded so that the attempt is seen",
    )

    @field_validator("actor", "tool", "proposed_action")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # Stored in indexed text columns, and PostgreSQL text cannot hold NUL.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("tool_args", "context")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Hashing and recording walk these recursively; a bound keeps a crafted request from exhausting the stack.
        pending: list[tuple[Any, int]] = [(value, 1)]
        while pending:
            item, depth = pending.pop()
            if depth > MAX_NESTING:
                raise ValueError(f"nested deeper than {MAX_NESTING} levels")
            if isinstance(item, dict):
                pending.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list | tuple):
                pending.extend((v, depth + 1) for v in item)
        return value

    @model_validator(mode="after")
    def _unbindable_without_args(self) -> DecisionRequest:
        if self.unbindable_args is not None and self.tool_args:
            raise ValueError("tool_args must be empty when unbindable_args is set")
        return self

    @classmethod
    def parse(cls, value: DecisionRequest | Mapping[str, Any]) -> DecisionRequest:
        if isinstance(value, DecisionRequest):
            return value
        try:
            return cls.model_validate(dict(value))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "request"
            raise InvalidRequest(
                f"invalid decision request: {where}: {first['msg'].removeprefix('Value error, ')}"
            ) from None
        except (TypeError, ValueError):
            raise InvalidRequest("a decision request must be a mapping") from None

    @property
    def args_sha256(self) -> str:
        return args_digest(self.tool_args)

    def binding(self) -> tuple[str | None, str | None]:
        """``(args_sha256, None)``, or ``(None, why)`` for arguments no capability token can be bound to."""
        if self.unbindable_args is not None:
            return None, self.unbindable_args
        try:
            return self.args_sha256, None
        except InvalidRequest as exc:
            return None, str(exc)


class Decision(BaseModel):
    """The governor's answer. ``capability_token`` is set only when the outcome is ``approved``."""

    model_config = ConfigDict(frozen=True)

    decision_id: str
    outcome: Outcome
    reasoning: str
    actor: str
    tool: str
    args_sha256: str | None  # None: the arguments could not be bound (the call was denied for it)
    risk_level: RiskLevel
    risk_score: int
    risk_dimensions: dict[str, int]
    policy_version: str
    policy_mode: PolicyMode
    matched_relations: tuple[str, ...]
    ledger_entry_id: int
    ledger_entry_hash: str
    capability_token: str | None = None
    token_id: str | None = None
    token_expires_at: int | None = None
    escalation_id: str | None = None
    created_at: str

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    def raise_if_not_approved(self) -> Decision:
        """Raising semantics: return self when approved, else raise :class:`GovernanceDenied`."""
        if not self.approved:
            raise GovernanceDenied(self)
        return self


@runtime_checkable
class Governor(Protocol):
    """What integrations need from Lexecon, locally or over HTTP."""

    def decide(self, request: DecisionRequest | Mapping[str, Any]) -> Decision: ...

    async def adecide(self, request: DecisionRequest | Mapping[str, Any]) -> Decision: ...

    def verify_token(self, token: str, *, tool: str, args: Mapping[str, Any]) -> CapabilityClaims: ...


class LocalGovernor:
    """Decides in-process against the node at ``home`` (default ``$LEXECON_HOME`` or ``./.lexecon``)."""

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        settings: Settings | None = None,
        policy: PolicyEngine | None = None,
        risk_rules: RiskRules | None = None,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self._node: Node = open_node(home, settings=settings)
        self.settings = self._node.settings
        self.policy = policy if policy is not None else self._node.current_policy()
        self.risk_rules = risk_rules or load_risk_rules(self.settings.risk_rules_file)
        self.replay_cache = DEFAULT_REPLAY_CACHE if replay_cache is None else replay_cache  # an empty cache is falsy
        self._issued = IssuedTokens()
        self._rotate_lock = threading.Lock()

    # -- the Governor interface -----------------------------------------------------------------------------------

    def decide(
        self,
        request: DecisionRequest | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        principal: str | None = None,
    ) -> Decision:
        """Decide a proposed tool call.

        ``idempotency_key``: repeating a request with the same key (and ``principal``) returns the first decision
        instead of making another - the same decision id, ledger entry and token id - even across processes that
        share the ledger. ``principal`` (who authenticated the request, e.g. ``apikey:<id>``) is recorded.
        """
        return self.decide_once(request, idempotency_key=idempotency_key, principal=principal)[0]

    def decide_once(
        self,
        request: DecisionRequest | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        principal: str | None = None,
    ) -> tuple[Decision, bool]:
        """:meth:`decide`, and whether the decision was made by this call (False: a repeat of an idempotency key,
        answered from the ledger) - for callers that count decisions, such as the server's metrics."""
        req = DecisionRequest.parse(request)
        # Arguments no token can be bound to are refused - and the attempt recorded, like any other denial.
        args_sha256, unbindable = req.binding()
        # A keyed request's decision id is derived from the key; the ledger writes at most one entry per decision id
        # (checked under its write lock), and a repeat is answered from that entry.
        if idempotency_key is not None:
            decision_id = idempotent_decision_id(idempotency_key, principal)
        else:
            decision_id = f"dec_{uuid.uuid4().hex}"
        try:
            # What the policy itself says about this call (data classes per tool, context from argument patterns).
            # It is added to what the caller declared, never put in its place: a caller cannot declare it away.
            classified = self.policy.classify(req.tool, req.tool_args)
            risk = (classified.assess_risk if classified else assess)(
                tool=req.tool,
                data_classes=req.data_classes,
                declared_level=req.risk_level,
                context=req.context,
                rules=self.risk_rules,
            )
            result = self.policy.evaluate(
                actor=req.actor,
                action=req.proposed_action,
                tool=req.tool,
                resource=_resource(req.context),
                data_classes=req.data_classes,
                context=req.context,
                risk_level=risk.level,
                mode=_stricter(self.settings.policy_mode, req.policy_mode),
                classified=classified,
            )
        except (ValueError, TypeError) as exc:
            raise GovernanceError(f"policy evaluation failed for tool {req.tool!r}: {exc}") from None
        if unbindable is not None:
            reason = f"its arguments cannot be bound to a capability token ({unbindable})"
            result = dataclasses.replace(result, outcome=Outcome.DENIED, reason=reason)

        approved = result.outcome is Outcome.APPROVED
        jti = uuid.uuid4().hex if approved else None
        escalation_id = f"esc_{decision_id[4:]}" if result.outcome is Outcome.ESCALATED else None
        record = {
            "decision_id": decision_id,
            "outcome": result.outcome.value,
            "reason": result.reason,
            "request": _request_record(req, args_sha256),
            "policy_version": result.policy_version,
            "policy_mode": result.mode.value,
            "matched_relations": [m.to_dict() for m in result.matched],
            "risk": risk.to_record(),
            "token_id": jti,
            "escalation_id": escalation_id,
        }
        if classified:  # only then, so a policy without classifications records exactly what it always did
            record["classified"] = classified.to_record()
        if principal is not None:
            record["principal"] = principal
        try:
            if idempotency_key is None:
                entry = self._node.ledger.append("decision", record)
            else:
                entry, created = self._node.ledger.append_once("decision", record)
                if not created:  # a repeat: the first decision stands
                    return self._replay(entry, req, args_sha256), False
        except LedgerError as exc:
            raise GovernanceError(
                f"decision for tool {req.tool!r} could not be recorded, so it is refused: {exc}"
            ) from None

        token = expires = None
        if approved and jti is not None and args_sha256 is not None:
            token, expires = self._sign_token(
                req, args_sha256, entry, decision_id, result.policy_version, jti, _issued_at(entry)
            )
        # Validated, not model_construct(): pydantic-core checks these fields in about half the time that
        # model_construct() takes to fill them in from Python.
        return Decision(
            decision_id=decision_id,
            outcome=result.outcome,
            reasoning=result.reason,
            actor=req.actor,
            tool=req.tool,
            args_sha256=args_sha256,
            risk_level=risk.level,
            risk_score=risk.score,
            risk_dimensions=risk.dimensions,
            policy_version=result.policy_version,
            policy_mode=result.mode,
            matched_relations=tuple(m.relation_id for m in result.matched),
            ledger_entry_id=entry.seq,
            ledger_entry_hash=entry.entry_hash.hex(),
            capability_token=token,
            token_id=jti,
            token_expires_at=expires,
            escalation_id=escalation_id,
            created_at=entry.created_at,
        ), True

    async def adecide(
        self,
        request: DecisionRequest | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        principal: str | None = None,
    ) -> Decision:
        # The ledger append waits on fsync; keep it off the event loop.
        return await asyncio.to_thread(self.decide, request, idempotency_key=idempotency_key, principal=principal)

    def _sign_token(
        self,
        req: DecisionRequest,
        args_sha256: str,
        entry: LedgerEntry,
        decision_id: str,
        policy_version: str,
        jti: str,
        issued: int,
    ) -> tuple[str, int]:
        ttl = self.settings.token_ttl_seconds
        signer = self._node.keys.signer
        claims = capability_claims(
            issuer=self._node.node_id,
            subject=req.actor,
            tool=req.tool,
            args_sha256=args_sha256,
            decision_id=decision_id,
            ledger_entry_id=entry.seq,
            ledger_entry_hash=entry.entry_hash.hex(),
            policy_version=policy_version,
            ttl_seconds=ttl,
            audience=self.settings.token_audience,
            jti=jti,
            now=issued,
        )
        token = sign_claims(signer, claims)
        self._issued.remember(token, claims, signer.kid)
        return token, issued + ttl

    def _replay(self, entry: LedgerEntry, req: DecisionRequest, args_sha256: str | None) -> Decision:
        """The decision an earlier request with the same idempotency key got, rebuilt from its ledger entry.

        An approval's token is signed again with the same ``jti`` and the original issue time, so the retry holds
        the same single-use capability with the same expiry, never a second one.
        """
        data = entry.data
        if data["request"] != _request_record(req, args_sha256):
            raise InvalidRequest("idempotency key was already used for a different request")
        outcome = Outcome(data["outcome"])
        token = expires = None
        if outcome is Outcome.APPROVED and data.get("token_id") and args_sha256 is not None:
            ids = (data["decision_id"], data["policy_version"], data["token_id"])
            token, expires = self._sign_token(req, args_sha256, entry, *ids, _issued_at(entry))
        risk = data["risk"]
        return Decision(
            decision_id=data["decision_id"],
            outcome=outcome,
            reasoning=data["reason"],
            actor=req.actor,
            tool=req.tool,
            args_sha256=args_sha256,
            risk_level=RiskLevel(risk["level"]),
            risk_score=risk["score"],
            risk_dimensions=risk["dimensions"],
            policy_version=data["policy_version"],
            policy_mode=PolicyMode(data["policy_mode"]),
            matched_relations=tuple(m["relation_id"] for m in data["matched_relations"]),
            ledger_entry_id=entry.seq,
            ledger_entry_hash=entry.entry_hash.hex(),
            capability_token=token,
            token_id=data.get("token_id"),
            token_expires_at=expires,
            escalation_id=data.get("escalation_id"),
            created_at=entry.created_at,
        )

    def verify_token(self, token: str, *, tool: str, args: Mapping[str, Any], consume: bool = True) -> CapabilityClaims:
        """Verify (and, unless ``consume=False``, consume) a capability token from this node for a call of ``tool``
        with ``args``.

        A token this governor issued is recognised byte for byte, so its signature - valid by construction - is not
        checked again; every claim still is. Any other token is verified in full against the node's token keys.
        """
        recalled = self._issued.recall(token)
        if recalled is not None and recalled[1] == self._node.keys.active_kid:
            claims, kid = recalled
        else:  # not ours, or signed by a key since retired: the full check, against the keys that may sign now
            grace = self.settings.token_ttl_seconds + self.settings.token_leeway_seconds
            claims, kid = verify_signature(token, self._node.keys.token_keys(grace))
        return check_claims(
            claims,
            kid,
            tool=tool,
            args=args,
            audience=self.settings.token_audience,
            issuer=self._node.node_id,
            leeway=self.settings.token_leeway_seconds,
            replay_cache=self.replay_cache if consume else None,
        )

    # -- node operations ------------------------------------------------------------------------------------------

    @property
    def node(self) -> Node:
        return self._node

    @property
    def public_keys(self) -> dict[str, PublicKey]:
        return self._node.trusted_keys()

    def jwks(self) -> dict[str, Any]:
        return self._node.keys.jwks()

    def verify_ledger(self) -> VerificationReport:
        return self._node.ledger.verify(self.public_keys, key_source=f"node keys in {self._node.paths.keys}")

    def receipt(self, decision: Decision | int) -> dict[str, Any]:
        """Everything an auditor needs to check a decision offline: its ledger entry (exact stored body, hash,
        signature) and, once a signed checkpoint covers it, its inclusion proof and that checkpoint."""
        seq = decision.ledger_entry_id if isinstance(decision, Decision) else int(decision)
        ledger = self._node.ledger
        entry = ledger.get(seq)
        if entry is None:
            raise LedgerError(f"no ledger entry {seq}")
        covering = [c for c in ledger.checkpoints() if c.size >= seq]
        proof = ledger.inclusion_proof(seq, covering[-1].size).to_dict() if covering else None
        return {
            "entry": entry.to_dict(),
            "inclusion_proof": proof,
            "checkpoint": covering[-1].note if covering else None,
            "jwks": self.jwks(),
        }

    def load_policy(self, path: str | Path) -> PolicyEngine:
        """Validate a policy file, record it in the ledger, and decide by it from now on."""
        engine, _ = self._node.load_policy_file(path)
        self.policy = engine
        return engine

    def rotate_keys(self) -> str:
        with self._rotate_lock:
            return self._node.rotate_keys()

    def close(self) -> None:
        self._node.close()

    def __enter__(self) -> LocalGovernor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _request_record(req: DecisionRequest, args_sha256: str | None) -> dict[str, Any]:
    """The request as a decision entry records it (arguments hashed, context made ledger-safe)."""
    return {
        "actor": req.actor,
        "action": req.proposed_action,
        "tool": req.tool,
        "args_sha256": args_sha256,
        "user_intent": req.user_intent,
        "data_classes": list(req.data_classes),
        "declared_risk_level": req.risk_level.value if req.risk_level else None,
        "policy_mode": req.policy_mode.value if req.policy_mode else None,
        "context": ledger_safe(req.context),
    }


def _issued_at(entry: LedgerEntry) -> int:
    """A token's ``iat``: its ledger entry's time, so a replayed decision re-signs the very same token."""
    return int(datetime.fromisoformat(entry.created_at).timestamp())


def idempotent_decision_id(idempotency_key: str, principal: str | None = None) -> str:
    """The decision id a keyed request gets: the same for every retry, different per principal."""
    if not 1 <= len(idempotency_key) <= 256:
        raise InvalidRequest("an idempotency key is 1-256 characters")
    scoped = f"{principal or ''}\x00{idempotency_key}".encode()
    return f"dec_{hashlib.sha256(scoped).hexdigest()[:32]}"


def _stricter(a: PolicyMode | None, b: PolicyMode | None) -> PolicyMode | None:
    if a is None:
        return b
    return a.stricter(b)


def _resource(context: Mapping[str, Any]) -> str | None:
    value = context.get("resource")
    return value if isinstance(value, str) else None
