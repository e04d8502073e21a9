"""Managing API keys over HTTP (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lexecon_core.auth import ApiKey, Permission, Principal, Role
from lexecon_core.errors import AuthError
from lexecon_core.server._errors import ERROR_RESPONSES
from lexecon_core.server._security import require
from lexecon_core.server._state import state_of
from lexecon_core.wire import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, ErrorResponse

router = APIRouter(prefix="/apikeys", tags=["api keys"], responses=ERROR_RESPONSES)

Admin = Annotated[Principal, Depends(require(Permission.MANAGE_KEYS))]


def _info(key: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        key_id=key.key_id,
        name=key.name,
        role=key.role,
        actors=key.actors,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


@router.get("", response_model=list[ApiKeyInfo], summary="List API keys (never their secrets)")
async def list_keys(request: Request, _principal: Admin) -> list[ApiKeyInfo]:
    keys = await run_in_threadpool(state_of(request).api_keys.list)
    return [_info(k) for k in keys]


@router.post("", response_model=ApiKeyCreated, status_code=201, summary="Create an API key (shown once)")
async def create_key(body: ApiKeyCreate, request: Request, principal: Admin) -> ApiKeyCreated:
    store = state_of(request).api_keys
    if body.role is Role.AGENT and body.actors is None:
        raise HTTPException(422, "an agent key must name the actors it may decide for, e.g. 'ai_agent:support_bot'")
    actors = body.actors or "*"
    record, secret = await run_in_threadpool(store.create, body.name, body.role, by=principal.label, actors=actors)
    return ApiKeyCreated(**_info(record).model_dump(), api_key=secret)


@router.delete(
    "/{key_id}",
    response_model=ApiKeyInfo,
    responses={
        404: {"model": ErrorResponse, "description": "no such key"},
        409: {"model": ErrorResponse, "description": "the key is already revoked, or is the calling key"},
    },
    summary="Revoke an API key",
)
async def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], request: Request, principal: Admin
) -> ApiKeyInfo:
    store = state_of(request).api_keys
    if key_id == principal.key_id:
        raise HTTPException(409, "a key cannot revoke itself; use another admin key")
    if await run_in_threadpool(store.get, key_id) is None:
        raise HTTPException(404, f"no API key {key_id!r}")
    try:
        revoked = await run_in_threadpool(store.revoke, key_id, by=principal.label)
    except AuthError as exc:  # revoked already (perhaps just now, by another admin)
        raise HTTPException(409, str(exc)) from None
    return _info(revoked)
