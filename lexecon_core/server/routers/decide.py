"""``POST /decide`` and ``POST /decide/verify``."""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lexecon_core.auth import Permission, Principal
from lexecon_core.decisions import Decision, DecisionRequest
from lexecon_core.errors import TokenError
from lexecon_core.ledger import LedgerEntry, entry_hash, signing_message
from lexecon_core.server._errors import ERROR_RESPONSES
from lexecon_core.server._security import require
from lexecon_core.server._state import ServerState, state_of
from lexecon_core.tokens import MAX_LEEWAY_SECONDS, CapabilityClaims
from lexecon_core.wire import ErrorResponse, TokenCheck, TokenCheckResult

router = APIRouter(tags=["decisions"], responses=ERROR_RESPONSES)


@router.post(
    "/decide",
    response_model=Decision,
    responses={503: {"model": ErrorResponse, "description": "no decision could be made or recorded (fail closed)"}},
    summary="Decide a proposed tool call",
)
async def decide(
    body: DecisionRequest,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.DECIDE))],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=256,
            description="retries with the same key return the first decision instead of making another",
        ),
    ] = None,
) -> Response:
    """Risk, policy, a signed ledger entry, then (for an approval) a capability token. The response is sent only
    after the entry is durable."""
    state = state_of(request)
    if not principal.may_act_as(body.actor):
        raise HTTPException(403, f"this API key may decide only for actors matching {principal.actors!r}")
    started = time.perf_counter()
    # The governor blocks on the ledger commit; the thread pool keeps the event loop free, and lets concurrent
    # requests share one commit (group commit).
    decision, made = await run_in_threadpool(
        state.governor.decide_once, body, idempotency_key=idempotency_key, principal=principal.label
    )
    state.metrics.decision_seconds.observe(time.perf_counter() - started)
    if made:
        state.metrics.decisions.labels(decision.outcome.value).inc()
    else:  # a retry answered from the ledger: the decision was counted when it was made
        state.metrics.decision_replays.inc()
    # Serialised directly: every field was built by the governor, re-validating it would only cost time.
    return Response(decision.model_dump_json(), media_type="application/json")


@router.post("/decide/verify", response_model=TokenCheckResult, summary="Check a capability token")
async def verify(
    body: TokenCheck,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.VERIFY_TOKEN))],
) -> TokenCheckResult:
    """Is ``token`` a valid capability for calling ``tool`` with ``args`` now? Checks the signature and every claim,
    then the decision behind it: the ledger entry the token names must exist with that hash and signature, be an
    approval of this actor, tool and arguments, and have issued this token id. ``consume`` records the token as
    used, so it authorises one call. An invalid token is ``valid: false`` with a reason, not an HTTP error."""
    state = state_of(request)
    if body.consume and not principal.can(Permission.DECIDE):
        # Using up a token is the agent's act; a reader must not be able to burn an agent's capabilities.
        raise HTTPException(403, f"role {principal.role.value!r} may check tokens but not consume them")
    try:
        claims = await run_in_threadpool(_check, state, body, principal)
    except TokenError as exc:
        return TokenCheckResult(valid=False, reason=exc.reason, message=str(exc))
    except _NotTheirs as exc:
        raise HTTPException(
            403, f"this API key may consume only tokens of actors matching {principal.actors!r}, not {exc.actor!r}"
        ) from None
    return TokenCheckResult(
        valid=True,
        message="valid capability",
        decision_id=claims.decision_id,
        ledger_entry_id=claims.ledger_entry_id,
        claims=asdict(claims),
    )


def _check(state: ServerState, body: TokenCheck, principal: Principal) -> CapabilityClaims:
    governor = state.governor
    claims = governor.verify_token(body.token, tool=body.tool, args=body.args, consume=False)
    _check_entry(state, claims, governor.node.ledger.get(claims.ledger_entry_id))
    if body.consume:  # only once everything checked out; the server's cache is shared through Redis when configured
        if not principal.may_act_as(claims.sub):
            # Using up a capability is its agent's act: another agent's key could otherwise burn it (a denial of
            # service on that agent) or spend it first.
            raise _NotTheirs(claims.sub)
        state.replay_cache.use(claims.jti, claims.exp + MAX_LEEWAY_SECONDS)
    return claims


class _NotTheirs(Exception):
    def __init__(self, actor: str) -> None:
        super().__init__(actor)
        self.actor = actor


def _check_entry(state: ServerState, claims: CapabilityClaims, entry: LedgerEntry | None) -> None:
    if entry is None:
        raise TokenError("no_decision", f"the ledger has no entry {claims.ledger_entry_id}")
    if not hmac.compare_digest(entry.entry_hash.hex(), claims.ledger_entry_hash):
        raise TokenError("decision_mismatch", "the token's ledger entry hash does not match the ledger")
    key = state.governor.public_keys.get(entry.kid)
    intact = entry_hash(entry.prev_hash, entry.body) == entry.entry_hash
    if not intact or key is None or not key.verify(entry.signature, signing_message(entry.entry_hash)):
        raise TokenError("decision_mismatch", "the token's ledger entry is altered or not signed by this node")
    data = entry.data if entry.entry_type == "decision" else {}
    asked = data.get("request") or {}
    facts = (
        data.get("decision_id"),
        data.get("token_id"),
        data.get("outcome"),
        asked.get("actor"),
        asked.get("tool"),
        asked.get("args_sha256"),
    )
    expected = (claims.decision_id, claims.jti, "approved", claims.sub, claims.tool, claims.args_sha256)
    if facts != expected:
        raise TokenError("decision_mismatch", "the token does not match the approval recorded in the ledger")
