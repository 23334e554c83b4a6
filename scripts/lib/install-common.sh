# shellcheck shell=bash
# Shared by scripts/install-lab-host.sh and scripts/install-receiver.sh
# (CONTRACT.md §7, docs/install.md). Sourced, never run.
#
# Every step compares before it writes and reports one line per item:
#   created | installed | updated | removed | unchanged | kept | skipped | …
# so a second run reports "0 changed" and exits 0. Files are replaced
# atomically (temp name in the same directory, then rename), so a running
# binary or a unit being read never sees a half-written file.
#
# With --root DIR every path is DIR/<path>; the host's users, groups and
# systemd are never touched (there is no manager running in DIR).

# --- state, set by parse_args and the steps ----------------------------------
SRC=""           # the source tree (the checkout this script lives in), resolved
R=""             # "" for the real root, or the absolute --root DIR
BIN_SRC=""       # --bin-dir, resolved; "" means build with cargo
PACKAGED=0       # 1 under --packaged: run by a .deb's postinst (debian/*/postinst)
PREFIX=/opt/labship
SVC_USER=labship
SVC_UID=""       # numeric ids of the service user and group; "" when unknown
SVC_GID=""
# The producers' group (lab host: labship-producers, CONTRACT §13), set by
# the script before it sources this file; "" (the receiver) for none.
PROD_GROUP=${PROD_GROUP:-}
PROD_GID=""
CHOWN_OK=0       # 1 when we may and can chown (root, and the ids are known)
CHANGED=0
UNCHANGED=0
LAST_CHANGED=0   # 1 when the last install_file/ensure_dir changed something
SKIPPED=()
NEXT=()          # what the operator must do next, printed at the end

die() {
  printf '%s: error: %s\n' "$PROGRAM" "$*" >&2
  exit 1
}

# report STATE ITEM: one line per item; counts changes.
report() {
  printf '  %-10s %s\n' "$1" "$2"
  case $1 in
    created | installed | updated | removed) CHANGED=$((CHANGED + 1)) ;;
    unchanged | kept) UNCHANGED=$((UNCHANGED + 1)) ;;
  esac
}

# add_next STEP: one "next step" for the operator (duplicates dropped).
add_next() {
  local step
  for step in "${NEXT[@]}"; do
    [[ $step == "$1" ]] && return 0
  done
  NEXT+=("$1")
}

# Copies stdin to stdout, indented under the item lines.
indent() {
  local line
  while IFS= read -r line; do
    printf '               %s\n' "$line"
  done
}

skip() {
  report skipped "$1"
  SKIPPED+=("$1")
}

