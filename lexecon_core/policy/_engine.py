"""The deterministic policy engine.

Evaluation in three steps, each proportional to what matches rather than to the size of the policy:
1. **Satisfied terms.** Each request field is looked up in a per-type :class:`~lexecon_core._glob.PatternIndex`; the
   set is then closed under ``implies`` relations. The facts are the caller's plus those the policy's own
   classifications add (:meth:`PolicyEngine.classify`, module ``_classify``); the node's facts never replace the
   caller's, they are matched as well.
2. **Applicable relations.** Only relations whose source term is satisfied are examined (an index by source term).
3. **Outcome.** Forbid, conflict and unmet requirements deny and override any permit; then the mode decides what an
   unpermitted request gets; then risk may turn an approval into an escalation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lexecon_core import _canonical, _glob
from lexecon_core.errors import PolicyError
from lexecon_core.policy._classify import NOT_CLASSIFIED, Classification, ClassificationRule, Classifier, coerce_rule
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
from lexecon_core.risk import RiskLevel

_DENYING = frozenset({RelationType.FORBIDS, RelationType.CONFLICTS, RelationType.REQUIRES})


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What the engine decided and why."""

    outcome: Outcome
    reason: str
    matched: tuple[MatchedRelation, ...]
    mode: PolicyMode
    policy_version: str
    satisfied_terms: tuple[str, ...]

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @property
    def matched_relations(self) -> tuple[MatchedRelation, ...]:
        return self.matched


@dataclass(slots=True)
class _Rel:
    relation: PolicyRelation
    ordinal: int
    conditions: Conditions | None  # None when empty: the common case skips condition checks entirely
    matched: MatchedRelation


