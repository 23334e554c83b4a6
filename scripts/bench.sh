#!/usr/bin/env bash
# bench.sh: labship side by side with its baselines (docs/performance.md).
# Builds the workspace in release mode and runs the bench program of the
# tests crate (tests/src/bin/bench/); every other argument goes to it:
#
#   scripts/bench.sh                 # full size: prints the table, writes target/bench.json
#   scripts/bench.sh --tiny          # seconds: proves every scenario still works (CI)
#   scripts/bench.sh --only batch --rounds 3 --json /tmp/b.json
#   scripts/bench.sh --debug --tiny  # the debug build CI already has (numbers meaningless)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
args=()
for arg in "$@"; do
  if [[ $arg == --debug ]]; then profile=debug; else args+=("$arg"); fi
done
target=${CARGO_TARGET_DIR:-target}
if [[ $profile == release ]]; then
  cargo build --release --workspace --bins --locked
else
  cargo build --workspace --bins --locked
fi
# The bench spawns the shipper and the receiver from the same directory.
exec "$target/$profile/bench" --json "$target/bench.json" "${args[@]}"
