/**
 * Offline verification of receipts and evidence bundles, from docs/receipt-format.md (the
 * normative spec; section numbers below are its): §7.1 for one receipt, §7.2 for a bundle,
 * with the §8 findings, outcomes and exit statuses of `allowly-verify`, and §7.5 (a witness policy:
 * C2SP cosignatures by a quorum of given witnesses) when asked. It needs nothing but
 * `node:crypto` (SHA-256 and Ed25519) and shares no code with the server.
 */

import { createHash, createPublicKey, verify as edVerify } from "node:crypto";

import { VerificationError } from "./errors.js";
import {
  BadNumber,
  Json,
  JsonFloat,
  JsonObject,
  JsonSyntaxError,
  canonicalBytes,
  canonicalText,
  has,
  isObject,
  membersAre,
  parseJson,
  violations,
} from "./json.js";

// ---- §8 Findings and outcomes -------------------------------------------------------------

const INTEGRITY = "integrity";
const COVERAGE = "coverage";

/** Every finding code and its class. */
export const FINDING_CLASS: Readonly<Record<string, "integrity" | "coverage">> = {
  body_not_canonical: INTEGRITY,
  body_invalid: INTEGRITY,
  workspace_mismatch: INTEGRITY,
  log_index_mismatch: INTEGRITY,
  envelope_mismatch: INTEGRITY,
  checkpoint_malformed: INTEGRITY,
  checkpoint_signature_invalid: INTEGRITY,
  checkpoint_unknown_key: INTEGRITY,
  checkpoint_origin_mismatch: INTEGRITY,
  key_not_valid_at_time: INTEGRITY,
  inclusion_proof_invalid: INTEGRITY,
  record_malformed: INTEGRITY,
  keys_mismatch: INTEGRITY,
  log_index_conflict: INTEGRITY,
  seq_conflict: INTEGRITY,
  chain_broken: INTEGRITY,
  trail_order: INTEGRITY,
  checkpoint_fork: INTEGRITY,
  consistency_proof_invalid: INTEGRITY,
  checkpoint_root_mismatch: INTEGRITY,
  out_of_scope: INTEGRITY,
  decision_unjustified: INTEGRITY,
  receipt_missing: COVERAGE,
  log_leaf_missing: COVERAGE,
  not_signed: COVERAGE,
  consistency_unproven: COVERAGE,
  truncated: COVERAGE,
  // §7.5, only with a witness policy (`witnessPolicy`, `--witness-key … --witness-quorum N`);
  // without one, cosignatures are signature lines by unknown keys, ignored.
  witness_cosignature_invalid: INTEGRITY,
  witness_quorum_not_met: COVERAGE,
};

export type Outcome = "valid" | "valid_unpinned" | "coverage_gap" | "integrity_failure";

/** `allowly-verify`'s exit statuses; 64 is unusable input (`UnusableInput`). */
export const EXIT: Readonly<Record<Outcome | "unusable", number>> = {
  valid: 0,
  integrity_failure: 1,
  coverage_gap: 2,
  valid_unpinned: 3,
  unusable: 64,
};

/** Unusable input (§6.2, §7.1 steps 1-2, §7.2 steps 1-2): no report, exit status 64. */
export class UnusableInput extends VerificationError {}

export interface Finding {
  code: string;
  detail: string;
}

export class Report {
  readonly findings: Finding[] = [];
  readonly notes: string[] = [];
  /** §7.2 step 2: the bundle's own keys were used; "valid" becomes "valid_unpinned". */
  unpinned = false;
  /** §7.4: how many decisions semantic verification judged; null when it did not run (off,
   *  or skipped because the bundle already had findings). */
  decisionsChecked: number | null = null;

  add(code: string, detail: string): void {
    if (!(code in FINDING_CLASS)) throw new Error(`unknown finding ${code}`);
    this.findings.push({ code, detail });
  }

  codes(): Set<string> {
    return new Set(this.findings.map((f) => f.code));
  }

  outcome(): Outcome {
    const classes = new Set([...this.codes()].map((c) => FINDING_CLASS[c]));
    if (classes.has(INTEGRITY)) return "integrity_failure";
    if (classes.has(COVERAGE)) return "coverage_gap";
    return this.unpinned ? "valid_unpinned" : "valid";
  }

  exitCode(): number {
    return EXIT[this.outcome()];
  }
}

// ---- §2 Encodings -------------------------------------------------------------------------

const isInt = (v: unknown): v is number => typeof v === "number";
const isNat = (v: unknown): v is number => isInt(v) && v >= 0;
const isStr = (v: unknown): v is string => typeof v === "string";
const isHash = (v: unknown): v is string => isStr(v) && /^[0-9a-f]{64}$/.test(v);
const isKeyId = (v: unknown): v is string => isStr(v) && /^[0-9a-f]{8}$/.test(v);
const isId = (v: unknown): v is string => isStr(v) && /^[A-Za-z0-9_-]{1,128}$/.test(v);
const isStrOrNull = (v: unknown) => v === null || isStr(v);
const isStrArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);

/** `YYYY-MM-DDTHH:MM:SS.sssZ`, a real instant (a real day, no leap second), 1970-9999. */
function isTime(v: unknown): v is string {
  if (!isStr(v)) return false;
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.[0-9]{3}Z$/.exec(v);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  if (year < 1970 || month < 1 || month > 12) return false;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!;
  return day >= 1 && day <= days && hour <= 23 && minute <= 59 && second <= 59;
}

/** Standard base64 with padding, in its one canonical spelling (unused bits zero). */
function b64(v: unknown): Buffer | null {
  if (!isStr(v) || !/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(v)) return null;
  const raw = Buffer.from(v, "base64");
  return raw.toString("base64") === v ? raw : null;
}

const sha256 = (...parts: Uint8Array[]): Buffer => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};

// ---- §5.1-§5.3 The log (RFC 9162) ---------------------------------------------------------

const leafHash = (canonical: Uint8Array) => sha256(Uint8Array.of(0), canonical);
const nodeHash = (l: Uint8Array, r: Uint8Array) => sha256(Uint8Array.of(1), l, r);

function merkleRoot(leaves: Buffer[]): Buffer {
  if (leaves.length === 0) return sha256();
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(merkleRoot(leaves.slice(0, k)), merkleRoot(leaves.slice(k)));
}

// Tree sizes and indexes stay below 2^53: plain numbers, halved with Math.floor.
const half = (n: number) => Math.floor(n / 2);
const odd = (n: number) => n % 2 === 1;

