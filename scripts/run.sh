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

pgbin="$(pg_config --bindir 2>/dev/null || true)"
[ -x "$pgbin/initdb" ] || pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$pgbin/initdb" ] || { echo "run.sh: PostgreSQL's server binaries not found (scripts/setup.sh installs them)" >&2; exit 1; }
pgdir="$(realpath -m "$data")-postgres"
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
  as_owner=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups)
fi
if [ ! -f "$pgdir/data/PG_VERSION" ]; then
  mkdir -p "$pgdir"
  chmod 0755 "$pgdir"
  [ "$(id -u)" -ne 0 ] || chown "$(id -u nobody):$(id -g nobody)" "$pgdir"
  (cd "$pgdir" && "${as_owner[@]}" "$pgbin/initdb" --auth=trust --encoding=UTF8 --locale=C -U allowly -D "$pgdir/data" >/dev/null)
  printf "listen_addresses = ''\nunix_socket_directories = '%s'\n" "$pgdir" >>"$pgdir/data/postgresql.conf"
fi
# Its own session (setsid): Ctrl-C must reach the server, which drains, and not the database
# under it; the database is stopped after the server has exited.
(cd "$pgdir" && setsid "${as_owner[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start >/dev/null)
trap '(cd "$pgdir" && "${as_owner[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null)' EXIT
if [ -z "$("$pgbin/psql" -X -h "$pgdir" -U allowly -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'allowly'")" ]; then
  "$pgbin/psql" -X -q -h "$pgdir" -U allowly -d postgres -c "CREATE DATABASE allowly"
fi
echo "PostgreSQL: $pgdir (log: $pgdir/log)"
ALLOWLY_POSTGRES="host=$pgdir user=allowly dbname=allowly" "$bin/allowly" serve --data-dir "$data" "$@"
