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
    const r = verifyBundle(data, keys);
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
