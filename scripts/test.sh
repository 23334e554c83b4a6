#!/usr/bin/env bash
# The test command: installs what the suites need when it is missing
# (scripts/lib/test-deps.sh: Debian packages, cargo-deb, SeaweedFS), builds
# the binaries the end-to-end suites spawn and the .deb packages, then runs
# every test in the workspace (nextest when installed, cargo test otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib/test-deps.sh
. scripts/lib/test-deps.sh
test_deps
cargo build --workspace --bins --locked
# The packages the package tests install (tests/tests/debs.rs): a release build.
# --allow-dirty: a developer runs this on a tree with uncommitted changes (CI
# runs a clean clone).
scripts/build-debs.sh --allow-dirty
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
