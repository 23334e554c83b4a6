#!/usr/bin/env bash
# build-debs.sh: builds the labship-shipper and labship-receiver .deb packages
# into target/debian/ (CONTRACT §12; what they install and do: docs/install.md).
#
#   scripts/build-debs.sh            # release build, man pages, completions, both .debs
#   scripts/build-debs.sh --out DIR  # the .debs into DIR instead of target/debian
#   scripts/build-debs.sh --allow-dirty  # also from a tree with uncommitted changes
#
# A tree with uncommitted changes (git status) is refused: the packages would
# claim HEAD's commit but hold other code. --allow-dirty builds them anyway,
# with HEAD's commit and a warning (a developer's scripts/test.sh run; CI and
# releases build clean clones).
#
# Needs cargo-deb (installed with `cargo install cargo-deb --locked` when
# missing). The package version is the workspace version plus the commit:
# 0.1.0+<commits>.g<12-hex>, so that a later commit of main is a later
# package (dpkg compares versions, not hashes). Reproducible: file times come
# from the commit (SOURCE_DATE_EPOCH) and source paths are remapped, so two
# builds of one commit with one toolchain give byte-identical packages.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=target/debian
allow_dirty=0
while (($#)); do
  case $1 in
    --out)
      [[ -n ${2:-} ]] || { echo "build-debs: --out needs a directory" >&2; exit 2; }
      out=$2
      shift 2
      ;;
    --allow-dirty)
      allow_dirty=1
      shift
      ;;
    *)
      echo "build-debs: unknown argument '$1' (usage: scripts/build-debs.sh [--out DIR] [--allow-dirty])" >&2
      exit 2
      ;;
  esac
done

if git rev-parse --git-dir >/dev/null 2>&1 && [[ -n $(git status --porcelain) ]]; then
  if ((allow_dirty)); then
    echo "build-debs: warning: the tree has uncommitted changes; the packages claim commit $(git rev-parse --short=12 HEAD) but hold other code (--allow-dirty)" >&2
  else
    echo "build-debs: the tree has uncommitted changes (git status); packages must hold the commit they name: commit or stash them, or pass --allow-dirty for a local test build" >&2
    exit 2
  fi
fi

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-debs: installing cargo-deb 3.8.0 (cargo install)"
  cargo install cargo-deb --version 3.8.0 --locked --quiet
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[[ -n $version ]] || { echo "build-debs: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
commit=""
if git rev-parse --git-dir >/dev/null 2>&1; then
  commit=$(git rev-parse --short=12 HEAD)
  deb_version="$version+$(git rev-list --count HEAD).g$commit"
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
else
  deb_version="$version+0.unknown"
  SOURCE_DATE_EPOCH=0
fi
export SOURCE_DATE_EPOCH
# The commit --version, the User-Agent and labship_build_info name (sys/build.rs).
export LABSHIP_COMMIT="${commit:-unknown}"
# The checkout's path must not end up in the binaries (panic locations).
# Nor the builder's cargo home (the dependencies' sources).
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$root=/build/labship --remap-path-prefix=${CARGO_HOME:-${HOME:-/root}/.cargo}=/cargo"

echo "build-debs: cargo build --release --locked (shipper, doctor, quarantine-unstamped, receiver)"
cargo build --release --locked -p labship-shipper -p labship-tools -p labship-receiver --bins

rel=$root/target/release
assets=$rel/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
# assets PKG BIN…: man pages (gzipped, no name or time in the header) and
# bash/zsh completions, each rendered by the binary itself (--generate).
assets() {
  local pkg=$1 bin
  shift
  mkdir -p "$assets/$pkg/man" "$assets/$pkg/bash" "$assets/$pkg/zsh"
  for bin in "$@"; do
    "$rel/$bin" --generate man | gzip -9n >"$assets/$pkg/man/$bin.1.gz"
    "$rel/$bin" --generate complete-bash >"$assets/$pkg/bash/$bin"
    "$rel/$bin" --generate complete-zsh >"$assets/$pkg/zsh/_$bin"
  done
  touch -d "@$SOURCE_DATE_EPOCH" "$assets/$pkg"/*/*
}
# A Debian changelog (lintian wants one in every package): this build's
# version, the commit, its subject and time.
{
  echo "labship ($deb_version) unstable; urgency=medium"
  echo
  echo "  * Built from commit ${commit:-unknown}: $(git log -1 --format=%s 2>/dev/null || echo 'outside git')"
  echo
  echo " -- labship developers <labship@example.org>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$assets/changelog"
assets shipper shipper doctor quarantine-unstamped
assets receiver receiver

mkdir -p "$out"
for pkg in labship-shipper labship-receiver; do
  rm -f "$out/${pkg}"_*.deb
  cargo deb --no-build --locked --strip -p "$pkg" --deb-version "$deb_version" \
    --output "$out/${pkg}_${deb_version}_$(dpkg --print-architecture).deb"
done
ls -l "$out"/*.deb
