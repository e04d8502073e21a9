"""Adapter figures: per tool-call overhead of each adapter (local mode, durable ledger write included) against the
bare tool call, and whole scripted agent runs governed vs ungoverned - each pair measured in the same run.

    python benchmarks/bench_integrations.py            # ~6 minutes
    python benchmarks/bench_integrations.py --quick
    python benchmarks/bench_integrations.py --model-ms 5   # scripted models that take 5 ms per turn (default 20)

Whole runs are measured twice: with model turns of --model-ms (the target: governed <= 1.05x ungoverned at 20 ms, a
fast local model) and with instant models, a diagnostic of the frameworks' own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lexecon_core import LocalGovernor, init_node, load_settings

POLICY = """
mode: strict
terms:
  - {term_id: agents, term_type: actor, value: "ai_agent:*"}
  - {term_id: lookup, term_type: tool, value: lookup}
relations:
  - {relation_type: permits, source_term_id: agents, target_term_id: lookup}
"""
ACTOR = "ai_agent:bench"


def p50_us(fn: Callable[[], Any], n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples)


def interleaved_p50_us(variants: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """p50 of each variant over ``n`` rounds that run every variant once, in turn: drift in machine speed (other
    tenants, frequency scaling) then hits all of them alike instead of whichever happened to run last."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(n):
        for name, fn in variants.items():
            start = time.perf_counter_ns()
            fn()
            samples[name].append((time.perf_counter_ns() - start) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


async def ainterleaved_p50_us(variants: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """:func:`interleaved_p50_us` for coroutine functions, on one event loop."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(n):
        for name, fn in variants.items():
            start = time.perf_counter_ns()
            await fn()
            samples[name].append((time.perf_counter_ns() - start) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def p50_us_async(fn: Callable[[], Any], n: int) -> float:
    async def run() -> float:
        samples = []
        for _ in range(n):
            start = time.perf_counter_ns()
            await fn()
            samples.append((time.perf_counter_ns() - start) / 1000)
        return statistics.median(samples)

    return asyncio.run(run())


def make_governor(workdir: Path, name: str, durability: str = "fsync") -> LocalGovernor:
    home = workdir / name
    node = init_node(home, node_id=name)
    (workdir / "policy.yaml").write_text(POLICY)
    node.load_policy_file(workdir / "policy.yaml")
    node.close()
    return LocalGovernor(home, settings=load_settings(home, ledger_durability=durability))


def lookup_impl(key: int) -> str:
    return f"value-{key}"


# -- per-call overhead ------------------------------------------------------------------------------------------


def bench_langchain_calls(governor: LocalGovernor, n: int) -> list[tuple[str, float, float]]:
    from langchain_core.runnables import RunnableConfig
    from langchain_core.tools import tool

    from lexecon_integrations.langchain import LexeconCallbackHandler, govern_tool

    @tool
    def lookup(key: int) -> str:
        """Look a key up."""
        return lookup_impl(key)

    governed = govern_tool(lookup, governor, actor=ACTOR)
    handler_config: RunnableConfig = {"callbacks": [LexeconCallbackHandler(governor, actor=ACTOR)]}
    counter = itertools.count()
    bare = p50_us(lambda: lookup.invoke({"key": next(counter)}), n)
    bare_async = p50_us_async(lambda: lookup.ainvoke({"key": next(counter)}), n)
    return [
        ("LangChain govern_tool, invoke", bare, p50_us(lambda: governed.invoke({"key": next(counter)}), n)),
        (
            "LangChain govern_tool, ainvoke",
            bare_async,
            p50_us_async(lambda: governed.ainvoke({"key": next(counter)}), n),
        ),
        (
            "LangChain callback handler, invoke",
            bare,
            p50_us(lambda: lookup.invoke({"key": next(counter)}, config=handler_config), n),
        ),
    ]


def bench_llama_index_calls(governor: LocalGovernor, n: int) -> list[tuple[str, float, float]]:
    from llama_index.core.tools import FunctionTool

    from lexecon_integrations.llama_index import GovernedTool

    def lookup(key: int) -> str:
        """Look a key up."""
        return lookup_impl(key)

    bare_tool = FunctionTool.from_defaults(fn=lookup)
    governed = GovernedTool(bare_tool, governor, actor=ACTOR)
    counter = itertools.count()
    return [
        (
            "LlamaIndex GovernedTool, call",
            p50_us(lambda: bare_tool.call(key=next(counter)), n),
            p50_us(lambda: governed.call(key=next(counter)), n),
        ),
        (
            "LlamaIndex GovernedTool, acall",
            p50_us_async(lambda: bare_tool.acall(key=next(counter)), n),
            p50_us_async(lambda: governed.acall(key=next(counter)), n),
        ),
    ]


def bench_openai_calls(governor: LocalGovernor, n: int) -> list[tuple[str, float, float]]:
    from agents import Agent, function_tool
    from agents.tool_context import ToolContext
    from agents.tool_guardrails import ToolInputGuardrailData

    from lexecon_integrations.openai_agents import govern_tools

    @function_tool
    def lookup(key: int) -> str:
        """Look a key up."""
        return lookup_impl(key)

    (governed,) = govern_tools([lookup], governor, actor=ACTOR)
    assert governed.tool_input_guardrails  # govern_tools adds Lexecon's guardrail last
    guardrail = governed.tool_input_guardrails[-1]
    agent = Agent(name="bench")
    counter = itertools.count()

    def context() -> tuple[ToolContext[Any], str]:
        arguments = json.dumps({"key": next(counter)})
        return ToolContext(context=None, tool_name="lookup", tool_call_id="c", tool_arguments=arguments), arguments

    async def bare() -> None:
        ctx, arguments = context()
        await lookup.on_invoke_tool(ctx, arguments)

    async def guarded() -> None:
        ctx, arguments = context()
        output = await guardrail.run(ToolInputGuardrailData(context=ctx, agent=agent))
        assert output.behavior["type"] == "allow"
        await governed.on_invoke_tool(ctx, arguments)

    return [("OpenAI Agents guardrail + bound tool", p50_us_async(bare, n), p50_us_async(guarded, n))]


# -- whole agent runs -------------------------------------------------------------------------------------------


def bench_langchain_agent(governor: LocalGovernor, runs: int, model_ms: float = 0.0) -> dict[str, float]:
    from langchain.agents import create_agent
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from lexecon_integrations.langchain import LexeconMiddleware

    class Scripted(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Scripted:
            return self

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            if model_ms:
                time.sleep(model_ms / 1000)  # a model that takes this long per turn
            return super()._generate(*args, **kwargs)

    class NoOp(AgentMiddleware):  # the framework's own cost of a tool-call hook
        def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
            return handler(request)

    @tool
    def lookup(key: int) -> str:
        """Look a key up."""
        return lookup_impl(key)

    def model() -> Scripted:
        turn = [
            AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"key": 1}, "id": "c1"}]),
            AIMessage(content="done"),
        ]
        return Scripted(messages=itertools.cycle(turn))

    agents = {
        "ungoverned": create_agent(model(), tools=[lookup]),
        "no-op hook": create_agent(model(), tools=[lookup], middleware=[NoOp()]),
        "governed": create_agent(model(), tools=[lookup], middleware=[LexeconMiddleware(governor, actor=ACTOR)]),
    }
    question: Any = {"messages": [{"role": "user", "content": "look up 1"}]}

    def runner(agent: Any) -> Callable[[], Any]:
        return lambda: agent.invoke(question)

    for agent in agents.values():
        for _ in range(20):  # warm-up
            agent.invoke(question)
    return interleaved_p50_us({name: runner(agent) for name, agent in agents.items()}, runs)


def bench_llama_index_agent(governor: LocalGovernor, runs: int, model_ms: float = 0.0) -> dict[str, float]:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
    from llama_index.core.llms.mock import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool, ToolOutput
    from llama_index.core.tools.types import AsyncBaseTool, ToolMetadata

    from lexecon_integrations.llama_index import govern_tools

    def lookup(key: int) -> str:
        """Look a key up."""
        return lookup_impl(key)

    def model(messages: Any, **kwargs: Any) -> ChatMessage:
        if model_ms:
            time.sleep(model_ms / 1000)  # a model that takes this long per turn
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role="assistant", content="done")
        call = ToolCallBlock(tool_call_id="c1", tool_name="lookup", tool_kwargs={"key": 1})
        return ChatMessage(role="assistant", blocks=[call])

    plain = FunctionTool.from_defaults(fn=lookup)

    class NoOp(AsyncBaseTool):  # the framework's own cost of wrapping a tool
        @property
        def metadata(self) -> ToolMetadata:
            return plain.metadata

        def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
            return plain.call(*args, **kwargs)

        async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
            return await plain.acall(*args, **kwargs)

    agents = {
        "ungoverned": FunctionAgent(tools=[plain], llm=MockFunctionCallingLLM(response_generator=model)),
        "no-op hook": FunctionAgent(tools=[NoOp()], llm=MockFunctionCallingLLM(response_generator=model)),
        "governed": FunctionAgent(
            tools=govern_tools([plain], governor, actor=ACTOR), llm=MockFunctionCallingLLM(response_generator=model)
        ),
    }

    async def run(agent: FunctionAgent) -> None:
        assert str(await agent.run("look up 1")) == "done"

    async def measure() -> dict[str, float]:
        for agent in agents.values():
            for _ in range(20):  # warm-up
                await run(agent)

        def runner(agent: FunctionAgent) -> Callable[[], Any]:
            return lambda: run(agent)

        return await ainterleaved_p50_us({name: runner(agent) for name, agent in agents.items()}, runs)

    return asyncio.run(measure())


def bench_openai_agent(governor: LocalGovernor, runs: int, model_ms: float = 0.0) -> dict[str, float]:
    from agents import (
        Agent,
        Runner,
        ToolGuardrailFunctionOutput,
        ToolInputGuardrailData,
        function_tool,
        set_tracing_disabled,
        tool_input_guardrail,
    )
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

    from lexecon_integrations.openai_agents import govern_agent

    set_tracing_disabled(True)

    @function_tool
    def lookup(key: int) -> str:
        """Look a key up."""
        return lookup_impl(key)

    class Scripted(Model):
        async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
            if model_ms:
                await asyncio.sleep(model_ms / 1000)  # a model that takes this long per turn
            answered = isinstance(input, list) and any(
                (item.get("type") if isinstance(item, dict) else getattr(item, "type", None)) == "function_call_output"
                for item in input
            )
            if answered:
                output: list[Any] = [
                    ResponseOutputMessage(
                        id="m", type="message", role="assistant", status="completed",
                        content=[ResponseOutputText(type="output_text", text="done", annotations=[])],
                    )
                ]  # fmt: skip
            else:
                output = [
                    ResponseFunctionToolCall(
                        type="function_call", call_id="c1", name="lookup", arguments='{"key": 1}', id="f1"
                    )
                ]
            return ModelResponse(output=output, usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    @tool_input_guardrail(name="no-op")
    async def allow_all(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        return ToolGuardrailFunctionOutput.allow(output_info=None)

    plain = Agent(name="bench", model=Scripted(), tools=[lookup])
    agents = {
        "ungoverned": plain,
        "no-op hook": plain.clone(tools=[dataclasses.replace(lookup, tool_input_guardrails=[allow_all])]),
        "governed": govern_agent(plain, governor, actor=ACTOR),
    }

    async def run(agent: Agent[Any]) -> None:
        result = await Runner.run(agent, "look up 1")
        assert result.final_output == "done"

    async def measure() -> dict[str, float]:
        for agent in agents.values():
            for _ in range(20):  # warm-up
                await run(agent)

        def runner(agent: Agent[Any]) -> Callable[[], Any]:
            return lambda: run(agent)

        return await ainterleaved_p50_us({name: runner(agent) for name, agent in agents.items()}, runs)

    return asyncio.run(measure())


def bench_where_the_check_runs(governor: LocalGovernor, n: int) -> list[tuple[str, float]]:
    """One guard check (decide + token verify) on the calling thread, on a fresh thread (what LangChain's ToolNode
    does for every tool call), and handed to a long-lived worker thread; the bare thread hand-offs as baselines."""
    from concurrent.futures import ThreadPoolExecutor

    from lexecon_integrations._intercept import ToolCallGuard

    guard = ToolCallGuard(governor, actor=ACTOR)

    def check() -> None:
        assert guard.check("lookup", {"key": 1}).allowed

    warm = ThreadPoolExecutor(1)
    try:
        return [
            ("calling thread", p50_us(check, n)),
            ("fresh thread", p50_us(lambda: ThreadPoolExecutor(1).submit(check).result(), n)),
            ("fresh thread, no check (hand-off only)", p50_us(lambda: ThreadPoolExecutor(1).submit(int).result(), n)),
            ("long-lived worker thread", p50_us(lambda: warm.submit(check).result(), n)),
            ("long-lived worker, no check (hand-off only)", p50_us(lambda: warm.submit(int).result(), n)),
        ]
    finally:
        warm.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--model-ms", type=float, default=20.0, help="scripted models take this long per turn (default 20 ms)"
    )
    options = parser.parse_args()
    quick, model_ms = options.quick, options.model_ms
    calls, runs = (200, 40) if quick else (2_000, 300)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {calls} calls / {runs} agent runs per figure")
    with tempfile.TemporaryDirectory(prefix="lexecon-bench-") as tmp:
        workdir = Path(tmp)
        for durability in ("fsync", "process"):
            label = {"fsync": "fsync per decision (default)", "process": "LEXECON_LEDGER_DURABILITY=process"}
            print(f"\n=== ledger durability: {label[durability]}")
            with make_governor(workdir, f"adapters-{durability}", durability) as governor:
                rows = [
                    *bench_langchain_calls(governor, calls),
                    *bench_llama_index_calls(governor, calls),
                    *bench_openai_calls(governor, calls),
                ]
                print("per tool call, local mode (decide + ledger append + token issue & verify)")
                print(f"{'adapter':<40} {'bare p50':>10} {'governed p50':>13} {'overhead':>10}  target <= 500us")
                for name, bare, governed in rows:
                    met = "met" if governed - bare <= 500 else "NOT met"
                    print(f"{name:<40} {bare:>8.0f}us {governed:>11.0f}us {governed - bare:>8.0f}us  {met}")
                print("one guard check, by the thread it runs on (p50)")
                for name, value in bench_where_the_check_runs(governor, calls):
                    print(f"  {name:<44} {value:>8.0f}us")
                # The target run: each model turn sleeps --model-ms (default 20 ms, a fast local model). The
                # instant-model run is kept as a diagnostic: it measures the framework, not an agent.
                for turn_ms in dict.fromkeys((model_ms, 0.0)):
                    whole_runs = {
                        "LangChain create_agent": bench_langchain_agent(governor, runs, turn_ms),
                        "LlamaIndex FunctionAgent": bench_llama_index_agent(governor, runs, turn_ms),
                        "OpenAI Agents Runner": bench_openai_agent(governor, runs, turn_ms),
                    }
                    report_whole_runs(whole_runs, turn_ms)
    return 0


def report_whole_runs(whole_runs: dict[str, dict[str, float]], turn_ms: float) -> None:
    speed = f"each model turn takes {turn_ms:g} ms" if turn_ms else "instant models (diagnostic)"
    print(f"whole scripted agent run (one tool call + final answer; {speed}), p50, the variants interleaved")
    for name, p50 in whole_runs.items():
        plain = p50["ungoverned"]
        verdict = ""
        if turn_ms >= 20:
            verdict = "  (target <= 1.05x: " + ("met)" if p50["governed"] / plain <= 1.05 else "NOT met)")
        print(
            f"  {name:<25} ungoverned {plain / 1000:.2f} ms, no-op hook {p50['no-op hook'] / 1000:.2f} ms"
            f" ({p50['no-op hook'] / plain:.2f}x), governed {p50['governed'] / 1000:.2f} ms"
            f" -> {p50['governed'] / plain:.3f}x{verdict}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
