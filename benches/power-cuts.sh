#!/usr/bin/env bash
# The long power-cut run (root, FUSE and loop devices): the data dir on hotate-faultdisk,
# the power cut at random moments of finishes, imports, gc and version deletes; every
# told version must survive and export byte for byte, `store verify` pass each round.
# Then the failed-write reproduction, repeated. Prints the fsck+mount time of each cut.
# Usage: benches/power-cuts.sh [ROUNDS] [SEED] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-100}"
seed="${2:-$(date +%s)}"
repeats="${3:-10}"
cargo build --workspace --bins
CI=true HOTATE_POWER_CUTS="$rounds" HOTATE_POWER_CUT_SEED="$seed" \
  cargo test -p hotate-tests --test e2e power_cuts_at_random_moments -- --nocapture 2>&1 \
  | grep -E "^round|fsck and mount|test result|panicked|lost"
for i in $(seq "$repeats"); do
  CI=true cargo test -p hotate-tests --test e2e a_told_version_survives -- --nocapture 2>&1 \
    | grep -E "test result|panicked|lost"
done