class PolicyEngine:
    """Holds a policy (terms and relations) and evaluates requests against it.

    >>> engine = PolicyEngine(mode=PolicyMode.STRICT)
    >>> engine.add_term(PolicyTerm("bots", TermType.ACTOR, "ai_agent:*"))
    >>> engine.add_term(PolicyTerm("search", TermType.TOOL, "search"))
    >>> engine.add_relation(PolicyRelation(RelationType.PERMITS, "bots", "search"))
    >>> engine.evaluate(actor="ai_agent:helper", tool="search").outcome
    <Outcome.APPROVED: 'approved'>
    """

    def __init__(self, mode: PolicyMode | str = PolicyMode.STRICT, *, name: str = "") -> None:
        try:
            self.mode = PolicyMode(mode)
        except ValueError:
            raise PolicyError(
                f"unknown policy mode {mode!r}; expected one of {[m.value for m in PolicyMode]}"
            ) from None
        self.name = name
        self._terms: dict[str, PolicyTerm] = {}
        self._relations: dict[str, _Rel] = {}
        self._index: dict[TermType, _glob.PatternIndex[str]] = {
            t: _glob.PatternIndex() for t in TermType if t is not TermType.CONTEXT
        }
        self._context_index: dict[str, _glob.PatternIndex[str]] = {}
        self._by_source: dict[str, list[_Rel]] = {}
        self._implies: dict[str, list[_Rel]] = {}
        self._classifier = Classifier()
        self._version: str | None = None

    # -- building -------------------------------------------------------------------------------------------------

    @property
    def terms(self) -> tuple[PolicyTerm, ...]:
        return tuple(self._terms.values())

    @property
    def relations(self) -> tuple[PolicyRelation, ...]:
        return tuple(r.relation for r in self._relations.values())

    @property
    def classifications(self) -> tuple[ClassificationRule, ...]:
        return self._classifier.rules

    def add_term(self, term: PolicyTerm) -> None:
        if term.term_id in self._terms:
            raise PolicyError(f"duplicate term_id {term.term_id!r}")
        self._terms[term.term_id] = term
        if term.term_type is TermType.CONTEXT:
            key, _, pattern = term.value.partition("=")
            self._context_index.setdefault(key, _glob.PatternIndex()).add(pattern, term.term_id)
        else:
            self._index[term.term_type].add(term.value, term.term_id)
        self._version = None

    def add_relation(self, relation: PolicyRelation) -> None:
        for term_id in (relation.source_term_id, relation.target_term_id):
            if term_id not in self._terms:
                raise PolicyError(f"relation {relation.relation_id!r} refers to unknown term {term_id!r}")
        if relation.relation_id in self._relations:
            raise PolicyError(f"duplicate relation_id {relation.relation_id!r}")
        cond = relation.cond
        rel = _Rel(relation, len(self._relations), None if cond.is_empty() else cond, MatchedRelation.of(relation))
        self._relations[relation.relation_id] = rel
        bucket = self._implies if relation.relation_type is RelationType.IMPLIES else self._by_source
        bucket.setdefault(relation.source_term_id, []).append(rel)
        self._version = None

    def add_classification(self, rule: ClassificationRule | Mapping[str, Any]) -> None:
        """Add a node-side classification rule (see :mod:`lexecon_core.policy._classify`)."""
        self._classifier.add(coerce_rule(rule))
        self._version = None

    # -- identity -------------------------------------------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """The policy as a plain document (the JSON/YAML file shape), in canonical order."""
        document: dict[str, Any] = {
            "mode": self.mode.value,
            "terms": [t.to_dict() for t in sorted(self._terms.values(), key=lambda t: t.term_id)],
            "relations": [r.relation.to_dict() for r in sorted(self._relations.values(), key=_relation_key)],
        }
        if self.name:
            document["name"] = self.name
        if self._classifier:
            # Only when present, so a policy without classifications keeps the version it always had. Sorted, like
            # terms and relations: the rules' order changes nothing (a Classification is sorted too).
            rules = [rule.to_dict() for rule in self._classifier.rules]
            document["classifications"] = sorted(rules, key=_canonical.canonical_bytes)
        return document

    @property
    def version(self) -> str:
        """``sha256:<hex>`` over the canonical JSON of :meth:`to_document`; any change to the policy changes it."""
        if self._version is None:
            digest = hashlib.sha256(_canonical.canonical_bytes(self.to_document())).hexdigest()
            self._version = f"sha256:{digest}"
        return self._version

    # -- evaluation -----------------------------------------------------------------------------------------------

    def classify(self, tool: str | None, tool_args: Mapping[str, Any]) -> Classification:
        """The data classes and context this policy's classifications add to a call of ``tool`` with ``tool_args``.

        Pure; a policy without classifications answers at once with an empty (falsy) :class:`Classification`."""
        if not self._classifier:
            return NOT_CLASSIFIED
        return self._classifier.classify(tool, tool_args)

    def satisfied_terms(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        tool: str | None = None,
        resource: str | None = None,
        data_classes: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
        risk_level: RiskLevel | None = None,
        classified: Classification | None = None,
    ) -> set[str]:
        """The satisfied term ids (see :meth:`evaluate` for the arguments)."""
        classified = NOT_CLASSIFIED if classified is None else classified
        classes = classified.data_classes_with(data_classes) if classified.data_classes else data_classes
        return self._satisfied(actor, action, tool, resource, classes, context, classified.context, risk_level)

    def _satisfied(
        self,
        actor: str | None,
        action: str | None,
        tool: str | None,
        resource: str | None,
        data_classes: Sequence[str],
        context: Mapping[str, Any] | None,
        derived: Mapping[str, tuple[str, ...]],
        risk_level: RiskLevel | None,
        implied: list[_Rel] | None = None,
    ) -> set[str]:
        """``data_classes`` already holds the node's classes too; ``derived`` is the node's context."""
        index = self._index
        satisfied: set[str] = set()
        for term_type, value in (
            (TermType.ACTOR, actor),
            (TermType.ACTION, action),
            (TermType.TOOL, tool),
            (TermType.RESOURCE, resource),
        ):
            if value:
                satisfied.update(index[term_type].lookup(value))
        for data_class in data_classes:
            satisfied.update(index[TermType.DATA_CLASS].lookup(data_class))
        if context and self._context_index:
            for key, value in context.items():
                by_key = self._context_index.get(key)
                if by_key is not None:
                    satisfied.update(by_key.lookup(_glob.context_text(value)))
        if derived:
            # The node's values are matched in addition to the caller's: the caller cannot mask a node fact by
            # declaring another value for its key. A node ``resource`` counts for resource terms, as the caller's
            # ``context["resource"]`` does in a decision request.
            for key, values in derived.items():
                by_key = self._context_index.get(key)
                for value in values:
                    if by_key is not None:
                        satisfied.update(by_key.lookup(value))
                    if key == "resource":
                        satisfied.update(index[TermType.RESOURCE].lookup(value))
        if self._implies and satisfied:
            pending = list(satisfied)
            while pending:
                for rel in self._implies.get(pending.pop(), ()):
                    target = rel.relation.target_term_id
                    if target in satisfied:
                        continue
                    if rel.conditions is None or _conditions_hold(
                        rel.conditions, data_classes, context, derived, risk_level, denying=False
                    ):
                        satisfied.add(target)
                        pending.append(target)
                        if implied is not None:
                            implied.append(rel)
        return satisfied

    def evaluate(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        tool: str | None = None,
        resource: str | None = None,
        data_classes: Iterable[str] = (),
        context: Mapping[str, Any] | None = None,
        risk_level: RiskLevel | str | None = None,
        mode: PolicyMode | str | None = None,
        classified: Classification | None = None,
    ) -> PolicyResult:
        """Decide a request. ``mode`` may only make the engine stricter than its configured mode.

        ``data_classes`` and ``context`` are what the caller declared; ``classified`` (from :meth:`classify`) is what
        the node adds. Terms and conditions see the union of data classes, and a context pattern holds when the
        caller's value or one of the node's values for its key matches."""
        level = RiskLevel(risk_level) if risk_level is not None else None
        effective_mode = self.mode.stricter(PolicyMode(mode) if mode is not None else None)
        classified = NOT_CLASSIFIED if classified is None else classified
        classes = classified.data_classes_with(data_classes) if classified.data_classes else tuple(data_classes)
        derived = classified.context
        implied: list[_Rel] = []
        satisfied = self._satisfied(actor, action, tool, resource, classes, context, derived, level, implied)

        permits: list[_Rel] = []
        denials: list[_Rel] = []
        by_source = self._by_source
        for term_id in satisfied:
            for rel in by_source.get(term_id, ()):
                relation = rel.relation
                target_holds = relation.target_term_id in satisfied
                if relation.relation_type is RelationType.REQUIRES:
                    if target_holds:
                        continue
                elif not target_holds:
                    continue
                denying = relation.relation_type in _DENYING
                if rel.conditions is not None and not _conditions_hold(
                    rel.conditions, classes, context, derived, level, denying
                ):
                    continue
                (denials if denying else permits).append(rel)

        subject = _describe(actor, tool, action)
        if denials:
            denials.sort(key=_ordinal)
            outcome, reason = Outcome.DENIED, "; ".join(_denial_reason(r) for r in denials)
        elif not permits and effective_mode is not PolicyMode.PERMISSIVE:
            outcome = Outcome.DENIED
            reason = f"no relation permits {subject} ({effective_mode.value} mode denies unless permitted)"
        elif level is RiskLevel.CRITICAL:
            outcome, reason = Outcome.ESCALATED, "critical risk requires human approval"
        elif effective_mode is PolicyMode.PARANOID and level is not None and level >= RiskLevel.HIGH:
            outcome, reason = Outcome.ESCALATED, f"{level.value} risk requires human approval in paranoid mode"
        elif permits:
            permits.sort(key=_ordinal)
            outcome, reason = Outcome.APPROVED, "permitted by " + ", ".join(r.relation.relation_id for r in permits)
        else:
            outcome, reason = Outcome.APPROVED, f"no relation forbids {subject} (permissive mode)"

        matched = tuple(r.matched for r in sorted((*implied, *denials, *permits), key=_ordinal))
        return PolicyResult(
            outcome=outcome,
            reason=reason,
            matched=matched,
            mode=effective_mode,
            policy_version=self.version,
            satisfied_terms=tuple(sorted(satisfied)),
        )


