#!/usr/bin/env bash
# The load test of loadtest/README.md, end to end: build the release binaries, start
# `allowly serve` on a free loopback port with a fresh data directory, run the standard report
# (knees of /v1/check, /healthz of the same process and a bare hyper server; latency at half
# of each knee; CPU per request; fsync floor; disk per receipt; signing) and write
# docs/perf/report.json and docs/perf/report.svg, then stop the server and delete its data.
#
# Extra arguments go to allowly-loadtest (e.g. `--seconds 3`, or `--sustained 10`, `--scale`).
# ALLOWLY_LOADTEST_SKIP_BUILD=1 uses the binaries already in $CARGO_TARGET_DIR/release;
# ALLOWLY_LOADTEST_OUT=DIR writes the report elsewhere (default docs/perf);
# ALLOWLY_LOADTEST_KEEP_DATA=1 keeps the server's data directory (e.g. RocksDB's db/LOG) and says where.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ALLOWLY_ROOT"
bin="$CARGO_TARGET_DIR/release"
if [ -z "${ALLOWLY_LOADTEST_SKIP_BUILD:-}" ]; then
  # allowly-server and allowly-signer link the cached RocksDB library (env.sh); without it,
  # scripts/setup.sh builds it once (15-35 min on 2 cores).
  if [ ! -f "$ALLOWLY_ROCKSDB_LIB/librocksdb.a" ]; then
    "$ALLOWLY_ROOT/scripts/setup.sh"
    . "$ALLOWLY_ROOT/scripts/env.sh"
  fi
  cargo build --release --locked -p allowly-server -p allowly-signer -p allowly-loadtest
fi
for b in allowly allowly-signer allowly-loadtest; do
  [ -x "$bin/$b" ] || { echo "missing $bin/$b (build it, or unset ALLOWLY_LOADTEST_SKIP_BUILD)" >&2; exit 1; }
done

out="${ALLOWLY_LOADTEST_OUT:-$ALLOWLY_ROOT/docs/perf}"
mkdir -p "$out"
data="$(mktemp -d "${TMPDIR:-/tmp}/allowly-loadtest.XXXXXX")"
log="$data.log"
server=""
# Our own server, by its pid: SIGTERM is its graceful shutdown (it stops its signer); up to 30 s.
stop_server() {
  kill -TERM "$server" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
}
stop() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    stop_server
    kill -KILL "$server" 2>/dev/null || true
  fi
  if [ -n "${ALLOWLY_LOADTEST_KEEP_DATA:-}" ]; then
    echo "kept the server's data directory (ALLOWLY_LOADTEST_KEEP_DATA): $data" >&2
  else
    rm -rf "$data" "$log"
  fi
}
# A signal ends the script (then the EXIT trap stops the server): a trap that only ran `stop`
# would let bash carry on after it, e.g. into --scale's restart of a server nobody waits for.
trap stop EXIT
trap 'exit 130' INT TERM

# Port 0: the kernel picks a free one; the first stdout line says which. Sets $server and $url.
start_server() {
  : >"$log"
  RUST_LOG="${RUST_LOG:-warn}" "$bin/allowly" serve --data-dir "$data" --listen 127.0.0.1:0 --signer-bin "$bin/allowly-signer" \
    >>"$log" 2>&1 &
  server=$!
  url=""
  for _ in $(seq 1 3000); do
    url="$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\)$/\1/p' "$log" | head -n1)"
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { echo "allowly serve exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  [ -n "$url" ] || { echo "allowly serve did not start within 30 s:" >&2; cat "$log" >&2; exit 1; }
  for _ in $(seq 1 1000); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    sleep 0.01
  done
}
start_server
echo "allowly serve (pid $server) at $url, data in $data; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

"$bin/allowly-loadtest" --url "$url" --data-dir "$data" --server-pid "$server" \
  --out "$out/report.json" --chart "$out/report.svg" "$@"
echo "server log: $(grep -c . "$log" || true) lines; warnings and errors among them:"
grep -m 20 -iE 'warn|error' "$log" || true
if [[ " $* " == *" --scale "* ]]; then
  # Restart on the scale data directory: time from exec to a ready /readyz, and memory then.
  stop_server
  t0=$(date +%s%N)
  start_server
  t1=$(date +%s%N)
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$server/status")
  printf '{"ready_seconds": %s, "server_rss_kib": %s, "data_dir_bytes": %s}\n' \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')" "$rss" "$(du -sb "$data" | cut -f1)" | tee "$out/restart.json"
fi
rm -f "$log"
