//! The HTTP client the gateway reaches an MCP server behind it with (`--upstream-url`, `url =`
//! in `--config`): rmcp's reqwest client, over `http://` or `https://`, with `allowly-tls`'s
//! settings — rustls on ring trusting the Mozilla roots compiled in or, for a server with a
//! certificate of a private CA, only that CA (`--upstream-ca-file`, `ca_file =`, read at start:
//! [`CaFile::read`]). As with `curl --cacert`, the file replaces the roots.

use allowly_tls::CaFile;
use rmcp::service::ClientInitializeError;
use rmcp::transport::streamable_http_client::StreamableHttpError;

use crate::error::GatewayError;

/// A client for one server behind: `ca` its own CA, else the Mozilla roots.
pub fn client(ca: Option<&CaFile>) -> Result<reqwest::Client, GatewayError> {
    let tls = allowly_tls::client_config(ca)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        // As rmcp's own client, no idle connection is kept for reuse (a reused connection whose
        // previous answer was not read to its end stalls ~40 ms on delayed ACKs). No redirect
        // is followed (rmcp follows same-origin 307/308): a 301-303 would turn the POST of a
        // message into a GET without it, another origin would be sent the session id and the
        // bearer token, and the URL to configure is the one the server answers at.
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| GatewayError::Config(format!("the HTTP client: {e}")))
}

/// Why reaching a server over HTTP failed, with the HTTP client's own causes: rmcp's errors
/// name no source for the client error they wrap (it reads only `error sending request`), so
/// that error is looked for and its chain of causes added, e.g. `: invalid peer certificate:
/// UnknownIssuer` for a certificate the trusted CAs did not sign.
pub fn why(e: &ClientInitializeError) -> String {
    if let ClientInitializeError::TransportError { error, .. } = e {
        if let Some(StreamableHttpError::Client(client)) =
            error.error.downcast_ref::<StreamableHttpError<reqwest::Error>>()
        {
            return allowly_tls::with_causes(e.to_string(), std::error::Error::source(client));
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_client_builds_with_the_mozilla_roots() {
        assert!(client(None).is_ok());
    }
}
