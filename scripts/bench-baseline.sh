#!/usr/bin/env bash
# bench-baseline.sh: the script an operator would write instead of labship,
# the baseline of the bench (docs/performance.md). Per episode: tar | zstd -3
# -T0 into a file, sha256sum, then one curl PUT over mutual TLS with the
# contract's headers (Content-Digest, X-Labship-Commit from meta.json); stops
# at the first answer other than 201 (so a no-op 200 would fail the bench).
#
#   scripts/bench-baseline.sh URL HOST CA CERT KEY EPISODES_DIR SCRATCH_DIR ID...
set -euo pipefail
if (($# < 8)); then
  echo "usage: $0 URL HOST CA CERT KEY EPISODES_DIR SCRATCH_DIR ID..." >&2
  exit 2
fi
url=$1 host=$2 ca=$3 cert=$4 key=$5 src=$6 scratch=$7
shift 7
mkdir -p "$scratch"
for id in "$@"; do
  archive=$scratch/$id.tar.zst
  # The contract's archive: <id>/… in sorted order, owner 0, no names.
  tar -C "$src" --sort=name --owner=0 --group=0 --numeric-owner -cf - "$id" |
    zstd -q -3 -T0 -c >"$archive"
  commit=$(sed -n 's/.*"commit"[[:space:]]*:[[:space:]]*"\([0-9a-f]\{40\}\)".*/\1/p' "$src/$id/meta.json")
  hex=$(sha256sum "$archive")
  hex=${hex%% *}
  # Content-Digest wants the raw digest in base64, not hex.
  escaped=
  for ((i = 0; i < 64; i += 2)); do escaped+="\\x${hex:i:2}"; done
  digest=$(printf '%b' "$escaped" | base64 -w0)
  code=$(curl -sS -o "$scratch/$id.answer" -w '%{http_code}' \
    --cacert "$ca" --cert "$cert" --key "$key" \
    -T "$archive" \
    -H "Content-Type: application/zstd" \
    -H "Content-Digest: sha-256=:$digest:" \
    -H "X-Labship-Commit: $commit" \
    "$url/v1/episodes/$host/$id")
  if [[ $code != 201 ]]; then
    echo "$id: HTTP $code: $(cat "$scratch/$id.answer")" >&2
    exit 1
  fi
  rm -f "$archive" "$scratch/$id.answer"
done
