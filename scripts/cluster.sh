#!/usr/bin/env bash
# A cluster on one machine (docs/scale-out.md): one local PostgreSQL and N `allowly serve` nodes
# (default 3) on 127.0.0.1:8081.., each with its own signer, the signers sharing one master key.
# Everything lives under ./allowly-cluster/ (ALLOWLY_CLUSTER_DIR): postgres/, master.key, and
# node-I/ (data directory, `log`). Any node answers any request: a workspace's requests are
# decided by the node that owns it, the others forward them there. Ctrl-C stops the nodes
# (each hands its workspaces over as it stops), then the database.
#
#   ./scripts/cluster.sh [N] [ARGS]   ARGS go to every `allowly serve` (e.g. --lease-ttl-ms 3000)
set -euo pipefail
n=3
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  n="$1"
  shift
fi
[ "$n" -ge 1 ] && [ "$n" -le 9 ] || { echo "cluster.sh: 1 to 9 nodes" >&2; exit 2; }
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ALLOWLY_ROOT/scripts/setup.sh"
. "$ALLOWLY_ROOT/scripts/env.sh"
cd "$ALLOWLY_ROOT"
cargo build --release --locked -p allowly-server -p allowly-signer -p allowly-verify
bin="$CARGO_TARGET_DIR/release"
dir="$(realpath -m "${ALLOWLY_CLUSTER_DIR:-$ALLOWLY_ROOT/allowly-cluster}")"
mkdir -p "$dir"
. "$ALLOWLY_ROOT/scripts/local-postgres.sh"
local_postgres "$dir/postgres"
# The signers' shared master key: a workspace's key sealed by one signer opens in whichever
# node's signer takes the workspace over. Provisioned per node from a secret store in
# production; a file here, made once.
if [ ! -f "$dir/master.key" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/master.key")
fi
pids=()
stop() {
  # A second Ctrl-C (or TERM) must not cut this short and leave the database running.
  trap '' INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  eval "$LOCAL_PG_STOP"
}
trap stop EXIT
trap 'exit 130' INT TERM
for i in $(seq 1 "$n"); do
  port=$((8080 + i))
  mkdir -p "$dir/node-$i"
  ALLOWLY_SIGNER_MASTER_KEY="$(cat "$dir/master.key")" "$bin/allowly" serve --data-dir "$dir/node-$i/data" \
    --listen "127.0.0.1:$port" --node-name "node-$i" --advertise-url "http://127.0.0.1:$port" "$@" \
    >"$dir/node-$i/log" 2>&1 &
  pids+=("$!")
  # The first node mints the instance admin key; the others find it in the database.
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "node-$i exited; see $dir/node-$i/log" >&2; tail -5 "$dir/node-$i/log" >&2; exit 1; }
    sleep 0.1
  done
  echo "node-$i: http://127.0.0.1:$port (log: $dir/node-$i/log)"
done
echo "admin token: $dir/node-1/data/admin-token"
echo "try: ALLOWLY_URL=http://127.0.0.1:8082 ALLOWLY_DATA_DIR=$dir/node-1/data ./scripts/demo.sh   (made through node-2)"
wait -n "${pids[@]}"
echo "a node exited; stopping the cluster" >&2
