//! The crate's one error enum.

/// Everything this crate can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A webhook secret that is not `whsec_` + base64 of 24..=64 bytes.
    #[error("invalid webhook secret: {0}")]
    Secret(&'static str),
    /// A stored webhook, delivery or outbox document that does not decode (its kind and id).
    #[error("stored {kind} {id} does not decode: {message}")]
    Corrupt { kind: &'static str, id: String, message: String },
    /// The store failed.
    #[error("storage: {0}")]
    Store(#[from] allowly_store::StoreError),
    /// The OS random source failed (secrets, ids, jitter).
    #[error("OS random source: {0}")]
    Random(String),
    /// Serialising a payload or a document failed (never expected).
    #[error("encoding: {0}")]
    Encode(String),
    /// A delivery's request was refused before it was sent: the resolver found only addresses
    /// the destination policy refuses (the message names them). A delivery outcome, never
    /// returned by the crate's API.
    #[error("{0}")]
    DestinationRefused(String),
    /// A delivery's request got no response (connect, TLS or protocol failure; the message is
    /// the error and its sources). A delivery outcome, never returned by the crate's API.
    #[error("{0}")]
    Exchange(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = WebhookError> = std::result::Result<T, E>;
