#!/usr/bin/env python3
"""Independent verifier for Allowly receipts and evidence bundles.

Written from docs/receipt-format.md ONLY (the normative spec), without reading the
Rust implementation, to show that the spec is complete. Section numbers (§) below
refer to that document.

Part of the Python SDK (`allowly.verify`); it shares nothing with the Rust code. The witness
policy (§7.5) was added later from the spec and c2sp.org/tlog-cosignature; `allowly-verify`
was consulted for behaviour only, and tests run both on the same inputs.

Usage:
    python -m allowly.verify vectors MANIFEST
    python -m allowly.verify receipt FILE --keys KEYS [WITNESS POLICY]
    python -m allowly.verify bundle FILE [--keys KEYS] [--checkpoint NOTE_FILE ...] [WITNESS POLICY]

WITNESS POLICY (§7.5): --witness-key VKEY (repeatable) --witness-quorum N: every checkpoint
must carry valid C2SP cosignatures by N distinct witnesses of the given keys.

Exit status: 0 valid, 1 integrity failure, 2 coverage gap, 3 valid (unpinned),
64 unusable input / usage.

Dependencies: Python 3.11, PyPI `rfc8785` (JCS) and `cryptography` (Ed25519).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# ---------------------------------------------------------------------------
# §8 Findings and outcomes
# ---------------------------------------------------------------------------

INTEGRITY = "integrity"
COVERAGE = "coverage"

FINDING_CLASS = {
    "body_not_canonical": INTEGRITY,
    "body_invalid": INTEGRITY,
    "workspace_mismatch": INTEGRITY,
    "log_index_mismatch": INTEGRITY,
    "envelope_mismatch": INTEGRITY,
    "checkpoint_malformed": INTEGRITY,
    "checkpoint_signature_invalid": INTEGRITY,
    "checkpoint_unknown_key": INTEGRITY,
    "checkpoint_origin_mismatch": INTEGRITY,
    "key_not_valid_at_time": INTEGRITY,
    "inclusion_proof_invalid": INTEGRITY,
    "record_malformed": INTEGRITY,
    "keys_mismatch": INTEGRITY,
    "log_index_conflict": INTEGRITY,
    "seq_conflict": INTEGRITY,
    "chain_broken": INTEGRITY,
    "trail_order": INTEGRITY,
    "checkpoint_fork": INTEGRITY,
    "consistency_proof_invalid": INTEGRITY,
    "checkpoint_root_mismatch": INTEGRITY,
    "out_of_scope": INTEGRITY,
    "decision_unjustified": INTEGRITY,
    "receipt_missing": COVERAGE,
    "log_leaf_missing": COVERAGE,
    "not_signed": COVERAGE,
    "consistency_unproven": COVERAGE,
    "truncated": COVERAGE,
    # §7.5, only with a witness policy (`--witness-key ... --witness-quorum N`); without one,
    # cosignatures are signature lines by unknown keys, ignored.
    "witness_cosignature_invalid": INTEGRITY,
    "witness_quorum_not_met": COVERAGE,
}

EXIT_VALID, EXIT_INTEGRITY, EXIT_COVERAGE, EXIT_VALID_UNPINNED, EXIT_UNUSABLE = 0, 1, 2, 3, 64


class Unusable(Exception):
    """Unusable input (§6.2, §7.1 steps 1-2, §7.2 steps 1-2): the verifier stops, exit 64."""


@dataclass
class Report:
    findings: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # §7.2 step 2: the bundle's own keys were used (none pinned); "valid" becomes "valid_unpinned".
    unpinned: bool = False

    def add(self, code: str, detail: str) -> None:
        assert code in FINDING_CLASS, code
        self.findings.append((code, detail))

    def codes(self) -> set[str]:
        return {code for code, _ in self.findings}

    def outcome(self) -> str:
        classes = {FINDING_CLASS[c] for c in self.codes()}
        if INTEGRITY in classes:
            return "integrity_failure"
        if COVERAGE in classes:
            return "coverage_gap"
        return "valid_unpinned" if self.unpinned else "valid"

    def exit_code(self) -> int:
        return {"valid": EXIT_VALID, "integrity_failure": EXIT_INTEGRITY,
                "coverage_gap": EXIT_COVERAGE, "valid_unpinned": EXIT_VALID_UNPINNED}[self.outcome()]


# ---------------------------------------------------------------------------
# §2 Encodings
# ---------------------------------------------------------------------------

MAX_SAFE_INT = 2**53 - 1
HASH_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.[0-9]{3}Z")
B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def is_int(v) -> bool:
    """A JSON integer: written without fraction/exponent (bool is not an int here)."""
    return type(v) is int


def is_hash(v) -> bool:
    return isinstance(v, str) and HASH_RE.fullmatch(v) is not None


def is_key_id(v) -> bool:
    return isinstance(v, str) and KEY_ID_RE.fullmatch(v) is not None


def is_id(v) -> bool:
    return isinstance(v, str) and ID_RE.fullmatch(v) is not None


def is_time(v) -> bool:
    """`YYYY-MM-DDTHH:MM:SS.sssZ`, a real UTC instant, years 1970-9999.

    The spec says RFC 3339; we also require a real calendar date and reject leap
    second 60 (the spec says equal instants are equal strings, so there is one
    spelling per instant)."""
    if not isinstance(v, str):
        return False
    m = TIME_RE.fullmatch(v)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    if not (1970 <= year <= 9999 and 1 <= month <= 12):
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return 1 <= day <= days and hour <= 23 and minute <= 59 and second <= 59


def b64decode_strict(s) -> bytes | None:
    """Standard base64 with padding (RFC 4648 §4), canonical (unused bits zero)."""
    if not isinstance(s, str) or B64_RE.fullmatch(s) is None:
        return None
    raw = base64.b64decode(s, validate=True)
    if base64.b64encode(raw).decode("ascii") != s:
        return None  # non-zero pad bits: not the canonical encoding
    return raw


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------
# §3 Strict (I-JSON) reading and canonical JSON
# ---------------------------------------------------------------------------

# "Nesting deeper than 128 levels, counted over the whole document (an envelope is level 1,
# its body level 2), is rejected." Levels are counted from the top of the JSON text being
# read: a receipt document (envelope 1, body 2), a key set file (1), or one bundle line
# (record 1, envelope or key set 2, body 3).
MAX_DEPTH = 128
# Where a receipt body sits in the documents this verifier reads (see MAX_DEPTH).
BODY_DEPTH_IN_RECEIPT, BODY_DEPTH_IN_BUNDLE = 2, 3
# The smallest double that ECMAScript prints with an exponent (Number.prototype.toString).
ES_EXPONENT_FROM = 1e21


class JsonObject(dict):
    """A JSON object that remembers the member names it saw more than once."""

    duplicates: list[str]


class BadNumber:
    """Placeholder for a number literal that §3 forbids (unsafe integer, overflow to ±inf)."""

    def __init__(self, text: str, why: str):
        self.text, self.why = text, why


class JsonSyntaxError(Exception):
    """Not JSON at all (or not UTF-8)."""


def _object_pairs(pairs):
    obj = JsonObject()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:  # keys arrive already unescaped, so "a" and "\u0061" collide
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _parse_int(text: str):
    n = int(text)
    return n if -MAX_SAFE_INT <= n <= MAX_SAFE_INT else BadNumber(text, "integer beyond ±(2^53-1)")


def _parse_float(text: str):
    f = float(text)
    if f in (float("inf"), float("-inf")):
        return BadNumber(text, "number overflows to infinity")
    # §3: a number whose canonical form would be an integer literal beyond ±(2^53-1) is
    # rejected (e.g. 1e20 prints as 100000000000000000000). ECMAScript prints an integral
    # double below 1e21 in plain decimal, and from 1e21 on with an exponent.
    if f.is_integer() and MAX_SAFE_INT < abs(f) < ES_EXPONENT_FROM:
        return BadNumber(text, "number whose canonical form is an integer beyond ±(2^53-1)")
    return f


def _parse_constant(text: str):
    raise JsonSyntaxError(f"{text} is not JSON")


def parse_json(data: bytes):
    """Parse JSON text, recording (not yet rejecting) the §3 input-rule violations.

    Violations are left in the tree (JsonObject.duplicates, BadNumber, lone surrogates)
    so that the caller can tell whether they lie inside a receipt body
    (`body_not_canonical`) or in the document around it (unusable / record_malformed)."""
    try:
        text = data.decode("utf-8")  # strict: rejects invalid UTF-8 and encoded surrogates
    except UnicodeDecodeError as e:
        raise JsonSyntaxError(f"not UTF-8: {e}") from None
    if max_nesting(text) > 10_000:
        raise JsonSyntaxError("nesting far too deep to read")
    try:
        return json.loads(text, object_pairs_hook=_object_pairs, parse_int=_parse_int,
                          parse_float=_parse_float, parse_constant=_parse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise JsonSyntaxError(str(e)) from None


def max_nesting(text: str) -> int:
    """Bracket depth of JSON text, ignoring strings (a cheap guard before recursing)."""
    depth = best = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _has_lone_surrogate(s: str) -> bool:
    # Python's json decoder joins valid \uD83D\uDE00 pairs into one code point, so any
    # surrogate code point left in a decoded string came from a lone escape.
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in s)


def ijson_violations(value, depth: int = 1, skip: frozenset = frozenset()) -> list[str]:
    """The §3 input-rule violations inside `value` (`value` itself at nesting `depth`).

    Members of the top-level object named in `skip` are not descended into (used to
    check an envelope apart from the body it carries)."""
    out: list[str] = []
    if isinstance(value, BadNumber):
        out.append(f"{value.why}: {value.text[:40]}")
    elif isinstance(value, str):
        if _has_lone_surrogate(value):
            out.append("lone surrogate in a string")
    elif isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:
            return [f"nesting deeper than {MAX_DEPTH} levels"]
        if isinstance(value, dict):
            for dup in getattr(value, "duplicates", []):
                out.append(f"duplicate member name {dup!r}")
            for k, v in value.items():
                if _has_lone_surrogate(k):
                    out.append("lone surrogate in a member name")
                if k not in skip:
                    out.extend(ijson_violations(v, depth + 1))
        else:
            for v in value:
                out.extend(ijson_violations(v, depth + 1))
    return out


def canonical_json(value) -> bytes:
    """RFC 8785 (JCS) bytes of an already-validated value."""
    return rfc8785.dumps(value)


# ---------------------------------------------------------------------------
# §5.1-§5.3 Merkle tree (RFC 9162)
# ---------------------------------------------------------------------------

def leaf_hash(canonical_body: bytes) -> bytes:
    return sha256(b"\x00" + canonical_body)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:  # largest power of two smaller than n
        k *= 2
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def verify_inclusion(index: int, size: int, proof: list[bytes], leaf: bytes, root: bytes) -> bool:
    """§5.2, RFC 9162 §2.1.3.2."""
    if index < 0 or index >= size:
        return False
    fn, sn, x = index, size - 1, leaf
    for c in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            x = node_hash(c, x)
            while fn != 0 and fn % 2 == 0:
                fn >>= 1
                sn >>= 1
        else:
            x = node_hash(x, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and x == root


def verify_consistency(m: int, n: int, proof: list[bytes], old_root: bytes, new_root: bytes) -> bool:
    """§5.3, RFC 9162 §2.1.4.2, plus the spec's m = n and m = 0 cases."""
    if m < 0 or m > n:
        return False
    if m == n:
        return not proof and old_root == new_root
    if m == 0:
        return not proof
    if not proof:  # step 1
        return False
    path = list(proof)
    if m & (m - 1) == 0:  # step 2: m is an exact power of two
        path.insert(0, old_root)
    fn, sn = m - 1, n - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0  # step 7


