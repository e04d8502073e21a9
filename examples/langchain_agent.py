"""A LangChain 1.x agent governed by Lexecon, offline.

A scripted model (no LLM, no network) asks for an allowed tool and a forbidden one in one turn, then answers.
LexeconMiddleware decides each call; the forbidden tool never runs and the model reads why. The ledger is verified
at the end.

    python examples/langchain_agent.py [--home DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from lexecon_core import LocalGovernor, current_capability, init_node
from lexecon_integrations.langchain import LexeconMiddleware

POLICY = """
name: langchain-example
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: lookups, term_type: tool, value: "lookup_*"}
  - {term_id: deletes, term_type: tool, value: "delete_*"}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: lookups}
  - {relation_type: forbids, source_term_id: agents, target_term_id: deletes}
"""

RAN: list[str] = []  # what really executed, so the example (and its test) can show the forbidden tool did not


@tool
def lookup_order(order_id: int) -> str:
    """Look up an order by id."""
    capability = current_capability()
    RAN.append("lookup_order")
    return f"order {order_id}: 2 items, shipped (authorised by {capability.decision_id if capability else '?'})"


@tool
def delete_order(order_id: int) -> str:
    """Delete an order."""
    RAN.append("delete_order")
    return f"order {order_id} deleted"


class ScriptedModel(GenericFakeChatModel):
    """An offline chat model that plays back a fixed conversation and accepts tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def script() -> Iterator[AIMessage]:
    yield AIMessage(
        content="",
        tool_calls=[
            {"name": "lookup_order", "args": {"order_id": 1001}, "id": "call_lookup"},
            {"name": "delete_order", "args": {"order_id": 1001}, "id": "call_delete"},
        ],
    )
    yield AIMessage(content="Order 1001 has shipped. I was not allowed to delete it.")


def run(home: Path) -> dict[str, Any]:
    node = init_node(home, node_id="langchain-example")
    policy_file = home / "example-policy.yaml"
    policy_file.write_text(POLICY)
    node.load_policy_file(policy_file)
    node.close()

    with LocalGovernor(home) as governor:
        agent = create_agent(
            ScriptedModel(messages=script()),
            tools=[lookup_order, delete_order],
            middleware=[LexeconMiddleware(governor, actor="ai_agent:order_bot")],
        )
        result = agent.invoke({"messages": [{"role": "user", "content": "Check order 1001, then delete it."}]})
        for message in result["messages"]:
            if isinstance(message, ToolMessage):
                print(f"{message.name} [{message.status}]: {message.content}")
        print(f"model: {result['messages'][-1].content}")
        report = governor.verify_ledger()
    print(f"tools that ran: {RAN}")
    print(f"ledger {'valid' if report.valid else 'INVALID'}: {report.entries_verified} entries verified")
    return {"ran": list(RAN), "messages": result["messages"], "ledger_valid": report.valid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="node home (default: a new temporary directory)")
    home = parser.parse_args().home or Path(tempfile.mkdtemp(prefix="lexecon-langchain-")) / "home"
    outcome = run(home)
    raise SystemExit(0 if outcome["ledger_valid"] and "delete_order" not in outcome["ran"] else 1)


if __name__ == "__main__":
    main()
