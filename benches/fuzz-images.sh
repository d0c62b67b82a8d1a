#!/usr/bin/env bash
# Long runs of the image parsers' mutation tests: real qcow2, VHDX and VHD images made by
# qemu-img, each byte of their headers and tables flipped at random, opened and read;
# every failure must be a clean error. Usage: benches/fuzz-images.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
HOTATE_FUZZ_ROUNDS="${1:-100000}" cargo test --release -p hotate-engine --lib -- \
  hostile_headers_are_refused damaged_copies_fail_cleanly fixed_and_dynamic_images
