"""An OpenAI Agents SDK agent governed by a Lexecon tool guardrail, offline.

A scripted model (no API key, no network, tracing off) calls an allowed tool and a forbidden one in one turn, then
answers. The guardrail decides each call; the forbidden tool never runs and the model reads why. The ledger is
verified at the end.

    python examples/openai_agents_guardrail.py [--home DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from lexecon_core import LocalGovernor, current_capability, init_node
from lexecon_integrations.openai_agents import govern_agent

POLICY = """
name: openai-agents-example
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: weather, term_type: tool, value: get_weather}
  - {term_id: payments, term_type: tool, value: "transfer_*"}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: weather}
  - {relation_type: forbids, source_term_id: agents, target_term_id: payments}
"""

RAN: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    capability = current_capability()
    RAN.append("get_weather")
    return f"sunny in {city} (authorised by {capability.decision_id if capability else '?'})"


@function_tool
def transfer_funds(to_account: str, amount_cents: int) -> str:
    """Transfer money."""
    RAN.append("transfer_funds")
    return f"sent {amount_cents} to {to_account}"


def _message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg_1",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


class ScriptedModel(Model):
    """Plays back a fixed conversation: first two tool calls, then a final answer."""

    def __init__(self) -> None:
        self.turn = 0

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.turn += 1
        if self.turn == 1:
            output: list[Any] = [
                ResponseFunctionToolCall(
                    type="function_call", call_id="call_weather", name="get_weather",
                    arguments='{"city": "Lisbon"}', id="fc_1",
                ),
                ResponseFunctionToolCall(
                    type="function_call", call_id="call_transfer", name="transfer_funds",
                    arguments='{"to_account": "X-1", "amount_cents": 500000}', id="fc_2",
                ),
            ]  # fmt: skip
        else:
            output = [_message("It is sunny in Lisbon. I am not allowed to move money.")]
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("this scripted model does not stream")


async def run(home: Path) -> dict[str, Any]:
    node = init_node(home, node_id="openai-agents-example")
    policy_file = home / "example-policy.yaml"
    policy_file.write_text(POLICY)
    node.load_policy_file(policy_file)
    node.close()

    set_tracing_disabled(True)
    with LocalGovernor(home) as governor:
        agent = govern_agent(
            Agent(name="assistant", model=ScriptedModel(), tools=[get_weather, transfer_funds]),
            governor,
            actor="ai_agent:assistant",
        )
        result = await Runner.run(agent, "Weather in Lisbon? Then send 5000 EUR to X-1.")
        for item in result.new_items:
            if item.type == "tool_call_output_item":
                print(f"tool output: {item.output}")
        print(f"model: {result.final_output}")
        report = governor.verify_ledger()
    print(f"tools that ran: {RAN}")
    print(f"ledger {'valid' if report.valid else 'INVALID'}: {report.entries_verified} entries verified")
    return {"ran": list(RAN), "result": result, "ledger_valid": report.valid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="node home (default: a new temporary directory)")
    home = parser.parse_args().home or Path(tempfile.mkdtemp(prefix="lexecon-openai-agents-")) / "home"
    outcome = asyncio.run(run(home))
    raise SystemExit(0 if outcome["ledger_valid"] and "transfer_funds" not in outcome["ran"] else 1)


if __name__ == "__main__":
    main()
