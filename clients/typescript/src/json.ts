/**
 * Strict JSON reading (receipt format §3, the I-JSON input rules) and RFC 8785 canonical JSON.
 *
 * `JSON.parse` cannot be used to read receipts: it keeps the last of two members with one name,
 * turns `1.0` into `1` and `9007199254740993` into a neighbour, and accepts lone surrogates.
 * This reader records those breaches in the tree instead of rejecting them, because where they
 * are decides the finding: inside a receipt body they are `body_not_canonical`, around it the
 * document is unusable (§7.1 steps 2-3).
 */

export const MAX_SAFE = Number.MAX_SAFE_INTEGER;
/** §3: nesting deeper than this, counted over the whole document, is refused. */
export const MAX_DEPTH = 128;

/** A number written with a fraction or an exponent: a JSON number, never a JSON integer. */
export class JsonFloat {
  constructor(readonly value: number) {}
}

/** A number literal §3 forbids (an unsafe integer, an overflow), kept to be reported. */
export class BadNumber {
  constructor(
    readonly text: string,
    readonly why: string,
  ) {}
}

export type Json = null | boolean | number | string | JsonFloat | BadNumber | Json[] | JsonObject;
/** An object with a null prototype (so `__proto__` is an ordinary member name). */
export type JsonObject = { [name: string]: Json };

/** Names seen twice in an object (after unescaping). */
const DUPLICATES = new WeakMap<object, string[]>();

/** Not JSON at all, or not UTF-8. */
export class JsonSyntaxError extends Error {}

export function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof JsonFloat) && !(v instanceof BadNumber);
}

export function has(o: JsonObject, name: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, name);
}

/** The member names of `o` are exactly `names`. */
export function membersAre(o: JsonObject, names: readonly string[]): boolean {
  const own = Object.keys(o);
  return own.length === names.length && names.every((n) => has(o, n));
}

const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Parses UTF-8 JSON text, keeping §3 breaches in the tree (see `violations`). */
export function parseJson(data: Uint8Array | string): Json {
  let text: string;
  if (typeof data === "string") {
    text = data;
  } else {
    try {
      text = DECODER.decode(data);
    } catch (e) {
      throw new JsonSyntaxError(`not UTF-8: ${(e as Error).message}`);
    }
  }
  const p = new Parser(text);
  try {
    p.ws();
    const v = p.value();
    p.ws();
    if (p.i !== text.length) p.fail("text after the value");
    return v;
  } catch (e) {
    if (e instanceof RangeError) throw new JsonSyntaxError("nesting too deep to read");
    throw e;
  }
}

class Parser {
  i = 0;
  constructor(readonly s: string) {}

  fail(why: string): never {
    throw new JsonSyntaxError(`${why} at offset ${this.i}`);
  }

