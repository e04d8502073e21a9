"""The application factory: ``create_app()`` wires the governor, API keys, rate limiting, metrics and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from lexecon_core import __version__
from lexecon_core.auth import ApiKeyStore
from lexecon_core.config import Settings, load_settings
from lexecon_core.decisions import LocalGovernor
from lexecon_core.errors import LedgerError, PolicyError
from lexecon_core.policy import policy_from_document
from lexecon_core.server._errors import install_error_handlers
from lexecon_core.server._metrics import ServerMetrics
from lexecon_core.server._middleware import HardeningMiddleware, JsonCORSMiddleware
from lexecon_core.server._ratelimit import make_rate_limiter
from lexecon_core.server._replay import RedisReplayCache
from lexecon_core.server._state import ServerState
from lexecon_core.server.routers import apikeys, decide, ledger, meta, policies
from lexecon_core.tokens import ReplayCache

__all__ = ["create_app"]

logger = logging.getLogger("lexecon.server")


def create_app(settings: Settings | None = None, *, home: str | Path | None = None) -> FastAPI:
    """A Lexecon server for the node at ``home`` (or ``settings``). Opens the node now; closes it on shutdown."""
    settings = settings or load_settings(home)
    governor = LocalGovernor(settings=settings)
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    replay_cache = RedisReplayCache(redis_url) if redis_url else ReplayCache()
    state = ServerState(
        settings=settings,
        governor=governor,
        api_keys=ApiKeyStore(governor.node.ledger, cache_seconds=settings.api_key_cache_seconds),
        limiter=make_rate_limiter(settings.rate_limit_per_second, settings.rate_limit_burst, redis_url),
        metrics=ServerMetrics(governor.node.ledger),
        replay_cache=replay_cache,
    )
    try:
        sync_policy(state)
    except LedgerError as exc:  # logged by the ledger; decisions and key checks refuse until it verifies again
        logger.error("starting without the ledger's policy: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        follower = asyncio.create_task(_follow_policy(state))
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await state.limiter.aclose()
            if isinstance(replay_cache, RedisReplayCache):
                replay_cache.close()
            state.api_keys.close()
            governor.close()

    app = FastAPI(
        title="Lexecon",
        version=__version__,
        summary="Governance for AI-agent tool calls: policy decisions, capability tokens, a verifiable ledger.",
        docs_url=None,  # the interactive docs need scripts the strict CSP forbids; /openapi.json is served
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.lexecon = state
    install_error_handlers(app)
    for router in (decide.router, ledger.router, policies.router, apikeys.router, meta.router):
        app.include_router(router)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            JsonCORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            max_age=600,
        )
    app.add_middleware(HardeningMiddleware, max_body_bytes=settings.max_request_bytes)
    return app


def sync_policy(state: ServerState) -> bool:
    """Catch up with the ledger and adopt the newest policy it records, if newer than the one in force (another
    server, or the CLI, loaded it). Returns whether the policy changed. A pinned ``LEXECON_POLICY_FILE`` is never
    replaced.

    The policy comes from the governance state folded from *verified* entries only (``Ledger.governance``): a row
    written into the database without the node's key - a forged ``policy_loaded`` entry, a newer one hidden by
    editing a column - cannot change what the node enforces; it makes the ledger fail verification, and the node
    then refuses to act on it (LedgerTampered) until an operator looks."""
    record = state.governor.node.ledger.governance().policy  # catches up (API keys too) even when pinned
    if state.settings.policy_file is not None or record is None or record.seq <= state.policy_seq:
        return False
    try:
        engine = policy_from_document(record.document, source=f"ledger entry {record.seq}")
    except PolicyError as exc:  # cannot happen for entries we wrote; keep deciding by the old policy
        logger.error("policy in ledger entry %d cannot be loaded: %s", record.seq, exc)
        engine = None
    with state.policy_lock:
        if record.seq <= state.policy_seq:  # a newer policy was adopted here while this one was being read
            return False
        state.policy_seq = record.seq
        if engine is None:
            return False
        changed = engine.version != state.governor.policy.version
        state.governor.policy = engine
        return changed


async def _follow_policy(state: ServerState) -> None:
    interval = state.settings.policy_sync_seconds
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            if await run_in_threadpool(sync_policy, state):
                logger.info("adopted policy %s from the ledger", state.governor.policy.version)
        except Exception as exc:  # the database may be briefly away; keep the current policy and try again
            logger.warning("policy sync failed: %s", exc)
