#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and the local cluster example
# (examples/cluster/local-cluster.sh), from Debian's postgresql package: initdb
# into a fresh folder, listening on a Unix socket in that folder only (no TCP port
# to collide with), fsync off. Run as root, the server runs as the unprivileged
# `postgres` user (initdb refuses root). The database superuser is `klingd`, with
# trust authentication on the socket: nothing outside the folder can reach it.
#
#   pg-local.sh start DIR           initdb DIR/data (if new) and start; DIR/sock is the socket folder
#   pg-local.sh stop DIR            fast shutdown (connections are cut)
#   pg-local.sh kill DIR            immediate shutdown (as after a crash)
#   pg-local.sh remove DIR          stop if running, then delete DIR
#   pg-local.sh fixture-start FILE  a new server in a fresh /tmp folder, its folder written to FILE
#   pg-local.sh fixture-stop FILE   stop and remove the server FILE names
set -euo pipefail

bindir=${KLINGD_PG_BINDIR:-}
if [ -z "$bindir" ]; then
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { bindir=$d; break; }
  done
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "pg-local.sh: no PostgreSQL server programs (initdb) found: install Debian's postgresql package (scripts/install-deps.sh does)" >&2
  exit 1
fi

as_server() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local dir=$1
  mkdir -p "$dir/sock"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_server "$bindir/initdb" -D "$dir/data" -A trust -U klingd --no-sync -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  as_server "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir/sock -c listen_addresses= -p 5432 -F -c max_connections=200" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
}

stop() {
  local dir=$1 mode=${2:-fast}
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_server "$bindir/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1 || true
}

case ${1:-} in
  start) start "$2" ;;
  stop) stop "$2" fast ;;
  kill) stop "$2" immediate ;;
  remove) stop "$2" immediate; rm -rf "$2" ;;
  fixture-start)
    if [ -f "$2" ]; then old=$(cat "$2"); stop "$old" immediate; rm -rf "$old"; fi
    dir=$(mktemp -d /tmp/klingd-pg.XXXXXX)
    chmod 755 "$dir"
    start "$dir"
    echo "$dir" >"$2"
    echo "pg-local.sh: test server in $dir" ;;
  fixture-stop)
    [ -f "$2" ] || exit 0
    dir=$(cat "$2"); stop "$dir" immediate; rm -rf "$dir"; rm -f "$2" ;;
  *) echo "usage: pg-local.sh start|stop|kill|remove DIR | fixture-start|fixture-stop FILE" >&2; exit 2 ;;
esac
