"""Allowly for the OpenAI Agents SDK (`openai-agents`): a tool input guardrail that asks
Allowly before each function tool runs.

    gate = ToolGate(checker, authorization_id, waiter=reader, scopes={"send_email": "email.send"})
    guard = allowly_guardrail(gate)

    @function_tool(tool_input_guardrails=[guard])
    def send_email(to: str, subject: str) -> str: ...

Allowed: the tool runs, and the guardrail's `output_info` (in the run result's
`tool_input_guardrail_results`) is the `GateDecision` with its receipt ids. Anything else: the
SDK does not call the tool and hands the model `GateDecision.message()` instead (Allowly's
reason, the receipt id, the nonce or escalation id of an unanswered request).
"""

from __future__ import annotations

import asyncio
import json

from agents import ToolGuardrailFunctionOutput, ToolInputGuardrail, ToolInputGuardrailData

from allowly_tool_gate import ToolGate


def allowly_guardrail(gate: ToolGate) -> ToolInputGuardrail:
    """The guardrail: put it in `tool_input_guardrails` of every tool Allowly should gate."""

    async def allowly_check(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        ctx = data.context
        try:
            args = json.loads(ctx.tool_arguments or "{}")
        except ValueError:
            args = None  # refused by the gate
        # The SDK client is synchronous (and a wait may be long): off the event loop.
        d = await asyncio.to_thread(gate.decide, ctx.tool_name, args, call_id=ctx.tool_call_id)
        if d.allowed:
            return ToolGuardrailFunctionOutput.allow(output_info=d)
        return ToolGuardrailFunctionOutput.reject_content(d.message(), output_info=d)

    return ToolInputGuardrail(guardrail_function=allowly_check, name="allowly")