# ---------------------------------------------------------------------------
# Strict Ed25519 (§5.4): verify_strict / RFC 8032 §5.1.7 cofactorless
# ---------------------------------------------------------------------------
# `cryptography` (OpenSSL) already checks the cofactorless equation by comparing the
# encoding of [S]B - [k]A with R. What it does not promise, and we check here first:
#   1. S < L (canonical scalar), RFC 8032 §5.1.7 step 1;
#   2. A (public key) and R decode as curve points under RFC 8032 §5.1.3: y < p,
#      x recoverable, and not (x = 0 with the sign bit set);
#   3. neither A nor R has small order, i.e. [8]P is not the identity (this covers
#      all 8 torsion points, whatever their encoding) -- as ed25519-dalek's
#      verify_strict does.

ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = (-121665 * pow(121666, ED_P - 2, ED_P)) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)


def ed_decode_point(b: bytes):
    """RFC 8032 §5.1.3 point decoding to extended coordinates, or None."""
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= ED_P:
        return None  # non-canonical y
    u = (y * y - 1) % ED_P
    v = (ED_D * y * y + 1) % ED_P
    x2 = u * pow(v, ED_P - 2, ED_P) % ED_P
    if x2 == 0:
        if sign:
            return None  # x = 0 with sign bit 1
        x = 0
    else:
        x = pow(x2, (ED_P + 3) // 8, ED_P)
        if (x * x - x2) % ED_P != 0:
            x = x * ED_SQRT_M1 % ED_P
        if (x * x - x2) % ED_P != 0:
            return None  # not on the curve
        if x & 1 != sign:
            x = ED_P - x
    return (x, y, 1, x * y % ED_P)


def ed_add(P, Q):
    """Edwards addition in extended coordinates (RFC 8032 §5.1.4); also doubles."""
    x1, y1, z1, t1 = P
    x2, y2, z2, t2 = Q
    a = (y1 - x1) * (y2 - x2) % ED_P
    b = (y1 + x1) * (y2 + x2) % ED_P
    c = 2 * t1 * t2 * ED_D % ED_P
    d = 2 * z1 * z2 % ED_P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % ED_P, g * h % ED_P, f * g % ED_P, e * h % ED_P)


def ed_is_small_order(P) -> bool:
    """[8]P == identity (X = 0, Y = Z)."""
    for _ in range(3):
        P = ed_add(P, P)
    x, y, z, _t = P
    return x % ED_P == 0 and (y - z) % ED_P == 0