/** §5.2 (RFC 9162 §2.1.3.2). */
function verifyInclusion(index: number, size: number, proof: Buffer[], leaf: Buffer, root: Buffer): boolean {
  if (index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let x = leaf;
  for (const c of proof) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      x = nodeHash(c, x);
      while (fn !== 0 && !odd(fn)) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      x = nodeHash(x, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && x.equals(root);
}

/** §5.3 (RFC 9162 §2.1.4.2), with the spec's m = n and m = 0 cases. */
function verifyConsistency(m: number, n: number, proof: Buffer[], oldRoot: Buffer, newRoot: Buffer): boolean {
  if (m > n) return false;
  if (m === n) return proof.length === 0 && oldRoot.equals(newRoot);
  if (m === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  const path = [...proof];
  // m an exact power of two: the old root is the first node of the path.
  let k = m;
  while (k % 2 === 0) k /= 2;
  if (k === 1) path.unshift(oldRoot);
  let fn = m - 1;
  let sn = n - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (fn !== 0 && !odd(fn)) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return fr.equals(oldRoot) && sr.equals(newRoot) && sn === 0;
}

// ---- Strict Ed25519 (§5.4): RFC 8032 §5.1.7 with ed25519-dalek's verify_strict checks ------
// OpenSSL (node:crypto) checks the cofactorless equation; what it does not promise is checked
// first: S < L, A and R canonical encodings of curve points, neither of small order.

const P = 2n ** 255n - 19n;
const L = 2n ** 252n + 27742317777372353535851937790883648493n;
const mod = (a: bigint) => ((a % P) + P) % P;
function pow(b: bigint, e: bigint): bigint {
  let r = 1n;
  b = mod(b);
  while (e > 0n) {
    if (e & 1n) r = (r * b) % P;
    b = (b * b) % P;
    e >>= 1n;
  }
  return r;
}
const D = mod(-121665n * pow(121666n, P - 2n));
const SQRT_M1 = pow(2n, (P - 1n) / 4n);

type Point = [bigint, bigint, bigint, bigint];

function leInt(b: Uint8Array): bigint {
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]!);
  return n;
}

/** RFC 8032 §5.1.3 decoding (extended coordinates), or null. */
function decodePoint(b: Uint8Array): Point | null {
  if (b.length !== 32) return null;
  let y = leInt(b);
  const sign = y >> 255n;
  y &= (1n << 255n) - 1n;
  if (y >= P) return null;
  const x2 = mod((y * y - 1n) * pow(D * y * y + 1n, P - 2n));
  let x: bigint;
  if (x2 === 0n) {
    if (sign) return null;
    x = 0n;
  } else {
    x = pow(x2, (P + 3n) / 8n);
    if (mod(x * x - x2) !== 0n) x = mod(x * SQRT_M1);
    if (mod(x * x - x2) !== 0n) return null;
    if ((x & 1n) !== sign) x = P - x;
  }
  return [x, y, 1n, mod(x * y)];
}

function add(p: Point, q: Point): Point {
  const [x1, y1, z1, t1] = p;
  const [x2, y2, z2, t2] = q;
  const a = mod((y1 - x1) * (y2 - x2));
  const b = mod((y1 + x1) * (y2 + x2));
  const c = mod(2n * t1 * t2 * D);
  const d = mod(2n * z1 * z2);
  const e = b - a;
  const f = d - c;
  const g = d + c;
  const h = b + a;
  return [mod(e * f), mod(g * h), mod(f * g), mod(e * h)];
}

/** [8]P is the identity. */
function smallOrder(p: Point): boolean {
  for (let i = 0; i < 3; i++) p = add(p, p);
  return mod(p[0]) === 0n && mod(p[1] - p[2]) === 0n;
}

const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");

function ed25519VerifyStrict(publicKey: Buffer, message: Uint8Array, signature: Buffer): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  if (leInt(signature.subarray(32)) >= L) return false;
  const a = decodePoint(publicKey);
  const r = decodePoint(signature.subarray(0, 32));
  if (!a || !r || smallOrder(a) || smallOrder(r)) return false;
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_ED25519, publicKey]), format: "der", type: "spki" });
    return edVerify(null, message, key, signature);
  } catch {
    return false;
  }
}

// ---- §6.2 Key sets -------------------------------------------------------------------------

interface Key {
  keyId: string;
  name: string;
  publicKey: Buffer;
  notBefore: string;
  notAfter: string | null;
}

export interface KeySet {
  workspaceId: string;
  origin: string;
  keys: Key[];
  /** To tell two key sets of one bundle apart (§7.2 step 2). */
  canonical: string;
}

/** C2SP signed-note key id, as hex: SHA-256(name ‖ 0x0A ‖ type ‖ key)[:4]; type 0x01 is an
 * Ed25519 note signer (a workspace key), 0x04 a tlog-cosignature witness. */
const keyIdOf = (name: string, pk: Uint8Array, type = 0x01) =>
  sha256(Buffer.from(name, "utf8"), Uint8Array.of(0x0a, type), pk).subarray(0, 4).toString("hex");

/** Checks every §6.2 rule; a broken one is unusable input. `depth`: the set's nesting (§3). */
export function loadKeySet(doc: Json, depth = 1): KeySet {
  const bad = violations(doc, depth);
  if (bad.length) throw new UnusableInput(`key set: ${bad.join("; ")}`);
  if (!isObject(doc) || !membersAre(doc, ["workspace_id", "origin", "keys"])) {
    throw new UnusableInput("key set: must be an object with exactly workspace_id, origin and keys");
  }
  const ws = doc.workspace_id;
  if (!isId(ws)) throw new UnusableInput("key set: workspace_id is not an id");
  const origin = `allowly/${ws}`;
  if (doc.origin !== origin) throw new UnusableInput("key set: origin is not allowly/<workspace_id>");
  if (!Array.isArray(doc.keys)) throw new UnusableInput("key set: keys is not an array");
  const keys: Key[] = [];
  doc.keys.forEach((k, i) => {
    const where = `key set: keys[${i}]`;
    const no = (why: string) => new UnusableInput(`${where}: ${why}`);
    if (!isObject(k) || !membersAre(k, ["key_id", "name", "algorithm", "public_key", "vkey", "not_before", "not_after", "status"])) {
      throw no("must be an object with exactly the members of §6.2");
    }
    if (k.name !== origin) throw no("name is not the origin");
    if (k.algorithm !== "ed25519") throw no("algorithm is not ed25519");
    const pk = b64(k.public_key);
    if (!pk || pk.length !== 32) throw no("public_key is not base64 of 32 bytes");
    const point = decodePoint(pk);
    if (!point || smallOrder(point)) throw no("public_key is not a canonical Ed25519 point of large order");
    if (!isKeyId(k.key_id) || k.key_id !== keyIdOf(origin, pk)) throw no("key_id does not match name and public key");
    const vkey = `${origin}+${k.key_id}+${Buffer.concat([Uint8Array.of(1), pk]).toString("base64")}`;
    if (k.vkey !== vkey) throw no("vkey is not <name>+<key_id>+<base64(0x01 ‖ key)>");
    const nb = k.not_before;
    const na = k.not_after;
    if (!isTime(nb)) throw no("not_before is not a time");
    if (na !== null && (!isTime(na) || !(na > nb))) throw no("not_after is not null, or not a time after not_before");
    if (k.status !== (na === null ? "active" : "retired")) throw no("status must be active exactly when not_after is null");
    keys.push({ keyId: k.key_id, name: origin, publicKey: pk, notBefore: nb, notAfter: na });
  });
  if (keys.length === 0) throw new UnusableInput("key set: keys is empty");
  if (new Set(keys.map((k) => k.keyId)).size !== keys.length) throw new UnusableInput("key set: a key_id appears twice");
  return { workspaceId: ws, origin, keys, canonical: canonicalText(doc) };
}

// ---- §5.4 Checkpoints ----------------------------------------------------------------------

interface Checkpoint {
  size: number;
  root: Buffer;
}

class CheckpointError {
  constructor(
    readonly code: string,
    readonly detail: string,
  ) {}
}

/** Go's unicode.IsSpace, which C2SP signed-note uses to refuse key names with spaces. */
const SPACE = /[\t\n\v\f\r \u0085\u00a0\p{Zs}\p{Zl}\p{Zp}]/u;

/** A signed note split into its text (with its final newline) and its signature lines (key
 *  name, key id ‖ signature), or the §5.4 rule it breaks. */
interface SignedNote {
  text: string;
  signatures: Array<[string, Buffer]>;
}

const hasControl = (s: string) => /[\u0000-\u001f]/.test(s);

/** The C2SP signed-note structure (§5.4), before anything is read from the text. */
function parseSignedNote(note: string): SignedNote | CheckpointError {
  const malformed = (why: string) => new CheckpointError("checkpoint_malformed", why);
  if (/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(note)) return malformed("not UTF-8");
  if (/[\u0000-\u0009\u000b-\u001f]/.test(note)) return malformed("control character other than \\n");
  const split = note.lastIndexOf("\n\n");
  if (split < 0) return malformed("no blank line before the signatures");
  const text = note.slice(0, split + 1);
  const block = note.slice(split + 2);
  if (!block) return malformed("no signature line");
  if (!block.endsWith("\n")) return malformed("signature lines must end with \\n");
  const signatures: Array<[string, Buffer]> = [];
  for (const line of block.slice(0, -1).split("\n")) {
    if (!line.startsWith("\u2014 ")) return malformed("signature line does not start with an em dash and a space");
    const rest = line.slice(2);
    const sp = rest.indexOf(" ");
    const name = sp < 0 ? "" : rest.slice(0, sp);
    if (sp < 0 || !name || name.includes("+") || SPACE.test(name)) return malformed("bad key name in a signature line");
    const blob = b64(rest.slice(sp + 1));
    if (!blob || blob.length < 5) return malformed("signature is not base64 of a key id and a signature");
    signatures.push([name, blob]);
  }
  return { text, signatures };
}

