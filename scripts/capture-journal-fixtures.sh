#!/usr/bin/env bash
# Re-captures the journal fixtures that doctor's tests read
# (tests/fixtures/journal/<scenario>.jsonl): for each scenario the real shipper
# runs under the real etc/labship-shipper.service, in a container with a real
# systemd (tests/src/nspawn.rs), against a real receiver; the fixture is that
# unit's `journalctl -o json`. Never edit a fixture by hand: re-run this.
# Needs root and systemd-nspawn (apt-get install systemd-container).
# See tests/fixtures/journal/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/tests/fixtures/journal"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/labship-fixtures.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

cargo build --workspace --bins --locked
# Each capture_* test checks that its journal shows what the scenario is
# about before it writes; all must pass before any fixture is replaced.
if cargo nextest --version >/dev/null 2>&1; then
  LABSHIP_CAPTURE_FIXTURES="$scratch" cargo nextest run -p labship-tests --locked \
    --test shipper_systemd --run-ignored only --no-fail-fast capture_
else
  LABSHIP_CAPTURE_FIXTURES="$scratch" cargo test -p labship-tests --locked \
    --test shipper_systemd -- --ignored capture_
fi

mkdir -p "$dest"
for f in "$scratch"/*.jsonl; do
  install -m 0644 "$f" "$dest/"
  printf '%-28s %4d entries\n' "$(basename "$f")" "$(wc -l <"$f")"
done
