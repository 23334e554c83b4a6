#!/usr/bin/env bash
# install-receiver.sh: installs or upgrades the labship receiver
# (CONTRACT.md §7; what each step does and prints: docs/install.md).
#
#   sudo ./scripts/install-receiver.sh                   # build with cargo, install
#   cd /opt/labship && git pull && sudo ./scripts/install-receiver.sh   # upgrade
#   sudo ./scripts/install-receiver.sh --bin-dir DIR     # prebuilt binaries
#   ./scripts/install-receiver.sh --root DIR --bin-dir … # into DIR (tests, images)
#
# Steps: service user; source synced to /opt/labship (without target/, .git/,
# .dev/); bin/receiver; /etc/labship (root:labship 0750) with receiver.toml
# and allowed-commits from the examples only when absent; the data directory
# /var/lib/labship-receiver and the store (labship 0750); the unit;
# daemon-reload when it changed; labship-receiver.service restarted only when
# a file it runs from changed (binary, unit, drop-in, config), started when
# it is enabled but not running.
set -euo pipefail

PROGRAM=install-receiver.sh
UNIT=labship-receiver.service
CONFIG=/etc/labship/receiver.toml
DATA_DIR=/var/lib/labship-receiver

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib/install-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/install-common.sh"

usage() {
  cat <<EOF
Usage: sudo $0 [--bin-dir DIR] [--root DIR]

Installs or upgrades the labship receiver: the labship user, $PREFIX (source
and bin/receiver), $CONFIG and /etc/labship/allowed-commits (only when
absent), $DATA_DIR, $UNIT; restarts the receiver only when a file it runs
from changed (its binary, unit, drop-ins, config), starts it when it is
enabled but not running.

EOF
  usage_common
}

main() {
  start_install "the labship receiver" receiver "$@"

  ensure_user
  install_software receiver

  ensure_dir "$R/etc/labship" 0750 root svc
  local first=0
  install_once "$SRC/etc/receiver.toml.example" "$R$CONFIG" 0640 root svc
  ((LAST_CHANGED)) && first=1
  local gate
  gate=$(abs_config_path "$(toml_get "$R$CONFIG" gate allowed_commits_file)")
  gate=${gate:-/etc/labship/allowed-commits}
  install_once "$SRC/etc/allowed-commits.example" "$R$gate" 0640 root svc

  ensure_dir "$R$DATA_DIR" 0750 svc svc
  local store
  store=$(abs_config_path "$(toml_get "$R$CONFIG" storage dir)")
  store=${store:-$DATA_DIR/episodes}
  # storage.dir holds the archives (kind fs) or the spool of partial
  # uploads (kind s3): created either way, and a dir outside $DATA_DIR gets
  # the unit's drop-in. An existing one outside it is the operator's (its
  # group may be the readers'; an NFS root_squash refuses a chown): kept.
  if [[ $store == "$DATA_DIR"/* || ! -e $R$store ]]; then
    ensure_dir "$R$store" 0750 svc svc
  else
    report kept "$R$store/ (storage.dir outside $DATA_DIR: its owner and mode are left as they are; user $SVC_USER must be able to write it)"
  fi

  install_unit "$UNIT"
  rw_path_dropin "$UNIT" storage.dir "$store" "$DATA_DIR"
  daemon_reload "$UNIT"

  if ((first)); then
    next_steps_first_install "$gate" "$store"
  fi
  restart_if_enabled "$UNIT" "$PREFIX/bin/receiver" "$CONFIG"
  finish
}

next_steps_first_install() {
  local gate=$1 store=$2 cfg=$R$CONFIG cert key ca ops
  cert=$(abs_config_path "$(toml_get "$cfg" tls cert_file)")
  key=$(abs_config_path "$(toml_get "$cfg" tls key_file)")
  ca=$(abs_config_path "$(toml_get "$cfg" tls client_ca_file)")
  ops=$(toml_get "$cfg" ops listen)
  add_next "Edit $CONFIG: listen, the [tls] files, storage (now $store)."
  add_next "Install the certificates at the paths in the config, root:$SVC_USER 0640:
     ${cert:-?} (the receiver's certificate), ${key:-?} (its key), ${ca:-?} (the CA of the lab hosts' client certificates)"
  add_next "Put the accepted commits in $gate (one 40-hex commit a line; the example holds a placeholder)."
  add_next "sudo systemctl enable --now $UNIT"
  add_next "curl -s http://${ops:-127.0.0.1:9464}/healthz   # then, from a lab host: shipper --ping"
}

main "$@"
