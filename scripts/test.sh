#!/usr/bin/env bash
# The whole test suite: set-up, lints, every test of every crate (unit, property, black-box,
# cross-language). `.ci/run` calls exactly this.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$ALLOWLY_ROOT/scripts/setup.sh"
. "$ALLOWLY_ROOT/scripts/env.sh"  # again: setup may just have built the cached RocksDB library
cd "$ALLOWLY_ROOT"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
