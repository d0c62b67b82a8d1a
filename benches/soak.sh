#!/usr/bin/env bash
# The long fault soak: random SIGKILLs of client, server, imports and gc, aborts during
# uploads; then every version must export byte for byte, `store verify` pass and gc
# leave nothing unreferenced; then ADMIN_LOOPS (30) rounds of every admin command while
# uploads run. Usage: benches/soak.sh [ROUNDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-300}"
seed="${2:-$(date +%s)}"
cargo build --workspace --bins
HOTATE_SOAK_ROUNDS="$rounds" HOTATE_SOAK_SEED="$seed" \
  cargo test -p hotate-tests --test e2e fault_soak -- --nocapture 2>&1 | grep -E "fault soak|test result|panicked|assert" 
# Admin commands in a loop while uploads run: none may find the database locked.
HOTATE_ADMIN_LOOPS="${ADMIN_LOOPS:-30}" \
  cargo test -p hotate-tests --test e2e admin_commands_never_find -- --nocapture 2>&1 | grep -E "admin commands|test result|panicked"
