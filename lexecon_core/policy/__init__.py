"""The deterministic policy engine: terms, relations, modes, evaluation and policy files."""

from lexecon_core.policy._classify import ArgMatch, Classification, ClassificationRule
from lexecon_core.policy._document import load_policy, parse_policy_text, policy_from_document
from lexecon_core.policy._engine import PolicyEngine, PolicyResult
from lexecon_core.policy._model import (
    Conditions,
    MatchedRelation,
    Outcome,
    PolicyMode,
    PolicyRelation,
    PolicyTerm,
    RelationType,
    TermType,
)

__all__ = [
    "ArgMatch",
    "Classification",
    "ClassificationRule",
    "Conditions",
    "MatchedRelation",
    "Outcome",
    "PolicyEngine",
    "PolicyMode",
    "PolicyRelation",
    "PolicyResult",
    "PolicyTerm",
    "RelationType",
    "TermType",
    "load_policy",
    "parse_policy_text",
    "policy_from_document",
]