function openCheckpoint(note: string, keys: KeySet): Checkpoint | CheckpointError {
  const malformed = (why: string) => new CheckpointError("checkpoint_malformed", why);
  const parsed = parseSignedNote(note);
  if (parsed instanceof CheckpointError) return parsed;
  const { text, signatures } = parsed;
  // Signatures by keys of the set; others are ignored.
  const message = Buffer.from(text, "utf8");
  const verified: Key[] = [];
  let known = 0;
  let failed = 0;
  for (const [name, blob] of signatures) {
    for (const key of keys.keys) {
      if (key.name === name && key.keyId === blob.subarray(0, 4).toString("hex")) {
        known++;
        if (ed25519VerifyStrict(key.publicKey, message, blob.subarray(4))) verified.push(key);
        else failed++;
      }
    }
  }
  if (failed) return new CheckpointError("checkpoint_signature_invalid", "a workspace key's signature does not verify");
  if (!known) return new CheckpointError("checkpoint_unknown_key", "no signature by a key of the set");
  // Only now the text is read as a checkpoint.
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) return malformed("a checkpoint needs an origin, a size and a root line");
  const [origin, sizeLine, rootLine] = lines as [string, string, string];
  const extensions = lines.slice(3);
  if (!origin) return malformed("empty origin line");
  if (!/^(0|[1-9][0-9]*)$/.test(sizeLine) || BigInt(sizeLine) >= 2n ** 64n) return malformed("tree size is not canonical decimal within u64");
  const root = b64(rootLine);
  if (!root || root.length !== 32) return malformed("root is not canonical base64 of 32 bytes");
  if (extensions.some((e) => !e)) return malformed("empty extension line");
  if (origin !== keys.origin) return new CheckpointError("checkpoint_origin_mismatch", `origin ${origin} is not ${keys.origin}`);
  const time = extensions.length === 1 && extensions[0]!.startsWith("time ") ? extensions[0]!.slice(5) : null;
  if (time === null || !isTime(time)) return malformed("needs exactly one extension line 'time <time>'");
  // not_before inclusive, not_after exclusive; §2 times compare as strings.
  if (!verified.some((k) => k.notBefore <= time && (k.notAfter === null || time < k.notAfter))) {
    return new CheckpointError("key_not_valid_at_time", `no verified signer was valid at ${time}`);
  }
  // Sizes beyond 2^53 cannot be reached by any index a receipt may carry; kept as a number.
  return { size: Number(sizeLine), root };
}

/** Each distinct note is opened once (§7.2 step 4). */
class Checkpoints {
  private readonly results = new Map<string, Checkpoint | CheckpointError>();
  constructor(private readonly keys: KeySet) {}

  open(note: string): Checkpoint | CheckpointError {
    let r = this.results.get(note);
    if (r === undefined) {
      r = openCheckpoint(note, this.keys);
      this.results.set(note, r);
    }
    return r;
  }

  opened(): Checkpoint[] {
    return [...this.results.values()].filter((r): r is Checkpoint => !(r instanceof CheckpointError));
  }
}

// ---- §7.5 Witness policy: C2SP cosignature/v1 (https://c2sp.org/tlog-cosignature) -----------
// A cosignature is a signature line of the checkpoint note (§5.4) by a witness:
//   key id    = SHA-256(name ‖ 0x0A ‖ 0x04 ‖ 32-byte Ed25519 public key)[:4]
//   signature = key id ‖ timestamp (u64, big-endian, at most 2^63 - 1) ‖ 64-byte Ed25519
//               signature over "cosignature/v1\n" ‖ "time <timestamp>\n" ‖ the note text
// (the text with its final newline, without signature lines). The message does not commit to
// the witness's name, so one public key under two names is one witness.

const COSIGNER_KEY_TYPE = 0x04;
const MAX_COSIGNATURE_TIME = 2n ** 63n - 1n;
/** Key id, timestamp, Ed25519 signature. */
const COSIGNATURE_LEN = 4 + 8 + 64;

/** A witness a verifier trusts: its name, Ed25519 public key, and the key id of both. */
export interface Witness {
  readonly name: string;
  /** 8 lowercase hex digits. */
  readonly keyId: string;
  readonly publicKey: Buffer;
  /** The C2SP verifier key `<name>+<key id>+<base64(0x04 ‖ key)>`. */
  readonly vkey: string;
}

/**
 * A witness verifier key (C2SP signed-note vkey of type 0x04, as `allowly-witness init` prints
 * it). Anything else is bad usage: `UnusableInput` (exit 64).
 */
export function parseWitnessVkey(vkey: string): Witness {
  const bad = (why: string) => new UnusableInput(`witness key ${JSON.stringify(vkey)}: ${why}`);
  if (typeof vkey !== "string") throw bad("not a string");
  // The name has no '+' and the key id is hex, so the first two '+' separate; base64 may
  // contain '+'.
  const first = vkey.indexOf("+");
  const second = first < 0 ? -1 : vkey.indexOf("+", first + 1);
  if (second < 0) throw bad("not <name>+<key id>+<base64 key>");
  const name = vkey.slice(0, first);
  const kid = vkey.slice(first + 1, second);
  if (!name || SPACE.test(name) || hasControl(name)) throw bad("the name is empty or has whitespace or a control character");
  if (!isKeyId(kid)) throw bad("the key id is not 8 lowercase hex digits");
  const raw = b64(vkey.slice(second + 1));
  if (!raw || raw.length !== 33) throw bad("the key is not canonical base64 of a type byte and 32 bytes");
  if (raw[0] !== COSIGNER_KEY_TYPE) throw bad(`type 0x${raw[0]!.toString(16).padStart(2, "0")} is not a cosigner key (0x04)`);
  const publicKey = raw.subarray(1);
  const point = decodePoint(publicKey);
  if (!point || smallOrder(point)) throw bad("the key is not a canonical Ed25519 point of large order");
  if (keyIdOf(name, publicKey, COSIGNER_KEY_TYPE) !== kid) throw bad("the key id does not match the name and key");
  return { name, keyId: kid, publicKey, vkey };
}

/** §7.5: every checkpoint needs valid cosignatures by at least `quorum` distinct witnesses
 *  (by public key) of `witnesses`. Made by `witnessPolicy`. */
export class WitnessPolicy {
  constructor(
    readonly witnesses: readonly Witness[],
    readonly quorum: number,
  ) {
    const distinct = new Set(witnesses.map((w) => w.publicKey.toString("hex"))).size;
    if (!Number.isInteger(quorum) || quorum < 1 || quorum > distinct) {
      throw new UnusableInput(`witness quorum ${String(quorum)}: must be between 1 and the number of distinct witness keys (${distinct})`);
    }
  }

  describe(): string {
    return `witness policy: every checkpoint cosigned by ${this.quorum} of ${this.witnesses.length} witness keys`;
  }
}

/**
 * A witness policy (§7.5, docs/witness.md), as `allowly-verify --witness-key VKEY …
 * --witness-quorum N`: every checkpoint must carry valid `cosignature/v1` cosignatures by at
 * least `quorum` distinct witnesses among `witnessKeys` (C2SP verifier keys of type 0x04). A bad
 * key, or a quorum not between 1 and the number of distinct keys, throws `UnusableInput`.
 */
export function witnessPolicy(witnessKeys: readonly string[], quorum: number): WitnessPolicy {
  return new WitnessPolicy(witnessKeys.map(parseWitnessVkey), quorum);
}

