//! The gateway's one error type. What reaches the MCP client is always an MCP answer (a tool
//! error or a JSON-RPC error, `proxy`); these are what the parts below it can fail with.

/// A failure of the gateway's own parts.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Allowly could not be reached, or answered 5xx/429 after the retries: the call is refused
    /// unless `--on-unreachable allow` (fail closed).
    #[error("Allowly is unreachable: {0}")]
    Unreachable(String),
    /// Allowly refused the request (4xx): a wrong key, an unknown authorization, …
    #[error("Allowly refused the request: {status} {code}: {detail}")]
    Refused { status: u16, code: String, detail: String },
    /// An answer that does not read as the API documents it.
    #[error("unexpected answer from Allowly: {0}")]
    BadAnswer(String),
    /// The command line or the environment.
    #[error("{0}")]
    Config(String),
    /// A CA file (`--upstream-ca-file`, `ca_file =`) that cannot be used; it names the file.
    #[error(transparent)]
    Tls(#[from] allowly_tls::TlsError),
    /// Starting or talking to the MCP server behind the gateway.
    #[error("MCP server: {0}")]
    Downstream(String),
}
