//! The one error type of this crate. Every variant is a property of the *input*: nothing here is
//! an IO or environment failure, because this crate does no IO.

/// What went wrong while parsing, canonicalizing, proving or verifying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not JSON (RFC 8259 grammar) or not UTF-8. `offset` is a byte offset.
    #[error("invalid JSON at byte {offset}: {msg}")]
    Json { offset: usize, msg: &'static str },
    /// An object has the same key twice (I-JSON, RFC 7493 §2.3); canonical form would be ambiguous.
    #[error("duplicate object key {key:?}")]
    DuplicateKey { key: String },
    /// An integer outside ±(2^53−1): it cannot round-trip through an IEEE-754 double (RFC 8785 §3.2.2.3).
    #[error("integer {literal} is outside ±(2^53-1)")]
    IntegerOutOfRange { literal: String },
    /// NaN or ±Infinity (or a literal that overflows to infinity): not representable in JSON.
    #[error("number is not finite")]
    NonFiniteNumber,
    /// Nesting deeper than the parser accepts (protects the stack against hostile input).
    #[error("JSON nesting deeper than {max} levels")]
    TooDeep { max: usize },
    /// A value cannot be canonicalized (e.g. a map key that is not a string).
    #[error("cannot canonicalize: {0}")]
    Canonicalize(String),

    /// A leaf index is not inside the tree it is claimed to belong to.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// Tree sizes that cannot be related (e.g. consistency from a larger to a smaller tree).
    #[error("invalid tree sizes: {0}")]
    TreeSize(&'static str),
    /// A Merkle inclusion or consistency proof does not verify.
    #[error("invalid Merkle proof: {0}")]
    Proof(&'static str),
    /// A node a proof needs is not available from the node source.
    #[error("missing Merkle node at level {level}, index {index}")]
    MissingNode { level: u8, index: u64 },

    /// A signed note that is not well formed (C2SP signed-note).
    #[error("malformed signed note: {0}")]
    Note(&'static str),
    /// A note text that is not a well-formed checkpoint (C2SP tlog-checkpoint).
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    /// A key name or verifier key string that is not acceptable.
    #[error("invalid key: {0}")]
    Key(&'static str),
    /// A note carries a signature by a known key that does not verify.
    #[error("signature by {name} ({key_id}) does not verify")]
    BadSignature { name: String, key_id: String },
    /// A note carries no signature from any of the keys the verifier knows.
    #[error("no signature from a known key")]
    NoKnownSignature,

    /// A receipt, key set or bundle field is missing or has the wrong form.
    #[error("invalid {field}: {msg}")]
    Field { field: &'static str, msg: String },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
