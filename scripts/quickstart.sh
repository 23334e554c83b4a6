#!/usr/bin/env bash
# quickstart: labship end to end on local defaults.
#
# Builds the workspace, makes a dev CA and certificates in .dev/ (git-ignored),
# starts a receiver on loopback, writes sample episodes for a lab host (two good,
# one unstamped, one out of the commit window), runs `shipper --ping` and
# `shipper --once`, shows what was shipped and quarantined and why, runs
# `doctor`, then walks
# the receiver's status table with curl alone (201, 200, HEAD, 412, 400, 409)
# and stops the receiver.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dev=$root/.dev/quickstart
port=${LABSHIP_QS_PORT:-18443}
ops_port=${LABSHIP_QS_OPS_PORT:-19464}
good=1111111111111111111111111111111111111111
old=2222222222222222222222222222222222222222
host=lab-01

echo "== build"
cargo build --workspace --bins --locked -q
bin=$root/target/debug

rm -rf "$dev" && mkdir -p "$dev/pki" "$dev/episodes"
cd "$dev/pki"
echo "== dev CA and certificates in $dev/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout ca.key -out ca.pem -subj "/CN=labship dev CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
issue() { # name cn extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out "$1.pem" -extfile "$1.ext" 2>/dev/null
}
issue receiver labship-receiver "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
issue client "$host" "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"

cd "$dev"
printf '# accepted code versions\n%s\n' "$good" > allowed-commits
cat > receiver.toml <<TOML
listen = "127.0.0.1:$port"
[tls]
cert_file = "pki/receiver.pem"
key_file = "pki/receiver.key"
client_ca_file = "pki/ca.pem"
[storage]
dir = "store"
[gate]
allowed_commits_file = "allowed-commits"
[ops]
listen = "127.0.0.1:$ops_port"
audit_log = "audit.jsonl"
TOML

echo "== start receiver on 127.0.0.1:$port (log: $dev/receiver.log)"
"$bin/receiver" --config receiver.toml >receiver.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ops_port/healthz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat receiver.log; exit 1; }
  sleep 0.1
done

meta() { # dir id commit-or-empty: writes dir/meta.json, stamped or not
  if [ -n "$3" ]; then
    printf '{"episode":"%s","code_version":{"commit":"%s","dirty":false}}\n' "$2" "$3" > "$1/meta.json"
  else
    printf '{"episode":"%s"}\n' "$2" > "$1/meta.json"
  fi
}
episode() { # id commit-or-empty
  mkdir -p "episodes/$1/data"
  meta "episodes/$1" "$1" "$2"
  seq 1 20000 > "episodes/$1/data/steps.csv"
  tar --sort=name --owner=0 --group=0 --numeric-owner -C episodes -cf - "$1" | zstd -3 -T0 -q > "$1.tar.zst"
}
digest() { printf 'sha-256=:%s:' "$(openssl dgst -sha256 -binary "$1" | base64 -w0)"; }
curl_() { curl -sS --cacert pki/ca.pem --cert pki/client.pem --key pki/client.key "$@"; }
put() { # id commit-header file
  curl_ -o "answer.json" -w '%{http_code}' -X PUT -H "X-Labship-Commit: $2" \
    -H "Content-Digest: $(digest "$3")" --data-binary "@$3" \
    "https://127.0.0.1:$port/v1/episodes/$host/$1"
}
row() { printf '  %-44s -> %s  %s\n' "$1" "$2" "$(cat answer.json 2>/dev/null)"; }

echo "== lab host: shipper --ping and --once (data dir $dev/lab)"
mkdir -p lab/episodes
sample() { # id commit-or-empty
  mkdir -p "lab/episodes/$1/frames"
  meta "lab/episodes/$1" "$1" "$2"
  head -c 200000 /dev/urandom > "lab/episodes/$1/frames/0001.bin"
  seq 1 5000 > "lab/episodes/$1/steps.csv"
}
sample run-001 "$good"; sample run-002 "$good"; sample run-003 ""; sample run-004 "$old"
cat > shipper.toml <<TOML
host_id = "$host"
data_dir = "lab"
settle_s = 0
[receiver]
url = "https://127.0.0.1:$port"
ca_file = "pki/ca.pem"
cert_file = "pki/client.pem"
key_file = "pki/client.key"
TOML
"$bin/shipper" --config shipper.toml --ping
"$bin/shipper" --config shipper.toml --once 2>shipper.log
echo "  shipped/:    $(find lab/shipped -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"
for q in lab/quarantine/*/; do
  printf '  quarantine/: %-10s %s\n' "$(basename "$q")" "$(tr -d '\n' < "$q/quarantine_reason.json" | sed 's/  */ /g' | cut -c1-220)"
done
echo "  receiver store: $(find "store/$host" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"

echo "== doctor: what an operator or an on-host agent runs first"
echo "   (no systemd unit runs here, so the service and journal rows say so)"
rc=0
"$bin/doctor" --config shipper.toml || rc=$?
if [ "$rc" -gt 2 ]; then
  echo "quickstart: doctor failed unexpectedly (exit $rc)" >&2
  exit 1
fi
echo "   doctor exit $rc (0 all OK, 1 warnings, 2 failures)"

episode ep-0001 "$good"
episode ep-0002 "$old"
episode ep-0003 ""

echo "== the receiver's status table, with curl alone"
printf '  %-44s -> %s\n' "POST /v1/ping" "$(curl_ -X POST "https://127.0.0.1:$port/v1/ping")"
row "PUT ep-0001 (stamped, in window)" "$(put ep-0001 $good ep-0001.tar.zst)"
row "PUT ep-0001 again (same bytes)" "$(put ep-0001 $good ep-0001.tar.zst)"
printf '  %-44s -> %s\n' "HEAD ep-0001" "$(curl_ -I -s "https://127.0.0.1:$port/v1/episodes/$host/ep-0001" | tr -d '\r' | grep -iE '^(HTTP|content-digest|content-length)' | tr '\n' ' ')"
row "PUT ep-0002 (stamped, out of window)" "$(put ep-0002 $old ep-0002.tar.zst)"
row "PUT ep-0003 (no X-Labship-Commit)" "$(curl_ -o answer.json -w '%{http_code}' -X PUT -H "Content-Digest: $(digest ep-0003.tar.zst)" --data-binary @ep-0003.tar.zst "https://127.0.0.1:$port/v1/episodes/$host/ep-0003")"
echo extra > episodes/ep-0001/data/late.txt
tar --sort=name --owner=0 --group=0 --numeric-owner -C episodes -cf - ep-0001 | zstd -3 -q > ep-0001b.tar.zst
row "PUT ep-0001 with other bytes" "$(put ep-0001 $good ep-0001b.tar.zst)"

echo "== stored under $dev/store/$host:"
ls -l "store/$host"
echo "== audit log: $dev/audit.jsonl ($(wc -l < audit.jsonl) decisions); metrics: curl http://127.0.0.1:$ops_port/metrics"
echo "== stopping the receiver"
