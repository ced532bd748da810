//! Property tests for `allowly_receipt::jcs`, using only the public API and independent
//! oracles (serde_json for parsing/serializing, `encode_utf16().collect::<Vec<u16>>()` for order).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use allowly_receipt::jcs::{canonicalize, parse_strict, to_canonical_vec, MAX_SAFE_INTEGER};
use allowly_receipt::{Error, Result};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Number, Value};

// ---- strategies --------------------------------------------------------------------------------

/// Characters that stress escaping and UTF-16 ordering: ASCII, controls, `"` and `\`,
/// U+E000..U+FFFF (sorts *after* astral in UTF-16), astral (surrogate pairs), other BMP.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'e'),
        1 => proptest::char::range('\u{0}', '\u{1f}'),
        1 => select(vec!['"', '\\', '/', '\u{7f}', '\u{80}', '\u{2028}', '\u{d7ff}', '\u{e000}',
                         '\u{fb33}', '\u{fffd}', '\u{ffff}', '\u{10000}', '\u{1f600}', '\u{10ffff}']),
        1 => proptest::char::range('\u{e000}', '\u{ffff}'),
        1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
        1 => proptest::char::range('\u{80}', '\u{d7ff}'),
    ]
}

fn string() -> impl Strategy<Value = String> {
    proptest::collection::vec(any_char(), 0..5).prop_map(|cs| cs.into_iter().collect())
}

fn safe_int() -> impl Strategy<Value = i64> {
    let max = MAX_SAFE_INTEGER as i64;
    prop_oneof![
        3 => -max..=max,
        1 => -1000_i64..1000,
        1 => select(vec![0, 1, -1, max, -max, max - 1, -max + 1]),
    ]
}

/// Offsets a double by `k` ulps (staying on the same side of zero).
fn ulps(x: f64, k: i64) -> f64 {
    f64::from_bits(x.to_bits().wrapping_add_signed(k))
}

fn finite_f64() -> impl Strategy<Value = f64> {
    let boundary = select(vec![1e21, 1e-7, 1e-6, 9007199254740992.0, 1e23, 5e-324, f64::MIN_POSITIVE, f64::MAX]);
    prop_oneof![
        3 => any::<f64>(),
        2 => any::<u64>().prop_map(f64::from_bits),
        1 => (1_u64..1 << 52).prop_map(f64::from_bits), // subnormals
        1 => (boundary, -3_i64..=3, any::<bool>()).prop_map(|(b, k, neg)| {
            let x = ulps(b, k);
            if neg { -x } else { x }
        }),
        1 => select(vec![0.0, -0.0, 1.0, -1.5, 0.1, 1e20, 1e21, 1e-7, 333_333_333.333_333_3, 4.5]),
        1 => (-(1_i64 << 53)..(1_i64 << 53)).prop_map(|i| i as f64), // integral floats
        1 => -1e6_f64..1e6,
    ]
    .prop_filter("finite", |x| x.is_finite())
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        safe_int().prop_map(Value::from),
        finite_f64().prop_map(|x| Value::Number(Number::from_f64(x).unwrap())),
        string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

// ---- independent order oracle ---------------------------------------------------------------

/// A JSON tree that remembers member order as it appears in the text (serde_json's Map would
/// re-sort it), deserialized by serde_json, not by the code under test.
enum Ordered {
    Scalar,
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Ordered::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(kv) = a.next_entry()? {
                    members.push(kv);
                }
                Ok(Ordered::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// Every object in `out` lists exactly `v`'s keys, ascending by UTF-16 code units.
fn check_order(v: &Value, out: &Ordered) -> std::result::Result<(), TestCaseError> {
    match (v, out) {
        (Value::Array(a), Ordered::Array(b)) => {
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                check_order(x, y)?;
            }
        }
        (Value::Object(m), Ordered::Object(members)) => {
            let mut expected: Vec<&String> = m.keys().collect();
            expected.sort_by_key(|k| utf16(k));
            let actual: Vec<&String> = members.iter().map(|(k, _)| k).collect();
            prop_assert_eq!(&actual, &expected);
            for w in members.windows(2) {
                prop_assert!(utf16(&w[0].0) < utf16(&w[1].0));
            }
            for (k, y) in members {
                check_order(&m[k], y)?;
            }
        }
        (Value::Array(_) | Value::Object(_), _) => prop_assert!(false, "shape mismatch"),
        _ => {}
    }
    Ok(())
}

/// If `value` canonicalizes, its canonical bytes re-parse and are a fixed point.
fn check_closure(value: &Value) -> std::result::Result<(), TestCaseError> {
    if let Ok(c) = canonicalize(value) {
        let reparsed = parse_strict(&c);
        prop_assert!(reparsed.is_ok(), "canonical output rejected: {:?} {:?}", String::from_utf8_lossy(&c), reparsed);
        prop_assert_eq!(canonicalize(&reparsed.unwrap()).unwrap(), c);
    }
    Ok(())
}

fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, byte, op) in edits {
        let i = at.index(bytes.len() + 1);
        match op % 3 {
            0 if i < bytes.len() => bytes[i] = *byte,
            1 => bytes.insert(i, *byte),
            _ if i < bytes.len() => {
                bytes.remove(i);
            }
            _ => bytes.push(*byte),
        }
    }
    bytes
}