def ed25519_verify_strict(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    if int.from_bytes(signature[32:], "little") >= ED_L:
        return False  # non-canonical S
    a = ed_decode_point(public_key)
    r = ed_decode_point(signature[:32])
    if a is None or r is None or ed_is_small_order(a) or ed_is_small_order(r):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------
# §6.2 Workspace key set
# ---------------------------------------------------------------------------

@dataclass
class Key:
    key_id: str
    name: str
    public_key: bytes
    not_before: str
    not_after: str | None

    def valid_at(self, t: str) -> bool:
        # not_before inclusive, not_after exclusive; §2 times compare as strings.
        return self.not_before <= t and (self.not_after is None or t < self.not_after)


@dataclass
class KeySet:
    workspace_id: str
    origin: str
    keys: list[Key]
    canonical: bytes  # to tell two bundle key sets apart (§7.2 step 2)


def compute_key_id(name: str, public_key: bytes, key_type: int = 0x01) -> str:
    """C2SP signed-note key id: SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4], as hex. Type 0x01
    is an Ed25519 note signer (a workspace key), 0x04 a tlog-cosignature witness."""
    return sha256(name.encode("utf-8") + b"\n" + bytes([key_type]) + public_key)[:4].hex()


KEYSET_MEMBERS = {"workspace_id", "origin", "keys"}
KEY_MEMBERS = {"key_id", "name", "algorithm", "public_key", "vkey", "not_before", "not_after", "status"}


def load_keyset(doc, depth: int = 1) -> KeySet:
    """Check every §6.2 rule; raise Unusable on the first broken one.

    `depth` is the nesting level of the key set in the document it was read from (§3):
    1 for a key set file, 2 inside a bundle `keys` record. A key set carried in a bundle
    that breaks these rules is unusable input too, pinned keys or not (§6.2)."""
    bad = ijson_violations(doc, depth)
    if bad:
        raise Unusable("key set: " + "; ".join(bad))
    if not isinstance(doc, dict):
        raise Unusable("key set: not a JSON object")
    if set(doc) != KEYSET_MEMBERS:  # §6.2: exactly the members shown
        raise Unusable(f"key set: must have exactly the members {sorted(KEYSET_MEMBERS)}")
    ws, origin, keys = doc["workspace_id"], doc["origin"], doc["keys"]
    if not is_id(ws):
        raise Unusable("key set: workspace_id is not an id")
    if origin != f"allowly/{ws}":
        raise Unusable("key set: origin is not allowly/<workspace_id>")
    if not isinstance(keys, list):
        raise Unusable("key set: keys is not an array")
    out = []
    for i, k in enumerate(keys):
        where = f"key set: keys[{i}]"
        if not isinstance(k, dict):
            raise Unusable(f"{where} is not an object")
        if set(k) != KEY_MEMBERS:  # §6.2: exactly the members shown
            raise Unusable(f"{where}: must have exactly the members {sorted(KEY_MEMBERS)}")
        if k.get("name") != origin:
            raise Unusable(f"{where}: name is not the origin")
        if k.get("algorithm") != "ed25519":
            raise Unusable(f"{where}: algorithm is not ed25519")
        pk = b64decode_strict(k.get("public_key"))
        if pk is None or len(pk) != 32:
            raise Unusable(f"{where}: public_key is not base64 of 32 bytes")
        # §6.2: a canonical encoding of a point that is not of small order (a small-order key
        # would fail every strict verification: it is a broken key set, not a bad signature).
        point = ed_decode_point(pk)
        if point is None or ed_is_small_order(point):
            raise Unusable(f"{where}: public_key is not a canonical Ed25519 point of large order")
        key_id = k.get("key_id")
        if not is_key_id(key_id) or key_id != compute_key_id(origin, pk):
            raise Unusable(f"{where}: key_id does not match name and public key")
        vkey_b64 = base64.b64encode(b"\x01" + pk).decode("ascii")
        vkey = f"{origin}+{key_id}+{vkey_b64}"
        if k.get("vkey") != vkey:
            raise Unusable(f"{where}: vkey is not <name>+<key_id>+<base64(0x01 ‖ key)>")
        nb, na = k.get("not_before"), k.get("not_after")
        if not is_time(nb):
            raise Unusable(f"{where}: not_before is not a time")
        if na is not None and (not is_time(na) or not na > nb):
            raise Unusable(f"{where}: not_after is not null, or not a time after not_before")
        if k["status"] != ("active" if na is None else "retired"):  # a non-string never equals
            raise Unusable(f"{where}: status must be 'active' when not_after is null, else 'retired'")
        out.append(Key(key_id, origin, pk, nb, na))
    # §6.2: at least one key, and one entry per key id (a second entry for the same key could
    # widen its validity window).
    if not out:
        raise Unusable("key set: keys is empty")
    if len({k.key_id for k in out}) != len(out):
        raise Unusable("key set: a key_id appears twice")
    return KeySet(ws, origin, out, canonical_json(doc))


def read_keyset_file(path: str) -> KeySet:
    try:
        doc = parse_json(Path(path).read_bytes())
    except (OSError, JsonSyntaxError) as e:
        raise Unusable(f"key set {path}: {e}") from None
    return load_keyset(doc)


# ---------------------------------------------------------------------------
# §5.4 Checkpoints (C2SP tlog-checkpoint + signed-note)
# ---------------------------------------------------------------------------

EM_DASH_PREFIX = "\u2014 "


@dataclass
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: str
    signers: list[str]  # key ids whose signature verified and which were valid at `time`


class CheckpointError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def _is_control(ch: str) -> bool:
    """§5.4: the control characters are U+0000-U+001F only (as in C2SP and Go's note
    package); U+007F and above, including the C1 controls, are allowed in a note."""
    return ord(ch) < 0x20


def _is_space(ch: str) -> bool:
    """Go's unicode.IsSpace, which C2SP signed-note uses to reject key names with spaces:
    \t \n \v \f \r, space, U+0085, U+00A0 and the separators (Zs, Zl, Zp)."""
    return ch in "\t\n\v\f\r \x85\xa0" or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def parse_signed_note(note) -> tuple[str, list[str], list[tuple[str, bytes]]]:
    """Split a signed note into (text, text lines, [(key name, key id ‖ signature)]).

    Structural rules of §5.4 (C2SP signed-note); failures are checkpoint_malformed."""
    bad = lambda why: CheckpointError("checkpoint_malformed", why)  # noqa: E731
    if not isinstance(note, str) or _has_lone_surrogate(note):
        raise bad("not a UTF-8 string")
    if any(_is_control(ch) and ch != "\n" for ch in note):
        raise bad("control character (U+0000-U+001F) other than \\n")
    split = note.rfind("\n\n")
    if split < 0:
        raise bad("no blank line before the signatures")
    text, sig_block = note[: split + 1], note[split + 2:]
    if not sig_block:
        raise bad("no signature line")
    if not sig_block.endswith("\n"):
        raise bad("signature lines must end with \\n")
    signatures = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(EM_DASH_PREFIX):
            raise bad("signature line does not start with an em dash and a space")
        name, sep, b64 = line[len(EM_DASH_PREFIX):].partition(" ")
        if not sep or not name or "+" in name or any(_is_space(ch) for ch in name):
            raise bad("bad key name in signature line")
        blob = b64decode_strict(b64)
        if blob is None or len(blob) < 5:
            raise bad("signature is not base64 of a key id and a signature")
        signatures.append((name, blob))
    return text, text[:-1].split("\n"), signatures


def check_checkpoint_lines(lines: list[str]) -> None:
    """§5.4 checkpoint text syntax. §7.1 step 8 runs it only after the signatures were checked
    (C2SP: the text is not interpreted before it is verified), so a malformed text signed by an
    unknown key is checkpoint_unknown_key."""
    bad = lambda why: CheckpointError("checkpoint_malformed", why)  # noqa: E731
    if len(lines) < 3:
        raise bad("checkpoint needs an origin, a size and a root line")
    origin, size_line, root_line, extensions = lines[0], lines[1], lines[2], lines[3:]
    if not origin:
        raise bad("empty origin line")
    if re.fullmatch(r"0|[1-9][0-9]*", size_line) is None or int(size_line) >= 2**64:
        raise bad("tree size is not canonical decimal within u64")
    root = b64decode_strict(root_line)
    if root is None or len(root) != 32:
        raise bad("root is not canonical base64 of 32 bytes")
    if any(not ext for ext in extensions):
        raise bad("empty extension line (or more than one blank line)")


def open_checkpoint(note, keys: KeySet) -> Checkpoint:
    """§7.1 step 8, in the order the spec lists the checks; raises CheckpointError."""
    text, lines, signatures = parse_signed_note(note)

    # Signatures by keys of the set (same name and key id); all others are ignored.
    text_bytes = text.encode("utf-8")
    verified: list[Key] = []
    failed = known = 0
    for name, blob in signatures:
        for key in keys.keys:
            if key.name == name and key.key_id == blob[:4].hex():
                known += 1
                if ed25519_verify_strict(key.public_key, text_bytes, blob[4:]):
                    verified.append(key)
                else:
                    failed += 1
    if failed:
        raise CheckpointError("checkpoint_signature_invalid", "a workspace key's signature does not verify")
    if not known:
        raise CheckpointError("checkpoint_unknown_key", "no signature by a key of the set")

    check_checkpoint_lines(lines)
    if lines[0] != keys.origin:
        raise CheckpointError("checkpoint_origin_mismatch", f"origin {lines[0]!r} is not {keys.origin!r}")

    # Exactly one extension line, `time <time>`.
    extensions = lines[3:]
    times = [e for e in extensions if e.startswith("time ")]
    if len(times) != 1 or len(extensions) != 1 or not is_time(times[0][5:]):
        raise CheckpointError("checkpoint_malformed", "needs exactly one extension line 'time <time>'")
    t = times[0][5:]

    signers = [k.key_id for k in verified if k.valid_at(t)]
    if not signers:
        raise CheckpointError("key_not_valid_at_time", f"no verified signer was valid at {t}")
    return Checkpoint(lines[0], int(lines[1]), b64decode_strict(lines[2]), t, signers)


class CheckpointCache:
    """Each distinct checkpoint note is opened once (§7.2 step 4)."""

    def __init__(self, keys: KeySet):
        self.keys = keys
        self.results: dict[str, Checkpoint | CheckpointError] = {}

    def open(self, note: str) -> Checkpoint | CheckpointError:
        if note not in self.results:
            try:
                self.results[note] = open_checkpoint(note, self.keys)
            except CheckpointError as e:
                self.results[note] = e
        return self.results[note]

    def opened(self) -> list[Checkpoint]:
        return [r for r in self.results.values() if isinstance(r, Checkpoint)]


# ---------------------------------------------------------------------------
# §7.5 Witness policy: C2SP cosignature/v1 (https://c2sp.org/tlog-cosignature)
# ---------------------------------------------------------------------------
# A cosignature is a signature line of the checkpoint note (§5.4) by a witness:
#   key id    = SHA-256(name ‖ 0x0A ‖ 0x04 ‖ 32-byte Ed25519 public key)[:4]
#   signature = key id ‖ timestamp (u64, big-endian, at most 2^63 - 1) ‖ 64-byte Ed25519
#               signature over "cosignature/v1\n" ‖ "time <timestamp>\n" ‖ the note text
# (the text with its final newline, without signature lines). The message does not commit to
# the witness's name, so one public key under two names is one witness.

COSIGNER_KEY_TYPE = 0x04
MAX_COSIGNATURE_TIME = 2**63 - 1
COSIGNATURE_LEN = 4 + 8 + 64  # key id, timestamp, signature


@dataclass(frozen=True)
class Witness:
    """A witness a verifier trusts: its name, its Ed25519 public key and the key id derived
    from both (type 0x04)."""
    name: str
    key_id: bytes
    public_key: bytes

    @property
    def vkey(self) -> str:
        """The C2SP verifier key `<name>+<key id hex>+<base64(0x04 ‖ key)>`."""
        raw = bytes([COSIGNER_KEY_TYPE]) + self.public_key
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode('ascii')}"


def _bad_key_name(name: str) -> bool:
    """signed-note key names: non-empty, no '+', no whitespace, no control character."""
    return not name or "+" in name or any(_is_space(ch) or _is_control(ch) for ch in name)


