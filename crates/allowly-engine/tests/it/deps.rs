//! "Only a store crate names its engine", enforced by the dependency graph rather than by review
//! (TiKV's `engine_traits` rule): the storage traits, the webhooks, the engine and the other
//! store crate must never depend on RocksDB or PostgreSQL's client, or on the crate that binds
//! it, not even transitively. A dev-dependency is fine (these tests run on `RocksStore`): it
//! never reaches a build that ships.

use std::process::Command;

/// Each storage engine's crate, and what only it (and the server, which opens it) may depend on.
const ENGINES: [(&str, &[&str]); 2] = [
    ("allowly-store-rocks", &["rocksdb", "librocksdb-sys"]),
    ("allowly-store-postgres", &["tokio-postgres", "postgres-protocol"]),
];

/// The packages `package` reaches through normal dependencies, transitively (no dev- or
/// build-dependencies), for this platform, as cargo resolves them from the lock file.
fn normal_deps(package: &str) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let args = ["tree", "--locked", "--offline", "--edges", "normal", "--prefix", "none", "--format", "{p}", "-p"];
    let out = Command::new(cargo).args(args).arg(package).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo tree -p {package}: {}\n{stderr}", out.status);
    // Lines are `name vX.Y.Z [(path)] [(*)]`.
    stdout.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn only_each_store_crate_depends_on_its_engine() {
    for (store, engine) in ENGINES {
        // The probe must see the engine where it is, or finding none elsewhere would prove nothing.
        let own = normal_deps(store);
        for name in engine {
            assert!(own.iter().any(|p| p == name), "cargo tree shows no {name} under {store}: {own:?}");
        }
        let forbidden: Vec<&str> = std::iter::once(store).chain(engine.iter().copied()).collect();
        // The traits, the webhooks, the engine, and the other engine's store.
        let others = ENGINES.iter().map(|(s, _)| *s).filter(|s| *s != store);
        for package in ["allowly-store", "allowly-webhooks", "allowly-engine"].into_iter().chain(others) {
            let deps = normal_deps(package);
            assert!(deps.first().is_some_and(|p| p == package), "{package}: {deps:?}");
            let found: Vec<&String> = deps.iter().filter(|p| forbidden.contains(&p.as_str())).collect();
            assert!(
                found.is_empty(),
                "{package} depends on {found:?} (see `cargo tree -e normal -p {package} -i {}`): only \
                 {store} may name it, so that the engine stays implementable over another store \
                 (ARCHITECTURE.md); use it in [dev-dependencies] for tests",
                engine[0]
            );
        }
    }
}
