//! RFC 8785 JSON Canonicalization Scheme (JCS) and a strict I-JSON (RFC 7493) parser.
//!
//! Signatures are computed over canonical bytes, so two properties matter more than speed:
//!
//! * **One meaning per input.** [`parse_strict`] refuses everything RFC 8259 leaves open
//!   (duplicate keys, lone surrogates, integers a double cannot hold exactly, non-UTF-8 bytes),
//!   so a verifier never picks one of several interpretations of the signed text.
//! * **Closure.** Everything [`canonicalize`] / [`to_canonical_vec`] emit is accepted by
//!   [`parse_strict`] and is a fixed point of `canonicalize ∘ parse_strict`. This is why the
//!   canonicalizers also enforce [`MAX_DEPTH`] and refuse doubles in `[2^53, 10^21)`: ECMAScript
//!   prints those as bare integer literals (`9007199254740992`) that the strict parser rejects.

use std::cmp::Ordering;
use std::fmt;

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Map, Number, Value};

use crate::{Error, Result};

/// Max nesting depth accepted by parse_strict.
///
/// Arrays and objects each count one level; scalars count none, so `[[1]]` has depth 2.
/// The canonicalizers enforce the same bound so that their output always re-parses.
pub const MAX_DEPTH: usize = 128;

/// Largest integer magnitude accepted: 2^53 - 1.
///
/// Beyond it an IEEE-754 double (what every JCS implementation computes with) no longer holds
/// every integer exactly, so two distinct literals could canonicalize to the same bytes.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

// ---------------------------------------------------------------------------------------------
// Strict parser
// ---------------------------------------------------------------------------------------------

/// Strict parse of one JSON text (RFC 8259) into serde_json::Value, with I-JSON rules:
///
/// * input must be UTF-8 (no BOM); only space, `\t`, `\n`, `\r` count as whitespace;
///   exactly one value, optionally surrounded by whitespace;
/// * duplicate object keys (compared after unescaping) → [`Error::DuplicateKey`];
/// * nesting deeper than [`MAX_DEPTH`] → [`Error::TooDeep`] (checked before recursing, so
///   hostile input cannot exhaust the stack);
/// * `\u` escapes must not leave a lone surrogate; raw control characters in strings are errors;
/// * a number without fraction or exponent is an integer and must be within
///   ±[`MAX_SAFE_INTEGER`] ([`Error::IntegerOutOfRange`]) — it is never silently turned into a
///   float; `-0` is the integer 0;
/// * a number with fraction or exponent is read as the correctly rounded `f64`; overflow to
///   infinity → [`Error::NonFiniteNumber`] (underflow to zero is accepted, as in ECMAScript).
pub fn parse_strict(input: &[u8]) -> Result<Value> {
    parse(input, None)
}

/// An I-JSON rule (duplicate member, lone surrogate, unsafe integer, non-finite number, nesting
/// deeper than [`MAX_DEPTH`]) broken inside a text that is otherwise JSON, found by
/// [`parse_lenient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where: the member names from the root down to the violation (`None` for an array
    /// element), so a caller can tell a receipt body from the envelope around it.
    pub path: Vec<Option<String>>,
    /// The error [`parse_strict`] would have returned.
    pub error: Error,
}

impl Violation {
    /// Whether the violation lies inside the member reached by `names` from the root.
    pub fn is_under(&self, names: &[&str]) -> bool {
        self.path.len() >= names.len() && self.path.iter().zip(names).all(|(p, n)| p.as_deref() == Some(*n))
    }
}

/// Like [`parse_strict`], but a text that is JSON (RFC 8259 grammar, UTF-8) and breaks only
/// I-JSON rules is returned with the list of violations instead of failing, so that a verifier
/// can tell a receipt body that breaks §3 (`body_not_canonical`) from an unreadable envelope.
/// Values standing in for a violation (U+FFFD for a lone surrogate, `null` for a number or a
/// too-deep value, the last of duplicate members) MUST NOT be hashed or trusted.
pub fn parse_lenient(input: &[u8]) -> Result<(Value, Vec<Violation>)> {
    let mut found = Vec::new();
    let value = parse(input, Some(&mut found))?;
    Ok((value, found))
}

fn parse(input: &[u8], violations: Option<&mut Vec<Violation>>) -> Result<Value> {
    let src = std::str::from_utf8(input).map_err(|e| Error::Json { offset: e.valid_up_to(), msg: "invalid UTF-8" })?;
    let mut parser = Parser { src, bytes: input, pos: 0, depth: 0, violations, path: Vec::new() };
    parser.skip_ws();
    let value = parser.parse_value()?;
    parser.skip_ws();
    if parser.pos != input.len() {
        return Err(parser.err("trailing characters after the JSON value"));
    }
    Ok(value)
}

