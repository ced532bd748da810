// The witness policy of the offline verifier (docs/receipt-format.md §7.5,
// c2sp.org/tlog-cosignature), without a server: the cosignature parser and the verifier key
// reader, a known answer pinned in the Rust code (crates/allowly-receipt/src/cosignature.rs), and
// the committed receipt and bundle vectors cosigned here by test witnesses. The same against a
// server with real witnesses: crates/allowly-server/tests/it/witness.rs.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, createPrivateKey, createPublicKey, sign, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import {
  CosignatureError,
  UnusableInput,
  WitnessPolicy,
  cosignatureMessage,
  parseCosignature,
  parseWitnessVkey,
  verifyBundle,
  verifyCosignatures,
  verifyReceipt,
  witnessPolicy,
} from "../src/verify.js";
import { Allowly, WITNESS_QUORUM } from "../src/index.js";
import { canonicalBytes, type Json } from "../src/json.js";
import { repoRoot } from "./support.js";

const vectors = join(repoRoot, "crates/allowly-receipt/tests/vectors");
const KEYS = readFileSync(join(vectors, "keys.json"));
const RECEIPT = JSON.parse(readFileSync(join(vectors, "valid/receipt-check-allow.json"), "utf8"));
const BUNDLE = readFileSync(join(vectors, "valid/bundle-log.jsonl"), "utf8");

// Rust's known answer (cosignature.rs `kat_cross_checked_with_python`).
const KAT_NAME = "witness.example/w1";
const KAT_TIME = 1_767_225_600n;
const KAT_TEXT = "allowly/ws_kat\n5\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\ntime 2026-01-01T00:00:00.000Z\n";
const KAT_VKEY = "witness.example/w1+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";
const KAT_LINE =
  "\u2014 witness.example/w1 8e2MRwAAAABpVbkA/hEtUTfrBmCq/Nw5aBzX4KBkv4cKlQRT+v+NBvzW6NUjepk7Cv5hwSJ064UXViVCYjKxZwRBaUj/oXqCGfYBAg==\n";

// The example of c2sp.org/tlog-cosignature, verbatim (its witness key is not published).
const SPEC_COSIGNED =
  "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n" +
  "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n" +
  "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";

const line = (name: string, raw: Uint8Array) => `\u2014 ${name} ${Buffer.from(raw).toString("base64")}\n`;
const textOf = (note: string) => note.slice(0, note.lastIndexOf("\n\n") + 1);

/** A witness of these tests: a name and an Ed25519 key from a one-byte seed. */
class Cosigner {
  readonly sk: KeyObject;
  readonly pk: Buffer;
  readonly keyId: Buffer;
  readonly vkey: string;

  constructor(
    readonly name: string,
    seed: number,
  ) {
    const pkcs8 = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), Buffer.alloc(32, seed)]);
    this.sk = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
    this.pk = (createPublicKey(this.sk).export({ format: "der", type: "spki" }) as Buffer).subarray(-32);
    this.keyId = createHash("sha256").update(name).update(Uint8Array.of(0x0a, 0x04)).update(this.pk).digest().subarray(0, 4);
    this.vkey = `${name}+${this.keyId.toString("hex")}+${Buffer.concat([Uint8Array.of(4), this.pk]).toString("base64")}`;
  }

  /** key id ‖ timestamp ‖ signature over the cosignature/v1 message of `text`. */
  raw(text: string, timestamp = 1_700_000_000n): Buffer {
    const ts = Buffer.alloc(8);
    ts.writeBigUInt64BE(timestamp);
    return Buffer.concat([this.keyId, ts, sign(null, Buffer.from(`cosignature/v1\ntime ${timestamp}\n${text}`), this.sk)]);
  }

  line = (text: string, timestamp = 1_700_000_000n) => line(this.name, this.raw(text, timestamp));
}

const A = new Cosigner("wa.test/w", 1);
const B = new Cosigner("wb.test/w", 2);
const C = new Cosigner("wc.test/w", 3);

/** The receipt with lines (each a function of the checkpoint text) added to its checkpoint. */
function cosigned(...linesOf: Array<(text: string) => string>) {
  const r = structuredClone(RECEIPT);
  const text = textOf(r.checkpoint);
  r.checkpoint += linesOf.map((f) => f(text)).join("");
  return r;
}

const policy = (quorum: number, ...ws: Cosigner[]) => witnessPolicy(ws.map((w) => w.vkey), quorum);

