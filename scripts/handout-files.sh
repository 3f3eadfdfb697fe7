#!/usr/bin/env bash
# Counts the files of this module whose code runs for one pooled handout,
# from the HTTP request to Redis and back (README: Development). It runs
# the probe test twice with coverage, without and with one more handout,
# and lists the files with a block that ran more often in the second run.
# Each pair of runs is repeated; a file listed by only some pairs is noise
# (a timer of the daemon's) and is reported apart.
#   scripts/handout-files.sh [pairs]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
probe() {
  TOKENPOOL_PROBE=1 TOKENPOOL_PROBE_HANDOUT=$1 go test -count=1 -covermode=count \
    -coverpkg=github.com/tokenpool/tokenpool/... -coverprofile="$2" \
    -run '^TestHandoutPathProbe$' ./cmd/tokenpoold >/dev/null
}
for i in $(seq "$pairs"); do
  probe 0 "$dir/a$i"
  probe 1 "$dir/b$i"
  awk 'FNR==1{next} NR==FNR{a[$1]+=$3; next} {b[$1]+=$3}
       END{for (k in b) if (b[k] > a[k]) {split(k, f, ":"); print f[1]}}' "$dir/a$i" "$dir/b$i" |
    sed 's|^github.com/tokenpool/tokenpool/||' | grep -v '^internal/' | sort -u >"$dir/files$i"
done
sort "$dir"/files* | uniq -c | awk -v n="$pairs" '$1==n{print $2}' >"$dir/always"
sort "$dir"/files* | uniq -c | awk -v n="$pairs" '$1<n{print $2" ("$1" of "n")"}' >"$dir/sometimes"
echo "files a pooled handout runs code in (every pair): $(wc -l <"$dir/always")"
sed 's/^/  /' "$dir/always"
if [ -s "$dir/sometimes" ]; then
  echo "in some pairs only (noise):"
  sed 's/^/  /' "$dir/sometimes"
fi
