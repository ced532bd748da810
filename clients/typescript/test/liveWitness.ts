// The SDK against a server that requires a witness quorum, while one of its witnesses is down.
//
// Not one of the `*.test.ts` suites: the Rust test
// `witness::the_sdks_report_a_witness_quorum_pending_and_wait_through_it`
// (crates/allowly-server/tests/it/witness.rs) starts the server and real `allowly-witness`
// processes, stops one witness, makes a check whose receipt is then pending for the quorum, and
// runs this file (compiled) with what clients/python/tests/live_witness.py reads: the server
// (ALLOWLY_TEST_URL, _READ_KEY, _WORKSPACE), the pending receipt (ALLOWLY_TEST_PENDING_RECEIPT),
// the witness policy (ALLOWLY_TEST_WITNESS_KEYS, comma-separated, and _QUORUM), and a file to
// create once the receipt was seen pending (ALLOWLY_TEST_SIGNAL), after which the stopped witness
// is started again and the receipt must become signed while `waitForReceipt` waits.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { test } from "node:test";

import { Allowly, WITNESS_QUORUM, verifyReceipt, witnessPolicy } from "../src/index.js";
import { verifyCosignatures } from "../src/verify.js";

function need(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run through \`cargo test -p allowly-server --test it witness::\``);
  return v;
}

test("a witness quorum pending is reported and waited through", async () => {
  const reader = new Allowly(need("ALLOWLY_TEST_READ_KEY"), { baseUrl: need("ALLOWLY_TEST_URL") });
  const ws = need("ALLOWLY_TEST_WORKSPACE");
  const id = need("ALLOWLY_TEST_PENDING_RECEIPT");
  const quorum = Number(need("ALLOWLY_TEST_WITNESS_QUORUM"));
  const policy = witnessPolicy(need("ALLOWLY_TEST_WITNESS_KEYS").split(","), quorum);
  const keys = await reader.keys(ws);

  // Pending, and why: the checkpoint covering it is signed but lacks the quorum.
  const r = await reader.getReceipt(id);
  assert.deepEqual([r.status, r.pending_reason], ["pending", WITNESS_QUORUM]);
  assert.deepEqual([...verifyReceipt(r, keys).codes()], ["not_signed"]);
  const cp = await reader.getCheckpoint(ws);
  assert.equal(cp.witness?.quorum, quorum, JSON.stringify(cp));
  assert.ok(cp.size > r.log_index, "the receipt's checkpoint is stored");
  assert.ok(cp.witness.witnessed_size == null || cp.witness.witnessed_size <= r.log_index, JSON.stringify(cp));
  const cosigned = verifyCosignatures(cp.checkpoint, policy.witnesses).length;
  assert.ok(cosigned > 0 && cosigned < quorum, cp.checkpoint);

  // Waiting that ends first says so, with the reason.
  const short = await reader.waitForReceipt(id, { timeoutMs: 300 });
  assert.deepEqual([short.status, short.pending_reason], ["pending", "witness_quorum"]);

  // The witness comes back: waiting goes on through the witness-quorum pending until signed.
  writeFileSync(need("ALLOWLY_TEST_SIGNAL"), "pending seen\n");
  const signed = await reader.waitForReceipt(id, { timeoutMs: 30_000 });
  assert.equal(signed.status, "signed");
  assert.equal(signed.pending_reason, undefined);
  const report = verifyReceipt(signed, keys, policy);
  assert.equal(report.outcome(), "valid", JSON.stringify(report.findings));
  const after = await reader.getCheckpoint(ws);
  assert.ok((after.witness?.witnessed_size ?? 0) > r.log_index, JSON.stringify(after));
});