function outcome(receipt: unknown, witness: WitnessPolicy | null = null): [string, string[]] {
  const r = verifyReceipt(receipt as object, KEYS, witness);
  return [r.outcome(), [...r.codes()].sort()];
}

// ---- the parsers ----------------------------------------------------------------------------

test("the Rust known answer verifies, its vkey reads, and our test witness derives both", () => {
  const w = parseWitnessVkey(KAT_VKEY);
  assert.deepEqual([w.name, w.keyId, w.vkey], [KAT_NAME, "f1ed8c47", KAT_VKEY]);
  const good = verifyCosignatures(`${KAT_TEXT}\n${KAT_LINE}`, [w]);
  assert.deepEqual(good.map((g) => [g.witness.name, g.timestamp]), [[KAT_NAME, KAT_TIME]]);
  const same = new Cosigner(KAT_NAME, 0x42);
  assert.equal(same.vkey, KAT_VKEY);
  assert.equal(same.line(KAT_TEXT, KAT_TIME), KAT_LINE);
});

test("the spec example parses as a cosignature and the log signature does not", () => {
  const sigs = SPEC_COSIGNED.split("\n\n")[1]!.trimEnd().split("\n").map((l) => Buffer.from(l.split(" ")[2]!, "base64"));
  const [logSig, wSig] = sigs as [Buffer, Buffer];
  assert.equal(wSig.subarray(0, 4).toString("hex"), "8d66cf3f");
  const parsed = parseCosignature(wSig);
  assert.ok(parsed);
  assert.equal(parsed.timestamp, 1_679_315_147n);
  assert.equal(parsed.signature.length, 64);
  assert.equal(
    cosignatureMessage(textOf(SPEC_COSIGNED), parsed.timestamp).toString(),
    "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
  );
  assert.equal(parseCosignature(logSig), null, "key id + 64 bytes: a note signature, not a cosignature");
});

test("cosignature lengths and timestamps", () => {
  const raw = A.raw(KAT_TEXT);
  assert.ok(parseCosignature(raw));
  for (const bad of [raw.subarray(0, -1), Buffer.concat([raw, Buffer.of(0)]), Buffer.concat([raw.subarray(0, 4), raw.subarray(12)]), Buffer.alloc(0)]) {
    assert.equal(parseCosignature(bad), null, `${bad.length} bytes`);
  }
  const withTime = (t: bigint) => {
    const b = Buffer.from(raw);
    b.writeBigUInt64BE(t, 4);
    return b;
  };
  assert.equal(parseCosignature(withTime(2n ** 63n - 1n))?.timestamp, 2n ** 63n - 1n);
  assert.equal(parseCosignature(withTime(2n ** 63n)), null);
  assert.equal(parseCosignature(withTime(2n ** 64n - 1n)), null);
});

test("bad witness vkeys are bad usage", () => {
  const bad = [
    "",
    "witness.example/w1",
    "witness.example/w1+f1ed8c47",
    "witness.example/w1+F1ED8C47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS", // uppercase key id
    "witness.example/w1+f1ed8c48+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS", // wrong key id
    "witness.example/w2+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS", // another name
    "witness example+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS", // space in the name
    "+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS", // empty name
    "witness.example/w1+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgds", // not base64
    "witness.example/w1+f1ed8c47+IVL402xt5HRFMkLhXy6rbLfP+ntqXtMAl5YOBpiB2xI=", // no type byte
    "allowly/ws_vectors+9e39d6b8+AUpnLpn5SJpGJC3yLezkDKAnz7NJqSQ8+wxuZPe76aIe", // a log key (0x01)
  ];
  for (const v of bad) {
    assert.throws(() => parseWitnessVkey(v), UnusableInput, v);
    assert.throws(() => witnessPolicy([v], 1), UnusableInput, v);
  }
  // A small-order key (the identity point).
  const identity = Buffer.concat([Buffer.of(1), Buffer.alloc(31)]);
  const kid = createHash("sha256").update("w\n\x04").update(identity).digest().subarray(0, 4).toString("hex");
  assert.throws(() => parseWitnessVkey(`w+${kid}+${Buffer.concat([Buffer.of(4), identity]).toString("base64")}`), /large order/);
});

test("the quorum is between one and the distinct keys", () => {
  for (const q of [0, -1, 3, 1.5, Number.NaN]) assert.throws(() => policy(q, A, B), UnusableInput, String(q));
  // One key listed twice (or under two names) is one witness.
  assert.throws(() => policy(2, A, A, new Cosigner("wa.other/w", 1)), UnusableInput);
  assert.equal(policy(2, A, B).quorum, 2);
});

