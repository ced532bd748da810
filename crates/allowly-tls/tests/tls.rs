//! The CA-file path end to end: files that cannot be a CA file give an error naming the file
//! and why, and a good one is trusted — alone — by a real TLS handshake with a rustls server on
//! loopback whose certificate that CA issued.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use allowly_tls::{client_config, client_config_checking, error_chain, CaFile, ServerCheck, TlsError};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The test certificates the server's TLS tests use: `tls-ca.pem` (CN "allowly test CA") issued
/// `tls-server.pem` (127.0.0.1 and localhost, valid 2000–2100) whose key is `tls-server.key`.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../allowly-server/tests/it/fixtures")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// Whether an error is of the expected variant.
type Kind = fn(&TlsError) -> bool;

#[test]
fn what_cannot_be_a_ca_file_is_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let key = std::fs::read_to_string(fixtures().join("tls-server.key")).expect("key");
    let cases: [(PathBuf, Kind, &str); 6] = [
        (missing, |e| matches!(e, TlsError::CaFileUnreadable { .. }), "No such file"),
        (dir.path().to_owned(), |e| matches!(e, TlsError::CaFileUnreadable { .. }), "directory"),
        (
            write(dir.path(), "text.pem", "not a certificate\n"),
            |e| matches!(e, TlsError::NoCertificate { .. }),
            "no PEM certificate",
        ),
        (write(dir.path(), "key.pem", &key), |e| matches!(e, TlsError::NoCertificate { .. }), "no PEM certificate"),
        (
            write(dir.path(), "cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"),
            |e| matches!(e, TlsError::CaFileMalformed { .. }),
            "not PEM: missing section end marker",
        ),
        (
            // Valid PEM around three zero bytes: not an X.509 certificate.
            write(dir.path(), "junk.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            |e| matches!(e, TlsError::BadCertificate { index: 1, .. }),
            "certificate 1:",
        ),
    ];
    for (path, kind, says) in cases {
        let e = CaFile::read(&path).expect_err("refused");
        let text = e.to_string();
        assert!(kind(&e), "{}: {e:?}", path.display());
        assert!(text.starts_with(&format!("CA file {}: ", path.display())) && text.contains(says), "{text}");
    }
    // One good certificate does not carry a broken one: the file is refused, at the second.
    let ca = std::fs::read_to_string(fixtures().join("tls-ca.pem")).expect("ca");
    let mixed =
        write(dir.path(), "mixed.pem", &format!("{ca}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
    assert!(matches!(CaFile::read(&mixed), Err(TlsError::BadCertificate { index: 2, .. })));
}

/// One TLS connection to a loopback server presenting the test certificate, with `config`:
/// `Ok` with what the server sent once the handshake succeeded, or the client's error.
fn connect(config: rustls::ClientConfig, host: &str) -> Result<String, String> {
    let dir = fixtures();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("tls-server.pem"))
        .expect("chain")
        .collect::<Result<_, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_file(dir.join("tls-server.key")).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(Arc::new(server)).expect("conn"), tcp);
        // A client that refuses the certificate ends the handshake: the write fails.
        if tls.write_all(b"hello").and_then(|()| tls.flush()).is_ok() {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    let name = ServerName::try_from(host.to_owned()).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).expect("connect"));
    let mut got = String::new();
    let result = tls.read_to_string(&mut got).map(|_| got).map_err(|e| error_chain(&e));
    drop(tls);
    serving.join().expect("server thread");
    result
}

#[test]
fn a_ca_file_is_trusted_alone_and_the_mozilla_roots_refuse_its_certificates() {
    let ca = CaFile::read(&fixtures().join("tls-ca.pem")).expect("the test CA");
    assert_eq!(ca.path(), fixtures().join("tls-ca.pem"));
    for host in ["127.0.0.1", "localhost"] {
        assert_eq!(connect(client_config(Some(&ca)).expect("config"), host), Ok("hello".to_owned()), "{host}");
    }
    // The certificate names 127.0.0.1 and localhost only.
    let other = connect(client_config(Some(&ca)).expect("config"), "127.0.0.2").expect_err("wrong name");
    assert!(other.contains("invalid peer certificate: certificate not valid for name \"127.0.0.2\""), "{other}");
    // Without the CA file, the Mozilla roots: no public CA issued the test certificate.
    let mozilla = connect(client_config(None).expect("config"), "localhost").expect_err("unknown issuer");
    assert!(mozilla.contains("invalid peer certificate: UnknownIssuer"), "{mozilla}");
    // The CA file replaces the roots rather than adding to them: the server's own certificate
    // as the only root does not make the CA's issuance trusted.
    let leaf = CaFile::read(&fixtures().join("tls-server.pem")).expect("a certificate");
    let refused = connect(client_config(Some(&leaf)).expect("config"), "localhost").expect_err("not its CA");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}

/// The weaker checks PostgreSQL's `sslmode` asks for: `verify-ca` still refuses a certificate
/// no root issued but takes it for any name; `require` takes any certificate, yet the handshake
/// is still TLS (the server must hold the certificate's key).
#[test]
fn chain_only_ignores_the_name_but_not_the_issuer_and_nothing_checks_nothing() {
    let ca = CaFile::read(&fixtures().join("tls-ca.pem")).expect("the test CA");
    let chain_only = |ca| client_config_checking(ca, ServerCheck::ChainOnly).expect("config");
    assert_eq!(connect(chain_only(Some(&ca)), "db.invalid"), Ok("hello".to_owned()));
    let unknown = connect(chain_only(None), "localhost").expect_err("no public CA issued it");
    assert!(unknown.contains("invalid peer certificate: UnknownIssuer"), "{unknown}");
    let leaf = CaFile::read(&fixtures().join("tls-server.pem")).expect("a certificate");
    let not_its_ca = connect(chain_only(Some(&leaf)), "localhost").expect_err("not its CA");
    assert!(not_its_ca.contains("UnknownIssuer"), "{not_its_ca}");
    let nothing = client_config_checking(None, ServerCheck::Nothing).expect("config");
    assert_eq!(connect(nothing, "db.invalid"), Ok("hello".to_owned()));
    // The full check is what `client_config` gives.
    let full = connect(client_config_checking(Some(&ca), ServerCheck::Full).expect("config"), "db.invalid");
    assert!(full.expect_err("wrong name").contains("not valid for name"));
}

#[derive(Debug)]
struct Wrapped(&'static str, Option<Box<Wrapped>>);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1.as_deref().map(|w| w as _)
    }
}

#[test]
fn an_error_chain_names_each_cause_once() {
    let e = Wrapped(
        "client error (Connect)",
        Some(Box::new(Wrapped(
            "invalid peer certificate: UnknownIssuer",
            Some(Box::new(Wrapped("UnknownIssuer", None))),
        ))),
    );
    assert_eq!(error_chain(&e), "client error (Connect): invalid peer certificate: UnknownIssuer");
    assert_eq!(error_chain(&Wrapped("alone", None)), "alone");
    assert_eq!(
        allowly_tls::with_causes("initialize at https://h/mcp".into(), Some(&e)),
        "initialize at https://h/mcp: client error (Connect): invalid peer certificate: UnknownIssuer"
    );
}