def parse_witness_vkey(vkey) -> Witness:
    """A witness verifier key (C2SP signed-note vkey of type 0x04, as `allowly-witness init`
    prints it). Anything else is bad usage: Unusable (exit 64)."""
    bad = lambda why: Unusable(f"witness key {vkey!r}: {why}")  # noqa: E731
    if not isinstance(vkey, str) or vkey.count("+") < 2:
        raise bad("not <name>+<key id>+<base64 key>")
    # The name has no '+' and the key id is hex, so the first two '+' separate; base64 may
    # contain '+'.
    name, kid, b64 = vkey.split("+", 2)
    if _bad_key_name(name):
        raise bad("the name is empty or has '+', whitespace or a control character")
    if KEY_ID_RE.fullmatch(kid) is None:
        raise bad("the key id is not 8 lowercase hex digits")
    raw = b64decode_strict(b64)
    if raw is None or len(raw) != 33:
        raise bad("the key is not canonical base64 of a type byte and 32 bytes")
    if raw[0] != COSIGNER_KEY_TYPE:
        raise bad(f"type 0x{raw[0]:02x} is not a cosigner key (0x04)")
    public_key = raw[1:]
    point = ed_decode_point(public_key)
    if point is None or ed_is_small_order(point):
        raise bad("the key is not a canonical Ed25519 point of large order")
    key_id = bytes.fromhex(compute_key_id(name, public_key, COSIGNER_KEY_TYPE))
    if key_id.hex() != kid:
        raise bad("the key id does not match the name and key")
    return Witness(name, key_id, public_key)


@dataclass(frozen=True)
class WitnessPolicy:
    """§7.5: every checkpoint needs valid cosignatures by at least `quorum` distinct
    witnesses (by public key) of `witnesses`."""
    witnesses: tuple[Witness, ...]
    quorum: int

    @classmethod
    def from_vkeys(cls, vkeys, quorum) -> "WitnessPolicy":
        """From verifier key strings; raises Unusable (bad usage) on a bad key, or a quorum
        that is not between 1 and the number of distinct keys."""
        if isinstance(vkeys, str):
            vkeys = [vkeys]
        witnesses = tuple(w if isinstance(w, Witness) else parse_witness_vkey(w) for w in vkeys)
        distinct = len({w.public_key for w in witnesses})
        if not is_int(quorum) or not 1 <= quorum <= distinct:
            raise Unusable(f"witness quorum {quorum!r}: must be between 1 and the number of "
                           f"distinct witness keys ({distinct})")
        return cls(witnesses, quorum)

    def describe(self) -> str:
        return f"witness policy: every checkpoint cosigned by {self.quorum} of {len(self.witnesses)} witness keys"


def parse_cosignature(blob: bytes) -> tuple[int, bytes] | None:
    """A `cosignature/v1` signature (key id ‖ timestamp ‖ Ed25519 signature, as a signature
    line carries it after base64) → (timestamp, signature); None unless it is exactly 76
    bytes with a timestamp of at most 2^63 - 1."""
    if len(blob) != COSIGNATURE_LEN:
        return None
    timestamp = int.from_bytes(blob[4:12], "big")
    if timestamp > MAX_COSIGNATURE_TIME:
        return None
    return timestamp, blob[12:]


def cosignature_message(text: str, timestamp: int) -> bytes:
    """What a cosignature signs: the header line, the time line (decimal, no leading zeros)
    and the note text."""
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text.encode("utf-8")


class CosignatureError(Exception):
    """A signature line by a trusted witness that does not verify (§7.5 step 1)."""


def verify_cosignatures(note: str, witnesses) -> list[tuple[Witness, int]]:
    """The trusted witnesses that validly cosigned the signed note `note`: one (witness,
    timestamp) per distinct public key, in note order. Lines whose (name, key id) is no
    trusted witness's are ignored; one that is and does not verify raises CosignatureError
    (even if others are good); a note that is not a signed note raises Unusable."""
    try:
        text, _lines, signatures = parse_signed_note(note)
    except CheckpointError as e:
        raise Unusable(f"not a signed note: {e.detail}") from None
    for i, a in enumerate(witnesses):
        for b in witnesses[i + 1:]:
            if (a.name, a.key_id) == (b.name, b.key_id) and a.public_key != b.public_key:
                raise CosignatureError(f"two witness keys share the name {a.name!r} and key id {a.key_id.hex()}")
    good: list[tuple[Witness, int]] = []
    for name, blob in signatures:
        w = next((w for w in witnesses if w.name == name and w.key_id == blob[:4]), None)
        if w is None:
            continue  # the log's own signature, another witness: not ours to judge
        parsed = parse_cosignature(blob)
        if parsed is None:
            raise CosignatureError(f"the cosignature of {name} ({blob[:4].hex()}) is not a key id, "
                                   "a timestamp of at most 2^63 - 1 and a 64-byte signature")
        timestamp, signature = parsed
        if not ed25519_verify_strict(w.public_key, cosignature_message(text, timestamp), signature):
            raise CosignatureError(f"the cosignature of {name} ({blob[:4].hex()}) does not verify")
        if all(w.public_key != seen.public_key for seen, _ in good):
            good.append((w, timestamp))
    return good


class Witnessing:
    """Applies a witness policy (if any) to each distinct checkpoint note that opened, once."""

    def __init__(self, policy: WitnessPolicy | None):
        self.policy = policy
        self.judged: set[str] = set()

    def check(self, note: str, where: str, report: Report) -> None:
        if self.policy is None or note in self.judged:
            return
        self.judged.add(note)
        try:
            good = verify_cosignatures(note, self.policy.witnesses)
        except CosignatureError as e:
            report.add("witness_cosignature_invalid", f"{where}: {e}")
            return
        except Unusable:
            return  # cannot happen for a note that opened; its opening reported it
        if len(good) < self.policy.quorum:
            report.add("witness_quorum_not_met",
                       f"{where}: {len(good)} of the {self.policy.quorum} required witnesses cosigned this checkpoint")


# ---------------------------------------------------------------------------
# §4 Receipt body
# ---------------------------------------------------------------------------

KINDS = {"authorization.created", "check", "confirmation", "escalation.created",
         "escalation.resolved", "revocation", "expiry", "key.rotated",
         "scope_rules.changed"}  # 1.1
# Kinds that are workspace events (§4.3): in no trail.
WORKSPACE_KINDS = ("key.rotated", "scope_rules.changed")
DECISIONS = {"allow", "deny", "confirm", "escalate"}
FIRST_TABLE = ["v", "id", "workspace_id", "authorization_id", "seq", "prev", "log_index",
               "kind", "decision", "reason", "scopes", "resource", "time", "auth_state_hash"]


def _one_of(v, choices) -> bool:
    """v is one of the strings in choices (safe for unhashable JSON values)."""
    return isinstance(v, str) and v in choices


def _is_str_array(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _check_vkey(vkey, key_id) -> bool:
    """A verifier key <name>+<key id>+<base64(0x01 ‖ 32-byte key)> whose id matches."""
    # The name has no '+' and the key id is hex, but base64 may contain '+'.
    if not isinstance(vkey, str) or vkey.count("+") < 2:
        return False
    name, kid, b64 = vkey.split("+", 2)
    raw = b64decode_strict(b64)
    return (bool(name) and kid == key_id and raw is not None and len(raw) == 33
            and raw[0] == 1 and compute_key_id(name, raw[1:]) == kid)


def _is_nat(v) -> bool:
    """A JSON integer that is a position or an index: 0 ≤ v (§2 bounds it by 2^53-1)."""
    return is_int(v) and v >= 0


def _is_str_or_null(v) -> bool:
    return v is None or isinstance(v, str)


def _member_type_problems(body: dict) -> list[str]:
    """§7.1 step 4, first half: members of the first table that are missing, and members
    named in §4 (first table, and second table whenever present, on any kind) whose JSON
    type or encoding is wrong. Any of these: body_invalid, and verification stops.

    Readings (spec §4 / §7.1 step 4):
    - an `id` member is read as a JSON string; whether it matches the §2 id form is the
      §4 rule "ids match §2", reported without stopping (see _body_rule_problems);
    - `seq` and `log_index` are positions, so a negative integer is the wrong encoding;
    - the sub-members listed for `grant`, `approval` and `key` are all required, with the
      types listed; members they do not list are accepted (unknown members, §4);
    - `key.vkey` is a §6.2 verifier key: <name>+<key id>+<base64(0x01 ‖ 32 bytes)>, its
      key id the one computed from name and key, and equal to `key.key_id`."""
    p = [f"missing member {m}" for m in FIRST_TABLE if m not in body]
    g = body.get
    checks = [
        ("v", is_int, "an integer"),
        ("id", lambda v: isinstance(v, str), "a string"),
        ("workspace_id", lambda v: isinstance(v, str), "a string"),
        ("authorization_id", _is_str_or_null, "a string or null"),
        ("seq", lambda v: v is None or _is_nat(v), "a non-negative integer or null"),
        ("prev", lambda v: v is None or is_hash(v), "a hash or null"),
        ("log_index", _is_nat, "a non-negative integer"),
        ("kind", lambda v: _one_of(v, KINDS), "a known kind"),
        ("decision", lambda v: v is None or _one_of(v, DECISIONS), "allow/deny/confirm/escalate or null"),
        ("reason", _is_str_or_null, "a string or null"),
        ("scopes", _is_str_array, "an array of strings"),
        ("resource", _is_str_or_null, "a string or null"),
        ("time", is_time, "a §2 time"),
        ("auth_state_hash", lambda v: v is None or is_hash(v), "a hash or null"),
        # Second table: typed whenever present, whatever the kind.
        ("grant", _is_grant, "an object {subject, scopes, resources, expires_at, metadata_hash}"),
        ("approval", _is_approval, "an object {outcome, by, shown_hash}"),
        ("escalation_id", lambda v: isinstance(v, str), "a string"),
        ("context_hash", is_hash, "a hash"),
        ("key", _is_key_member, "an object {key_id, vkey, replaces}"),
        # Format 1.1 (§4 second table).
        ("asked_authorization_id", _is_str_or_null, "a string"),
        ("expires_at", lambda v: v is None or is_time(v), "a §2 time"),
        ("scope_rules", lambda v: v is None or (isinstance(v, dict) and all(
            _one_of(x, ("confirm", "escalate")) for x in v.values())), "an object of confirm/escalate"),
    ]
    for member, ok, what in checks:
        if member in body and not ok(g(member)):
            p.append(f"{member} is not {what}")
    return p


def _is_grant(v) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("subject"), str)
            and _is_str_array(v.get("scopes")) and _is_str_array(v.get("resources"))
            and "expires_at" in v and (v["expires_at"] is None or is_time(v["expires_at"]))
            and "metadata_hash" in v and (v["metadata_hash"] is None or is_hash(v["metadata_hash"])))


