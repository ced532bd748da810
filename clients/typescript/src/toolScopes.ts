/**
 * The canonical mapping from tool names to scopes (docs/tool-scopes.md), the same in both SDKs,
 * the Claude Code hook and the MCP gateway: one grant covers a tool however the agent reaches
 * it (Claude Code's `mcp__github__create_issue` and the gateway's tool `create_issue` of server
 * `github` are both `mcp.github.create_issue`; Claude Code's `WebFetch` is
 * `claude_code.web_fetch`). A name becomes one segment of `[a-z0-9_:-]`: an `_` before every
 * ASCII capital that follows a lowercase letter or a digit, or that follows a capital and comes
 * before a lowercase letter; ASCII lowercased; any other character `_`; runs of `_` made one and
 * trimmed. Nothing left, or a scope over 128 characters: `null` (refuse the call). Vectors:
 * clients/tool-scopes.json.
 */

export const MAX_SCOPE = 128;

const upper = (c: string | undefined) => c !== undefined && c >= "A" && c <= "Z";
const lower = (c: string | undefined) => c !== undefined && c >= "a" && c <= "z";
const digit = (c: string | undefined) => c !== undefined && c >= "0" && c <= "9";

/** One name as one scope segment, or null when nothing is left of it. */
export function segment(name: string): string | null {
  // By code point: a character outside the BMP is one character, as in the other implementations.
  const chars = [...name];
  let out = "";
  chars.forEach((c, i) => {
    const prev = chars[i - 1];
    const next = chars[i + 1];
    if (upper(c) && i > 0 && (lower(prev) || digit(prev) || (upper(prev) && lower(next)))) out += "_";
    if (upper(c)) out += c.toLowerCase();
    else if (lower(c) || digit(c) || c === ":" || c === "-") out += c;
    else out += "_";
  });
  const seg = out.replace(/_+/g, "_").replace(/^_|_$/g, "");
  return seg || null;
}

function scope(...names: string[]): string | null {
  const segments = names.map(segment);
  if (segments.some((s) => s === null)) return null;
  const s = segments.join(".");
  return s.length <= MAX_SCOPE ? s : null;
}

/** `mcp.<server>.<tool>`: a tool of an MCP server (the gateway's or Claude Code's name for it). */
export function mcpScope(server: string, tool: string): string | null {
  return scope("mcp", server, tool);
}

/**
 * A Claude Code tool call's scope: `mcp__<server>__<tool>` is `mcpScope(server, tool)` (the
 * server's name ends at the first `__`); any other tool is `claude_code.<tool>`.
 */
export function claudeCodeScope(toolName: string): string | null {
  if (toolName.startsWith("mcp__")) {
    const rest = toolName.slice("mcp__".length);
    const at = rest.indexOf("__");
    return at < 0 ? null : mcpScope(rest.slice(0, at), rest.slice(at + 2));
  }
  return scope("claude_code", toolName);
}