/** A `cosignature/v1` signature as a signature line carries it (key id ‖ timestamp ‖ Ed25519
 *  signature): its timestamp and signature, or null unless it is exactly 76 bytes with a
 *  timestamp of at most 2^63 - 1. */
export function parseCosignature(blob: Uint8Array): { timestamp: bigint; signature: Buffer } | null {
  if (blob.length !== COSIGNATURE_LEN) return null;
  const b = Buffer.from(blob);
  const timestamp = b.readBigUInt64BE(4);
  if (timestamp > MAX_COSIGNATURE_TIME) return null;
  return { timestamp, signature: b.subarray(12) };
}

/** What a cosignature signs: the header line, the time line (decimal, no leading zeros) and the
 *  note text. */
export const cosignatureMessage = (text: string, timestamp: bigint): Buffer =>
  Buffer.from(`cosignature/v1\ntime ${timestamp.toString()}\n${text}`, "utf8");

/** A signature line by a trusted witness that does not verify (§7.5 step 1). */
export class CosignatureError extends VerificationError {}

/**
 * The trusted witnesses that validly cosigned the signed note `note`: one per distinct public
 * key, in note order, with the cosignature's timestamp. Lines whose (name, key id) is no trusted
 * witness's are ignored; one that is and does not verify throws `CosignatureError` (even if
 * others are good); a note that is not a signed note throws `UnusableInput`.
 */
export function verifyCosignatures(note: string, witnesses: readonly Witness[]): Array<{ witness: Witness; timestamp: bigint }> {
  const parsed = parseSignedNote(note);
  if (parsed instanceof CheckpointError) throw new UnusableInput(`not a signed note: ${parsed.detail}`);
  witnesses.forEach((a, i) => {
    for (const b of witnesses.slice(i + 1)) {
      if (a.name === b.name && a.keyId === b.keyId && !a.publicKey.equals(b.publicKey)) {
        throw new CosignatureError(`two witness keys share the name ${a.name} and key id ${a.keyId}`);
      }
    }
  });
  const good: Array<{ witness: Witness; timestamp: bigint }> = [];
  for (const [name, blob] of parsed.signatures) {
    const keyId = blob.subarray(0, 4).toString("hex");
    const w = witnesses.find((x) => x.name === name && x.keyId === keyId);
    if (!w) continue; // the log's own signature, another witness: not ours to judge
    const cosig = parseCosignature(blob);
    if (!cosig) {
      throw new CosignatureError(`the cosignature of ${name} (${keyId}) is not a key id, a timestamp of at most 2^63 - 1 and a 64-byte signature`);
    }
    if (!ed25519VerifyStrict(w.publicKey, cosignatureMessage(parsed.text, cosig.timestamp), cosig.signature)) {
      throw new CosignatureError(`the cosignature of ${name} (${keyId}) does not verify`);
    }
    if (!good.some((g) => g.witness.publicKey.equals(w.publicKey))) good.push({ witness: w, timestamp: cosig.timestamp });
  }
  return good;
}

/** Applies a witness policy (if any) to each distinct checkpoint note that opened, once. */
class Witnessing {
  private readonly judged = new Set<string>();
  constructor(private readonly policy: WitnessPolicy | null) {}

  check(note: string, where: string, report: Report): void {
    if (this.policy === null || this.judged.has(note)) return;
    this.judged.add(note);
    let good: number;
    try {
      good = verifyCosignatures(note, this.policy.witnesses).length;
    } catch (e) {
      if (e instanceof CosignatureError) {
        report.add("witness_cosignature_invalid", `${where}: ${e.message}`);
        return;
      }
      if (e instanceof UnusableInput) return; // cannot happen for a note that opened
      throw e;
    }
    if (good < this.policy.quorum) {
      report.add("witness_quorum_not_met", `${where}: ${good} of the ${this.policy.quorum} required witnesses cosigned this checkpoint`);
    }
  }
}

// ---- §4 Receipt bodies ---------------------------------------------------------------------

const KINDS = [
  "authorization.created",
  "check",
  "confirmation",
  "escalation.created",
  "escalation.resolved",
  "revocation",
  "expiry",
  "key.rotated",
  "scope_rules.changed", // 1.1
];
const WORKSPACE_KINDS = ["key.rotated", "scope_rules.changed"];
const DECISIONS = ["allow", "deny", "confirm", "escalate"];
const FIRST_TABLE = ["v", "id", "workspace_id", "authorization_id", "seq", "prev", "log_index", "kind", "decision", "reason", "scopes", "resource", "time", "auth_state_hash"];

const oneOf = (v: unknown, choices: string[]) => isStr(v) && choices.includes(v);
const hashOrNull = (v: unknown) => v === null || isHash(v);

/** Every member `grant` lists, with its type (all required, `null` where allowed). */
function isGrant(v: Json): boolean {
  return (
    isObject(v) &&
    isStr(v.subject) &&
    isStrArray(v.scopes) &&
    isStrArray(v.resources) &&
    has(v, "expires_at") &&
    (v.expires_at === null || isTime(v.expires_at)) &&
    has(v, "metadata_hash") &&
    hashOrNull(v.metadata_hash)
  );
}

/** `approval`: outcome, by, shown_hash required; 1.1's note_hash optional. */
function isApproval(v: Json): boolean {
  return (
    isObject(v) &&
    oneOf(v.outcome, ["approved", "declined"]) &&
    isStr(v.by) &&
    has(v, "shown_hash") &&
    hashOrNull(v.shown_hash) &&
    (!has(v, "note_hash") || hashOrNull(v.note_hash))
  );
}

/** `key`: a key id, the key id it replaces, and the §6.2 verifier key of that id. */
function isKeyMember(v: Json): boolean {
  if (!isObject(v) || !isKeyId(v.key_id) || !isKeyId(v.replaces) || !isStr(v.vkey)) return false;
  const parts = v.vkey.split("+");
  if (parts.length < 3) return false;
  const [name, kid] = parts as [string, string];
  const raw = b64(parts.slice(2).join("+"));
  return !!name && kid === v.key_id && !!raw && raw.length === 33 && raw[0] === 1 && keyIdOf(name, raw.subarray(1)) === kid;
}

/** §7.1 step 4, first half: missing first-table members and wrong types (body_invalid, stop). */
function typeProblems(body: JsonObject): string[] {
  const p = FIRST_TABLE.filter((m) => !has(body, m)).map((m) => `missing member ${m}`);
  const checks: Array<[string, (v: Json) => boolean, string]> = [
    ["v", isInt, "an integer"],
    ["id", isStr, "a string"],
    ["workspace_id", isStr, "a string"],
    ["authorization_id", isStrOrNull, "a string or null"],
    ["seq", (v) => v === null || isNat(v), "a non-negative integer or null"],
    ["prev", hashOrNull, "a hash or null"],
    ["log_index", isNat, "a non-negative integer"],
    ["kind", (v) => oneOf(v, KINDS), "a known kind"],
    ["decision", (v) => v === null || oneOf(v, DECISIONS), "a decision or null"],
    ["reason", isStrOrNull, "a string or null"],
    ["scopes", isStrArray, "an array of strings"],
    ["resource", isStrOrNull, "a string or null"],
    ["time", isTime, "a §2 time"],
    ["auth_state_hash", hashOrNull, "a hash or null"],
    // Second table: typed wherever present.
    ["grant", isGrant, "a grant object"],
    ["approval", isApproval, "an approval object"],
    ["escalation_id", isStr, "a string"],
    ["context_hash", isHash, "a hash"],
    ["key", isKeyMember, "a key object"],
    ["asked_authorization_id", isStrOrNull, "a string"],
    ["expires_at", (v) => v === null || isTime(v), "a §2 time"],
    ["scope_rules", (v) => v === null || (isObject(v) && Object.values(v).every((x) => oneOf(x, ["confirm", "escalate"]))), "an object of confirm/escalate"],
  ];
  for (const [m, ok, what] of checks) {
    if (has(body, m) && !ok(body[m]!)) p.push(`${m} is not ${what}`);
  }
  return p;
}

