# Sourced by the other scripts: one place for the cache locations.
# A cargo target directory outside the clone lets repeated CI runs and fresh clones reuse builds.
export ALLOWLY_CACHE="${ALLOWLY_CACHE:-$HOME/.cache/allowly}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ALLOWLY_CACHE/target}"
export ALLOWLY_VENV="${ALLOWLY_VENV:-$ALLOWLY_CACHE/venv}"
# Tools setup.sh unpacks without installing them system-wide (promtool).
case ":$PATH:" in *":$ALLOWLY_CACHE/bin:"*) ;; *) export PATH="$ALLOWLY_CACHE/bin:$PATH" ;; esac
ALLOWLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ALLOWLY_ROOT

# RocksDB's C++ is compiled once per machine and kept as a static library under the cache
# (scripts/setup.sh builds it). librocksdb-sys links it instead of recompiling: without this,
# every distinct cargo configuration (check vs build, -p vs --workspace, release) recompiled
# the ~340 C++ files again (15-35 min each on 2 cores).
ALLOWLY_ROCKSDB_VERSION="$(grep -A1 '^name = "librocksdb-sys"$' "$ALLOWLY_ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')"
# RocksDB checksums every WAL record, block and blob with CRC32C, and on x86-64 it runs the
# hardware instructions only when the whole library is compiled for SSE4.2 and PCLMUL (RocksDB 11
# has no runtime dispatch there): the portable code was 3.4 % of the server's CPU per check.
# A CPU with both (every x86-64 server since 2010) gets that build, in a cache directory of its
# own; ALLOWLY_ROCKSDB_PORTABLE=1 forces the baseline x86-64 one (binaries to run elsewhere).
ALLOWLY_ROCKSDB_FLAVOUR=""
if [ "$(uname -m)" = x86_64 ] && [ -z "${ALLOWLY_ROCKSDB_PORTABLE:-}" ] \
  && grep -qw sse4_2 /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then
  ALLOWLY_ROCKSDB_FLAVOUR="-sse42"
fi
export ALLOWLY_ROCKSDB_FLAVOUR
export ALLOWLY_ROCKSDB_LIB="$ALLOWLY_CACHE/rocksdb-$ALLOWLY_ROCKSDB_VERSION$ALLOWLY_ROCKSDB_FLAVOUR"
if [ -f "$ALLOWLY_ROCKSDB_LIB/librocksdb.a" ]; then
  export ROCKSDB_LIB_DIR="$ALLOWLY_ROCKSDB_LIB" ROCKSDB_STATIC=1
fi
