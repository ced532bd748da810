//! "Only the store crates name an engine", for PostgreSQL: the storage traits, the webhooks and
//! the engine must never depend on this crate or on a PostgreSQL client, not even transitively
//! (the same rule `crates/allowly-engine/tests/it/deps.rs` enforces for RocksDB). Kept here
//! because this crate brings the dependency in.

use std::process::Command;

const FORBIDDEN: [&str; 3] = ["allowly-store-postgres", "tokio-postgres", "postgres-protocol"];

/// The packages `package` reaches through normal dependencies, transitively.
fn normal_deps(package: &str) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let args = ["tree", "--locked", "--offline", "--edges", "normal", "--prefix", "none", "--format", "{p}", "-p"];
    let out = Command::new(cargo).args(args).arg(package).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo tree -p {package}: {}\n{stderr}", out.status);
    stdout.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn only_the_postgres_store_depends_on_postgres() {
    // The probe must see the client where it is, or finding none elsewhere would prove nothing.
    let pg = normal_deps("allowly-store-postgres");
    for name in &FORBIDDEN[1..] {
        assert!(pg.iter().any(|p| p == name), "cargo tree shows no {name} under allowly-store-postgres: {pg:?}");
    }
    assert!(!pg.iter().any(|p| p == "rocksdb"), "the PostgreSQL store must not link RocksDB");
    for package in ["allowly-store", "allowly-webhooks", "allowly-engine", "allowly-store-rocks"] {
        let deps = normal_deps(package);
        assert!(deps.first().is_some_and(|p| p == package), "{package}: {deps:?}");
        let found: Vec<&String> = deps.iter().filter(|p| FORBIDDEN.contains(&p.as_str())).collect();
        assert!(
            found.is_empty(),
            "{package} depends on {found:?}: only allowly-store-postgres (and the server, which opens it) may \
             name PostgreSQL (ARCHITECTURE.md); use it in [dev-dependencies] for tests"
        );
    }
}
