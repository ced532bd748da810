#!/usr/bin/env bash
# The first command of the README: set up a fresh machine, build, and run the service in the
# foreground with the embedded defaults (RocksDB and the signer's state under ./allowly-data,
# the signer started as a child process). Extra arguments go to `allowly serve`
# (e.g. --listen 0.0.0.0:8080); Ctrl-C (SIGTERM) shuts down gracefully.
#
# `./scripts/run.sh --postgres [ARGS]`: the data in PostgreSQL instead of RocksDB (docs/postgres.md).
# A local cluster is created once in `<data dir>-postgres/` (beside the data directory, not in it:
# started as root, `allowly serve` makes the data directory its own user's, and PostgreSQL runs
# as an unprivileged user of its own, `nobody`, since it refuses root), listening on a Unix
# socket there only; started for the server and stopped after it.
set -euo pipefail
postgres=""
if [ "${1:-}" = "--postgres" ]; then
  postgres=1
  shift
fi
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ALLOWLY_ROOT/scripts/setup.sh"
. "$ALLOWLY_ROOT/scripts/env.sh"  # again: setup may just have built the cached RocksDB library
cd "$ALLOWLY_ROOT"
cargo build --release --locked -p allowly-server -p allowly-signer -p allowly-verify
bin="$CARGO_TARGET_DIR/release"
echo "built: $bin/allowly, $bin/allowly-signer, $bin/allowly-verify"
echo "try it from another terminal: ./scripts/demo.sh   (a grant, checks, a signed receipt, verified offline)"
data="${ALLOWLY_DATA_DIR:-$ALLOWLY_ROOT/allowly-data}"
[ -n "$postgres" ] || exec "$bin/allowly" serve --data-dir "$data" "$@"

. "$ALLOWLY_ROOT/scripts/local-postgres.sh"
local_postgres "$(realpath -m "$data")-postgres"
trap '(eval "$LOCAL_PG_STOP")' EXIT
"$bin/allowly" serve --data-dir "$data" "$@"
