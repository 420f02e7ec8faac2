#!/usr/bin/env bash
# Benchmark: warm `imgbuild build` (release binary, cache already filled) against the
# floor — writing the same output bytes once and hashing them (what a build must
# publish: the image and its sha256) — and against `qemu-img convert -O qcow2` of the
# base, all measured in the same run.
#
# The base: 3.5 GiB virtual, noble's partition layout (14 BIOS boot, 15 ESP, 16 BOOT,
# 1 root last on disk). Profiles (BENCH_PROFILE):
#   realistic (default): ~600 MiB of base content and artifacts the size of the real
#     ones (kubelet 100 MiB, ...; ~340 MiB for a worker, ~500 MiB for a control plane);
#     every byte generated deterministically, about as compressible as the real
#     binaries (zstd keeps ~40 %); cached under BENCH_CACHE (~/.cache/imgbuild-bench)
#     by a hash of this script.
#   standin: 640 MiB of incompressible base content, 4 MiB artifacts (BENCH_ARTIFACT_MIB).
# Roles: BENCH_ROLES (default "worker control-plane"). Formats: BENCH_FORMATS (default
# "qcow2 qcow2+compress"; e.g. "qcow2 qcow2+compress vmdk ova vhdx vhd"; qcow2 first):
# each is timed and put as a ratio to the qcow2 build (time and output size). Every run's time is printed (the spread), then the median of BENCH_RUNS
# (default 3). Peak RSS (/usr/bin/time -v) of every build is printed; target < 200 MB.
#
# BENCH_BIN=PATH benchmarks that imgbuild binary instead of building this tree's (e.g. an
# older release, to compare before/after against floors measured in the same run).
#
# Usage: ci/bench-build.sh [WORKDIR]   (needs sgdisk, mke2fs, qemu-img, python3, /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
runs=${BENCH_RUNS:-3}
profile=${BENCH_PROFILE:-realistic}
roles=${BENCH_ROLES:-worker control-plane}
formats=${BENCH_FORMATS:-qcow2 qcow2+compress}
for t in sgdisk mke2fs qemu-img tar gzip python3 openssl; do
  command -v "$t" >/dev/null || { echo "bench-build: $t missing" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench-build: /usr/bin/time missing (apt-get install -y time)" >&2; exit 1; }
case $profile in realistic | standin) ;; *) echo "bench-build: BENCH_PROFILE is realistic or standin" >&2; exit 2 ;; esac

work=${1:-$(mktemp -d)}
mkdir -p "$work"
trap 'rm -rf "$work"/out "$work"/floor.img "$work"/convert.qcow2' EXIT
# Inputs are cached by a hash of what makes them: the generator, the base recipe
# and sizes below (between the markers), and the profile's knobs.
key=$( (sed -n '/^# >>> inputs/,/^# <<< inputs/p' "$0"; echo "$profile ${BENCH_ARTIFACT_MIB:-4}") | sha256sum | cut -c1-16)
inputs=${BENCH_CACHE:-$HOME/.cache/imgbuild-bench}/$profile-$key
mkdir -p "$inputs"
echo "bench-build: inputs in $inputs" >&2

# >>> inputs
# gen FILE MIB SEED: deterministic bytes shaped like program binaries: per 64 KiB,
# 24 KiB of pseudo-random bytes and 40 KiB of repeats of a 4 KiB pseudo-random
# "vocabulary" with small changes (zstd -3 keeps ~40 %, as it does of kubelet).
gen() {
  python3 - "$1" "$2" "$3" <<'EOF'
import random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = random.Random(seed)
vocab = r.randbytes(4096)
with open(path, "wb") as f:
    for _ in range(mib * 16):
        f.write(r.randbytes(24 << 10))
        off = r.randrange(4096)
        f.write((vocab[off:] + vocab[:off]) * 10)
EOF
}
# Random bytes (incompressible) of the stand-in profile, also deterministic.
rnd_bytes() { openssl enc -aes-128-ctr -pass "pass:$3" -nosalt -pbkdf2 -in /dev/zero 2>/dev/null | head -c "$(($2 << 20))" >"$1"; }
fill() { if [ "$profile" = realistic ]; then gen "$@"; else rnd_bytes "$@"; fi; }

