#!/usr/bin/env bash
# Console downloads against references measured in the same run: a raw download against
# `b3sum` of the image (the read floor), a qcow2 download against `disk export --format
# qcow2`; then checks the raw download byte for byte, that `downloads/` is empty, and the
# server's peak RSS. Release build, a disk of SIZE_MIB (1024): half random, half zeros.
# Usage: benches/downloads.sh [SIZE_MIB] [ROUNDS]   (needs b3sum, curl, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-1024}"
rounds="${2:-3}"
cargo build --release -p hotate-server --bins
server="$PWD/target/release/hotate-server"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
export HOTATE_DATA="$work/data" HOTATE_PASSWORD="bench-password" NO_COLOR=1
head -c "$((size / 2))M" /dev/urandom > img
truncate -s "${size}M" img
"$server" disk import win img > /dev/null 2>&1
"$server" user add chief --role admin > /dev/null 2>&1
version=$("$server" --json disk versions win | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
"$server" serve --listen 127.0.0.1:0 --transfer-listen 127.0.0.1:0 > serve.out 2> serve.log &
pid=$!
until [ -s serve.out ]; do sleep 0.1; done
control=$(sed -n '1s/.*control=\([^ ]*\).*/\1/p' serve.out)
token=$(curl -sf -H 'Content-Type: application/json' \
  -d '{"user":"chief","password":"bench-password"}' "http://$control/api/v1/login" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
url="http://$control/api/v1/disks/win/versions/$version/image"
seconds() { python3 -c 'import subprocess,sys,time; t=time.perf_counter(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(f"{time.perf_counter()-t:.2f}")' "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.1f}')" "$1" "$2"; }
cat img > /dev/null
for round in $(seq "$rounds"); do
  b3=$(seconds b3sum img)
  raw=$(seconds curl -sf -H "Authorization: Bearer $token" -o /dev/null "$url")
  qcow2=$(seconds curl -sf -H "Authorization: Bearer $token" -o /dev/null "$url?format=qcow2")
  export_qcow2=$(seconds "$server" disk export win --format qcow2 --output "$work/e.qcow2")
  rm -f "$work/e.qcow2"
  echo "round $round: b3sum ${b3} s; raw download ${raw} s ($(ratio "$raw" "$b3")x b3sum);" \
    "qcow2 download ${qcow2} s ($(ratio "$qcow2" "$export_qcow2")x disk export qcow2, ${export_qcow2} s)"
done
curl -sf -H "Authorization: Bearer $token" -o "$work/downloaded.img" "$url"
cmp "$work/downloaded.img" img && echo "raw download: identical to the image"
echo "downloads/ after: $(find "$HOTATE_DATA/downloads" -type f 2>/dev/null | wc -l) files"
grep VmHWM "/proc/$pid/status"
