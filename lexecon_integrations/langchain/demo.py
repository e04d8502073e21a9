"""``lexecon demo``: a LangChain support agent governed by Lexecon, offline, on a fresh node.

The scripted model (no LLM, no network) plays a support conversation: a knowledge-base search, a customer lookup
with personal data, a refund, a forbidden delete, an e-mail of personal data to an outside address, and a refund big
enough to be critical risk. ``LexeconMiddleware`` decides every call; a ``describe`` hook tells Lexecon which data
each call touches. At the end the ledger is verified.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from rich.console import Console

from lexecon_core import LocalGovernor, current_capability, init_node
from lexecon_integrations.langchain._middleware import LexeconMiddleware

DEMO_POLICY = Path(__file__).with_name("demo_policy.yaml")
ACTOR = "ai_agent:support_bot"


def describe(tool_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What each call touches, as the deployment knows it: data classes, destination, declared risk."""
    if tool_name == "get_customer":
        return {"data_classes": ["pii"]}
    if tool_name == "send_email":
        external = not str(args.get("to", "")).endswith("@ourshop.example")
        return {"data_classes": ["pii"], "context": {"destination": "external" if external else "internal"}}
    if tool_name == "issue_refund" and int(args.get("amount_cents", 0)) >= 1_000_000:
        return {"risk_level": "critical"}
    return {}


def make_tools(ran: list[str]) -> list[BaseTool]:
    def record(name: str) -> str:
        ran.append(name)
        capability = current_capability()
        return capability.decision_id if capability else "?"

    @tool
    def search_kb(query: str) -> str:
        """Search the help-centre articles."""
        record("search_kb")
        return f"3 articles about {query!r}"

    @tool
    def get_customer(customer_id: int) -> str:
        """Look up a customer record."""
        record("get_customer")
        return f"customer {customer_id}: Ada Lovelace, ada@example.com"

    @tool
    def issue_refund(order_id: int, amount_cents: int) -> str:
        """Refund an order."""
        record("issue_refund")
        return f"refunded {amount_cents / 100:.2f} on order {order_id}"

    @tool
    def delete_customer(customer_id: int) -> str:
        """Delete a customer account."""
        record("delete_customer")
        return f"deleted customer {customer_id}"

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        record("send_email")
        return f"sent to {to}"

    return [search_kb, get_customer, issue_refund, delete_customer, send_email]


def _calls(*calls: tuple[str, dict[str, Any]]) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": n, "args": a, "id": f"call_{i}_{n}"} for i, (n, a) in enumerate(calls)]
    )


def script() -> Iterator[AIMessage]:
    yield _calls(("search_kb", {"query": "refund policy"}), ("get_customer", {"customer_id": 42}))
    yield _calls(
        ("issue_refund", {"order_id": 1001, "amount_cents": 2500}),
        ("delete_customer", {"customer_id": 42}),
        ("send_email", {"to": "partner@elsewhere.example", "body": "customer 42: Ada Lovelace"}),
        ("issue_refund", {"order_id": 1002, "amount_cents": 5_000_000}),
    )
    yield AIMessage(content="Refunded order 1001. The rest needs a human: I could not delete or share the account.")


class ScriptedModel(GenericFakeChatModel):
    """An offline chat model that plays back a fixed conversation and accepts tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def run_demo(home: Path, console: Console | None = None) -> bool:
    """Run the governed agent on a fresh node at ``home``; return whether the ledger verified."""
    out = console or Console(highlight=False)
    node = init_node(home, node_id="demo-node")
    node.load_policy_file(DEMO_POLICY)
    node.close()
    ran: list[str] = []
    out.print(f"node [bold]demo-node[/] at {home}, policy {DEMO_POLICY.name}, actor {ACTOR}\n")
    with LocalGovernor(home) as governor:
        agent = create_agent(
            ScriptedModel(messages=script()),
            tools=make_tools(ran),
            middleware=[LexeconMiddleware(governor, actor=ACTOR, describe=describe)],
        )
        result = agent.invoke({"messages": [{"role": "user", "content": "Please sort out customer 42."}]})
        asked: list[str] = []
        for message in result["messages"]:
            if isinstance(message, AIMessage) and message.tool_calls:
                for call in message.tool_calls:
                    asked.append(call["name"])
                    out.print(f"model asks: [bold]{call['name']}[/]({_args(call['args'])})")
            elif isinstance(message, ToolMessage):
                colour = "green" if message.status == "success" else "red"
                out.print(f"  [{colour}]{message.name}[/]: {message.content}")
            elif isinstance(message, AIMessage):
                out.print(f"model says: {message.content}")
        report = governor.verify_ledger()
    # Parallel calls run on a thread pool; list what ran in the order the model asked, not the order threads finished.
    out.print(f"\ntools that actually ran: {', '.join(sorted(ran, key=asked.index))}")
    status = (
        "[bold green]valid[/]" if report.valid else f"[bold red]INVALID[/] at {report.first_bad_seq}: {report.reason}"
    )
    out.print(f"ledger {status}: {report.entries_verified} entries, every signature checked")
    out.print(f"next: lexecon ledger list --home {home}   |   lexecon verify-ledger --home {home}")
    return report.valid


def _args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
