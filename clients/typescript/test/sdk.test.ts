// The SDK against the real server (started by crates/allowly-server/tests/it/clients.rs).

import assert from "node:assert/strict";
import { test } from "node:test";

import { ALLOW, APPROVED, Allowly, CONFIRM, DECLINED, DENY, ESCALATE, Receipt, errors, verifyBundle, verifyReceipt } from "../src/index.js";
import { env, eventually } from "./support.js";

function clients() {
  const e = env();
  const mk = (key: string) => new Allowly(key, { baseUrl: e.url });
  return { e, admin: mk(e.admin), reader: mk(e.reader), checker: mk(e.checker) };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test("grant, check, a paged signed trail, and offline verification of a receipt and a bundle", async () => {
  const { e, admin, reader, checker } = clients();
  const change = await admin.createAuthorization("ts-user-1", ["calendar.read"], { resources: ["cal:*"] });
  const az = change.authorization.id;
  assert.equal(change.receipt.status, "pending");
  const result = await checker.check(az, "calendar.read", { resource: "cal:42" });
  assert.deepEqual([result.decision, result.reason], [ALLOW, "granted"]);
  const denied = await checker.check(az, "calendar.write");
  assert.deepEqual([denied.decision, denied.reason], [DENY, "scope_not_granted"]);
  // Page by page (one receipt a page), until all three are signed.
  const trail = await eventually("a signed trail", async () => {
    const t = await collect(reader.trail(az, { pageSize: 1 }));
    return t.length === 3 && t.every((r) => r.status === "signed") ? t : null;
  });
  assert.deepEqual(trail.map((r) => r.body.kind), ["authorization.created", "check", "check"]);
  const keys = await reader.keys(e.workspace);
  const receipt = await reader.getReceipt(result.receipt!.receipt_id!);
  assert.equal(verifyReceipt(receipt, keys).outcome(), "valid");
  // One changed member of the body: an integrity failure, found offline.
  const tampered = structuredClone(receipt) as Receipt;
  tampered.body.resource = "cal:43";
  const report = verifyReceipt(tampered, keys);
  assert.equal(report.outcome(), "integrity_failure");
  assert.ok(report.codes().has("inclusion_proof_invalid"), [...report.codes()].join());
  // The trail's evidence bundle, pinned to the published keys; without its last line, not valid.
  const bundle = await reader.exportAuthorization(az);
  assert.equal(verifyBundle(bundle, keys).outcome(), "valid");
  assert.equal(verifyBundle(bundle).outcome(), "valid_unpinned");
  const lines = new TextDecoder().decode(bundle).trimEnd().split("\n");
  assert.notEqual(verifyBundle(lines.slice(0, -1).join("\n") + "\n", keys).outcome(), "valid");
});

test("a confirm echoes the context, the inbox lists it, and waitForDecision gets the answer", async () => {
  const { admin, reader, checker } = clients();
  const az = (await admin.createAuthorization("ts-user-2", ["email.send"])).authorization.id;
  const context = { to: "bob@example.com", subject: "Q3 numbers" };
  const result = await checker.check(az, "email.send", { context });
  assert.equal(result.decision, CONFIRM);
  assert.deepEqual(result.confirmation?.context, context);
  const nonce = result.confirmation!.nonce;
  assert.deepEqual((await collect(admin.listConfirmations({ authorizationId: az }))).map((c) => c.nonce), [nonce]);
  // The long-poll is waiting before the answer is given.
  const waiting = reader.waitForDecision(result, { timeoutMs: 30_000 });
  const answered = await admin.answerConfirmation(nonce, { outcome: APPROVED, by: "ts-user-2", shown: "Send 'Q3 numbers' to bob@example.com?" });
  assert.deepEqual([answered.decision, answered.reason], [ALLOW, "approved"]);
  const final = await waiting;
  assert.ok(final.allowed && !final.pending && final.reason === "approved", JSON.stringify(final));
  assert.equal(final.receiptId, answered.receipt.body.id);
  const approval = (await reader.getReceipt(final.receiptId!)).body.approval as Record<string, unknown>;
  assert.deepEqual([approval.outcome, approval.by, typeof approval.shown_hash], [APPROVED, "ts-user-2", "string"]);
  assert.deepEqual(await collect(admin.listConfirmations({ authorizationId: az })), []);
  // A second answer: 409 confirmation_used, with the receipt of the refusal.
  await assert.rejects(admin.answerConfirmation(nonce, { outcome: APPROVED, by: "ts-user-2" }), (err: unknown) => {
    assert.ok(err instanceof errors.Conflict && err.code === "confirmation_used" && err.status === 409, String(err));
    assert.ok(err.receipt, "the refusal's receipt");
    assert.equal(err.name, "ConfirmationUsed");
    return true;
  });
});

test("an escalation: the inbox, a decline with a note, the long-poll answers", async () => {
  const { admin, reader, checker } = clients();
  const az = (await admin.createAuthorization("ts-user-3", ["payments.send"])).authorization.id;
  const result = await checker.check(az, "payments.send", { resource: "acct:1" });
  assert.equal(result.decision, ESCALATE);
  const inbox = await collect(admin.listEscalations({ scope: "payments.send", authorizationId: az }));
  assert.deepEqual(inbox.map((x) => x.id), [result.escalation!.id]);
  const waiting = reader.waitForDecision(result, { timeoutMs: 30_000 });
  const resolution = await admin.resolveEscalation(result.escalation!.id, { outcome: DECLINED, by: "alice", note: "not this one" });
  assert.deepEqual([resolution.decision, resolution.reason], [DENY, "declined"]);
  const final = await waiting;
  assert.deepEqual([final.decision, final.reason, final.allowed], [DENY, "declined", false]);
  const done = await collect(admin.listEscalations({ status: "declined", authorizationId: az }));
  assert.deepEqual(done.map((x) => [x.by, x.resolution_receipt_id]), [["alice", final.receiptId]]);
  const approval = (await reader.getReceipt(final.receiptId!)).body.approval as Record<string, unknown>;
  assert.deepEqual([approval.outcome, approval.by, typeof approval.note_hash], [DECLINED, "alice", "string"]);
});

test("waitForDecision that times out is pending, never allowed", async () => {
  const { admin, reader, checker } = clients();
  const az = (await admin.createAuthorization("ts-user-4", ["payments.send"])).authorization.id;
  const result = await checker.check(az, "payments.send");
  const final = await reader.waitForDecision(result, { timeoutMs: 200 });
  assert.ok(final.pending && !final.allowed && final.decision === DENY, JSON.stringify(final));
});

test("a check of an unknown authorization has a receipt, and it verifies offline", async () => {
  const { e, reader, checker } = clients();
  const result = await checker.check("au_nope", "calendar.read", { context: { tool: "probe" } });
  assert.deepEqual([result.decision, result.reason], [DENY, "unknown_authorization"]);
  const body = result.receipt!.body;
  assert.deepEqual([body.kind, body.asked_authorization_id, body.authorization_id], ["check", "au_nope", null]);
  const signed = await eventually("the probe's receipt signed", async () => {
    const r = await reader.getReceipt(body.id);
    return r.status === "signed" ? r : null;
  });
  assert.equal(verifyReceipt(signed, await reader.keys(e.workspace)).outcome(), "valid");
});

test("typed errors by problem code", async () => {
  const { e, admin, reader } = clients();
  await assert.rejects(reader.getAuthorization("au_nope"), (err: unknown) => err instanceof errors.NotFound && err.code === "not_found" && !!err.requestId);
  await assert.rejects(reader.createAuthorization("u", ["a.b"]), (err: unknown) => err instanceof errors.AuthError && err.code === "forbidden");
  await assert.rejects(
    new Allowly("alw_" + "0".repeat(64), { baseUrl: e.url }).getAuthorization("au_1"),
    (err: unknown) => err instanceof errors.AuthError && err.code === "unauthenticated",
  );
  await assert.rejects(admin.createAuthorization("u", []), (err: unknown) => err instanceof errors.BadRequest && err.code === "invalid_request");
  // An unknown (or another workspace's) escalation or nonce is not_found, like any object.
  await assert.rejects(admin.resolveEscalation("esc_nope", { outcome: APPROVED, by: "a" }), (err: unknown) => err instanceof errors.NotFound && err.code === "not_found");
  await assert.rejects(reader.getConfirmation("cn_nope", { waitMs: 10 }), (err: unknown) => err instanceof errors.NotFound);
});

test("an Idempotency-Key replays the first answer; reused for another request it is refused; lists page", async () => {
  const { admin, reader } = clients();
  const first = await admin.createAuthorization("ts-pager", ["x.y"], { idempotencyKey: "ts-sdk-test-1" });
  const again = await admin.createAuthorization("ts-pager", ["x.y"], { idempotencyKey: "ts-sdk-test-1" });
  assert.deepEqual([again.authorization.id, again.receipt.body.id], [first.authorization.id, first.receipt.body.id]);
  await assert.rejects(admin.createAuthorization("ts-pager", ["x.z"], { idempotencyKey: "ts-sdk-test-1" }), (err: unknown) => err instanceof errors.ApiError && err.code === "idempotency_key_reused");
  const ids = new Set([first.authorization.id]);
  for (let i = 0; i < 4; i++) ids.add((await admin.createAuthorization("ts-pager", ["x.y"])).authorization.id);
  const listed = (await collect(reader.listAuthorizations({ subject: "ts-pager", pageSize: 2 }))).map((a) => a.id);
  assert.equal(listed.length, 5);
  assert.deepEqual(new Set(listed), ids);
});