# --- base image: 3.5 GiB, noble layout ------------------------------------------
base=$inputs/base.qcow2
if [ ! -f "$base" ]; then
  echo "bench-build: creating the base image" >&2
  raw=$inputs/base.raw
  rm -f "$raw"
  truncate -s 3584M "$raw"
  sgdisk -Z -o -n 14:2048:+4M -t 14:EF02 -n 15:0:+106M -t 15:EF00 -n 16:0:+913M -t 16:EA00 \
    -n 1:0:0 -t 1:8300 "$raw" >/dev/null
  start() { sgdisk -i "$1" "$raw" | awk '/First sector/ {print $3}'; }
  last() { sgdisk -i "$1" "$raw" | awk '/Last sector/ {print $3}'; }
  tree=$inputs/root-tree
  rm -rf "$tree"
  mkdir -p "$tree/etc" "$tree/var/lib/dpkg" "$tree/usr/local/bin" "$tree/usr/share/data" \
    "$tree/etc/systemd/system/multi-user.target.wants"
  printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\nID=ubuntu\n' >"$tree/etc/os-release"
  printf 'Package: base-files\nStatus: install ok installed\nVersion: 13ubuntu10.1\n\n' >"$tree/var/lib/dpkg/status"
  if [ "$profile" = realistic ]; then
    # noble's root holds ~600 MiB in many files: 150 files of 4 MiB here
    for i in $(seq 1 150); do gen "$tree/usr/share/data/blob$i" 4 "base-$i"; done
  else
    for i in $(seq 1 10); do rnd_bytes "$tree/usr/share/data/blob$i" 64 "base-$i"; done
  fi
  s1=$(start 1); e1=$(last 1); s16=$(start 16); e16=$(last 16)
  E2FSPROGS_FAKE_TIME=1724198400 mke2fs -q -F -t ext4 -b 4096 -L cloudimg-rootfs -U clear \
    -E offset=$((s1 * 512)),hash_seed=00000000-0000-0000-0000-000000000000 -d "$tree" "$raw" \
    $(((e1 - s1 + 1) * 512 / 4096))
  E2FSPROGS_FAKE_TIME=1724198400 mke2fs -q -F -t ext4 -b 4096 -L BOOT -U clear -E offset=$((s16 * 512)) "$raw" \
    $(((e16 - s16 + 1) * 512 / 4096))
  qemu-img convert -f raw -O qcow2 "$raw" "$base.tmp"
  mv "$base.tmp" "$base"
  rm -rf "$raw" "$tree"
fi

# --- artifacts shaped like the real downloads, pre-filled cache, recipe ----------
# name MiB (realistic profile; approximate sizes of the v1.30.3 / containerd 1.7 /
# etcd 3.5 / helm 3 amd64 binaries)
declare -A size=(
  [kubeadm]=48 [kubelet]=100 [kubectl]=48 [runc]=10 [containerd]=38 [containerd-shim-runc-v2]=12
  [ctr]=18 [bridge]=4 [host-local]=3 [loopback]=3 [portmap]=4 [crictl]=45
  [etcd]=22 [etcdctl]=17 [etcdutl]=15 [helm]=50
)
mib() { if [ "$profile" = realistic ]; then echo "${size[$1]}"; else echo "${BENCH_ARTIFACT_MIB:-4}"; fi; }
art=$inputs/artifacts
if [ ! -f "$art/.done" ]; then
  echo "bench-build: creating the artifacts" >&2
  rm -rf "$art"
  mkdir -p "$art/t"
  mk() { fill "$1" "$(mib "$(basename "$1")")" "art-$(basename "$1")"; chmod 755 "$1"; }
  for n in kubeadm kubelet kubectl runc; do mk "$art/$n"; done
  mkdir -p "$art/t/containerd/bin" "$art/t/cni" "$art/t/crictl" "$art/t/etcd/etcd-v3.5.12-linux-amd64" "$art/t/helm/linux-amd64"
  for n in containerd containerd-shim-runc-v2 ctr; do mk "$art/t/containerd/bin/$n"; done
  for n in bridge host-local loopback portmap; do mk "$art/t/cni/$n"; done
  mk "$art/t/crictl/crictl"
  for n in etcd etcdctl etcdutl; do mk "$art/t/etcd/etcd-v3.5.12-linux-amd64/$n"; done
  mk "$art/t/helm/linux-amd64/helm"
  # Fixed owners and times: the same tarballs every time.
  tgz() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1724198400 -cf - -C "$2" "$3" | gzip -n -1 >"$1"; }
  tgz "$art/containerd" "$art/t/containerd" bin
  tgz "$art/cni-plugins" "$art/t/cni" .
  tgz "$art/crictl" "$art/t/crictl" crictl
  tgz "$art/etcd" "$art/t/etcd" etcd-v3.5.12-linux-amd64
  tgz "$art/helm" "$art/t/helm" linux-amd64
  # Add-on charts (control plane only, but the recipe pins them for every role).
  for n in cilium metrics-server ingress-nginx; do
    mkdir -p "$art/t/$n/$n" && printf 'apiVersion: v2\nname: %s\nversion: 0.0.0\n' "$n" >"$art/t/$n/$n/Chart.yaml"
    tgz "$art/$n" "$art/t/$n" "$n"
  done
  rm -rf "$art/t"
  touch "$art/.done"
