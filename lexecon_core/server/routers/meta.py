"""Unauthenticated endpoints: health, metrics (unless made private), and what clients need to check tokens."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from lexecon_core import __version__
from lexecon_core.auth import Permission
from lexecon_core.errors import LedgerTampered
from lexecon_core.keys import jwks_of
from lexecon_core.ledger import Ledger
from lexecon_core.server._security import authorize, bearer, limit_anonymous
from lexecon_core.server._state import state_of
from lexecon_core.wire import (
    KEY_ROTATIONS_PATH,
    ErrorResponse,
    Health,
    KeyRotationEntry,
    KeyRotations,
    NodeInfo,
)

router = APIRouter(tags=["meta"])

JWKS_PATH = "/.well-known/jwks.json"
_HEALTH_SYNC_SECONDS = 1.0


@router.get(
    "/health",
    response_model=Health,
    responses={
        429: {"model": ErrorResponse, "description": "rate limit for this client address exceeded"},
        503: {"model": Health, "description": "not ready: a check failed"},
    },
    dependencies=[Depends(limit_anonymous)],
    summary="Liveness and readiness",
)
async def health(request: Request) -> JSONResponse:
    """200 when the server can decide: its database answers and the ledger verifies as far as the node acts on it.
    503 (with the failing check named) otherwise."""
    state = state_of(request)
    checks = {"database": "ok", "ledger": "ok"}
    try:
        await run_in_threadpool(_check_ledger, state.governor.node.ledger)
    except LedgerTampered as exc:  # the entry and the reason, never data from the row
        checks["ledger"] = f"entry {exc.seq} does not verify ({exc.reason})"
    except Exception as exc:  # any failure means not ready; the name of the error is enough to act on
        checks["database"] = f"unavailable ({type(exc).__name__})"
        checks["ledger"] = "not checked"
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", node_id=state.node_id, version=__version__, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _check_ledger(ledger: Ledger) -> None:
    """One database read per check; the ledger is caught up and verified at most once a second for it (a process that
    is deciding does that on every append anyway), so a flood of health checks cannot tie up the ledger."""
    ledger.head()
    if not ledger.synced_within(_HEALTH_SYNC_SECONDS):
        ledger.trusted_state()


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"},
        401: {"model": ErrorResponse, "description": "LEXECON_METRICS_PUBLIC=false and no valid API key"},
        403: {"model": ErrorResponse, "description": "LEXECON_METRICS_PUBLIC=false and the role lacks read_metrics"},
        429: {"model": ErrorResponse, "description": "rate limit (per key, or per address when public) exceeded"},
        503: {"model": ErrorResponse, "description": "the database is unavailable"},
    },
    # Authentication is optional by configuration: anonymous, or a bearer key when metrics are private.
    openapi_extra={"security": [{}, {"HTTPBearer": []}]},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    state = state_of(request)
    if state.settings.metrics_public:
        await limit_anonymous(request)
    else:  # private by configuration, so the dependency cannot be declared on the route
        await authorize(request, await bearer(request), Permission.READ_METRICS)
    body = await run_in_threadpool(state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get(JWKS_PATH, summary="Keys that may sign capability tokens now (JWKS)")
async def jwks(request: Request) -> dict[str, Any]:
    """The active key and keys retired within one token lifetime: what a verifier of a token needs. Every key that
    ever signed the ledger is at ``GET /ledger/keys``."""
    state = state_of(request)
    grace = state.settings.token_ttl_seconds + state.settings.token_leeway_seconds
    keys = await run_in_threadpool(state.governor.node.keys.token_keys, grace)  # reads retirement files
    return jwks_of(keys.values())


@router.get("/.well-known/lexecon.json", response_model=NodeInfo, summary="Node facts for token verifiers")
async def node_info(request: Request) -> NodeInfo:
    state = state_of(request)
    return NodeInfo(
        node_id=state.node_id,
        version=__version__,
        jwks_uri=JWKS_PATH,
        token_audience=state.settings.token_audience,
        token_ttl_seconds=state.settings.token_ttl_seconds,
        token_leeway_seconds=state.settings.token_leeway_seconds,
    )


@router.get(
    KEY_ROTATIONS_PATH,
    response_model=KeyRotations,
    responses={
        429: {"model": ErrorResponse, "description": "rate limit for this client address exceeded"},
        503: {"model": ErrorResponse, "description": "the database is unavailable"},
    },
    dependencies=[Depends(limit_anonymous)],  # reads the ledger: limited per address, like /health
    summary="The node's signed key hand-overs (key_rotated ledger entries)",
)
async def key_rotations(request: Request) -> KeyRotations:
    """Every ``key_rotated`` entry exactly as stored, oldest first. Each is signed by the key it retires, so a client
    that pinned the node's keys can follow a rotation without trusting this server's JWKS."""
    state = state_of(request)
    entries = await run_in_threadpool(state.governor.node.ledger.entries, entry_type="key_rotated")
    return KeyRotations(
        node_id=state.node_id,
        entries=[
            KeyRotationEntry(
                seq=e.seq,
                prev_hash=e.prev_hash.hex(),
                entry_hash=e.entry_hash.hex(),
                kid=e.kid,
                signature=base64.b64encode(e.signature).decode("ascii"),
                body=base64.b64encode(e.body).decode("ascii"),
            )
            for e in entries
        ],
    )
