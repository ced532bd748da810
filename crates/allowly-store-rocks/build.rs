//! Compiles `cpp/stream_partitioner.cc` (see `src/partitioner.rs`) and `cpp/recovery.cc` (see
//! `src/recovery.rs`) against the headers of the RocksDB that librocksdb-sys builds or links, so
//! the two agree on every class layout.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=cpp/stream_partitioner.cc");
    println!("cargo:rerun-if-changed=cpp/recovery.cc");
    println!("cargo:rerun-if-env-changed=ROCKSDB_INCLUDE_DIR");
    let include = rocksdb_include_dir();
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        // The same definitions librocksdb-sys compiles RocksDB with where they touch headers:
        // NDEBUG changes some classes' members.
        .define("NDEBUG", Some("1"))
        .define("ROCKSDB_PLATFORM_POSIX", None)
        .define("ROCKSDB_LIB_IO_POSIX", None)
        .include(&include)
        .flag_if_supported("-Wno-unused-parameter")
        .file("cpp/stream_partitioner.cc")
        .file("cpp/recovery.cc")
        .compile("allowly_rocks_cpp");
}

/// `ROCKSDB_INCLUDE_DIR` if set (librocksdb-sys honours the same variable), else the `include`
/// directory inside the librocksdb-sys package this build resolved, found with `cargo metadata`.
fn rocksdb_include_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROCKSDB_INCLUDE_DIR") {
        return PathBuf::from(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    // For this target only, offline first: what it needs is normally downloaded for this build
    // already; a build of one package on a fresh machine may lack other members' dependencies.
    let metadata = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--filter-platform", &target, "--manifest-path"]);
        cmd.arg(manifest.join("Cargo.toml"));
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("run cargo metadata")
    };
    let mut out = metadata(true);
    if !out.status.success() {
        out = metadata(false);
    }
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "librocksdb-sys"))
        .expect("librocksdb-sys is a dependency");
    let sys = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    sys.parent().expect("package dir").join("rocksdb").join("include")
}
