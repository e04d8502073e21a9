"""Prometheus metrics of one server.

Counters and the latency histogram are kept per process; with several workers (``lexecon server --workers N``)
``PROMETHEUS_MULTIPROC_DIR`` is set and a scrape of any worker sums them across workers. Ledger size and open
escalations are read from the shared database at scrape time, so every worker reports the same values; the result
of the last ``GET /ledger/verify`` is per process (``-1`` until one ran in the scraped process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from lexecon_core.ledger import Ledger

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_ESCALATION_TTL = 10.0  # seconds an open-escalation count is reused; counting scans the ledger


@dataclass(eq=False)  # registries key collectors by identity
class _LedgerCollector(Collector):
    ledger: Ledger
    verify_valid: int = -1  # 1 valid, 0 invalid, -1 not verified by this process yet
    verified_at: float = 0.0
    _escalations: tuple[float, int] = field(default=(0.0, 0))

    def open_escalations(self) -> int:
        checked, value = self._escalations
        if time.monotonic() - checked > _ESCALATION_TTL:
            # An escalation stays open until an escalation_resolved entry closes it.
            value = max(
                0,
                self.ledger.count(outcome="escalated") - self.ledger.count(entry_type="escalation_resolved"),
            )
            self._escalations = (time.monotonic(), value)
        return value

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("lexecon_ledger_entries", "entries in the ledger", value=self.ledger.head()[0])
        yield GaugeMetricFamily(
            "lexecon_ledger_verify_valid",
            "result of the last ledger verification in this process: 1 valid, 0 invalid, -1 none yet",
            value=self.verify_valid,
        )
        yield GaugeMetricFamily(
            "lexecon_ledger_verify_timestamp_seconds", "when the last verification finished", value=self.verified_at
        )
        yield GaugeMetricFamily(
            "lexecon_escalations_open", "escalated decisions not yet resolved", value=self.open_escalations()
        )
        yield CounterMetricFamily(
            "lexecon_ledger_refusals",
            "times this process refused to act on ledger rows that did not verify (hash, signature, chain place)",
            value=self.ledger.refusals,
        )


class ServerMetrics:
    def __init__(self, ledger: Ledger) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("lexecon_decisions", "decisions made, by outcome", ["outcome"], registry=self.registry)
        self.decision_replays = Counter(
            "lexecon_decision_replays",
            "POST /decide retries answered with the decision their Idempotency-Key already has",
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "lexecon_decision_seconds",
            "time to decide, record and sign, as seen by POST /decide",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "lexecon_auth_failures", "requests refused for a missing or bad API key", registry=self.registry
        )
        self.rate_limited = Counter("lexecon_rate_limited", "requests refused by rate limiting", registry=self.registry)
        self.ledger = _LedgerCollector(ledger)
        self.registry.register(self.ledger)

    def record_verification(self, valid: bool) -> None:
        self.ledger.verify_valid = int(valid)
        self.ledger.verified_at = time.time()

    def render(self) -> bytes:
        """The text exposition format. Blocking (it reads the database): call it off the event loop."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        scrape.register(self.ledger)
        return generate_latest(scrape)
