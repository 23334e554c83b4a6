#!/usr/bin/env bash
# install-lab-host.sh: installs or upgrades labship on a lab host
# (CONTRACT.md §7; what each step does and prints: docs/install.md).
#
#   sudo ./scripts/install-lab-host.sh                   # build with cargo, install
#   cd /opt/labship && git pull && sudo ./scripts/install-lab-host.sh   # upgrade
#   sudo ./scripts/install-lab-host.sh --bin-dir DIR     # prebuilt binaries
#   ./scripts/install-lab-host.sh --root DIR --bin-dir … # into DIR (tests, images)
#
# Steps: service user; group labship-producers with the service user in it;
# source synced to /opt/labship (without target/, .git/, .dev/); binaries
# shipper, doctor, quarantine-unstamped into /opt/labship/bin; /etc/labship
# (root:labship 0750) with shipper.toml from the example only when absent;
# data_dir (as the installed shipper reads the config: --check-config --print
# data_dir) labship 0751 with episodes/ (labship:labship-producers 2770:
# producers in labship-producers write there, CONTRACT §13; an install from
# before that is migrated once), outbox/, shipped/, quarantine/, state/
# (labship 0750); the unit, and a drop-in with ReadWritePaths= for a
# data_dir outside /var/lib/labship; daemon-reload when they changed;
# quarantine-unstamped as labship; labship-shipper.service restarted only when
# a file it runs from changed (binary, unit, drop-in, config), started when
# it is enabled but not running.
set -euo pipefail

PROGRAM=install-lab-host.sh
UNIT=labship-shipper.service
CONFIG=/etc/labship/shipper.toml
DEFAULT_DATA_DIR=/var/lib/labship
# Producers write episodes/ through this group, never through labship's
# (which reads /etc/labship and the host's key). install-common.sh reads it.
PROD_GROUP=labship-producers

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib/install-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/install-common.sh"

