// The canonical tool-name → scope mapping against the vectors every implementation shares.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { claudeCodeScope, mcpScope, segment } from "../src/toolScopes.js";
import { repoRoot } from "./support.js";

const vectors = JSON.parse(readFileSync(join(repoRoot, "clients/tool-scopes.json"), "utf8"));

test("tool names map to scopes as clients/tool-scopes.json says", () => {
  const got = {
    segment: vectors.segment.map(([n]: [string]) => [n, segment(n)]),
    claude_code: vectors.claude_code.map(([n]: [string]) => [n, claudeCodeScope(n)]),
    mcp: vectors.mcp.map(([s, t]: [string, string]) => [s, t, mcpScope(s, t)]),
  };
  assert.deepEqual(got, { segment: vectors.segment, claude_code: vectors.claude_code, mcp: vectors.mcp });
});
