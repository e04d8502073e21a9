"""Risk assessment: six dimensions, each an integer 0-100, combined into one weighted score and a level.

The rules are data (:class:`RiskRules`), so an operator can replace or extend them; :data:`DEFAULT_RULES` documents
the defaults. Assessment is deterministic and uses integers only, so it can be stored in the ledger as canonical JSON.

How a score is formed, per dimension:
1. every tool rule whose pattern matches the tool, and every data-class rule matching one of the request's data
   classes, contributes its scores; the dimension takes the **maximum** contribution;
2. every matching context rule adds its (possibly negative) adjustment;
3. the result is clamped to 0-100, then raised to the floor of the declared risk level, if one was declared.

The overall score is the weighted average of the six dimensions (integer weights summing to 100, default
25/20/20/15/10/10), rounded half up. Levels: below 30 low, below 60 medium, below 80 high, otherwise critical.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from lexecon_core import _glob
from lexecon_core.errors import ConfigError

__all__ = [
    "DEFAULT_RULES",
    "DIMENSIONS",
    "RISK_LEVEL_NUMBERS",
    "ContextRule",
    "DeclaredRiskLevel",
    "DataClassRule",
    "RiskAssessment",
    "RiskLevel",
    "RiskRules",
    "ToolRule",
    "assess",
    "load_risk_rules",
]


class RiskLevel(StrEnum):
    """Ordered by severity (``RiskLevel.HIGH > RiskLevel.MEDIUM``), not alphabetically."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]

    # str already defines the comparisons alphabetically, so all four are spelled out.
    def __lt__(self, other: str) -> bool:
        return self.rank < RiskLevel(other).rank

    def __le__(self, other: str) -> bool:
        return self.rank <= RiskLevel(other).rank

    def __gt__(self, other: str) -> bool:
        return self.rank > RiskLevel(other).rank

    def __ge__(self, other: str) -> bool:
        return self.rank >= RiskLevel(other).rank


_LEVEL_RANK = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2, RiskLevel.CRITICAL: 3}

#: How a declared risk level given as a number (the seed's 1-5 scale) maps onto the four levels.
RISK_LEVEL_NUMBERS: Mapping[int, RiskLevel] = {
    1: RiskLevel.LOW,
    2: RiskLevel.MEDIUM,
    3: RiskLevel.HIGH,
    4: RiskLevel.CRITICAL,
    5: RiskLevel.CRITICAL,
}


def _level_from_number(value: object) -> object:
    # bool is an int in Python, and 2.0 would pass an int check after coercion: refuse both before pydantic coerces.
    if isinstance(value, bool | float):
        raise ValueError("must be a level name (low, medium, high, critical) or an integer from 1 to 5")
    if isinstance(value, int):
        if value not in RISK_LEVEL_NUMBERS:
            raise ValueError(f"must be an integer from 1 to 5 (1 low, 2 medium, 3 high, 4 and 5 critical), not {value}")
        return RISK_LEVEL_NUMBERS[value]
    return value


#: A declared risk level in a request: a level name, or an integer 1-5 mapped by :data:`RISK_LEVEL_NUMBERS`.
DeclaredRiskLevel = Annotated[
    RiskLevel,
    BeforeValidator(_level_from_number),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "enum": [level.value for level in RiskLevel]},
                {"type": "integer", "minimum": 1, "maximum": 5},
            ],
            "description": "a level name, or 1-5: 1 low, 2 medium, 3 high, 4 and 5 critical",
        }
    ),
]

DIMENSIONS: tuple[str, ...] = ("security", "privacy", "compliance", "operational", "reputational", "financial")

Score = Field(ge=0, le=100)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("scores", "adjust", check_fields=False)
    @classmethod
    def _known_dimensions(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"unknown risk dimension(s) {unknown}; expected some of {list(DIMENSIONS)}")
        return value


class _ScoredRule(_Rule):
    pattern: str = Field(min_length=1)
    scores: dict[str, int]

    @field_validator("scores")
    @classmethod
    def _bounded(cls, value: dict[str, int]) -> dict[str, int]:
        return _bounded_scores(value)


class ToolRule(_ScoredRule):
    """Scores for tools whose name matches ``pattern``."""


class DataClassRule(_ScoredRule):
    """Scores for requests touching a data class that matches ``pattern``."""


class ContextRule(_Rule):
    key: str = Field(min_length=1)
    pattern: str = "*"
    adjust: dict[str, int]

    @field_validator("adjust")
    @classmethod
    def _bounded(cls, value: dict[str, int]) -> dict[str, int]:
        for dim, delta in value.items():
            if not -100 <= delta <= 100:
                raise ValueError(f"adjustment for {dim} must be between -100 and 100")
        return value


