"""Allowly for LangChain and LangGraph: ask Allowly before each tool call.

- LangGraph: `ToolNode(tools, wrap_tool_call=allowly_tool_call_wrapper(gate),
  awrap_tool_call=allowly_async_tool_call_wrapper(gate))` gates every tool of the node.
- LangChain alone (`langchain-core`): `gate_tool(gate, tool)` is the same tool, gated.

Allowed: the tool runs; its `ToolMessage` carries the `GateDecision` (receipt ids) in
`response_metadata["allowly"]`. Anything else: the tool does not run and the model gets a
`ToolMessage` with `status="error"` whose content is `GateDecision.message()` (Allowly's
reason, the receipt id, the nonce or escalation id of an unanswered request).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, Awaitable, Callable

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool

from allowly_tool_gate import GateDecision, ToolGate


def _refusal(d: GateDecision, call: dict[str, Any]) -> ToolMessage:
    return ToolMessage(content=d.message(), tool_call_id=call["id"], name=call["name"], status="error",
                       response_metadata={"allowly": asdict(d)})


def _with_receipts(result: Any, d: GateDecision) -> Any:
    if isinstance(result, ToolMessage):
        result.response_metadata = {**result.response_metadata, "allowly": asdict(d)}
    return result


def allowly_tool_call_wrapper(gate: ToolGate) -> Callable[[Any, Callable[[Any], Any]], Any]:
    """`ToolNode(wrap_tool_call=...)`: one check per tool call, before `execute`."""

    def wrap(request: Any, execute: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        d = gate.decide(call["name"], call["args"], call_id=call["id"])
        return _with_receipts(execute(request), d) if d.allowed else _refusal(d, call)

    return wrap


def allowly_async_tool_call_wrapper(gate: ToolGate) -> Callable[[Any, Callable[[Any], Awaitable[Any]]], Awaitable[Any]]:
    """`ToolNode(awrap_tool_call=...)`, for graphs run with `ainvoke`/`astream`."""

    async def wrap(request: Any, execute: Callable[[Any], Awaitable[Any]]) -> Any:
        call = request.tool_call
        d = await asyncio.to_thread(gate.decide, call["name"], call["args"], call_id=call["id"])
        return _with_receipts(await execute(request), d) if d.allowed else _refusal(d, call)

    return wrap


def gate_tool(gate: ToolGate, tool: BaseTool) -> BaseTool:
    """`tool`, gated: same name, description and arguments; invoked, it asks Allowly first and
    answers `GateDecision.message()` instead of running when not allowed. (Called with a whole
    tool call, the check's Idempotency-Key is not keyed on the call's id: use the LangGraph
    wrapper for that.)"""

    def run(**kwargs: Any) -> Any:
        d = gate.decide(tool.name, kwargs)
        return tool.invoke(kwargs) if d.allowed else d.message()

    return StructuredTool.from_function(func=run, name=tool.name, description=tool.description,
                                        args_schema=tool.args_schema)
