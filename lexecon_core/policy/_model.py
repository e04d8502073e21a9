"""Policy data model: terms, relations, conditions and modes. No evaluation logic lives here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lexecon_core.errors import PolicyError
from lexecon_core.risk import RiskLevel


class PolicyMode(StrEnum):
    """How the engine treats requests that no relation speaks to.

    ``permissive`` allows unless forbidden; ``strict`` denies unless permitted; ``paranoid`` is strict and also
    escalates anything at or above high risk for human confirmation.
    """

    PERMISSIVE = "permissive"
    STRICT = "strict"
    PARANOID = "paranoid"

    @property
    def rank(self) -> int:
        return {"permissive": 0, "strict": 1, "paranoid": 2}[self.value]

    def stricter(self, other: PolicyMode | None) -> PolicyMode:
        """The stricter of two modes: a request may tighten the configured mode, never loosen it."""
        if other is None or other.rank <= self.rank:
            return self
        return other


class TermType(StrEnum):
    """What part of a request a term's pattern is matched against."""

    ACTOR = "actor"  # the agent or user making the call, e.g. ``ai_agent:support_bot``
    ACTION = "action"  # the proposed action, e.g. ``read:customer``
    TOOL = "tool"  # the tool name, e.g. ``delete_*``
    RESOURCE = "resource"  # the resource acted on (``context["resource"]`` in a decision request)
    DATA_CLASS = "data_class"  # satisfied when any of the request's data classes matches
    CONTEXT = "context"  # ``key=pattern``: satisfied when ``context[key]`` (as text, see _glob.context_text) matches


class RelationType(StrEnum):
    """The five relation kinds. Full semantics with examples: docs/policy.md."""

    PERMITS = "permits"  # source and target both hold -> the request is permitted
    FORBIDS = "forbids"  # source and target both hold -> denied; forbid overrides permit
    REQUIRES = "requires"  # source holds but target does not -> denied (a precondition is missing)
    IMPLIES = "implies"  # source holds -> target is treated as holding too (roles, action hierarchies)
    CONFLICTS = "conflicts"  # symmetric: both hold in one request -> denied (separation of duties)


class Conditions(BaseModel):
    """Restrictions that must all hold for a relation to apply. Absent fields impose nothing.

    ``data_classes_any``: at least one of the request's data classes matches one of these patterns.
    ``data_classes_only``: every data class of the request matches one of these patterns.
    ``min_risk_level`` / ``max_risk_level``: the request's risk level is within bounds. An unknown level fails closed:
    the bounds hold for relations that deny and fail for relations that grant.
    ``context``: for each ``key: pattern``, the request context has ``key`` and its value, as text (JSON for
    non-strings), matches ``pattern``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_classes_any: tuple[str, ...] | None = None
    data_classes_only: tuple[str, ...] | None = None
    min_risk_level: RiskLevel | None = None
    max_risk_level: RiskLevel | None = None
    context: dict[str, str] | None = None

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


_NO_CONDITIONS = Conditions()


def _pattern_error(value: str) -> str | None:
    if not value:
        return "must not be empty"
    return None


@dataclass(frozen=True, slots=True)
class PolicyTerm:
    """A named pattern over one part of a request: ``PolicyTerm("bots", TermType.ACTOR, "ai_agent:*")``."""

    term_id: str
    term_type: TermType
    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.term_id, str) or not self.term_id:
            raise PolicyError("term_id must be a non-empty string")
        try:
            object.__setattr__(self, "term_type", TermType(self.term_type))
        except ValueError:
            raise PolicyError(
                f"term {self.term_id!r}: unknown term_type {self.term_type!r}; expected one of "
                f"{[t.value for t in TermType]}"
            ) from None
        if not isinstance(self.value, str) or not self.value:
            raise PolicyError(f"term {self.term_id!r}: value must be a non-empty string")
        if self.term_type is TermType.CONTEXT:
            key, sep, pattern = self.value.partition("=")
            if not sep or not key or not pattern:
                raise PolicyError(f"term {self.term_id!r}: a context term's value must look like 'key=pattern'")

    def to_dict(self) -> dict[str, str]:
        return {"term_id": self.term_id, "term_type": self.term_type.value, "value": self.value}


@dataclass(frozen=True, slots=True)
class PolicyRelation:
    """A typed edge between two terms, optionally restricted by :class:`Conditions`."""

    relation_type: RelationType
    source_term_id: str
    target_term_id: str
    conditions: Conditions | Mapping[str, Any] | None = None
    relation_id: str = field(default="")

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "relation_type", RelationType(self.relation_type))
        except ValueError:
            raise PolicyError(
                f"unknown relation_type {self.relation_type!r}; expected one of {[r.value for r in RelationType]}"
            ) from None
        for name in ("source_term_id", "target_term_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise PolicyError(f"relation {name} must be a non-empty string")
        object.__setattr__(self, "conditions", _coerce_conditions(self.conditions))
        if not self.relation_id:
            rel_id = f"{self.relation_type.value}:{self.source_term_id}->{self.target_term_id}"
            object.__setattr__(self, "relation_id", rel_id)

    @property
    def cond(self) -> Conditions:
        assert isinstance(self.conditions, Conditions)
        return self.conditions

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "relation_id": self.relation_id,
            "relation_type": self.relation_type.value,
            "source_term_id": self.source_term_id,
            "target_term_id": self.target_term_id,
        }
        if not self.cond.is_empty():
            data["conditions"] = self.cond.model_dump(mode="json", exclude_none=True)
        return data


def _coerce_conditions(value: Conditions | Mapping[str, Any] | None) -> Conditions:
    if value is None:
        return _NO_CONDITIONS
    if isinstance(value, Conditions):
        return value
    try:
        return Conditions.model_validate(dict(value))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PolicyError(f"invalid conditions.{where}: {first['msg']}") from None
    except (TypeError, ValueError):
        raise PolicyError("conditions must be a mapping") from None


class Outcome(StrEnum):
    APPROVED = "approved"
    DENIED = "denied"
    ESCALATED = "escalated"


_EFFECTS = {
    RelationType.PERMITS: "permit",
    RelationType.FORBIDS: "forbid",
    RelationType.REQUIRES: "requirement_unmet",
    RelationType.IMPLIES: "implied",
    RelationType.CONFLICTS: "conflict",
}


@dataclass(frozen=True, slots=True)
class MatchedRelation:
    """One relation that took part in a decision, and the part it played (its ``effect``)."""

    relation_id: str
    relation_type: RelationType
    source_term_id: str
    target_term_id: str
    effect: str

    @classmethod
    def of(cls, relation: PolicyRelation) -> MatchedRelation:
        return cls(
            relation.relation_id,
            relation.relation_type,
            relation.source_term_id,
            relation.target_term_id,
            _EFFECTS[relation.relation_type],
        )

    def to_dict(self) -> dict[str, str]:
        return {"relation_id": self.relation_id, "relation_type": self.relation_type.value, "effect": self.effect}
