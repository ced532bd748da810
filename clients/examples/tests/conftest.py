"""The agent-framework examples against a real `allowly serve` (started by
crates/allowly-server/tests/it/clients.rs, as for the SDK's suite: rules `email.send` → confirm,
`payments.*` → escalate, one key per role).

Each scenario runs in both frameworks through a `Driver`: a real OpenAI Agents SDK `Runner`
with a `ScriptedModel`, and a real LangGraph graph with a `ToolNode` and langchain-core's fake
chat model. A driver runs a list of tool calls the model makes in one turn and answers what
the model got back for each call, the receipt ids the framework surfaced for it, and which tool
bodies really ran."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

EXAMPLES = Path(__file__).resolve().parents[1]
for p in (EXAMPLES / "common", EXAMPLES / "openai_agents", EXAMPLES / "langchain",
          EXAMPLES.parent / "python" / "tests"):
    sys.path.insert(0, str(p))

import allowly  # noqa: E402
from live_server import Env, env  # noqa: E402,F401 - the suites' fixture: the server and its keys

import demo  # noqa: E402
from allowly_tool_gate import ToolGate  # noqa: E402

Call = tuple[str, dict, str]  # (tool, arguments, call id)


@dataclass
class Outcome:
    #: What the model got back, by call id: the tool's output or Allowly's message.
    seen: dict[str, str]
    #: The receipt ids the framework's result carries for each call, by call id.
    receipts: dict[str, tuple[str, ...]]
    #: (tool, arguments) of each tool body that ran.
    ran: list[tuple[str, dict]]


def run_openai_agents(gate: ToolGate, calls: list[Call]) -> Outcome:
    ex = _example("openai_agents")
    from agents import Runner
    agent, model, ran = ex.build_agent(gate, ex.steps(calls, "done"))
    result = asyncio.run(Runner.run(agent, "go"))
    assert model.remaining_steps == 0
    # What the model was sent on its second call: the tool outputs (or Allowly's messages).
    seen = {i["call_id"]: i["output"] for i in model.calls[1].input
            if isinstance(i, dict) and i.get("type") == "function_call_output"}
    assert seen == ex.tool_outputs(result)
    receipts = {r.output.output_info.call_id: r.output.output_info.receipt_ids
                for r in result.tool_input_guardrail_results}
    return Outcome(seen, receipts, ran)


def run_langgraph(gate: ToolGate, calls: list[Call], asynchronous: bool = False) -> Outcome:
    ex = _example("langchain")
    app, ran = ex.build_graph(gate, ex.responses(calls, "done"))
    inputs = {"messages": [("user", "go")]}
    # `ainvoke` goes through the ToolNode's async wrapper, `invoke` through the sync one.
    state = asyncio.run(app.ainvoke(inputs)) if asynchronous else app.invoke(inputs)
    assert state["messages"][-1].content == "done"
    msgs = ex.tool_messages(state)
    for cid, m in msgs.items():
        # An error status exactly when the tool did not run.
        assert (m.status == "success") == m.response_metadata["allowly"]["allowed"], m
    return Outcome({cid: str(m.content) for cid, m in msgs.items()},
                   {cid: tuple(m.response_metadata["allowly"]["receipt_ids"]) for cid, m in msgs.items()}, ran)


_MODULES: dict[str, Any] = {}


def _example(name: str) -> Any:
    """The example module of `name` (both are called `example`: loaded by path, once)."""
    if name not in _MODULES:
        import importlib.util
        spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / name / "example.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MODULES[name] = mod
    return _MODULES[name]


DRIVERS: dict[str, Callable[[ToolGate, list[Call]], Outcome]] = {
    "openai_agents": run_openai_agents, "langgraph": run_langgraph,
    "langgraph_async": lambda gate, calls: run_langgraph(gate, calls, asynchronous=True)}


@pytest.fixture(params=sorted(DRIVERS))
def framework(request) -> str:
    return request.param


@dataclass
class Clients:
    env: Env
    admin: allowly.Allowly = field(init=False)
    reader: allowly.Allowly = field(init=False)
    checker: allowly.Allowly = field(init=False)

    def __post_init__(self) -> None:
        mk = lambda key: allowly.Allowly(key, base_url=self.env.url)  # noqa: E731
        self.admin, self.reader, self.checker = mk(self.env.admin), mk(self.env.reader), mk(self.env.checker)

    def grant(self, *scopes: str) -> str:
        return self.admin.create_authorization("agent-user", list(scopes)).authorization.id

    def gate(self, az: str, **kw: Any) -> ToolGate:
        kw.setdefault("waiter", self.reader)
        return ToolGate(self.checker, az, scopes=demo.SCOPES, resources=demo.RESOURCES, **kw)


@pytest.fixture
def clients(env) -> Clients:
    return Clients(env)


class Answerer:
    """A person answering, on another thread, each confirmation or escalation the gate reports
    (`on_pending`), while the gate waits: as a UI or an approver would."""

    def __init__(self, admin: allowly.Allowly, outcome: str):
        self.admin, self.outcome = admin, outcome
        self.threads: list[threading.Thread] = []
        self.answers: list[Any] = []

    def __call__(self, result: allowly.CheckResult) -> None:
        def answer() -> None:
            if result.confirmation is not None:
                self.answers.append(self.admin.answer_confirmation(result.confirmation.nonce, self.outcome, "agent-user",
                                                                   shown="ok?"))
            else:
                assert result.escalation is not None
                self.answers.append(self.admin.resolve_escalation(result.escalation.id, self.outcome, "approver-1",
                                                                  note="checked"))
        t = threading.Thread(target=answer)
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join()


def run_example(directory: str, env: Env) -> str:
    """Runs `directory/example.py` as a user would, against the test server."""
    vars = {**os.environ, "ALLOWLY_URL": env.url, "ALLOWLY_ADMIN_KEY": env.admin, "ALLOWLY_CHECK_KEY": env.checker,
            "ALLOWLY_READ_KEY": env.reader, "OPENAI_API_KEY": ""}
    p = subprocess.run([sys.executable, str(EXAMPLES / directory / "example.py")], env=vars, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout
