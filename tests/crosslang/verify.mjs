#!/usr/bin/env node
// Independent verifier for Allowly receipts and evidence bundles (Node 20, ESM).
//
// Written from docs/receipt-format.md ONLY (the normative spec), without reading the
// Rust implementation, to show that the spec is complete. Section numbers (§) below
// refer to that document.
//
// Usage:
//   node verify.mjs vectors MANIFEST
//   node verify.mjs receipt FILE --keys KEYS [--witness-key VKEY ... --witness-quorum N]
//   node verify.mjs bundle FILE [--keys KEYS] [--checkpoint NOTE_FILE ...]
//                               [--witness-key VKEY ... --witness-quorum N]
//
// Exit status: 0 valid, 1 integrity failure, 2 coverage gap, 64 unusable input / usage.
//
// Dependencies: npm `canonicalize` (RFC 8785) and node:crypto (SHA-256, Ed25519).

import { createHash, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import canonicalize from 'canonicalize';

// ---------------------------------------------------------------------------
// §8 Findings and outcomes
// ---------------------------------------------------------------------------

const INTEGRITY = 'integrity';
const COVERAGE = 'coverage';

const FINDING_CLASS = {
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
  // §7.5, only with a witness policy (--witness-key ... --witness-quorum N); without one,
  // cosignatures are signature lines by unknown keys, ignored.
  witness_cosignature_invalid: INTEGRITY,
  witness_quorum_not_met: COVERAGE,
};

const EXIT_VALID = 0;
const EXIT_INTEGRITY = 1;
const EXIT_COVERAGE = 2;
const EXIT_VALID_UNPINNED = 3;
const EXIT_UNUSABLE = 64;

/** Unusable input (§6.2, §7.1 steps 1-2, §7.2 steps 1-2): the verifier stops, exit 64. */
class Unusable extends Error {}

class Report {
  constructor() {
    this.findings = []; // [code, detail]
    this.notes = [];
    // §7.2 step 2: the bundle's own keys were used (none pinned); "valid" becomes "valid_unpinned".
    this.unpinned = false;
  }

  add(code, detail) {
    if (!(code in FINDING_CLASS)) throw new Error(`unknown finding ${code}`);
    this.findings.push([code, detail]);
  }

  codes() {
    return new Set(this.findings.map(([code]) => code));
  }

  outcome() {
    const classes = new Set([...this.codes()].map((c) => FINDING_CLASS[c]));
    if (classes.has(INTEGRITY)) return 'integrity_failure';
    if (classes.has(COVERAGE)) return 'coverage_gap';
    return this.unpinned ? 'valid_unpinned' : 'valid';
  }

  exitCode() {
    return {
      valid: EXIT_VALID,
      integrity_failure: EXIT_INTEGRITY,
      coverage_gap: EXIT_COVERAGE,
      valid_unpinned: EXIT_VALID_UNPINNED,
    }[this.outcome()];
  }
}

// ---------------------------------------------------------------------------
// §2 Encodings
// ---------------------------------------------------------------------------

const MAX_SAFE_INT = 2 ** 53 - 1;
const HASH_RE = /^[0-9a-f]{64}$/;
const KEY_ID_RE = /^[0-9a-f]{8}$/;
const ID_RE = /^[A-Za-z0-9_-]{1,128}$/;
const TIME_RE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.[0-9]{3}Z$/;
const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const isStr = (v) => typeof v === 'string';
/** A JSON integer: our parser yields a JS number only for literals without fraction/exponent. */
const isInt = (v) => typeof v === 'number';
const isHash = (v) => isStr(v) && HASH_RE.test(v);
const isKeyId = (v) => isStr(v) && KEY_ID_RE.test(v);
const isId = (v) => isStr(v) && ID_RE.test(v);
const isArr = (v) => Array.isArray(v);
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v)
  && !(v instanceof FloatLit) && !(v instanceof BadNumber);
const has = (obj, k) => Object.hasOwn(obj, k);
const keysEqual = (obj, names) => {
  const ks = Object.keys(obj);
  return ks.length === names.length && names.every((n) => has(obj, n));
};

/**
 * `YYYY-MM-DDTHH:MM:SS.sssZ`, a real UTC instant, years 1970-9999.
 * The spec says RFC 3339; we also require a real calendar date and reject leap
 * second 60 (equal instants are equal strings, so one spelling per instant).
 */
function isTime(v) {
  if (!isStr(v)) return false;
  const m = TIME_RE.exec(v);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1).map(Number);
  if (year < 1970 || year > 9999 || month < 1 || month > 12) return false;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
  return day >= 1 && day <= days && hour <= 23 && minute <= 59 && second <= 59;
}

/** Standard base64 with padding (RFC 4648 §4), canonical (unused bits zero); Buffer or null. */
function b64decodeStrict(s) {
  if (!isStr(s) || !B64_RE.test(s)) return null;
  const raw = Buffer.from(s, 'base64');
  return raw.toString('base64') === s ? raw : null;
}

const sha256 = (...parts) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

// ---------------------------------------------------------------------------
// §3 Strict (I-JSON) reading and canonical JSON
// ---------------------------------------------------------------------------
// JSON.parse silently keeps the last of duplicate members and rounds big integers, so
// we parse ourselves. Like the Python verifier, the parser *records* the §3 violations
// in the tree (duplicate names, BadNumber, lone surrogates) so the caller can tell
// whether they lie inside a receipt body (body_not_canonical) or around it.

// "Nesting deeper than 128 levels, counted over the whole document (an envelope is level 1,
// its body level 2), is rejected." Levels are counted from the top of the JSON text being
// read: a receipt document (envelope 1, body 2), a key set file (1), or one bundle line
// (record 1, envelope or key set 2, body 3).
const MAX_DEPTH = 128;
// Where a receipt body sits in the documents this verifier reads (see MAX_DEPTH).
const BODY_DEPTH_IN_RECEIPT = 2;
const BODY_DEPTH_IN_BUNDLE = 3;
// The smallest double that ECMAScript prints with an exponent (Number.prototype.toString).
const ES_EXPONENT_FROM = 1e21;

/** Placeholder for a number literal §3 forbids (unsafe integer, overflow to ±inf). */
class BadNumber {
  constructor(text, why) {
    this.text = text;
    this.why = why;
  }
}

/** A number written with a fraction or exponent: not a JSON integer for §4 type checks;
 *  `canonicalize` serializes it through toJSON as the IEEE double it denotes. */
class FloatLit {
  constructor(value) {
    this.value = value;
  }

  toJSON() {
    return this.value;
  }
}

class JsonSyntaxError extends Error {}

/** Objects (null-prototype, so "__proto__" is an ordinary member) -> repeated names. */
const DUPLICATES = new WeakMap();

const NUMBER_RE = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parse JSON bytes (RFC 8259 grammar, UTF-8), recording §3 violations in the tree. */
function parseJson(bytes) {
  let text;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw new JsonSyntaxError('not UTF-8');
  }
  if (maxNesting(text) > 10000) throw new JsonSyntaxError('nesting far too deep to read');
  let i = 0;
  const fail = (why) => {
    throw new JsonSyntaxError(`${why} at offset ${i}`);
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };

  function parseString() {
    i++; // opening quote
    let out = '';
    for (;;) {
      if (i >= text.length) fail('unterminated string');
      const ch = text[i];
      const code = text.charCodeAt(i);
      if (ch === '"') {
        i++;
        return out;
      }
      if (code < 0x20) fail('control character in string');
      if (ch !== '\\') {
        out += ch;
        i++;
        continue;
      }
      const e = text[i + 1];
      if (e === 'u') {
        const hex = text.slice(i + 2, i + 6);
        if (!/^[0-9A-Fa-f]{4}$/.test(hex)) fail('bad \\u escape');
        out += String.fromCharCode(parseInt(hex, 16)); // lone surrogates survive; checked later
        i += 6;
      } else if (e !== undefined && has(ESCAPES, e)) {
        out += ESCAPES[e];
        i += 2;
      } else {
        fail('bad escape');
      }
    }
  }

  function parseNumber() {
    NUMBER_RE.lastIndex = i;
    const m = NUMBER_RE.exec(text);
    if (!m) fail('bad number');
    i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = BigInt(m[0]);
      return n >= -BigInt(MAX_SAFE_INT) && n <= BigInt(MAX_SAFE_INT)
        ? Number(n) : new BadNumber(m[0], 'integer beyond ±(2^53-1)');
    }
    const f = Number(m[0]);
    if (!Number.isFinite(f)) return new BadNumber(m[0], 'number overflows to infinity');
    // §3: a number whose canonical form would be an integer literal beyond ±(2^53-1) is
    // rejected (e.g. 1e20 prints as 100000000000000000000). ECMAScript prints an integral
    // double below 1e21 in plain decimal, and from 1e21 on with an exponent.
    if (Number.isInteger(f) && Math.abs(f) > MAX_SAFE_INT && Math.abs(f) < ES_EXPONENT_FROM) {
      return new BadNumber(m[0], 'number whose canonical form is an integer beyond ±(2^53-1)');
    }
    return new FloatLit(f);
  }

  function parseValue() {
    ws();
    const ch = text[i];
    if (ch === '{') {
      i++;
      const obj = Object.create(null);
      const dups = [];
      ws();
      if (text[i] === '}') {
        i++;
      } else {
        for (;;) {
          ws();
          if (text[i] !== '"') fail('expected a member name');
          const key = parseString();
          ws();
          if (text[i] !== ':') fail("expected ':'");
          i++;
          const value = parseValue();
          if (has(obj, key)) dups.push(key); // compared after unescaping
          obj[key] = value;
          ws();
          if (text[i] === ',') {
            i++;
          } else if (text[i] === '}') {
            i++;
            break;
          } else {
            fail("expected ',' or '}'");
          }
        }
      }
      DUPLICATES.set(obj, dups);
      return obj;
    }
    if (ch === '[') {
      i++;
      const arr = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(parseValue());
        ws();
        if (text[i] === ',') {
          i++;
        } else if (text[i] === ']') {
          i++;
          return arr;
        } else {
          fail("expected ',' or ']'");
        }
      }
    }
    if (ch === '"') return parseString();
    if (ch === '-' || (ch >= '0' && ch <= '9')) return parseNumber();
    for (const [word, value] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return value;
      }
    }
    return fail('unexpected character');
  }

  const value = parseValue();
  ws();
  if (i !== text.length) fail('extra data after the JSON value');
  return value;
}

