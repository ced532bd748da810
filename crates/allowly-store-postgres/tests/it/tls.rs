//! TLS to a real PostgreSQL: a cluster of its own listening on 127.0.0.1 with `ssl = on` and
//! the test certificate the server's TLS tests use (`crates/allowly-server/tests/it/fixtures`:
//! `tls-ca.pem` issued `tls-server.pem`, for 127.0.0.1 and localhost), and one without TLS.

use std::path::PathBuf;
use std::sync::OnceLock;

use allowly_store::StoreError;
use allowly_store_postgres::test_cluster::{self, Cluster};
use allowly_store_postgres::{PgOptions, PgStore};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../allowly-server/tests/it/fixtures").join(name)
}

fn with_tls() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_tcp(Some((&fixture("tls-server.pem"), &fixture("tls-server.key")))))
}

fn without_tls() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_tcp(None))
}

/// A connection string to `cluster` over TCP to 127.0.0.1, checking the certificate against
/// the name `host`, in a fresh schema, with `tls` (the `sslmode`/`sslrootcert` settings).
fn tcp(cluster: &Cluster, host: &str, tls: &str) -> String {
    let (schema, _) = cluster.fresh_schema();
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={} dbname=postgres options='-c search_path={schema}' {tls}",
        cluster.port(),
        test_cluster::USER
    )
}

fn open(conninfo: &str) -> Result<PgStore, StoreError> {
    let mut opts = PgOptions::default();
    // A loaded machine slows the handshake; a hang still fails.
    opts.timeout = std::time::Duration::from_secs(30);
    PgStore::open(conninfo, opts)
}

/// The TLS version of every TCP connection the cluster serves now (`none` for plaintext).
fn tcp_connections(cluster: &Cluster) -> Vec<String> {
    let rows = cluster.psql(
        "postgres",
        "SELECT coalesce(s.version, 'none') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.client_addr IS NOT NULL ORDER BY 1",
    );
    rows.lines().map(str::to_owned).collect()
}

fn refused(conninfo: &str) -> String {
    open(conninfo).map(|_| ()).expect_err("must not connect").to_string()
}

#[test]
fn verify_full_with_the_right_ca_and_host_name_connects_over_tls() {
    let cluster = with_tls();
    let ca = fixture("tls-ca.pem");
    let by_name =
        open(&tcp(cluster, "localhost", &format!("sslmode=verify-full sslrootcert={}", ca.display()))).unwrap();
    assert!(by_name.target().ends_with("(TLS, sslmode=verify-full)"), "{}", by_name.target());
    // The URL form, no sslmode (verify-full is the default), the address as the name.
    let (schema, _) = cluster.fresh_schema();
    let url = format!(
        "postgresql://{}@127.0.0.1:{}/postgres?options=-c%20search_path%3D{schema}&sslrootcert={}",
        test_cluster::USER,
        cluster.port(),
        ca.display()
    );
    let by_address = open(&url).unwrap();
    assert!(by_address.target().ends_with("(TLS, sslmode=verify-full)"), "{}", by_address.target());
    // Both stores hold their connections open: every TCP connection is TLS.
    let versions = tcp_connections(cluster);
    assert!(versions.len() >= 2 && versions.iter().all(|v| v.starts_with("TLSv1.")), "{versions:?}");
}

#[test]
fn a_wrong_ca_or_host_name_is_refused_with_the_reason() {
    let cluster = with_tls();
    let (ca, leaf) = (fixture("tls-ca.pem"), fixture("tls-server.pem"));
    let full = |host: &str, root: &str| tcp(cluster, host, &format!("sslmode=verify-full {root}"));
    // A CA that did not issue the certificate (the server's own certificate as the only root).
    let wrong_ca = refused(&full("localhost", &format!("sslrootcert={}", leaf.display())));
    assert!(wrong_ca.contains("invalid peer certificate: UnknownIssuer"), "{wrong_ca}");
    assert!(wrong_ca.contains("sslmode=verify-full"), "{wrong_ca}");
    // No sslrootcert: the Mozilla roots, and no public CA issued it.
    let mozilla = refused(&tcp(cluster, "localhost", ""));
    assert!(mozilla.contains("UnknownIssuer"), "{mozilla}");
    // The right CA, another name.
    let wrong_name = refused(&full("db.invalid", &format!("sslrootcert={}", ca.display())));
    assert!(wrong_name.contains("certificate not valid for name \"db.invalid\""), "{wrong_name}");
    // verify-ca checks the issuer, not the name.
    open(&tcp(cluster, "db.invalid", &format!("sslmode=verify-ca sslrootcert={}", ca.display()))).unwrap();
    let ca_only = refused(&tcp(cluster, "db.invalid", &format!("sslmode=verify-ca sslrootcert={}", leaf.display())));
    assert!(ca_only.contains("UnknownIssuer"), "{ca_only}");
    // Neither is a password ever in an error.
    let secret = refused(&format!("{} password=hunter2", full("db.invalid", "")));
    assert!(!secret.contains("hunter2"), "{secret}");
}

#[test]
fn require_encrypts_without_checking_the_certificate() {
    let cluster = with_tls();
    for mode in ["require", "prefer"] {
        let store = open(&tcp(cluster, "db.invalid", &format!("sslmode={mode}"))).unwrap();
        assert!(store.target().ends_with("(TLS, sslmode=require)"), "{}", store.target());
        let versions = tcp_connections(cluster);
        assert!(!versions.is_empty() && versions.iter().all(|v| v.starts_with("TLSv1.")), "{versions:?}");
    }
}

#[test]
fn a_server_without_tls_is_refused_unless_tls_is_disabled() {
    let cluster = without_tls();
    for tls in ["sslmode=require", "sslmode=prefer", "sslmode=verify-full", ""] {
        let e = refused(&tcp(cluster, "localhost", tls));
        assert!(e.contains("server does not support TLS"), "{tls}: {e}");
    }
    // Out of reach, as a certificate that does not verify is: 503 and readiness, not a 500.
    let e = open(&tcp(cluster, "localhost", "")).map(|_| ()).expect_err("must not connect");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let plain = open(&tcp(cluster, "localhost", "sslmode=disable")).unwrap();
    assert!(plain.target().ends_with("(sslmode=disable)"), "{}", plain.target());
    let versions = tcp_connections(cluster);
    assert!(!versions.is_empty() && versions.iter().all(|v| v == "none"), "{versions:?}");
}