/** §7.1 step 4, second half: the §4 rules (each broken one body_invalid; verification goes on). */
function ruleProblems(body: JsonObject): string[] {
  const p: string[] = [];
  const g = (m: string): Json | undefined => (has(body, m) ? body[m] : undefined);
  const nullish = (m: string) => g(m) === null || g(m) === undefined;
  const kind = body.kind as string;
  if (body.v !== 1) p.push("v is not 1");
  for (const m of ["id", "workspace_id", "authorization_id", "escalation_id", "asked_authorization_id"]) {
    if (!nullish(m) && !isId(g(m))) p.push(`${m} is not a §2 id`);
  }
  const unknown = g("reason") === "unknown_authorization" || !nullish("asked_authorization_id");
  if (unknown) {
    const ok =
      kind === "check" &&
      g("decision") === "deny" &&
      g("reason") === "unknown_authorization" &&
      !nullish("asked_authorization_id") &&
      ["authorization_id", "seq", "prev"].every(nullish);
    if (!ok) p.push("an unknown_authorization check is a denied check with asked_authorization_id and null authorization_id, seq and prev");
  } else if (WORKSPACE_KINDS.includes(kind)) {
    if (!["authorization_id", "seq", "prev"].every(nullish)) p.push(`${kind} must have null authorization_id, seq and prev`);
  } else {
    if (nullish("authorization_id") || nullish("seq")) p.push("authorization_id and seq must be non-null");
    const seq0 = g("seq") === 0;
    const created = kind === "authorization.created";
    const noPrev = nullish("prev");
    if (!(seq0 === created && created === noPrev)) p.push("seq = 0 ⇔ kind = authorization.created ⇔ prev = null is broken");
    if (created && !has(body, "grant")) p.push("authorization.created has no grant");
  }
  // §4.1, second table: the members a kind requires (absent or null breaks the rule). Every
  // answer has an approval except an escalation nobody answered in time; a check that
  // escalates names its escalation. context_hash and a check's expires_at are optional.
  const answer = kind === "confirmation" || (kind === "escalation.resolved" && g("reason") !== "escalation_expired");
  if (answer && nullish("approval")) p.push(`${kind} has no approval`);
  const escalation = kind === "escalation.created" || kind === "escalation.resolved" || (kind === "check" && g("decision") === "escalate");
  if (escalation && nullish("escalation_id")) p.push(`${kind} has no escalation_id`);
  if (kind === "key.rotated" && nullish("key")) p.push("key.rotated has no key");
  if (!nullish("scope_rules") !== (kind === "scope_rules.changed")) p.push("scope_rules is present exactly in scope_rules.changed");
  return p;
}

// ---- §6.1 Envelopes and §7.1 ---------------------------------------------------------------

/** The §6.1 shape of a receipt document (not what is inside `body`), or null when it is right. */
function envelopeProblem(doc: Json, depth: number): string | null {
  if (!isObject(doc)) return "receipt is not a JSON object";
  const bad = violations(doc, depth, ["body"]);
  if (bad.length) return bad.join("; ");
  if (doc.status === "signed") {
    if (!membersAre(doc, ["status", "body", "log_index", "inclusion_proof", "checkpoint"])) return "a signed receipt must have exactly the members of §6.1";
    if (!Array.isArray(doc.inclusion_proof) || !doc.inclusion_proof.every(isHash)) return "inclusion_proof is not an array of hashes";
    if (!isStr(doc.checkpoint)) return "checkpoint is not a string";
  } else if (doc.status === "pending") {
    if (!membersAre(doc, ["status", "receipt_id", "log_index", "leaf_hash", "body"])) return "a pending receipt must have exactly the members of §6.1";
    if (!isId(doc.receipt_id)) return "receipt_id is not an id";
    if (!isHash(doc.leaf_hash)) return "leaf_hash is not a hash";
  } else {
    return "status is neither signed nor pending";
  }
  if (!isNat(doc.log_index)) return "log_index is not a non-negative integer";
  if (!isObject(doc.body)) return "body is not an object";
  return null;
}

/** What the bundle checks (§7.2 steps 5-8) need of one receipt whose body could be read. */
interface Leaf {
  hash: Buffer;
  logIndex: number;
  authorizationId: string | null;
  seq: number | null;
  prev: string | null;
  /** The body, read and typed by §7.1 step 4 (for §7.4). */
  body: JsonObject;
}

/** §7.1 steps 3-9 on an envelope `envelopeProblem` passed, and §7.5 on its checkpoint with a
 *  witness policy; the leaf if the body was read. */
function receiptSteps(
  doc: JsonObject,
  keys: KeySet,
  cps: Checkpoints,
  report: Report,
  where: string,
  bodyDepth: number,
  witnessing: Witnessing,
): Leaf | null {
  const body = doc.body as JsonObject;
  const bad = violations(body, bodyDepth);
  if (bad.length) {
    report.add("body_not_canonical", `${where}: ${bad.join("; ")}`);
    return null;
  }
  const canonical = canonicalBytes(body);
  const fatal = typeProblems(body);
  if (fatal.length) {
    report.add("body_invalid", `${where}: ${fatal.join("; ")}`);
    return null;
  }
  const rules = ruleProblems(body);
  if (rules.length) report.add("body_invalid", `${where}: ${rules.join("; ")}`);
  if (body.workspace_id !== keys.workspaceId) report.add("workspace_mismatch", `${where}: body workspace ${String(body.workspace_id)} is not ${keys.workspaceId}`);
  if (body.log_index !== doc.log_index) report.add("log_index_mismatch", `${where}: envelope log_index ${String(doc.log_index)} is not the body's ${String(body.log_index)}`);
  const h = leafHash(canonical);
  const leaf: Leaf = {
    hash: h,
    logIndex: body.log_index as number,
    authorizationId: body.authorization_id as string | null,
    seq: body.seq as number | null,
    prev: body.prev as string | null,
    body,
  };
  if (doc.status === "pending") {
    if (doc.leaf_hash !== h.toString("hex") || doc.receipt_id !== body.id) report.add("envelope_mismatch", `${where}: leaf_hash or receipt_id does not match the body`);
    report.add("not_signed", `${where}: pending receipt ${String(body.id)} is not signed yet`);
    return leaf;
  }
  const cp = cps.open(doc.checkpoint as string);
  if (cp instanceof CheckpointError) {
    report.add(cp.code, `${where}: checkpoint: ${cp.detail}`);
    return leaf;
  }
  witnessing.check(doc.checkpoint as string, `${where}: checkpoint`, report); // §7.5
  const proof = (doc.inclusion_proof as string[]).map((x) => Buffer.from(x, "hex"));
  // At the envelope's log_index (§7.1 step 9).
  if (!verifyInclusion(doc.log_index as number, cp.size, proof, h, cp.root)) {
    report.add("inclusion_proof_invalid", `${where}: leaf ${String(doc.log_index)} is not proven in the tree of size ${cp.size}`);
  }
  return leaf;
}

// ---- Inputs --------------------------------------------------------------------------------

/** A document as bytes, text or an already parsed value (re-serialised: only for values
 *  that came from `JSON.parse` of a receipt the server sent, whose numbers are integers). */
export type DocumentInput = Uint8Array | string | object;

function readDoc(input: DocumentInput, what: string): Json {
  try {
    if (input instanceof Uint8Array || typeof input === "string") return parseJson(input);
    return parseJson(JSON.stringify(input));
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new UnusableInput(`${what}: ${e.message}`);
    throw e;
  }
}

/** A key set (`GET /v1/workspaces/{ws}/keys`), checked by §6.2; unusable input throws. */
export function readKeySet(input: DocumentInput | KeySet): KeySet {
  if (typeof input === "object" && input !== null && "canonical" in input && "workspaceId" in input) return input as KeySet;
  return loadKeySet(readDoc(input as DocumentInput, "key set"));
}

