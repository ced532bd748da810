#!/usr/bin/env bash
# The first command of the README: set up a fresh machine, build, and run the service in the
# foreground with the embedded defaults (RocksDB and the signer's state under ./allowly-data,
# the signer started as a child process). Extra arguments go to `allowly serve`
# (e.g. --listen 0.0.0.0:8080); Ctrl-C (SIGTERM) shuts down gracefully.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ALLOWLY_ROOT/scripts/setup.sh"
. "$ALLOWLY_ROOT/scripts/env.sh"  # again: setup may just have built the cached RocksDB library
cd "$ALLOWLY_ROOT"
cargo build --release --locked -p allowly-server -p allowly-signer -p allowly-verify
bin="$CARGO_TARGET_DIR/release"
echo "built: $bin/allowly, $bin/allowly-signer, $bin/allowly-verify"
echo "try it from another terminal: ./scripts/demo.sh   (a grant, checks, a signed receipt, verified offline)"
exec "$bin/allowly" serve --data-dir "${ALLOWLY_DATA_DIR:-$ALLOWLY_ROOT/allowly-data}" "$@"
