"""Node-side classifications: data classes per tool and context from argument patterns, added to the caller's facts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexecon_core import LocalGovernor, Outcome, PolicyError
from lexecon_core.policy import Classification, ClassificationRule, PolicyEngine, policy_from_document
from lexecon_core.risk import DEFAULT_RULES, assess

EMAIL_POLICY: dict[str, Any] = {
    "name": "mail",
    "mode": "strict",
    "terms": [
        {"term_id": "agents", "term_type": "actor", "value": "ai_agent:*"},
        {"term_id": "email", "term_type": "tool", "value": "send_email"},
        {"term_id": "customer_read", "term_type": "tool", "value": "get_customer"},
        {"term_id": "pii", "term_type": "data_class", "value": "pii"},
        {"term_id": "external", "term_type": "context", "value": "destination=external"},
    ],
    "relations": [
        {"relation_type": "permits", "source_term_id": "agents", "target_term_id": "email"},
        {"relation_type": "permits", "source_term_id": "agents", "target_term_id": "customer_read"},
        {"relation_type": "conflicts", "source_term_id": "pii", "target_term_id": "external"},
    ],
    "classifications": [
        {"tool": "get_customer", "data_classes": ["pii"]},
        {"tool": "send_*", "data_classes": ["pii"]},
        {
            "tool": "send_email",
            "args": {"to": {"not_matches": ["*@example.com"]}},
            "context": {"destination": "external"},
        },
    ],
}

DISHONEST: dict[str, Any] = {"data_classes": [], "context": {"destination": "internal"}}


@pytest.fixture
def engine() -> PolicyEngine:
    return policy_from_document(EMAIL_POLICY, source="mail.yaml")


def evaluate(engine: PolicyEngine, tool: str, args: dict[str, Any], **declared: Any) -> Any:
    classified = engine.classify(tool, args)
    return engine.evaluate(actor="ai_agent:bot", tool=tool, classified=classified, **declared)


class TestClassify:
    def test_data_classes_per_tool(self, engine: PolicyEngine) -> None:
        assert engine.classify("get_customer", {"id": 1}) == Classification(("pii",), {})
        assert not engine.classify("search", {})  # falsy: nothing added

    def test_context_from_an_argument_outside_the_allowed_domain(self, engine: PolicyEngine) -> None:
        outside = engine.classify("send_email", {"to": "eve@elsewhere.test"})
        assert outside.data_classes == ("pii",) and dict(outside.context) == {"destination": ("external",)}
        inside = engine.classify("send_email", {"to": "bob@example.com"})
        assert inside.data_classes == ("pii",) and not inside.context

    def test_one_outsider_among_many_recipients_counts(self, engine: PolicyEngine) -> None:
        many = engine.classify("send_email", {"to": ["a@example.com", "eve@elsewhere.test", "b@example.com"]})
        assert "destination" in many.context
        assert "destination" not in engine.classify("send_email", {"to": ["a@example.com", "b@example.com"]}).context

    def test_missing_or_empty_argument_satisfies_neither(self) -> None:
        engine = PolicyEngine()
        engine.add_classification({"tool": "t", "args": {"x": {"not_matches": ["ok"]}}, "context": {"neg": "1"}})
        engine.add_classification({"tool": "t", "args": {"x": {"matches": ["*"]}}, "context": {"pos": "1"}})
        assert not engine.classify("t", {})
        assert not engine.classify("t", {"x": []})
        assert dict(engine.classify("t", {"x": "ok"}).context) == {"pos": ("1",)}
        assert dict(engine.classify("t", {"x": "no"}).context) == {"neg": ("1",), "pos": ("1",)}

    def test_values_match_as_text_like_context(self) -> None:
        engine = PolicyEngine()
        engine.add_classification({"tool": "t", "args": {"flag": {"matches": ["true"]}}, "data_classes": ["a"]})
        engine.add_classification({"tool": "t", "args": {"n": {"matches": ["1?"]}}, "data_classes": ["b"]})
        engine.add_classification({"tool": "t", "args": {"d": {"matches": ['{"k":1}']}}, "data_classes": ["c"]})
        assert engine.classify("t", {"flag": True, "n": 12, "d": {"k": 1}}).data_classes == ("a", "b", "c")
        assert not engine.classify("t", {"flag": "True", "n": 120, "d": {"k": 2}})

    def test_every_arg_condition_must_hold(self) -> None:
        engine = PolicyEngine()
        engine.add_classification(
            {"tool": "t", "args": {"a": {"matches": ["x"]}, "b": {"not_matches": ["y"]}}, "data_classes": ["hit"]}
        )
        assert engine.classify("t", {"a": "x", "b": "z"}).data_classes == ("hit",)
        assert not engine.classify("t", {"a": "x", "b": "y"})
        assert not engine.classify("t", {"a": "q", "b": "z"})

    def test_several_rules_add_up_and_order_does_not_matter(self) -> None:
        rules = [
            {"tool": "t*", "data_classes": ["z", "a"], "context": {"k": "2"}},
            {"tool": "t", "data_classes": ["a", "m"], "context": {"k": "1", "j": "x"}},
        ]
        forward, backward = PolicyEngine(), PolicyEngine()
        for rule in rules:
            forward.add_classification(rule)
        for rule in reversed(rules):
            backward.add_classification(rule)
        result = forward.classify("t", {})
        assert result == backward.classify("t", {})
        assert result.data_classes == ("a", "m", "z")
        assert dict(result.context) == {"j": ("x",), "k": ("1", "2")}  # both values are facts; neither hides the other
        assert forward.version == backward.version

    def test_a_policy_without_classifications_classifies_nothing(self) -> None:
        engine = PolicyEngine()
        assert engine.classify("anything", {"to": "x"}) is engine.classify("other", {})
        assert not engine.classify("anything", {})


class TestEvaluation:
    def test_a_dishonest_caller_is_still_denied(self, engine: PolicyEngine) -> None:
        result = evaluate(engine, "send_email", {"to": "eve@elsewhere.test"}, **DISHONEST)
        assert result.outcome is Outcome.DENIED
        assert "conflict conflicts:pii->external" in result.reason
        assert {"pii", "external"} <= set(result.satisfied_terms)

    def test_an_in_domain_recipient_is_approved(self, engine: PolicyEngine) -> None:
        result = evaluate(engine, "send_email", {"to": "bob@example.com"}, **DISHONEST)
        assert result.approved and "pii" in result.satisfied_terms and "external" not in result.satisfied_terms

    def test_without_the_classification_the_lie_would_work(self, engine: PolicyEngine) -> None:
        # The point of the feature: the same call judged on the caller's word alone is approved.
        assert engine.evaluate(actor="ai_agent:bot", tool="send_email", **DISHONEST).approved

    def test_classification_never_removes_a_declared_class(self, engine: PolicyEngine) -> None:
        classified = engine.classify("get_customer", {})
        assert classified.data_classes_with(["secret", "pii", "secret"]) == ("secret", "pii")
        assert classified.data_classes_with(["public"]) == ("public", "pii")
        doc = {
            "mode": "permissive",
            "terms": [
                {"term_id": "secrets", "term_type": "data_class", "value": "secret"},
                {"term_id": "any", "term_type": "tool", "value": "*"},
            ],
            "relations": [{"relation_type": "forbids", "source_term_id": "secrets", "target_term_id": "any"}],
            "classifications": [{"tool": "*", "data_classes": ["public"]}],
        }
        policy = policy_from_document(doc)
        result = policy.evaluate(tool="t", data_classes=["secret"], classified=policy.classify("t", {}))
        assert result.outcome is Outcome.DENIED

    def test_a_declared_value_is_kept_next_to_the_derived_one(self, engine: PolicyEngine) -> None:
        doc = {
            **EMAIL_POLICY,
            "terms": [
                *EMAIL_POLICY["terms"],
                {"term_id": "internal", "term_type": "context", "value": "destination=int*"},
            ],
        }
        policy = policy_from_document(doc)
        result = evaluate(policy, "send_email", {"to": "eve@elsewhere.test"}, **DISHONEST)
        assert {"internal", "external"} <= set(result.satisfied_terms)

    def test_conditions_see_node_facts(self) -> None:
        doc = {
            "mode": "strict",
            "terms": [
                {"term_id": "agents", "term_type": "actor", "value": "ai_agent:*"},
                {"term_id": "export", "term_type": "tool", "value": "export"},
            ],
            "relations": [
                # permitted only for public data: data_classes_only sees the union, so a node class can end it
                {
                    "relation_type": "permits",
                    "source_term_id": "agents",
                    "target_term_id": "export",
                    "conditions": {"data_classes_only": ["public"]},
                },
                # a context condition holds on the node's value, whatever the caller declares for the key
                {
                    "relation_type": "forbids",
                    "source_term_id": "agents",
                    "target_term_id": "export",
                    "conditions": {"context": {"region": "eu*"}},
                },
            ],
            "classifications": [
                {"tool": "export", "args": {"table": {"matches": ["customers"]}}, "data_classes": ["pii"]},
                {"tool": "export", "args": {"bucket": {"matches": ["eu-*"]}}, "context": {"region": "eu"}},
            ],
        }
        policy = policy_from_document(doc)

        def run(args: dict[str, Any], **declared: Any) -> Outcome:
            return policy.evaluate(
                actor="ai_agent:a", tool="export", classified=policy.classify("export", args), **declared
            ).outcome

        assert run({"table": "articles"}, data_classes=["public"]) is Outcome.APPROVED
        assert run({"table": "customers"}, data_classes=["public"]) is Outcome.DENIED
        assert run({"bucket": "eu-1"}, data_classes=["public"], context={"region": "us"}) is Outcome.DENIED
        assert run({"bucket": "us-1"}, data_classes=["public"], context={"region": "us"}) is Outcome.APPROVED

    def test_a_node_resource_counts_for_resource_terms(self) -> None:
        doc = {
            "mode": "permissive",
            "terms": [
                {"term_id": "any", "term_type": "tool", "value": "*"},
                {"term_id": "billing", "term_type": "resource", "value": "db:billing/*"},
            ],
            "relations": [{"relation_type": "forbids", "source_term_id": "billing", "target_term_id": "any"}],
            "classifications": [
                {"tool": "sql", "args": {"table": {"matches": ["invoices"]}}, "context": {"resource": "db:billing/inv"}}
            ],
        }
        policy = policy_from_document(doc)
        classified = policy.classify("sql", {"table": "invoices"})
        assert not policy.evaluate(tool="sql", resource="db:hr/x", classified=classified).approved
        assert policy.evaluate(
            tool="sql", resource="db:hr/x", classified=policy.classify("sql", {"table": "x"})
        ).approved

    def test_satisfied_terms_takes_the_classification_too(self, engine: PolicyEngine) -> None:
        classified = engine.classify("send_email", {"to": "eve@elsewhere.test"})
        terms = engine.satisfied_terms(actor="ai_agent:a", tool="send_email", classified=classified)
        assert {"pii", "external"} <= terms
        assert not {"pii", "external"} & engine.satisfied_terms(actor="ai_agent:a", tool="send_email")


class TestRisk:
    def test_risk_sees_the_union(self, engine: PolicyEngine) -> None:
        classified = engine.classify("send_email", {"to": "eve@elsewhere.test"})
        risk = classified.assess_risk(
            tool="send_email", data_classes=[], context={"destination": "internal"}, rules=DEFAULT_RULES
        )
        caller_only = assess(tool="send_email", context={"destination": "internal"})
        assert risk.score > caller_only.score
        assert "data_class:pii" in risk.factors and "context:destination=external" in risk.factors

    def test_unclassified_risk_is_plain_assess(self) -> None:
        risk = Classification().assess_risk(
            tool="send_email", data_classes=["pii"], context={"environment": "prod"}, rules=DEFAULT_RULES
        )
        assert risk == assess(tool="send_email", data_classes=["pii"], context={"environment": "prod"})

    def test_risk_contexts(self) -> None:
        classified = Classification((), {"destination": ("external",), "zone": ("a", "b")})
        assert classified.risk_contexts({"destination": "internal", "other": 1}) == (
            {"destination": "internal", "zone": "a", "other": 1},
            {"destination": "external", "zone": "b", "other": 1},
        )
        # a caller value equal (as text) to the node's needs no second view
        assert Classification((), {"flag": ("true",)}).risk_contexts({"flag": True}) == ({"flag": True},)
        assert Classification().risk_contexts({"a": 1}) == ({"a": 1},)


class TestDocuments:
    def test_round_trip_and_version(self, engine: PolicyEngine) -> None:
        document = engine.to_document()
        assert len(document["classifications"]) == 3
        assert policy_from_document(document).version == engine.version
        without = {k: v for k, v in EMAIL_POLICY.items() if k != "classifications"}
        assert policy_from_document(without).version != engine.version
        assert "classifications" not in policy_from_document(without).to_document()
        changed = {
            **EMAIL_POLICY,
            "classifications": [*EMAIL_POLICY["classifications"][:2], {"tool": "send_email", "data_classes": ["x"]}],
        }
        assert policy_from_document(changed).version != engine.version

    def test_normalised_form(self) -> None:
        rule = ClassificationRule.model_validate(
            {"tool": "t", "args": {"to": {"not_matches": ["*@x"]}}, "context": {"k": "v"}}
        )
        assert rule.to_dict() == {"tool": "t", "args": {"to": {"not_matches": ["*@x"]}}, "context": {"k": "v"}}

    def test_yaml(self, tmp_path: Path) -> None:
        from lexecon_core.policy import load_policy

        (tmp_path / "p.yaml").write_text(
            "mode: permissive\n"
            "classifications:\n"
            "  - tool: send_email\n"
            "    args: {to: {not_matches: ['*@example.com']}}\n"
            "    context: {destination: external}\n"
        )
        policy = load_policy(tmp_path / "p.yaml")
        assert dict(policy.classify("send_email", {"to": "x@y.z"}).context) == {"destination": ("external",)}

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            ({"data_classes": ["pii"]}, "classifications[0].tool: Field required"),
            ({"tool": "", "data_classes": ["pii"]}, "classifications[0].tool: String should have at least 1"),
            ({"tool": "t"}, "classifications[0]: a classification must add 'data_classes' or 'context'"),
            ({"tool": "t", "data_classes": [""]}, "classifications[0].data_classes[0]: String should have at least 1"),
            ({"tool": "t", "context": {"k": True}}, "classifications[0].context.k: Input should be a valid string"),
            (
                {"tool": "t", "data_classes": ["a"], "when": 1},
                "classifications[0].when: Extra inputs are not permitted",
            ),
            (
                {"tool": "t", "data_classes": ["a"], "args": {"to": {"matches": ["a"], "not_matches": ["b"]}}},
                "classifications[0].args.to: give exactly one of 'matches' or 'not_matches'",
            ),
            (
                {"tool": "t", "data_classes": ["a"], "args": {"to": {}}},
                "classifications[0].args.to: give exactly one of 'matches' or 'not_matches'",
            ),
            (
                {"tool": "t", "data_classes": ["a"], "args": {"to": {"matches": []}}},
                "classifications[0].args.to.matches: Tuple should have at least 1 item",
            ),
            (
                {"tool": "t", "data_classes": ["a"], "args": {"to": {"matches": "x@y"}}},
                "classifications[0].args.to.matches: Input should be a valid",
            ),
            (
                {"tool": "t", "data_classes": ["a"], "args": {"to": {"glob": ["x"]}}},
                "classifications[0].args.to.glob: Extra inputs are not permitted",
            ),
        ],
    )
    def test_errors_name_the_field(self, rule: dict[str, Any], message: str) -> None:
        with pytest.raises(PolicyError) as raised:
            policy_from_document({"mode": "strict", "classifications": [rule]}, source="p.yaml")
        assert str(raised.value).startswith(f"p.yaml: {message}")

    def test_classifications_must_be_a_list(self) -> None:
        with pytest.raises(PolicyError, match=r"p.yaml: classifications: Input should be a valid list"):
            policy_from_document({"classifications": {"tool": "t"}}, source="p.yaml")

    def test_add_classification_errors(self) -> None:
        engine = PolicyEngine()
        with pytest.raises(PolicyError, match=r"invalid classification\.args\.to: give exactly one"):
            engine.add_classification({"tool": "t", "data_classes": ["a"], "args": {"to": {}}})
        with pytest.raises(PolicyError, match="must be a mapping"):
            engine.add_classification(["not", "a", "mapping"])  # type: ignore[arg-type]
        assert not engine.classifications


# -- through the governor: what is decided and what is recorded ---------------------------------------------------


@pytest.fixture
def mail_governor(home: Path, engine: PolicyEngine) -> Iterator[LocalGovernor]:
    with LocalGovernor(home, policy=engine) as gov:
        yield gov


def entry_data(governor: LocalGovernor, seq: int) -> dict[str, Any]:
    entry = governor.node.ledger.get(seq)
    assert entry is not None
    return entry.data


def test_governor_denies_a_dishonest_caller_and_records_what_the_node_added(mail_governor: LocalGovernor) -> None:
    request = {"actor": "ai_agent:bot", "tool": "send_email", "tool_args": {"to": "eve@elsewhere.test"}, **DISHONEST}
    decision = mail_governor.decide(request)
    assert decision.outcome is Outcome.DENIED and "conflict" in decision.reasoning
    data = entry_data(mail_governor, decision.ledger_entry_id)
    assert data["classified"] == {"data_classes": ["pii"], "context": {"destination": ["external"]}}
    # the caller's own declaration is recorded as it was made
    assert data["request"]["data_classes"] == [] and data["request"]["context"] == {"destination": "internal"}
    assert "data_class:pii" in data["risk"]["factors"] and "context:destination=external" in data["risk"]["factors"]


def test_governor_approves_an_in_domain_recipient(mail_governor: LocalGovernor) -> None:
    request = {"actor": "ai_agent:bot", "tool": "send_email", "tool_args": {"to": ["bob@example.com"]}, **DISHONEST}
    decision = mail_governor.decide(request)
    assert decision.approved and decision.capability_token
    data = entry_data(mail_governor, decision.ledger_entry_id)
    assert data["classified"] == {"data_classes": ["pii"], "context": {}}
    mail_governor.verify_token(decision.capability_token, tool="send_email", args={"to": ["bob@example.com"]})


def test_governor_denies_when_one_recipient_of_many_is_outside(mail_governor: LocalGovernor) -> None:
    args = {"to": ["bob@example.com", "eve@elsewhere.test"]}
    decision = mail_governor.decide({"actor": "ai_agent:bot", "tool": "send_email", "tool_args": args})
    assert decision.outcome is Outcome.DENIED


def test_governor_records_nothing_extra_when_nothing_is_classified(mail_governor: LocalGovernor) -> None:
    decision = mail_governor.decide({"actor": "ai_agent:bot", "tool": "search"})
    assert "classified" not in entry_data(mail_governor, decision.ledger_entry_id)


def test_governor_without_classifications_records_as_before(governor: LocalGovernor) -> None:
    decision = governor.decide({"actor": "ai_agent:a", "tool": "search", "data_classes": ["pii"]})
    data = entry_data(governor, decision.ledger_entry_id)
    assert set(data) == {
        "decision_id",
        "outcome",
        "reason",
        "request",
        "policy_version",
        "policy_mode",
        "matched_relations",
        "risk",
        "token_id",
        "escalation_id",
    }


def test_idempotent_repeat_of_a_classified_request(mail_governor: LocalGovernor) -> None:
    request = {"actor": "ai_agent:bot", "tool": "send_email", "tool_args": {"to": "eve@elsewhere.test"}, **DISHONEST}
    first = mail_governor.decide(request, idempotency_key="k")
    assert mail_governor.decide(request, idempotency_key="k") == first


# -- properties -----------------------------------------------------------------------------------------------------

addresses = st.sampled_from(["a@example.com", "b@example.com", "eve@elsewhere.test", "x@example.com.evil.test"])
declared_classes = st.lists(st.sampled_from(["pii", "public", "secret", "phi"]), max_size=3)
declared_destination = st.sampled_from([None, "internal", "external", "elsewhere"])


@given(st.lists(addresses, max_size=4), declared_classes, declared_destination)
def test_node_facts_only_add(recipients: list[str], classes: list[str], destination: str | None) -> None:
    engine = policy_from_document(EMAIL_POLICY)
    context = {} if destination is None else {"destination": destination}
    classified = engine.classify("send_email", {"to": recipients})
    plain = engine.satisfied_terms(actor="ai_agent:a", tool="send_email", data_classes=classes, context=context)
    more = engine.satisfied_terms(
        actor="ai_agent:a", tool="send_email", data_classes=classes, context=context, classified=classified
    )
    assert plain <= more
    assert set(classes) <= set(classified.data_classes_with(classes))
    outcome = engine.evaluate(
        actor="ai_agent:a", tool="send_email", data_classes=classes, context=context, classified=classified
    ).outcome
    outsider = any(not r.endswith("@example.com") for r in recipients)
    assert (outcome is Outcome.DENIED) == (outsider or destination == "external")


def test_policy_test_applies_the_policy_classifications(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.test_cli import run

    policy = tmp_path / "mail.json"
    policy.write_text(json.dumps(EMAIL_POLICY))
    base = ["policy", "test", str(policy), "--actor", "ai_agent:bot", "--tool", "send_email", "--json"]
    code, out, _ = run(capsys, *base, "--arg", "to=eve@elsewhere.test", "--context", "destination=internal")
    assert code == 0
    result = json.loads(out)
    assert result["outcome"] == "denied"  # as the node would decide it: pii to an outside recipient
    assert result["classified"] == {"data_classes": ["pii"], "context": {"destination": ["external"]}}
    code, out, _ = run(capsys, *base, "--arg", "to=bob@example.com")
    result = json.loads(out)
    assert (code, result["outcome"]) == (0, "approved")
    assert result["classified"] == {"data_classes": ["pii"], "context": {}}
    code, out, _ = run(capsys, *base[:-1], "--arg", "to=eve@elsewhere.test")
    assert code == 0 and "classified       data classes ['pii'], context {'destination': ['external']}" in out