/**
 * §7.1: one receipt (signed or pending) against the workspace's key set. With `witness`
 * (`witnessPolicy(...)`, §7.5) its checkpoint must also carry the quorum's cosignatures:
 * `witness_quorum_not_met` (coverage gap) if it does not, `witness_cosignature_invalid`
 * (integrity failure) if one by a given witness is bad.
 */
export function verifyReceipt(receipt: DocumentInput, keys: DocumentInput | KeySet, witness: WitnessPolicy | null = null): Report {
  const ks = readKeySet(keys);
  const doc = readDoc(receipt, "receipt");
  const problem = envelopeProblem(doc, 1);
  if (problem) throw new UnusableInput(`receipt: ${problem}`);
  const report = new Report();
  if (witness) report.notes.push(witness.describe());
  receiptSteps(doc as JsonObject, ks, new Checkpoints(ks), report, "receipt", 2, new Witnessing(witness));
  return report;
}

// ---- §6.3 / §7.2 Bundles -------------------------------------------------------------------

type Scope = { kind: "authorization"; authorizationId: string; lastSeq: number } | { kind: "log"; from: number; to: number };

const MAX_LINE = 1 << 20;

function splitLines(data: Uint8Array): Array<[number, Uint8Array]> {
  const out: Array<[number, Uint8Array]> = [];
  let start = 0;
  let n = 0;
  for (let i = 0; i <= data.length; i++) {
    if (i === data.length || data[i] === 0x0a) {
      n++;
      const line = data.subarray(start, i);
      // Blank: empty, or only spaces, tabs and carriage returns (§7.3).
      if (line.some((b) => b !== 0x20 && b !== 0x09 && b !== 0x0d)) out.push([n, line]);
      start = i + 1;
    }
  }
  return out;
}

function parseHeader(line: Uint8Array): [string, Scope] {
  if (line.length > MAX_LINE) throw new UnusableInput("header line longer than 1 MiB");
  const doc = readDoc(line, "header");
  const bad = violations(doc);
  if (bad.length) throw new UnusableInput(`header: ${bad.join("; ")}`);
  if (!isObject(doc) || !membersAre(doc, ["type", "header"]) || doc.type !== "bundle" || !isObject(doc.header)) {
    throw new UnusableInput('the first line is not {"type":"bundle","header":{…}}');
  }
  const h = doc.header;
  if (!membersAre(h, ["v", "workspace_id", "created_at", "scope"]) || h.v !== 1) throw new UnusableInput("header: not a version 1 header");
  if (!isId(h.workspace_id) || !isTime(h.created_at)) throw new UnusableInput("header: workspace_id or created_at is malformed");
  const s = h.scope;
  if (isObject(s) && s.kind === "authorization" && membersAre(s, ["kind", "authorization_id", "last_seq"]) && isId(s.authorization_id) && isNat(s.last_seq)) {
    return [h.workspace_id, { kind: "authorization", authorizationId: s.authorization_id, lastSeq: s.last_seq }];
  }
  if (isObject(s) && s.kind === "log" && membersAre(s, ["kind", "from", "to"]) && isNat(s.from) && isNat(s.to) && s.from <= s.to) {
    return [h.workspace_id, { kind: "log", from: s.from, to: s.to }];
  }
  throw new UnusableInput("header: scope is malformed");
}

interface Records {
  keySets: Json[];
  checkpoints: string[];
  consistency: Array<[number, number, Buffer[]]>;
  receipts: Array<[number, JsonObject]>;
}

/** §7.2 step 1 for one line after the header: a record, or `record_malformed`. */
function readRecord(n: number, line: Uint8Array, records: Records, report: Report): void {
  const where = `line ${n}`;
  const malformed = (why: string) => report.add("record_malformed", `${where}: ${why}`);
  if (line.length > MAX_LINE) return malformed("longer than 1 MiB");
  let doc: Json;
  try {
    doc = parseJson(line);
  } catch (e) {
    if (e instanceof JsonSyntaxError) return malformed(e.message);
    throw e;
  }
  const type = isObject(doc) ? doc.type : undefined;
  if (!isObject(doc) || !oneOf(type, ["keys", "checkpoint", "consistency", "receipt"]) || !membersAre(doc, ["type", type as string])) {
    return malformed("not a keys, checkpoint, consistency or receipt record");
  }
  const value = doc[type as string]!;
  if (type === "receipt") {
    // §3 breaches inside the body are body_not_canonical later; around it, record_malformed.
    const bad = violations(doc, 1, ["receipt"]);
    const problem = bad.length ? bad.join("; ") : envelopeProblem(value, 2);
    if (problem) return malformed(problem);
    records.receipts.push([n, value as JsonObject]);
    return;
  }
  if (type === "keys") {
    // The key set itself is judged in step 2 (a broken one is unusable input, §6.2).
    const bad = violations(doc, 1, ["keys"]);
    if (bad.length) return malformed(bad.join("; "));
    records.keySets.push(value);
    return;
  }
  const bad = violations(doc);
  if (bad.length) return malformed(bad.join("; "));
  if (type === "checkpoint") {
    if (!isStr(value)) return malformed("checkpoint is not a string");
    records.checkpoints.push(value);
    return;
  }
  if (
    isObject(value) &&
    membersAre(value, ["old_size", "new_size", "proof"]) &&
    isNat(value.old_size) &&
    isNat(value.new_size) &&
    Array.isArray(value.proof) &&
    value.proof.every(isHash)
  ) {
    records.consistency.push([value.old_size, value.new_size, (value.proof as string[]).map((x) => Buffer.from(x, "hex"))]);
  } else {
    malformed("consistency record is malformed");
  }
}

/** §7.2 step 2. */
function chooseKeys(records: Records, pinned: KeySet | null, headerWs: string, report: Report): KeySet {
  const sets = records.keySets.map((doc) => loadKeySet(doc, 2));
  let keys: KeySet;
  if (pinned) {
    const pins = new Set(pinned.keys.map((k) => `${k.keyId}:${k.publicKey.toString("hex")}`));
    for (const ks of sets) {
      for (const k of ks.keys) {
        if (!pins.has(`${k.keyId}:${k.publicKey.toString("hex")}`)) report.add("keys_mismatch", `bundle key ${k.keyId} is not a pinned key`);
      }
    }
    keys = pinned;
  } else {
    if (sets.length === 0) throw new UnusableInput("no pinned keys and no key set in the bundle");
    keys = sets[0]!;
    if (sets.slice(1).some((ks) => ks.canonical !== keys.canonical)) report.add("keys_mismatch", "the bundle carries two different key sets");
    report.unpinned = true;
    report.notes.push("keys were NOT pinned: the bundle's own key set was used, so only its internal consistency is proven (§10)");
  }
  if (headerWs !== keys.workspaceId) report.add("workspace_mismatch", `header workspace ${headerWs} is not the keys' ${keys.workspaceId}`);
  return keys;
}

/** §7.2 step 5: index → leaf hash; an index with two different leaves has none. */
function checkLog(leaves: Leaf[], report: Report): Map<number, Buffer> {
  const byIndex = new Map<number, Buffer>();
  const conflicted = new Set<number>();
  for (const leaf of leaves) {
    const seen = byIndex.get(leaf.logIndex);
    if (seen === undefined) byIndex.set(leaf.logIndex, leaf.hash);
    else if (!seen.equals(leaf.hash)) {
      report.add("log_index_conflict", `two different leaves at log index ${leaf.logIndex}`);
      conflicted.add(leaf.logIndex);
    }
  }
  for (const i of conflicted) byIndex.delete(i);
  return byIndex;
}

