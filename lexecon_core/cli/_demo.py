"""``lexecon demo``: a scripted support agent, governed end to end, offline, on a scratch node."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from lexecon_core.cli._common import app, out
from lexecon_core.decisions import LocalGovernor
from lexecon_core.node import init_node

DEMO_POLICY = Path(__file__).with_name("demo_policy.yaml")
ACTOR = "ai_agent:support_bot"


@dataclass(frozen=True)
class PlannedCall:
    """One tool call the scripted agent makes."""

    tool: str
    args: dict[str, Any]
    intent: str
    data_classes: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)
    risk_level: str | None = None


SCRIPT = (
    PlannedCall("search_kb", {"query": "refund policy"}, "find the refund policy"),
    PlannedCall("get_customer", {"customer_id": 42}, "look up the customer", ("pii",)),
    PlannedCall("issue_refund", {"order_id": 1001, "amount_cents": 2500}, "refund a damaged item"),
    PlannedCall("delete_customer", {"customer_id": 42}, "customer asked to close the account"),
    PlannedCall(
        "send_email",
        {"to": "partner@example.com", "body": "customer 42 details"},
        "share with a partner",
        ("pii",),
        {"destination": "external"},
    ),
    PlannedCall(
        "issue_refund", {"order_id": 1002, "amount_cents": 5_000_000}, "refund a bulk order", risk_level="critical"
    ),
)

TOOLS: dict[str, Callable[..., str]] = {
    "search_kb": lambda query: f"3 articles about {query!r}",
    "get_customer": lambda customer_id: f"customer {customer_id}: Ada, ada@example.com",
    "issue_refund": lambda order_id, amount_cents: f"refunded {amount_cents / 100:.2f} on order {order_id}",
    "delete_customer": lambda customer_id: f"deleted customer {customer_id}",
    "send_email": lambda to, body: f"sent to {to}",
}


def run_demo(home: Path) -> bool:
    """Run the script against a fresh node at ``home``; return whether the ledger verified."""
    node = init_node(home, node_id="demo-node")
    node.load_policy_file(DEMO_POLICY)
    node.close()
    out.print(f"node [bold]demo-node[/] at {home}, policy {DEMO_POLICY.name}, actor {ACTOR}\n")
    with LocalGovernor(home) as governor:
        for call in SCRIPT:
            decision = governor.decide(
                {
                    "actor": ACTOR,
                    "tool": call.tool,
                    "tool_args": call.args,
                    "user_intent": call.intent,
                    "data_classes": call.data_classes,
                    "context": call.context,
                    "risk_level": call.risk_level,
                }
            )
            colour = {"approved": "green", "denied": "red", "escalated": "yellow"}[decision.outcome.value]
            out.print(
                f"[bold]{call.tool}[/]({_args(call.args)})  risk {decision.risk_level.value} ({decision.risk_score})"
            )
            out.print(
                f"  [{colour}]{decision.outcome.value}[/]: {decision.reasoning}"
                f"  [dim]entry {decision.ledger_entry_id}[/]"
            )
            if decision.approved and decision.capability_token:
                governor.verify_token(decision.capability_token, tool=call.tool, args=call.args)
                out.print(f"  token verified for these arguments; tool says: {TOOLS[call.tool](**call.args)}")
            elif decision.escalation_id:
                out.print(f"  awaits human approval ({decision.escalation_id}); the tool did not run")
            else:
                out.print("  the tool did not run")
        report = governor.verify_ledger()
    status = (
        "[bold green]valid[/]" if report.valid else f"[bold red]INVALID[/] at {report.first_bad_seq}: {report.reason}"
    )
    out.print(f"\nledger {status}: {report.entries_verified} entries, every signature checked")
    out.print(f"try: lexecon ledger list --home {home}   |   lexecon verify-ledger --home {home}")
    return report.valid


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


@app.command()
def demo(
    home: Annotated[
        Path | None, typer.Option("--home", help="Where to create the demo node (default: a new temporary directory).")
    ] = None,
) -> None:
    """Run a governed, scripted support agent offline on a fresh node and verify its ledger."""
    target = home or Path(tempfile.mkdtemp(prefix="lexecon-demo-")) / "home"
    if not run_demo(target):
        raise typer.Exit(1)