def _ordinal(rel: _Rel) -> int:
    return rel.ordinal


def _relation_key(rel: _Rel) -> str:
    return rel.relation.relation_id


def _describe(actor: str | None, tool: str | None, action: str | None) -> str:
    parts = [f"actor {actor!r}" if actor else "an unnamed actor"]
    if tool:
        parts.append(f"tool {tool!r}")
    if action:
        parts.append(f"action {action!r}")
    return " / ".join(parts)


def _denial_reason(rel: _Rel) -> str:
    relation = rel.relation
    if relation.relation_type is RelationType.REQUIRES:
        return f"requirement {relation.relation_id} not met ({relation.target_term_id!r} does not hold)"
    if relation.relation_type is RelationType.CONFLICTS:
        return f"conflict {relation.relation_id}: {relation.source_term_id!r} and {relation.target_term_id!r} together"
    return f"forbidden by {relation.relation_id}"


def _conditions_hold(
    cond: Conditions,
    data_classes: Sequence[str],
    context: Mapping[str, Any] | None,
    derived: Mapping[str, tuple[str, ...]],
    level: RiskLevel | None,
    denying: bool,
) -> bool:
    """Whether a relation's conditions hold. An unknown risk level fails closed: risk bounds then hold for
    relations that deny (forbids, conflicts, requires) and fail for relations that grant (permits, implies).
    ``data_classes`` includes the node's; a context pattern holds on the caller's value or any of the node's."""
    if cond.data_classes_any is not None and not any(
        _glob.matches_any(cond.data_classes_any, dc) for dc in data_classes
    ):
        return False
    if cond.data_classes_only is not None and not all(
        _glob.matches_any(cond.data_classes_only, dc) for dc in data_classes
    ):
        return False
    if cond.max_risk_level is not None and (not denying if level is None else level > cond.max_risk_level):
        return False
    if cond.min_risk_level is not None and (not denying if level is None else level < cond.min_risk_level):
        return False
    if cond.context:
        if not context and not derived:
            return False
        for key, pattern in cond.context.items():
            if context and key in context and _glob.matches(pattern, _glob.context_text(context[key])):
                continue
            if not any(_glob.matches(pattern, value) for value in derived.get(key, ())):
                return False
    return True
