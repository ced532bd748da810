// The offline verifier over the spec's vectors (1.0 and 1.1, crates/allowly-receipt/tests/vectors):
// each must get the manifest's outcome and exactly its finding codes, or be unusable input.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";

import { UnusableInput, verifyBundle, verifyReceipt } from "../src/verify.js";
import { repoRoot } from "./support.js";

interface Vector {
  name: string;
  kind: "receipt" | "bundle";
  file: string;
  keys: string | null;
  outcome: string;
  codes?: string[];
  /** §9: present only where a vector needs §7.4 off its default (an authorization export). */
  semantics?: boolean;
}

const manifestPath = join(repoRoot, "crates/allowly-receipt/tests/vectors/manifest.json");
const base = dirname(manifestPath);
const vectors: Vector[] = JSON.parse(readFileSync(manifestPath, "utf8")).vectors;

function run(v: Vector): [string, string[]] {
  try {
    const keys = v.keys ? readFileSync(join(base, v.keys)) : null;
    const data = readFileSync(join(base, v.file));
    if (v.kind === "receipt") {
      if (!keys) throw new UnusableInput("a receipt vector needs keys");
      const r = verifyReceipt(data, keys);
      return [r.outcome(), [...r.codes()].sort()];
    }
    const r = verifyBundle(data, keys, [], v.semantics ?? null);
    return [r.outcome(), [...r.codes()].sort()];
  } catch (e) {
    if (e instanceof UnusableInput) return ["unusable", []];
    throw e;
  }
}

test("the manifest holds the 1.0 and the 1.1 vectors", () => {
  assert.ok(vectors.length >= 90, `${vectors.length} vectors`);
  assert.ok(vectors.some((v) => v.name.includes("1.1")));
  assert.ok(new Set(vectors.map((v) => v.outcome)).size >= 5, "every outcome, unusable included");
});

test("every vector gets its outcome and exactly its findings", () => {
  const wrong: string[] = [];
  for (const v of vectors) {
    const [outcome, codes] = run(v);
    const want = [...(v.codes ?? [])].sort();
    if (outcome !== v.outcome || JSON.stringify(codes) !== JSON.stringify(want)) {
      wrong.push(`${v.name}: want ${v.outcome} ${want.join(",")}, got ${outcome} ${codes.join(",")}`);
    }
  }
  assert.deepEqual(wrong, []);
});

// §7.4's switch: on by default for a log export, off for an authorization export unless asked,
// never on a bundle that already has findings; `decisionsChecked` says how many were judged.
const byName = (name: string) => {
  const v = vectors.find((x) => x.name === name);
  assert.ok(v, `no vector ${name}`);
  return [readFileSync(join(base, v.file)), readFileSync(join(base, v.keys!))] as const;
};

test("the manifest has semantic vectors, one of them an authorization export asking for §7.4", () => {
  assert.ok(vectors.filter((v) => v.codes?.includes("decision_unjustified")).length >= 8);
  assert.ok(vectors.some((v) => v.semantics === true && v.outcome === "integrity_failure"));
});

test("semantic verification: default on for log exports, off for authorization exports", () => {
  const [logExport, keys] = byName("bundle-semantics-allow-not-granted");
  const on = verifyBundle(logExport, keys);
  assert.deepEqual([on.outcome(), [...on.codes()]], ["integrity_failure", ["decision_unjustified"]]);
  assert.ok(on.decisionsChecked !== null && on.decisionsChecked > 0, String(on.decisionsChecked));
  assert.match(on.findings[0]!.detail, /log index \d+\): allow, but /);
  const off = verifyBundle(logExport, keys, [], false);
  assert.deepEqual([off.outcome(), off.decisionsChecked], ["valid", null]);

  const [authExport] = byName("bundle-semantics-authorization-export");
  const byDefault = verifyBundle(authExport, keys);
  assert.deepEqual([byDefault.outcome(), byDefault.decisionsChecked], ["valid", null]);
  const asked = verifyBundle(authExport, keys, [], true);
  assert.deepEqual([asked.outcome(), [...asked.codes()]], ["integrity_failure", ["decision_unjustified"]]);

  const [justified] = byName("bundle-semantics-justified");
  const ok = verifyBundle(justified, keys);
  assert.equal(ok.outcome(), "valid");
  assert.ok(ok.decisionsChecked !== null && ok.decisionsChecked > 0);
  assert.ok(ok.notes.includes(`decisions re-derived from the log: ${ok.decisionsChecked}`), ok.notes.join("; "));
});

test("semantic verification does not judge a bundle that already has findings", () => {
  const [gap, keys] = byName("bundle-semantics-not-judged-with-a-gap");
  for (const semantics of [null, true]) {
    const r = verifyBundle(gap, keys, [], semantics);
    assert.equal(r.outcome(), "coverage_gap");
    assert.ok(!r.codes().has("decision_unjustified"));
    assert.equal(r.decisionsChecked, null);
    assert.ok(r.notes.some((n) => n.startsWith("decisions not re-derived")), r.notes.join("; "));
  }
});
