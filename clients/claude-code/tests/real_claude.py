"""The real Claude Code, run headless (`claude -p`) against a scripted model.

Claude Code is the package `clients/claude-code/package.json` pins (installed by
`scripts/setup.sh`). It reaches "the model" at `ANTHROPIC_BASE_URL`: here a local Anthropic
Messages API (`ScriptedModel`) that answers from a script instead of a language model, so the
model's tool calls are fixed input; everything else (Claude Code, its hooks, the tools it runs)
is the real thing. Used by the end-to-end tests (`test_real_claude_code.py`) and by the fixture
recorder (`fixtures/record.py`).

The script of a run is a list of turns, each a list of tool calls `(tool name, tool input)`.
Each main-loop request of Claude Code (one that offers tools) gets the next turn as `tool_use`
blocks (stop reason `tool_use`); once the script is played, the answer is the text `done`.
Any other request (none seen in 2.1.332's `-p` runs) gets a short text. Every request is kept
(`requests`), so a test can read the `tool_result` Claude Code sent back for each call. It serves
`POST /v1/messages` (streamed as server-sent events when asked, as the API does) and
`/v1/messages/count_tokens`; anything else is a 404 kept in `unknown` (the tests want it empty)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
#: The native binary the package's postinstall puts in place of its placeholder.
CLAUDE = PACKAGE / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
#: Every run is bounded: a hung Claude Code fails the test instead of hanging it.
RUN_TIMEOUT_S = 40.0

ToolCall = tuple[str, dict[str, Any]]
#: Each answer is a message of its own id (Claude Code merges the parts of one message by id).
_IDS = itertools.count()


def claude_version() -> str:
    """The version the installed binary reports (`2.1.332`), or a failure naming the fix."""
    if not CLAUDE.is_file():
        raise AssertionError(f"{CLAUDE} is missing: run scripts/setup.sh (npm ci in clients/claude-code)")
    out = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                         env=_base_env(Path("/nonexistent")))
    assert out.returncode == 0, out
    return out.stdout.split()[0]


class ScriptedModel:
    """An Anthropic Messages API on 127.0.0.1 that plays `script` (see the module's doc)."""

    def __init__(self, script: list[list[ToolCall]]):
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.unknown: list[str] = []
        self._lock = threading.Lock()
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                model._unknown(f"GET {self.path}")
                self._send(404, "application/json", b'{"type":"error","error":{"type":"not_found_error"}}')

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                path = self.path.split("?", 1)[0]
                if path == "/v1/messages/count_tokens":
                    self._send(200, "application/json", json.dumps({"input_tokens": 100}).encode())
                elif path == "/v1/messages":
                    content, stop = model._answer(body)
                    if body.get("stream"):
                        self._send(200, "text/event-stream", _sse(body.get("model", "scripted"), content, stop))
                    else:
                        self._send(200, "application/json", json.dumps(_message(body.get("model", "scripted"),
                                                                                 content, stop)).encode())
                else:
                    model._unknown(f"POST {self.path}")
                    self._send(404, "application/json", b'{"type":"error","error":{"type":"not_found_error"}}')

            def _send(self, status: int, kind: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedModel":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _unknown(self, what: str) -> None:
        with self._lock:
            self.unknown.append(what)

    def _answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        with self._lock:
            self.requests.append(body)
            if not body.get("tools"):
                return [{"type": "text", "text": "ok"}], "end_turn"
            # The turn: how many of the script's turns the conversation already holds (Claude Code
            # may merge or repair messages, so the calls' ids are counted, not the messages).
            seen = {b.get("id") for m in body.get("messages", []) if m.get("role") == "assistant"
                    and isinstance(m.get("content"), list) for b in m["content"] if isinstance(b, dict)}
            turn = sum(1 for t in range(len(self.script)) if f"toolu_scripted_{t}_0" in seen)
            if turn >= len(self.script):
                return [{"type": "text", "text": "done"}], "end_turn"
            calls = [{"type": "tool_use", "id": f"toolu_scripted_{turn}_{i}", "name": name, "input": args}
                     for i, (name, args) in enumerate(self.script[turn])]
            return calls, "tool_use"

    def tool_results(self) -> dict[str, dict[str, Any]]:
        """Every `tool_result` Claude Code sent back, by `tool_use_id`."""
        out = {}
        with self._lock:
            for body in self.requests:
                for m in body.get("messages", []):
                    if m.get("role") == "user" and isinstance(m.get("content"), list):
                        for block in m["content"]:
                            if block.get("type") == "tool_result":
                                out[block["tool_use_id"]] = block
        return out


def result_text(block: dict[str, Any]) -> str:
    """A `tool_result`'s content as text (a string, or text blocks)."""
    c = block.get("content")
    if isinstance(c, str):
        return c
    return "".join(b["text"] if b.get("type") == "text" else json.dumps(b) for b in c or [])


def _usage() -> dict[str, int]:
    return {"input_tokens": 100, "output_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _message(model: str, content: list[dict[str, Any]], stop: Optional[str]) -> dict[str, Any]:
    return {"id": f"msg_scripted_{next(_IDS)}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": _usage()}


def _sse(model: str, content: list[dict[str, Any]], stop: str) -> bytes:
    """The streamed form of one message, as the Messages API sends it."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": _message(model, [], None)})]
    for i, block in enumerate(content):
        if block["type"] == "text":
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {"type": "text", "text": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "text_delta", "text": block["text"]}})]
        else:
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {**block, "input": {}}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "input_json_delta",
                                                          "partial_json": json.dumps(block["input"])}})]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": 10}}),
               ("message_stop", {"type": "message_stop"})]
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


def _base_env(home: Path) -> dict[str, str]:
    """Claude Code's environment: the scripted model's address is added by `start`; nothing of the
    caller's own Claude Code configuration or credentials is passed on."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({
        "HOME": str(home),
        "ANTHROPIC_API_KEY": "scripted-model-no-key",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    })
    return env


@dataclass(repr=False)
class Run:
    """A finished Claude Code: its exit status, output, and `--output-format json` result."""

    code: int
    stdout: str
    stderr: str
    result: Optional[dict[str, Any]] = field(default=None)

    def __repr__(self) -> str:
        return f"claude exited {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def settings_with_hook(home: Path, command: str, **more: Any) -> None:
    """`~/.claude/settings.json` with `command` as the PreToolUse hook of every tool (and `more`
    settings)."""
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    settings = {"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": command,
                                                                     "timeout": 60}]}]}, **more}
    (home / ".claude" / "settings.json").write_text(json.dumps(settings, indent=2), "utf-8")


