"""Lexecon core: the governance engine for AI-agent tool calls.

The public surface is re-exported here; submodules (``lexecon_core.policy``, ``.risk``, ``.tokens``, ``.ledger``,
``.keys``) hold the details.
"""

import logging

from lexecon_core.capability import Capability, current_capability, use_capability
from lexecon_core.config import Settings, load_settings
from lexecon_core.decisions import Decision, DecisionRequest, Governor, LocalGovernor
from lexecon_core.errors import (
    ConfigError,
    GovernanceDenied,
    GovernanceError,
    InvalidRequest,
    KeyStoreError,
    LedgerError,
    LedgerTampered,
    LexeconError,
    PolicyError,
    TokenError,
)
from lexecon_core.ledger import Ledger, LedgerEntry, VerificationReport
from lexecon_core.node import Node, init_node, open_node
from lexecon_core.policy import (
    Outcome,
    PolicyEngine,
    PolicyMode,
    PolicyRelation,
    PolicyResult,
    PolicyTerm,
    RelationType,
    TermType,
    load_policy,
)
from lexecon_core.remote import RemoteGovernor
from lexecon_core.risk import RiskAssessment, RiskLevel, RiskRules, assess
from lexecon_core.tokens import CapabilityClaims, ReplayCache, issue_token, verify_token

__version__ = "0.1.0"

# A library leaves output to the application: without this, a warning from a program that never set up logging
# reaches Python's last-resort handler and prints to stderr. ``lexecon`` (the CLI and server) configures its own.
logging.getLogger("lexecon").addHandler(logging.NullHandler())

__all__ = [
    "Capability",
    "CapabilityClaims",
    "ConfigError",
    "Decision",
    "DecisionRequest",
    "GovernanceDenied",
    "GovernanceError",
    "Governor",
    "InvalidRequest",
    "KeyStoreError",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "LedgerTampered",
    "LexeconError",
    "LocalGovernor",
    "Node",
    "Outcome",
    "PolicyEngine",
    "PolicyError",
    "PolicyMode",
    "PolicyRelation",
    "PolicyResult",
    "PolicyTerm",
    "RelationType",
    "RemoteGovernor",
    "ReplayCache",
    "RiskAssessment",
    "RiskLevel",
    "RiskRules",
    "Settings",
    "TermType",
    "TokenError",
    "VerificationReport",
    "__version__",
    "assess",
    "current_capability",
    "init_node",
    "issue_token",
    "load_policy",
    "load_settings",
    "open_node",
    "use_capability",
    "verify_token",
]