fi
# <<< inputs
cache=$work/cache
mkdir -p "$cache/sha256"
# The recipe lists the base, then the artifacts in this order; each has one amd64 line.
digests=()
for f in "$base" "$art"/{kubeadm,kubelet,kubectl,containerd,runc,cni-plugins,crictl,etcd,helm,cilium,metrics-server,ingress-nginx}; do
  d=$(sha256sum "$f" | cut -d' ' -f1)
  digests+=("$d")
  # a hard link when the cache is on the same filesystem (no 1 GiB copy)
  [ -f "$cache/sha256/$d" ] || ln "$f" "$cache/sha256/$d" 2>/dev/null || cp "$f" "$cache/sha256/$d"
done
recipe=$work/recipe.yaml
# The optional profiles' charts (a `chart:` repository, no digest until `imgbuild lock
# --profile`) are dropped: an unlocked chart stops a control-plane plan.
awk 'function flush() { if (!drop) printf "%s", buf; buf = ""; drop = 0 }
  /^[a-z_]+:/ { flush(); inart = /^artifacts:/; print; next }
  inart && /^  - name: / { flush() }
  inart { buf = buf $0 "\n"; if (/^    chart:/) drop = 1; next }
  { print }
  END { flush() }' image-recipes/ubuntu-24.04-k8s-v1.30.3.yaml |
  awk -v list="${digests[*]}" 'BEGIN { n = split(list, d, " "); i = 0 }
  /^(packages|images|addons):/ { skip = 1 } /^[a-z_]+:/ && !/^(packages|images|addons):/ { skip = 0 }
  /^disk_size:/ { next }
  skip { next }
  /^ *amd64: [0-9a-f]+$/ { i++; sub(/[0-9a-f]+$/, d[i]) } { print }
  /^      - https:\/\/dl\.k8s\.io\// { print "    signature: none" }' >"$recipe"
# (The Ubuntu packages section is dropped: it needs the Ubuntu archive or a lock file. The
# container images and add-ons too: the images run is below. disk_size too: the baseline
# converts the base at its own size. The stand-ins of the dl.k8s.io binaries carry no
# cosign signature: `signature: none`.)

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
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$(realpath "$BENCH_BIN")
else
  echo "bench-build: building release binary" >&2
  cargo build --release --quiet
  bin=$PWD/target/release/imgbuild