/** Bracket depth of JSON text, ignoring strings (a cheap guard before recursing). */
function maxNesting(text) {
  let depth = 0;
  let best = 0;
  let inString = false;
  let escaped = false;
  for (const ch of text) {
    if (inString) {
      if (escaped) escaped = false;
      else if (ch === '\\') escaped = true;
      else if (ch === '"') inString = false;
    } else if (ch === '"') {
      inString = true;
    } else if (ch === '[' || ch === '{') {
      depth++;
      if (depth > best) best = depth;
    } else if (ch === ']' || ch === '}') {
      depth--;
    }
  }
  return best;
}

const hasLoneSurrogate = (s) => !s.isWellFormed();

/**
 * The §3 input-rule violations inside `value` (`value` itself at nesting `depth`).
 * Members of the top-level object named in `skip` are not descended into.
 */
function ijsonViolations(value, depth = 1, skip = []) {
  const out = [];
  if (value instanceof BadNumber) {
    out.push(`${value.why}: ${value.text.slice(0, 40)}`);
  } else if (isStr(value)) {
    if (hasLoneSurrogate(value)) out.push('lone surrogate in a string');
  } else if (isArr(value) || isObj(value)) {
    if (depth > MAX_DEPTH) return [`nesting deeper than ${MAX_DEPTH} levels`];
    if (isArr(value)) {
      for (const v of value) out.push(...ijsonViolations(v, depth + 1));
    } else {
      for (const dup of DUPLICATES.get(value) ?? []) out.push(`duplicate member name ${JSON.stringify(dup)}`);
      for (const k of Object.keys(value)) {
        if (hasLoneSurrogate(k)) out.push('lone surrogate in a member name');
        if (!skip.includes(k)) out.push(...ijsonViolations(value[k], depth + 1));
      }
    }
  }
  return out;
}

/** RFC 8785 (JCS) bytes of an already-validated value. */
const canonicalJson = (value) => Buffer.from(canonicalize(value), 'utf8');

// ---------------------------------------------------------------------------
// §5.1-§5.3 Merkle tree (RFC 9162). Sizes and indexes are BigInt (u64 sizes).
// ---------------------------------------------------------------------------

const leafHash = (canonicalBody) => sha256(Buffer.from([0]), canonicalBody);
const nodeHash = (left, right) => sha256(Buffer.from([1]), left, right);

/** RFC 9162 §2.1.1 MTH over leaf hashes. */
function merkleRoot(leaves) {
  const n = leaves.length;
  if (n === 0) return sha256(Buffer.alloc(0));
  if (n === 1) return leaves[0];
  let k = 1;
  while (k * 2 < n) k *= 2; // largest power of two smaller than n
  return nodeHash(merkleRoot(leaves.slice(0, k)), merkleRoot(leaves.slice(k)));
}