def _is_approval(v) -> bool:
    return (isinstance(v, dict) and _one_of(v.get("outcome"), ("approved", "declined"))
            and isinstance(v.get("by"), str)
            and "shown_hash" in v and (v["shown_hash"] is None or is_hash(v["shown_hash"]))
            # Format 1.1: the hash of the answerer's note, optional.
            and (v.get("note_hash") is None or is_hash(v["note_hash"])))


def _is_key_member(v) -> bool:
    return (isinstance(v, dict) and is_key_id(v.get("key_id")) and is_key_id(v.get("replaces"))
            and _check_vkey(v.get("vkey"), v.get("key_id")))


def _body_rule_problems(body: dict) -> list[str]:
    """§7.1 step 4, second half: the §4 rules, on a body whose members were read. Each
    broken rule is body_invalid, and verification continues."""
    p: list[str] = []
    g = body.get
    kind = body["kind"]
    if body["v"] != 1:
        p.append("v is not 1")
    for m in ("id", "workspace_id", "authorization_id", "escalation_id", "asked_authorization_id"):
        if g(m) is not None and not is_id(g(m)):
            p.append(f"{m} is not a §2 id")
    # log_index ≤ 2^53-1 holds already: §3 rejects larger integer literals.
    # Format 1.1: reason unknown_authorization ⇔ asked_authorization_id present, and such a
    # body is a check denied outside any trail (a workspace event).
    unknown = g("reason") == "unknown_authorization" or g("asked_authorization_id") is not None
    if unknown:
        if not (kind == "check" and g("decision") == "deny" and g("reason") == "unknown_authorization"
                and g("asked_authorization_id") is not None
                and all(g(m) is None for m in ("authorization_id", "seq", "prev"))):
            p.append("an unknown_authorization check is a denied check with asked_authorization_id "
                     "and null authorization_id, seq and prev")
    elif kind in WORKSPACE_KINDS:
        if any(g(m) is not None for m in ("authorization_id", "seq", "prev")):
            p.append(f"{kind} must have null authorization_id, seq and prev")
    else:
        if g("authorization_id") is None or g("seq") is None:
            p.append("authorization_id and seq must be non-null")
        seq0, created, no_prev = g("seq") == 0, kind == "authorization.created", g("prev") is None
        if not (seq0 == created == no_prev):
            p.append("seq = 0 ⇔ kind = authorization.created ⇔ prev = null is broken")
        if created and "grant" not in body:
            p.append("authorization.created has no grant")
    # §4.1, second table: the members each kind requires (null counts as absent). Every
    # answer has an approval but an escalation nobody answered in time (escalation_expired);
    # a check that escalates names its escalation. context_hash, and expires_at (1.0 has
    # none), are optional. A second-table member on another kind is not a broken rule (only
    # its type is checked): unknown-to-that-kind members are accepted like unknown members.
    answered = kind == "confirmation" or (kind == "escalation.resolved" and g("reason") != "escalation_expired")
    if answered and g("approval") is None:
        p.append(f"{kind} has no approval")
    escalates = kind in ("escalation.created", "escalation.resolved") or (kind == "check" and g("decision") == "escalate")
    if escalates and g("escalation_id") is None:
        p.append(f"{kind} has no escalation_id")
    if kind == "key.rotated" and g("key") is None:
        p.append("key.rotated has no key")
    # Format 1.1: the rule set is in scope_rules.changed, and only there.
    if (g("scope_rules") is not None) != (kind == "scope_rules.changed"):
        p.append("scope_rules is present exactly in scope_rules.changed")
    return p


def read_body(body) -> tuple[list[str], list[str]]:
    """§7.1 step 4. Returns (fatal, rules): `fatal` non-empty means body_invalid and stop;
    otherwise each entry of `rules` is a broken §4 rule (body_invalid, continue)."""
    if not isinstance(body, dict):
        return ["body is not an object"], []
    fatal = _member_type_problems(body)
    if fatal:
        return fatal, []
    return [], _body_rule_problems(body)


# ---------------------------------------------------------------------------
# §6.1 Envelopes and §7.1 verification of one receipt
# ---------------------------------------------------------------------------

SIGNED_MEMBERS = {"status", "body", "log_index", "inclusion_proof", "checkpoint"}
PENDING_MEMBERS = {"status", "receipt_id", "log_index", "leaf_hash", "body"}


def envelope_problem(doc, depth: int = 1) -> str | None:
    """§6.1 shape of a signed or pending receipt (ignoring what is inside `body`).

    Exactly the documented members, each of its type and encoding; any problem makes
    the document unusable input (record_malformed for a bundle line). `depth` is the
    envelope's nesting level (§3): 1 for a receipt document, 2 in a bundle line."""
    if not isinstance(doc, dict):
        return "receipt is not a JSON object"
    bad = ijson_violations(doc, depth, skip=frozenset({"body"}))
    if bad:
        return "; ".join(bad)
    status = doc.get("status")
    if status == "signed":
        if set(doc) != SIGNED_MEMBERS:
            return f"signed receipt must have exactly {sorted(SIGNED_MEMBERS)}"
        if not (isinstance(doc["inclusion_proof"], list) and all(is_hash(h) for h in doc["inclusion_proof"])):
            return "inclusion_proof is not an array of hashes"
        if not isinstance(doc["checkpoint"], str):
            return "checkpoint is not a string"
    elif status == "pending":
        if set(doc) != PENDING_MEMBERS:
            return f"pending receipt must have exactly {sorted(PENDING_MEMBERS)}"
        if not is_id(doc["receipt_id"]):
            return "receipt_id is not an id"
        if not is_hash(doc["leaf_hash"]):
            return "leaf_hash is not a hash"
    else:
        return "status is neither 'signed' nor 'pending'"
    if not (is_int(doc["log_index"]) and doc["log_index"] >= 0):
        return "log_index is not a non-negative integer"
    if not isinstance(doc["body"], dict):
        return "body is not an object"
    return None


@dataclass
class Leaf:
    """What the bundle checks (§7.2 steps 5-8) need from one readable receipt."""
    body: dict
    hash: bytes
    log_index: int
    authorization_id: str | None
    seq: int | None
    prev: str | None
    signed: bool


