"""A real MCP server over stdio (the official Python SDK's MCPServer) named `github`, with one
tool, `create_issue`, that appends each call to the file $TOOL_LOG: Claude Code lists it as
`mcp__github__create_issue`. Used by the fixture recorder and the end-to-end tests."""

import json
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("github")


@server.tool()
def create_issue(owner: str, repo: str, title: str, body: str = "") -> str:
    """Open an issue in a repository."""
    with open(os.environ["TOOL_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"owner": owner, "repo": repo, "title": title, "body": body}) + "\n")
    return f"created issue {title!r} in {owner}/{repo}"


if __name__ == "__main__":
    server.run()