/** §7.2 step 6; authorization id → highest seq present. */
function checkTrails(leaves: Leaf[], scope: Scope, report: Report): Map<string, number> {
  const trails = new Map<string, Map<number, Leaf[]>>();
  for (const leaf of leaves) {
    if (leaf.authorizationId === null || leaf.seq === null) continue; // a workspace event
    let bySeq = trails.get(leaf.authorizationId);
    if (!bySeq) trails.set(leaf.authorizationId, (bySeq = new Map()));
    const same = bySeq.get(leaf.seq) ?? [];
    if (same.every((o) => !o.hash.equals(leaf.hash))) same.push(leaf); // identical copies count once
    bySeq.set(leaf.seq, same);
  }
  const fromZero = scope.kind === "authorization" || scope.from === 0;
  const ends = new Map<string, number>();
  for (const auth of [...trails.keys()].sort()) {
    const bySeq = trails.get(auth)!;
    const seqs = [...bySeq.keys()].sort((a, b) => a - b);
    ends.set(auth, seqs[seqs.length - 1]!);
    for (const s of seqs) {
      if (bySeq.get(s)!.length > 1) report.add("seq_conflict", `${auth}: ${bySeq.get(s)!.length} different receipts at seq ${s}`);
    }
    if (fromZero && seqs[0] !== 0) report.add("receipt_missing", `${auth}: the trail starts at seq ${seqs[0]}, not 0`);
    for (let i = 0; i + 1 < seqs.length; i++) {
      const a = seqs[i]!;
      const b = seqs[i + 1]!;
      if (b !== a + 1) {
        report.add("receipt_missing", `${auth}: seqs ${a + 1}..${b - 1} are missing`);
        continue;
      }
      for (const y of bySeq.get(b)!) {
        const linked = bySeq.get(a)!.filter((x) => y.prev === x.hash.toString("hex"));
        if (!linked.length) report.add("chain_broken", `${auth}: prev of seq ${b} is not the leaf hash of seq ${a}`);
        if ((linked.length ? linked : bySeq.get(a)!).some((x) => y.logIndex <= x.logIndex)) {
          report.add("trail_order", `${auth}: seq ${b} is not after seq ${a} in the log`);
        }
      }
    }
  }
  return ends;
}

/** §7.2 step 7. */
function checkScope(leaves: Leaf[], scope: Scope, ends: Map<string, number>, byIndex: Map<number, Buffer>, checkpoints: Checkpoint[], report: Report): void {
  if (scope.kind === "authorization") {
    for (const leaf of leaves) {
      if (leaf.authorizationId !== scope.authorizationId) report.add("out_of_scope", `log index ${leaf.logIndex} is not in authorization ${scope.authorizationId}`);
      else if (leaf.seq !== null && leaf.seq > scope.lastSeq) report.add("out_of_scope", `seq ${leaf.seq} is after last_seq ${scope.lastSeq}`);
    }
    const end = ends.get(scope.authorizationId);
    if (end === undefined || end < scope.lastSeq) report.add("truncated", `the trail ends at seq ${end}, the header promises ${scope.lastSeq}`);
    return;
  }
  for (const leaf of leaves) {
    if (leaf.logIndex < scope.from || leaf.logIndex >= scope.to) report.add("out_of_scope", `log index ${leaf.logIndex} is outside ${scope.from}..${scope.to}`);
  }
  let missing = 0;
  let first = -1;
  for (let i = scope.from; i < scope.to; i++) {
    if (!byIndex.has(i)) {
      if (first < 0) first = i;
      missing++;
    }
  }
  if (missing) report.add("log_leaf_missing", `${missing} log indexes in scope have no receipt, the first ${first}`);
  for (const cp of checkpoints) {
    if (cp.size > scope.to) report.add("truncated", `a checkpoint commits to ${cp.size} leaves, the scope ends at ${scope.to}`);
  }
}

/** §7.2 step 8. */
function checkCheckpoints(checkpoints: Checkpoint[], byIndex: Map<number, Buffer>, consistency: Array<[number, number, Buffer[]]>, report: Report): void {
  const roots = new Map<number, Buffer[]>();
  for (const cp of checkpoints) {
    const same = roots.get(cp.size) ?? [];
    if (!same.some((r) => r.equals(cp.root))) same.push(cp.root);
    roots.set(cp.size, same);
  }
  for (const [size, rs] of roots) {
    if (rs.length > 1) report.add("checkpoint_fork", `${rs.length} different roots for tree size ${size}`);
  }
  let p = 0;
  while (byIndex.has(p)) p++;
  const present = Array.from({ length: p }, (_, i) => byIndex.get(i)!);
  const sizes = [...roots.keys()].sort((a, b) => a - b);
  for (const size of sizes) {
    if (size <= p) {
      const expected = merkleRoot(present.slice(0, size));
      if (roots.get(size)!.some((r) => !r.equals(expected))) report.add("checkpoint_root_mismatch", `the bundle's leaves do not give the root of size ${size}`);
    }
  }
  for (const [m, n, proof] of consistency) {
    const rm = roots.get(m);
    const rn = roots.get(n);
    if (rm && rn && !rm.every((o) => rn.every((nr) => verifyConsistency(m, n, proof, o, nr)))) {
      report.add("consistency_proof_invalid", `the consistency proof ${m} -> ${n} fails`);
    }
  }
  for (let i = 0; i + 1 < sizes.length; i++) {
    const m = sizes[i]!;
    const n = sizes[i + 1]!;
    if (n > p && !consistency.some(([a, b]) => a === m && b === n)) report.add("consistency_unproven", `no consistency proof ${m} -> ${n}`);
  }
}

// ---- §7.4 Semantic verification ------------------------------------------------------------

/** §7.4 scope patterns: `*` is every scope, `a.b.*` every longer scope under `a.b.`, else equality. */
function scopeMatches(pattern: string, scope: string): boolean {
  if (pattern === "*") return true;
  if (pattern.endsWith(".*")) {
    const prefix = pattern.slice(0, -1); // with the dot
    return scope.length > prefix.length && scope.startsWith(prefix);
  }
  return pattern === scope;
}

/** §7.4 resource entries: `…*` is a prefix, else equality. */
const resourceMatches = (entry: string, resource: string) =>
  entry.endsWith("*") ? resource.startsWith(entry.slice(0, -1)) : entry === resource;

interface Grant {
  scopes: string[];
  resources: string[];
  expiresAt: string | null;
}

/** An opened confirmation (§7.4 step 5). */
interface OpenConfirmation {
  scopes: string[];
  resource: string | null;
  deadline: string | null;
  answered: boolean;
}

/** An opened escalation (§7.4 step 5). */
interface OpenEscalation {
  deadline: string | null;
  resolved: boolean;
}

/** What §7.4 knows of one trail: its grant, where it ended, what it opened. */
interface Trail {
  grant: Grant;
  endedAt: number | null;
  confirmations: OpenConfirmation[];
  escalations: Map<string, OpenEscalation>;
}

/** Decision-table rows 1-2: the trail has ended, or its grant has expired at `time`
 *  (§2 times compare as strings). */
function trailDenies(trail: Trail, time: string): string | null {
  if (trail.endedAt !== null) return `the authorization ended at log index ${trail.endedAt}`;
  if (trail.grant.expiresAt !== null && time >= trail.grant.expiresAt) return "the grant had expired";
  return null;
}

/** Decision-table rows 1-4 for a check: why the authorization alone denies it, or null. */
function authorizationDenies(trail: Trail, scopes: string[], resource: string | null, time: string): string | null {
  const ended = trailDenies(trail, time);
  if (ended) return ended;
  const { grant } = trail;
  if (!scopes.every((s) => grant.scopes.some((p) => scopeMatches(p, s)))) return "the grant does not cover every scope asked for";
  if (grant.resources.length > 0 && (resource === null || !grant.resources.some((e) => resourceMatches(e, resource)))) {
    return "the grant does not cover the resource";
  }
  return null;
}

/** Decision-table rows 5-7: what the scope rules in force give for `scopes`. */
function rulesDecide(rules: JsonObject, scopes: string[]): "escalate" | "confirm" | "allow" {
  const some = (word: string) => Object.entries(rules).some(([p, rule]) => rule === word && scopes.some((s) => scopeMatches(p, s)));
  if (some("escalate")) return "escalate";
  return some("confirm") ? "confirm" : "allow";
}

/** §7.4 steps 6-7, the part common to both answers: an allowing answer needs a live trail, an
 *  unexpired grant and an approving person. */
