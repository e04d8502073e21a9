"""Authentication, authorisation and rate limiting for routes: one dependency, ``require(permission)``.

A request authenticates with ``Authorization: Bearer <api key>``. The key is checked against the keys the verified
ledger records, the key's rate limit is charged, then its role must hold the route's permission. Every check that is
not answered from what the process verified recently is first charged to the client address, which slows key
guessing down and keeps throttled addresses off the database.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lexecon_core.auth import Permission, Principal
from lexecon_core.errors import LedgerError
from lexecon_core.server._state import ServerState, state_of

bearer = HTTPBearer(auto_error=False, description="an API key from `lexecon apikey create`")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def _charge(state: ServerState, key: str) -> None:
    verdict = await state.limiter.hit(key)
    if not verdict.allowed:
        state.metrics.rate_limited.inc()
        raise HTTPException(
            429,
            "rate limit exceeded; retry later",
            headers={"Retry-After": str(max(1, math.ceil(verdict.retry_after)))},
        )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def limit_anonymous(request: Request) -> None:
    """Rate limits for unauthenticated routes that touch the database (health, public metrics): per client address,
    so a flood of them cannot take the worker threads decisions need."""
    await _charge(state_of(request), f"anon:{_address(request)}")


async def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    state = state_of(request)
    if credentials is None:
        raise HTTPException(401, "authentication required: send 'Authorization: Bearer <api key>'", headers=_CHALLENGE)
    presented = credentials.credentials
    principal = state.api_keys.cached(presented)  # a key verified recently: no I/O, no address charge
    if principal is None:
        # Charged before the lookup: an address over its limit gets 429 whatever key it sends, and its requests
        # cost no database read - guessing keys from one address stays slow either way.
        await _charge(state, f"addr:{_address(request)}")
        try:
            principal = await run_in_threadpool(state.api_keys.authenticate, presented)
        except LedgerError:  # the ledger is unreachable or does not verify: nobody is authenticated, nothing allowed
            raise HTTPException(
                503, "cannot check the API key now: the ledger is unavailable", headers={"Retry-After": "1"}
            ) from None
    if principal is None:
        state.metrics.auth_failures.inc()
        raise HTTPException(401, "invalid or revoked API key", headers=_CHALLENGE)
    await _charge(state, f"key:{principal.key_id}")
    return principal


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the authenticated principal, if its role holds ``permission``; else 401, 403 or 429."""

    async def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> Principal:
        return await authorize(request, credentials, permission)

    return dependency


async def authorize(
    request: Request, credentials: HTTPAuthorizationCredentials | None, permission: Permission
) -> Principal:
    """The authenticated principal, if its role holds ``permission``; else 401, 403 or 429."""
    principal = await authenticate(request, credentials)
    if not principal.can(permission):
        raise HTTPException(403, f"role {principal.role.value!r} lacks the {permission.value!r} permission")
    return principal
