//! Inbound TLS: the server's own listener (`allowly serve --tls-cert-file --tls-key-file`), on
//! the same rustls and ring provider as the clients, TLS 1.2 and 1.3, HTTP/1.1 only, no client
//! certificate.
//!
//! The certificate and key are read at start ([`ServerIdentity::load`]: a missing file, one
//! without a certificate or key, or a key that is not the certificate's stops the start, naming
//! the file) and again on [`ServerIdentity::reload`] (the server calls it on SIGHUP, for a
//! renewed certificate): a reload that fails keeps the pair in use, so a half-written or wrong
//! file never takes the listener down. Each handshake takes the pair current when it starts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::TlsError;

/// The listener's certificate chain and key, as last read from their files.
#[derive(Debug)]
pub struct ServerIdentity {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerIdentity {
    /// Reads the certificate chain (PEM, the server's certificate first) and its private key
    /// (PEM: PKCS#8, SEC1 or PKCS#1), and checks that the key is the certificate's.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = read_pair(cert_file, key_file, &provider)?;
        // Absolute: a reload reads them again after the server may have changed its working
        // directory (started as root, it works inside its data directory).
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        Ok(Arc::new(Self {
            cert_file: absolute(cert_file),
            key_file: absolute(key_file),
            provider,
            current: RwLock::new(Arc::new(pair)),
        }))
    }

    /// Reads both files again; on success new handshakes use the new pair, on failure the one
    /// in use stays (and the error says why).
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// The certificate file it reads.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// A server configuration presenting this identity's current pair at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // The server speaks HTTP/1.1 only: a client offering h2 alone is refused in the
        // handshake rather than after it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn read_pair(cert_file: &Path, key_file: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let unreadable = |path: &Path, e: pem::Error| TlsError::IdentityFile { path: path.to_owned(), why: e.to_string() };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable(cert_file, e))?;
    if chain.is_empty() {
        return Err(TlsError::IdentityFile { path: cert_file.to_owned(), why: "no PEM certificate in it".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            TlsError::IdentityFile { path: key_file.to_owned(), why: "no PEM private key in it".into() }
        }
        e => unreadable(key_file, e),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::IdentityMismatch {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        source,
    })
}