def _bounded_scores(value: dict[str, int]) -> dict[str, int]:
    for dim, score in value.items():
        if not 0 <= score <= 100:
            raise ValueError(f"score for {dim} must be between 0 and 100")
    return value


class RiskRules(BaseModel):
    """The configurable rule set. Load from a mapping with :meth:`from_mapping` for a clear error on bad input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool_rules: tuple[ToolRule, ...] = ()
    data_class_rules: tuple[DataClassRule, ...] = ()
    context_rules: tuple[ContextRule, ...] = ()
    weights: dict[str, int] = Field(
        default_factory=lambda: {
            "security": 25,
            "privacy": 20,
            "compliance": 20,
            "operational": 15,
            "reputational": 10,
            "financial": 10,
        }
    )
    declared_floor: dict[RiskLevel, int] = Field(
        default_factory=lambda: {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 30, RiskLevel.HIGH: 60, RiskLevel.CRITICAL: 80}
    )
    thresholds: dict[RiskLevel, int] = Field(
        default_factory=lambda: {RiskLevel.MEDIUM: 30, RiskLevel.HIGH: 60, RiskLevel.CRITICAL: 80}
    )

    @model_validator(mode="after")
    def _check(self) -> RiskRules:
        if set(self.weights) != set(DIMENSIONS):
            raise ValueError(f"weights must name exactly the dimensions {list(DIMENSIONS)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) != 100:
            raise ValueError("weights must be non-negative integers summing to 100")
        if any(not 0 <= floor <= 100 for floor in self.declared_floor.values()):
            raise ValueError("declared_floor values must be between 0 and 100")
        levels = [self.thresholds.get(lvl) for lvl in (RiskLevel.MEDIUM, RiskLevel.HIGH, RiskLevel.CRITICAL)]
        if None in levels or not 0 < levels[0] < levels[1] < levels[2] <= 100:  # type: ignore[operator]
            raise ValueError("thresholds must give medium < high < critical, each within 1-100")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RiskRules:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "risk rules"
            raise ConfigError(f"invalid risk rules at {where}: {first['msg']}") from None

    def model_post_init(self, context: Any, /) -> None:
        # Indexed with their position, so matches are applied in rule order without scanning every rule.
        tools: _glob.PatternIndex[tuple[int, ToolRule]] = _glob.PatternIndex()
        for position, rule in enumerate(self.tool_rules):
            tools.add(rule.pattern, (position, rule))
        classes: _glob.PatternIndex[tuple[int, DataClassRule]] = _glob.PatternIndex()
        for position, dc_rule in enumerate(self.data_class_rules):
            classes.add(dc_rule.pattern, (position, dc_rule))
        self._tool_index, self._class_index = tools, classes
        self._matches = {}

    _tool_index: _glob.PatternIndex[tuple[int, ToolRule]] = PrivateAttr()
    _class_index: _glob.PatternIndex[tuple[int, DataClassRule]] = PrivateAttr()
    _matches: dict[tuple[bool, str], tuple[_ScoredRule, ...]] = PrivateAttr()

    def matching(self, *, tool: str | None = None, data_class: str | None = None) -> tuple[_ScoredRule, ...]:
        """The tool rules matching ``tool`` (or the data-class rules matching ``data_class``), in rule order.

        Memoised: an agent calls the same few tools over and over, and the rules never change (the model is frozen),
        so each name is glob-matched against the rules once. Bounded: past 4,096 names the memo starts again."""
        key = (tool is not None, tool if tool is not None else data_class or "")
        found = self._matches.get(key)
        if found is None:
            index = self._tool_index if tool is not None else self._class_index
            found = tuple(rule for _, rule in sorted(index.lookup(key[1]), key=_position))
            if len(self._matches) >= 4096:
                self._matches.clear()
            self._matches[key] = found
        return found

    def level_for(self, score: int) -> RiskLevel:
        if score >= self.thresholds[RiskLevel.CRITICAL]:
            return RiskLevel.CRITICAL
        if score >= self.thresholds[RiskLevel.HIGH]:
            return RiskLevel.HIGH
        if score >= self.thresholds[RiskLevel.MEDIUM]:
            return RiskLevel.MEDIUM
        return RiskLevel.LOW


def _tool(pattern: str, **scores: int) -> ToolRule:
    return ToolRule(pattern=pattern, scores=scores)


def _data(pattern: str, **scores: int) -> DataClassRule:
    return DataClassRule(pattern=pattern, scores=scores)


_DESTRUCTIVE = dict(security=70, operational=80, compliance=30, financial=30)
_MONEY = dict(financial=80, compliance=50, security=40, operational=30)
_OUTBOUND = dict(reputational=60, privacy=40, compliance=20)
_EXEC = dict(security=80, operational=60, compliance=20)
_WRITE = dict(operational=30, security=20)

DEFAULT_RULES = RiskRules(
    tool_rules=(
        *(_tool(p, **_DESTRUCTIVE) for p in ("delete*", "*_delete", "drop*", "remove*", "destroy*", "truncate*")),
        *(_tool(p, **_MONEY) for p in ("*payment*", "*refund*", "transfer*", "*charge*", "pay_*", "*wire*")),
        *(_tool(p, **_OUTBOUND) for p in ("send_*", "*email*", "post_*", "publish*")),
        *(_tool(p, **_EXEC) for p in ("exec*", "shell*", "*command*", "run_code*", "*python*", "*sql*")),
        *(_tool(p, **_WRITE) for p in ("write*", "update*", "create*", "*insert*", "set_*")),
    ),
    data_class_rules=(
        _data("pii", privacy=75, compliance=60, security=40, reputational=40),
        _data("personal*", privacy=75, compliance=60, security=40, reputational=40),
        _data("phi", privacy=90, compliance=85, security=60, reputational=60),
        _data("health*", privacy=90, compliance=85, security=60, reputational=60),
        _data("pci", financial=70, compliance=85, security=70, privacy=60),
        _data("payment_card*", financial=70, compliance=85, security=70, privacy=60),
        _data("credential*", security=95, compliance=50, privacy=40),
        _data("secret*", security=95, compliance=50, privacy=40),
        _data("financial*", financial=60, compliance=50, privacy=30),
        _data("confidential*", security=50, reputational=50, privacy=40),
    ),
    context_rules=(
        ContextRule(key="environment", pattern="prod*", adjust={"operational": 15, "security": 5}),
        ContextRule(key="destination", pattern="external", adjust={"reputational": 10, "privacy": 10}),
    ),
)


def _position(item: tuple[int, Any]) -> int:
    return item[0]


def load_risk_rules(path: Path | None) -> RiskRules:
    """Rules from a JSON or YAML file (the :class:`RiskRules` fields); the defaults when ``path`` is None."""
    if path is None:
        return DEFAULT_RULES
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read risk rules {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"risk rules {path} must be a mapping")
    return RiskRules.from_mapping(data)


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    """The outcome of :func:`assess`: per-dimension scores, the weighted score, its level and why."""

    dimensions: dict[str, int]
    score: int
    level: RiskLevel
    factors: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        return {
            "dimensions": dict(self.dimensions),
            "score": self.score,
            "level": self.level.value,
            "factors": list(self.factors),
        }


def assess(
    *,
    tool: str | None,
    data_classes: Sequence[str] = (),
    declared_level: RiskLevel | str | None = None,
    context: Mapping[str, Any] | None = None,
    rules: RiskRules = DEFAULT_RULES,
) -> RiskAssessment:
    """Score a proposed tool call. Pure and deterministic."""
    scores = dict.fromkeys(DIMENSIONS, 0)
    factors: list[str] = []

    def contribute(label: str, rule_scores: Mapping[str, int]) -> None:
        factors.append(label)
        for dim, value in rule_scores.items():
            if value > scores[dim]:
                scores[dim] = value

    if tool:
        for rule in rules.matching(tool=tool):
            contribute(f"tool:{rule.pattern}", rule.scores)
    for data_class in data_classes:
        for dc_rule in rules.matching(data_class=data_class):
            contribute(f"data_class:{dc_rule.pattern}", dc_rule.scores)
    if context:
        for ctx_rule in rules.context_rules:
            if ctx_rule.key in context and _glob.matches(ctx_rule.pattern, _glob.context_text(context[ctx_rule.key])):
                factors.append(f"context:{ctx_rule.key}={ctx_rule.pattern}")
                for dim, delta in ctx_rule.adjust.items():
                    scores[dim] += delta
    floor = 0
    if declared_level is not None:
        level = RiskLevel(declared_level)
        floor = rules.declared_floor.get(level, 0)
        if floor:
            factors.append(f"declared:{level.value}")
    for dim in DIMENSIONS:
        scores[dim] = max(min(max(scores[dim], 0), 100), floor)

    weighted = sum(scores[dim] * rules.weights[dim] for dim in DIMENSIONS)
    overall = (weighted + 50) // 100
    return RiskAssessment(dimensions=scores, score=overall, level=rules.level_for(overall), factors=tuple(factors))