// ---- a Serialize type that exercises the whole serde data model ----------------------------------

#[derive(Serialize, Debug, Clone)]
struct Inner {
    z: Option<bool>,
    #[serde(rename = "\u{ff00}")]
    wide: Vec<i32>,
    a: String,
}

#[derive(Serialize, Debug, Clone)]
enum Kind {
    Unit,
    Newtype(f64),
    Tuple(i16, String),
    Struct { z: u8, a: Inner },
}

#[derive(Serialize, Debug, Clone)]
struct Body {
    zeta: i64,
    alpha: String,
    #[serde(rename = "\u{1f600}")]
    emoji: f64,
    #[serde(rename = "\u{e000}")]
    pua: f32,
    maybe: Option<char>,
    inner: Inner,
    kinds: Vec<Kind>,
    tuple: (u8, (), i128),
    map: HashMap<String, Inner>,
    #[serde(flatten)]
    extra: BTreeMap<String, i64>,
}

fn inner() -> impl Strategy<Value = Inner> {
    (proptest::option::of(any::<bool>()), proptest::collection::vec(any::<i32>(), 0..3), string())
        .prop_map(|(z, wide, a)| Inner { z, wide, a })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Unit),
        finite_f64().prop_map(Kind::Newtype),
        (any::<i16>(), string()).prop_map(|(i, s)| Kind::Tuple(i, s)),
        (any::<u8>(), inner()).prop_map(|(z, a)| Kind::Struct { z, a }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    (
        (safe_int(), string(), finite_f64(), any::<f32>().prop_filter("finite", |x| x.is_finite())),
        (proptest::option::of(any_char()), inner(), proptest::collection::vec(kind(), 0..4)),
        (any::<u8>(), safe_int()),
        proptest::collection::hash_map(string(), inner(), 0..4),
        // Prefixed so flattened keys never collide with the struct's own fields.
        proptest::collection::btree_map(string().prop_map(|s| format!("x-{s}")), safe_int(), 0..4),
    )
        .prop_map(|((zeta, alpha, emoji, pua), (maybe, inner, kinds), (t0, t2), map, extra)| Body {
            zeta,
            alpha,
            emoji,
            pua,
            maybe,
            inner,
            kinds,
            tuple: (t0, (), i128::from(t2)),
            map,
            extra,
        })
}

fn via_value<T: Serialize>(x: &T) -> Result<Vec<u8>> {
    canonicalize(&serde_json::to_value(x).unwrap())
}

/// Identical bytes, or errors of the same kind. (With several offending items the two paths may
/// name different ones: each stops at the first it meets, in serialization vs canonical order.)
fn same_outcome(a: &Result<Vec<u8>>, b: &Result<Vec<u8>>) -> std::result::Result<(), TestCaseError> {
    match (a, b) {
        (Ok(x), Ok(y)) => prop_assert_eq!(x, y),
        (Err(x), Err(y)) => prop_assert_eq!(std::mem::discriminant(x), std::mem::discriminant(y), "{:?} vs {:?}", x, y),
        _ => prop_assert!(false, "{:?} vs {:?}", a, b),
    }
    Ok(())
}

