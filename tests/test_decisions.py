"""LocalGovernor: the decision path, what it records, and how it fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lexecon_core import (
    ConfigError,
    Decision,
    DecisionRequest,
    GovernanceDenied,
    GovernanceError,
    Governor,
    InvalidRequest,
    LedgerError,
    LocalGovernor,
    Outcome,
    TokenError,
)

REFUND = {
    "actor": "ai_agent:finance_bot",
    "proposed_action": "refund:order",
    "tool": "refund",
    "tool_args": {"order_id": 1001, "amount_cents": 2500},
    "user_intent": "refund a damaged item",
    "context": {"ticket_id": "T-1", "ratio": 0.5},
}


def entry_data(governor: LocalGovernor, seq: int) -> dict:
    entry = governor.node.ledger.get(seq)
    assert entry is not None
    return entry.data


def test_local_governor_implements_governor() -> None:
    assert issubclass(LocalGovernor, Governor)


def test_approval_carries_a_bound_token_and_a_ledger_entry(governor: LocalGovernor) -> None:
    decision = governor.decide(REFUND)
    assert decision.outcome is Outcome.APPROVED and decision.approved
    assert decision.capability_token and decision.token_id
    assert decision.policy_version == governor.policy.version
    assert decision.risk_level.value in {"low", "medium", "high"}
    assert isinstance(decision.risk_score, int)
    claims = governor.verify_token(decision.capability_token, tool="refund", args=REFUND["tool_args"])
    assert claims.decision_id == decision.decision_id
    assert claims.ledger_entry_id == decision.ledger_entry_id
    assert claims.ledger_entry_hash == decision.ledger_entry_hash
    assert claims.jti == decision.token_id
    assert claims.sub == "ai_agent:finance_bot" and claims.iss == "test-node"
    assert decision.token_expires_at == claims.exp
    assert claims.exp - claims.iat == governor.settings.token_ttl_seconds


def test_the_ledger_records_the_decision_but_not_args_or_token(governor: LocalGovernor) -> None:
    decision = governor.decide(REFUND)
    entry = governor.node.ledger.get(decision.ledger_entry_id)
    assert entry is not None and entry.entry_type == "decision"
    assert entry.entry_hash.hex() == decision.ledger_entry_hash
    data = entry.data
    assert data["decision_id"] == decision.decision_id
    assert data["outcome"] == "approved"
    assert data["reason"] == decision.reasoning
    assert data["policy_version"] == decision.policy_version
    assert data["token_id"] == decision.token_id
    assert data["risk"]["score"] == decision.risk_score
    assert set(data["risk"]["dimensions"]) == {
        "security",
        "privacy",
        "compliance",
        "operational",
        "reputational",
        "financial",
    }
    request = data["request"]
    assert request["args_sha256"] == DecisionRequest.parse(REFUND).args_sha256
    assert request["actor"] == REFUND["actor"] and request["action"] == "refund:order"
    assert request["context"] == {"ticket_id": "T-1", "ratio": "0.5"}  # floats stored as text
    body = entry.body.decode()
    assert "2500" not in body  # the raw argument value is never stored
    assert decision.capability_token is not None and decision.capability_token not in body


def test_denial_has_no_token_and_is_recorded(governor: LocalGovernor) -> None:
    decision = governor.decide({"actor": "ai_agent:x", "tool": "delete_user", "tool_args": {"id": 7}})
    assert decision.outcome is Outcome.DENIED
    assert decision.capability_token is None and decision.token_id is None
    assert "forbidden by forbids:agents->deletes" in decision.reasoning
    assert entry_data(governor, decision.ledger_entry_id)["outcome"] == "denied"
    with pytest.raises(GovernanceDenied) as raised:
        decision.raise_if_not_approved()
    assert raised.value.decision is decision
    assert "delete_user" in str(raised.value) and "forbidden" in str(raised.value)


def test_critical_risk_is_escalated_with_an_escalation_id(governor: LocalGovernor) -> None:
    decision = governor.decide({**REFUND, "risk_level": "critical"})
    assert decision.outcome is Outcome.ESCALATED
    assert decision.escalation_id and decision.escalation_id.startswith("esc_")
    assert decision.capability_token is None
    assert decision.risk_score >= 80
    assert entry_data(governor, decision.ledger_entry_id)["escalation_id"] == decision.escalation_id


def test_request_cannot_loosen_the_mode(governor: LocalGovernor) -> None:
    decision = governor.decide({"actor": "ai_agent:x", "tool": "unlisted", "policy_mode": "permissive"})
    assert decision.outcome is Outcome.DENIED
    assert decision.policy_mode.value == "strict"


def test_paranoid_request_tightens(governor: LocalGovernor) -> None:
    decision = governor.decide(
        {"actor": "ai_agent:x", "tool": "refund", "data_classes": ["phi", "pci"], "policy_mode": "paranoid"}
    )
    assert decision.risk_level.value == "high"
    assert decision.outcome is Outcome.ESCALATED


def test_adecide_matches_decide(governor: LocalGovernor) -> None:
    async def run() -> list[Decision]:
        return list(await asyncio.gather(*(governor.adecide(REFUND) for _ in range(5))))

    decisions = asyncio.run(run())
    assert all(d.approved for d in decisions)
    assert len({d.ledger_entry_id for d in decisions}) == 5
    assert governor.verify_ledger().valid


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"tool": "x"}, "actor"),
        ({"actor": "a"}, "tool"),
        ({"actor": "a", "tool": "x", "risk_level": "extreme"}, "risk_level"),
        ({"actor": "a", "tool": "x", "unexpected": 1}, "unexpected"),
        ({"actor": "", "tool": "x"}, "actor"),
        ("not a mapping", "mapping"),
    ],
)
def test_invalid_requests(governor: LocalGovernor, request_: object, message: str) -> None:
    before = governor.node.ledger.count()
    with pytest.raises(InvalidRequest, match=message):
        governor.decide(request_)  # type: ignore[arg-type]
    assert governor.node.ledger.count() == before  # nothing half-written


@pytest.mark.parametrize("value", [object(), float("nan"), {1: "non-string key"}, "\ud800"])
def test_arguments_no_token_can_bind_are_denied_and_recorded(governor: LocalGovernor, value: object) -> None:
    decision = governor.decide({"actor": "a", "tool": "search", "tool_args": {"when": value}})
    assert decision.outcome.value == "denied" and decision.capability_token is None and decision.args_sha256 is None
    assert "cannot be bound to a capability token" in decision.reasoning
    entry = governor.node.ledger.get(decision.ledger_entry_id)
    assert entry is not None and entry.data["request"]["args_sha256"] is None and entry.data["outcome"] == "denied"
    assert governor.verify_ledger().valid


def test_a_client_that_could_not_send_its_arguments_gets_a_recorded_denial(governor: LocalGovernor) -> None:
    with pytest.raises(InvalidRequest, match="tool_args"):  # only with empty tool_args
        governor.decide({"actor": "a", "tool": "search", "tool_args": {"q": 1}, "unbindable_args": "why"})
    decision = governor.decide({"actor": "a", "tool": "search", "unbindable_args": "arguments are not JSON"})
    assert decision.outcome.value == "denied" and "arguments are not JSON" in decision.reasoning


def test_ledger_failure_fails_closed(governor: LocalGovernor, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise LedgerError("ledger write failed: disk I/O error")

    monkeypatch.setattr(governor.node.ledger, "append", broken)
    with pytest.raises(GovernanceError, match="could not be recorded, so it is refused"):
        governor.decide(REFUND)


def test_token_for_other_args_or_tool_is_refused(governor: LocalGovernor) -> None:
    decision = governor.decide(REFUND)
    assert decision.capability_token
    with pytest.raises(TokenError) as wrong_args:
        governor.verify_token(decision.capability_token, tool="refund", args={"order_id": 1001, "amount_cents": 9999})
    assert wrong_args.value.reason == "args_mismatch"
    with pytest.raises(TokenError) as wrong_tool:
        governor.verify_token(decision.capability_token, tool="search", args=REFUND["tool_args"])
    assert wrong_tool.value.reason == "wrong_tool"


def test_load_policy_is_recorded_and_takes_effect(governor: LocalGovernor, tmp_path: Path) -> None:
    policy = tmp_path / "open.json"
    policy.write_text(json.dumps({"mode": "permissive", "terms": [], "relations": []}))
    engine = governor.load_policy(policy)
    assert governor.decide({"actor": "a", "tool": "anything"}).approved
    loaded = governor.node.ledger.entries(entry_type="policy_loaded")
    assert loaded[-1].data["policy_version"] == engine.version
    assert loaded[-1].data["document"]["mode"] == "permissive"
    # a new governor on the same home picks the loaded policy up
    with LocalGovernor(governor.settings.home) as other:
        assert other.policy.version == engine.version


def test_no_policy_denies_everything(tmp_path: Path) -> None:
    from lexecon_core import init_node

    init_node(tmp_path / "bare", node_id="bare").close()
    with LocalGovernor(tmp_path / "bare") as gov:
        decision = gov.decide({"actor": "a", "tool": "search"})
    assert decision.outcome is Outcome.DENIED and "no relation permits" in decision.reasoning


def test_missing_home_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lexecon init"):
        LocalGovernor(tmp_path / "nowhere")


# -- idempotency ----------------------------------------------------------------------------------------------------


def test_an_idempotency_key_answers_repeats_with_the_first_decision(governor: LocalGovernor) -> None:
    request = {"actor": "ai_agent:a", "tool": "refund", "tool_args": {"amount": 5}, "context": {"ticket": "T-1"}}
    first = governor.decide(request, idempotency_key="k-1", principal="apikey:x")
    again = governor.decide(request, idempotency_key="k-1", principal="apikey:x")
    assert first.approved and again == first  # same id, entry, token (same iat, deterministic signature)
    assert governor.node.ledger.entries(decision_id=first.decision_id)[0].data["principal"] == "apikey:x"
    other_principal = governor.decide(request, idempotency_key="k-1", principal="apikey:y")
    assert other_principal.decision_id != first.decision_id
    with pytest.raises(InvalidRequest, match="different request"):
        governor.decide({**request, "context": {"ticket": "T-2"}}, idempotency_key="k-1", principal="apikey:x")
    with pytest.raises(InvalidRequest, match="1-256"):
        governor.decide(request, idempotency_key="")


def test_concurrent_repeats_of_one_key_make_one_entry(governor: LocalGovernor) -> None:
    from concurrent.futures import ThreadPoolExecutor

    request = {"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": "x"}}
    with ThreadPoolExecutor(16) as pool:
        decisions = list(pool.map(lambda _: governor.decide(request, idempotency_key="same"), range(64)))
    assert len({d.decision_id for d in decisions}) == 1
    assert len({d.capability_token for d in decisions}) == 1
    assert len(governor.node.ledger.entries(decision_id=decisions[0].decision_id)) == 1
    assert governor.verify_ledger().valid
