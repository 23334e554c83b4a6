#!/usr/bin/env bash
# install-lab-host.sh: installs or upgrades labship on a lab host
# (CONTRACT.md §7; what each step does and prints: docs/install.md).
#
#   sudo ./scripts/install-lab-host.sh                   # build with cargo, install
#   cd /opt/labship && git pull && sudo ./scripts/install-lab-host.sh   # upgrade
#   sudo ./scripts/install-lab-host.sh --bin-dir DIR     # prebuilt binaries
#   ./scripts/install-lab-host.sh --root DIR --bin-dir … # into DIR (tests, images)
#
# Steps: service user; source synced to /opt/labship (without target/, .git/,
# .dev/); binaries shipper, doctor, quarantine-unstamped into /opt/labship/bin;
# /etc/labship (root:labship 0750) with shipper.toml from the example only when
# absent; data_dir (labship 0750) with episodes/ (labship 2770: producers in
# the labship group write there), outbox/, shipped/, quarantine/, state/
# (labship 0750); the unit; daemon-reload when it changed; quarantine-unstamped
# as labship; restart of labship-shipper.service when it is enabled.
set -euo pipefail

PROGRAM=install-lab-host.sh
UNIT=labship-shipper.service
CONFIG=/etc/labship/shipper.toml
DEFAULT_DATA_DIR=/var/lib/labship

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib/install-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/install-common.sh"

usage() {
  cat <<EOF
Usage: sudo $0 [--bin-dir DIR] [--root DIR]

Installs or upgrades labship on a lab host: the labship user, $PREFIX
(source and bin/shipper, bin/doctor, bin/quarantine-unstamped), $CONFIG
(only when absent), $DEFAULT_DATA_DIR with episodes/ writable by the labship
group, $UNIT; runs quarantine-unstamped and restarts the
shipper when its unit is enabled.

EOF
  usage_common
}

main() {
  parse_args "$@"
  find_source
  ((PACKAGED)) || check_binaries shipper doctor quarantine-unstamped
  umask 022
  echo "$PROGRAM: installing labship for a lab host from $SRC into ${R:-/}"

  ensure_user
  install_software shipper doctor quarantine-unstamped

  ensure_dir "$R/etc/labship" 0750 root svc
  local first=0
  install_once "$SRC/etc/shipper.toml.example" "$R$CONFIG" 0640 root svc
  ((LAST_CHANGED)) && first=1

  # data_dir: from the config (a top-level `data_dir = "…"`), else the default.
  local data_dir
  data_dir=$(abs_config_path "$(toml_get "$R$CONFIG" "" data_dir)")
  data_dir=${data_dir:-$DEFAULT_DATA_DIR}
  ensure_dir "$R$data_dir" 0750 svc svc
  # setgid + group-writable: an episode a producer in the labship group
  # writes here belongs to the labship group, so the shipper may move it.
  ensure_dir "$R$data_dir/episodes" 2770 svc svc
  local sub
  for sub in outbox shipped quarantine state; do
    ensure_dir "$R$data_dir/$sub" 0750 svc svc
  done
  if [[ ${data_dir%/} != "$DEFAULT_DATA_DIR" ]]; then
    echo "  note       data_dir is $data_dir: the unit may write only $DEFAULT_DATA_DIR;"
    echo "             add a drop-in (systemctl edit $UNIT) with [Service] ReadWritePaths=$data_dir"
  fi

  install_unit "$UNIT"
  daemon_reload

  run_quarantine_unstamped
  if ((first)); then
    next_steps_first_install "$data_dir"
  fi
  restart_if_enabled "$UNIT"
  finish
}

# quarantine-unstamped as the service user, on the real host only, when the
# config is there and valid.
run_quarantine_unstamped() {
  local tool=$PREFIX/bin/quarantine-unstamped
  if [[ -n $R ]]; then
    skip "quarantine-unstamped (--root: the data_dir in DIR is not this host's)"
    return
  fi
  if [[ ! -f $CONFIG ]]; then
    skip "quarantine-unstamped ($CONFIG does not exist)"
    return
  fi
  command -v setpriv >/dev/null 2>&1 || die "setpriv not found (apt-get install util-linux)"
  local out rc=0
  out=$(setpriv --reuid="$SVC_USER" --regid="$SVC_USER" --init-groups --reset-env -- \
    "$tool" --config "$CONFIG" 2>&1) || rc=$?
  case $rc in
    0)
      echo "  ran        quarantine-unstamped --config $CONFIG (as $SVC_USER):"
      indent <<<"$out"
      ;;
    2)
      skip "quarantine-unstamped: $CONFIG is not valid yet:"
      indent <<<"$out"
      echo "             fix it, then run: sudo -u $SVC_USER $tool --config $CONFIG"
      ;;
    *)
      echo "  WARNING    quarantine-unstamped exited $rc (as $SVC_USER); its output:" >&2
      indent <<<"$out" >&2
      echo "             nothing was lost (it only moves whole episodes); re-run: sudo -u $SVC_USER $tool --config $CONFIG" >&2
      ;;
  esac
}

next_steps_first_install() {
  local data_dir=$1 cfg=$R$CONFIG ca cert key
  ca=$(abs_config_path "$(toml_get "$cfg" receiver ca_file)")
  cert=$(abs_config_path "$(toml_get "$cfg" receiver cert_file)")
  key=$(abs_config_path "$(toml_get "$cfg" receiver key_file)")
  add_next "Edit $CONFIG: host_id (= the CN of this host's client certificate) and receiver.url."
  add_next "Install the certificates at the paths in the config, root:$SVC_USER 0640:
     ${ca:-?} (the CA), ${cert:-?} (this host's client certificate), ${key:-?} (its key)
     e.g. sudo install -m 0640 -o root -g $SVC_USER lab-01.key ${key:-/etc/labship/client.key}"
  add_next "Let each episode producer write into $data_dir/episodes: sudo usermod -aG $SVC_USER <user>
     (then log in again); producers write with umask 002, so the shipper may move their episodes."
  add_next "sudo systemctl enable --now $UNIT"
  add_next "sudo $PREFIX/bin/doctor   # checks config, certificates, receiver, queue; names the fix"
}

main "$@"
