//! Outbound TLS, one way for every Allowly client that reaches out: the server's operator
//! commands (`--ca-file`), webhook deliveries and witness submissions (`allowly-webhooks`), and
//! the MCP gateway's servers behind it (`--upstream-ca-file`, `ca_file =`), and the PostgreSQL
//! store's connections (`sslmode`, `sslrootcert`). And the server's own TLS listener, on the
//! same provider ([`listener`]).
//!
//! rustls on the ring provider (no OpenSSL, no aws-lc build), TLS 1.2 and 1.3, no client
//! certificate. The server's certificate is checked in full; only the PostgreSQL store may ask
//! for less ([`ServerCheck`], as libpq's `sslmode` does). The roots are the Mozilla set
//! compiled in (`webpki-roots`: no system trust store, so a machine's store cannot widen what
//! is trusted) or, given a [`CaFile`], only that file's certificates: like `curl --cacert`, the
//! file *replaces* the roots, so a certificate the operator's CA did not sign is refused even
//! when a public CA signed it.
//!
//! A CA file is read and every certificate in it checked when [`CaFile::read`] is called (at
//! start), so a missing file, one without a certificate or with one that cannot be a trust
//! anchor is an error naming the file there, not a confusing `UnknownIssuer` at the first
//! connection.
//!
//! [`error_chain`] words a failed connection: HTTP clients' own messages are often only
//! `client error` or `error sending request`, the reason (`invalid peer certificate:
//! UnknownIssuer`) is in their causes.

pub mod listener;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore};

/// What can go wrong setting up outbound TLS; each CA-file variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA file could not be read (missing, not readable, a directory).
    #[error("CA file {}: {source}", path.display())]
    CaFileUnreadable { path: PathBuf, source: std::io::Error },
    /// The CA file is not PEM (a section without its end, bad base64).
    #[error("CA file {}: not PEM: {source}", path.display())]
    CaFileMalformed { path: PathBuf, source: pem::Error },
    /// The CA file holds no `CERTIFICATE` section.
    #[error("CA file {}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    /// A certificate of the CA file (`index`, from 1 in file order) cannot be a trust anchor.
    #[error("CA file {}: certificate {index}: {source}", path.display())]
    BadCertificate { path: PathBuf, index: usize, source: rustls::Error },
    /// The listener's certificate or key file could not be used (unreadable, not PEM, nothing
    /// of its kind in it).
    #[error("{}: {why}", path.display())]
    IdentityFile { path: PathBuf, why: String },
    /// The listener's key is not the certificate's, or of a kind rustls cannot sign with.
    #[error("TLS certificate {} and key {} cannot be used together: {source}", cert.display(), key.display())]
    IdentityMismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    /// rustls refused the protocol versions for the provider (never with ring and the safe
    /// defaults; an error rather than a panic all the same).
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

/// CA certificates read from a PEM file, to trust instead of the Mozilla roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
}

impl CaFile {
    /// Reads `path` and checks that it holds at least one certificate and that every one can
    /// be a trust anchor. Other PEM sections (a key left in the file) are skipped.
    pub fn read(path: &Path) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| match e {
                pem::Error::Io(source) => TlsError::CaFileUnreadable { path: path.to_owned(), source },
                source => TlsError::CaFileMalformed { path: path.to_owned(), source },
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { path: path.to_owned() });
        }
        let ca = Self { path: path.to_owned(), certs };
        ca.roots()?;
        Ok(ca)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for (i, cert) in self.certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|source| TlsError::BadCertificate {
                path: self.path.clone(),
                index: i + 1,
                source,
            })?;
        }
        Ok(roots)
    }
}

/// The client settings: the roots of `ca` alone if given, else the Mozilla set. No ALPN
/// protocol is set: each HTTP client sets its own.
pub fn client_config(ca: Option<&CaFile>) -> Result<rustls::ClientConfig, TlsError> {
    client_config_checking(ca, ServerCheck::Full)
}

/// How much of the server's certificate a client checks. Every HTTP client checks it all
/// ([`client_config`]); the weaker ones exist for PostgreSQL's `sslmode` (`verify-ca`,
/// `require`), whose operators choose them knowingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerCheck {
    /// Signed by one of the roots, valid now, and issued for the name connected to.
    Full,
    /// Signed by one of the roots and valid now, for any name (libpq's `verify-ca`).
    ChainOnly,
    /// Nothing: the connection is encrypted, but anyone in the path can present a certificate
    /// of their own (libpq's `require`). The handshake's signatures are still checked.
    Nothing,
}

/// [`client_config`], checking the server's certificate as `check` says.
pub fn client_config_checking(ca: Option<&CaFile>, check: ServerCheck) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match ca {
        Some(ca) => ca.roots()?,
        None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Settings)?;
    let builder = match check {
        ServerCheck::Full => builder.with_root_certificates(roots),
        ServerCheck::ChainOnly | ServerCheck::Nothing => {
            let roots = (check == ServerCheck::ChainOnly).then(|| Arc::new(roots));
            builder.dangerous().with_custom_certificate_verifier(Arc::new(WeakCheck { roots, provider }))
        }
    };
    Ok(builder.with_no_client_auth())
}

/// The verifier of [`ServerCheck::ChainOnly`] (`roots` given) and [`ServerCheck::Nothing`].
#[derive(Debug)]
struct WeakCheck {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for WeakCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            // The chain and validity half of what `WebPkiServerVerifier` checks, without the name.
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `e` and its causes, joined by `: ` (a cause whose text is already there is left out: wrappers
/// often repeat it).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    with_causes(e.to_string(), e.source())
}

/// `text` followed by `first` and its causes, as [`error_chain`] joins them: for an error whose
/// text says what failed but that does not name its cause as its source (rmcp's transport
/// errors), with the cause found by the caller.
pub fn with_causes(mut text: String, first: Option<&dyn std::error::Error>) -> String {
    let mut next = first;
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}
