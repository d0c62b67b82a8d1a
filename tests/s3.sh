#!/usr/bin/env bash
# A throwaway S3-compatible server on loopback for the tests: moto_server (PyPI's
# `moto[server]`, which supports conditional writes), installed into a venv under
# target/ when it is not on PATH, with the bucket `hotate-test`.
#
#   eval "$(tests/s3.sh start DIR)"   # prints: export HOTATE_TEST_S3=http://127.0.0.1:PORT
#   tests/s3.sh stop DIR
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:?start or stop}
dir=${2:?a directory for the server}
case "$command" in
  start)
    mkdir -p "$dir"
    moto="$(command -v moto_server || true)"
    if [ -z "$moto" ]; then
      venv=target/moto-venv
      if [ ! -x "$venv/bin/moto_server" ]; then
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet 'moto[server]' >&2
      fi
      moto="$venv/bin/moto_server"
    fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$moto" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 100); do
      if curl -fs -X PUT "http://127.0.0.1:$port/hotate-test" >/dev/null 2>&1; then
        echo "export HOTATE_TEST_S3=http://127.0.0.1:$port"
        exit 0
      fi
      sleep 0.2
    done
    cat "$dir/moto.log" >&2
    exit 1
    ;;
  stop)
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -rf "$dir"
    ;;
  *)
    echo "s3.sh: start or stop" >&2
    exit 2
    ;;
esac
