//! The HTTP client the gateway reaches an MCP server behind it with (`--upstream-url`, `url =`
//! in `--config`): rmcp's reqwest client, over `http://` or `https://`. TLS is rustls on ring
//! (no OpenSSL, no aws-lc build), trusting the Mozilla roots compiled in (`webpki-roots`, as
//! allowly-webhooks does: no system trust store) or, for a server with a certificate of a
//! private CA, only that CA (`--upstream-ca-file`, `ca_file =`): like `curl --cacert`, the file
//! replaces the roots, so a certificate the operator's CA did not sign is refused even when a
//! public CA signed it.

use std::path::Path;
use std::sync::Arc;

use rmcp::service::ClientInitializeError;
use rmcp::transport::streamable_http_client::StreamableHttpError;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::error::GatewayError;

/// The CA certificates a server's certificate must chain to, read from a PEM file at start (a
/// file that is missing, unreadable or holds no certificate stops the gateway there, not at
/// the first connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    /// The file, named in errors.
    pub path: String,
    pub certs: Vec<CertificateDer<'static>>,
}

impl Ca {
    pub fn read(path: &Path) -> Result<Self, GatewayError> {
        let bad = |why: String| GatewayError::Config(format!("CA file {}: {why}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        Ok(Self { path: path.display().to_string(), certs })
    }
}

/// A client for one server behind: `ca` its own CA, else the Mozilla roots.
pub fn client(ca: Option<&Ca>) -> Result<reqwest::Client, GatewayError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in &ca.certs {
                roots.add(cert.clone()).map_err(|e| GatewayError::Config(format!("CA file {}: {e}", ca.path)))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
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
    let mut text = e.to_string();
    if let ClientInitializeError::TransportError { error, .. } = e {
        if let Some(StreamableHttpError::Client(client)) =
            error.error.downcast_ref::<StreamableHttpError<reqwest::Error>>()
        {
            let mut source = std::error::Error::source(client);
            while let Some(cause) = source {
                let more = cause.to_string();
                // Wrappers often repeat their cause's text.
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                source = cause.source();
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(Ca::read(&empty).unwrap_err().to_string().contains("no PEM certificate"));
        let missing = Ca::read(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(missing.contains("missing.pem"), "{missing}");
    }

    #[test]
    fn the_client_builds_with_the_mozilla_roots() {
        assert!(client(None).is_ok());
    }
}
