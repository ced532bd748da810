"""A LangGraph agent (a model node and a `ToolNode`) whose every tool call is checked by
Allowly first, run by langchain-core's fake chat model: no model provider, no API key.

    ALLOWLY_URL=http://127.0.0.1:8080 ALLOWLY_ADMIN_KEY=… ALLOWLY_CHECK_KEY=… ALLOWLY_READ_KEY=… \
        python clients/examples/langchain/example.py

What the model calls and what happens: ../README.md and ../common/demo.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent / d) for d in ("", "../common", "../../python/src")]

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage  # noqa: E402
from langchain_core.tools import BaseTool, tool  # noqa: E402
from langgraph.graph import START, MessagesState, StateGraph  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402

import demo  # noqa: E402
from allowly_langchain import allowly_async_tool_call_wrapper, allowly_tool_call_wrapper  # noqa: E402
from allowly_tool_gate import ToolGate  # noqa: E402


def build_tools() -> tuple[list[BaseTool], list[tuple[str, dict]]]:
    """The app's tools as LangChain tools, and the list of tools that ran."""
    functions, ran = demo.app_tools()
    return [tool(f) for f in functions], ran


def build_graph(gate: ToolGate, responses: list[BaseMessage]) -> tuple[Any, list[tuple[str, dict]]]:
    """The compiled graph, every tool call of its `ToolNode` gated by Allowly (its model answers
    `responses`, one per turn), and the list of tools that ran."""
    tools, ran = build_tools()
    model = FakeMessagesListChatModel(responses=responses)

    def agent(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, wrap_tool_call=allowly_tool_call_wrapper(gate),
                                     awrap_tool_call=allowly_async_tool_call_wrapper(gate)))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(), ran


def responses(calls: list[tuple[str, dict, str]], final: str) -> list[BaseMessage]:
    """The model's script: all `calls` in one turn, then `final`."""
    tool_calls = [{"name": name, "args": args, "id": cid, "type": "tool_call"} for name, args, cid in calls]
    return [AIMessage(content="", tool_calls=tool_calls), AIMessage(content=final)]


def tool_messages(state: dict) -> dict[str, ToolMessage]:
    """What the model got back for each tool call, by call id."""
    return {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}


def main() -> None:
    gate = demo.demo_gate()
    app, ran = build_graph(gate, responses(demo.CALLS, demo.FINAL))
    state = app.invoke({"messages": [("user", "Sort out my day.")]})
    seen = {cid: str(m.content) for cid, m in tool_messages(state).items()}
    demo.report(gate, seen, ran, str(state["messages"][-1].content))


if __name__ == "__main__":
    main()