/** §5.2, RFC 9162 §2.1.3.2. index and size are BigInt. */
function verifyInclusion(index, size, proof, leaf, root) {
  if (index < 0n || index >= size) return false;
  let fn = index;
  let sn = size - 1n;
  let x = leaf;
  for (const c of proof) {
    if (sn === 0n) return false;
    if (fn % 2n === 1n || fn === sn) {
      x = nodeHash(c, x);
      while (fn !== 0n && fn % 2n === 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      x = nodeHash(x, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && x.equals(root);
}

/** §5.3, RFC 9162 §2.1.4.2, plus the spec's m = n and m = 0 cases. m, n are BigInt. */
function verifyConsistency(m, n, proof, oldRoot, newRoot) {
  if (m < 0n || m > n) return false;
  if (m === n) return proof.length === 0 && oldRoot.equals(newRoot);
  if (m === 0n) return proof.length === 0;
  if (proof.length === 0) return false; // step 1
  const path = [...proof];
  if ((m & (m - 1n)) === 0n) path.unshift(oldRoot); // step 2: m is a power of two
  let fn = m - 1n; // step 3
  let sn = n - 1n;
  while (fn & 1n) { // step 4
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0]; // step 5
  let sr = path[0];
  for (const c of path.slice(1)) { // step 6
    if (sn === 0n) return false;
    if ((fn & 1n) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (fn !== 0n && !(fn & 1n)) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return fr.equals(oldRoot) && sr.equals(newRoot) && sn === 0n; // step 7
}

// ---------------------------------------------------------------------------
// Strict Ed25519 (§5.4): verify_strict / RFC 8032 §5.1.7 cofactorless
// ---------------------------------------------------------------------------
// node:crypto (OpenSSL) already checks the cofactorless equation by comparing the
// encoding of [S]B - [k]A with R. What it does not promise, and we check here first:
//   1. S < L (canonical scalar), RFC 8032 §5.1.7 step 1;
//   2. A (public key) and R decode as curve points under RFC 8032 §5.1.3: y < p,
//      x recoverable, and not (x = 0 with the sign bit set);
//   3. neither A nor R has small order, i.e. [8]P is not the identity (this covers
//      all 8 torsion points, whatever their encoding) -- as ed25519-dalek's
//      verify_strict does.

const ED_P = 2n ** 255n - 19n;
const ED_L = 2n ** 252n + 27742317777372353535851937790883648493n;
const mod = (a) => ((a % ED_P) + ED_P) % ED_P;
function modPow(base, exp) {
  let result = 1n;
  let b = mod(base);
  let e = exp;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % ED_P;
    b = (b * b) % ED_P;
    e >>= 1n;
  }
  return result;
}
const ED_D = mod(-121665n * modPow(121666n, ED_P - 2n));
const ED_SQRT_M1 = modPow(2n, (ED_P - 1n) / 4n);

const leBytesToBigInt = (buf) => {
  let n = 0n;
  for (let k = buf.length - 1; k >= 0; k--) n = (n << 8n) | BigInt(buf[k]);
  return n;
};

/** RFC 8032 §5.1.3 point decoding to extended coordinates, or null. */
function edDecodePoint(b) {
  if (b.length !== 32) return null;
  let y = leBytesToBigInt(b);
  const sign = y >> 255n;
  y &= (1n << 255n) - 1n;
  if (y >= ED_P) return null; // non-canonical y
  const u = mod(y * y - 1n);
  const v = mod(ED_D * y * y + 1n);
  const x2 = mod(u * modPow(v, ED_P - 2n));
  let x;
  if (x2 === 0n) {
    if (sign) return null; // x = 0 with sign bit 1
    x = 0n;
  } else {
    x = modPow(x2, (ED_P + 3n) / 8n);
    if (mod(x * x - x2) !== 0n) x = mod(x * ED_SQRT_M1);
    if (mod(x * x - x2) !== 0n) return null; // not on the curve
    if ((x & 1n) !== sign) x = ED_P - x;
  }
  return [x, y, 1n, mod(x * y)];
}

/** Edwards addition in extended coordinates (RFC 8032 §5.1.4); also doubles. */
function edAdd([x1, y1, z1, t1], [x2, y2, z2, t2]) {
  const a = mod((y1 - x1) * (y2 - x2));
  const b = mod((y1 + x1) * (y2 + x2));
  const c = mod(2n * t1 * t2 * ED_D);
  const d = mod(2n * z1 * z2);
  const e = b - a;
  const f = d - c;
  const g = d + c;
  const h = b + a;
  return [mod(e * f), mod(g * h), mod(f * g), mod(e * h)];
}

/** [8]P == identity (X = 0, Y = Z). */
function edIsSmallOrder(point) {
  let q = point;
  for (let k = 0; k < 3; k++) q = edAdd(q, q);
  const [x, y, z] = q;
  return mod(x) === 0n && mod(y - z) === 0n;
}

function ed25519VerifyStrict(publicKey, message, signature) {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  if (leBytesToBigInt(signature.subarray(32)) >= ED_L) return false; // non-canonical S
  const a = edDecodePoint(publicKey);
  const r = edDecodePoint(signature.subarray(0, 32));
  if (a === null || r === null || edIsSmallOrder(a) || edIsSmallOrder(r)) return false;
  try {
    const key = createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey).toString('base64url') },
      format: 'jwk',
    });
    return cryptoVerify(null, message, key, signature);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// §6.2 Workspace key set
// ---------------------------------------------------------------------------

/** C2SP signed-note key id: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]. */
const computeKeyId = (name, publicKey) =>
  sha256(Buffer.from(name, 'utf8'), Buffer.from([0x0a, 0x01]), publicKey).subarray(0, 4).toString('hex');

/** not_before inclusive, not_after exclusive; §2 times compare as strings. */
const keyValidAt = (key, t) => key.notBefore <= t && (key.notAfter === null || t < key.notAfter);

const KEYSET_MEMBERS = ['workspace_id', 'origin', 'keys'];
const KEY_MEMBERS = ['key_id', 'name', 'algorithm', 'public_key', 'vkey', 'not_before', 'not_after', 'status'];

/**
 * Check every §6.2 rule; throw Unusable on the first broken one.
 * `depth` is the nesting level of the key set in the document it was read from (§3):
 * 1 for a key set file, 2 inside a bundle `keys` record. A key set carried in a bundle
 * that breaks these rules is unusable input too, pinned keys or not (§6.2).
 */
function loadKeyset(doc, depth = 1) {
  const bad = ijsonViolations(doc, depth);
  if (bad.length) throw new Unusable(`key set: ${bad.join('; ')}`);
  if (!isObj(doc)) throw new Unusable('key set: not a JSON object');
  if (!keysEqual(doc, KEYSET_MEMBERS)) throw new Unusable(`key set: must have exactly the members ${KEYSET_MEMBERS}`);
  const ws = doc.workspace_id;
  const { origin, keys } = doc;
  if (!isId(ws)) throw new Unusable('key set: workspace_id is not an id');
  if (origin !== `allowly/${ws}`) throw new Unusable('key set: origin is not allowly/<workspace_id>');
  if (!isArr(keys)) throw new Unusable('key set: keys is not an array');
  const out = keys.map((k, i) => {
    const where = `key set: keys[${i}]`;
    if (!isObj(k)) throw new Unusable(`${where} is not an object`);
    if (!keysEqual(k, KEY_MEMBERS)) throw new Unusable(`${where}: must have exactly the members ${KEY_MEMBERS}`);
    if (k.name !== origin) throw new Unusable(`${where}: name is not the origin`);
    if (k.algorithm !== 'ed25519') throw new Unusable(`${where}: algorithm is not ed25519`);
    const pk = b64decodeStrict(k.public_key);
    if (pk === null || pk.length !== 32) throw new Unusable(`${where}: public_key is not base64 of 32 bytes`);
    // §6.2: a canonical encoding of a point that is not of small order (a small-order key
    // would fail every strict verification: it is a broken key set, not a bad signature).
    const point = edDecodePoint(pk);
    if (point === null || edIsSmallOrder(point)) {
      throw new Unusable(`${where}: public_key is not a canonical Ed25519 point of large order`);
    }
    if (!isKeyId(k.key_id) || k.key_id !== computeKeyId(origin, pk)) {
      throw new Unusable(`${where}: key_id does not match name and public key`);
    }
    const vkey = `${origin}+${k.key_id}+${Buffer.concat([Buffer.from([1]), pk]).toString('base64')}`;
    if (k.vkey !== vkey) throw new Unusable(`${where}: vkey is not <name>+<key_id>+<base64(0x01 ‖ key)>`);
    const nb = k.not_before;
    if (!isTime(nb)) throw new Unusable(`${where}: not_before is not a time`);
    const na = k.not_after;
    if (na !== null && (!isTime(na) || !(na > nb))) {
      throw new Unusable(`${where}: not_after is not null, or not a time after not_before`);
    }
    if (k.status !== (na === null ? 'active' : 'retired')) {
      throw new Unusable(`${where}: status must be 'active' when not_after is null, else 'retired'`);
    }
    return { keyId: k.key_id, name: origin, publicKey: pk, notBefore: nb, notAfter: na };
  });
  // §6.2: at least one key, and one entry per key id (a second entry for the same key could
  // widen its validity window).
  if (!out.length) throw new Unusable('key set: keys is empty');
  if (new Set(out.map((k) => k.keyId)).size !== out.length) throw new Unusable('key set: a key_id appears twice');
  return { workspaceId: ws, origin, keys: out, canonical: canonicalize(doc) };
}

function readKeysetFile(path) {
  let doc;
  try {
    doc = parseJson(readFileSync(path));
  } catch (e) {
    throw new Unusable(`key set ${path}: ${e.message}`);
  }
  return loadKeyset(doc);
}

// ---------------------------------------------------------------------------
// §5.4 Checkpoints (C2SP tlog-checkpoint + signed-note)
// ---------------------------------------------------------------------------

const EM_DASH_PREFIX = '\u2014 ';
/** Go's unicode.IsSpace: \t \n \v \f \r, space, U+0085, U+00A0 and the separators (Zs, Zl, Zp). */
const GO_SPACE_RE = /[\t\n\v\f\r \u0085\u00a0\p{Z}]/u;

class CheckpointError extends Error {
  constructor(code, detail) {
    super(detail);
    this.code = code;
    this.detail = detail;
  }
}

/**
 * Split a signed note into {text, lines, signatures: [{name, blob}]}.
 * Structural rules of §5.4 (C2SP signed-note); failures are checkpoint_malformed.
 */
function parseSignedNote(note) {
  const bad = (why) => new CheckpointError('checkpoint_malformed', why);
  if (!isStr(note) || hasLoneSurrogate(note)) throw bad('not a UTF-8 string');
  // §5.4: the control characters are U+0000-U+001F only (as in C2SP and Go's note
  // package); U+007F and above, including the C1 controls, are allowed in a note.
  if (/[\u0000-\u0009\u000b-\u001f]/.test(note)) throw bad('control character (U+0000-U+001F) other than \\n');
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw bad('no blank line before the signatures');
  const text = note.slice(0, split + 1);
  const sigBlock = note.slice(split + 2);
  if (!sigBlock) throw bad('no signature line');
  if (!sigBlock.endsWith('\n')) throw bad('signature lines must end with \\n');
  const signatures = sigBlock.slice(0, -1).split('\n').map((line) => {
    if (!line.startsWith(EM_DASH_PREFIX)) throw bad('signature line does not start with an em dash and a space');
    const rest = line.slice(EM_DASH_PREFIX.length);
    const sp = rest.indexOf(' ');
    if (sp < 0) throw bad('bad key name in signature line');
    const name = rest.slice(0, sp);
    // Go's unicode.IsSpace, which C2SP signed-note uses to reject key names with spaces.
    if (!name || name.includes('+') || GO_SPACE_RE.test(name)) throw bad('bad key name in signature line');
    const blob = b64decodeStrict(rest.slice(sp + 1));
    if (blob === null || blob.length < 5) throw bad('signature is not base64 of a key id and a signature');
    return { name, blob };
  });
  return { text, lines: text.slice(0, -1).split('\n'), signatures };
}

/**
 * §5.4 checkpoint text syntax. §7.1 step 8 runs it only after the signatures were checked
 * (C2SP: the text is not interpreted before it is verified), so a malformed text signed by an
 * unknown key is checkpoint_unknown_key.
 */
function checkCheckpointLines(lines) {
  const bad = (why) => new CheckpointError('checkpoint_malformed', why);
  if (lines.length < 3) throw bad('checkpoint needs an origin, a size and a root line');
  const [origin, sizeLine, rootLine, ...extensions] = lines;
  if (!origin) throw bad('empty origin line');
  if (!/^(?:0|[1-9][0-9]*)$/.test(sizeLine) || BigInt(sizeLine) >= 2n ** 64n) {
    throw bad('tree size is not canonical decimal within u64');
  }
  const root = b64decodeStrict(rootLine);
  if (root === null || root.length !== 32) throw bad('root is not canonical base64 of 32 bytes');
  if (extensions.some((e) => !e)) throw bad('empty extension line (or more than one blank line)');
}

/** §7.1 step 8, in the order the spec lists the checks; throws CheckpointError. */
function openCheckpoint(note, keyset) {
  const { text, lines, signatures } = parseSignedNote(note);

  // Signatures by keys of the set (same name and key id); all others are ignored.
  const textBytes = Buffer.from(text, 'utf8');
  const verified = [];
  let failed = 0;
  let known = 0;
  for (const { name, blob } of signatures) {
    for (const key of keyset.keys) {
      if (key.name === name && key.keyId === blob.subarray(0, 4).toString('hex')) {
        known++;
        if (ed25519VerifyStrict(key.publicKey, textBytes, blob.subarray(4))) verified.push(key);
        else failed++;
      }
    }
  }
  if (failed) throw new CheckpointError('checkpoint_signature_invalid', "a workspace key's signature does not verify");
  if (!known) throw new CheckpointError('checkpoint_unknown_key', 'no signature by a key of the set');

  checkCheckpointLines(lines);
  if (lines[0] !== keyset.origin) {
    throw new CheckpointError('checkpoint_origin_mismatch', `origin ${JSON.stringify(lines[0])} is not ${keyset.origin}`);
  }

  // Exactly one extension line, `time <time>`.
  const extensions = lines.slice(3);
  const times = extensions.filter((e) => e.startsWith('time '));
  if (times.length !== 1 || extensions.length !== 1 || !isTime(times[0].slice(5))) {
    throw new CheckpointError('checkpoint_malformed', "needs exactly one extension line 'time <time>'");
  }
  const t = times[0].slice(5);

  const signers = verified.filter((k) => keyValidAt(k, t)).map((k) => k.keyId);
  if (!signers.length) throw new CheckpointError('key_not_valid_at_time', `no verified signer was valid at ${t}`);
  return { origin: lines[0], size: BigInt(lines[1]), root: b64decodeStrict(lines[2]), time: t, signers };
}

/** Each distinct checkpoint note is opened once (§7.2 step 4). */
class CheckpointCache {
  constructor(keyset) {
    this.keyset = keyset;
    this.results = new Map(); // note -> checkpoint | CheckpointError
    this.where = new Map(); // note -> where it was first seen
  }

  /** `where` names the first place the note was seen, for the witness policy's findings. */
  open(note, where = 'checkpoint') {
    if (!this.results.has(note)) {
      this.where.set(note, where);
      try {
        this.results.set(note, openCheckpoint(note, this.keyset));
      } catch (e) {
        if (!(e instanceof CheckpointError)) throw e;
        this.results.set(note, e);
      }
    }
    return this.results.get(note);
  }

  opened() {
    return [...this.results.values()].filter((r) => !(r instanceof CheckpointError));
  }

  /** [note, where] of every note that opened. */
  openedNotes() {
    return [...this.results].filter(([, r]) => !(r instanceof CheckpointError)).map(([n]) => [n, this.where.get(n)]);
  }
}

// ---------------------------------------------------------------------------
// §7.5 Witness policy (§5.4 "Cosignatures", c2sp.org/tlog-cosignature), optional
// ---------------------------------------------------------------------------

/** Signature type byte of `cosignature/v1` keys (the workspace's own keys are 0x01). */
const COSIGNATURE_V1 = 0x04;
/** A cosignature's timestamp: 8 bytes, big-endian, at most 2^63 - 1 (tlog-cosignature). */
const MAX_COSIGNATURE_TIME = 2n ** 63n - 1n;
/** Key id (4) + timestamp (8) + Ed25519 signature (64). */
const COSIGNATURE_BLOB_LENGTH = 4 + 8 + 64;

/** SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4], hex. */
const cosignerKeyId = (name, publicKey) =>
  sha256(Buffer.from(name, 'utf8'), Buffer.from([0x0a, COSIGNATURE_V1]), publicKey).subarray(0, 4).toString('hex');

/**
 * A witness verifier key `<name>+<key id>+<base64(0x04 ‖ 32-byte key)>` (C2SP signed-note
 * "Verifier keys"), as --witness-key gives it; throws Unusable (bad usage, exit 64) unless the
 * name is a key name (§5.4: no '+', no space, no control character), the key id is 8
 * lowercase hex digits and the one the name and key give, and the key is a canonical Ed25519
 * point of large order (a key no strict verification could ever accept is a mistake, not a
 * witness).
 */
function parseWitnessKey(vkey) {
  const bad = (why) => new Unusable(`--witness-key ${JSON.stringify(vkey)}: ${why}`);
  // The name has no '+' and the key id is hex, so the first two '+' separate; base64 may hold '+'.
  const first = vkey.indexOf('+');
  const second = first < 0 ? -1 : vkey.indexOf('+', first + 1);
  if (second < 0) throw bad('not <name>+<key id>+<key>');
  const [name, keyId, b64] = [vkey.slice(0, first), vkey.slice(first + 1, second), vkey.slice(second + 1)];
  if (!name || GO_SPACE_RE.test(name) || /[\u0000-\u001f]/.test(name)) throw bad('not a key name');
  if (!KEY_ID_RE.test(keyId)) throw bad('the key id is not 8 lowercase hex digits');
  const raw = b64decodeStrict(b64);
  if (raw === null || raw.length !== 33) throw bad('the key is not canonical base64 of 33 bytes');
  if (raw[0] !== COSIGNATURE_V1) throw bad(`not a cosigner key (type ${raw[0]}, not ${COSIGNATURE_V1})`);
  const publicKey = raw.subarray(1);
  const point = edDecodePoint(publicKey);
  if (point === null || edIsSmallOrder(point)) throw bad('not a canonical Ed25519 point of large order');
  if (cosignerKeyId(name, publicKey) !== keyId) throw bad('the key id is not the one of this name and key');
  return { name, keyId, publicKey };
}

/**
 * The policy of --witness-key (repeated) and --witness-quorum N. N counts distinct public
 * keys: the signed message does not commit to the witness's name, so one key under two names
 * is one witness, and a quorum above the number of distinct keys could never be met (bad usage).
 */
function witnessPolicy(vkeys, quorumText) {
  const witnesses = vkeys.map(parseWitnessKey);
  const distinct = new Set(witnesses.map((w) => w.publicKey.toString('hex'))).size;
  // As a command line's unsigned integer: decimal, an optional '+'.
  const quorum = /^\+?[0-9]+$/.test(quorumText) ? Number(quorumText) : NaN;
  if (!(quorum >= 1 && quorum <= distinct)) {
    throw new Unusable(`--witness-quorum ${quorumText}: not between 1 and the ${distinct} distinct witness keys`);
  }
  return { witnesses, quorum };
}

/**
 * §7.5 on one checkpoint that opened: a line naming a policy witness (name and key id) that
 * does not verify is witness_cosignature_invalid, whatever the others; otherwise fewer than N
 * distinct public keys with a valid cosignature is witness_quorum_not_met.
 */
function judgeCosignatures(policy, note, where, report) {
  const { text, signatures } = parseSignedNote(note);
  const good = new Set();
  let failed = 0;
  for (const { name, blob } of signatures) {
    const id = blob.subarray(0, 4).toString('hex');
    // Every policy key the line names: two listed under one name and key id must both verify.
    for (const w of policy.witnesses.filter((k) => k.name === name && k.keyId === id)) {
      let ok = blob.length === COSIGNATURE_BLOB_LENGTH;
      if (ok) {
        const time = blob.readBigUInt64BE(4);
        // BigInt prints canonical decimal, as the message needs ("time <decimal>").
        const message = Buffer.concat([Buffer.from(`cosignature/v1\ntime ${time}\n`, 'utf8'), Buffer.from(text, 'utf8')]);
        ok = time <= MAX_COSIGNATURE_TIME && ed25519VerifyStrict(w.publicKey, message, blob.subarray(12));
      }
      if (ok) good.add(w.publicKey.toString('hex'));
      else failed++;
    }
  }
  if (failed) {
    report.add('witness_cosignature_invalid', `${where}: ${failed} cosignature(s) by a given witness key do not verify`);
  } else if (good.size < policy.quorum) {
    report.add('witness_quorum_not_met', `${where}: ${good.size} of the ${policy.quorum} required witnesses cosigned`);
  }
}

/** §7.5 once per distinct note that opened (a failed one already has its finding). */
function applyWitnessPolicy(policy, cache, report) {
  if (!policy) return;
  for (const [note, where] of cache.openedNotes()) judgeCosignatures(policy, note, where, report);
}

// ---------------------------------------------------------------------------
// §4 Receipt body
// ---------------------------------------------------------------------------

const KINDS = new Set(['authorization.created', 'check', 'confirmation', 'escalation.created',
  'escalation.resolved', 'revocation', 'expiry', 'key.rotated',
  'scope_rules.changed']); // 1.1
/** Kinds that are workspace events (§4.3): in no trail. */
const WORKSPACE_KINDS = new Set(['key.rotated', 'scope_rules.changed']);
const DECISIONS = new Set(['allow', 'deny', 'confirm', 'escalate']);
const FIRST_TABLE = ['v', 'id', 'workspace_id', 'authorization_id', 'seq', 'prev', 'log_index',
  'kind', 'decision', 'reason', 'scopes', 'resource', 'time', 'auth_state_hash'];

const isStrArray = (v) => isArr(v) && v.every(isStr);
const nullOr = (pred) => (v) => v === null || pred(v);

/** A verifier key <name>+<key id>+<base64(0x01 ‖ 32-byte key)> whose id matches. */
function checkVkey(vkey, keyId) {
  // The name has no '+' and the key id is hex, but base64 may contain '+'.
  if (!isStr(vkey)) return false;
  const first = vkey.indexOf('+');
  const second = vkey.indexOf('+', first + 1);
  if (first < 0 || second < 0) return false;
  const [name, kid, b64] = [vkey.slice(0, first), vkey.slice(first + 1, second), vkey.slice(second + 1)];
  const raw = b64decodeStrict(b64);
  return Boolean(name) && kid === keyId && raw !== null && raw.length === 33 && raw[0] === 1
    && computeKeyId(name, raw.subarray(1)) === kid;
}

/** A JSON integer that is a position or an index: 0 ≤ v (§2 bounds it by 2^53-1). */
const isNat = (v) => isInt(v) && v >= 0;
const isStrOrNull = nullOr(isStr);

const isGrant = (v) => isObj(v) && isStr(v.subject) && isStrArray(v.scopes) && isStrArray(v.resources)
  && has(v, 'expires_at') && nullOr(isTime)(v.expires_at)
  && has(v, 'metadata_hash') && nullOr(isHash)(v.metadata_hash);
const isApproval = (v) => isObj(v) && (v.outcome === 'approved' || v.outcome === 'declined') && isStr(v.by)
  && has(v, 'shown_hash') && nullOr(isHash)(v.shown_hash)
  // Format 1.1: the hash of the answerer's note, optional.
  && (!has(v, 'note_hash') || nullOr(isHash)(v.note_hash));
const isKeyMember = (v) => isObj(v) && isKeyId(v.key_id) && isKeyId(v.replaces) && checkVkey(v.vkey, v.key_id);

/** [member, check, what]: the JSON type and encoding of every member named in §4. */
const MEMBER_TYPES = [
  ['v', isInt, 'an integer'],
  ['id', isStr, 'a string'],
  ['workspace_id', isStr, 'a string'],
  ['authorization_id', isStrOrNull, 'a string or null'],
  ['seq', nullOr(isNat), 'a non-negative integer or null'],
  ['prev', nullOr(isHash), 'a hash or null'],
  ['log_index', isNat, 'a non-negative integer'],
  ['kind', (v) => isStr(v) && KINDS.has(v), 'a known kind'],
  ['decision', nullOr((v) => isStr(v) && DECISIONS.has(v)), 'allow/deny/confirm/escalate or null'],
  ['reason', isStrOrNull, 'a string or null'],
  ['scopes', isStrArray, 'an array of strings'],
  ['resource', isStrOrNull, 'a string or null'],
  ['time', isTime, 'a §2 time'],
  ['auth_state_hash', nullOr(isHash), 'a hash or null'],
  // Second table: typed whenever present, whatever the kind.
  ['grant', isGrant, 'an object {subject, scopes, resources, expires_at, metadata_hash}'],
  ['approval', isApproval, 'an object {outcome, by, shown_hash}'],
  ['escalation_id', isStr, 'a string'],
  ['context_hash', isHash, 'a hash'],
  ['key', isKeyMember, 'an object {key_id, vkey, replaces}'],
  // Format 1.1 (§4 second table).
  ['asked_authorization_id', isStrOrNull, 'a string'],
  ['expires_at', nullOr(isTime), 'a §2 time'],
  ['scope_rules', nullOr((v) => isObj(v) && Object.values(v).every((x) => x === 'confirm' || x === 'escalate')),
    'an object of confirm/escalate'],
];

/**
 * §7.1 step 4, first half: members of the first table that are missing, and members
 * named in §4 (first table, and second table whenever present, on any kind) whose JSON
 * type or encoding is wrong. Any of these: body_invalid, and verification stops.
 *
 * Readings (spec §4 / §7.1 step 4):
 * - an `id` member is read as a JSON string; whether it matches the §2 id form is the
 *   §4 rule "ids match §2", reported without stopping (see bodyRuleProblems);
 * - `seq` and `log_index` are positions, so a negative integer is the wrong encoding;
 * - the sub-members listed for `grant`, `approval` and `key` are all required, with the
 *   types listed; members they do not list are accepted (unknown members, §4);
 * - `key.vkey` is a §6.2 verifier key: <name>+<key id>+<base64(0x01 ‖ 32 bytes)>, its
 *   key id the one computed from name and key, and equal to `key.key_id`.
 */
function memberTypeProblems(body) {
  const p = FIRST_TABLE.filter((m) => !has(body, m)).map((m) => `missing member ${m}`);
  for (const [member, ok, what] of MEMBER_TYPES) {
    if (has(body, member) && !ok(body[member])) p.push(`${member} is not ${what}`);
  }
  return p;
}

/**
 * §7.1 step 4, second half: the §4 rules, on a body whose members were read. Each
 * broken rule is body_invalid, and verification continues.
 */
function bodyRuleProblems(body) {
  const p = [];
  const g = (m) => (has(body, m) ? body[m] : null); // only second-table members can be absent
  const { kind } = body;
  if (body.v !== 1) p.push('v is not 1');
  for (const m of ['id', 'workspace_id', 'authorization_id', 'escalation_id', 'asked_authorization_id']) {
    if (g(m) !== null && !isId(g(m))) p.push(`${m} is not a §2 id`);
  }
  // log_index ≤ 2^53-1 holds already: §3 rejects larger integer literals.
  // Format 1.1: reason unknown_authorization ⇔ asked_authorization_id present, and such a
  // body is a check denied outside any trail (a workspace event).
  const unknown = g('reason') === 'unknown_authorization' || g('asked_authorization_id') !== null;
  if (unknown) {
    const ok = kind === 'check' && g('decision') === 'deny' && g('reason') === 'unknown_authorization'
      && g('asked_authorization_id') !== null
      && ['authorization_id', 'seq', 'prev'].every((m) => g(m) === null);
    if (!ok) {
      p.push('an unknown_authorization check is a denied check with asked_authorization_id '
        + 'and null authorization_id, seq and prev');
    }
  } else if (WORKSPACE_KINDS.has(kind)) {
    if (['authorization_id', 'seq', 'prev'].some((m) => g(m) !== null)) {
      p.push(`${kind} must have null authorization_id, seq and prev`);
    }
  } else {
    if (g('authorization_id') === null || g('seq') === null) p.push('authorization_id and seq must be non-null');
    const seq0 = g('seq') === 0;
    const created = kind === 'authorization.created';
    const noPrev = g('prev') === null;
    if (!(seq0 === created && created === noPrev)) {
      p.push('seq = 0 ⇔ kind = authorization.created ⇔ prev = null is broken');
    }
    if (created && !has(body, 'grant')) p.push('authorization.created has no grant');
  }
  // §4.1, second table: the members each kind requires (null counts as absent). Every
  // answer has an approval but an escalation nobody answered in time (escalation_expired);
  // a check that escalates names its escalation. context_hash, and expires_at (1.0 has
  // none), are optional. A second-table member on another kind is not a broken rule (only
  // its type is checked): unknown-to-that-kind members are accepted like unknown members.
  const answered = kind === 'confirmation' || (kind === 'escalation.resolved' && g('reason') !== 'escalation_expired');
  if (answered && g('approval') === null) p.push(`${kind} has no approval`);
  const escalates = kind === 'escalation.created' || kind === 'escalation.resolved'
    || (kind === 'check' && g('decision') === 'escalate');
  if (escalates && g('escalation_id') === null) p.push(`${kind} has no escalation_id`);
  if (kind === 'key.rotated' && g('key') === null) p.push('key.rotated has no key');
  // Format 1.1: the rule set is in scope_rules.changed, and only there.
  if ((g('scope_rules') !== null) !== (kind === 'scope_rules.changed')) {
    p.push('scope_rules is present exactly in scope_rules.changed');
  }
  return p;
}

/**
 * §7.1 step 4. Returns {fatal, rules}: `fatal` non-empty means body_invalid and stop;
 * otherwise each entry of `rules` is a broken §4 rule (body_invalid, continue).
 */
function readBody(body) {
  if (!isObj(body)) return { fatal: ['body is not an object'], rules: [] };
  const fatal = memberTypeProblems(body);
  if (fatal.length) return { fatal, rules: [] };
  return { fatal: [], rules: bodyRuleProblems(body) };
}

// ---------------------------------------------------------------------------
// §6.1 Envelopes and §7.1 verification of one receipt
// ---------------------------------------------------------------------------

const SIGNED_MEMBERS = ['status', 'body', 'log_index', 'inclusion_proof', 'checkpoint'];
const PENDING_MEMBERS = ['status', 'receipt_id', 'log_index', 'leaf_hash', 'body'];

/**
 * §6.1 shape of a signed or pending receipt (ignoring what is inside `body`); problem or null.
 * Exactly the documented members, each of its type and encoding; any problem makes the
 * document unusable input (record_malformed for a bundle line). `depth` is the envelope's
 * nesting level (§3): 1 for a receipt document, 2 in a bundle line.
 */
function envelopeProblem(doc, depth = 1) {
  if (!isObj(doc)) return 'receipt is not a JSON object';
  const bad = ijsonViolations(doc, depth, ['body']);
  if (bad.length) return bad.join('; ');
  if (doc.status === 'signed') {
    if (!keysEqual(doc, SIGNED_MEMBERS)) return `signed receipt must have exactly ${SIGNED_MEMBERS}`;
    if (!(isArr(doc.inclusion_proof) && doc.inclusion_proof.every(isHash))) {
      return 'inclusion_proof is not an array of hashes';
    }
    if (!isStr(doc.checkpoint)) return 'checkpoint is not a string';
  } else if (doc.status === 'pending') {
    if (!keysEqual(doc, PENDING_MEMBERS)) return `pending receipt must have exactly ${PENDING_MEMBERS}`;
    if (!isId(doc.receipt_id)) return 'receipt_id is not an id';
    if (!isHash(doc.leaf_hash)) return 'leaf_hash is not a hash';
  } else {
    return "status is neither 'signed' nor 'pending'";
  }
  if (!(isInt(doc.log_index) && doc.log_index >= 0)) return 'log_index is not a non-negative integer';
  if (!isObj(doc.body)) return 'body is not an object';
  return null;
}

/**
 * §7.1 steps 3-9 on an envelope already checked by envelopeProblem.
 * Returns the leaf when the body could be read (step 4 did not stop), for the bundle
 * checks (§7.2 step 6), else null. `bodyDepth` is the body's nesting level (§3).
 */
function verifyReceiptSteps(doc, keyset, cache, report, where = 'receipt', bodyDepth = BODY_DEPTH_IN_RECEIPT) {
  const { body } = doc;
  // Step 3: the §3 input rules, then canonicalize.
  const violations = ijsonViolations(body, bodyDepth);
  if (violations.length) {
    report.add('body_not_canonical', `${where}: ${violations.join('; ')}`);
    return null;
  }
  const canon = canonicalJson(body);

  // Step 4: read the members (a missing first-table member or a wrong type/encoding:
  // body_invalid, stop), then the §4 rules (each broken one: body_invalid, continue).
  const { fatal, rules } = readBody(body);
  if (fatal.length) {
    report.add('body_invalid', `${where}: ${fatal.join('; ')}`);
    return null;
  }
  if (rules.length) report.add('body_invalid', `${where}: ${rules.join('; ')}`);

  // Step 5.
  if (body.workspace_id !== keyset.workspaceId) {
    report.add('workspace_mismatch', `${where}: body workspace ${body.workspace_id} is not ${keyset.workspaceId}`);
  }
  if (body.log_index !== doc.log_index) {
    report.add('log_index_mismatch', `${where}: envelope log_index ${doc.log_index} ≠ body ${body.log_index}`);
  }

  // Step 6.
  const h = leafHash(canon);
  const leaf = {
    body,
    hash: h,
    logIndex: body.log_index,
    authorizationId: body.authorization_id,
    seq: body.seq,
    prev: body.prev,
    signed: doc.status === 'signed',
  };

  // Step 7: pending receipts.
  if (doc.status === 'pending') {
    if (doc.leaf_hash !== h.toString('hex') || doc.receipt_id !== body.id) {
      report.add('envelope_mismatch', `${where}: leaf_hash or receipt_id does not match the body`);
    }
    report.add('not_signed', `${where}: pending receipt ${body.id} is not yet signed`);
    return leaf;
  }

  // Step 8: the checkpoint.
  const cp = cache.open(doc.checkpoint, `${where}: checkpoint`);
  if (cp instanceof CheckpointError) {
    report.add(cp.code, `${where}: checkpoint: ${cp.detail}`);
    return leaf;
  }

  // Step 9: inclusion of h at the envelope's `log_index` in the checkpoint's tree; when
  // it differs from body.log_index this fails too (receipt-envelope-log-index).
  const proof = doc.inclusion_proof.map((x) => Buffer.from(x, 'hex'));
  if (!verifyInclusion(BigInt(doc.log_index), cp.size, proof, h, cp.root)) {
    report.add('inclusion_proof_invalid', `${where}: leaf ${doc.log_index} not proven in tree of size ${cp.size}`);
  }
  return leaf;
}

/** §7.1 (step 1, the key set, is done by the caller), then §7.5 with a witness policy. */
function verifyReceipt(data, keyset, witness = null) {
  let doc;
  try { // step 2
    doc = parseJson(data);
  } catch (e) {
    throw new Unusable(`receipt: ${e.message}`);
  }
  const problem = envelopeProblem(doc);
  if (problem) throw new Unusable(`receipt: ${problem}`);
  const report = new Report();
  const cache = new CheckpointCache(keyset);
  verifyReceiptSteps(doc, keyset, cache, report);
  applyWitnessPolicy(witness, cache, report);
  return report;
}

// ---------------------------------------------------------------------------
// §6.3 / §7.2 Evidence bundles
// ---------------------------------------------------------------------------

const MAX_LINE = 1 << 20; // 1 MiB

/** Non-blank lines with their 1-based numbers (blank = empty or only spaces/tabs/CR). */
function bundleLines(data) {
  const out = [];
  let start = 0;
  let lineno = 1;
  for (;;) {
    const nl = data.indexOf(0x0a, start);
    const line = data.subarray(start, nl < 0 ? data.length : nl);
    if (line.some((b) => b !== 0x20 && b !== 0x09 && b !== 0x0d)) out.push([lineno, line]);
    if (nl < 0) return out;
    start = nl + 1;
    lineno++;
  }
}

/** §7.2 step 1: the header line, else Unusable. Returns {workspaceId, scope}. */
function parseHeader(line) {
  if (line.length > MAX_LINE) throw new Unusable('header line longer than 1 MiB');
  let doc;
  try {
    doc = parseJson(line);
  } catch (e) {
    throw new Unusable(`header: ${e.message}`);
  }
  const bad = ijsonViolations(doc);
  if (bad.length) throw new Unusable(`header: ${bad.join('; ')}`);
  if (!(isObj(doc) && keysEqual(doc, ['type', 'header']) && doc.type === 'bundle' && isObj(doc.header))) {
    throw new Unusable('line 1 is not {"type":"bundle","header":{...}}');
  }
  const h = doc.header;
  if (!(isInt(h.v) && h.v === 1)) throw new Unusable('header v is not 1');
  if (!isId(h.workspace_id) || !isTime(h.created_at)) throw new Unusable('header workspace_id or created_at is malformed');
  const s = h.scope;
  let scope;
  if (isObj(s) && s.kind === 'authorization' && keysEqual(s, ['kind', 'authorization_id', 'last_seq'])
    && isId(s.authorization_id) && isInt(s.last_seq) && s.last_seq >= 0) {
    scope = { kind: 'authorization', authorizationId: s.authorization_id, lastSeq: s.last_seq };
  } else if (isObj(s) && s.kind === 'log' && keysEqual(s, ['kind', 'from', 'to'])
    && isInt(s.from) && isInt(s.to) && s.from >= 0 && s.from <= s.to) {
    scope = { kind: 'log', start: s.from, end: s.to };
  } else {
    throw new Unusable('header scope is malformed');
  }
  return { workspaceId: h.workspace_id, scope };
}

/** §7.2 step 1: one non-header line; record_malformed if it cannot be read. */
function readRecord(lineno, line, records, report) {
  const where = `line ${lineno}`;
  if (line.length > MAX_LINE) {
    report.add('record_malformed', `${where}: longer than 1 MiB`);
    return;
  }
  let doc;
  try {
    doc = parseJson(line);
  } catch (e) {
    report.add('record_malformed', `${where}: ${e.message}`);
    return;
  }
  const rtype = isObj(doc) ? doc.type : undefined;
  if (!['keys', 'checkpoint', 'consistency', 'receipt'].includes(rtype) || !keysEqual(doc, ['type', rtype])) {
    report.add('record_malformed', `${where}: not a keys/checkpoint/consistency/receipt record`);
    return;
  }
  const value = doc[rtype];
  if (rtype === 'receipt') {
    // I-JSON violations inside the body are body_not_canonical (§7.1 step 3), later;
    // anything wrong with the envelope around it is record_malformed (§6.1).
    const bad = ijsonViolations(doc, 1, ['receipt']);
    const problem = bad.length ? bad.join('; ') : envelopeProblem(value, 2);
    if (problem) {
      report.add('record_malformed', `${where}: ${problem}`);
      return;
    }
    records.receipts.push([lineno, value]);
    return;
  }
  if (rtype === 'keys') {
    // The record around the key set must read (else record_malformed); the key set
    // itself, §3 input rules included, is checked by loadKeyset in step 2, and a
    // broken one is unusable input even with pinned keys (§6.2).
    const bad = ijsonViolations(doc, 1, ['keys']);
    if (bad.length) report.add('record_malformed', `${where}: ${bad.join('; ')}`);
    else records.keysets.push(value);
    return;
  }
  const bad = ijsonViolations(doc);
  if (bad.length) {
    report.add('record_malformed', `${where}: ${bad.join('; ')}`);
  } else if (rtype === 'checkpoint') {
    if (isStr(value)) records.checkpoints.push(value);
    else report.add('record_malformed', `${where}: checkpoint is not a string`);
  } else if (isObj(value) && keysEqual(value, ['old_size', 'new_size', 'proof'])
    && isInt(value.old_size) && value.old_size >= 0 && isInt(value.new_size) && value.new_size >= 0
    && isArr(value.proof) && value.proof.every(isHash)) {
    records.consistency.push({
      m: BigInt(value.old_size), n: BigInt(value.new_size), proof: value.proof.map((x) => Buffer.from(x, 'hex')),
    });
  } else {
    report.add('record_malformed', `${where}: consistency record is malformed`);
  }
}

/** §7.2 step 2. */
function chooseKeys(records, pinned, headerWs, report) {
  // A broken key set, pinned keys or not: Unusable (§6.2). Key sets sit at level 2 (§3).
  const bundleSets = records.keysets.map((doc) => loadKeyset(doc, 2));
  let keyset;
  if (pinned) {
    const pinnedKeys = new Set(pinned.keys.map((k) => `${k.keyId}/${k.publicKey.toString('hex')}`));
    for (const ks of bundleSets) {
      for (const k of ks.keys) {
        if (!pinnedKeys.has(`${k.keyId}/${k.publicKey.toString('hex')}`)) {
          report.add('keys_mismatch', `bundle key ${k.keyId} is not a pinned key`);
        }
      }
    }
    keyset = pinned;
  } else {
    if (!bundleSets.length) throw new Unusable('no pinned keys and no key set in the bundle');
    [keyset] = bundleSets;
    if (bundleSets.slice(1).some((ks) => ks.canonical !== keyset.canonical)) {
      report.add('keys_mismatch', 'the bundle carries two different key sets');
    }
    report.unpinned = true;
    report.notes.push("keys were NOT pinned: the bundle's own key set was used, so only its "
      + 'internal consistency is proven (§10)');
  }
  if (headerWs !== keyset.workspaceId) {
    report.add('workspace_mismatch', `header workspace ${headerWs} is not the keys' ${keyset.workspaceId}`);
  }
  return keyset;
}

/**
 * §7.2 step 5: one leaf per log index. Returns Map index -> leaf hash; an index with
 * conflicting leaves is left out (it has no trustworthy leaf), so line order never matters.
 */
function checkLog(leaves, report) {
  const byIndex = new Map();
  const conflicted = new Set();
  for (const leaf of leaves) {
    if (!byIndex.has(leaf.logIndex)) byIndex.set(leaf.logIndex, leaf.hash);
    else if (!byIndex.get(leaf.logIndex).equals(leaf.hash)) {
      report.add('log_index_conflict', `two different leaves at log index ${leaf.logIndex}`);
      conflicted.add(leaf.logIndex);
    }
  }
  for (const i of conflicted) byIndex.delete(i);
  return byIndex;
}

/** §7.2 step 6. Returns Map authorization id -> highest seq present. */
function checkTrails(leaves, scope, report) {
  const trails = new Map(); // auth -> Map seq -> [leaf]
  for (const leaf of leaves) {
    if (leaf.authorizationId === null || leaf.seq === null) continue; // workspace event: no trail
    if (!trails.has(leaf.authorizationId)) trails.set(leaf.authorizationId, new Map());
    const bySeq = trails.get(leaf.authorizationId);
    if (!bySeq.has(leaf.seq)) bySeq.set(leaf.seq, []);
    const same = bySeq.get(leaf.seq);
    if (same.every((other) => !other.hash.equals(leaf.hash))) same.push(leaf); // copies are one receipt
  }
  const mustStartAtZero = scope.kind === 'authorization' || scope.start === 0;
  const ends = new Map();
  for (const [auth, bySeq] of [...trails].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const seqs = [...bySeq.keys()].sort((a, b) => a - b);
    ends.set(auth, seqs[seqs.length - 1]);
    for (const s of seqs) {
      if (bySeq.get(s).length > 1) report.add('seq_conflict', `${auth}: ${bySeq.get(s).length} different receipts at seq ${s}`);
    }
    if (mustStartAtZero && seqs[0] !== 0) report.add('receipt_missing', `${auth}: trail starts at seq ${seqs[0]}, not 0`);
    for (let k = 0; k + 1 < seqs.length; k++) {
      const [a, b] = [seqs[k], seqs[k + 1]];
      if (b !== a + 1) {
        report.add('receipt_missing', `${auth}: seqs ${a + 1}..${b - 1} are missing`);
        continue;
      }
      for (const y of bySeq.get(b)) {
        // With a seq_conflict at `a` there are several candidates; the link holds if
        // `prev` names any of them (order-independent; see bundle-inserted-forged-receipt).
        const linked = bySeq.get(a).filter((x) => y.prev === x.hash.toString('hex'));
        if (!linked.length) report.add('chain_broken', `${auth}: prev of seq ${b} is not the leaf hash of seq ${a}`);
        if ((linked.length ? linked : bySeq.get(a)).some((x) => y.logIndex <= x.logIndex)) {
          report.add('trail_order', `${auth}: seq ${b} is not after seq ${a} in the log`);
        }
      }
    }
  }
  return ends;
}

/** §7.2 step 7. */
function checkScope(leaves, scope, trailEnds, byIndex, checkpoints, report) {
  if (scope.kind === 'authorization') {
    for (const leaf of leaves) {
      if (leaf.authorizationId !== scope.authorizationId) {
        report.add('out_of_scope', `log index ${leaf.logIndex} is not in authorization ${scope.authorizationId}`);
      } else if (leaf.seq !== null && leaf.seq > scope.lastSeq) {
        report.add('out_of_scope', `seq ${leaf.seq} is after last_seq ${scope.lastSeq}`);
      }
    }
    const end = trailEnds.get(scope.authorizationId);
    if (end === undefined || end < scope.lastSeq) {
      report.add('truncated', `trail ends at seq ${end}, header promises ${scope.lastSeq}`);
    }
  } else {
    for (const leaf of leaves) {
      if (!(scope.start <= leaf.logIndex && leaf.logIndex < scope.end)) {
        report.add('out_of_scope', `log index ${leaf.logIndex} is outside ${scope.start}..${scope.end}`);
      }
    }
    let missing = 0;
    let first = null;
    for (let i = scope.start; i < scope.end; i++) {
      if (!byIndex.has(i)) {
        missing++;
        if (first === null) first = i;
      }
    }
    if (missing) report.add('log_leaf_missing', `${missing} log indexes in scope have no receipt, first ${first}`);
    for (const cp of checkpoints) {
      if (cp.size > BigInt(scope.end)) {
        report.add('truncated', `a checkpoint commits to ${cp.size} leaves, the scope ends at ${scope.end}`);
      }
    }
  }
}

/** §7.2 step 8. */
function checkCheckpoints(checkpoints, byIndex, consistency, report) {
  const roots = new Map(); // size (BigInt) -> [root]
  for (const cp of checkpoints) {
    if (!roots.has(cp.size)) roots.set(cp.size, []);
    const same = roots.get(cp.size);
    if (same.every((r) => !r.equals(cp.root))) same.push(cp.root);
  }
  for (const [size, rs] of roots) {
    if (rs.length > 1) report.add('checkpoint_fork', `${rs.length} different roots for tree size ${size}`);
  }

  // P: leaves 0..P-1 are all present.
  let p = 0;
  while (byIndex.has(p)) p++;
  const present = [];
  for (let i = 0; i < p; i++) present.push(byIndex.get(i));
  const sizes = [...roots.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  for (const size of sizes) {
    if (size <= BigInt(p)) {
      const expected = merkleRoot(present.slice(0, Number(size)));
      if (roots.get(size).some((r) => !r.equals(expected))) {
        report.add('checkpoint_root_mismatch', `the bundle's leaves do not give the root of size ${size}`);
      }
    }
  }

  // Every consistency record between two checkpoints of the bundle must verify.
  for (const { m, n, proof } of consistency) {
    if (roots.has(m) && roots.has(n)) {
      const ok = roots.get(m).every((ro) => roots.get(n).every((rn) => verifyConsistency(m, n, proof, ro, rn)));
      if (!ok) report.add('consistency_proof_invalid', `consistency proof ${m} -> ${n} fails`);
    }
  }
  // Consecutive sizes above P need one.
  for (let k = 0; k + 1 < sizes.length; k++) {
    const [m, n] = [sizes[k], sizes[k + 1]];
    if (n > BigInt(p) && !consistency.some((c) => c.m === m && c.n === n)) {
      report.add('consistency_unproven', `no consistency proof ${m} -> ${n}`);
    }
  }
}

/** §7.2. */
// ---------------------------------------------------------------------------
// §7.4 Semantic verification
// ---------------------------------------------------------------------------

const REFUSED_ANSWERS = new Set(['confirmation_used', 'confirmation_expired']);

/** §7.4: `*` is every scope, `a.b.*` every longer scope under `a.b.`, else equality. */
function scopeMatches(pattern, scope) {
  if (pattern === '*') return true;
  if (pattern.endsWith('.*')) {
    const prefix = pattern.slice(0, -1); // keeps the dot
    return scope.startsWith(prefix) && scope.length > prefix.length;
  }
  return pattern === scope;
}

const resourceMatches = (entry, resource) =>
  entry.endsWith('*') ? resource.startsWith(entry.slice(0, -1)) : entry === resource;

/** §7.4 rows 1-4: why the authorization alone denies, or null. Times compare as strings (§2). */
function tableDenies(trail, body) {
  const grant = trail.grant;
  if (trail.ended !== null) return `the authorization ended at log index ${trail.ended}`;
  if (grant.expires_at !== null && body.time >= grant.expires_at) return 'the grant had expired';
  if (!body.scopes.every((s) => grant.scopes.some((g) => scopeMatches(g, s)))) {
    return 'the grant does not cover every scope asked for';
  }
  if (grant.resources.length) {
    const r = body.resource;
    if (r === null || !grant.resources.some((e) => resourceMatches(e, r))) return 'the grant does not cover the resource';
  }
  return null;
}

/** §7.4 rows 5-7. */
function rulesGive(rules, scopes) {
  const wants = (word) =>
    Object.entries(rules).some(([p, rule]) => rule === word && scopes.some((s) => scopeMatches(p, s)));
  if (wants('escalate')) return 'escalate';
  return wants('confirm') ? 'confirm' : 'allow';
}

/** §7.4 steps 6-7: what an allowing answer needs from the trail and the person. */
function allowingAnswerProblem(trail, body) {
  if (trail.ended !== null) return `the authorization ended at log index ${trail.ended}`;
  const expires = trail.grant.expires_at;
  if (expires !== null && body.time >= expires) return 'the grant had expired';
  if (!(isObj(body.approval) && body.approval.outcome === 'approved')) return 'no answer approved it';
  return null;
}

const sameScopes = (a, b) => a.length === b.length && a.every((s, i) => s === b[i]);

/** §7.4 on a bundle without findings. Returns how many decisions were judged. */
function checkSemantics(leaves, report) {
  const bodies = new Map();
  for (const leaf of leaves) if (!bodies.has(leaf.logIndex)) bodies.set(leaf.logIndex, leaf.body);
  let rules = null;
  let rulesAt = null;
  const trails = new Map();
  let judged = 0;
  for (const index of [...bodies.keys()].sort((a, b) => a - b)) {
    const b = bodies.get(index);
    const { kind, decision, authorization_id: auth } = b;
    if (kind === 'scope_rules.changed') {
      // step 1
      [rules, rulesAt] = [b.scope_rules, index];
      continue;
    }
    if (auth === null) continue;
    if (kind === 'authorization.created') {
      // step 2
      trails.set(auth, { grant: b.grant, ended: null, confirmations: [], escalations: new Map() });
      continue;
    }
    const trail = trails.get(auth);
    if (!trail) continue; // step 3
    let problem = null;
    if (kind === 'revocation' || kind === 'expiry') {
      // step 4
      if (trail.ended === null) trail.ended = index;
    } else if (kind === 'check') {
      // step 5
      judged++;
      const deadline = has(b, 'expires_at') ? b.expires_at : null;
      if (decision === 'confirm') {
        trail.confirmations.push({ scopes: b.scopes, resource: b.resource, deadline, answered: false });
      } else if (decision === 'escalate' && has(b, 'escalation_id') && b.escalation_id !== null) {
        trail.escalations.set(b.escalation_id, { deadline, resolved: false });
      }
      if (['allow', 'confirm', 'escalate'].includes(decision)) {
        const denied = tableDenies(trail, b);
        if (denied) problem = `${decision}, but ${denied}`;
        else if (rules !== null) {
          const want = rulesGive(rules, b.scopes);
          if (want !== decision) problem = `${decision}, but the scope rules of log index ${rulesAt} call for ${want}`;
        }
      }
    } else if (kind === 'confirmation') {
      // step 6
      judged++;
      let found = false;
      if (!REFUSED_ANSWERS.has(b.reason)) {
        let best = null;
        for (const c of trail.confirmations) {
          const open = !c.answered && sameScopes(c.scopes, b.scopes) && c.resource === b.resource
            && (c.deadline === null || b.time < c.deadline);
          // The deadline that comes first (none: last; equal: the one opened first).
          const earlier = best === null || (c.deadline !== null && (best.deadline === null || c.deadline < best.deadline));
          if (open && earlier) best = c;
        }
        if (best) {
          best.answered = true;
          found = true;
        }
      }
      if (decision === 'allow') {
        const p = allowingAnswerProblem(trail, b);
        if (p) problem = `allow, but ${p}`;
        else if (!found) problem = 'allow, but it answers no open confirmation of this request';
      }
    } else if (kind === 'escalation.resolved') {
      // step 7
      judged++;
      const esc = has(b, 'escalation_id') ? trail.escalations.get(b.escalation_id) : undefined;
      const before = esc ? { ...esc } : null;
      if (esc) esc.resolved = true;
      if (decision === 'allow') {
        const p = allowingAnswerProblem(trail, b);
        if (p) problem = `allow, but ${p}`;
        else if (before === null) problem = 'allow, but no escalate check of this trail opened its escalation';
        else if (before.resolved) problem = 'allow, but its escalation was already resolved';
        else if (before.deadline !== null && b.time >= before.deadline) {
          problem = "allow, but it came after its escalation's deadline";
        }
      }
    }
    if (problem) report.add('decision_unjustified', `receipt ${b.id} (log index ${index}): ${problem}`);
  }
  return judged;
}

/**
 * §7.2 with §7.5 (a witness policy, or null), then §7.4 (`semantics` null: on for log exports
 * only).
 */
function verifyBundle(data, pinned, extraCheckpoints = [], semantics = null, witness = null) {
  const report = new Report();
  const lines = bundleLines(data);
  if (!lines.length) throw new Unusable('empty bundle');
  const header = parseHeader(lines[0][1]); // step 1
  const records = { keysets: [], checkpoints: [], consistency: [], receipts: [] };
  for (const [lineno, line] of lines.slice(1)) readRecord(lineno, line, records, report);
  const keyset = chooseKeys(records, pinned, header.workspaceId, report); // step 2

  const cache = new CheckpointCache(keyset); // step 3
  [...records.checkpoints, ...extraCheckpoints].forEach((note, i) => {
    const cp = cache.open(note, `checkpoint #${i + 1}`);
    if (cp instanceof CheckpointError) report.add(cp.code, `checkpoint #${i + 1}: ${cp.detail}`);
  });

  const leaves = []; // step 4
  for (const [lineno, doc] of records.receipts) {
    const leaf = verifyReceiptSteps(doc, keyset, cache, report, `line ${lineno}`, BODY_DEPTH_IN_BUNDLE);
    if (leaf) leaves.push(leaf);
  }
  // Every checkpoint is open now; its witness findings count in §7.4's "without findings".
  applyWitnessPolicy(witness, cache, report);

  const checkpoints = cache.opened();
  const byIndex = checkLog(leaves, report); // step 5
  const ends = checkTrails(leaves, header.scope, report); // step 6
  checkScope(leaves, header.scope, ends, byIndex, checkpoints, report); // step 7
  checkCheckpoints(checkpoints, byIndex, records.consistency, report); // step 8
  if (semantics === null ? header.scope.kind === 'log' : semantics) {
    // §7.4, only on a bundle without findings
    if (report.findings.length) report.notes.push('decisions not re-derived: the bundle already has findings (§7.4)');
    else report.notes.push(`decisions re-derived from the log: ${checkSemantics(leaves, report)}`);
  }
  return report;
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

function printReport(report) {
  for (const note of report.notes) console.log(`note: ${note}`);
  for (const [code, detail] of report.findings) console.log(`${code} [${FINDING_CLASS[code]}]: ${detail}`);
  console.log(`outcome: ${report.outcome()}`);
}

/** Outcome and codes of one manifest vector; 'unusable' if the verifier stopped (exit 64). */
function runVector(base, v) {
  try {
    const keyset = v.keys ? readKeysetFile(join(base, v.keys)) : null;
    const data = readFileSync(join(base, v.file));
    let report;
    if (v.kind === 'receipt') {
      if (!keyset) throw new Unusable('a receipt vector needs keys');
      report = verifyReceipt(data, keyset);
    } else {
      report = verifyBundle(data, keyset, [], v.semantics ?? null);
    }
    return [report.outcome(), report.codes()];
  } catch (e) {
    if (e instanceof Unusable) return ['unusable', new Set()];
    throw e;
  }
}

function cmdVectors(manifestPath) {
  const base = dirname(manifestPath);
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  let passed = 0;
  let failed = 0;
  const sorted = (set) => JSON.stringify([...set].sort());
  for (const v of manifest.vectors) {
    const [outcome, codes] = runVector(base, v);
    const want = new Set(v.codes ?? []);
    if (outcome === v.outcome && sorted(codes) === sorted(want)) {
      passed++;
      console.log(`ok   ${v.name}`);
    } else {
      failed++;
      console.log(`FAIL ${v.name}: want ${v.outcome} ${sorted(want)} got ${outcome} ${sorted(codes)}`);
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0 ? 0 : 1;
}

const USAGE = `usage: node verify.mjs vectors MANIFEST
       node verify.mjs receipt FILE --keys KEYS [WITNESS POLICY]
       node verify.mjs bundle FILE [--keys KEYS] [--checkpoint NOTE_FILE ...] [--semantics | --no-semantics]
                                   [WITNESS POLICY]
WITNESS POLICY (§7.5): --witness-key VKEY ... --witness-quorum N`;

function main(argv) {
  if (argv.length === 2 && argv[0] === 'vectors') return cmdVectors(argv[1]);
  if (argv.length < 2 || !['receipt', 'bundle'].includes(argv[0])) {
    console.error(USAGE);
    return EXIT_UNUSABLE;
  }
  const [cmd, file, ...rest] = argv;
  let keysPath = null;
  let semantics = null;
  const extra = [];
  const witnessKeys = [];
  let quorum = null;
  while (rest.length) {
    if (['--semantics', '--no-semantics'].includes(rest[0]) && cmd === 'bundle' && semantics === null) {
      semantics = rest[0] === '--semantics';
      rest.splice(0, 1);
      continue;
    }
    if (rest[0] === '--keys' && rest.length > 1 && keysPath === null) keysPath = rest[1];
    else if (rest[0] === '--checkpoint' && rest.length > 1 && cmd === 'bundle') extra.push(rest[1]);
    else if (rest[0] === '--witness-key' && rest.length > 1) witnessKeys.push(rest[1]);
    else if (rest[0] === '--witness-quorum' && rest.length > 1 && quorum === null) quorum = rest[1];
    else {
      console.error(USAGE);
      return EXIT_UNUSABLE;
    }
    rest.splice(0, 2);
  }
  // One without the other is bad usage, as in allowly-verify.
  if ((quorum === null) !== (witnessKeys.length === 0)) {
    console.error(`--witness-key and --witness-quorum go together\n${USAGE}`);
    return EXIT_UNUSABLE;
  }
  let report;
  let witness = null;
  try {
    if (quorum !== null) witness = witnessPolicy(witnessKeys, quorum);
    const keyset = keysPath ? readKeysetFile(keysPath) : null; // §7.1 step 1
    const data = readFileSync(file);
    if (cmd === 'receipt') {
      if (!keyset) throw new Unusable('receipt needs --keys');
      report = verifyReceipt(data, keyset, witness);
    } else {
      const notes = extra.map((path) => {
        try {
          return UTF8.decode(readFileSync(path));
        } catch (e) {
          if (e.code) throw e; // file system error
          return '\u0000'; // not UTF-8: will be checkpoint_malformed
        }
      });
      report = verifyBundle(data, keyset, notes, semantics, witness);
    }
  } catch (e) {
    if (e instanceof Unusable || e.code) {
      console.error(`unusable input: ${e.message}`);
      return EXIT_UNUSABLE;
    }
    throw e;
  }
  if (witness) report.notes.push(`witness policy: every checkpoint cosigned by ${witness.quorum} of ${witnessKeys.length} witness keys`);
  printReport(report);
  return report.exitCode();
}

// Run as a program (not when imported, e.g. by a test).
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}

export {
  parseJson, ijsonViolations, canonicalJson, verifyInclusion, verifyConsistency, merkleRoot,
  ed25519VerifyStrict, openCheckpoint, loadKeyset, verifyReceipt, verifyBundle, Unusable, witnessPolicy,
};
