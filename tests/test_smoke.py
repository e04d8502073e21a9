from lexecon_core import LocalGovernor


def test_governor_approves_permitted_and_denies_forbidden(governor: LocalGovernor) -> None:
    approved = governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": "x"}})
    denied = governor.decide({"actor": "ai_agent:a", "tool": "delete_user", "tool_args": {"id": 1}})
    assert approved.approved
    assert approved.capability_token
    assert denied.outcome == "denied"
    assert denied.capability_token is None
    assert governor.verify_ledger().valid