// ---- one receipt ----------------------------------------------------------------------------

test("a receipt cosigned by the quorum is valid, and without a policy nothing changes", () => {
  assert.deepEqual(outcome(RECEIPT), ["valid", []]);
  const r = cosigned(A.line, B.line);
  assert.deepEqual(outcome(r), ["valid", []], "cosignatures are unknown signatures without a policy");
  for (const q of [1, 2]) assert.deepEqual(outcome(r, policy(q, A, B)), ["valid", []]);
  assert.ok(verifyReceipt(r, KEYS, policy(2, A, B)).notes.includes("witness policy: every checkpoint cosigned by 2 of 2 witness keys"));
});

test("fewer cosignatures than the quorum is a coverage gap", () => {
  const want = ["coverage_gap", ["witness_quorum_not_met"]];
  assert.deepEqual(outcome(RECEIPT, policy(1, A)), want);
  assert.deepEqual(outcome(cosigned(A.line), policy(2, A, B)), want);
  assert.deepEqual(outcome(cosigned(A.line, B.line), policy(3, A, B, C)), want);
  // The same witness twice counts once; so does one key under two names.
  assert.deepEqual(outcome(cosigned(A.line, (t) => A.line(t, 5n)), policy(2, A, B)), want);
  const alias = new Cosigner("wa.alias/w", 1);
  assert.deepEqual(outcome(cosigned(A.line, alias.line), policy(2, A, alias, B)), want);
  // Lines by keys outside the policy are ignored.
  assert.deepEqual(outcome(cosigned(A.line, C.line), policy(2, A, B)), want);
});

test("a line naming a witness with another key id is not its cosignature", () => {
  const wrongId = (t: string) => line(A.name, B.raw(t)); // A's name, B's key id and signature
  assert.deepEqual(outcome(cosigned(wrongId, B.line), policy(2, A, B)), ["coverage_gap", ["witness_quorum_not_met"]]);
  assert.deepEqual(outcome(cosigned(wrongId, B.line), policy(1, A, B)), ["valid", []]);
});

test("a bad cosignature by a policy witness is an integrity failure, ignored outside the policy", () => {
  const big = 2n ** 64n - 1n;
  const bads: Record<string, (t: string) => Buffer> = {
    short: (t) => A.raw(t, 7n).subarray(0, -1),
    long: (t) => Buffer.concat([A.raw(t, 7n), Buffer.of(0)]),
    logSized: (t) => Buffer.concat([A.keyId, A.raw(t, 7n).subarray(12)]),
    flippedSignature: (t) => {
      const b = A.raw(t, 7n);
      b[40]! ^= 1;
      return b;
    },
    flippedTime: (t) => {
      const b = A.raw(t, 7n);
      b[11]! ^= 1;
      return b;
    },
    otherText: (t) => A.raw(t.replace("\n3\n", "\n4\n"), 7n),
    noHeader: (t) => Buffer.concat([A.raw(t, 7n).subarray(0, 12), sign(null, Buffer.from(t), A.sk)]),
    timeTooBig: (t) => {
      const ts = Buffer.alloc(8);
      ts.writeBigUInt64BE(big);
      return Buffer.concat([A.keyId, ts, sign(null, Buffer.from(`cosignature/v1\ntime ${big}\n${t}`), A.sk)]);
    },
  };
  for (const [what, make] of Object.entries(bads)) {
    const r = cosigned(B.line, (t) => line(A.name, make(t)), C.line);
    assert.deepEqual(outcome(r, policy(2, A, B, C)), ["integrity_failure", ["witness_cosignature_invalid"]], what);
    assert.deepEqual(outcome(r, policy(2, B, C)), ["valid", []], what);
  }
  assert.throws(() => verifyCosignatures(cosigned((t) => line(A.name, bads.short!(t))).checkpoint, [parseWitnessVkey(A.vkey)]), CosignatureError);
});

test("a malformed signature line breaks the checkpoint itself", () => {
  for (const bad of ["\u2014 wa.test/w\n", "- wa.test/w AAAAAAAA\n", "\u2014 wa.test/w AAAA\n", "\u2014 wa.test/w @@@@\n"]) {
    assert.deepEqual(outcome(cosigned(A.line, () => bad), policy(1, A)), ["integrity_failure", ["checkpoint_malformed"]], bad);
  }
});

