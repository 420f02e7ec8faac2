#!/usr/bin/env bash
# Benchmark: importing the embedded images at boot (the layout a build writes, the product's
# images-import script, containerd's `ctr images import` with unpacking) against pulling the
# same images with the same containerd from a registry on loopback (the online path), in the
# same run. Prints both times, their ratio, the layout's size with shared layers stored once,
# and the disk containerd uses after the import.
#
# Needs root, Debian's containerd, runc, docker-registry and busybox-static (ci/test.sh
# installs them). Sizes: BENCH_IMAGES images (default 15) of BENCH_LAYER_MIB MiB of
# incompressible data each (default 16), all sharing one base layer of the same size.
#
# Usage: ci/bench-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-images: needs root (containerd)" >&2; exit 1; }
cargo test --quiet --test it -- --ignored --exact oci_containerd::bench_import_against_a_pull \
  --nocapture 2>&1 | grep '^bench-images:'