def verify_receipt_steps(doc: dict, keys: KeySet, cache: CheckpointCache, report: Report,
                         where: str = "receipt", body_depth: int = BODY_DEPTH_IN_RECEIPT,
                         witnessing: Witnessing | None = None) -> Leaf | None:
    """§7.1 steps 3-9 on an envelope already checked by envelope_problem, and §7.5 on its
    checkpoint when `witnessing` has a policy.

    Returns the leaf when the body could be read (step 4 did not stop), for the bundle
    checks (§7.2 step 6). `body_depth` is the body's nesting level (§3)."""
    body = doc["body"]
    # Step 3: the §3 input rules, then canonicalize.
    violations = ijson_violations(body, body_depth)
    if violations:
        report.add("body_not_canonical", f"{where}: {'; '.join(violations)}")
        return None
    canon = canonical_json(body)

    # Step 4: read the members (a missing first-table member or a wrong type/encoding:
    # body_invalid, stop), then the §4 rules (each broken one: body_invalid, continue).
    fatal, rules = read_body(body)
    if fatal:
        report.add("body_invalid", f"{where}: {'; '.join(fatal)}")
        return None
    if rules:
        report.add("body_invalid", f"{where}: {'; '.join(rules)}")

    # Step 5.
    if body["workspace_id"] != keys.workspace_id:
        report.add("workspace_mismatch", f"{where}: body workspace {body['workspace_id']!r} is not {keys.workspace_id!r}")
    if body["log_index"] != doc["log_index"]:
        report.add("log_index_mismatch", f"{where}: envelope log_index {doc['log_index']} ≠ body {body['log_index']}")

    # Step 6.
    h = leaf_hash(canon)
    leaf = Leaf(body, h, body["log_index"], body["authorization_id"], body["seq"],
                body["prev"], doc["status"] == "signed")

    # Step 7: pending receipts.
    if doc["status"] == "pending":
        if doc["leaf_hash"] != h.hex() or doc["receipt_id"] != body["id"]:
            report.add("envelope_mismatch", f"{where}: leaf_hash or receipt_id does not match the body")
        report.add("not_signed", f"{where}: pending receipt {body['id']!r} is not yet signed")
        return leaf

    # Step 8: the checkpoint.
    cp = cache.open(doc["checkpoint"])
    if isinstance(cp, CheckpointError):
        report.add(cp.code, f"{where}: checkpoint: {cp.detail}")
        return leaf
    if witnessing is not None:  # §7.5, on a checkpoint that opened
        witnessing.check(doc["checkpoint"], f"{where}: checkpoint", report)

    # Step 9: inclusion of h at the envelope's `log_index` in the checkpoint's tree; when
    # it differs from body.log_index this fails too (receipt-envelope-log-index).
    proof = [bytes.fromhex(x) for x in doc["inclusion_proof"]]
    if not verify_inclusion(doc["log_index"], cp.size, proof, h, cp.root):
        report.add("inclusion_proof_invalid", f"{where}: leaf {doc['log_index']} not proven in tree of size {cp.size}")
    return leaf


def verify_receipt(data: bytes, keys: KeySet, witness: WitnessPolicy | None = None) -> Report:
    """§7.1 (step 1, the key set, is done by the caller), and §7.5 with a witness policy."""
    try:  # step 2
        doc = parse_json(data)
    except JsonSyntaxError as e:
        raise Unusable(f"receipt: {e}") from None
    problem = envelope_problem(doc)
    if problem:
        raise Unusable(f"receipt: {problem}")
    report = Report()
    if witness is not None:
        report.notes.append(witness.describe())
    verify_receipt_steps(doc, keys, CheckpointCache(keys), report, witnessing=Witnessing(witness))
    return report


# ---------------------------------------------------------------------------
# §6.3 / §7.2 Evidence bundles
# ---------------------------------------------------------------------------

MAX_LINE = 1 << 20  # 1 MiB


@dataclass
class Scope:
    kind: str  # "authorization" | "log"
    authorization_id: str | None = None
    last_seq: int | None = None
    start: int | None = None  # "from"
    end: int | None = None  # "to" (exclusive)