// ---- bundles and the command line -----------------------------------------------------------

/** The bundle with each distinct checkpoint note cosigned by `ws` (the first `skip` notes, in
 *  order of appearance, left alone). */
function cosignBundle(ws: Cosigner[], skip = 0): string {
  const notes: string[] = [];
  for (const l of BUNDLE.split("\n").filter(Boolean)) {
    const rec = JSON.parse(l);
    const note: string | undefined = rec.checkpoint ?? rec.receipt?.checkpoint;
    if (note && !notes.includes(note)) notes.push(note);
  }
  assert.ok(notes.length >= 2);
  let out = BUNDLE;
  for (const note of notes.slice(skip)) {
    assert.ok(out.includes(JSON.stringify(note)));
    out = out.split(JSON.stringify(note)).join(JSON.stringify(note + ws.map((w) => w.line(textOf(note))).join("")));
  }
  return out;
}

test("a bundle needs the quorum on every checkpoint, judged once per note", () => {
  const good = cosignBundle([A, B]);
  assert.equal(verifyBundle(good, KEYS, [], null, policy(2, A, B)).outcome(), "valid");
  assert.equal(verifyBundle(good, KEYS).outcome(), "valid");
  const r = verifyBundle(cosignBundle([A, B], 1), KEYS, [], null, policy(1, A, B));
  assert.deepEqual([r.outcome(), [...r.codes()]], ["coverage_gap", ["witness_quorum_not_met"]]);
  assert.equal(r.findings.length, 1, JSON.stringify(r.findings));
  // An auditor's own checkpoint without cosignatures falls short too.
  const first = BUNDLE.split("\n").filter((l) => l.includes('"type":"checkpoint"')).map((l) => JSON.parse(l).checkpoint as string)[0]!;
  const withOwn = verifyBundle(good, KEYS, [first], null, policy(1, A));
  assert.deepEqual([...withOwn.codes()], ["witness_quorum_not_met"]);
  assert.match(withOwn.findings[0]!.detail, /^checkpoint #/);
});

test("the command line takes the policy, with allowly-verify's exit codes", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "allowly-witness-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, data: string | Buffer) => {
    writeFileSync(join(dir, name), data);
    return join(dir, name);
  };
  const keys = file("keys.json", KEYS);
  const good = file("good.jsonl", cosignBundle([A, B]));
  const short = file("short.jsonl", cosignBundle([A]));
  const tampered = file("tampered.json", JSON.stringify(cosigned((t) => line(A.name, Buffer.concat([A.raw(t).subarray(0, -1), Buffer.of(0)])))));
  const cli = fileURLToPath(new URL("../src/cli.js", import.meta.url));
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: "utf8" });
  const pol = ["--witness-key", A.vkey, "--witness-key", B.vkey, "--witness-quorum", "2"];
  assert.equal(run("bundle", good, "--keys", keys, ...pol).status, 0);
  const gap = run("bundle", short, "--keys", keys, ...pol);
  assert.equal(gap.status, 2);
  assert.match(gap.stdout, /witness_quorum_not_met/);
  assert.equal(run("bundle", short, "--keys", keys, "--witness-key", A.vkey, "--witness-quorum", "1").status, 0);
  assert.equal(run("bundle", good, ...pol).status, 3, "unpinned stays unpinned");
  const bad = run("receipt", tampered, "--keys", keys, ...pol);
  assert.equal(bad.status, 1);
  assert.match(bad.stdout, /witness_cosignature_invalid/);
  for (const usage of [
    ["--witness-key", A.vkey],
    ["--witness-quorum", "1"],
    [...pol.slice(0, 2), "--witness-quorum", "0"],
    [...pol, "--witness-quorum", "1"],
    ["--witness-key", "nope", "--witness-quorum", "1"],
    [...pol.slice(0, 4), "--witness-quorum", "x"],
  ]) {
    assert.equal(run("bundle", good, "--keys", keys, ...usage).status, 64, usage.join(" "));
  }
});

// ---- what the client reads: the pending reason, the checkpoint's witness status -------------
// (On a stub fetch here; against a server whose witness is stopped: liveWitness.ts, run by
// crates/allowly-server/tests/it/witness.rs.)

function pendingOf(receipt: typeof RECEIPT) {
  const body = receipt.body;
  const leaf = createHash("sha256").update(Uint8Array.of(0)).update(canonicalBytes(body as Json)).digest("hex");
  return { status: "pending", receipt_id: body.id, log_index: body.log_index, leaf_hash: leaf, body };
}

