#!/usr/bin/env bash
# Runs every benchmark whose figures docs/benchmarks.md reports, installing the reference tools
# (rsync, b3sum) first. Usage: benches/run.sh [quick]   (quick: 512 MiB images only)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v rsync >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq rsync
fi
if ! command -v b3sum >/dev/null 2>&1; then
  cargo install --locked b3sum
  export PATH="$HOME/.cargo/bin:$PATH"
fi

cargo build --release --workspace --bins
size=2048
[ "${1:-}" = quick ] && size=512

echo "## Engine pipeline vs b3sum and zstd"
target/release/pipeline-vs-tools 1024
echo
echo "## Upload on loopback, ${size} MiB ext4 image, 64 KiB blocks"
target/release/upload-bench --size-mib "$size" --change 10 --block-size 65536
echo
echo "## Upload on loopback, ${size} MiB ext4 image, 1 MiB blocks (the default)"
target/release/upload-bench --size-mib "$size" --change 10 --block-size 1048576
echo
echo "## Upload over a 100 Mbit/s link, ${size} MiB ext4 image, 64 KiB blocks"
target/release/upload-bench --size-mib "$size" --change 10 --block-size 65536 --link-rate 100
if [ "${1:-}" != quick ]; then
  echo
  echo "## Upload on loopback, 8 GiB ext4 image (peak RSS)"
  target/release/upload-bench --size-mib 8192 --change 10 --block-size 65536
fi
echo
echo "## Hostile clients beside a normal upload (server peak RSS)"
target/release/attack-bench
echo
echo "## Overlay (qcow2) finish vs raw disks"
if [ "${1:-}" = quick ]; then
  target/release/overlay-bench --size-mib 2048 --change-mib 100
else
  target/release/overlay-bench --size-mib 16384 --change-mib 500
fi
