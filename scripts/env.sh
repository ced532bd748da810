# Sourced by the other scripts: one place for the cache locations.
# A cargo target directory outside the clone lets repeated CI runs and fresh clones reuse builds.
export ALLOWLY_CACHE="${ALLOWLY_CACHE:-$HOME/.cache/allowly}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ALLOWLY_CACHE/target}"
export ALLOWLY_VENV="${ALLOWLY_VENV:-$ALLOWLY_CACHE/venv}"
ALLOWLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ALLOWLY_ROOT
