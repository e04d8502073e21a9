"""The policy in force: read it, load a new one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lexecon_core.auth import Permission, Principal
from lexecon_core.policy import policy_from_document
from lexecon_core.server._errors import ERROR_RESPONSES
from lexecon_core.server._security import require
from lexecon_core.server._state import ServerState, state_of
from lexecon_core.wire import ErrorResponse, PolicyInfo, PolicyLoad, PolicyLoaded

router = APIRouter(prefix="/policies", tags=["policies"], responses=ERROR_RESPONSES)


@router.get("", response_model=PolicyInfo, summary="The policy in force")
async def current_policy(
    request: Request, _principal: Annotated[Principal, Depends(require(Permission.READ_POLICY))]
) -> PolicyInfo:
    engine = state_of(request).governor.policy
    document = engine.to_document()
    return PolicyInfo(
        policy_version=engine.version,
        name=str(document.get("name", "")),
        mode=str(document.get("mode", "")),
        terms=len(document.get("terms", ())),
        relations=len(document.get("relations", ())),
        document=document,
    )


@router.post(
    "/load",
    response_model=PolicyLoaded,
    responses={409: {"model": ErrorResponse, "description": "the policy is pinned by LEXECON_POLICY_FILE"}},
    summary="Validate, record and adopt a new policy",
)
async def load_policy(
    body: PolicyLoad,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.LOAD_POLICY))],
) -> PolicyLoaded:
    """The document is validated first (422 naming the bad field), recorded in the ledger as a ``policy_loaded``
    entry, then used for every decision after it. Other servers sharing the database follow within
    ``LEXECON_POLICY_SYNC_SECONDS``."""
    state = state_of(request)
    if state.settings.policy_file is not None:
        raise HTTPException(409, "this server's policy is pinned by LEXECON_POLICY_FILE; change that file instead")
    source = f"{body.source} (by {principal.label})"
    return await run_in_threadpool(_adopt, state, body.document, source)


def _adopt(state: ServerState, document: dict[str, Any], source: str) -> PolicyLoaded:
    engine = policy_from_document(document, source="policy document")  # PolicyError -> 422; big documents take time
    with state.policy_lock:  # the follower must not replace this with an older policy it read just before
        adopted, entry = state.governor.node.adopt_policy(engine, source=source)
        state.governor.policy = adopted
        state.policy_seq = entry.seq
    return PolicyLoaded(policy_version=adopted.version, ledger_entry_id=entry.seq)
