#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the tests (Debian's `postgresql`):
#
#   eval "$(tests/postgres.sh start DIR)"   # prints: export HOTATE_TEST_POSTGRES=postgres://...
#   tests/postgres.sh stop DIR
#
# initdb refuses root, so as root the cluster runs as the `postgres` user.
set -euo pipefail
command=${1:?start or stop}
dir=${2:?a directory for the cluster}
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -x "$bin/initdb" ] || { echo "postgres.sh: no PostgreSQL server (apt-get install postgresql)" >&2; exit 1; }
as=()
if [ "$(id -u)" = 0 ]; then
  as=(runuser -u postgres --)
fi
case "$command" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U hotate >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
      || { cat "$dir/data/server.log" >&2; exit 1; }
    echo "export HOTATE_TEST_POSTGRES=postgres://hotate@127.0.0.1:$port/postgres"
    ;;
  stop)
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "postgres.sh: start or stop" >&2
    exit 2
    ;;
esac
