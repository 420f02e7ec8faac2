#!/usr/bin/env bash
# Benchmark: a warm `imgbuild build` (release binary, cache already filled) against
# `qemu-img convert -O qcow2` of the same base, in the same run.
#
# The base is realistic in size: 3.5 GiB virtual with noble's partition layout
# (14 BIOS boot, 15 ESP, 16 BOOT, 1 root last on disk) and >= 640 MiB of
# incompressible data in the root filesystem. The artifacts are stand-ins shaped
# like the real ones (BENCH_ARTIFACT_MIB MiB of random bytes each, default 4).
# Prints the median of BENCH_RUNS runs (default 3) of each, the ratio and the peak
# RSS of imgbuild. Targets: ratio <= 1.3, RSS < 200 MB.
#
# Usage: ci/bench-build.sh [WORKDIR]   (needs sgdisk, mke2fs, qemu-img, /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
runs=${BENCH_RUNS:-3}
mib=${BENCH_ARTIFACT_MIB:-4}
for t in sgdisk mke2fs qemu-img tar gzip; do
  command -v "$t" >/dev/null || { echo "bench-build: $t missing" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench-build: /usr/bin/time missing (apt-get install -y time)" >&2; exit 1; }

work=${1:-$(mktemp -d)}
mkdir -p "$work"
trap 'rm -rf "$work"/out "$work"/convert.qcow2' EXIT
echo "bench-build: building release binary" >&2
cargo build --release --quiet
bin=$PWD/target/release/imgbuild

# --- base image: 3.5 GiB, noble layout, 640 MiB of random data in root ---------
base=$work/base.qcow2
if [ ! -f "$base" ]; then
  echo "bench-build: creating the base image in $work" >&2
  raw=$work/base.raw
  rm -f "$raw"
  truncate -s 3584M "$raw"
  sgdisk -Z -o -n 14:2048:+4M -t 14:EF02 -n 15:0:+106M -t 15:EF00 -n 16:0:+913M -t 16:EA00 \
    -n 1:0:0 -t 1:8300 "$raw" >/dev/null
  start() { sgdisk -i "$1" "$raw" | awk '/First sector/ {print $3}'; }
  last() { sgdisk -i "$1" "$raw" | awk '/Last sector/ {print $3}'; }
  tree=$work/root-tree
  rm -rf "$tree"
  mkdir -p "$tree/etc" "$tree/var/lib/dpkg" "$tree/usr/local/bin" "$tree/usr/share/data" \
    "$tree/etc/systemd/system/multi-user.target.wants"
  printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\nID=ubuntu\n' >"$tree/etc/os-release"
  printf 'Package: base-files\nStatus: install ok installed\nVersion: 13ubuntu10.1\n\n' >"$tree/var/lib/dpkg/status"
  for i in $(seq 1 10); do head -c 64M /dev/urandom >"$tree/usr/share/data/blob$i"; done
  s1=$(start 1); e1=$(last 1); s16=$(start 16); e16=$(last 16)
  mke2fs -q -F -t ext4 -b 4096 -L cloudimg-rootfs -E offset=$((s1 * 512)) -d "$tree" "$raw" \
    $(((e1 - s1 + 1) * 512 / 4096))
  mke2fs -q -F -t ext4 -b 4096 -L BOOT -E offset=$((s16 * 512)) "$raw" $(((e16 - s16 + 1) * 512 / 4096))
  qemu-img convert -f raw -O qcow2 "$raw" "$base"
  rm -rf "$raw" "$tree"
fi

# --- stand-in artifacts, pre-filled cache, recipe pinning their digests --------
cache=$work/cache
mkdir -p "$cache/sha256"
art=$work/artifacts
rm -rf "$art"
mkdir -p "$art/t"
rnd() { head -c "$((mib * 1024 * 1024))" /dev/urandom >"$1"; chmod 755 "$1"; }
for n in kubeadm kubelet kubectl runc; do rnd "$art/$n"; done
mkdir -p "$art/t/containerd/bin" "$art/t/cni" "$art/t/crictl" "$art/t/etcd/etcd-v3.5.12-linux-amd64" "$art/t/helm/linux-amd64"
for n in containerd containerd-shim-runc-v2 ctr; do rnd "$art/t/containerd/bin/$n"; done
for n in bridge host-local loopback portmap; do rnd "$art/t/cni/$n"; done
rnd "$art/t/crictl/crictl"
for n in etcd etcdctl etcdutl; do rnd "$art/t/etcd/etcd-v3.5.12-linux-amd64/$n"; done
rnd "$art/t/helm/linux-amd64/helm"
tar -czf "$art/containerd" -C "$art/t/containerd" bin
tar -czf "$art/cni-plugins" -C "$art/t/cni" .
tar -czf "$art/crictl" -C "$art/t/crictl" crictl
tar -czf "$art/etcd" -C "$art/t/etcd" etcd-v3.5.12-linux-amd64
tar -czf "$art/helm" -C "$art/t/helm" linux-amd64
# Add-on charts (control plane only, but the recipe pins them for every role).
for n in cilium metrics-server ingress-nginx; do
  mkdir -p "$art/t/$n/$n" && printf 'apiVersion: v2\nname: %s\nversion: 0.0.0\n' "$n" >"$art/t/$n/$n/Chart.yaml"
  tar -czf "$art/$n" -C "$art/t/$n" "$n"
done
# The recipe lists the base, then the artifacts in this order; each has one amd64 line.
digests=()
for f in "$base" "$art"/{kubeadm,kubelet,kubectl,containerd,runc,cni-plugins,crictl,etcd,helm,cilium,metrics-server,ingress-nginx}; do
  d=$(sha256sum "$f" | cut -d' ' -f1)
  digests+=("$d")
  [ -f "$cache/sha256/$d" ] || cp "$f" "$cache/sha256/$d"
done
recipe=$work/recipe.yaml
awk -v list="${digests[*]}" 'BEGIN { n = split(list, d, " "); i = 0 }
  /^(packages|images|addons):/ { skip = 1 } /^[a-z_]+:/ && !/^(packages|images|addons):/ { skip = 0 }
  /^disk_size:/ { next }
  skip { next }
  /^ *amd64: [0-9a-f]+$/ { i++; sub(/[0-9a-f]+$/, d[i]) } { print }' \
  image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml >"$recipe"
# (The Ubuntu packages section is dropped: it needs the Ubuntu archive or a lock file. The
# container images and add-ons too: the images run is below. disk_size too: the baseline
# converts the base at its own size.)

# --- container images: the same recipe plus BENCH_IMAGES images pinned by digest, their
# blobs (BENCH_IMAGE_MIB MiB of incompressible data each, plus one shared base layer of the
# same size) in the cache, built offline like the rest --------------------------------------
nimg=${BENCH_IMAGES:-15}
img_mib=${BENCH_IMAGE_MIB:-16}
recipe_img=$work/recipe-images.yaml
cp "$recipe" "$recipe_img"
python3 - "$cache/sha256" "$nimg" "$img_mib" >>"$recipe_img" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
store, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    p = os.path.join(store, d)
    if not os.path.exists(p):
        open(p, "wb").write(b)
    return {"digest": "sha256:" + d, "size": len(b)}
def layer(name):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        data = rnd.randbytes(mib << 20)
        ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1724198400
        t.addfile(ti, io.BytesIO(data))
    gz = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    return gz, "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
base = layer("base.bin")
print("images:")
for i in range(n):
    own = layer(f"img{i}.bin")
    cfg = put(json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": [base[1], own[1]]}}).encode())
    ls = [put(base[0]), put(own[0])]
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **l} for l in ls]}
    md = put(json.dumps(m).encode())
    idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
           "manifests": [{"mediaType": m["mediaType"], **md, "platform": {"architecture": "amd64", "os": "linux"}}]}
    x = put(json.dumps(idx).encode())
    print(f"  - ref: registry.bench.invalid/img{i}:1@{x['digest']}\n    roles: [control-plane, worker]")