usage() {
  cat <<EOF
Usage: sudo $0 [--bin-dir DIR] [--root DIR]

Installs or upgrades labship on a lab host: the labship user, $PREFIX
(source and bin/shipper, bin/doctor, bin/quarantine-unstamped), $CONFIG
(only when absent), $DEFAULT_DATA_DIR with episodes/ writable by the group
$PROD_GROUP (an older install's producers in group labship move there),
$UNIT; runs quarantine-unstamped; restarts the shipper only when a file it
runs from changed (its binary, unit, drop-ins, config), starts it when it is
enabled but not running.

EOF
  usage_common
}

main() {
  start_install "labship for a lab host" "shipper doctor quarantine-unstamped" "$@"

  ensure_user
  install_software shipper doctor quarantine-unstamped

  ensure_dir "$R/etc/labship" 0750 root svc
  local first=0
  install_once "$SRC/etc/shipper.toml.example" "$R$CONFIG" 0640 root svc
  ((LAST_CHANGED)) && first=1

  # data_dir as the shipper itself reads the config (its own loader; valid
  # or not, as long as the file is TOML).
  local data_dir=""
  if config_path data_dir; then
    data_dir=$CONFIG_VALUE
  fi
  if [[ -n $data_dir ]]; then
    data_dir_tree "$data_dir"
  else
    skip "data_dir and its directories: $CONFIG is not TOML the shipper can read"
    indent <<<"$CONFIG_ERROR" >&2
    add_next "Fix $CONFIG (sudoedit $CONFIG; check: sudo $PREFIX/bin/shipper --check-config), then re-run: $(rerun_command)"
  fi

  install_unit "$UNIT"
  # The unit may write only $DEFAULT_DATA_DIR: a data_dir elsewhere gets
  # its drop-in (and loses it when it comes back).
  [[ -z $data_dir ]] || rw_path_dropin "$UNIT" data_dir "$data_dir" "$DEFAULT_DATA_DIR"
  daemon_reload "$UNIT"

  run_quarantine_unstamped
  if ((first)); then
    next_steps_first_install "$data_dir"
  fi
  restart_if_enabled "$UNIT" "$PREFIX/bin/shipper" "$CONFIG"
  finish
}

# data_dir_tree DATA_DIR: data_dir and its subdirectories, episodes/ migrated
# first when it is still in the service user's group.
data_dir_tree() {
  local data_dir=$1
  # 0751: producers (not in group labship) must pass through to episodes/;
  # nothing here is listed, and the other directories stay 0750.
  ensure_dir "$R$data_dir" 0751 svc svc
  migrate_episodes "$R$data_dir/episodes"
  # setgid + group-writable: an episode a producer in labship-producers
  # writes here belongs to that group, and so does the shipper (a member):
  # it may move the episode.
  ensure_dir "$R$data_dir/episodes" 2770 svc prod
  local sub
  for sub in outbox shipped quarantine state; do
    ensure_dir "$R$data_dir/$sub" 0750 svc svc
  done
}

# config_path KEY: sets CONFIG_VALUE to the path KEY (data_dir, ca_file,
# cert_file, key_file) of $CONFIG as the installed shipper resolves it
# (`--check-config --print KEY`: the real TOML parser, the daemon's defaults,
# relative paths against /etc/labship), "" when unset; false with
# CONFIG_ERROR when the file is not TOML it can read. An invalid config
# (certificates not installed yet) still has its paths.
CONFIG_VALUE=""
CONFIG_ERROR=""
config_path() {
  local key=$1 bin=$R$PREFIX/bin/shipper errf rc=0
  errf=$(mktemp) || die "mktemp failed"
  CONFIG_VALUE=$("$bin" --check-config --config "$R$CONFIG" --print "$key" 2>"$errf") || rc=$?
  CONFIG_ERROR=$(<"$errf")
  rm -f -- "$errf"
  # 0 valid, 2 invalid; anything else means the binary itself did not run.
  if ((rc != 0 && rc != 2)); then
    die "$bin --check-config --print $key exited $rc (does it run on this machine?): $CONFIG_ERROR"
  fi
  [[ -n $CONFIG_VALUE || $key != data_dir ]] || return 1
  # Under --root the shipper resolved relative paths against DIR/etc/labship:
  # the installed system sees /etc/labship.
  if [[ -n $R && $CONFIG_VALUE == "$R"/* ]]; then
    CONFIG_VALUE=${CONFIG_VALUE#"$R"}
  fi
  if [[ -n $CONFIG_VALUE && $CONFIG_VALUE != /* ]]; then
    die "$bin --check-config --print $key printed ${CONFIG_VALUE@Q}, not an absolute path"
  fi
  return 0
}

# migrate_episodes DIR: an install from before labship-producers has
# episodes/ in the service user's group and its producers in that group, so
# they can read /etc/labship and the host's key. Once (the trigger is
# episodes/ still in that group): what inside belongs to the service user's
# group goes to labship-producers (the shipper reads it through either), and
# every member of group labship but the service user moves to
# labship-producers, each change printed. ensure_dir then regroups DIR
# itself, so an interrupted migration is redone by the next run.
migrate_episodes() {
  local dir=$1 found
  [[ -d $dir && ! -L $dir ]] && ((CHOWN_OK)) || return 0
  [[ $(stat -c %g -- "$dir") == "$SVC_GID" ]] || return 0
  echo "  migrating  $dir: from group $SVC_USER to $PROD_GROUP (producers must not read /etc/labship)"
  found=$(find "$dir" -mindepth 1 -group "$SVC_GID" -printf .) || die "cannot list $dir"
  if [[ -n $found ]]; then
    find "$dir" -mindepth 1 -group "$SVC_GID" -exec chgrp -h -- "$PROD_GID" {} + ||
      die "chgrp -R $PROD_GROUP in $dir failed"
    report updated "$dir/…: ${#found} entries from group $SVC_USER to $PROD_GROUP"
  fi
  move_producers
}

# Every member of the service user's group except the service user itself
# joins labship-producers and leaves labship (they were there as producers:
# the old docs said so). What cannot be changed here is a WARNING with its fix.
move_producers() {
  if [[ -n $R ]]; then
    skip "members of group $SVC_USER (--root: the host's groups are never touched)"
    return
  fi
  local members m name _pw gid moved=0
  members=$(getent group "$SVC_USER" | cut -d: -f4)
  local -a list=()
  IFS=, read -r -a list <<<"$members"
  for m in "${list[@]}"; do
    [[ -n $m && $m != "$SVC_USER" ]] || continue
    if [[ " $(id -nG "$m" 2>/dev/null) " != *" $PROD_GROUP "* ]]; then
      usermod -aG "$PROD_GROUP" "$m" || die "usermod -aG $PROD_GROUP $m failed"
      report updated "user $m: added to group $PROD_GROUP (writes episodes/ through it)"
    fi
    if gpasswd -d "$m" "$SVC_USER" >/dev/null; then
      report updated "user $m: removed from group $SVC_USER (it could read /etc/labship and the host's key)"
      moved=1
    else
      echo "  WARNING    user $m stays in group $SVC_USER (not in /etc/group: LDAP/SSSD?), so it can read the host's key;" >&2
      echo "             remove it from $SVC_USER where that group is managed" >&2
    fi
  done
  # A user whose primary group is labship cannot be moved without choosing
  # another primary group: say so (local users; LDAP may not enumerate).
  while IFS=: read -r name _pw _pw gid _pw; do
    if [[ $gid == "$SVC_GID" && $name != "$SVC_USER" ]]; then
      echo "  WARNING    user $name has $SVC_USER as its primary group, so it can read the host's key;" >&2
      echo "             sudo usermod -g <another group> $name && sudo usermod -aG $PROD_GROUP $name" >&2
    fi
  done < <(getent passwd)
  if ((moved)); then
    add_next "Producers moved to group $PROD_GROUP: their sessions (and services that run them) must log in again
     (or restart) before they can write into episodes/ again."
  fi
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
  local data_dir=${1:-$DEFAULT_DATA_DIR} ca="" cert="" key=""
  config_path ca_file && ca=$CONFIG_VALUE
  config_path cert_file && cert=$CONFIG_VALUE
  config_path key_file && key=$CONFIG_VALUE
  add_next "Edit $CONFIG: host_id (= the CN of this host's client certificate) and receiver.url."
  add_next "Install the certificates at the paths in the config, root:$SVC_USER 0640:
     ${ca:-?} (the CA), ${cert:-?} (this host's client certificate), ${key:-?} (its key)
     e.g. sudo install -m 0640 -o root -g $SVC_USER lab-01.key ${key:-/etc/labship/client.key}"
  add_next "Let each episode producer write into $data_dir/episodes: sudo usermod -aG $PROD_GROUP <user>
     (then log in again; never into group $SVC_USER, which reads the key); producers write with
     umask 002, so the shipper may move their episodes."
  add_next "sudo systemctl enable --now $UNIT"
  add_next "sudo $PREFIX/bin/doctor   # checks config, certificates, receiver, queue; names the fix"
}

main "$@"
