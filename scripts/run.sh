#!/usr/bin/env bash
# The first command of the README: set up, build, and run what is runnable. Today that is the
# offline verifier on the committed example evidence; `allowly serve` joins it when the service lands.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ALLOWLY_ROOT/scripts/setup.sh"
. "$ALLOWLY_ROOT/scripts/env.sh"  # again: setup may just have built the cached RocksDB library
cd "$ALLOWLY_ROOT"
cargo build --release --locked -p allowly-verify
bin="$CARGO_TARGET_DIR/release/allowly-verify"
vec="$ALLOWLY_ROOT/crates/allowly-receipt/tests/vectors"
echo
echo "== allowly-verify bundle (a whole authorization trail, keys pinned)"
"$bin" bundle "$vec/valid/bundle-authorization.jsonl" --keys "$vec/keys.json"
echo
echo "== allowly-verify bundle (the same trail with one receipt edited)"
"$bin" bundle "$vec/invalid/bundle-edited-receipt.jsonl" --keys "$vec/keys.json" || echo "(exit status $?: integrity failure, as expected)"
echo
echo "The verifier is at $bin; see README.md for more."
