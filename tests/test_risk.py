"""Risk assessment: bounds, weighting, levels, declared floors and rule validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexecon_core import ConfigError
from lexecon_core.risk import DEFAULT_RULES, DIMENSIONS, RiskLevel, RiskRules, assess

tool_names = st.one_of(
    st.sampled_from(["search", "delete_user", "issue_refund", "send_email", "exec_shell", "write_file", "x"]),
    st.text(max_size=12),
)
data_classes = st.lists(
    st.sampled_from(["pii", "phi", "pci", "credentials", "financial", "public", "confidential_x", "other"]),
    max_size=4,
)
contexts = st.dictionaries(
    st.sampled_from(["environment", "destination", "other"]),
    st.sampled_from(["production", "prod-eu", "external", "internal", "dev"]),
    max_size=3,
)
levels = st.one_of(st.none(), st.sampled_from(list(RiskLevel)))


@given(tool_names, data_classes, levels, contexts)
def test_scores_are_bounded_integers_and_level_matches(tool, classes, declared, context) -> None:  # type: ignore[no-untyped-def]
    result = assess(tool=tool, data_classes=classes, declared_level=declared, context=context)
    assert set(result.dimensions) == set(DIMENSIONS)
    for value in result.dimensions.values():
        assert isinstance(value, int) and 0 <= value <= 100
    assert isinstance(result.score, int) and 0 <= result.score <= 100
    assert result.level is DEFAULT_RULES.level_for(result.score)
    if declared is not None:
        floor = DEFAULT_RULES.declared_floor[declared]
        assert all(v >= floor for v in result.dimensions.values())
        assert result.level >= declared


@given(tool_names, data_classes, contexts)
def test_adding_a_data_class_never_lowers_risk(tool, classes, context) -> None:  # type: ignore[no-untyped-def]
    base = assess(tool=tool, data_classes=classes, context=context)
    more = assess(tool=tool, data_classes=[*classes, "phi"], context=context)
    assert all(more.dimensions[d] >= base.dimensions[d] for d in DIMENSIONS)
    assert more.score >= base.score


def test_weighted_average_rounds_half_up() -> None:
    # delete* gives security 70, operational 80, compliance 30, financial 30:
    # (70*25 + 30*20 + 80*15 + 30*10) / 100 = 38.5 -> 39
    result = assess(tool="delete_user")
    assert result.dimensions == {
        "security": 70,
        "privacy": 0,
        "compliance": 30,
        "operational": 80,
        "reputational": 0,
        "financial": 30,
    }
    assert result.score == 39
    assert result.level is RiskLevel.MEDIUM
    assert result.factors == ("tool:delete*",)


@pytest.mark.parametrize(
    ("score", "level"),
    [(0, "low"), (29, "low"), (30, "medium"), (59, "medium"), (60, "high"), (79, "high"), (80, "critical")],
)
def test_level_thresholds(score: int, level: str) -> None:
    assert DEFAULT_RULES.level_for(score) is RiskLevel(level)


def test_benign_tool_is_low_and_declared_critical_is_critical() -> None:
    assert assess(tool="search").level is RiskLevel.LOW
    critical = assess(tool="search", declared_level="critical")
    assert critical.score == 80 and critical.level is RiskLevel.CRITICAL


def test_context_rules_adjust_and_clamp() -> None:
    base = assess(tool="delete_user")
    prod = assess(tool="delete_user", context={"environment": "production"})
    assert prod.dimensions["operational"] == min(base.dimensions["operational"] + 15, 100)
    assert "context:environment=prod*" in prod.factors
    rules = RiskRules(context_rules=[{"key": "calm", "adjust": {"security": -100}}])
    assert assess(tool="x", context={"calm": 1}, rules=rules).dimensions["security"] == 0


def test_custom_rules() -> None:
    rules = RiskRules.from_mapping(
        {
            "tool_rules": [{"pattern": "launch_*", "scores": {"operational": 100, "security": 100}}],
            "weights": {
                "security": 50,
                "privacy": 0,
                "compliance": 0,
                "operational": 50,
                "reputational": 0,
                "financial": 0,
            },
        }
    )
    result = assess(tool="launch_rocket", rules=rules)
    assert result.score == 100 and result.level is RiskLevel.CRITICAL


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"weights": {"security": 100}}, "weights"),
        ({"tool_rules": [{"pattern": "x", "scores": {"karma": 5}}]}, "unknown risk dimension"),
        ({"tool_rules": [{"pattern": "x", "scores": {"security": 101}}]}, "between 0 and 100"),
        ({"thresholds": {"medium": 50, "high": 40, "critical": 80}}, "thresholds"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_rules_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RiskRules.from_mapping(data)


def test_risk_levels_order_by_severity() -> None:
    assert RiskLevel.LOW < RiskLevel.MEDIUM < RiskLevel.HIGH < RiskLevel.CRITICAL
    assert max(RiskLevel.HIGH, RiskLevel.LOW) is RiskLevel.HIGH
    assert sorted(["critical", "low", "high"], key=lambda v: RiskLevel(v).rank) == ["low", "high", "critical"]


def test_context_values_are_matched_as_the_policy_engine_matches_them() -> None:
    rules = RiskRules(context_rules=[{"key": "dry_run", "pattern": "false", "adjust": {"operational": 50}}])
    assert assess(tool="x", context={"dry_run": False}, rules=rules).dimensions["operational"] == 50
    assert assess(tool="x", context={"dry_run": True}, rules=rules).dimensions["operational"] == 0


def test_declared_floor_is_bounded() -> None:
    with pytest.raises(ConfigError, match="declared_floor"):
        RiskRules.from_mapping({"declared_floor": {"critical": 150}})


@given(st.lists(st.sampled_from(["delete_user", "refund", "send_email", "lookup", "run_sql", "x", ""]), max_size=20))
def test_memoised_rule_matches_equal_a_fresh_match(tools: list[str]) -> None:
    fresh = RiskRules.model_validate(DEFAULT_RULES.model_dump())  # its own, empty memo
    for tool in tools:
        expected = tuple(rule for _, rule in sorted(fresh._tool_index.lookup(tool), key=lambda item: item[0]))
        assert DEFAULT_RULES.matching(tool=tool) == expected
        assert assess(tool=tool, data_classes=("pii",)) == assess(tool=tool, data_classes=("pii",), rules=fresh)


def test_rule_memo_is_bounded() -> None:
    rules = RiskRules.model_validate(DEFAULT_RULES.model_dump())
    for i in range(5000):
        assert rules.matching(tool=f"tool_{i}") == ()
    assert rules.matching(tool="delete_user") and rules.matching(data_class="pii")
    assert len(rules._matches) <= 4096
