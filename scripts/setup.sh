#!/usr/bin/env bash
# Installs everything the build and the test suite need on a fresh machine (Debian + rustup
# toolchain). Idempotent: a second run only checks. Needs root (or sudo) for missing apt packages.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# System packages: a C toolchain for -sys crates, clang/libclang for rocksdb's bindgen, Python
# and Node for the cross-language verifiers.
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl)
command -v clang >/dev/null || need_apt+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# `allowly serve` started as root creates its two system users with useradd; the isolation
# tests act as other uids with setpriv and set RLIMIT_MEMLOCK with prlimit (util-linux).
command -v useradd >/dev/null || need_apt+=(passwd)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# The PKCS#11 key backend is tested against a real SoftHSM2 token (module + softhsm2-util).
command -v softhsm2-util >/dev/null || need_apt+=(softhsm2)
# The checkpoint log's other sinks are tested against a real git and a real rsyslogd (started by
# the test on a socket of its own; the package's service is not needed).
command -v git >/dev/null || need_apt+=(git)
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
# Nodes reached over https:// are tested behind a real TLS terminator (socat's OpenSSL listener).
command -v socat >/dev/null || need_apt+=(socat)
# The server's own TLS listener is tested with the real curl and a certificate made by openssl.
command -v openssl >/dev/null || need_apt+=(openssl)
# The cluster's partition tests run each node in a network namespace of its own (ip netns, veth,
# a bridge) and cut links with nftables drop rules.
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nft >/dev/null || need_apt+=(nftables)
# PostgreSQL's server binaries: allowly-store-postgres's tests, the server's PostgreSQL test and
# `run.sh --postgres` each start a private throwaway cluster with them (initdb into a directory of
# their own, a Unix socket there, no TCP). Debian keeps them in /usr/lib/postgresql/<major>/bin.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }

mkdir -p "$ALLOWLY_CACHE"

# RocksDB's C++, compiled once per machine into the cache (see env.sh for why). Built in a
# throwaway target dir, without debug info (-g0, then stripped: 1.4 GB -> ~100 MB).
if [ ! -f "$ALLOWLY_ROCKSDB_LIB/librocksdb.a" ]; then
  echo "setup: compiling RocksDB $ALLOWLY_ROCKSDB_VERSION$ALLOWLY_ROCKSDB_FLAVOUR (C++, once per machine; 15-35 min on 2 cores)"
  tgt="$ALLOWLY_CACHE/rocksdb-build"
  # librocksdb-sys passes the target features it is built for on to the C++ compiler (env.sh
  # says why these two); they apply to this throwaway build only, not to the project's Rust.
  rustflags=""
  [ "$ALLOWLY_ROCKSDB_FLAVOUR" = "-sse42" ] && rustflags="-Ctarget-feature=+sse4.2,+pclmulqdq"
  (cd "$ALLOWLY_ROOT" && env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC CARGO_TARGET_DIR="$tgt" CXXFLAGS="-g0" \
    RUSTFLAGS="$rustflags" cargo build --locked --quiet -p librocksdb-sys)
  lib="$(ls -t "$tgt"/debug/build/librocksdb-sys-*/out/librocksdb.a | head -1)"
  rm -rf "$ALLOWLY_ROCKSDB_LIB.tmp" && mkdir -p "$ALLOWLY_ROCKSDB_LIB.tmp"
  strip --strip-debug -o "$ALLOWLY_ROCKSDB_LIB.tmp/librocksdb.a" "$lib"
  mv "$ALLOWLY_ROCKSDB_LIB.tmp" "$ALLOWLY_ROCKSDB_LIB"
  rm -rf "$tgt"
  export ROCKSDB_LIB_DIR="$ALLOWLY_ROCKSDB_LIB" ROCKSDB_STATIC=1
fi

# promtool and prometheus, from Debian's `prometheus` package: the suite lints the real /metrics
# page, runs the alert rules' unit tests with promtool, and runs a real Prometheus against the
# server to evaluate every dashboard panel and rule (crates/allowly-server/tests/it/ops.rs). Only
# the two binaries are unpacked into the cache (on PATH through env.sh): installing the package
# would also start a Prometheus server as a system service.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "setup: unpacking promtool and prometheus from Debian's prometheus package into $ALLOWLY_CACHE/bin"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  tmp="$(mktemp -d)"
  # apt-get download needs the package lists: refresh them only if the first try fails.
  (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null || { $SUDO apt-get update -qq && apt-get download -qq prometheus; }; } \
    && dpkg-deb -x prometheus_*.deb root)
  mkdir -p "$ALLOWLY_CACHE/bin"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$ALLOWLY_CACHE/bin/promtool"
  install -m 0755 "$tmp/root/usr/bin/prometheus" "$ALLOWLY_CACHE/bin/prometheus"
  rm -rf "$tmp"
fi

# Python verifier dependencies in a private venv (never the system site-packages).
req="$ALLOWLY_ROOT/tests/crosslang/requirements.txt"
if [ -f "$req" ]; then
  stamp="$ALLOWLY_VENV/.requirements"
  if [ ! -x "$ALLOWLY_VENV/bin/python" ] || ! cmp -s "$req" "$stamp"; then
    python3 -m venv "$ALLOWLY_VENV"
    "$ALLOWLY_VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
  fi
fi

# Node dependencies, exactly as locked: the Node verifier's, the TypeScript SDK's compiler, and
# the real Claude Code the hook's fixtures are recorded with and its end-to-end tests run
# (clients/claude-code: @anthropic-ai/claude-code, whose postinstall, allowed in its package.json,
# puts the native binary of this platform, an optional dependency, in place of bin/claude.exe).
# Installed again only when the lock file changed since the last install (the copy in
# node_modules/.allowly-package-lock.json; npm's own node_modules/.package-lock.json never equals it).
for pkg in "$ALLOWLY_ROOT/tests/crosslang" "$ALLOWLY_ROOT/clients/typescript" "$ALLOWLY_ROOT/clients/claude-code"; do
  if [ -f "$pkg/package-lock.json" ]; then
    stamp="$pkg/node_modules/.allowly-package-lock.json"
    if ! cmp -s "$pkg/package-lock.json" "$stamp" 2>/dev/null; then
      (cd "$pkg" && npm ci --silent --no-audit --no-fund)
      cp "$pkg/package-lock.json" "$stamp"
    fi
  fi
done
echo "setup: ok (target dir $CARGO_TARGET_DIR)"
