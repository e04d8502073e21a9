"""What every request handler shares: the governor, API keys, rate limiter and metrics of one server process."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from fastapi import Request

from lexecon_core.auth import ApiKeyStore
from lexecon_core.config import Settings
from lexecon_core.decisions import LocalGovernor
from lexecon_core.server._metrics import ServerMetrics
from lexecon_core.server._ratelimit import RateLimiter
from lexecon_core.tokens import ReplayCache


@dataclass
class ServerState:
    settings: Settings
    governor: LocalGovernor
    api_keys: ApiKeyStore
    limiter: RateLimiter
    metrics: ServerMetrics
    replay_cache: ReplayCache  # tokens consumed through POST /decide/verify
    policy_seq: int = 0  # the policy_loaded entry the governor decides by (0: the node's own policy)
    policy_lock: threading.Lock = field(default_factory=threading.Lock)  # changes of policy_seq and the policy
    heavy: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))  # whole-ledger jobs at once

    @property
    def node_id(self) -> str:
        return self.governor.node.node_id


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.lexecon
    return state
