//! "Only the store names RocksDB", enforced by the dependency graph rather than by review
//! (TiKV's `engine_traits` rule): the storage traits, the webhooks and the engine must never
//! depend on RocksDB or on the crate that binds it, not even transitively. A dev-dependency is
//! fine (these tests run on `RocksStore`): it never reaches a build that ships.

use std::process::Command;

/// What only `allowly-store-rocks` (and the server, which opens it) may depend on.
const FORBIDDEN: [&str; 3] = ["allowly-store-rocks", "rocksdb", "librocksdb-sys"];

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
fn only_the_rocks_store_depends_on_rocksdb() {
    // The probe must see RocksDB where it is, or finding none elsewhere would prove nothing.
    let rocks = normal_deps("allowly-store-rocks");
    for name in &FORBIDDEN[1..] {
        assert!(rocks.iter().any(|p| p == name), "cargo tree shows no {name} under allowly-store-rocks: {rocks:?}");
    }
    for package in ["allowly-store", "allowly-webhooks", "allowly-engine"] {
        let deps = normal_deps(package);
        assert!(deps.first().is_some_and(|p| p == package), "{package}: {deps:?}");
        let found: Vec<&String> = deps.iter().filter(|p| FORBIDDEN.contains(&p.as_str())).collect();
        assert!(
            found.is_empty(),
            "{package} depends on {found:?} (see `cargo tree -e normal -p {package} -i rocksdb`): only \
             allowly-store-rocks may name RocksDB, so that the engine stays implementable over another \
             store (ARCHITECTURE.md); use it in [dev-dependencies] for tests"
        );
    }
}
