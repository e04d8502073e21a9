"""Policy engine semantics: modes, forbid-overrides, each relation type, conditions, files and versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexecon_core import PolicyError
from lexecon_core.policy import (
    Outcome,
    PolicyEngine,
    PolicyMode,
    PolicyRelation,
    PolicyTerm,
    RelationType,
    TermType,
    load_policy,
    parse_policy_text,
    policy_from_document,
)


def engine_with(mode: str = "strict", *relations: tuple[str, str, str, dict | None]) -> PolicyEngine:
    engine = PolicyEngine(mode=mode)
    for term in (
        PolicyTerm("agents", TermType.ACTOR, "ai_agent:*"),
        PolicyTerm("finance_bots", TermType.ACTOR, "ai_agent:finance_*"),
        PolicyTerm("role_finance", TermType.ACTOR, "role:finance"),
        PolicyTerm("search", TermType.TOOL, "search"),
        PolicyTerm("refund", TermType.TOOL, "refund"),
        PolicyTerm("deletes", TermType.TOOL, "delete_*"),
        PolicyTerm("reads", TermType.ACTION, "read:*"),
        PolicyTerm("pii", TermType.DATA_CLASS, "pii"),
        PolicyTerm("external", TermType.CONTEXT, "destination=external"),
        PolicyTerm("ticket", TermType.CONTEXT, "ticket_id=*"),
        PolicyTerm("billing_db", TermType.RESOURCE, "db:billing/*"),
    ):
        engine.add_term(term)
    for rel_type, source, target, conditions in relations:
        engine.add_relation(PolicyRelation(rel_type, source, target, conditions))
    return engine


PERMIT_SEARCH = ("permits", "agents", "search", None)


class TestModes:
    def test_strict_denies_unless_permitted(self) -> None:
        engine = engine_with("strict", PERMIT_SEARCH)
        assert engine.evaluate(actor="ai_agent:a", tool="search").outcome is Outcome.APPROVED
        result = engine.evaluate(actor="ai_agent:a", tool="refund")
        assert result.outcome is Outcome.DENIED
        assert "no relation permits" in result.reason and "strict" in result.reason

    def test_permissive_allows_unless_forbidden(self) -> None:
        engine = engine_with("permissive", ("forbids", "agents", "deletes", None))
        assert engine.evaluate(actor="ai_agent:a", tool="refund").outcome is Outcome.APPROVED
        assert engine.evaluate(actor="ai_agent:a", tool="delete_user").outcome is Outcome.DENIED

    def test_paranoid_is_strict_and_escalates_high_risk(self) -> None:
        engine = engine_with("paranoid", PERMIT_SEARCH)
        assert engine.evaluate(actor="ai_agent:a", tool="refund", risk_level="low").outcome is Outcome.DENIED
        assert engine.evaluate(actor="ai_agent:a", tool="search", risk_level="medium").approved
        high = engine.evaluate(actor="ai_agent:a", tool="search", risk_level="high")
        assert high.outcome is Outcome.ESCALATED and "paranoid" in high.reason

    @pytest.mark.parametrize("mode", ["permissive", "strict", "paranoid"])
    def test_critical_risk_escalates_in_every_mode(self, mode: str) -> None:
        engine = engine_with(mode, PERMIT_SEARCH)
        result = engine.evaluate(actor="ai_agent:a", tool="search", risk_level="critical")
        assert result.outcome is Outcome.ESCALATED

    def test_request_mode_can_tighten_but_not_loosen(self) -> None:
        strict = engine_with("strict", PERMIT_SEARCH)
        loosened = strict.evaluate(actor="ai_agent:a", tool="refund", mode="permissive")
        assert loosened.outcome is Outcome.DENIED and loosened.mode is PolicyMode.STRICT
        permissive = engine_with("permissive")
        tightened = permissive.evaluate(actor="ai_agent:a", tool="refund", mode="strict")
        assert tightened.outcome is Outcome.DENIED and tightened.mode is PolicyMode.STRICT

    def test_unknown_mode_is_a_policy_error(self) -> None:
        with pytest.raises(PolicyError, match="unknown policy mode"):
            PolicyEngine(mode="lenient")


class TestRelations:
    def test_forbid_overrides_permit(self) -> None:
        engine = engine_with("strict", ("permits", "agents", "deletes", None), ("forbids", "agents", "deletes", None))
        result = engine.evaluate(actor="ai_agent:a", tool="delete_user")
        assert result.outcome is Outcome.DENIED
        assert "forbids:agents->deletes" in result.reason
        effects = {m.relation_id: m.effect for m in result.matched}
        assert effects == {"permits:agents->deletes": "permit", "forbids:agents->deletes": "forbid"}

    def test_tool_term_matches_the_request_tool_by_glob_not_substring(self) -> None:
        engine = engine_with("permissive", ("forbids", "agents", "deletes", None))
        assert engine.evaluate(actor="ai_agent:a", tool="undelete_user").approved
        assert not engine.evaluate(actor="ai_agent:a", tool="delete_user").approved

    def test_requires_denies_when_target_missing(self) -> None:
        engine = engine_with("strict", ("permits", "agents", "refund", None), ("requires", "refund", "ticket", None))
        missing = engine.evaluate(actor="ai_agent:a", tool="refund")
        assert missing.outcome is Outcome.DENIED
        assert "requirement requires:refund->ticket not met" in missing.reason
        assert engine.evaluate(actor="ai_agent:a", tool="refund", context={"ticket_id": "T-1"}).approved

    def test_requires_only_applies_when_source_holds(self) -> None:
        engine = engine_with("strict", PERMIT_SEARCH, ("requires", "refund", "ticket", None))
        assert engine.evaluate(actor="ai_agent:a", tool="search").approved

    def test_implies_gives_roles_and_is_transitive(self) -> None:
        engine = engine_with(
            "strict",
            ("implies", "finance_bots", "role_finance", None),
            ("permits", "role_finance", "refund", None),
        )
        result = engine.evaluate(actor="ai_agent:finance_bot", tool="refund")
        assert result.approved
        assert "role_finance" in result.satisfied_terms
        assert [m.effect for m in result.matched] == ["implied", "permit"]
        assert engine.evaluate(actor="ai_agent:support_bot", tool="refund").outcome is Outcome.DENIED

    def test_implies_chain(self) -> None:
        engine = PolicyEngine()
        for i in range(4):
            engine.add_term(PolicyTerm(f"t{i}", TermType.ACTOR, f"level{i}"))
        engine.add_term(PolicyTerm("tool", TermType.TOOL, "x"))
        for i in range(3):
            engine.add_relation(PolicyRelation("implies", f"t{i}", f"t{i + 1}"))
        engine.add_relation(PolicyRelation("permits", "t3", "tool"))
        assert engine.evaluate(actor="level0", tool="x").approved
        # implication cycles terminate
        engine.add_relation(PolicyRelation("implies", "t3", "t0"))
        assert engine.evaluate(actor="level2", tool="x").approved

    def test_conflicts_denies_combination_in_either_order(self) -> None:
        engine = engine_with("permissive", ("conflicts", "pii", "external", None))
        assert engine.evaluate(actor="ai_agent:a", tool="send", data_classes=["pii"]).approved
        assert engine.evaluate(actor="ai_agent:a", tool="send", context={"destination": "external"}).approved
        both = engine.evaluate(
            actor="ai_agent:a", tool="send", data_classes=["pii"], context={"destination": "external"}
        )
        assert both.outcome is Outcome.DENIED and "conflict" in both.reason

    def test_action_and_resource_terms(self) -> None:
        engine = engine_with("strict", ("permits", "reads", "billing_db", None))
        ok = engine.evaluate(actor="x", action="read:invoice", tool="sql", resource="db:billing/invoices")
        assert ok.approved
        assert not engine.evaluate(actor="x", action="write:invoice", resource="db:billing/invoices").approved
        assert not engine.evaluate(actor="x", action="read:invoice", resource="db:hr/salaries").approved

    def test_context_values_match_as_json_text(self) -> None:
        engine = PolicyEngine(mode="strict")
        engine.add_term(PolicyTerm("prod", TermType.CONTEXT, "prod=true"))
        engine.add_term(PolicyTerm("count", TermType.CONTEXT, "count=1?"))
        engine.add_term(PolicyTerm("any", TermType.TOOL, "*"))
        engine.add_relation(PolicyRelation("permits", "prod", "any"))
        engine.add_relation(PolicyRelation("permits", "count", "any"))
        assert engine.evaluate(tool="t", context={"prod": True}).approved
        assert engine.evaluate(tool="t", context={"count": 12}).approved
        assert not engine.evaluate(tool="t", context={"count": 120, "prod": False}).approved


class TestConditions:
    def test_max_risk_level(self) -> None:
        engine = engine_with("strict", ("permits", "agents", "refund", {"max_risk_level": "medium"}))
        assert engine.evaluate(actor="ai_agent:a", tool="refund", risk_level="medium").approved
        assert not engine.evaluate(actor="ai_agent:a", tool="refund", risk_level="high").approved
        # unknown risk fails a max bound (conservative)
        assert not engine.evaluate(actor="ai_agent:a", tool="refund").approved

    def test_min_risk_level(self) -> None:
        engine = engine_with("permissive", ("forbids", "agents", "refund", {"min_risk_level": "high"}))
        assert engine.evaluate(actor="ai_agent:a", tool="refund", risk_level="medium").approved
        assert not engine.evaluate(actor="ai_agent:a", tool="refund", risk_level="high").approved
        # unknown risk satisfies a min bound (conservative)
        assert not engine.evaluate(actor="ai_agent:a", tool="refund").approved

    def test_data_classes_any_and_only(self) -> None:
        engine = engine_with(
            "strict",
            ("permits", "agents", "search", {"data_classes_only": ["public", "internal*"]}),
            ("forbids", "agents", "search", {"data_classes_any": ["secret*"]}),
        )
        assert engine.evaluate(actor="ai_agent:a", tool="search").approved
        assert engine.evaluate(actor="ai_agent:a", tool="search", data_classes=["public", "internal_docs"]).approved
        assert not engine.evaluate(actor="ai_agent:a", tool="search", data_classes=["pii"]).approved
        denied = engine.evaluate(actor="ai_agent:a", tool="search", data_classes=["secret_keys"])
        assert denied.outcome is Outcome.DENIED and "forbids" in denied.reason

    def test_context_condition(self) -> None:
        engine = engine_with("strict", ("permits", "agents", "refund", {"context": {"environment": "staging*"}}))
        assert engine.evaluate(actor="ai_agent:a", tool="refund", context={"environment": "staging-2"}).approved
        assert not engine.evaluate(actor="ai_agent:a", tool="refund", context={"environment": "prod"}).approved
        assert not engine.evaluate(actor="ai_agent:a", tool="refund").approved

    def test_unknown_condition_is_rejected(self) -> None:
        with pytest.raises(PolicyError, match="max_risk"):
            PolicyRelation("permits", "a", "b", {"max_risk": "low"})


class TestBuilding:
    def test_relation_to_unknown_term_is_rejected(self) -> None:
        engine = engine_with("strict")
        with pytest.raises(PolicyError, match="unknown term 'nope'"):
            engine.add_relation(PolicyRelation("permits", "agents", "nope"))

    def test_duplicates_are_rejected(self) -> None:
        engine = engine_with("strict", PERMIT_SEARCH)
        with pytest.raises(PolicyError, match="duplicate term_id"):
            engine.add_term(PolicyTerm("agents", TermType.ACTOR, "x"))
        with pytest.raises(PolicyError, match="duplicate relation_id"):
            engine.add_relation(PolicyRelation("permits", "agents", "search"))

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("", TermType.ACTOR, "x"), "term_id"),
            (("t", "person", "x"), "unknown term_type"),
            (("t", TermType.ACTOR, ""), "value"),
            (("t", TermType.CONTEXT, "no-equals"), "key=pattern"),
        ],
    )
    def test_bad_terms(self, args: tuple, message: str) -> None:
        with pytest.raises(PolicyError, match=message):
            PolicyTerm(*args)

    def test_bad_relation_type(self) -> None:
        with pytest.raises(PolicyError, match="unknown relation_type"):
            PolicyRelation("allows", "a", "b")


DOC = {
    "name": "doc",
    "mode": "strict",
    "terms": [
        {"term_id": "agents", "term_type": "actor", "value": "ai_agent:*"},
        {"term_id": "search", "term_type": "tool", "value": "search"},
    ],
    "relations": [{"relation_type": "permits", "source_term_id": "agents", "target_term_id": "search"}],
}


class TestDocuments:
    def test_json_and_yaml_load_identically(self, tmp_path: Path) -> None:
        import yaml

        (tmp_path / "p.json").write_text(json.dumps(DOC))
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(DOC))
        a, b = load_policy(tmp_path / "p.json"), load_policy(tmp_path / "p.yaml")
        assert a.version == b.version
        assert a.version.startswith("sha256:") and len(a.version) == 71
        assert a.evaluate(actor="ai_agent:x", tool="search").approved

    def test_version_is_order_independent_and_changes_with_content(self) -> None:
        reordered = {**DOC, "terms": list(reversed(DOC["terms"]))}
        assert policy_from_document(DOC).version == policy_from_document(reordered).version
        changed = {**DOC, "mode": "paranoid"}
        assert policy_from_document(DOC).version != policy_from_document(changed).version

    def test_classifications_are_part_of_the_version(self) -> None:
        import hashlib

        from lexecon_core._canonical import canonical_bytes

        plain = policy_from_document(DOC)
        # Without classifications the normalised document, and so the version, is what it was before they existed.
        expected = {
            "mode": "strict",
            "name": "doc",
            "terms": sorted(DOC["terms"], key=lambda t: t["term_id"]),
            "relations": [{"relation_id": "permits:agents->search", **DOC["relations"][0]}],
        }
        assert plain.to_document() == expected
        assert plain.version == "sha256:" + hashlib.sha256(canonical_bytes(expected)).hexdigest()
        rule = {"tool": "search", "data_classes": ["public"]}
        classified = policy_from_document({**DOC, "classifications": [rule]})
        assert classified.to_document()["classifications"] == [rule]
        assert classified.version != plain.version
        other = policy_from_document({**DOC, "classifications": [{**rule, "data_classes": ["pii"]}]})
        assert other.version not in {plain.version, classified.version}
        assert policy_from_document(classified.to_document()).version == classified.version

    def test_round_trip_through_to_document(self) -> None:
        engine = policy_from_document(DOC)
        again = policy_from_document(engine.to_document())
        assert again.version == engine.version

    @pytest.mark.parametrize(
        ("mutate", "where"),
        [
            (lambda d: d["relations"][0].update(relation_type="allows"), "relations[0].relation_type"),
            (lambda d: d["terms"][1].update(term_type="gadget"), "terms[1].term_type"),
            (lambda d: d["terms"][0].pop("value"), "terms[0].value"),
            (lambda d: d.update(mode="yolo"), "mode"),
            (lambda d: d.update(extra_field=1), "extra_field"),
            (lambda d: d["relations"][0].update(conditions={"max_risk_level": "huge"}), "max_risk_level"),
            (lambda d: d.update(classifications=[{"tool": "t"}]), "classifications[0]: a classification must add"),
            (
                lambda d: d.update(classifications=[{"tool": "t", "context": {"k": "v"}, "args": {"to": {}}}]),
                "classifications[0].args.to: give exactly one of 'matches' or 'not_matches'",
            ),
            (lambda d: d.update(classifications=[{"data_classes": ["pii"]}]), "classifications[0].tool"),
        ],
    )
    def test_errors_name_the_bad_field(self, mutate, where: str) -> None:  # type: ignore[no-untyped-def]
        doc = json.loads(json.dumps(DOC))
        mutate(doc)
        with pytest.raises(PolicyError, match=__import__("re").escape(where)):
            policy_from_document(doc, source="p.json")

    def test_unknown_term_reference_in_file(self) -> None:
        doc = json.loads(json.dumps(DOC))
        doc["relations"][0]["target_term_id"] = "missing"
        with pytest.raises(PolicyError, match=r"p.json: .*unknown term 'missing'"):
            policy_from_document(doc, source="p.json")

    def test_unparseable_and_missing_files(self, tmp_path: Path) -> None:
        with pytest.raises(PolicyError, match="not valid JSON/YAML"):
            parse_policy_text("{not json", fmt="json")
        with pytest.raises(PolicyError, match="a policy must be a mapping"):
            parse_policy_text("- just\n- a list\n")
        with pytest.raises(PolicyError, match="cannot read policy file"):
            load_policy(tmp_path / "absent.yaml")


# -- properties ---------------------------------------------------------------------------------------------------

actors = st.sampled_from(["ai_agent:a", "ai_agent:finance_bot", "human:bob", "role:finance"])
tools = st.sampled_from(["search", "refund", "delete_user", "undelete", "other"])
rel_types = st.sampled_from(["permits", "forbids", "requires", "implies", "conflicts"])
term_ids = st.sampled_from(["agents", "finance_bots", "role_finance", "search", "refund", "deletes", "pii"])
relation_specs = st.lists(st.tuples(rel_types, term_ids, term_ids), max_size=12, unique=True)


@given(relation_specs, actors, tools, st.sampled_from(["permissive", "strict", "paranoid"]))
def test_adding_a_matching_forbid_always_denies(specs, actor: str, tool: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    engine = engine_with(mode, *((t, s, d, None) for t, s, d in specs))
    engine.add_term(PolicyTerm("__actor", TermType.ACTOR, actor))
    engine.add_term(PolicyTerm("__tool", TermType.TOOL, tool))
    before = engine.evaluate(actor=actor, tool=tool)
    engine.add_relation(PolicyRelation("forbids", "__actor", "__tool"))
    after = engine.evaluate(actor=actor, tool=tool)
    assert after.outcome is Outcome.DENIED
    assert before.policy_version != after.policy_version


@given(relation_specs, actors, tools)
def test_strict_never_approves_what_permissive_denies(specs, actor: str, tool: str) -> None:  # type: ignore[no-untyped-def]
    relations = [(t, s, d, None) for t, s, d in specs]
    strict = engine_with("strict", *relations).evaluate(actor=actor, tool=tool)
    permissive = engine_with("permissive", *relations).evaluate(actor=actor, tool=tool)
    if permissive.outcome is Outcome.DENIED:
        assert strict.outcome is Outcome.DENIED
    if strict.approved:
        assert any(m.relation_type is RelationType.PERMITS for m in strict.matched)


@given(relation_specs, actors, tools, st.sampled_from(["low", "medium", "high", "critical"]))
def test_evaluation_is_deterministic(specs, actor: str, tool: str, level: str) -> None:  # type: ignore[no-untyped-def]
    relations = [(t, s, d, None) for t, s, d in specs]
    first = engine_with("paranoid", *relations).evaluate(actor=actor, tool=tool, risk_level=level)
    second = engine_with("paranoid", *relations).evaluate(actor=actor, tool=tool, risk_level=level)
    assert first == second


def test_unknown_risk_fails_closed_for_grants_and_holds_for_denials() -> None:
    grant = engine_with("strict", ("permits", "agents", "refund", {"min_risk_level": "low"}))
    assert not grant.evaluate(actor="ai_agent:a", tool="refund").approved
    assert grant.evaluate(actor="ai_agent:a", tool="refund", risk_level="low").approved
    deny = engine_with("permissive", ("forbids", "agents", "refund", {"max_risk_level": "critical"}))
    assert not deny.evaluate(actor="ai_agent:a", tool="refund").approved