/// Recursive-descent parser. Recursion depth is bounded by `MAX_DEPTH` (two small frames per
/// level), which is far below any thread's stack.
struct Parser<'a> {
    /// The whole input, already validated as UTF-8; string contents are sliced from it.
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    /// `Some` in lenient mode: I-JSON violations are collected here instead of failing.
    violations: Option<&'a mut Vec<Violation>>,
    /// Member names (or `None` for array elements) from the root to the current value.
    path: Vec<Option<String>>,
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &'static str) -> Error {
        Error::Json { offset: self.pos, msg }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// RFC 8259 §2: only these four bytes are whitespace (not NBSP, not U+2028, not a BOM).
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Slices the source. Callers only pass positions next to ASCII bytes or at the end, which
    /// are always char boundaries; the check just keeps this path panic-free.
    fn slice(&self, start: usize, end: usize) -> Result<&'a str> {
        self.src.get(start..end).ok_or(Error::Json { offset: start, msg: "not a character boundary" })
    }

    fn enter(&mut self) -> Result<()> {
        self.depth = enter(self.depth)?;
        Ok(())
    }

    /// An I-JSON violation: an error in strict mode, recorded in lenient mode.
    fn violate(&mut self, error: Error) -> Result<()> {
        match self.violations.as_deref_mut() {
            Some(found) => {
                found.push(Violation { path: self.path.clone(), error });
                Ok(())
            }
            None => Err(error),
        }
    }

    /// Lenient mode only: steps over a nested value too deep to build, without recursion
    /// (strings are skipped with their escapes; the brackets inside are not checked).
    fn skip_nested(&mut self) -> Result<()> {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                b'"' => loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated string")),
                        Some(b'\\') => self.pos += 2,
                        Some(b'"') => {
                            self.pos += 1;
                            break;
                        }
                        Some(_) => self.pos += 1,
                    }
                },
                _ => {}
            }
        }
        Err(self.err("unexpected end of input"))
    }

    fn parse_value(&mut self) -> Result<Value> {
        if self.violations.is_some() && self.depth >= MAX_DEPTH && matches!(self.peek(), Some(b'{' | b'[')) {
            self.violate(Error::TooDeep { max: MAX_DEPTH })?;
            self.skip_nested()?;
            return Ok(Value::Null);
        }
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => self.parse_object(),
            Some(b'[') => self.parse_array(),
            Some(b'"') => Ok(Value::String(self.parse_string()?)),
            Some(b't') => self.parse_literal("true", Value::Bool(true)),
            Some(b'f') => self.parse_literal("false", Value::Bool(false)),
            Some(b'n') => self.parse_literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(_) => Err(self.err("expected a JSON value")),
        }
    }

    fn parse_literal(&mut self, text: &'static str, value: Value) -> Result<Value> {
        let end = self.pos + text.len();
        if self.bytes.get(self.pos..end) != Some(text.as_bytes()) {
            return Err(self.err("invalid literal"));
        }
        self.pos = end;
        Ok(value)
    }

    fn parse_object(&mut self) -> Result<Value> {
        self.enter()?;
        self.pos += 1; // '{'
                       // serde_json's Map is a BTreeMap (or IndexMap): O(log n) duplicate checks, never O(n²).
        let mut map = Map::new();
        self.skip_ws();
        if !self.eat(b'}') {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.err("expected a string key"));
                }
                let key = self.parse_string()?;
                if map.contains_key(&key) {
                    self.violate(Error::DuplicateKey { key: key.clone() })?;
                }
                self.skip_ws();
                if !self.eat(b':') {
                    return Err(self.err("expected ':' after an object key"));
                }
                self.skip_ws();
                self.path.push(Some(key.clone()));
                let value = self.parse_value()?;
                self.path.pop();
                map.insert(key, value);
                self.skip_ws();
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(self.err("expected ',' or '}' in an object"));
                }
                self.skip_ws();
            }
        }
        self.depth -= 1;
        Ok(Value::Object(map))
    }

    fn parse_array(&mut self) -> Result<Value> {
        self.enter()?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if !self.eat(b']') {
            loop {
                self.path.push(None);
                let item = self.parse_value()?;
                self.path.pop();
                items.push(item);
                self.skip_ws();
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(self.err("expected ',' or ']' in an array"));
                }
                self.skip_ws();
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items))
    }

    fn parse_string(&mut self) -> Result<String> {
        let open = self.pos;
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            // Copy the longest run that needs no decoding in one go.
            let run = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            out.push_str(self.slice(run, self.pos)?);
            match self.peek() {
                None => return Err(Error::Json { offset: open, msg: "unterminated string" }),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => out.push(self.parse_escape()?),
                Some(_) => return Err(self.err("unescaped control character in string")),
            }
        }
    }

    /// Decodes one escape starting at the backslash under `pos`.
    fn parse_escape(&mut self) -> Result<char> {
        let at = self.pos;
        let c = match self.bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{08}',
            Some(b'f') => '\u{0C}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => return self.parse_unicode_escape(),
            Some(_) => return Err(Error::Json { offset: at, msg: "invalid escape sequence" }),
            None => return Err(Error::Json { offset: at, msg: "unterminated string" }),
        };
        self.pos = at + 2;
        Ok(c)
    }

    /// `\uXXXX`, combining a high/low surrogate pair. A lone surrogate is an error: it has no
    /// UTF-8 form, and replacing it (U+FFFD) would let distinct texts share one meaning. (In
    /// lenient mode it is a recorded violation and U+FFFD stands in for it.)
    fn parse_unicode_escape(&mut self) -> Result<char> {
        let at = self.pos;
        let first = self.hex4(at + 2)?;
        self.pos = at + 6;
        let code = match first {
            0xD800..=0xDBFF => {
                let second = match self.bytes.get(self.pos..self.pos + 2) {
                    Some(b"\\u") => Some(self.hex4(self.pos + 2)?),
                    _ => None,
                };
                match second {
                    Some(second @ 0xDC00..=0xDFFF) => {
                        self.pos += 6;
                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                    }
                    _ => {
                        self.violate(Error::Json { offset: at, msg: "unpaired high surrogate" })?;
                        0xFFFD
                    }
                }
            }
            0xDC00..=0xDFFF => {
                self.violate(Error::Json { offset: at, msg: "unpaired low surrogate" })?;
                0xFFFD
            }
            c => c,
        };
        char::from_u32(code).ok_or(Error::Json { offset: at, msg: "invalid \\u escape" })
    }

    fn hex4(&self, at: usize) -> Result<u32> {
        let mut v = 0u32;
        for i in at..at + 4 {
            let d = match self.bytes.get(i) {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(Error::Json { offset: i, msg: "invalid hex digit in \\u escape" }),
            };
            v = (v << 4) | u32::from(d);
        }
        Ok(v)
    }

    /// Exact RFC 8259 §6 grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn parse_number(&mut self) -> Result<Value> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.err("leading zeros are not allowed"));
                }
            }
            Some(b'1'..=b'9') => {
                self.skip_digits();
            }
            _ => return Err(self.err("expected a digit")),
        }
        let mut is_float = false;
        if self.eat(b'.') {
            if !self.skip_digits() {
                return Err(self.err("expected a digit after the decimal point"));
            }
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.skip_digits() {
                return Err(self.err("expected a digit in the exponent"));
            }
            is_float = true;
        }
        let literal = self.slice(start, self.pos)?;
        if !is_float {
            let (negative, magnitude) = match safe_integer(literal) {
                Ok(x) => x,
                Err(e) => {
                    self.violate(e)?;
                    return Ok(Value::Null);
                }
            };
            return Ok(Value::Number(if negative {
                // magnitude <= 2^53-1, so the conversion cannot fail; -0 becomes 0.
                let m = i64::try_from(magnitude).map_err(|_| out_of_range(literal))?;
                Number::from(-m)
            } else {
                Number::from(magnitude)
            }));
        }
        // The grammar above is a subset of what `f64::from_str` accepts, and its result is
        // correctly rounded, as RFC 8785 requires of the receiving side.
        let x: f64 = literal.parse().map_err(|_| Error::Json { offset: start, msg: "invalid number" })?;
        match Number::from_f64(x) {
            Some(n) => Ok(Value::Number(n)),
            None => {
                self.violate(Error::NonFiniteNumber)?;
                Ok(Value::Null)
            }
        }
    }

    /// Skips `[0-9]*`; returns whether at least one digit was consumed.
    fn skip_digits(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos > start
    }
}

/// Increments a nesting depth, refusing to go past `MAX_DEPTH`.
fn enter(depth: usize) -> Result<usize> {
    if depth >= MAX_DEPTH {
        return Err(Error::TooDeep { max: MAX_DEPTH });
    }
    Ok(depth + 1)
}

fn out_of_range(literal: &str) -> Error {
    Error::IntegerOutOfRange { literal: literal.to_owned() }
}

/// Sign and magnitude of an integer literal `-?[0-9]+` (grammar already checked), enforcing
/// |n| <= 2^53-1. Shared by the parser and the float formatter so both apply one rule.
fn safe_integer(literal: &str) -> Result<(bool, u64)> {
    let (negative, digits) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let mut n: u64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            return Err(out_of_range(literal));
        }
        // n <= 2^53-1 here, so n*10+9 < 2^57 cannot overflow; stopping early keeps huge literals
        // O(1) after the first 17 digits.
        n = n * 10 + u64::from(b - b'0');
        if n > MAX_SAFE_INTEGER {
            return Err(out_of_range(literal));
        }
    }
    Ok((negative, n))
}

// ---------------------------------------------------------------------------------------------
// Canonical writer (shared by the Value path and the Serializer path)
// ---------------------------------------------------------------------------------------------

/// RFC 8785 §3.2.3: members are ordered by their keys' UTF-16 code units.
///
/// Compared on the UTF-8 bytes, without transcoding (this runs O(k log k) times per object).
/// UTF-8 byte order equals code point order, and that equals UTF-16 order except in one case:
/// a character in U+E000..=U+FFFF (UTF-8 lead byte 0xEE/0xEF) against one above U+FFFF (lead
/// byte 0xF0..=0xF4), which UTF-16 writes as a surrogate pair starting 0xD800..=0xDBFF, so it
/// sorts *first*. At the first differing byte both strings are either at a character start
/// (then the lead bytes decide, with that one exception) or inside characters sharing the same
/// lead byte, hence the same length class, where byte order is already UTF-16 order.
/// Tested against `encode_utf16` in `cmp_utf16_matches_encode_utf16`.
fn cmp_utf16(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match a.iter().zip(b).find(|(x, y)| x != y) {
        None => a.len().cmp(&b.len()),
        Some((&x, &y)) => match (x, y) {
            (0xF0..=0xF4, 0xEE..=0xEF) => Ordering::Less,
            (0xEE..=0xEF, 0xF0..=0xF4) => Ordering::Greater,
            _ => x.cmp(&y),
        },
    }
}

/// RFC 8785 §3.2.2.2 (ECMAScript `JSON.stringify`): escape only `"`, `\` and U+0000..U+001F,
/// with the short forms where they exist and lowercase `\u00xx` otherwise; everything else,
/// including U+007F and U+2028/9, is written as UTF-8.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s.as_bytes();
    // Copy unescaped runs wholesale; `i < rest.len()` makes the slicing below infallible.
    while let Some(i) = rest.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(&rest[..i]);
        let b = rest[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0A => out.extend_from_slice(b"\\n"),
            0x0C => out.extend_from_slice(b"\\f"),
            0x0D => out.extend_from_slice(b"\\r"),
            _ => {
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0F)]])
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Appends `n` as a JSON number: its only spelling (no sign, no leading zero, no exponent).
pub fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20]; // u64::MAX has 20 digits
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes an integer given as sign and magnitude (so i64::MIN and u128 need no special cases).
pub(crate) fn write_int(negative: bool, magnitude: u128, out: &mut Vec<u8>) -> Result<()> {
    match u64::try_from(magnitude) {
        Ok(m) if m <= MAX_SAFE_INTEGER => {
            if negative && m != 0 {
                out.push(b'-');
            }
            write_u64(m, out);
            Ok(())
        }
        _ => Err(Error::IntegerOutOfRange { literal: format!("{}{magnitude}", if negative { "-" } else { "" }) }),
    }
}