def mcp_args(python: str, tool_log: Path) -> tuple[str, ...]:
    """Claude Code's arguments for the one MCP server `github` (`mcp_github.py` run by `python`,
    which must have the `mcp` package), its calls logged in `tool_log`; no other MCP server."""
    config = {"mcpServers": {"github": {"command": python, "args": [str(HERE / "mcp_github.py")],
                                        "env": {"TOOL_LOG": str(tool_log)}}}}
    return ("--mcp-config", json.dumps(config), "--strict-mcp-config")


def mcp_env() -> dict[str, str]:
    """Headless Claude Code connects MCP servers in the background and may send the first request
    before their tools are there; this makes it wait for them (at most MCP_TIMEOUT, 30 s)."""
    return {"MCP_CONNECTION_NONBLOCKING": "0"}


def start(model: ScriptedModel, home: Path, cwd: Path, *, env: Optional[dict[str, str]] = None,
          extra_args: tuple[str, ...] = (), prompt: str = "Do the scripted task.") -> subprocess.Popen:
    """Starts `claude -p PROMPT --output-format json` in `cwd` with `home` as HOME, against `model`."""
    claude_env = _base_env(home)
    claude_env["ANTHROPIC_BASE_URL"] = model.url
    claude_env.update(env or {})
    cmd = [str(CLAUDE), "-p", prompt, "--output-format", "json", *extra_args]
    return subprocess.Popen(cmd, cwd=cwd, env=claude_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> Run:
    """Waits for a started Claude Code, at most `timeout` (then kills it and fails)."""
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
        raise AssertionError(f"Claude Code did not finish in {timeout:g} s\n{Run(-1, stdout, stderr)}") from None
    result = None
    try:
        result = json.loads(stdout)
    except ValueError:
        pass
    return Run(p.returncode, stdout, stderr, result)


def run(model: ScriptedModel, home: Path, cwd: Path, **kwargs: Any) -> Run:
    """`start` and `finish`."""
    return finish(start(model, home, cwd, **kwargs))
