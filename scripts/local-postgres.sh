# Sourced by run.sh and cluster.sh: `local_postgres DIR` creates (once) and starts a local
# PostgreSQL cluster in DIR, listening on a Unix socket there only, stopped when the calling
# script exits; it sets ALLOWLY_POSTGRES to its `allowly` database. Started as root, PostgreSQL
# (which refuses root) runs as `nobody`, and DIR must not be inside a data directory that
# `allowly serve` takes over for its own user.
local_postgres() {
  local pgdir="$1" pgbin
  pgbin="$(pg_config --bindir 2>/dev/null || true)"
  [ -x "$pgbin/initdb" ] || pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -x "$pgbin/initdb" ] || { echo "PostgreSQL's server binaries not found (scripts/setup.sh installs them)" >&2; exit 1; }
  local as_owner=()
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
  # Its own session (setsid): Ctrl-C must reach the servers, which drain, and not the database
  # under them; the database is stopped after they have exited.
  (cd "$pgdir" && setsid "${as_owner[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start >/dev/null)
  LOCAL_PG_STOP="cd '$pgdir' && ${as_owner[*]} '$pgbin/pg_ctl' -D '$pgdir/data' -m fast -w stop >/dev/null"
  if [ -z "$("$pgbin/psql" -X -h "$pgdir" -U allowly -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'allowly'")" ]; then
    "$pgbin/psql" -X -q -h "$pgdir" -U allowly -d postgres -c "CREATE DATABASE allowly"
  fi
  echo "PostgreSQL: $pgdir (log: $pgdir/log)"
  export ALLOWLY_POSTGRES="host=$pgdir user=allowly dbname=allowly"
}
