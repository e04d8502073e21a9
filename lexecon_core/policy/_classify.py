"""Node-side classification of tool calls: facts the policy itself attaches to a call, whatever the caller declares.

A caller declares ``data_classes`` and ``context``; a rule like "personal data never leaves" built only on those holds
only while the calling agent is honest. A policy's ``classifications`` let the node add facts of its own: data classes
per tool (``get_customer`` always touches ``pii``) and context derived from the call's arguments (a recipient outside
``*@example.com`` means ``destination=external``). They only ever *add*: the engine sees the caller's facts plus the
node's, so a caller cannot declare a node fact away. The arguments are the ones the capability token binds (by their
hash), so the call that runs is the call that was classified.

.. code-block:: yaml

    classifications:
      - {tool: get_customer, data_classes: [pii]}
      - tool: send_email
        args: {to: {not_matches: ["*@example.com"]}}
        context: {destination: external}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lexecon_core import _glob
from lexecon_core.errors import PolicyError
from lexecon_core.risk import RiskAssessment, RiskLevel, RiskRules, assess

_Text = Annotated[str, Field(min_length=1)]


class ArgMatch(BaseModel):
    """One argument condition: exactly one of ``matches`` / ``not_matches``, each a list of wildcard patterns.

    The argument's value is matched as text (:func:`~lexecon_core._glob.context_text`). A list or tuple value is
    tested element by element: ``matches`` holds when any element matches a pattern, ``not_matches`` when any element
    matches none of them (one outside recipient among many is enough). A missing argument, or an empty list, satisfies
    neither.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    matches: tuple[_Text, ...] | None = Field(default=None, min_length=1)
    not_matches: tuple[_Text, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> ArgMatch:
        # Both at once would be ambiguous for a list argument (may different elements satisfy each?); two rules, or
        # one pattern list, say either meaning unambiguously.
        if (self.matches is None) == (self.not_matches is None):
            raise ValueError("give exactly one of 'matches' or 'not_matches'")
        return self


class ClassificationRule(BaseModel):
    """When ``tool`` (a wildcard pattern, as for tool terms) is called and every ``args`` condition holds, the call
    gets ``data_classes`` and ``context`` in addition to whatever the caller declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: _Text
    data_classes: tuple[_Text, ...] = ()
    context: dict[_Text, _Text] = Field(default_factory=dict)
    args: dict[_Text, ArgMatch] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _adds_something(self) -> ClassificationRule:
        if not self.data_classes and not self.context:
            raise ValueError("a classification must add 'data_classes' or 'context'")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The normalised form, as in :meth:`PolicyEngine.to_document`: empty fields and unset conditions omitted."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_defaults=True)
        data["tool"] = self.tool
        return data


def coerce_rule(value: ClassificationRule | Mapping[str, Any]) -> ClassificationRule:
    if isinstance(value, ClassificationRule):
        return value
    try:
        return ClassificationRule.model_validate(dict(value))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise PolicyError(f"invalid classification{where}: {first['msg'].removeprefix('Value error, ')}") from None
    except (TypeError, ValueError):
        raise PolicyError("a classification must be a mapping") from None


_NO_CONTEXT: Mapping[str, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class Classification:
    """What the node's classifications added to one call.

    ``data_classes`` and each key's ``context`` values are sorted and deduplicated, so the result depends only on
    which rules fired, never on their order in the file (which the version hash ignores). A key may carry several
    values when several rules fire: each is a fact, and none hides another.
    """

    data_classes: tuple[str, ...] = ()
    context: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _NO_CONTEXT)

    def __bool__(self) -> bool:
        return bool(self.data_classes or self.context)

    def data_classes_with(self, declared: Iterable[str]) -> tuple[str, ...]:
        """The caller's data classes, in their order, then the node's that the caller left out; no duplicates."""
        union = dict.fromkeys(declared)
        union.update(dict.fromkeys(self.data_classes))
        return tuple(union)

    def risk_contexts(self, declared: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
        """The contexts to score risk under. Risk context rules read one value per key, so where the node's value
        differs from the caller's (or the node has several) there is one view per alternative; the first view holds
        the caller's values plus the node's for keys the caller left out. :meth:`assess_risk` scores each and keeps
        the highest, so a value on one side cannot hide the other side's from risk."""
        if not self.context:
            return (declared,)
        alternatives: dict[str, list[Any]] = {}
        for key, values in self.context.items():
            options: list[Any] = [declared[key]] if key in declared else []
            seen = {_glob.context_text(v) for v in options}
            options.extend(v for v in values if v not in seen)
            alternatives[key] = options
        count = max(len(options) for options in alternatives.values())
        return tuple(
            {**declared, **{key: options[min(i, len(options) - 1)] for key, options in alternatives.items()}}
            for i in range(count)
        )

    def assess_risk(
        self,
        *,
        tool: str | None,
        data_classes: Sequence[str] = (),
        declared_level: RiskLevel | str | None = None,
        context: Mapping[str, Any] | None = None,
        rules: RiskRules,
    ) -> RiskAssessment:
        """:func:`~lexecon_core.risk.assess` over the caller's facts plus these: data classes as their union, and
        context under each of :meth:`risk_contexts`, keeping the highest score (the first on a tie). Without a
        classification this is exactly ``assess`` of the caller's facts."""
        if not self:
            return assess(
                tool=tool, data_classes=data_classes, declared_level=declared_level, context=context, rules=rules
            )
        classes = self.data_classes_with(data_classes)
        best: RiskAssessment | None = None
        for view in self.risk_contexts(context or {}):
            risk = assess(tool=tool, data_classes=classes, declared_level=declared_level, context=view, rules=rules)
            if best is None or risk.score > best.score:
                best = risk
        assert best is not None  # risk_contexts always gives at least one view
        return best

    def to_record(self) -> dict[str, Any]:
        """For the decision's ledger entry (``classified``)."""
        return {"data_classes": list(self.data_classes), "context": {k: list(v) for k, v in self.context.items()}}


NOT_CLASSIFIED = Classification()


@dataclass(frozen=True, slots=True)
class _ArgTest:
    name: str
    literals: frozenset[str]
    globs: tuple[_glob.Glob, ...]
    negate: bool  # not_matches

    def holds(self, args: Mapping[str, Any]) -> bool:
        if self.name not in args:
            return False
        value = args[self.name]
        items = value if isinstance(value, list | tuple) else (value,)
        if self.negate:
            return any(not self._matches(_glob.context_text(item)) for item in items)
        return any(self._matches(_glob.context_text(item)) for item in items)

    def _matches(self, text: str) -> bool:
        return text in self.literals or any(g.fullmatch(text) for g in self.globs)


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: ClassificationRule
    tests: tuple[_ArgTest, ...]


def _compile(rule: ClassificationRule) -> _Compiled:
    tests = []
    for name, condition in rule.args.items():
        negate = condition.not_matches is not None
        patterns = condition.not_matches if negate else condition.matches
        assert patterns is not None  # guaranteed by ArgMatch's validator
        tests.append(
            _ArgTest(
                name,
                frozenset(p for p in patterns if _glob.is_literal(p)),
                tuple(_glob.compile_pattern(p) for p in patterns if not _glob.is_literal(p)),
                negate,
            )
        )
    return _Compiled(rule, tuple(tests))


class Classifier:
    """A policy's classification rules, indexed by tool pattern so a call examines only the rules for its tool."""

    __slots__ = ("_index", "_rules")

    def __init__(self) -> None:
        self._rules: list[_Compiled] = []
        self._index: _glob.PatternIndex[_Compiled] = _glob.PatternIndex()

    def __bool__(self) -> bool:
        return bool(self._rules)

    @property
    def rules(self) -> tuple[ClassificationRule, ...]:
        return tuple(c.rule for c in self._rules)

    def add(self, rule: ClassificationRule) -> None:
        compiled = _compile(rule)
        self._rules.append(compiled)
        self._index.add(rule.tool, compiled)

    def classify(self, tool: str | None, args: Mapping[str, Any]) -> Classification:
        if not tool or not self._rules:
            return NOT_CLASSIFIED
        data_classes: set[str] = set()
        context: dict[str, set[str]] = {}
        for compiled in self._index.lookup(tool):
            if all(test.holds(args) for test in compiled.tests):
                data_classes.update(compiled.rule.data_classes)
                for key, value in compiled.rule.context.items():
                    context.setdefault(key, set()).add(value)
        if not data_classes and not context:
            return NOT_CLASSIFIED
        return Classification(
            tuple(sorted(data_classes)), {key: tuple(sorted(context[key])) for key in sorted(context)}
        )