// ---- properties ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// (a) The direct serializer and the Value path agree, errors included.
    #[test]
    fn serializer_matches_value_path(v in json_value()) {
        same_outcome(&to_canonical_vec(&v), &canonicalize(&v))?;
    }

    /// (a') Same, for derived structs/enums/maps rather than `Value`'s own Serialize impl.
    #[test]
    fn serializer_matches_value_path_for_derived_types(b in body()) {
        same_outcome(&to_canonical_vec(&b), &via_value(&b))?;
    }

    /// (b) Canonical output is accepted by parse_strict and is a fixed point.
    #[test]
    fn canonical_form_is_idempotent(v in json_value()) {
        check_closure(&v)?;
    }

    /// (c) Any serde_json rendering (compact or pretty) parses to the same canonical bytes.
    #[test]
    fn serde_json_text_canonicalizes_like_the_value(v in json_value()) {
        let expected = canonicalize(&v);
        for text in [serde_json::to_vec(&v).unwrap(), serde_json::to_vec_pretty(&v).unwrap()] {
            let parsed = parse_strict(&text);
            prop_assert!(parsed.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&text), parsed);
            prop_assert_eq!(&canonicalize(&parsed.unwrap()), &expected);
        }
    }

    /// (d) Object members appear exactly once each, ascending by UTF-16 code units.
    #[test]
    fn members_sorted_by_utf16(v in json_value()) {
        if let Ok(c) = canonicalize(&v) {
            let tree: Ordered = serde_json::from_slice(&c).unwrap();
            check_order(&v, &tree)?;
        }
    }

    /// (e) No panic on arbitrary bytes; anything accepted still satisfies closure.
    #[test]
    fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = parse_strict(&bytes) {
            check_closure(&v)?;
        }
    }

    /// (e) Same, over a JSON-ish alphabet, which reaches much deeper into the grammar.
    #[test]
    fn parse_never_panics_on_json_alphabet(
        bytes in proptest::collection::vec(select(b"{}[]\":, \n\t0123456789-+.eEtruefalsn\\u/bdD8\xc3\xa9\x00\x1f\x7f".to_vec()), 0..128)
    ) {
        if let Ok(v) = parse_strict(&bytes) {
            check_closure(&v)?;
        }
    }

    /// (e) Same, over random edits of valid JSON texts.
    #[test]
    fn parse_never_panics_on_mutated_json(
        v in json_value(),
        pretty in any::<bool>(),
        edits in proptest::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let text = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
        let mutated = mutate(text, &edits);
        if let Ok(p) = parse_strict(&mutated) {
            check_closure(&p)?;
        }
    }

    /// Integers: accepted exactly within ±(2^53-1) by both parser and canonicalizers.
    #[test]
    fn integer_boundary(n in prop_oneof![any::<i64>(), -(1_i64 << 54)..(1_i64 << 54)]) {
        let text = n.to_string();
        let in_range = n.unsigned_abs() <= MAX_SAFE_INTEGER;
        let err = Error::IntegerOutOfRange { literal: text.clone() };
        if in_range {
            prop_assert_eq!(canonicalize(&parse_strict(text.as_bytes()).unwrap()).unwrap(), text.as_bytes());
            prop_assert_eq!(to_canonical_vec(&n).unwrap(), text.as_bytes());
        } else {
            prop_assert_eq!(parse_strict(text.as_bytes()).unwrap_err(), err.clone());
            prop_assert_eq!(to_canonical_vec(&n).unwrap_err(), err.clone());
            prop_assert_eq!(canonicalize(&Value::from(n)).unwrap_err(), err);
        }
    }

    /// Floats: the float path round-trips every finite double exactly.
    #[test]
    fn float_text_round_trips(x in finite_f64()) {
        if let Ok(c) = to_canonical_vec(&x) {
            let text = std::str::from_utf8(&c).unwrap();
            let back: f64 = text.parse().unwrap();
            prop_assert!(back == x, "{} -> {} -> {}", x, text, back);
        } else {
            // The only refusal for a finite double: it would print as a bare integer > 2^53-1.
            prop_assert!(x.abs() >= 9007199254740992.0 && x.abs() < 1e21, "{}", x);
        }
    }
}
