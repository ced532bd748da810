"""An OpenAI Agents SDK agent whose every tool call is checked by Allowly first, run by a
scripted model (`agents.testing.ScriptedModel`): no model provider, no API key.

    ALLOWLY_URL=http://127.0.0.1:8080 ALLOWLY_ADMIN_KEY=… ALLOWLY_CHECK_KEY=… ALLOWLY_READ_KEY=… \
        python clients/examples/openai_agents/example.py

What the model calls and what happens: ../README.md and ../common/demo.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent / d) for d in ("", "../common", "../../python/src")]

from agents import Agent, RunResult, Runner, function_tool, set_tracing_disabled  # noqa: E402
from agents.items import ToolCallOutputItem  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

import demo  # noqa: E402
from allowly_agents import allowly_guardrail  # noqa: E402
from allowly_tool_gate import ToolGate  # noqa: E402

# Nothing leaves for a tracing backend.
set_tracing_disabled(True)


def build_agent(gate: ToolGate, steps: list[Any]) -> tuple[Agent, ScriptedModel, list[tuple[str, dict]]]:
    """The agent with the app's tools, each behind the Allowly guardrail, its scripted model
    (`steps`: the model's answers, call after call) and the list of tools that ran."""
    functions, ran = demo.app_tools()
    guard = allowly_guardrail(gate)
    model = ScriptedModel(steps)
    tools = [function_tool(f, tool_input_guardrails=[guard]) for f in functions]
    return Agent(name="assistant", instructions="Help the user.", model=model, tools=tools), model, ran


def steps(calls: list[tuple[str, dict, str]], final: str) -> list[Any]:
    """The model's script: all `calls` in one turn, then `final`."""
    return [[function_call(name, args, call_id=cid) for name, args, cid in calls], [assistant_message(final)]]


def tool_outputs(result: RunResult) -> dict[str, str]:
    """What the model got back for each tool call, by call id (a tool's output, or Allowly's
    message instead of it)."""
    return {str(item.raw_item["call_id"]): str(item.output)
            for item in result.new_items if isinstance(item, ToolCallOutputItem)}


def main() -> None:
    gate = demo.demo_gate()
    agent, _, ran = build_agent(gate, steps(demo.CALLS, demo.FINAL))
    result = asyncio.run(Runner.run(agent, "Sort out my day."))
    demo.report(gate, tool_outputs(result), ran, result.final_output)


if __name__ == "__main__":
    main()