type Answer = [unknown, Record<string, string>];
const PENDING_WITNESS: Answer = [pendingOf(RECEIPT), { "allowly-pending-reason": "witness_quorum" }];
const PENDING_PLAIN: Answer = [pendingOf(RECEIPT), {}];
const SIGNED: Answer = [RECEIPT, { "allowly-pending-reason": "witness_quorum" }];

/** A client whose fetch answers GET /v1/receipts/… with `answers` in turn (the last again once
 *  they run out); `calls` counts the reads. */
function receiptServer(answers: Answer[]) {
  const calls: string[] = [];
  const fetchStub = (async (url: URL) => {
    assert.equal(url.pathname, `/v1/receipts/${RECEIPT.body.id}`);
    calls.push(url.pathname);
    const [doc, headers] = answers[Math.min(calls.length, answers.length) - 1]!;
    return new Response(JSON.stringify(doc), { headers: { "content-type": "application/json", ...headers } });
  }) as typeof fetch;
  return { calls, client: new Allowly("k", { baseUrl: "http://allowly.test", fetch: fetchStub }) };
}

test("getReceipt reports the pending reason outside the document", async () => {
  const r = await receiptServer([PENDING_WITNESS]).client.getReceipt(RECEIPT.body.id);
  assert.deepEqual([r.status, r.pending_reason], ["pending", WITNESS_QUORUM]);
  assert.ok(!JSON.stringify(r).includes("pending_reason") && !Object.keys(r).includes("pending_reason"));
  // It verifies as the server sent it: pending, a coverage gap.
  assert.deepEqual([...verifyReceipt(r, KEYS).codes()], ["not_signed"]);
  assert.equal((await receiptServer([PENDING_PLAIN]).client.getReceipt(RECEIPT.body.id)).pending_reason, undefined);
  // A signed receipt has no pending reason, whatever the headers say.
  assert.equal((await receiptServer([SIGNED]).client.getReceipt(RECEIPT.body.id)).pending_reason, undefined);
});

test("waitForReceipt waits through a witness quorum pending", async () => {
  const s = receiptServer([PENDING_PLAIN, PENDING_WITNESS, PENDING_WITNESS, SIGNED]);
  const r = await s.client.waitForReceipt(RECEIPT.body.id, { timeoutMs: 10_000, pollIntervalMs: 1 });
  assert.equal(r.status, "signed");
  assert.equal(r.pending_reason, undefined);
  assert.equal(s.calls.length, 4);
  assert.equal(verifyReceipt(r, KEYS).outcome(), "valid");
  // Not signed in time: the last pending read, with its reason.
  const late = receiptServer([PENDING_WITNESS]);
  const p = await late.client.waitForReceipt(RECEIPT.body.id, { timeoutMs: 200, pollIntervalMs: 10 });
  assert.deepEqual([p.status, p.pending_reason], ["pending", "witness_quorum"]);
  assert.ok(late.calls.length >= 3, String(late.calls.length));
});

test("getCheckpoint reads the witness status", async () => {
  const note: string = RECEIPT.checkpoint;
  const answers: Record<string, unknown> = {
    ws_q: { workspace_id: "ws_q", size: 3, checkpoint: note, witness: { quorum: 2, witnessed_size: 2 } },
    ws_none_yet: { workspace_id: "ws_none_yet", size: 3, checkpoint: note, witness: { quorum: 1 } },
    ws_off: { workspace_id: "ws_off", size: 3, checkpoint: note },
  };
  const fetchStub = (async (url: URL) => {
    const ws = url.pathname.split("/")[3]!;
    assert.equal(url.pathname, `/v1/workspaces/${ws}/log/checkpoint`);
    return new Response(JSON.stringify(answers[ws]), { headers: { "content-type": "application/json" } });
  }) as typeof fetch;
  const client = new Allowly("k", { baseUrl: "http://allowly.test", fetch: fetchStub });
  const cp = await client.getCheckpoint("ws_q");
  assert.deepEqual([cp.size, cp.checkpoint, cp.witness], [3, note, { quorum: 2, witnessed_size: 2 }]);
  assert.equal((await client.getCheckpoint("ws_none_yet")).witness?.witnessed_size, undefined);
  assert.equal((await client.getCheckpoint("ws_off")).witness, undefined);
});