function answerDenies(trail: Trail, body: JsonObject): string | null {
  const denied = trailDenies(trail, body.time as string);
  if (denied) return denied;
  const approval = has(body, "approval") ? body.approval : null;
  if (!isObject(approval) || approval.outcome !== "approved") return "no answer approved it";
  return null;
}

const sameScopes = (a: string[], b: string[]) => a.length === b.length && a.every((s, i) => s === b[i]);

/** `deadline` a comes before b (no deadline: last). */
const sooner = (a: string | null, b: string | null) => a !== null && (b === null || a < b);

/** §7.4 on the leaves of a bundle whose §7.2 steps found nothing; every judged decision that does
 *  not follow from the log before it is `decision_unjustified`. Returns how many were judged. */
function checkSemantics(leaves: Leaf[], report: Report): number {
  // In log_index order, each index once (without findings, copies at one index are identical).
  const bodies = new Map<number, JsonObject>();
  for (const leaf of leaves) if (!bodies.has(leaf.logIndex)) bodies.set(leaf.logIndex, leaf.body);
  let rules: JsonObject | null = null;
  let rulesAt = -1;
  const trails = new Map<string, Trail>();
  let judged = 0;
  for (const index of [...bodies.keys()].sort((a, b) => a - b)) {
    const b = bodies.get(index)!;
    const kind = b.kind as string;
    const decision = b.decision as string | null;
    const time = b.time as string;
    const scopes = b.scopes as string[];
    const resource = b.resource as string | null;
    const auth = b.authorization_id as string | null;
    const deadline = has(b, "expires_at") ? (b.expires_at as string | null) : null;
    const escalationId = has(b, "escalation_id") ? (b.escalation_id as string | null) : null;
    // Step 1; other workspace events change nothing.
    if (kind === "scope_rules.changed") {
      rules = b.scope_rules as JsonObject;
      rulesAt = index;
      continue;
    }
    if (auth === null) continue;
    // Step 2.
    if (kind === "authorization.created") {
      const g = b.grant as JsonObject;
      trails.set(auth, {
        grant: { scopes: g.scopes as string[], resources: g.resources as string[], expiresAt: g.expires_at as string | null },
        endedAt: null,
        confirmations: [],
        escalations: new Map(),
      });
      continue;
    }
    // Step 3: a trail granted before the export's first index is not judged.
    const trail = trails.get(auth);
    if (!trail) continue;
    let problem: string | null = null;
    if (kind === "revocation" || kind === "expiry") {
      // Step 4.
      if (trail.endedAt === null) trail.endedAt = index;
    } else if (kind === "check") {
      // Step 5.
      judged++;
      if (decision === "confirm") trail.confirmations.push({ scopes, resource, deadline, answered: false });
      else if (decision === "escalate" && escalationId !== null) trail.escalations.set(escalationId, { deadline, resolved: false });
      if (decision === "allow" || decision === "confirm" || decision === "escalate") {
        const denied = authorizationDenies(trail, scopes, resource, time);
        if (denied) problem = `${decision}, but ${denied}`;
        else if (rules !== null) {
          const wanted = rulesDecide(rules, scopes);
          if (wanted !== decision) problem = `${decision}, but the scope rules of log index ${rulesAt} call for ${wanted}`;
        }
      }
    } else if (kind === "confirmation") {
      // Step 6: a refused attempt answers nothing.
      judged++;
      let answered: OpenConfirmation | null = null;
      if (b.reason !== "confirmation_used" && b.reason !== "confirmation_expired") {
        for (const c of trail.confirmations) {
          const open = !c.answered && sameScopes(c.scopes, scopes) && c.resource === resource && (c.deadline === null || time < c.deadline);
          // The first deadline; no deadline last; equal deadlines: the one opened first.
          if (open && (answered === null || sooner(c.deadline, answered.deadline))) answered = c;
        }
        if (answered) answered.answered = true;
      }
      if (decision === "allow") {
        const denied = answerDenies(trail, b);
        if (denied) problem = `allow, but ${denied}`;
        else if (!answered) problem = "allow, but it answers no open confirmation of this request";
      }
    } else if (kind === "escalation.resolved") {
      // Step 7.
      judged++;
      const esc = escalationId === null ? undefined : trail.escalations.get(escalationId);
      const wasResolved = esc?.resolved ?? false;
      if (esc) esc.resolved = true;
      if (decision === "allow") {
        const denied = answerDenies(trail, b);
        if (denied) problem = `allow, but ${denied}`;
        else if (!esc) problem = "allow, but no escalate check of this trail opened its escalation";
        else if (wasResolved) problem = "allow, but its escalation was already resolved";
        else if (esc.deadline !== null && time >= esc.deadline) problem = "allow, but it came after its escalation's deadline";
      }
    }
    if (problem) report.add("decision_unjustified", `receipt ${String(b.id)} (log index ${index}): ${problem}`);
  }
  return judged;
}

/**
 * §7.2, then §7.4: an evidence bundle (JSON Lines, from an export). Pinned to `keys` when given
 * (else its own key set: `valid_unpinned` at best); `checkpoints`: signed notes kept from before,
 * which prove the log only grew. `semantics` (§7.4, re-deriving every allow, confirm and escalate
 * from the log, `decision_unjustified` when one does not follow): `null` (the default) runs it for
 * log exports only, `true` also for an authorization export (grant, revocation and expiry only:
 * it holds no scope rules), `false` never. It runs only on a bundle without other findings;
 * `report.decisionsChecked` says how many decisions it judged. `witness` (`witnessPolicy(...)`,
 * §7.5) applies to every checkpoint of the bundle, of its receipts and of `checkpoints`, as for
 * `verifyReceipt`. Unusable input throws `UnusableInput`.
 */
export function verifyBundle(
  bundle: Uint8Array | string,
  keys?: DocumentInput | KeySet | null,
  checkpoints: string[] = [],
  semantics: boolean | null = null,
  witness: WitnessPolicy | null = null,
): Report {
  const data = typeof bundle === "string" ? new TextEncoder().encode(bundle) : bundle;
  const pinned = keys === undefined || keys === null ? null : readKeySet(keys);
  const report = new Report();
  if (witness) report.notes.push(witness.describe());
  const lines = splitLines(data);
  if (lines.length === 0) throw new UnusableInput("empty bundle");
  const [headerWs, scope] = parseHeader(lines[0]![1]);
  const records: Records = { keySets: [], checkpoints: [], consistency: [], receipts: [] };
  for (const [n, line] of lines.slice(1)) readRecord(n, line, records, report);
  const ks = chooseKeys(records, pinned, headerWs, report);
  const cps = new Checkpoints(ks);
  const witnessing = new Witnessing(witness);
  [...records.checkpoints, ...checkpoints].forEach((note, i) => {
    const cp = cps.open(note);
    if (cp instanceof CheckpointError) report.add(cp.code, `checkpoint #${i + 1}: ${cp.detail}`);
    else witnessing.check(note, `checkpoint #${i + 1}`, report); // §7.5
  });
  const leaves: Leaf[] = [];
  for (const [n, doc] of records.receipts) {
    const leaf = receiptSteps(doc, ks, cps, report, `line ${n}`, 3, witnessing);
    if (leaf) leaves.push(leaf);
  }
  const opened = cps.opened();
  const byIndex = checkLog(leaves, report);
  const ends = checkTrails(leaves, scope, report);
  checkScope(leaves, scope, ends, byIndex, opened, report);
  checkCheckpoints(opened, byIndex, records.consistency, report);
  if (semantics ?? (scope.kind === "log")) {
    // §7.4: against a history with a hole or an altered receipt an honest decision could look
    // unjustified, so only a bundle without findings is judged.
    if (report.findings.length) report.notes.push("decisions not re-derived: the bundle already has findings (§7.4)");
    else {
      report.decisionsChecked = checkSemantics(leaves, report);
      report.notes.push(`decisions re-derived from the log: ${report.decisionsChecked}`);
    }
  }
  return report;
}

// Re-exported for callers that read documents themselves.
export { BadNumber, JsonFloat };
