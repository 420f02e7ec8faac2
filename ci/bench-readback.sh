#!/usr/bin/env bash
# Benchmark (not a test): reading a just-written output back for its sha256, as the OVA
# and the compressed qcow2 must (their first bytes depend on all the rest, see
# docs/disk.md): `disk::stream::hash_file` (read on one thread, hashed on another)
# against reading and hashing on one thread, alternately on the same file in the page
# cache, same run. Prints every run, the medians and their ratio, and the load average
# (the pipelined read needs a free core to gain anything).
#
#   ci/bench-readback.sh                 # 480 MiB (a worker OVA's size), 7 runs each
#   SIZE_MIB=128 RUNS=3 ci/bench-readback.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-480}
RUNS=${RUNS:-7}

cargo build --release --quiet --example bench_readback
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/out"
uptime
target/release/examples/bench_readback "$work/out" "$RUNS"
uptime
