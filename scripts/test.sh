#!/usr/bin/env bash
# The test command: builds the binaries the end-to-end suites spawn, then runs
# every test in the workspace (nextest when installed, cargo test otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