usage_common() {
  cat <<EOF
Options:
  --bin-dir DIR  install prebuilt binaries from DIR instead of building with
                 \`cargo build --release --locked\` in $PREFIX
  --root DIR     install under DIR (DIR$PREFIX, DIR/etc/labship,
                 DIR/etc/systemd/system, DIR/var/lib/…) for tests and image
                 builds: nothing outside DIR is touched; users, groups,
                 systemctl and quarantine-unstamped are skipped
  --packaged     run by the labship .deb's postinst: dpkg installed the
                 binaries and the unit (/lib/systemd/system); do the rest
  -h, --help     this text

Idempotent: a second run changes nothing and exits 0. Safe to run from inside
$PREFIX itself (cd $PREFIX && git pull && sudo ./scripts/$PROGRAM).
Existing configs, keys and allowed-commits files are never overwritten.
EOF
}

parse_args() {
  local root=""
  while (($#)); do
    case $1 in
      --bin-dir)
        (($# >= 2)) || die "--bin-dir needs a directory"
        BIN_SRC=$2
        shift 2
        ;;
      --bin-dir=*)
        BIN_SRC=${1#*=}
        shift
        ;;
      --root)
        (($# >= 2)) || die "--root needs a directory"
        root=$2
        shift 2
        ;;
      --root=*)
        root=${1#*=}
        shift
        ;;
      --packaged)
        PACKAGED=1
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  if [[ -n $BIN_SRC ]]; then
    [[ -d $BIN_SRC ]] || die "--bin-dir $BIN_SRC: not a directory"
    BIN_SRC=$(realpath -- "$BIN_SRC")
  fi
  if [[ -n $root ]]; then
    [[ -d $root ]] || die "--root $root: not a directory (create it first)"
    R=$(realpath -- "$root")
    [[ $R == / ]] && R=""
  fi
  if [[ -z $R && $EUID -ne 0 ]]; then
    die "must run as root (sudo $0 …), or with --root DIR to install under DIR"
  fi
}

# The checkout the running script belongs to (scripts/lib/../..), physical
# path; under --packaged the package's share directory
# (/usr/share/labship-<side>: scripts/ and etc/ with the examples).
find_source() {
  SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
  if ((PACKAGED)); then
    [[ -d $SRC/etc ]] || die "cannot find the package's examples in $SRC/etc"
    return
  fi
  [[ -f $SRC/Cargo.toml && -d $SRC/etc ]] || die "cannot find the labship source tree around $SRC"
}

# The command that runs this installer again: the package's own step under
# --packaged (dpkg-reconfigure runs the postinst), the checkout's otherwise.
rerun_command() {
  if ((PACKAGED)); then
    case $PROGRAM in
      install-receiver.sh) echo "sudo dpkg-reconfigure labship-receiver" ;;
      *) echo "sudo dpkg-reconfigure labship-shipper" ;;
    esac
  else
    echo "cd $PREFIX && sudo ./scripts/$PROGRAM"
  fi
}

# install_software NAME…: the source and the binaries, unless dpkg already
# put them in place (--packaged).
install_software() {
  if ((PACKAGED)); then
    report unchanged "$PREFIX/bin (${*}: installed by the package)"
    return
  fi
  sync_source
  install_binaries "$@"
}

# True when a systemd manager runs on the target: only the real root
# (never under --root DIR), and only when systemd is PID 1 (sd_booted()).
systemd_running() {
  [[ -z $R && -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

# --- the service user ----------------------------------------------------------

ensure_user() {
  if [[ -n $R ]]; then
    skip "user and group $SVC_USER (--root: the host's users are never touched)"
  else
    # A missing group is created with the user (--user-group) below.
    if getent group "$SVC_USER" >/dev/null; then
      report unchanged "group $SVC_USER (gid $(getent group "$SVC_USER" | cut -d: -f3))"
    fi
    if getent passwd "$SVC_USER" >/dev/null; then
      report unchanged "user $SVC_USER (uid $(id -u "$SVC_USER"))"
    else
      command -v useradd >/dev/null 2>&1 || die "useradd not found (apt-get install passwd)"
      local group_flag=(--user-group)
      getent group "$SVC_USER" >/dev/null && group_flag=(--gid "$SVC_USER")
      # --user-group explicitly: without /etc/login.defs (containers, minimal
      # images) useradd --system would put the user in group "users".
      useradd --system "${group_flag[@]}" --no-create-home --home-dir /var/lib/labship \
        --shell /usr/sbin/nologin "$SVC_USER" ||
        die "useradd $SVC_USER failed (see the message above)"
      report created "user $SVC_USER (uid $(id -u "$SVC_USER"), system account, no login, group $SVC_USER)"
    fi
    [[ -z $PROD_GROUP ]] || ensure_producers_group
  fi
  [[ -z $R || -z $PROD_GROUP ]] ||
    skip "group $PROD_GROUP (--root: the host's groups are never touched)"
  resolve_ids
}

# The producers' group, and the service user in it: the shipper reads (and
# moves) what producers write through it. Producers join it, never the
# service user's group, which reads /etc/labship and the host's key.
ensure_producers_group() {
  local g=$PROD_GROUP
  if getent group "$g" >/dev/null; then
    report unchanged "group $g (gid $(getent group "$g" | cut -d: -f3))"
  else
    command -v groupadd >/dev/null 2>&1 || die "groupadd not found (apt-get install passwd)"
    groupadd --system "$g" || die "groupadd --system $g failed (see the message above)"
    report created "group $g (gid $(getent group "$g" | cut -d: -f3), system group: episode producers write through it)"
  fi
  # id(1) asks the name service, so a membership from LDAP/SSSD counts too.
  if [[ " $(id -nG "$SVC_USER") " == *" $g "* ]]; then
    report unchanged "user $SVC_USER in group $g"
  else
    usermod -aG "$g" "$SVC_USER" || die "usermod -aG $g $SVC_USER failed (see the message above)"
    report updated "user $SVC_USER: added to group $g (the shipper reads producers' episodes through it)"
  fi
}

# The service ids: from the host's databases, or DIR/etc/{passwd,group} under
# --root (an image that already has the user gets the right owners).
resolve_ids() {
  if [[ -z $R ]]; then
    SVC_UID=$(id -u "$SVC_USER")
    SVC_GID=$(getent group "$SVC_USER" | cut -d: -f3)
  else
    SVC_UID=$(db_id "$R/etc/passwd" "$SVC_USER")
    SVC_GID=$(db_id "$R/etc/group" "$SVC_USER")
  fi
  PROD_GID=""
  if [[ -n $PROD_GROUP ]]; then
    if [[ -z $R ]]; then
      PROD_GID=$(getent group "$PROD_GROUP" | cut -d: -f3)
    else
      PROD_GID=$(db_id "$R/etc/group" "$PROD_GROUP")
    fi
  fi
  CHOWN_OK=0
  if [[ $EUID -eq 0 && -n $SVC_UID && -n $SVC_GID && (-z $PROD_GROUP || -n $PROD_GID) ]]; then
    CHOWN_OK=1
  else
    local why="no $SVC_USER user in $R/etc/passwd"
    [[ -n $SVC_UID && -n $SVC_GID ]] && why="no $PROD_GROUP group in $R/etc/group"
    [[ $EUID -ne 0 ]] && why="not running as root"
    local owners="root:$SVC_USER and $SVC_USER:$SVC_USER"
    [[ -n $PROD_GROUP ]] && owners="root:$SVC_USER, $SVC_USER:$SVC_USER and $SVC_USER:$PROD_GROUP"
    skip "ownership $owners ($why; files keep the installing user's ids)"
  fi
}

# Sets ID_U and ID_G to the numeric ids for the words OWNER and GROUP: root,
# svc (the service user or group), prod (the producers' group). No subshell:
# the source sync calls it for every file.
ID_U=""
ID_G=""
ids_of() {
  ID_U=$SVC_UID
  ID_G=$SVC_GID
  [[ $1 == root ]] && ID_U=0
  case $2 in
    root) ID_G=0 ;;
    prod) ID_G=$PROD_GID ;;
  esac
  return 0
}
# The name for an owner or group word.
name_of() {
  case $1 in
    root) echo root ;;
    prod) echo "$PROD_GROUP" ;;
    *) echo "$SVC_USER" ;;
  esac
}

# --- files and directories -----------------------------------------------------

# Applies MODE (4 octal digits) and, when possible, OWNER:GROUP (each "root"
# or "svc", the service user/group; GROUP also "prod", the producers') to PATH.
set_meta() {
  local path=$1 mode=$2 owner=$3 group=$4
  if ((CHOWN_OK)); then
    # Owner first: chown clears setgid on some systems, chmod sets it back.
    ids_of "$owner" "$group"
    chown -h "$ID_U:$ID_G" -- "$path" ||
      die "chown $(name_of "$owner"):$(name_of "$group") $path failed"
  fi
  # The extra leading 0 makes GNU chmod clear setgid on directories too.
  chmod "0$mode" -- "$path" || die "chmod $mode $path failed"
}

# Sets MDIFF to what differs between PATH's mode/owner and the wanted ones
# ("" when nothing does). CUR ("mode uid gid", as `stat -c '%a %u %g'`
# prints them) saves the stat when the caller already has it.
MDIFF=""
meta_diff() {
  local path=$1 mode=$2 owner=$3 group=$4 cur=${5:-} cur_mode cur_u cur_g out=()
  [[ -n $cur ]] || cur=$(stat -c '%a %u %g' -- "$path")
  read -r cur_mode cur_u cur_g <<<"$cur"
  ((8#$cur_mode == 8#$mode)) || out+=("mode $(printf '%04o' "$((8#$cur_mode))")→$mode")
  if ((CHOWN_OK)); then
    ids_of "$owner" "$group"
    [[ $cur_u == "$ID_U" && $cur_g == "$ID_G" ]] ||
      out+=("owner $cur_u:$cur_g→$(name_of "$owner"):$(name_of "$group")")
  fi
  local IFS=,
  MDIFF="${out[*]}"
}

# fix_meta PATH SHOWN MODE OWNER GROUP UNCHANGED: sets PATH's mode and owner
# where they differ from the wanted ones (sets LAST_CHANGED, reports SHOWN
# updated with what changed), else reports UNCHANGED.
fix_meta() {
  local path=$1 shown=$2 mode=$3 owner=$4 group=$5 unchanged=$6 diff
  meta_diff "$path" "$mode" "$owner" "$group"
  diff=$MDIFF
  if [[ -n $diff ]]; then
    set_meta "$path" "$mode" "$owner" "$group"
    LAST_CHANGED=1
    report updated "$shown ($diff)"
  else
    report unchanged "$unchanged"
  fi
}

# label OWNER GROUP MODE → "root:labship 0750"
describe() {
  if ((CHOWN_OK == 0)); then
    printf '%s' "$3"
    return
  fi
  printf '%s:%s %s' "$(name_of "$1")" "$(name_of "$2")" "$3"
}

# ensure_dir PATH MODE OWNER GROUP: creates PATH or fixes its mode/owner.
ensure_dir() {
  local path=$1 mode=$2 owner=$3 group=$4
  LAST_CHANGED=0
  if [[ -L $path && -d $path ]]; then
    # e.g. /opt/labship -> /srv/labship: the operator's choice, left as is.
    report unchanged "$path/ (symlink to $(realpath -- "$path"); left as is)"
    return
  fi
  if [[ ! -d $path ]]; then
    [[ -e $path || -L $path ]] && die "$path exists but is not a directory; move it away and re-run"
    mkdir -p -- "$path" || die "cannot create directory $path"
    set_meta "$path" "$mode" "$owner" "$group"
    LAST_CHANGED=1
    report created "$path/ ($(describe "$owner" "$group" "$mode"))"
    return
  fi
  fix_meta "$path" "$path/" "$mode" "$owner" "$group" \
    "$path/ ($(describe "$owner" "$group" "$mode"))"
}

# Copies SRC to DEST atomically with MODE/OWNER/GROUP (no report).
put_file() {
  local src=$1 dest=$2 mode=$3 owner=$4 group=$5
  local tmp="${dest%/*}/.${dest##*/}.labship-new"
  install -m "$mode" -- "$src" "$tmp" || die "cannot write $tmp (from $src)"
  # install(1) already set MODE, and a file root creates is root's.
  if [[ $owner != root || $group != root ]]; then
    set_meta "$tmp" "$mode" "$owner" "$group"
  fi
  mv -f -- "$tmp" "$dest" || die "cannot rename $tmp to $dest"
}

# install_file SRC DEST MODE OWNER GROUP: installs or updates DEST when its
# bytes, mode or owner differ; sets LAST_CHANGED.
install_file() {
  local src=$1 dest=$2 mode=$3 owner=$4 group=$5
  LAST_CHANGED=0
  [[ -f $src ]] || die "$src: missing (needed for $dest)"
  if [[ -f $dest && ! -L $dest ]] && cmp -s -- "$src" "$dest"; then
    fix_meta "$dest" "$dest" "$mode" "$owner" "$group" "$dest"
    return
  fi
  local state=installed
  [[ -e $dest || -L $dest ]] && state=updated
  put_file "$src" "$dest" "$mode" "$owner" "$group"
  WRITTEN+=("${dest#"$R"}")
  LAST_CHANGED=1
  report "$state" "$dest ($(describe "$owner" "$group" "$mode"))"
}

# install_once SRC DEST MODE OWNER GROUP: a config, key or gate file. Installs
# DEST only when absent; an existing one is never touched, not even its mode.
install_once() {
  local src=$1 dest=$2
  LAST_CHANGED=0
  if [[ -e $dest || -L $dest ]]; then
    report kept "$dest (exists; never overwritten)"
    return
  fi
  install_file "$@"
}

# --- the source tree -------------------------------------------------------------

# Top-level names never synced (build output, VCS data, dev scratch) and never
# removed from the destination (bin/ holds the installed binaries).
SYNC_EXCLUDE=(target .git .dev .venv-s3 bin)

# Mirrors SRC into R/opt/labship: files compared byte for byte, modes
# normalised (0755 executables and directories, 0644 the rest), files gone
# from the source removed. Skipped when the source IS the destination
# (cd /opt/labship && ./scripts/…).
sync_source() {
  local dest=$R$PREFIX
  # Before ensure_dir: a checkout the operator owns and `git pull`s there
  # keeps its owner and mode (root's would make git refuse it as of
  # "dubious ownership", and the next upgrade command fail).
  if [[ -d $dest && $(realpath -- "$SRC") == "$(realpath -- "$dest")" ]]; then
    report unchanged "$dest: the source is the install directory itself (no sync needed; its owner and mode are left as they are)"
    return
  fi
  ensure_dir "$dest" 0755 root root
  local prune=() name
  for name in "${SYNC_EXCLUDE[@]}"; do
    prune+=(-path "./$name" -o)
  done
  unset 'prune[-1]'
  local new=0 upd=0 same=0 del=0 rel s d mode meta
  # Modes and owners of everything already there, in one pass.
  local -A META=()
  while IFS= read -r -d '' rel && IFS= read -r -d '' meta; do
    META[$rel]=$meta
  done < <(find "$dest" -mindepth 1 -printf '%P\0%m %U %G\0')
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    s=$SRC/$rel
    d=$dest/$rel
    if [[ -L $s ]]; then
      if [[ -L $d && $(readlink -- "$s") == "$(readlink -- "$d")" ]]; then
        same=$((same + 1))
      else
        [[ -e $d || -L $d ]] && { rm -rf -- "$d" || die "cannot replace $d"; }
        ln -s -- "$(readlink -- "$s")" "$d" || die "cannot create symlink $d"
        new=$((new + 1))
      fi
    elif [[ -d $s ]]; then
      if [[ -d $d && ! -L $d ]]; then
        meta_diff "$d" 0755 root root "${META[$rel]:-}"
        if [[ -n $MDIFF ]]; then
          set_meta "$d" 0755 root root
          upd=$((upd + 1))
        else
          same=$((same + 1))
        fi
      else
        [[ -e $d || -L $d ]] && { rm -f -- "$d" || die "cannot replace $d"; }
        mkdir -m 0755 -- "$d" || die "cannot create directory $d"
        new=$((new + 1))
      fi
    elif [[ -f $s ]]; then
      mode=0644
      [[ -x $s ]] && mode=0755
      if [[ -f $d && ! -L $d ]] && cmp -s -- "$s" "$d"; then
        meta_diff "$d" "$mode" root root "${META[$rel]:-}"
        if [[ -n $MDIFF ]]; then
          set_meta "$d" "$mode" root root
          upd=$((upd + 1))
        else
          same=$((same + 1))
        fi
      else
        if [[ -e $d || -L $d ]]; then
          [[ -d $d && ! -L $d ]] && { rm -rf -- "$d" || die "cannot replace $d"; }
          upd=$((upd + 1))
        else
          new=$((new + 1))
        fi
        put_file "$s" "$d" "$mode" root root
      fi
    fi
  done < <(cd "$SRC" && find . -mindepth 1 \( "${prune[@]}" \) -prune -o -print0 | sort -z)
  # Files that left the source leave the destination (deepest first).
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    if [[ ! -e $SRC/$rel && ! -L $SRC/$rel ]]; then
      rm -rf -- "${dest:?}/$rel" || die "cannot remove $dest/$rel"
      del=$((del + 1))
    fi
  done < <(cd "$dest" && find . -mindepth 1 \( "${prune[@]}" \) -prune -o -print0 | sort -rz)
  if ((new + upd + del)); then
    report updated "$dest (source $SRC: $new new, $upd updated, $del removed, $same unchanged)"
  else
    report unchanged "$dest (source $SRC: $same entries)"
  fi
}

# --- binaries ----------------------------------------------------------------------

# start_install WHAT "NAME…" ARG…: the opening of an installer's main: parses
# its arguments (ARG…), finds the source, checks (unless packaged) that the
# binaries NAME… can be had, and says what it installs from where.
start_install() {
  local what=$1 names
  read -r -a names <<<"$2"
  shift 2
  parse_args "$@"
  find_source
  ((PACKAGED)) || check_binaries "${names[@]}"
  umask 022
  echo "$PROGRAM: installing $what from $SRC into ${R:-/}"
}

# check_binaries NAME…: before anything changes, what the binary step needs
# is there (the prebuilt binaries, or cargo).
check_binaries() {
  local name
  if [[ -n $BIN_SRC ]]; then
    for name in "$@"; do
      [[ -f $BIN_SRC/$name && -x $BIN_SRC/$name ]] ||
        die "--bin-dir $BIN_SRC: no executable $name there (it needs: $*)"
    done
  else
    command -v cargo >/dev/null 2>&1 ||
      die "cargo not found in PATH (sudo resets PATH: run \`sudo env PATH=\"\$PATH\" $0\`, or build with \`cargo build --release --locked\` and pass --bin-dir target/release)"
  fi
}

# install_binaries NAME…: from --bin-dir, or built in R/opt/labship.
install_binaries() {
  local from name
  if [[ -n $BIN_SRC ]]; then
    from=$BIN_SRC
  else
    local bins=()
    for name in "$@"; do bins+=(--bin "$name"); done
    # The build runs in the synced copy, which has no .git/: the commit the
    # binaries report (--version, User-Agent, labship_build_info) is the
    # source checkout's, handed over as LABSHIP_COMMIT unless already set.
    local commit=${LABSHIP_COMMIT:-}
    if [[ -z $commit && -e $SRC/.git ]] && command -v git >/dev/null 2>&1; then
      commit=$(git -c safe.directory='*' -C "$SRC" rev-parse HEAD 2>/dev/null) || commit=""
    fi
    echo "  building   cargo build --release --locked ${bins[*]} (in $R$PREFIX; commit ${commit:-from its .git, or unknown})"
    (cd "$R$PREFIX" && LABSHIP_COMMIT=$commit cargo build --release --locked "${bins[@]}") ||
      die "cargo build --release --locked failed in $R$PREFIX (see above); nothing was restarted"
    from=${CARGO_TARGET_DIR:-$R$PREFIX/target}/release
    for name in "$@"; do
      [[ -f $from/$name && -x $from/$name ]] || die "$from/$name: missing after the build"
    done
  fi
  ensure_dir "$R$PREFIX/bin" 0755 root root
  for name in "$@"; do
    install_file "$from/$name" "$R$PREFIX/bin/$name" 0755 root root
  done
}

# --- units and services ------------------------------------------------------------

UNITS_CHANGED=0

install_unit() {
  local unit=$1
  if ((PACKAGED)); then
    packaged_unit "$unit"
    return
  fi
  ensure_dir "$R/etc/systemd/system" 0755 root root
  install_file "$SRC/etc/$unit" "$R/etc/systemd/system/$unit" 0644 root root
  ((LAST_CHANGED)) && UNITS_CHANGED=1
  return 0
}

# rw_path_dropin UNIT KEY PATH DEFAULT: the unit may write only under DEFAULT
# (ProtectSystem=strict); for a PATH (the config's KEY) elsewhere, our drop-in
# /etc/systemd/system/UNIT.d/labship-rw-path.conf says ReadWritePaths=PATH,
# and goes again once PATH is back under DEFAULT. Sets UNITS_CHANGED when it
# changed. A PATH systemd cannot be given quoted is left to the operator.
RW_DROPIN=labship-rw-path.conf
rw_path_dropin() {
  local unit=$1 key=$2 path=${3%/} default=$4
  local dir=$R/etc/systemd/system/$unit.d
  local dest=$dir/$RW_DROPIN
  if [[ $path == "$default" || $path == "$default"/* ]]; then
    if [[ -e $dest ]]; then
      rm -f -- "$dest" || die "cannot remove $dest"
      report removed "$dest ($key is under $default again)"
      UNITS_CHANGED=1
      REMOVED+=("${dest#"$R"}")
    fi
    return 0
  fi
  if [[ $path != /* || $path == *[\\\"$'\n']* ]]; then
    echo "  WARNING    $key is $path: the unit may write only $default; add a drop-in by hand" >&2
    echo "             (systemctl edit $unit) with [Service] ReadWritePaths=<that directory>" >&2
    return 0
  fi
  ensure_dir "$dir" 0755 root root
  local tmp
  tmp=$(mktemp) || die "mktemp failed"
  # Quoted (a path may hold spaces), % doubled (systemd's specifiers).
  printf '# Written by %s: %s is %s, outside %s; removed when it is back.\n[Service]\nReadWritePaths="%s"\n' \
    "$PROGRAM" "$key" "$path" "$default" "${path//%/%%}" >"$tmp" || die "cannot write $tmp"
  install_file "$tmp" "$dest" 0644 root root
  rm -f -- "$tmp"
  ((LAST_CHANGED)) && UNITS_CHANGED=1
  return 0
}

# Under --packaged the unit is the package's, in /lib/systemd/system, and
# dpkg may just have changed it: always reload. A copy an earlier
# script install put in /etc/systemd/system would shadow it (and keep the
# old unit for ever), so it is moved aside; local changes belong in a
# drop-in (systemctl edit), as the unit's header says.
packaged_unit() {
  local unit=$1 old=/etc/systemd/system/$1
  if [[ -f $old && ! -L $old ]]; then
    mv -f -- "$old" "$old.labship-old" || die "cannot move $old aside"
    report removed "$old (an earlier script install's copy; the package's /lib/systemd/system/$unit replaces it; kept as $old.labship-old)"
  fi
  UNITS_CHANGED=1
}

# daemon_reload UNIT: when this run changed a unit, or UNIT's files on disk
# differ from what systemd loaded (a drop-in written without `systemctl
# daemon-reload`): a restart then runs what is on disk.
daemon_reload() {
  local unit=$1 why="a unit changed"
  if ! systemd_running; then
    ((UNITS_CHANGED == 0)) ||
      skip "systemctl daemon-reload (no systemd manager runs on ${R:-this host})"
    return
  fi
  if ((UNITS_CHANGED == 0)); then
    [[ $(systemctl show -p NeedDaemonReload --value "$unit" 2>/dev/null) == yes ]] || return 0
    why="$unit's files changed on disk since systemd loaded them"
  fi
  if ! systemctl daemon-reload; then
    # Under dpkg a failure here would leave the package half-configured and
    # every later apt run failing: say it, and go on.
    ((PACKAGED)) || die "systemctl daemon-reload failed"
    echo "  WARNING    systemctl daemon-reload failed; run it by hand: sudo systemctl daemon-reload" >&2
    return
  fi
  echo "  reloaded   systemd ($why)"
}

# --- restarting only on a change ---------------------------------------------------
#
# A running unit is restarted only when a file it runs from changed since its
# process started: its binary (the process's own /proc/PID/exe against the
# installed file, byte for byte), its unit file, its drop-ins or its config
# (sha256 against the stamp the last run left in STAMP_DIR for that same
# process, by InvocationID; for a process started since, only what this run
# wrote is newer than it). Contents, never mtimes. Under --packaged the
# postinst runs only when dpkg just installed or upgraded the package, and
# dpkg has replaced the files already: an enabled unit is always restarted
# (CONTRACT §12), naming what changed when that is known.

STAMP_DIR=/var/lib/labship-installer
WRITTEN=()       # files install_file wrote (new bytes) in this run
REMOVED=()       # files a unit ran from that this run removed (a drop-in)
CHANGED_FILES=() # set by changed_since_start

# unit_files UNIT CONFIG: the files UNIT runs from, one a line: its unit
# file and drop-ins as systemd loaded them, then CONFIG.
unit_files() {
  local unit=$1 config=$2 frag p
  frag=$(systemctl show -p FragmentPath --value "$unit")
  [[ -z $frag ]] || printf '%s\n' "$frag"
  # Space-separated; unit paths hold no spaces.
  for p in $(systemctl show -p DropInPaths --value "$unit"); do
    printf '%s\n' "$p"
  done
  printf '%s\n' "$config"
}

# sums FILE…: "SHA256 PATH" lines, "- PATH" for a file that is not there.
sums() {
  local f sum
  for f in "$@"; do
    if [[ -r $f ]]; then
      sum=$(sha256sum -- "$f") || die "sha256sum $f failed"
      printf '%s %s\n' "${sum%% *}" "$f"
    else
      printf -- '- %s\n' "$f"
    fi
  done
}

# changed_since_start UNIT BINARY PID INVOCATION FILE…: sets CHANGED_FILES
# to "PATH changed" (or "PATH removed") for BINARY and each FILE that differs
# from what process PID started with.
changed_since_start() {
  local unit=$1 bin=$2 pid=$3 inv=$4 stamp=$STAMP_DIR/$1.sums f w sum path
  shift 4
  CHANGED_FILES=()
  # A replaced binary stays readable through the process's exe link.
  cmp -s -- "/proc/$pid/exe" "$bin" || CHANGED_FILES+=("$bin changed")
  if [[ -n $inv && -r $stamp && $(head -n 1 -- "$stamp") == "invocation $inv" ]]; then
    local -A old=()
    while read -r sum path; do
      old[$path]=$sum
    done < <(tail -n +2 -- "$stamp")
    while read -r sum path; do
      [[ ${old[$path]:-} == "$sum" ]] || CHANGED_FILES+=("$path changed")
      unset 'old[$path]'
    done < <(sums "$@")
    for path in "${!old[@]}"; do
      CHANGED_FILES+=("$path removed")
    done
  else
    for f in "$@"; do
      for w in "${WRITTEN[@]}"; do
        [[ $f != "$w" ]] || CHANGED_FILES+=("$f changed")
      done
    done
    # Gone from systemd's list after the reload, so not among FILE….
    for w in "${REMOVED[@]}"; do
      CHANGED_FILES+=("$w removed")
    done
  fi
  return 0
}

# write_stamp UNIT FILE…: what UNIT's current process runs from, for the
# next run (not under --packaged: there every configure restarts).
write_stamp() {
  local unit=$1 tmp
  shift
  ((PACKAGED == 0)) || return 0
  [[ -d $STAMP_DIR ]] || mkdir -m 0755 -- "$STAMP_DIR" || die "cannot create $STAMP_DIR"
  tmp=$STAMP_DIR/.$unit.sums.new
  {
    echo "invocation $(systemctl show -p InvocationID --value "$unit")"
    sums "$@"
  } >"$tmp" || die "cannot write $tmp"
  mv -f -- "$tmp" "$STAMP_DIR/$unit.sums" || die "cannot write $STAMP_DIR/$unit.sums"
}

# restart_if_enabled UNIT BINARY CONFIG: an enabled unit that is not
# running is started; a running one is restarted when a file it runs from
# changed (try-restart when it is not enabled), and left alone otherwise;
# each case says so. A disabled, stopped unit is never started.
restart_if_enabled() {
  local unit=$1 bin=$2 config=$3 state enabled=0 pid inv
  if ! systemd_running; then
    skip "restart of $unit (no systemd manager runs on ${R:-this host})"
    return
  fi
  state=$(systemctl is-enabled "$unit" 2>/dev/null) || true
  [[ $state != enabled && $state != enabled-runtime ]] || enabled=1
  pid=$(systemctl show -p MainPID --value "$unit")
  inv=$(systemctl show -p InvocationID --value "$unit")
  local files=()
  mapfile -t files < <(unit_files "$unit" "$config")
  if [[ ${pid:-0} == 0 ]]; then
    if ((enabled)); then
      restart_unit "$unit" restart "started    $unit (enabled, was not running; MainPID" ")"
    else
      printf '  %-10s %s\n' "${state:-absent}" "$unit (not enabled: the installer never starts a disabled unit)"
      add_next "sudo systemctl enable --now $unit"
    fi
  else
    changed_since_start "$unit" "$bin" "$pid" "$inv" "${files[@]}"
    local why="" verb=restart
    if ((${#CHANGED_FILES[@]})); then
      local f
      for f in "${CHANGED_FILES[@]}"; do
        why+="${why:+, }$f"
      done
    elif ((PACKAGED)); then
      why="the package was installed or upgraded (postinst configure)"
    fi
    ((enabled)) || verb=try-restart
    if [[ -n $why ]]; then
      local note=""
      ((enabled)) || note="; running, not enabled: try-restart"
      restart_unit "$unit" "$verb" "restarted  $unit: $why (MainPID $pid →" ")$note"
    else
      local note=""
      ((enabled)) || note="; running, not enabled"
      echo "  unchanged  $unit not restarted (MainPID $pid$note): its binary, unit, drop-ins and config are those it started with"
    fi
  fi
  write_stamp "$unit" "${files[@]}"
}

# restart_unit UNIT VERB BEFORE AFTER: systemctl VERB UNIT, then prints
# BEFORE, the new MainPID and AFTER.
restart_unit() {
  local unit=$1 verb=$2 new
  if ! systemctl "$verb" "$unit"; then
    systemctl status --no-pager -l "$unit" >&2 || true
    # Under dpkg: the package is installed all the same (a half-configured
    # one would fail every later apt run); the unit's state says the rest.
    ((PACKAGED)) || die "systemctl $verb $unit failed (journalctl -u $unit says why)"
    echo "  WARNING    systemctl $verb $unit failed: the new version is installed but not running; journalctl -u $unit says why, then: sudo systemctl restart $unit" >&2
    return
  fi
  new=$(systemctl show -p MainPID --value "$unit")
  echo "  $3 $new$4"
}

# --- reading the config (simple `key = "string"` lines, enough for paths) ----------

# toml_get FILE SECTION KEY: the string value, "" when absent. SECTION "" is
# the top level. Pure bash: no awk (a minimal image may lack the alternatives
# link /usr/bin/awk points through).
toml_get() {
  local file=$1 want=$2 key=$3 line section=""
  [[ -r $file ]] || return 0
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^[[:space:]]*\[[[:space:]]*([A-Za-z0-9_.-]+)[[:space:]]*\] ]]; then
      section=${BASH_REMATCH[1]}
      continue
    fi
    [[ $section == "$want" ]] || continue
    if [[ $line =~ ^[[:space:]]*${key}[[:space:]]*=[[:space:]]*\"([^\"]*)\" ]]; then
      printf '%s' "${BASH_REMATCH[1]}"
      return 0
    fi
  done <"$file"
}

# db_id FILE NAME: field 3 (the id) of NAME's line in a passwd/group file.
db_id() {
  local name rest id
  [[ -r $1 ]] || return 0
  while IFS=: read -r name rest id _; do
    if [[ $name == "$2" ]]; then
      printf '%s' "$id"
      return 0
    fi
  done <"$1"
}

# A config path as installed: relative paths resolve against /etc/labship.
abs_config_path() {
  case $1 in
    "") echo "" ;;
    /*) echo "$1" ;;
    *) echo "/etc/labship/$1" ;;
  esac
}

finish() {
  echo
  local skipped=""
  ((${#SKIPPED[@]})) && skipped=", ${#SKIPPED[@]} skipped (see above)"
  echo "$PROGRAM: done: $CHANGED changed, $UNCHANGED unchanged$skipped"
  if ((${#NEXT[@]})); then
    echo
    echo "Next steps:"
    local i=1 step
    for step in "${NEXT[@]}"; do
      printf '  %d. %s\n' "$i" "$step"
      i=$((i + 1))
    done
  fi
}
