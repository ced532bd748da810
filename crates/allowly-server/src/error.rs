//! Why a command of this crate (`allowly serve`, an operator command) stopped with an error.
//! Its own module, below everything that returns it, so that the operator commands and the
//! HTTP client need not import `serve` (which imports them).

use crate::isolation::IsolationError;
use crate::signer_child::SignerChildError;

/// Why `allowly serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("opening the store at {path}: {source}")]
    Store { path: String, source: allowly_store::StoreError },
    #[error("starting the embedded signer: {0}")]
    Signer(#[from] SignerChildError),
    #[error("{what}: {source}")]
    Engine { what: &'static str, source: allowly_engine::EngineError },
    #[error("starting the webhook worker: {0}")]
    Webhooks(String),
    /// Two collectors share a metric name (a programming error, caught at the first start).
    #[error("registering metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("isolating the signer's keys (started as root): {0}")]
    Isolation(#[from] IsolationError),
    /// An operator command (`admin_cli`) got an answer other than 2xx from the server.
    #[error("the server answered {status}: {body}")]
    Remote { status: u16, body: String },
}
