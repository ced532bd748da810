// What needs no server: retries on a stub fetch, and the error table against docs/openapi.json.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { Allowly, errors } from "../src/index.js";
import { repoRoot } from "./support.js";

const problem = (status: number, code: string, retryAfter?: string) =>
  new Response(JSON.stringify({ code, status, detail: code }), {
    status,
    headers: { "content-type": "application/problem+json", ...(retryAfter ? { "retry-after": retryAfter } : {}) },
  });

function stub(answers: Response[]) {
  const seen: Array<{ key: string | null; at: number }> = [];
  const fetchStub = (async (_url: URL, init?: RequestInit) => {
    const headers = new Headers(init?.headers);
    seen.push({ key: headers.get("idempotency-key"), at: performance.now() });
    const next = answers[seen.length - 1];
    if (!next) throw new TypeError("fetch failed");
    return next;
  }) as typeof fetch;
  return { seen, fetchStub };
}

test("every problem code of docs/openapi.json has its class", () => {
  const doc = JSON.parse(readFileSync(join(repoRoot, "docs/openapi.json"), "utf8"));
  const codes = new Set<string>();
  for (const path of Object.values<Record<string, { "x-problem-codes"?: string[] }>>(doc.paths)) {
    for (const op of Object.values(path)) for (const c of op["x-problem-codes"] ?? []) codes.add(c);
  }
  assert.ok(codes.size > 10, "no problem codes in docs/openapi.json");
  assert.deepEqual([...codes].filter((c) => !(c in errors.byCode)), []);
});

test("a POST retried after 503 and 429 keeps one Idempotency-Key and waits Retry-After", async () => {
  const { seen, fetchStub } = stub([
    problem(503, "signer_unavailable", "0.3"),
    problem(429, "rate_limited", "0.1"),
    new Response(JSON.stringify({ decision: "allow", reason: "granted", receipt: null }), { headers: { "content-type": "application/json" } }),
  ]);
  const client = new Allowly("k", { baseUrl: "http://allowly.test", fetch: fetchStub, backoffMs: 1 });
  const result = await client.check("au_1", "a.b");
  assert.equal(result.decision, "allow");
  assert.equal(seen.length, 3);
  assert.equal(new Set(seen.map((s) => s.key)).size, 1);
  assert.ok(seen[0]!.key && seen[0]!.key.length >= 32, "a generated key");
  assert.ok(seen[1]!.at - seen[0]!.at >= 295 && seen[2]!.at - seen[1]!.at >= 95, JSON.stringify(seen));
});

test("a 503 without Retry-After is thrown at once, typed", async () => {
  const { seen, fetchStub } = stub([problem(503, "workspace_log_diverged"), problem(503, "workspace_log_diverged")]);
  const client = new Allowly("k", { baseUrl: "http://allowly.test", fetch: fetchStub });
  await assert.rejects(client.check("au_1", "a.b"), (e: unknown) => e instanceof errors.Unavailable && e.code === "workspace_log_diverged" && e.name === "WorkspaceLogDiverged");
  assert.equal(seen.length, 1);
});

test("a Retry-After beyond maxBackoffMs is not waited for but thrown", async () => {
  const { seen, fetchStub } = stub([problem(429, "rate_limited", "120")]);
  const client = new Allowly("k", { baseUrl: "http://allowly.test", fetch: fetchStub, maxBackoffMs: 1000 });
  await assert.rejects(client.check("au_1", "a.b"), (e: unknown) => e instanceof errors.ApiError && e.retryAfter === 120);
  assert.equal(seen.length, 1);
});

test("connection errors are retried with the same key, then surface as TransportError", async () => {
  const { seen, fetchStub } = stub([]);
  const client = new Allowly("k", { baseUrl: "http://allowly.test", fetch: fetchStub, backoffMs: 1, maxRetries: 2 });
  await assert.rejects(client.check("au_1", "a.b", { idempotencyKey: "mine" }), (e: unknown) => e instanceof errors.TransportError);
  assert.deepEqual(seen.map((s) => s.key), ["mine", "mine", "mine"]);
});
