#!/usr/bin/env bash
# Hostile images for the qcow2, VHD and VHDX readers, two ways:
# - cargo-fuzz (libFuzzer, nightly toolchain): the targets in engine/fuzz, seeded with the
#   kept fixtures, SECONDS each; a panic, or an allocation over 512 MiB, is a crash and
#   its input is kept under engine/fuzz/artifacts/;
# - the mutation tests: real images made by qemu-img, header and table bytes flipped at
#   random, ROUNDS times (0 skips them; `cargo test` runs a few hundred).
# Usage: benches/fuzz-images.sh [SECONDS] [ROUNDS]   (CI runs `benches/fuzz-images.sh 15 0`)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
rounds="${2:-100000}"

if [ "$seconds" -gt 0 ]; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  cd engine
  cargo +nightly fuzz build --sanitizer none
  for target in qcow2 vhd vhdx; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    zstd -qdcf "src/source/fixtures/disk.$target.zst" >"$corpus/fixture"
    echo "fuzzing the $target reader for ${seconds}s"
    log="$scratch/$target.log"
    if ! TMPDIR="$scratch" cargo +nightly fuzz run --sanitizer none "$target" -- \
      -max_total_time="$seconds" -max_len="$(stat -c %s "$corpus/fixture")" \
      -malloc_limit_mb=512 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      tail -n 40 "$log"
      echo "the $target reader failed on a fuzzed image: its input is under engine/fuzz/artifacts/$target/" >&2
      exit 1
    fi
    grep -E 'DONE|number_of_executed_units' "$log"
  done
  cd ..
fi

if [ "$rounds" -gt 0 ]; then
  HOTATE_FUZZ_ROUNDS="$rounds" cargo test --release -p hotate-engine --lib -- \
    hostile_headers_are_refused damaged_copies_fail_cleanly fixed_and_dynamic_images
fi
