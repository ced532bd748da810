#!/usr/bin/env bash
# Clippy for allowly-store in its own target dir: check mode builds RocksDB's C++ separately
# from test mode (see scripts/test.sh), so this is kept out of the default test run.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ALLOWLY_ROOT"
CARGO_TARGET_DIR="$ALLOWLY_CACHE/target-lint-store" cargo clippy -p allowly-store --all-targets --locked -- -D warnings