fi
secs() { awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$1"; }
rss() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
build() { # ROLE FORMAT [BUILD ARGS...]: its timestamped stage lines go to build.log
  local role=$1 fmt=$2
  shift 2
  rm -rf "$work/out"
  /usr/bin/time -v -o "$work/time.txt" "$bin" build --offline --role "$role" --format "$fmt" "$@" \
    --recipe "$recipe" --cache-dir "$cache" --output "$work/out" >/dev/null 2>"$work/build.log"
}
out_file() { find "$work/out" -maxdepth 1 -type f -name "*.$1" | head -n1; }
# The floor: the same output bytes written once (from the page cache, as a warm build
# reads its inputs) and hashed in the same pass.
floor() {
  rm -f "$work/floor.img"
  /usr/bin/time -v -o "$work/time-floor.txt" sh -c 'tee "$2" <"$1" | openssl dgst -sha256 >/dev/null' _ \
    "$1" "$work/floor.img"
}
convert() {
  rm -f "$work/convert.qcow2"
  /usr/bin/time -v -o "$work/time-convert.txt" qemu-img convert -O qcow2 "$base" "$work/convert.qcow2"
}

status=0
echo "profile: $profile; base: 3.5 GiB virtual, $(du -m "$base" | cut -f1) MiB qcow2"
for role in $roles; do
  # The warm-up also keeps the archives' members in the cache (what a user's first build
  # does): the timed builds are warm ones.
  echo "bench-build: $role: warm-up" >&2
  build "$role" qcow2
  convert
  declare -A med=()
  for variant in $formats; do
    # "qcow2+compress" is the qcow2 build with --compress
    fmt=${variant%+compress}
    extra=()
    [ "$variant" = "$fmt" ] || extra=(--compress)
    b=(); fl=(); c=(); r=0
    for i in $(seq 1 "$runs"); do
      build "$role" "$fmt" "${extra[@]}"
      b+=("$(secs "$work/time.txt")")
      x=$(rss "$work/time.txt"); [ "$x" -gt "$r" ] && r=$x
      img=$(out_file "$fmt")
      floor "$img"
      fl+=("$(secs "$work/time-floor.txt")")
      if [ "$variant" = qcow2 ]; then convert; c+=("$(secs "$work/time-convert.txt")"); fi
    done
    mb=$(median "${b[@]}"); mf=$(median "${fl[@]}")
    med[$variant]=$mb
    echo "$role $variant: output $(du -m --apparent-size "$img" | cut -f1) MiB"
    echo "  imgbuild build: median ${mb} s (runs: ${b[*]}); peak RSS $((r / 1024)) MB (target < 200 MB)"
    echo "  floor (write the same bytes once + sha256): median ${mf} s (runs: ${fl[*]})"
    echo "  build / floor: $(ratio "$mb" "$mf")"
    if [ "$variant" = qcow2 ]; then
      mc=$(median "${c[@]}")
      echo "  qemu-img convert -O qcow2 of the base: median ${mc} s (runs: ${c[*]}); build / convert: $(ratio "$mb" "$mc")"
      echo "  where the time goes (last run's stage lines):"
      grep -E '^\[ *[0-9.]+s\]' "$work/build.log" | sed 's/^/    /'
    else
      echo "  $variant build / qcow2 build: $(ratio "$mb" "${med[qcow2]:-$mb}")"
      [ -z "${med[qcow2]:-}" ] || echo "  output size / qcow2 output size: $(ratio "$(stat -c %s "$img")" "${qsize:-1}")"
    fi
    [ "$variant" != qcow2 ] || qsize=$(stat -c %s "$img")
    [ $((r / 1024)) -lt 200 ] || status=1
  done
  unset med
  if [ "$profile" = realistic ]; then
    layer=0
    case $role in
      worker) list="kubeadm kubelet kubectl runc containerd containerd-shim-runc-v2 ctr bridge host-local loopback portmap crictl" ;;
      *) list="kubeadm kubelet kubectl runc containerd containerd-shim-runc-v2 ctr bridge host-local loopback portmap crictl etcd etcdctl etcdutl helm" ;;
    esac
    for n in $list; do layer=$((layer + ${size[$n]})); done
    echo "  ($role layer: ~${layer} MiB of binaries)"
  fi
done
# With and without the images (same role, qcow2, one warm build each): time and bytes.
role=${roles%% *}
build "$role" qcow2
t0=$(secs "$work/time.txt")
s0=$(du -m "$(out_file qcow2)" | cut -f1)
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
echo "images ($role): $nimg images of 2 x ${img_mib} MiB (one layer shared by all): ${layout} MiB in the layout"
echo "  build without images: ${t0} s, ${s0} MiB qcow2; with them: ${t1} s, ${s1} MiB qcow2 (virtual disk ${v1} MiB: grown to keep 3x the images free)"
echo "  images add: +$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s, +$((s1 - s0)) MiB"
exit $status