PY

# --- the runs ------------------------------------------------------------------
role=${BENCH_ROLE:-worker}
build() {
  rm -rf "$work/out"
  /usr/bin/time -v -o "$work/time.txt" "$bin" --quiet build --offline --role "$role" --recipe "$recipe" \
    --cache-dir "$cache" --output "$work/out" >/dev/null
}
convert() {
  rm -f "$work/convert.qcow2"
  /usr/bin/time -v -o "$work/time-convert.txt" qemu-img convert -O qcow2 "$base" "$work/convert.qcow2"
}
# The same outputs' floor: the conversion plus the sha256 the build must publish
# (openssl uses the CPU's SHA extensions, as imgbuild does).
convert_hash() {
  rm -f "$work/convert.qcow2"
  /usr/bin/time -v -o "$work/time-convert-hash.txt" sh -c \
    'qemu-img convert -O qcow2 "$1" "$2" && openssl dgst -sha256 "$2" >/dev/null' _ "$base" "$work/convert.qcow2"
}
secs() { awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$1"; }
rss() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }

echo "bench-build: warm-up" >&2
build
convert
# With and without the images, one build each (after the warm-up): time and bytes.
build
t0=$(secs "$work/time.txt")
s0=$(du -m "$work/out"/*.qcow2 | cut -f1)
build_images() {
  rm -rf "$work/out-img"
  /usr/bin/time -v -o "$work/time-img.txt" "$bin" --quiet build --offline --role "$role" --recipe "$recipe_img" \
    --cache-dir "$cache" --output "$work/out-img" >/dev/null
}
build_images
build_images
t1=$(secs "$work/time-img.txt")
s1=$(du -m "$work/out-img"/*.qcow2 | cut -f1)
v1=$(qemu-img info --output=json "$work/out-img"/*.qcow2 | awk -F': ' '/"virtual-size"/ { gsub(/,/, "", $2); print int($2 / 1048576) }')
layout=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(f.get("size",0) for f in m["files"] if f["path"].startswith("/usr/share/imgbuild/images/")) >> 20)' "$work/out-img"/*.manifest.json)
b=(); c=(); h=(); r=0
for i in $(seq 1 "$runs"); do
  build
  b+=("$(secs "$work/time.txt")")
  x=$(rss "$work/time.txt"); [ "$x" -gt "$r" ] && r=$x
  convert
  c+=("$(secs "$work/time-convert.txt")")
  convert_hash
  h+=("$(secs "$work/time-convert-hash.txt")")
  echo "bench-build: run $i: build ${b[-1]} s, convert ${c[-1]} s, convert+sha256 ${h[-1]} s" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
mb=$(median "${b[@]}"); mc=$(median "${c[@]}"); mh=$(median "${h[@]}")
layer=$(du -sm "$art"/{kubeadm,kubelet,kubectl,containerd,runc,cni-plugins,crictl} | awk '{ s += $1 } END { print s }')
echo "base: 3.5 GiB virtual, $(du -m "$base" | cut -f1) MiB qcow2; artifacts ($role): ~${layer} MiB"
echo "imgbuild build (median of $runs): ${mb} s"
echo "qemu-img convert -O qcow2 (median of $runs): ${mc} s"
echo "ratio: $(awk -v a="$mb" -v b="$mc" 'BEGIN { printf "%.2f", a / b }') (target <= 1.3)"
echo "qemu-img convert + openssl sha256 of the output (median of $runs): ${mh} s"
echo "ratio to convert+sha256: $(awk -v a="$mb" -v b="$mh" 'BEGIN { printf "%.2f", a / b }') (the same outputs: image + digest)"
echo "sha256 alone needs $(du -m "$work/convert.qcow2" | cut -f1) MiB / ~1.5 GB/s on this CPU: see docs/disk.md (fast path)"
echo "peak RSS of imgbuild build: $((r / 1024)) MB (target < 200 MB)"
echo "images: $nimg images of 2 x ${img_mib} MiB (one layer shared by all): ${layout} MiB in the layout"
echo "build without images: ${t0} s, ${s0} MiB qcow2; with them: ${t1} s, ${s1} MiB qcow2 (virtual disk ${v1} MiB: grown to keep 3x the images free)"
echo "images add: +$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s, +$((s1 - s0)) MiB"