  /** JSON whitespace only: a byte-order mark is not (§7.3). */
  ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else break;
    }
  }

  value(): Json {
    const c = this.s[this.i];
    if (c === "{") return this.object();
    if (c === "[") return this.array();
    if (c === '"') return this.string();
    if (c === "-" || (c !== undefined && c >= "0" && c <= "9")) return this.number();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (this.s.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    return this.fail("unexpected character");
  }

  object(): JsonObject {
    const o = Object.create(null) as JsonObject;
    const dups: string[] = [];
    this.i++;
    this.ws();
    if (this.s[this.i] === "}") {
      this.i++;
      return o;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') this.fail("expected a member name");
      const name = this.string();
      this.ws();
      if (this.s[this.i] !== ":") this.fail("expected ':'");
      this.i++;
      this.ws();
      const v = this.value();
      if (has(o, name)) dups.push(name);
      Object.defineProperty(o, name, { value: v, enumerable: true, writable: true, configurable: true });
      this.ws();
      const c = this.s[this.i++];
      if (c === "}") break;
      if (c !== ",") this.fail("expected ',' or '}'");
    }
    if (dups.length) DUPLICATES.set(o, dups);
    return o;
  }

  array(): Json[] {
    const a: Json[] = [];
    this.i++;
    this.ws();
    if (this.s[this.i] === "]") {
      this.i++;
      return a;
    }
    for (;;) {
      this.ws();
      a.push(this.value());
      this.ws();
      const c = this.s[this.i++];
      if (c === "]") return a;
      if (c !== ",") this.fail("expected ',' or ']'");
    }
  }

  string(): string {
    const s = this.s;
    let out = "";
    this.i++;
    for (;;) {
      const c = s.charCodeAt(this.i);
      if (Number.isNaN(c)) this.fail("unterminated string");
      if (c === 0x22) {
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail("control character in a string");
      if (c !== 0x5c) {
        out += s[this.i++];
        continue;
      }
      const e = s[this.i + 1];
      this.i += 2;
      const simple: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
      if (e !== undefined && e in simple) {
        out += simple[e];
      } else if (e === "u") {
        const hex = s.slice(this.i, this.i + 4);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail("bad \\u escape");
        out += String.fromCharCode(parseInt(hex, 16));
        this.i += 4;
      } else {
        this.fail("bad escape");
      }
    }
  }

  number(): Json {
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(this.s.slice(this.i, this.i + 1100));
    if (!m) return this.fail("bad number");
    const text = m[0];
    this.i += text.length;
    if (m[2] === undefined && m[3] === undefined) {
      const n = BigInt(text);
      if (n > BigInt(MAX_SAFE) || n < -BigInt(MAX_SAFE)) return new BadNumber(text, "integer beyond ±(2^53-1)");
      return Number(n);
    }
    const f = Number(text);
    if (!Number.isFinite(f)) return new BadNumber(text, "number overflows to infinity");
    // §3: a number whose canonical form would be an integer literal beyond ±(2^53-1) (ECMAScript
    // prints integral doubles below 1e21 in plain decimal).
    if (Number.isInteger(f) && Math.abs(f) > MAX_SAFE && Math.abs(f) < 1e21) {
      return new BadNumber(text, "number whose canonical form is an integer beyond ±(2^53-1)");
    }
    return new JsonFloat(f);
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The §3 input-rule breaches inside `v` (which sits at nesting `depth`). Members of the top
 * object named in `skip` are not looked into (an envelope is checked apart from its body).
 */
export function violations(v: Json, depth = 1, skip: readonly string[] = []): string[] {
  if (v instanceof BadNumber) return [`${v.why}: ${v.text.slice(0, 40)}`];
  if (typeof v === "string") return LONE_SURROGATE.test(v) ? ["lone surrogate in a string"] : [];
  if (v === null || typeof v !== "object" || v instanceof JsonFloat) return [];
  if (depth > MAX_DEPTH) return [`nesting deeper than ${MAX_DEPTH} levels`];
  const out: string[] = [];
  if (Array.isArray(v)) {
    for (const x of v) out.push(...violations(x, depth + 1));
    return out;
  }
  for (const d of DUPLICATES.get(v) ?? []) out.push(`duplicate member name ${JSON.stringify(d)}`);
  for (const [k, x] of Object.entries(v)) {
    if (LONE_SURROGATE.test(k)) out.push("lone surrogate in a member name");
    if (!skip.includes(k)) out.push(...violations(x, depth + 1));
  }
  return out;
}

/** RFC 8785 canonical text of a value that has no §3 breach. */
export function canonicalText(v: Json): string {
  if (v === null || typeof v === "boolean") return String(v);
  // ECMAScript's Number.prototype.toString is RFC 8785's number form (-0 prints as 0).
  if (typeof v === "number") return String(v);
  if (v instanceof JsonFloat) return String(v.value);
  if (v instanceof BadNumber) throw new JsonSyntaxError("cannot canonicalize " + v.text);
  // JSON.stringify escapes exactly what RFC 8785 escapes, the same way (\u00xx lowercase).
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalText).join(",")}]`;
  // Default sort compares UTF-16 code units, as RFC 8785 orders member names.
  const names = Object.keys(v).sort();
  return `{${names.map((n) => `${JSON.stringify(n)}:${canonicalText(v[n]!)}`).join(",")}}`;
}

export function canonicalBytes(v: Json): Uint8Array {
  return new TextEncoder().encode(canonicalText(v));
}