/// ECMAScript `Number.prototype.toString` of a finite double (RFC 8785 §3.2.2.3).
/// Zero is handled here rather than trusting the formatter with the sign of -0.
fn format_es(x: f64, buf: &mut ryu_js::Buffer) -> &str {
    if x == 0.0 {
        "0"
    } else {
        buf.format_finite(x)
    }
}

/// Writes a double, refusing NaN/±Infinity and refusing values whose ECMAScript form is a bare
/// integer literal beyond ±(2^53-1) (i.e. 2^53 <= |x| < 1e21): [`parse_strict`] rejects such a
/// literal, so emitting it would produce canonical bytes no verifier here could read back.
fn write_f64(x: f64, out: &mut Vec<u8>) -> Result<()> {
    if !x.is_finite() {
        return Err(Error::NonFiniteNumber);
    }
    let mut buf = ryu_js::Buffer::new();
    let text = format_es(x, &mut buf);
    if !text.contains(['.', 'e']) {
        safe_integer(text)?;
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn write_number(n: &Number, out: &mut Vec<u8>) -> Result<()> {
    if let Some(u) = n.as_u64() {
        write_int(false, u128::from(u), out)
    } else if let Some(i) = n.as_i64() {
        write_int(i < 0, u128::from(i.unsigned_abs()), out)
    } else if let Some(x) = n.as_f64() {
        write_f64(x, out)
    } else {
        // Only reachable if serde_json's `arbitrary_precision` feature were enabled.
        Err(Error::Canonicalize(format!("unsupported number {n}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Canonicalization of a serde_json::Value
// ---------------------------------------------------------------------------------------------

/// RFC 8785 canonical bytes of a Value.
///
/// Errors: integers outside ±(2^53-1) or doubles in `[2^53, 1e21)` in magnitude
/// ([`Error::IntegerOutOfRange`]), nesting deeper than [`MAX_DEPTH`] ([`Error::TooDeep`]).
pub fn canonicalize(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    canonicalize_into(value, &mut out)?;
    Ok(out)
}

/// Appends the canonical bytes of `value` to `out`. On error `out` is restored to its
/// previous length, so no partial canonical form can be mistaken for a complete one.
pub fn canonicalize_into(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let result = write_value(value, out, 0);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_value(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            let depth = enter(depth)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out, depth)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let depth = enter(depth)?;
            // Map keys are unique, so an unstable sort is deterministic.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| cmp_utf16(a.0, b.0));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_value(item, out, depth)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Direct serde::Serializer
// ---------------------------------------------------------------------------------------------

/// RFC 8785 canonical bytes of any Serialize value WITHOUT building a serde_json::Value first
/// (a direct serde::Serializer that buffers each object's members and sorts them at the object's end).
///
/// The output is byte-identical to `canonicalize(&serde_json::to_value(value)?)` (serde_json's
/// data-model mapping: `None`/unit → `null`, enums externally tagged, bytes → array of numbers),
/// with these deliberate differences, all of which are errors rather than silent changes:
///
/// * map keys must serialize as strings (`str`, `char`, unit enum variants, or newtypes of
///   those); serde_json would stringify integer/bool keys → [`Error::Canonicalize`];
/// * NaN/±Infinity → [`Error::NonFiniteNumber`]; serde_json would store `null`;
/// * a key emitted twice in one object → [`Error::DuplicateKey`]; serde_json keeps the last;
/// * nesting deeper than [`MAX_DEPTH`] → [`Error::TooDeep`] (as [`canonicalize`]).
///
/// Whenever one path fails so does the other. If a value contains several offending items, each
/// path reports the first it meets (serialization order here, canonical order there), so the
/// error may name a different item.
///
/// Allocation: one output buffer plus three scratch buffers reused across all nested objects;
/// objects whose members already arrive in canonical order are not moved at all.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    // Sized for a typical receipt body (~15 short fields) so nothing regrows on the hot path.
    let mut ser = CanonicalSerializer {
        out: Vec::with_capacity(512),
        keys: String::with_capacity(256),
        members: Vec::with_capacity(32),
        scratch: Vec::new(),
        depth: 0,
    };
    value.serialize(&mut ser)?;
    Ok(ser.out)
}

/// Lets serde impls report failures (`S::Error::custom`) through the crate's error type.
impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Canonicalize(msg.to_string())
    }
}

/// Each object's members are written straight into `out` in arrival order (`"key":value`,
/// comma-separated) while their positions are recorded in `members`; at the object's end the
/// member byte ranges are permuted into UTF-16 key order. The permutation preserves the
/// object's length, so the recorded ranges of enclosing objects stay valid.
struct CanonicalSerializer {
    out: Vec<u8>,
    /// Raw (unescaped) keys of all currently open objects, back to back; used for sorting.
    keys: String,
    /// Members of all currently open objects; each object owns a suffix of this stack.
    members: Vec<Member>,
    /// Copy of the object body being permuted.
    scratch: Vec<u8>,
    depth: usize,
}

struct Member {
    key_start: usize,
    key_end: usize,
    /// Byte range of `"key":value` in `out`.
    start: usize,
    end: usize,
}

impl CanonicalSerializer {
    fn enter(&mut self) -> Result<()> {
        self.depth = enter(self.depth)?;
        Ok(())
    }

    fn exit(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn begin_object(&mut self) -> Result<ObjectState> {
        self.enter()?;
        self.out.push(b'{');
        Ok(ObjectState {
            member_base: self.members.len(),
            key_base: self.keys.len(),
            body_start: self.out.len(),
            awaiting_value: false,
        })
    }

    /// Opens the single-member wrapper object `{"variant":` that externally tags an enum value.
    fn begin_variant(&mut self, variant: &str) -> Result<()> {
        self.enter()?;
        self.out.push(b'{');
        write_str(variant, &mut self.out);
        self.out.push(b':');
        Ok(())
    }

    fn end_variant(&mut self) {
        self.out.push(b'}');
        self.exit();
    }

    /// Sorts the members of the object described by `state`, checks for duplicate keys and
    /// closes it.
    fn end_object(&mut self, state: &ObjectState) -> Result<()> {
        if state.awaiting_value {
            return Err(Error::Canonicalize("map key without a value".into()));
        }
        let keys = &self.keys;
        let members = self.members.get_mut(state.member_base..).ok_or_else(internal)?;
        // Validate every recorded range once, so the sort comparator below cannot hit a
        // missing key and the copy loop cannot hit a missing body slice.
        let base = state.body_start;
        let body_len = self.out.len().checked_sub(base).ok_or_else(internal)?;
        let ranges_ok = members.iter().all(|m| {
            keys.get(m.key_start..m.key_end).is_some()
                && base <= m.start
                && m.start <= m.end
                && m.end - base <= body_len
        });
        if !ranges_ok {
            return Err(internal());
        }
        let key = |m: &Member| keys.get(m.key_start..m.key_end).unwrap_or_default();
        let in_order = members.windows(2).all(|w| cmp_utf16(key(&w[0]), key(&w[1])) == Ordering::Less);
        if !in_order {
            members.sort_by(|a, b| cmp_utf16(key(a), key(b)));
            if let Some(w) = members.windows(2).find(|w| key(&w[0]) == key(&w[1])) {
                return Err(Error::DuplicateKey { key: key(&w[0]).to_owned() });
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(self.out.get(base..).ok_or_else(internal)?);
            self.out.truncate(base);
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                let bytes = self.scratch.get(m.start - base..m.end - base).ok_or_else(internal)?;
                self.out.extend_from_slice(bytes);
            }
        }
        self.members.truncate(state.member_base);
        self.keys.truncate(state.key_base);
        self.out.push(b'}');
        self.exit();
        Ok(())
    }
}

/// A broken bookkeeping invariant of the serializer; never expected, but reported, not panicked.
fn internal() -> Error {
    Error::Canonicalize("internal error: inconsistent object state".into())
}

struct ObjectState {
    member_base: usize,
    key_base: usize,
    body_start: usize,
    awaiting_value: bool,
}

/// `SerializeSeq` & co. `variant` marks a tuple variant, whose array sits in a `{"V":…}` wrapper.
struct SeqWriter<'a> {
    ser: &'a mut CanonicalSerializer,
    first: bool,
    variant: bool,
}

impl SeqWriter<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        if !self.first {
            self.ser.out.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.ser)
    }

    fn finish(self) -> Result<()> {
        self.ser.out.push(b']');
        self.ser.exit();
        if self.variant {
            self.ser.end_variant();
        }
        Ok(())
    }
}

/// `SerializeMap` & co. `variant` marks a struct variant, wrapped as `{"V":{…}}`.
struct ObjectWriter<'a> {
    ser: &'a mut CanonicalSerializer,
    state: ObjectState,
    variant: bool,
}

impl ObjectWriter<'_> {
    /// Writes the separator and the key (via `write_key`), and records the member.
    fn key_with(&mut self, write_key: impl FnOnce(&mut CanonicalSerializer) -> Result<()>) -> Result<()> {
        if self.state.awaiting_value {
            return Err(Error::Canonicalize("two map keys without a value between".into()));
        }
        let ser = &mut *self.ser;
        if ser.members.len() > self.state.member_base {
            ser.out.push(b',');
        }
        let start = ser.out.len();
        let key_start = ser.keys.len();
        write_key(ser)?;
        ser.out.push(b':');
        ser.members.push(Member { key_start, key_end: ser.keys.len(), start, end: start });
        self.state.awaiting_value = true;
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        if !self.state.awaiting_value {
            return Err(Error::Canonicalize("map value without a key".into()));
        }
        value.serialize(&mut *self.ser)?;
        // Nested objects have popped their own members, so the last one is ours.
        let end = self.ser.out.len();
        if let Some(m) = self.ser.members.last_mut() {
            m.end = end;
        }
        self.state.awaiting_value = false;
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        self.key_with(|ser| {
            push_key(ser, name);
            Ok(())
        })?;
        self.value(value)
    }

    fn finish(self) -> Result<()> {
        self.ser.end_object(&self.state)?;
        if self.variant {
            self.ser.end_variant();
        }
        Ok(())
    }
}

fn push_key(ser: &mut CanonicalSerializer, key: &str) {
    ser.keys.push_str(key);
    write_str(key, &mut ser.out);
}

impl<'a> ser::Serializer for &'a mut CanonicalSerializer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = SeqWriter<'a>;
    type SerializeTuple = SeqWriter<'a>;
    type SerializeTupleStruct = SeqWriter<'a>;
    type SerializeTupleVariant = SeqWriter<'a>;
    type SerializeMap = ObjectWriter<'a>;
    type SerializeStruct = ObjectWriter<'a>;
    type SerializeStructVariant = ObjectWriter<'a>;

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<()> {
        write_int(v < 0, v.unsigned_abs(), &mut self.out)
    }
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.serialize_u128(u128::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.serialize_u128(u128::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.serialize_u128(u128::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.serialize_u128(u128::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<()> {
        write_int(false, v, &mut self.out)
    }
    /// Widened exactly to f64, as serde_json's `Value` does (0.1f32 → 0.10000000149011612).
    fn serialize_f32(self, v: f32) -> Result<()> {
        write_f64(f64::from(v), &mut self.out)
    }
    fn serialize_f64(self, v: f64) -> Result<()> {
        write_f64(v, &mut self.out)
    }
    fn serialize_char(self, v: char) -> Result<()> {
        write_str(v.encode_utf8(&mut [0u8; 4]), &mut self.out);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<()> {
        write_str(v, &mut self.out);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.enter()?;
        self.out.push(b'[');
        for (i, &b) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_u64(u64::from(b), &mut self.out);
        }
        self.out.push(b']');
        self.exit();
        Ok(())
    }
    fn serialize_none(self) -> Result<()> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<()> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.begin_variant(variant)?;
        value.serialize(&mut *self)?;
        self.end_variant();
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<SeqWriter<'a>> {
        self.enter()?;
        self.out.push(b'[');
        Ok(SeqWriter { ser: self, first: true, variant: false })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqWriter<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqWriter<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqWriter<'a>> {
        self.begin_variant(variant)?;
        let mut seq = self.serialize_seq(Some(len))?;
        seq.variant = true;
        Ok(seq)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<ObjectWriter<'a>> {
        let state = self.begin_object()?;
        Ok(ObjectWriter { ser: self, state, variant: false })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<ObjectWriter<'a>> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<ObjectWriter<'a>> {
        self.begin_variant(variant)?;
        let mut object = self.serialize_map(Some(len))?;
        object.variant = true;
        Ok(object)
    }
}

impl ser::SerializeSeq for SeqWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTuple for SeqWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for SeqWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for SeqWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeMap for ObjectWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.key_with(|ser| key.serialize(KeySerializer { ser }))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.value(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStruct for ObjectWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        self.field(key, value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for ObjectWriter<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        self.field(key, value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// Serializes one object key: only string-like values are keys in JSON.
struct KeySerializer<'a> {
    ser: &'a mut CanonicalSerializer,
}

fn non_string_key() -> Error {
    Error::Canonicalize("object keys must be strings".into())
}

impl ser::Serializer for KeySerializer<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_str(self, v: &str) -> Result<()> {
        push_key(self.ser, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<()> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_bool(self, _: bool) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_i8(self, _: i8) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_i16(self, _: i16) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_i32(self, _: i32) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_i64(self, _: i64) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_i128(self, _: i128) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_u8(self, _: u8) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_u16(self, _: u16) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_u32(self, _: u32) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_u64(self, _: u64) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_u128(self, _: u128) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_f32(self, _: f32) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_f64(self, _: f64) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_none(self) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_unit(self) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<()> {
        Err(non_string_key())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(non_string_key())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(non_string_key())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct> {
        Err(non_string_key())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(non_string_key())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(non_string_key())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(non_string_key())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(non_string_key())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;
    use serde_json::{json, Value};

    use super::*;

    fn canon_text(input: &str) -> String {
        let v = parse_strict(input.as_bytes()).unwrap();
        String::from_utf8(canonicalize(&v).unwrap()).unwrap()
    }

    fn parse_err(input: &[u8]) -> Error {
        parse_strict(input).unwrap_err()
    }

    fn json_err(input: &[u8]) -> (usize, &'static str) {
        match parse_err(input) {
            Error::Json { offset, msg } => (offset, msg),
            e => panic!("expected Error::Json for {:?}, got {e:?}", String::from_utf8_lossy(input)),
        }
    }

    /// The serde_json route that `to_canonical_vec` must agree with.
    fn via_value<T: Serialize + ?Sized>(x: &T) -> Result<Vec<u8>> {
        canonicalize(&serde_json::to_value(x).unwrap())
    }

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!("{}1{}", open.repeat(depth), close.repeat(depth))
    }

    // ---- RFC 8785 vectors --------------------------------------------------------------------

    #[test]
    fn rfc8785_section_3_2_2_example() {
        let input = r#"{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"#;
        let expected = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
        let value = parse_strict(input.as_bytes()).unwrap();
        let canonical = canonicalize(&value).unwrap();
        assert_eq!(String::from_utf8(canonical.clone()).unwrap(), expected);
        // §3.2.4: the same output as UTF-8 bytes.
        let rfc_hex = [
            "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72",
            "75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a",
            "5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31",
            "65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37",
            "5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30",
            "30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d",
        ]
        .join(" ");
        let bytes: Vec<u8> = rfc_hex.split(' ').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
        assert_eq!(canonical, bytes);
        assert_eq!(to_canonical_vec(&value).unwrap(), bytes);
    }

    #[test]
    fn rfc8785_section_3_2_3_sorting_example() {
        let input = r#"{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                        \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
                        \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canon_text(input), expected);
        // The trap this guards against: Rust's str order puts U+1F600 after U+FB33.
        assert!("\u{1f600}" > "\u{fb33}");
        assert_eq!(cmp_utf16("\u{1f600}", "\u{fb33}"), Ordering::Less);
    }

    /// RFC 8785 Appendix B, every row. All rows are checked against the ECMAScript formatter;
    /// through `canonicalize`, the five rows whose ECMAScript form is a bare integer literal
    /// beyond 2^53-1 are refused (see `write_f64`), and NaN/Infinity are errors.
    #[test]
    fn rfc8785_appendix_b_numbers() {
        const TABLE: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        let mut refused = 0;
        for &(bits, expected) in TABLE {
            let x = f64::from_bits(bits);
            assert_eq!(format_es(x, &mut ryu_js::Buffer::new()), expected, "{bits:016x}");
            let value = Value::Number(Number::from_f64(x).unwrap());
            let bare_big_integer = !expected.contains(['.', 'e']) && x.abs() > MAX_SAFE_INTEGER as f64;
            if bare_big_integer {
                refused += 1;
                let err = Error::IntegerOutOfRange { literal: expected.to_owned() };
                assert_eq!(canonicalize(&value), Err(err.clone()), "{bits:016x}");
                assert_eq!(to_canonical_vec(&x), Err(err), "{bits:016x}");
            } else {
                assert_eq!(canonicalize(&value).unwrap(), expected.as_bytes(), "{bits:016x}");
                assert_eq!(to_canonical_vec(&x).unwrap(), expected.as_bytes(), "{bits:016x}");
                // Every accepted row re-parses to the same canonical text.
                assert_eq!(canon_text(expected), expected, "{bits:016x}");
            }
        }
        assert_eq!(refused, 5);
        // NaN and Infinity rows.
        for bits in [0x7fffffffffffffff_u64, 0x7ff0000000000000, 0xfff0000000000000] {
            let x = f64::from_bits(bits);
            assert!(Number::from_f64(x).is_none());
            assert_eq!(write_f64(x, &mut Vec::new()), Err(Error::NonFiniteNumber));
            assert_eq!(to_canonical_vec(&x), Err(Error::NonFiniteNumber));
            assert_eq!(to_canonical_vec(&(x as f32)), Err(Error::NonFiniteNumber));
        }
    }

    /// What ryu-js does on its own for the cases the brief asks about; `format_es` handles -0
    /// itself regardless.
    #[test]
    fn ryu_js_behaviour() {
        let mut b = ryu_js::Buffer::new();
        assert_eq!(b.format_finite(-0.0), "0");
        assert_eq!(b.format_finite(0.0), "0");
        assert_eq!(b.format_finite(1.0), "1");
        assert_eq!(b.format_finite(-1.0), "-1");
        assert_eq!(b.format_finite(1e21), "1e+21");
        assert_eq!(b.format_finite(1e20), "100000000000000000000");
        assert_eq!(b.format_finite(1e-7), "1e-7");
        assert_eq!(b.format_finite(1e-6), "0.000001");
        assert_eq!(format_es(-0.0, &mut b), "0");
        assert_eq!(to_canonical_vec(&[-0.0, 1.0, 1e21, 4.5, 1e-7]).unwrap(), b"[0,1,1e+21,4.5,1e-7]");
        // 1e20 is valid RFC 8785 output but not a parse_strict integer, so it is refused.
        assert_eq!(to_canonical_vec(&1e20), Err(Error::IntegerOutOfRange { literal: "100000000000000000000".into() }));
        assert_eq!(
            canonicalize(&json!(9007199254740991.0)).unwrap(),
            b"9007199254740991",
            "the largest float that prints as a bare integer is still accepted"
        );
    }

    /// The byte-level comparator against the literal definition (UTF-16 code unit sequences),
    /// on every pair of strings of up to two characters drawn from the UTF-8/UTF-16 boundaries.
    #[test]
    fn cmp_utf16_matches_encode_utf16() {
        let chars = [
            '\u{0}',
            'a',
            '\u{7f}',
            '\u{80}',
            '\u{7ff}',
            '\u{800}',
            '\u{cfff}',
            '\u{d7ff}',
            '\u{e000}',
            '\u{efff}',
            '\u{f000}',
            '\u{fb33}',
            '\u{ffff}',
            '\u{10000}',
            '\u{1f600}',
            '\u{3ffff}',
            '\u{40000}',
            '\u{10ffff}',
        ];
        let mut strings = vec![String::new()];
        for &c in &chars {
            strings.push(c.to_string());
            for &d in &chars {
                strings.push([c, d].iter().collect());
            }
        }
        let oracle = |s: &str| s.encode_utf16().collect::<Vec<u16>>();
        for a in &strings {
            for b in &strings {
                assert_eq!(cmp_utf16(a, b), oracle(a).cmp(&oracle(b)), "{a:?} vs {b:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn cmp_utf16_matches_encode_utf16_random(a in "(a|é|\u{e000}|\u{ffff}|\u{10000}|\u{1f600}|.){0,4}", b in "(a|é|\u{e000}|\u{ffff}|\u{10000}|\u{1f600}|.){0,4}") {
            let oracle = |s: &str| s.encode_utf16().collect::<Vec<u16>>();
            proptest::prop_assert_eq!(cmp_utf16(&a, &b), oracle(&a).cmp(&oracle(&b)));
        }
    }

    #[test]
    fn string_escaping() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        let mut out = Vec::new();
        write_str(&all_controls, &mut out);
        let expected = concat!(
            "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f",
            "\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\""
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        // Not escaped: '/', DEL, U+2028/9, non-ASCII, astral.
        let s = "/\u{7f}\u{2028}\u{2029}é€\u{1f600}\u{fffe}";
        assert_eq!(canonicalize(&json!(s)).unwrap(), format!("\"{s}\"").as_bytes());
        assert_eq!(canonicalize(&json!("\"\\")).unwrap(), br#""\"\\""#);
        assert_eq!(canon_text(r#""\u002f\/\u00E9\uD83D\uDE00""#), "\"//é\u{1f600}\"");
    }

    // ---- parse_strict: accepted forms -------------------------------------------------------

    #[test]
    fn parses_all_escapes_and_whitespace() {
        let v = parse_strict(
            b" \t\r\n{ \"k\" : [ \"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\ud83d\\ude00\" , true,false , null ] } \n",
        )
        .unwrap();
        assert_eq!(v, json!({"k": ["\"\\/\u{8}\u{c}\n\r\tAé\u{1f600}", true, false, null]}));
        assert_eq!(parse_strict(b"\"\x7f\"").unwrap(), json!("\u{7f}"));
        assert_eq!(parse_strict(b"[]").unwrap(), json!([]));
        assert_eq!(parse_strict(b"{}").unwrap(), json!({}));
        assert_eq!(parse_strict(b"\"\"").unwrap(), json!(""));
        assert_eq!(parse_strict(b"\"\\u0000\"").unwrap(), json!("\u{0}"));
        assert_eq!(parse_strict("\"\u{1f600}é\"".as_bytes()).unwrap(), json!("\u{1f600}é"));
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(canon_text("0"), "0");
        assert_eq!(canon_text("-0"), "0");
        let minus_zero = parse_strict(b"-0").unwrap();
        assert!(minus_zero.is_u64() && minus_zero.as_u64() == Some(0), "-0 is the integer 0");
        assert_eq!(canon_text("-0.0"), "0");
        assert_eq!(canon_text("1E30"), "1e+30");
        assert_eq!(canon_text("1e+2"), "100");
        assert_eq!(canon_text("1E-2"), "0.01");
        assert_eq!(canon_text("4.50"), "4.5");
        assert_eq!(canon_text("10.0"), "10");
        assert_eq!(canon_text("1e-400"), "0", "underflow rounds to zero");
        assert_eq!(canon_text("-1e-400"), "0");
        assert_eq!(canon_text("123456789012345678901234567890.0"), "1.2345678901234568e+29");
        assert!(parse_strict(b"1.5").unwrap().is_f64());
        assert!(parse_strict(b"1e0").unwrap().is_f64());
        assert!(parse_strict(b"-17").unwrap().is_i64());
    }

    // ---- parse_strict: every rejection rule -------------------------------------------------

    #[test]
    fn rejects_duplicate_keys_after_unescaping() {
        let dup = |k: &str| Err(Error::DuplicateKey { key: k.to_owned() });
        assert_eq!(parse_strict(br#"{"a":1,"a":2}"#), dup("a"));
        assert_eq!(parse_strict(br#"{"a":1,"\u0061":2}"#), dup("a"));
        assert_eq!(parse_strict(br#"{"\/":1,"/":2}"#), dup("/"));
        assert_eq!(parse_strict("{\"\\ud83d\\ude00\":1,\"\u{1f600}\":2}".as_bytes()), dup("\u{1f600}"));
        assert_eq!(parse_strict(br#"{"x":{"b":1,"c":2,"b":3}}"#), dup("b"));
        assert_eq!(parse_strict(br#"[{"a":1},{"a":1,"a":1}]"#), dup("a"));
        // Same key in different objects, and near-misses, are fine.
        assert!(parse_strict(br#"{"a":{"a":1},"b":[{"a":2}],"A":0,"a ":1}"#).is_ok());
        // Linear-ish: 100k distinct keys parse quickly; the last one being a duplicate is caught.
        let mut big = String::from("{");
        for i in 0..100_000 {
            big.push_str(&format!("\"k{i}\":{i},"));
        }
        big.push_str("\"k5\":0}");
        assert_eq!(parse_strict(big.as_bytes()), dup("k5"));
    }

    #[test]
    fn lenient_parse_locates_ijson_violations_and_strict_still_fails() {
        let text = br#"{"a":[1,{"b":"\ud800","b":9007199254740993}],"c":1e999}"#;
        assert!(parse_strict(text).is_err());
        let (_, found) = parse_lenient(text).unwrap();
        let at: Vec<_> = found.iter().map(|v| (v.path.clone(), v.error.clone())).collect();
        let path = |p: &[Option<&str>]| p.iter().map(|s| s.map(str::to_owned)).collect::<Vec<_>>();
        assert_eq!(at.len(), 4, "{at:?}");
        assert_eq!(at[0].0, path(&[Some("a"), None, Some("b")]));
        assert_eq!(at[1], (path(&[Some("a"), None]), Error::DuplicateKey { key: "b".into() }));
        assert_eq!(at[2].0, path(&[Some("a"), None, Some("b")]));
        assert_eq!(at[3], (path(&[Some("c")]), Error::NonFiniteNumber));
        assert!(found[0].is_under(&["a"]) && !found[3].is_under(&["a"]));
        // Too deep is skipped, not recursed into; grammar errors still fail.
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(MAX_DEPTH + 5), "]".repeat(MAX_DEPTH + 5));
        let (v, found) = parse_lenient(deep.as_bytes()).unwrap();
        assert_eq!(found.len(), 1);
        assert!(v["x"].is_array());
        assert!(parse_lenient(br#"{"a":}"#).is_err());
    }

    #[test]
    fn rejects_lone_surrogates() {
        for (input, offset, msg) in [
            (r#""\ud800""#, 1, "unpaired high surrogate"),
            (r#""\ud800x""#, 1, "unpaired high surrogate"),
            (r#""\ud800\u0041""#, 1, "unpaired high surrogate"),
            (r#""\ud800\ud800""#, 1, "unpaired high surrogate"),
            (r#""\udbff\n""#, 1, "unpaired high surrogate"),
            (r#""ab\udc00""#, 3, "unpaired low surrogate"),
            (r#""\ude00\ud83d""#, 1, "unpaired low surrogate"),
            (r#"{"\udfff":1}"#, 2, "unpaired low surrogate"),
        ] {
            assert_eq!(json_err(input.as_bytes()), (offset, msg), "{input}");
        }
        assert_eq!(json_err(br#""\ud800\u12""#), (11, "invalid hex digit in \\u escape"));
    }

    #[test]
    fn depth_limit() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            assert!(parse_strict(nested(open, close, MAX_DEPTH).as_bytes()).is_ok());
            assert_eq!(
                parse_strict(nested(open, close, MAX_DEPTH + 1).as_bytes()),
                Err(Error::TooDeep { max: MAX_DEPTH })
            );
        }
        // Far beyond the limit: an error, not a stack overflow.
        let hostile = "[".repeat(1_000_000);
        assert_eq!(parse_strict(hostile.as_bytes()), Err(Error::TooDeep { max: MAX_DEPTH }));
        let hostile = "{\"a\":".repeat(200_000);
        assert_eq!(parse_strict(hostile.as_bytes()), Err(Error::TooDeep { max: MAX_DEPTH }));
    }

    #[test]
    fn integer_range() {
        fn oor<T>(l: &str) -> Result<T> {
            Err(Error::IntegerOutOfRange { literal: l.to_owned() })
        }
        assert_eq!(parse_strict(b"9007199254740991").unwrap(), json!(9007199254740991_u64));
        assert_eq!(parse_strict(b"-9007199254740991").unwrap(), json!(-9007199254740991_i64));
        assert_eq!(parse_strict(b"9007199254740992"), oor("9007199254740992"));
        assert_eq!(parse_strict(b"-9007199254740992"), oor("-9007199254740992"));
        assert_eq!(parse_strict(b"18446744073709551616"), oor("18446744073709551616"));
        assert_eq!(parse_strict(b"123456789012345678901234567890"), oor("123456789012345678901234567890"));
        assert_eq!(parse_strict(b"[1, -123456789012345678901234567890]"), oor("-123456789012345678901234567890"));
        // The integer rule does not apply to literals with a fraction or exponent.
        assert!(parse_strict(b"9007199254740993.0").unwrap().is_f64());
        assert!(parse_strict(b"1E30").unwrap().is_f64());
        // ...but canonicalization refuses to emit them as bare integer literals.
        assert_eq!(canonicalize(&parse_strict(b"9007199254740993.0").unwrap()), oor("9007199254740992"));
    }

    #[test]
    fn rejects_non_finite() {
        for input in ["1e400", "-1e400", "1.7976931348623159e308", "[0, 1E999]"] {
            assert_eq!(parse_strict(input.as_bytes()), Err(Error::NonFiniteNumber), "{input}");
        }
        assert!(parse_strict(b"1.7976931348623157e308").is_ok());
        for input in ["NaN", "Infinity", "-Infinity", "nan", "inf"] {
            assert!(matches!(parse_strict(input.as_bytes()), Err(Error::Json { .. })), "{input}");
        }
    }

    #[test]
    fn rejects_bad_number_grammar() {
        for (input, offset, msg) in [
            ("01", 1, "leading zeros are not allowed"),
            ("-01", 2, "leading zeros are not allowed"),
            ("00", 1, "leading zeros are not allowed"),
            ("[007]", 2, "leading zeros are not allowed"),
            ("+1", 0, "expected a JSON value"),
            (".5", 0, "expected a JSON value"),
            ("5.", 2, "expected a digit after the decimal point"),
            ("1.e5", 2, "expected a digit after the decimal point"),
            ("1e", 2, "expected a digit in the exponent"),
            ("1e+", 3, "expected a digit in the exponent"),
            ("1E-x", 3, "expected a digit in the exponent"),
            ("-", 1, "expected a digit"),
            ("--1", 1, "expected a digit"),
            ("-a", 1, "expected a digit"),
            ("0x10", 1, "trailing characters after the JSON value"),
            ("1_000", 1, "trailing characters after the JSON value"),
            ("1.5.2", 3, "trailing characters after the JSON value"),
            ("[1e5e5]", 4, "expected ',' or ']' in an array"),
        ] {
            assert_eq!(json_err(input.as_bytes()), (offset, msg), "{input}");
        }
    }

    #[test]
    fn rejects_trailing_garbage_and_bad_structure() {
        for (input, offset, msg) in [
            ("{} x", 3, "trailing characters after the JSON value"),
            ("1 1", 2, "trailing characters after the JSON value"),
            ("[]]", 2, "trailing characters after the JSON value"),
            ("nullx", 4, "trailing characters after the JSON value"),
            ("truefalse", 4, "trailing characters after the JSON value"),
            ("\"a\"\"b\"", 3, "trailing characters after the JSON value"),
            ("{}\u{0}", 2, "trailing characters after the JSON value"),
            ("", 0, "unexpected end of input"),
            ("  \n", 3, "unexpected end of input"),
            ("[", 1, "unexpected end of input"),
            ("[1", 2, "expected ',' or ']' in an array"),
            ("{", 1, "expected a string key"),
            ("{\"a\"", 4, "expected ':' after an object key"),
            ("{\"a\":", 5, "unexpected end of input"),
            ("{\"a\":1", 6, "expected ',' or '}' in an object"),
            ("[1,]", 3, "expected a JSON value"),
            ("{\"a\":1,}", 7, "expected a string key"),
            ("{a:1}", 1, "expected a string key"),
            ("{'a':1}", 1, "expected a string key"),
            ("{\"a\" 1}", 5, "expected ':' after an object key"),
            ("[1 2]", 3, "expected ',' or ']' in an array"),
            ("[,1]", 1, "expected a JSON value"),
            ("tru", 0, "invalid literal"),
            ("True", 0, "expected a JSON value"),
            ("nul", 0, "invalid literal"),
            ("\"abc", 0, "unterminated string"),
            ("\"abc\\", 4, "unterminated string"),
            ("\"\\x\"", 1, "invalid escape sequence"),
            ("\"\\'\"", 1, "invalid escape sequence"),
            ("\"\\U0041\"", 1, "invalid escape sequence"),
            ("\"\\u12\"", 5, "invalid hex digit in \\u escape"),
            ("\"\\u12G4\"", 5, "invalid hex digit in \\u escape"),
        ] {
            assert_eq!(json_err(input.as_bytes()), (offset, msg), "{input:?}");
        }
    }

    #[test]
    fn rejects_non_json_whitespace() {
        for input in ["\u{a0}1", "1\u{a0}", "\u{feff}1", "\u{0c}1", "\u{0b}1", "\u{2028}1", "[1,\u{85}2]"] {
            assert!(matches!(parse_err(input.as_bytes()), Error::Json { .. }), "{input:?}");
        }
    }

    #[test]
    fn rejects_invalid_utf8() {
        for (input, offset) in [
            (&b"\"\xff\""[..], 1),
            (b"\"\xc0\xaf\"", 1),         // overlong '/'
            (b"\"ab\xed\xa0\x80\"", 3),   // UTF-8-encoded surrogate (CESU-8)
            (b"\"\xe2\x82\"", 1),         // truncated
            (b"\"\xf4\x90\x80\x80\"", 1), // above U+10FFFF
            (b"[1,2] \x80", 6),           // outside any string
            (b"{\"\xfe\":1}", 2),
        ] {
            assert_eq!(json_err(input), (offset, "invalid UTF-8"), "{input:?}");
        }
    }

    #[test]
    fn rejects_raw_control_characters_in_strings() {
        for c in (0u8..0x20).map(char::from) {
            let input = format!("\"a{c}b\"");
            assert_eq!(json_err(input.as_bytes()), (2, "unescaped control character in string"), "{c:?}");
        }
        assert_eq!(json_err(b"{\"k\t\":1}"), (3, "unescaped control character in string"));
    }

    // ---- canonicalize ------------------------------------------------------------------------

    #[test]
    fn canonicalize_integer_range() {
        let oor = |l: &str| Err(Error::IntegerOutOfRange { literal: l.to_owned() });
        assert_eq!(canonicalize(&json!(MAX_SAFE_INTEGER)).unwrap(), b"9007199254740991");
        assert_eq!(canonicalize(&json!(-9007199254740991_i64)).unwrap(), b"-9007199254740991");
        assert_eq!(canonicalize(&json!(9007199254740992_u64)), oor("9007199254740992"));
        assert_eq!(canonicalize(&json!(-9007199254740992_i64)), oor("-9007199254740992"));
        assert_eq!(canonicalize(&json!(u64::MAX)), oor("18446744073709551615"));
        assert_eq!(canonicalize(&json!(i64::MIN)), oor("-9223372036854775808"));
        assert_eq!(canonicalize(&json!(0_i64)).unwrap(), b"0");
    }

    #[test]
    fn canonicalize_into_appends_and_rolls_back() {
        let mut out = b"prefix:".to_vec();
        canonicalize_into(&json!({"b": 1, "a": [true]}), &mut out).unwrap();
        assert_eq!(out, b"prefix:{\"a\":[true],\"b\":1}");
        let mut out = b"prefix:".to_vec();
        let bad = json!({"a": "x".repeat(100), "b": u64::MAX});
        assert!(canonicalize_into(&bad, &mut out).is_err());
        assert_eq!(out, b"prefix:");
    }

    #[test]
    fn canonicalize_depth_limit() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        let ok = canonicalize(&v).unwrap();
        assert_eq!(to_canonical_vec(&v).unwrap(), ok);
        assert!(parse_strict(&ok).is_ok());
        let too_deep = json!({ "a": v });
        assert_eq!(canonicalize(&too_deep), Err(Error::TooDeep { max: MAX_DEPTH }));
        assert_eq!(to_canonical_vec(&too_deep), Err(Error::TooDeep { max: MAX_DEPTH }));
    }

    #[test]
    fn canonicalize_sorts_nested_objects_and_keeps_array_order() {
        let v = parse_strict(br#"{"b":[3,1,{"z":1,"y":{"d":0,"c":0}}],"a":{"\u00e9":1,"e":2},"":null}"#).unwrap();
        let expected = "{\"\":null,\"a\":{\"e\":2,\"é\":1},\"b\":[3,1,{\"y\":{\"c\":0,\"d\":0},\"z\":1}]}";
        assert_eq!(canonicalize(&v).unwrap(), expected.as_bytes());
        assert_eq!(to_canonical_vec(&v).unwrap(), expected.as_bytes());
    }

    // ---- to_canonical_vec: serde data model ----------------------------------------------------

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Newtype(String);

    #[derive(Serialize)]
    struct TupleStruct(u8, &'static str);

    #[derive(Serialize)]
    enum Kind {
        Unit,
        Newtype(i32),
        Tuple(i32, String),
        Struct { z: u8, a: Option<bool> },
    }

    #[derive(Serialize)]
    struct Bytes<'a>(#[serde(serialize_with = "as_bytes")] &'a [u8]);

    fn as_bytes<S: serde::Serializer>(b: &&[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    #[derive(Serialize)]
    struct Body {
        zeta: u32,
        alpha: &'static str,
        #[serde(rename = "\u{e000}")]
        pua: u8,
        #[serde(rename = "\u{1f600}")]
        emoji: u8,
        #[serde(rename = "\r")]
        cr: bool,
        none: Option<u8>,
        some: Option<i64>,
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        tuple: (u8, char, f32),
        tuple_struct: TupleStruct,
        kinds: Vec<Kind>,
        bytes: Bytes<'static>,
        empty_bytes: Bytes<'static>,
        map: HashMap<String, BTreeMap<String, i8>>,
        small: (i8, i16, i32, i64, u16, u32, u64, i128, u128),
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(flatten)]
        flat: BTreeMap<String, u8>,
    }

    #[test]
    fn serializer_matches_serde_json_data_model() {
        let mut map = HashMap::new();
        for k in ["q", "\u{fb33}", "\u{1f600}", "a", ""] {
            map.insert(k.to_owned(), BTreeMap::from([("z".to_owned(), -1), ("b".to_owned(), 2)]));
        }
        let body = Body {
            zeta: 7,
            alpha: "a\"b\\c\u{1}\u{2028}",
            pua: 1,
            emoji: 2,
            cr: true,
            none: None,
            some: Some(-9007199254740991),
            unit: (),
            unit_struct: Unit,
            newtype: Newtype("nt".into()),
            tuple: (1, '\u{1f600}', 0.1),
            tuple_struct: TupleStruct(9, "ts"),
            kinds: vec![Kind::Unit, Kind::Newtype(-3), Kind::Tuple(4, "t".into()), Kind::Struct { z: 1, a: None }],
            bytes: Bytes(&[0, 1, 127, 255]),
            empty_bytes: Bytes(&[]),
            map,
            small: (-8, -16, -32, -64, 16, 32, 64, -128, 128),
            skipped: None,
            flat: BTreeMap::from([("x-2".to_owned(), 2), ("x-1".to_owned(), 1)]),
        };
        let direct = to_canonical_vec(&body).unwrap();
        assert_eq!(direct, via_value(&body).unwrap());
        let text = String::from_utf8(direct).unwrap();
        // Spot checks of the mapping itself.
        assert!(text.starts_with("{\"\\r\":true,\"alpha\":\"a\\\"b\\\\c\\u0001\u{2028}\","), "{text}");
        assert!(text.contains("\"bytes\":[0,1,127,255],\"empty_bytes\":[]"), "{text}");
        assert!(text
            .contains("\"kinds\":[\"Unit\",{\"Newtype\":-3},{\"Tuple\":[4,\"t\"]},{\"Struct\":{\"a\":null,\"z\":1}}]"));
        assert!(text.contains("\"tuple\":[1,\"\u{1f600}\",0.10000000149011612]"), "{text}");
        assert!(text.contains("\"unit\":null,\"unit_struct\":null"), "{text}");
        assert!(text.contains("\"x-1\":1,\"x-2\":2"), "{text}");
        assert!(text.ends_with(",\"\u{1f600}\":2,\"\u{e000}\":1}"), "{text}");
        assert!(!text.contains("skipped"));
        assert!(parse_strict(text.as_bytes()).is_ok());
    }

    #[test]
    fn serializer_scalars_and_integer_range() {
        let oor = |l: &str| Err(Error::IntegerOutOfRange { literal: l.to_owned() });
        assert_eq!(to_canonical_vec(&()).unwrap(), b"null");
        assert_eq!(to_canonical_vec(&None::<u8>).unwrap(), b"null");
        assert_eq!(to_canonical_vec("s").unwrap(), b"\"s\"");
        assert_eq!(to_canonical_vec(&'\n').unwrap(), b"\"\\n\"");
        assert_eq!(to_canonical_vec(&MAX_SAFE_INTEGER).unwrap(), b"9007199254740991");
        assert_eq!(to_canonical_vec(&(MAX_SAFE_INTEGER + 1)), oor("9007199254740992"));
        assert_eq!(to_canonical_vec(&-(1_i64 << 53)), oor("-9007199254740992"));
        assert_eq!(to_canonical_vec(&i64::MIN), oor("-9223372036854775808"));
        assert_eq!(to_canonical_vec(&i128::MIN), oor(&i128::MIN.to_string()));
        assert_eq!(to_canonical_vec(&u128::MAX), oor(&u128::MAX.to_string()));
        assert_eq!(to_canonical_vec(&-(MAX_SAFE_INTEGER as i128)).unwrap(), b"-9007199254740991");
        assert_eq!(to_canonical_vec(&f32::NAN), Err(Error::NonFiniteNumber));
        assert_eq!(to_canonical_vec(&vec![f64::NEG_INFINITY]), Err(Error::NonFiniteNumber));
        assert_eq!(to_canonical_vec(&1e16_f32), oor("10000000272564224"));
        assert_eq!(via_value(&1e16_f32), oor("10000000272564224"));
    }

    #[test]
    fn serializer_map_keys_must_be_strings() {
        let err = Err(Error::Canonicalize("object keys must be strings".into()));
        assert_eq!(to_canonical_vec(&BTreeMap::from([(1_u32, 1)])), err);
        assert_eq!(to_canonical_vec(&BTreeMap::from([(true, 1)])), err);
        assert_eq!(to_canonical_vec(&BTreeMap::from([((1, 2), 1)])), err);
        assert_eq!(to_canonical_vec(&BTreeMap::from([(Some("a"), 1)])), err);
        assert_eq!(to_canonical_vec(&vec![BTreeMap::from([(1.5_f64.to_bits(), 1)])]), err);
        // String-like keys are accepted exactly as serde_json accepts them.
        #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
        enum K {
            B,
            A,
        }
        #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
        struct Wrapped(char);
        let m1 = BTreeMap::from([(K::B, 1), (K::A, 2)]);
        let m2 = BTreeMap::from([(Wrapped('z'), 1), (Wrapped('\u{1f600}'), 2), (Wrapped('\u{fb33}'), 3)]);
        assert_eq!(to_canonical_vec(&m1).unwrap(), b"{\"A\":2,\"B\":1}");
        assert_eq!(to_canonical_vec(&m1).unwrap(), via_value(&m1).unwrap());
        assert_eq!(to_canonical_vec(&m2).unwrap(), "{\"z\":1,\"\u{1f600}\":2,\"\u{fb33}\":3}".as_bytes());
        assert_eq!(to_canonical_vec(&m2).unwrap(), via_value(&m2).unwrap());
    }

    /// A map that emits the same key twice (possible with hand-written impls or colliding
    /// `#[serde(flatten)]`): serde_json would silently keep the last value; we refuse.
    #[test]
    fn serializer_rejects_duplicate_keys() {
        struct Dup(&'static [(&'static str, u8)]);
        impl Serialize for Dup {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let dup = |k: &str| Err(Error::DuplicateKey { key: k.to_owned() });
        assert_eq!(to_canonical_vec(&Dup(&[("a", 1), ("a", 2)])), dup("a"));
        assert_eq!(to_canonical_vec(&Dup(&[("b", 1), ("c", 1), ("b", 2)])), dup("b"));
        assert_eq!(to_canonical_vec(&[Dup(&[("\u{1f600}", 1), ("x", 1), ("\u{1f600}", 2)])]), dup("\u{1f600}"));
        assert_eq!(to_canonical_vec(&Dup(&[("b", 1), ("a", 2)])).unwrap(), b"{\"a\":2,\"b\":1}");

        #[derive(Serialize)]
        struct Collide {
            a: u8,
            #[serde(flatten)]
            rest: BTreeMap<String, u8>,
        }
        let c = Collide { a: 1, rest: BTreeMap::from([("a".to_owned(), 2)]) };
        assert_eq!(to_canonical_vec(&c), dup("a"));
        assert_eq!(via_value(&c).unwrap(), b"{\"a\":2}", "what serde_json would have done");
    }

    /// With two offending fields each path reports the first it meets: declaration order for
    /// the serializer, canonical key order for the Value path. Both fail; the item named differs.
    #[test]
    fn several_offenders_both_paths_fail() {
        #[derive(Serialize)]
        struct Two {
            z: u64,
            a: u64,
        }
        let two = Two { z: u64::MAX, a: 1 << 53 };
        assert_eq!(to_canonical_vec(&two), Err(Error::IntegerOutOfRange { literal: u64::MAX.to_string() }));
        assert_eq!(via_value(&two), Err(Error::IntegerOutOfRange { literal: "9007199254740992".into() }));
    }

    #[test]
    fn serializer_rejects_misused_map_protocol() {
        struct ValueFirst;
        impl Serialize for ValueFirst {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_value(&1)?;
                m.end()
            }
        }
        struct KeyOnly;
        impl Serialize for KeyOnly {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_key("k")?;
                m.end()
            }
        }
        assert!(matches!(to_canonical_vec(&ValueFirst), Err(Error::Canonicalize(_))));
        assert!(matches!(to_canonical_vec(&KeyOnly), Err(Error::Canonicalize(_))));
        // Custom errors raised by Serialize impls surface as Error::Canonicalize.
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("nope"))
            }
        }
        assert_eq!(to_canonical_vec(&Fails), Err(Error::Canonicalize("nope".into())));
    }

    #[test]
    fn serializer_depth_counts_enum_wrappers() {
        // Newtype variant = one object level; tuple/struct variants = two levels.
        #[derive(Serialize)]
        enum E {
            N(Box<Node>),
        }
        #[derive(Serialize)]
        struct Node(Option<E>);
        let mut n = Node(None);
        for _ in 0..MAX_DEPTH {
            n = Node(Some(E::N(Box::new(n))));
        }
        let ok = to_canonical_vec(&n).unwrap();
        assert_eq!(ok, via_value(&n).unwrap());
        assert!(parse_strict(&ok).is_ok());
        let n = Node(Some(E::N(Box::new(n))));
        assert_eq!(to_canonical_vec(&n), Err(Error::TooDeep { max: MAX_DEPTH }));
    }
}
