"""A LlamaIndex FunctionAgent governed by Lexecon, offline.

A scripted function-calling model (no LLM, no network) calls an allowed tool and a forbidden one in one turn, then
answers. Every tool is a GovernedTool; the forbidden one never runs and the model reads why as an error tool output.
The ledger is verified at the end.

    python examples/llama_index_agent.py [--home DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool

from lexecon_core import LocalGovernor, current_capability, init_node
from lexecon_integrations.llama_index import govern_tools

POLICY = """
name: llama-index-example
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: reads, term_type: tool, value: "read_*"}
  - {term_id: writes, term_type: tool, value: "drop_*"}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: reads}
  - {relation_type: forbids, source_term_id: agents, target_term_id: writes}
"""

RAN: list[str] = []


def read_report(quarter: str) -> str:
    """Read the sales report of a quarter."""
    capability = current_capability()
    RAN.append("read_report")
    return f"{quarter}: revenue up 12% (authorised by {capability.decision_id if capability else '?'})"


def drop_table(table: str) -> str:
    """Drop a database table."""
    RAN.append("drop_table")
    return f"dropped {table}"


def scripted_model(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """First turn: call both tools. Once tool results are back: answer."""
    if any(m.role == MessageRole.TOOL for m in messages):
        return ChatMessage(role="assistant", content="Revenue is up 12%. I may not drop tables.")
    return ChatMessage(
        role="assistant",
        blocks=[
            TextBlock(text="Let me look."),
            ToolCallBlock(tool_call_id="call_read", tool_name="read_report", tool_kwargs={"quarter": "Q3"}),
            ToolCallBlock(tool_call_id="call_drop", tool_name="drop_table", tool_kwargs={"table": "sales"}),
        ],
    )


async def run(home: Path) -> dict[str, Any]:
    node = init_node(home, node_id="llama-index-example")
    policy_file = home / "example-policy.yaml"
    policy_file.write_text(POLICY)
    node.load_policy_file(policy_file)
    node.close()

    with LocalGovernor(home) as governor:
        tools = govern_tools(
            [FunctionTool.from_defaults(fn=read_report), FunctionTool.from_defaults(fn=drop_table)],
            governor,
            actor="ai_agent:analyst",
        )
        agent = FunctionAgent(tools=tools, llm=MockFunctionCallingLLM(response_generator=scripted_model))
        handler = agent.run("How did Q3 go? Then drop the sales table.")
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                status = "error" if event.tool_output.is_error else "ok"
                print(f"{event.tool_name} [{status}]: {event.tool_output.content}")
        response = await handler
        print(f"model: {response}")
        report = governor.verify_ledger()
    print(f"tools that ran: {RAN}")
    print(f"ledger {'valid' if report.valid else 'INVALID'}: {report.entries_verified} entries verified")
    return {"ran": list(RAN), "response": str(response), "ledger_valid": report.valid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="node home (default: a new temporary directory)")
    home = parser.parse_args().home or Path(tempfile.mkdtemp(prefix="lexecon-llama-index-")) / "home"
    outcome = asyncio.run(run(home))
    raise SystemExit(0 if outcome["ledger_valid"] and "drop_table" not in outcome["ran"] else 1)


if __name__ == "__main__":
    main()