def bundle_lines(data: bytes) -> list[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers (blank = empty or only spaces/tabs/CR)."""
    return [(i + 1, line) for i, line in enumerate(data.split(b"\n")) if line.strip(b" \t\r")]


def parse_header(line: bytes) -> tuple[str, Scope]:
    """§7.2 step 1: the header line, else Unusable."""
    if len(line) > MAX_LINE:
        raise Unusable("header line longer than 1 MiB")
    try:
        doc = parse_json(line)
    except JsonSyntaxError as e:
        raise Unusable(f"header: {e}") from None
    if ijson_violations(doc):
        raise Unusable("header: " + "; ".join(ijson_violations(doc)))
    if not (isinstance(doc, dict) and set(doc) == {"type", "header"} and doc["type"] == "bundle"
            and isinstance(doc["header"], dict)):
        raise Unusable('line 1 is not {"type":"bundle","header":{...}}')
    h = doc["header"]
    if not (is_int(h.get("v")) and h["v"] == 1):
        raise Unusable("header v is not 1")
    if not is_id(h.get("workspace_id")) or not is_time(h.get("created_at")):
        raise Unusable("header workspace_id or created_at is malformed")
    s = h.get("scope")
    if isinstance(s, dict) and s.get("kind") == "authorization" and set(s) == {"kind", "authorization_id", "last_seq"} \
            and is_id(s["authorization_id"]) and is_int(s["last_seq"]) and s["last_seq"] >= 0:
        scope = Scope("authorization", authorization_id=s["authorization_id"], last_seq=s["last_seq"])
    elif isinstance(s, dict) and s.get("kind") == "log" and set(s) == {"kind", "from", "to"} \
            and is_int(s["from"]) and is_int(s["to"]) and 0 <= s["from"] <= s["to"]:
        scope = Scope("log", start=s["from"], end=s["to"])
    else:
        raise Unusable("header scope is malformed")
    return h["workspace_id"], scope


@dataclass
class Records:
    keysets: list = field(default_factory=list)  # raw key set documents
    checkpoints: list[str] = field(default_factory=list)
    consistency: list[tuple[int, int, list[bytes]]] = field(default_factory=list)
    receipts: list[tuple[int, dict]] = field(default_factory=list)  # (line number, envelope)


def read_record(lineno: int, line: bytes, records: Records, report: Report) -> None:
    """§7.2 step 1: one non-header line; record_malformed if it cannot be read."""
    where = f"line {lineno}"
    if len(line) > MAX_LINE:
        report.add("record_malformed", f"{where}: longer than 1 MiB")
        return
    try:
        doc = parse_json(line)
    except JsonSyntaxError as e:
        report.add("record_malformed", f"{where}: {e}")
        return
    rtype = doc.get("type") if isinstance(doc, dict) else None
    if rtype not in ("keys", "checkpoint", "consistency", "receipt") or set(doc) != {"type", rtype}:
        report.add("record_malformed", f"{where}: not a keys/checkpoint/consistency/receipt record")
        return
    value = doc[rtype]
    if rtype == "receipt":
        # I-JSON violations inside the body are body_not_canonical (§7.1 step 3), later;
        # anything wrong with the envelope around it is record_malformed (§6.1).
        bad = ijson_violations(doc, skip=frozenset({"receipt"}))
        problem = "; ".join(bad) if bad else envelope_problem(value, depth=2)
        if problem:
            report.add("record_malformed", f"{where}: {problem}")
            return
        records.receipts.append((lineno, value))
        return
    if rtype == "keys":
        # The record around the key set must read (else record_malformed); the key set
        # itself, §3 input rules included, is checked by load_keyset in step 2, and a
        # broken one is unusable input even with pinned keys (§6.2).
        bad = ijson_violations(doc, skip=frozenset({"keys"}))
        if bad:
            report.add("record_malformed", f"{where}: {'; '.join(bad)}")
        else:
            records.keysets.append(value)
        return
    bad = ijson_violations(doc)
    if bad:
        report.add("record_malformed", f"{where}: {'; '.join(bad)}")
    elif rtype == "checkpoint":
        if isinstance(value, str):
            records.checkpoints.append(value)
        else:
            report.add("record_malformed", f"{where}: checkpoint is not a string")
    else:
        if (isinstance(value, dict) and set(value) == {"old_size", "new_size", "proof"}
                and is_int(value["old_size"]) and value["old_size"] >= 0
                and is_int(value["new_size"]) and value["new_size"] >= 0
                and isinstance(value["proof"], list) and all(is_hash(x) for x in value["proof"])):
            records.consistency.append((value["old_size"], value["new_size"],
                                        [bytes.fromhex(x) for x in value["proof"]]))
        else:
            report.add("record_malformed", f"{where}: consistency record is malformed")


def choose_keys(records: Records, pinned: KeySet | None, header_ws: str, report: Report) -> KeySet:
    """§7.2 step 2."""
    # A broken key set, pinned keys or not: Unusable (§6.2). Key sets sit at level 2 (§3).
    bundle_sets = [load_keyset(doc, depth=2) for doc in records.keysets]
    if pinned is not None:
        pinned_keys = {(k.key_id, k.public_key) for k in pinned.keys}
        for ks in bundle_sets:
            for k in ks.keys:
                if (k.key_id, k.public_key) not in pinned_keys:
                    report.add("keys_mismatch", f"bundle key {k.key_id} is not a pinned key")
        keys = pinned
    else:
        if not bundle_sets:
            raise Unusable("no pinned keys and no key set in the bundle")
        keys = bundle_sets[0]
        if any(ks.canonical != keys.canonical for ks in bundle_sets[1:]):
            report.add("keys_mismatch", "the bundle carries two different key sets")
        report.unpinned = True
        report.notes.append("keys were NOT pinned: the bundle's own key set was used, so only its "
                            "internal consistency is proven (§10)")
    if header_ws != keys.workspace_id:
        report.add("workspace_mismatch", f"header workspace {header_ws!r} is not the keys' {keys.workspace_id!r}")
    return keys


def check_log(leaves: list[Leaf], report: Report) -> dict[int, bytes]:
    """§7.2 step 5: one leaf per log index. Returns index -> leaf hash; an index with
    conflicting leaves is left out (it has no trustworthy leaf), so line order never matters."""
    by_index: dict[int, bytes] = {}
    conflicted: set[int] = set()
    for leaf in leaves:
        seen = by_index.setdefault(leaf.log_index, leaf.hash)
        if seen != leaf.hash:
            report.add("log_index_conflict", f"two different leaves at log index {leaf.log_index}")
            conflicted.add(leaf.log_index)
    for i in conflicted:
        del by_index[i]
    return by_index


def check_trails(leaves: list[Leaf], scope: Scope, report: Report) -> dict[str, int]:
    """§7.2 step 6. Returns authorization id -> highest seq present."""
    trails: dict[str, dict[int, list[Leaf]]] = {}
    for leaf in leaves:
        if leaf.authorization_id is None or leaf.seq is None:
            continue  # a workspace event (key.rotated) is in no trail
        by_seq = trails.setdefault(leaf.authorization_id, {})
        same = by_seq.setdefault(leaf.seq, [])
        if all(other.hash != leaf.hash for other in same):  # identical copies are one receipt
            same.append(leaf)
    must_start_at_zero = scope.kind == "authorization" or scope.start == 0
    ends = {}
    for auth, by_seq in sorted(trails.items()):
        seqs = sorted(by_seq)
        ends[auth] = seqs[-1]
        for s in seqs:
            if len(by_seq[s]) > 1:
                report.add("seq_conflict", f"{auth}: {len(by_seq[s])} different receipts at seq {s}")
        if must_start_at_zero and seqs[0] != 0:
            report.add("receipt_missing", f"{auth}: trail starts at seq {seqs[0]}, not 0")
        for a, b in zip(seqs, seqs[1:]):
            if b != a + 1:
                report.add("receipt_missing", f"{auth}: seqs {a + 1}..{b - 1} are missing")
                continue
            for y in by_seq[b]:
                # With a seq_conflict at `a` there are several candidates; the link holds if
                # `prev` names any of them (order-independent; see bundle-inserted-forged-receipt).
                linked = [x for x in by_seq[a] if y.prev == x.hash.hex()]
                if not linked:
                    report.add("chain_broken", f"{auth}: prev of seq {b} is not the leaf hash of seq {a}")
                if any(y.log_index <= x.log_index for x in (linked or by_seq[a])):
                    report.add("trail_order", f"{auth}: seq {b} is not after seq {a} in the log")
    return ends


def check_scope(leaves: list[Leaf], scope: Scope, trail_ends: dict[str, int],
                by_index: dict[int, bytes], checkpoints: list[Checkpoint], report: Report) -> None:
    """§7.2 step 7."""
    if scope.kind == "authorization":
        for leaf in leaves:
            if leaf.authorization_id != scope.authorization_id:
                report.add("out_of_scope", f"log index {leaf.log_index} is not in authorization {scope.authorization_id}")
            elif leaf.seq is not None and leaf.seq > scope.last_seq:
                report.add("out_of_scope", f"seq {leaf.seq} is after last_seq {scope.last_seq}")
        end = trail_ends.get(scope.authorization_id)
        if end is None or end < scope.last_seq:
            report.add("truncated", f"trail ends at seq {end}, header promises {scope.last_seq}")
    else:
        for leaf in leaves:
            if not scope.start <= leaf.log_index < scope.end:
                report.add("out_of_scope", f"log index {leaf.log_index} is outside {scope.start}..{scope.end}")
        missing = [i for i in range(scope.start, scope.end) if i not in by_index]
        if missing:
            report.add("log_leaf_missing", f"{len(missing)} log indexes in scope have no receipt, first {missing[0]}")
        for cp in checkpoints:
            if cp.size > scope.end:
                report.add("truncated", f"a checkpoint commits to {cp.size} leaves, the scope ends at {scope.end}")


def check_checkpoints(checkpoints: list[Checkpoint], by_index: dict[int, bytes],
                      consistency: list[tuple[int, int, list[bytes]]], report: Report) -> None:
    """§7.2 step 8."""
    roots: dict[int, list[bytes]] = {}
    for cp in checkpoints:
        same = roots.setdefault(cp.size, [])
        if cp.root not in same:
            same.append(cp.root)
    for size, rs in roots.items():
        if len(rs) > 1:
            report.add("checkpoint_fork", f"{len(rs)} different roots for tree size {size}")

    # P: leaves 0..P-1 are all present.
    p = 0
    while p in by_index:
        p += 1
    present = [by_index[i] for i in range(p)]
    for size, rs in sorted(roots.items()):
        if size <= p and any(r != merkle_root(present[:size]) for r in rs):
            report.add("checkpoint_root_mismatch", f"the bundle's leaves do not give the root of size {size}")

    # Every consistency record between two checkpoints of the bundle must verify.
    for m, n, proof in consistency:
        if m in roots and n in roots:
            if not all(verify_consistency(m, n, proof, ro, rn) for ro in roots[m] for rn in roots[n]):
                report.add("consistency_proof_invalid", f"consistency proof {m} -> {n} fails")
    # Consecutive sizes above P need one.
    sizes = sorted(roots)
    for m, n in zip(sizes, sizes[1:]):
        if n > p and not any(rm == m and rn == n for rm, rn, _ in consistency):
            report.add("consistency_unproven", f"no consistency proof {m} -> {n}")


# ---------------------------------------------------------------------------
# §7.4 Semantic verification
# ---------------------------------------------------------------------------

REFUSED_ANSWERS = ("confirmation_used", "confirmation_expired")


def scope_matches(pattern: str, scope: str) -> bool:
    """§7.4: `*` is every scope, `a.b.*` every longer scope under `a.b.`, else equality."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-1]  # keeps the dot
        return scope.startswith(prefix) and len(scope) > len(prefix)
    return pattern == scope


def resource_matches(entry: str, resource: str) -> bool:
    return resource.startswith(entry[:-1]) if entry.endswith("*") else entry == resource


def table_denies(trail: dict, body: dict) -> str | None:
    """§7.4 rows 1-4: why the authorization alone denies, or None."""
    grant = trail["grant"]
    if trail["ended"] is not None:
        return f"the authorization ended at log index {trail['ended']}"
    if grant["expires_at"] is not None and body["time"] >= grant["expires_at"]:  # §2: times compare as strings
        return "the grant had expired"
    if not all(any(scope_matches(g, s) for g in grant["scopes"]) for s in body["scopes"]):
        return "the grant does not cover every scope asked for"
    if grant["resources"]:
        r = body["resource"]
        if r is None or not any(resource_matches(e, r) for e in grant["resources"]):
            return "the grant does not cover the resource"
    return None


def rules_give(rules: dict, scopes: list) -> str:
    """§7.4 rows 5-7."""
    def wants(word):
        return any(rule == word and any(scope_matches(p, s) for s in scopes) for p, rule in rules.items())
    return "escalate" if wants("escalate") else "confirm" if wants("confirm") else "allow"


def allowing_answer_problem(trail: dict, body: dict) -> str | None:
    """§7.4 steps 6-7: what an allowing answer needs from the trail and the person."""
    if trail["ended"] is not None:
        return f"the authorization ended at log index {trail['ended']}"
    expires = trail["grant"]["expires_at"]
    if expires is not None and body["time"] >= expires:
        return "the grant had expired"
    approval = body.get("approval")
    if not (isinstance(approval, dict) and approval.get("outcome") == "approved"):
        return "no answer approved it"
    return None


def check_semantics(leaves: list[Leaf], report: Report) -> int:
    """§7.4 on a bundle without findings. Returns how many decisions were judged."""
    bodies = {}
    for leaf in leaves:
        bodies.setdefault(leaf.log_index, leaf.body)
    rules, rules_at = None, None
    trails: dict[str, dict] = {}
    judged = 0
    for index in sorted(bodies):
        b = bodies[index]
        kind, decision, auth = b["kind"], b["decision"], b["authorization_id"]
        if kind == "scope_rules.changed":  # step 1
            rules, rules_at = b["scope_rules"], index
            continue
        if auth is None:
            continue
        if kind == "authorization.created":  # step 2
            trails[auth] = {"grant": b["grant"], "ended": None, "confirmations": [], "escalations": {}}
            continue
        trail = trails.get(auth)
        if trail is None:  # step 3
            continue
        problem = None
        if kind in ("revocation", "expiry"):  # step 4
            if trail["ended"] is None:
                trail["ended"] = index
        elif kind == "check":  # step 5
            judged += 1
            if decision == "confirm":
                trail["confirmations"].append({"scopes": b["scopes"], "resource": b["resource"],
                                               "deadline": b.get("expires_at"), "answered": False})
            elif decision == "escalate" and b.get("escalation_id") is not None:
                trail["escalations"][b["escalation_id"]] = {"deadline": b.get("expires_at"), "resolved": False}
            if decision in ("allow", "confirm", "escalate"):
                denied = table_denies(trail, b)
                if denied:
                    problem = f"{decision}, but {denied}"
                elif rules is not None:
                    want = rules_give(rules, b["scopes"])
                    if want != decision:
                        problem = f"{decision}, but the scope rules of log index {rules_at} call for {want}"
        elif kind == "confirmation":  # step 6
            judged += 1
            found = False
            if b["reason"] not in REFUSED_ANSWERS:
                candidates = [(c["deadline"] is None, c["deadline"] or "", i, c)
                              for i, c in enumerate(trail["confirmations"])
                              if not c["answered"] and c["scopes"] == b["scopes"] and c["resource"] == b["resource"]
                              and (c["deadline"] is None or b["time"] < c["deadline"])]
                if candidates:
                    min(candidates, key=lambda t: t[:3])[3]["answered"] = True
                    found = True
            if decision == "allow":
                problem = allowing_answer_problem(trail, b)
                if problem:
                    problem = f"allow, but {problem}"
                elif not found:
                    problem = "allow, but it answers no open confirmation of this request"
        elif kind == "escalation.resolved":  # step 7
            judged += 1
            esc = trail["escalations"].get(b.get("escalation_id"))
            before = None if esc is None else dict(esc)
            if esc is not None:
                esc["resolved"] = True
            if decision == "allow":
                problem = allowing_answer_problem(trail, b)
                if problem:
                    problem = f"allow, but {problem}"
                elif before is None:
                    problem = "allow, but no escalate check of this trail opened its escalation"
                elif before["resolved"]:
                    problem = "allow, but its escalation was already resolved"
                elif before["deadline"] is not None and b["time"] >= before["deadline"]:
                    problem = "allow, but it came after its escalation's deadline"
        if problem:
            report.add("decision_unjustified", f"receipt {b['id']} (log index {index}): {problem}")
    return judged


def verify_bundle(data: bytes, pinned: KeySet | None, extra_checkpoints: list[str] = (),
                  semantics: bool | None = None, witness: WitnessPolicy | None = None) -> Report:
    """§7.2, then §7.4 (`semantics` None: on for log exports only); with a witness policy,
    §7.5 on every checkpoint that opened (listed, extra, or carried by a receipt)."""
    report = Report()
    if witness is not None:
        report.notes.append(witness.describe())
    lines = bundle_lines(data)
    if not lines:
        raise Unusable("empty bundle")
    header_ws, scope = parse_header(lines[0][1])  # step 1
    records = Records()
    for lineno, line in lines[1:]:
        read_record(lineno, line, records, report)
    keys = choose_keys(records, pinned, header_ws, report)  # step 2

    cache = CheckpointCache(keys)  # step 3
    witnessing = Witnessing(witness)
    for i, note in enumerate(list(records.checkpoints) + list(extra_checkpoints)):
        cp = cache.open(note)
        if isinstance(cp, CheckpointError):
            report.add(cp.code, f"checkpoint #{i + 1}: {cp.detail}")
        else:
            witnessing.check(note, f"checkpoint #{i + 1}", report)  # §7.5

    leaves = []  # step 4
    for lineno, doc in records.receipts:
        leaf = verify_receipt_steps(doc, keys, cache, report, where=f"line {lineno}",
                                    body_depth=BODY_DEPTH_IN_BUNDLE, witnessing=witnessing)
        if leaf is not None:
            leaves.append(leaf)

    checkpoints = cache.opened()
    by_index = check_log(leaves, report)  # step 5
    ends = check_trails(leaves, scope, report)  # step 6
    check_scope(leaves, scope, ends, by_index, checkpoints, report)  # step 7
    check_checkpoints(checkpoints, by_index, records.consistency, report)  # step 8
    if scope.kind == "log" if semantics is None else semantics:  # §7.4
        if report.findings:
            report.notes.append("decisions not re-derived: the bundle already has findings (§7.4)")
        else:
            report.notes.append(f"decisions re-derived from the log: {check_semantics(leaves, report)}")
    return report


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def print_report(report: Report) -> None:
    for note in report.notes:
        print(f"note: {note}")
    for code, detail in report.findings:
        print(f"{code} [{FINDING_CLASS[code]}]: {detail}")
    print(f"outcome: {report.outcome()}")


def run_vector(base: Path, v: dict) -> tuple[str, set[str]]:
    """Outcome and codes of one manifest vector; 'unusable' if the verifier stopped (exit 64)."""
    try:
        keys = read_keyset_file(str(base / v["keys"])) if v.get("keys") else None
        data = (base / v["file"]).read_bytes()
        if v["kind"] == "receipt":
            if keys is None:
                raise Unusable("a receipt vector needs keys")
            report = verify_receipt(data, keys)
        else:
            report = verify_bundle(data, keys, semantics=v.get("semantics"))
    except Unusable:
        return "unusable", set()
    return report.outcome(), report.codes()


def cmd_vectors(manifest_path: str) -> int:
    base = Path(manifest_path).parent
    manifest = json.loads(Path(manifest_path).read_text("utf-8"))
    passed = failed = 0
    for v in manifest["vectors"]:
        outcome, codes = run_vector(base, v)
        want_codes = set(v.get("codes", []))
        if outcome == v["outcome"] and codes == want_codes:
            passed += 1
            print(f"ok   {v['name']}")
        else:
            failed += 1
            print(f"FAIL {v['name']}: want {v['outcome']} {sorted(want_codes)} got {outcome} {sorted(codes)}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


USAGE = """usage: verify.py vectors MANIFEST
       verify.py receipt FILE --keys KEYS [WITNESS POLICY]
       verify.py bundle FILE [--keys KEYS] [--checkpoint NOTE_FILE ...] [--semantics | --no-semantics]
                 [WITNESS POLICY]
WITNESS POLICY (§7.5): --witness-key VKEY [--witness-key VKEY ...] --witness-quorum N
       every checkpoint must be cosigned by N distinct witnesses of the given keys"""


def main(argv: list[str]) -> int:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 25_000))
    if len(argv) == 2 and argv[0] == "vectors":
        return cmd_vectors(argv[1])
    if len(argv) < 2 or argv[0] not in ("receipt", "bundle"):
        print(USAGE, file=sys.stderr)
        return EXIT_UNUSABLE
    cmd, file, rest = argv[0], argv[1], argv[2:]
    keys_path, extra, semantics = None, [], None
    witness_keys, witness_quorum = [], None
    while rest:
        if rest[0] in ("--semantics", "--no-semantics") and cmd == "bundle" and semantics is None:
            semantics = rest[0] == "--semantics"
            rest = rest[1:]
            continue
        if rest[0] == "--keys" and len(rest) > 1 and keys_path is None:
            keys_path = rest[1]
        elif rest[0] == "--checkpoint" and len(rest) > 1 and cmd == "bundle":
            extra.append(rest[1])
        elif rest[0] == "--witness-key" and len(rest) > 1:
            witness_keys.append(rest[1])
        elif rest[0] == "--witness-quorum" and len(rest) > 1 and witness_quorum is None \
                and re.fullmatch(r"[0-9]+", rest[1]):
            witness_quorum = int(rest[1])
        else:
            print(USAGE, file=sys.stderr)
            return EXIT_UNUSABLE
        rest = rest[2:]
    if bool(witness_keys) != (witness_quorum is not None):  # each needs the other
        print("--witness-key and --witness-quorum go together\n" + USAGE, file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        witness = WitnessPolicy.from_vkeys(witness_keys, witness_quorum) if witness_keys else None
        keys = read_keyset_file(keys_path) if keys_path else None  # §7.1 step 1
        data = Path(file).read_bytes()
        if cmd == "receipt":
            if keys is None:
                raise Unusable("receipt needs --keys")
            report = verify_receipt(data, keys, witness)
        else:
            notes = []
            for path in extra:
                try:
                    notes.append(Path(path).read_bytes().decode("utf-8"))
                except UnicodeDecodeError:
                    notes.append("\x00")  # not UTF-8: will be checkpoint_malformed
            report = verify_bundle(data, keys, notes, semantics, witness)
    except OSError as e:
        print(f"unusable input: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    except Unusable as e:
        print(f"unusable input: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    print_report(report)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def _cli() -> None:
    """The `allowly-verify-py` console script."""
    sys.exit(main(sys.argv[1:]))
