#!/usr/bin/env bash
# Benchmark (not a test): `imgbuild fetch` against parallel curl + sha256sum, same
# loopback server, same files, same run. Both sides do the same work: download every
# file to disk and hash it. Prints both wall times and the ratio imgbuild/curl
# (target <= 1.1).
#
#   ci/bench-fetch.sh            # 8 x 128 MiB, 4 jobs, 3 rounds (best of each)
#   FILES=4 SIZE_MIB=64 JOBS=2 ROUNDS=1 ci/bench-fetch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=${FILES:-8}
SIZE_MIB=${SIZE_MIB:-128}
JOBS=${JOBS:-4}
ROUNDS=${ROUNDS:-3}

for c in curl sha256sum xargs awk; do
  command -v "$c" >/dev/null || { echo "bench-fetch: $c is required" >&2; exit 1; }
done

cargo build --release --quiet --bin imgbuild --example bench_server
bin=target/release/imgbuild
server=target/release/examples/bench_server

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/srv"

echo "bench-fetch: generating $FILES x $SIZE_MIB MiB of random data" >&2
for i in $(seq 1 "$FILES"); do
  head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/srv/f$i.bin"
done

"$server" "$work/srv" >"$work/port" &
server_pid=$!
for _ in $(seq 1 100); do
  [ -s "$work/port" ] && break
  sleep 0.05
done
port=$(cat "$work/port")
base="http://127.0.0.1:$port"

# A recipe whose base image is f1 and whose artifacts are the other files.
sha() { sha256sum "$work/srv/$1" | cut -d' ' -f1; }
{
  cat <<EOF
name: bench
kubernetes_version: v0.0.0
arches: [amd64]
source_date_epoch: 0
base:
  name: f1
  version: "1"
  format: raw
  urls: ["$base/f1.bin"]
  sha256: {amd64: $(sha f1.bin)}
artifacts:
EOF
  for i in $(seq 2 "$FILES"); do
    cat <<EOF
  - name: f$i
    version: "1"
    roles: [worker]
    urls: ["$base/f$i.bin"]
    sha256: {amd64: $(sha "f$i.bin")}
    install: [{to: /f$i}]
EOF
  done
} >"$work/recipe.yaml"
for i in $(seq 1 "$FILES"); do echo "$base/f$i.bin"; done >"$work/urls"
# Serve from the page cache for both contenders.
cat "$work"/srv/*.bin >/dev/null

now() { date +%s.%N; }

run_curl() {
  rm -rf "$work/curl" && mkdir -p "$work/curl"
  local t0 t1
  t0=$(now)
  # shellcheck disable=SC2016 # $0/$1 are expanded by the inner sh
  xargs -P "$JOBS" -n 1 sh -c 'f="$0/$(basename "$1")"; curl -sSf -o "$f" "$1" && sha256sum "$f"' \
    "$work/curl" <"$work/urls" >"$work/curl.sums"
  t1=$(now)
  [ "$(wc -l <"$work/curl.sums")" -eq "$FILES" ] || { echo "bench-fetch: curl failed" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# Reference only (less work than either contender): download without hashing.
run_curl_nohash() {
  rm -rf "$work/curl" && mkdir -p "$work/curl"
  local t0 t1
  t0=$(now)
  # shellcheck disable=SC2016 # $0/$1 are expanded by the inner sh
  xargs -P "$JOBS" -n 1 sh -c 'curl -sSf -o "$0/$(basename "$1")" "$1"' "$work/curl" <"$work/urls"
  t1=$(now)
  rm -rf "$work/curl"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

run_imgbuild() {
  rm -rf "$work/cache" "$work/curl"
  local t0 t1
  t0=$(now)
  "$bin" --quiet fetch --recipe "$work/recipe.yaml" --role worker --arch amd64 \
    --cache-dir "$work/cache" --jobs "$JOBS" >"$work/imgbuild.out"
  t1=$(now)
  [ "$(wc -l <"$work/imgbuild.out")" -eq "$FILES" ] || { echo "bench-fetch: imgbuild failed" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

best_curl=
best_img=
best_nohash=
for r in $(seq 1 "$ROUNDS"); do
  # Alternate who goes first, so neither always gets the warmer machine.
  if [ $((r % 2)) = 1 ]; then
    c=$(run_curl)
    i=$(run_imgbuild)
  else
    i=$(run_imgbuild)
    c=$(run_curl)
  fi
  rm -rf "$work/cache"
  n=$(run_curl_nohash)
  echo "round $r: curl+sha256sum ${c}s imgbuild ${i}s (curl without hashing ${n}s)" >&2
  best_curl=$(awk -v x="$c" -v y="${best_curl:-$c}" 'BEGIN { print (x < y ? x : y) }')
  best_img=$(awk -v x="$i" -v y="${best_img:-$i}" 'BEGIN { print (x < y ? x : y) }')
  best_nohash=$(awk -v x="$n" -v y="${best_nohash:-$n}" 'BEGIN { print (x < y ? x : y) }')
done

total_mib=$((FILES * SIZE_MIB))
echo "bench-fetch: $FILES files, $total_mib MiB, --jobs $JOBS, best of $ROUNDS"
awk -v c="$best_curl" -v i="$best_img" -v n="$best_nohash" -v m="$total_mib" 'BEGIN {
  printf "curl + sha256sum (xargs -P): %.3f s (%.0f MiB/s)\n", c, m / c
  printf "imgbuild fetch:              %.3f s (%.0f MiB/s)\n", i, m / i
  printf "ratio imgbuild/curl:         %.3f (target <= 1.1)\n", i / c
  printf "reference: curl without hashing %.3f s (imgbuild/that %.3f)\n", n, i / n
}'
