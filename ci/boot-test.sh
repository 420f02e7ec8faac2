#!/usr/bin/env bash
# Proof by boot: build role images with imgbuild from a Debian-made,
# noble-shaped test base and stand-in Kubernetes binaries served by a local mirror (the
# recipe's packages: real Debian .debs from a signed test apt archive, via imgbuild lock),
# generate a cluster and its NoCloud seeds with imgbuild, boot every scenario in QEMU
# (KVM when it really works, else TCG), then read each disk offline and assert.
#
# Usage: ci/boot-test.sh [SCENARIO...]     (default: all but "base")
#   scenarios: worker (+ second boot of the same disk), cp-init, cp-join, late-join,
#              broken-seed, cp-restore, base (boots the bare test base: harness self-check)
# Env: IMGBUILD_TEST_CACHE   cache dir (base image, test apt archive, QEMU) [~/.cache/imgbuild-test]
#      BOOT_TEST_WORK        keep everything in this dir (default: temp dir, removed on success)
#      BOOT_TEST_JOBS        boots in parallel [2]       BOOT_TEST_TIMEOUT  seconds per boot [900]
#      BOOT_TEST_ACCEL       force kvm|tcg               BOOT_TEST_MEM      MiB per VM [1024]
#      BOOT_TEST_REUSE       with BOOT_TEST_WORK: reuse the images/seeds prepared by an earlier run
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=ci/boot/lib.sh
. ci/boot/lib.sh
# shellcheck source=ci/boot/scenarios.sh
. ci/boot/scenarios.sh

t0=$(date +%s)
say() { echo "boot-test: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

cache=${IMGBUILD_TEST_CACHE:-${HOME:-/root}/.cache/imgbuild-test}
mkdir -p "$cache"
jobs=${BOOT_TEST_JOBS:-2}
boot_timeout=${BOOT_TEST_TIMEOUT:-900}
mem=${BOOT_TEST_MEM:-1024}

# Longest first (worker boots twice, broken-seed spends its retry budget), so two slots
# finish together.
all_scenarios=(worker broken-seed cp-init cp-join late-join cp-restore)
if [ $# -gt 0 ]; then scenarios=("$@"); else scenarios=("${all_scenarios[@]}"); fi
for s in "${scenarios[@]}"; do
  case $s in worker | cp-init | cp-join | late-join | broken-seed | cp-restore | base) ;; *) die "unknown scenario $s" ;; esac
done

# ---------------------------------------------------------------- dependencies
deps=(
  "mmdebstrap mmdebstrap" "sgdisk gdisk" "gpg gnupg" "gpg-agent gnupg" "dpkg-deb dpkg" "sfdisk fdisk" "mkfs.vfat dosfstools" "mmd mtools"
  "genisoimage genisoimage" "debugfs e2fsprogs" "qemu-img qemu-utils"
  "docker-registry docker-registry" "busybox busybox-static" "curl curl"
)
missing=()
for d in "${deps[@]}"; do
  read -r cmd pkg <<<"$d"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
/usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (sudo apt-get install -y ${missing[*]})"
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null; }
fi
setup_qemu "$cache" || die "could not set up qemu-system-x86_64"

# ---------------------------------------------------------------- work dir
if [ -n "${BOOT_TEST_WORK:-}" ]; then
  work=$BOOT_TEST_WORK
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/imgbuild-boot-test.XXXXXX")
fi
server_pid=
registry_pid=
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
}
trap cleanup EXIT
say "work dir $work"

# ---------------------------------------------------------------- base image
tb=$(date +%s)
base_dir=$(ci/boot/build-base.sh) || die "building the test base failed"
base_secs=$(($(date +%s) - tb))
base_built=$(cat "$base_dir/build-seconds" 2>/dev/null || echo "?")
say "base: $base_dir (this run ${base_secs}s; built once in ${base_built}s)"

# Kernel for the KVM probe (and the "base" scenario) from the base's BOOT partition.
qemu-img convert -f qcow2 -O raw "$base_dir/base.qcow2" "$work/base.raw"
extract_kernel "$work/base.raw" "$work/base-kernel" >/dev/null || die "no kernel in the test base"
accel=$(probe_accel "$work/base-kernel/vmlinuz")
say "accelerator: $accel"

# ---------------------------------------------------------------- boot one VM
# boot_vm DIR NAME DISK_QCOW2 SEED_ISO KERNEL_DIR EXTRA_CMDLINE [NICS] -> DIR/NAME.serial.log
# NICS: space-separated MAC[@NET] per virtio NIC, each on its own user network
# (restrict=on; NET as slirp's net=, default 10.0.2.0/24); default: one NIC, QEMU's MAC.
# A caller's `guestfwd` (bash's dynamic scope) is a host command that answers the guest's
# TCP connections to 10.0.2.100:80 on the first NIC (slirp lets guestfwd through restrict=on).
boot_vm() {
  local dir=$1 name=$2 disk=$3 seed=$4 kdir=$5 extra=$6 nics=${7:-} rc ts i=0 nic mac net fwd=
  [ -z "${guestfwd:-}" ] || fwd=",guestfwd=tcp:10.0.2.100:80-cmd:$guestfwd"
  local netargs=(-netdev "user,id=n0,restrict=on$fwd" -device "virtio-net-pci,netdev=n0")
  if [ -n "$nics" ]; then
    netargs=()
    for nic in $nics; do
      mac=${nic%%@*}
      net=
      [ "$nic" = "$mac" ] || net=",net=${nic#*@}"
      [ "$i" = 0 ] || fwd=
      netargs+=(-netdev "user,id=n$i,restrict=on$net$fwd" -device "virtio-net-pci,netdev=n$i,mac=$mac")
      i=$((i + 1))
    done
  fi
  local cpu=()
  # Emulated and possibly on a busy host: udev can take longer than systemd's default
  # 90 s to announce /dev/disk/by-label/BOOT, which fails local-fs.target (seen under
  # load). A longer default job timeout (devices included) keeps that from flaking.
  local slow="systemd.default_timeout_start_sec=900"
  [ "$accel" = kvm ] && cpu=(-cpu host)
  ts=$(date +%s)
  set +e
  timeout --kill-after=10 "$boot_timeout" "$QEMU" -L /usr/share/qemu -L /usr/share/seabios \
    -L /usr/lib/ipxe/qemu -accel "$accel" "${cpu[@]}" -m "$mem" -smp 1 \
    -display none -monitor none -no-reboot \
    -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.img" \
    -append "root=LABEL=cloudimg-rootfs ro console=ttyS0 panic=-1 $slow $extra" \
    -drive "file=$disk,format=qcow2,if=virtio,cache=unsafe" \
    -drive "file=$seed,format=raw,if=virtio,readonly=on" \
    "${netargs[@]}" \
    -serial "file:$dir/$name.serial.log" >"$dir/$name.qemu.log" 2>&1
  rc=$?
  set -e
  echo "$name $(($(date +%s) - ts))" >>"$dir/boot-times"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "boot $name: no power-off within ${boot_timeout}s (serial log tail follows)" >"$dir/boot-error"
    tail -n 30 "$dir/$name.serial.log" >>"$dir/boot-error"
    return 1
  elif [ "$rc" != 0 ]; then
    { echo "boot $name: qemu exited $rc"; cat "$dir/$name.qemu.log"; } >"$dir/boot-error"
    return 1
  fi
  grep -q 'IMGBUILD-TEST: boot [0-9]*: powering off' "$dir/$name.serial.log" || {
    echo "boot $name: VM stopped without the test hook's power-off (panic?)" >"$dir/boot-error"
    tail -n 30 "$dir/$name.serial.log" >>"$dir/boot-error"
    return 1
  }
}

# make_seed DIR SRC_DIR -> DIR/seed.iso from SRC_DIR/{user-data,meta-data,network-config}
# plus the TEST-ONLY vendor-data (the capture/power-off hook), by genisoimage: for the
# seeds a scenario writes or edits by hand (the node scenarios boot imgbuild's own ISO).
make_seed() {
  local dir=$1 src=$2 files=()
  mkdir -p "$dir/seed"
  cp "$src/user-data" "$src/meta-data" "$dir/seed/"
  [ -f "$src/network-config" ] && cp "$src/network-config" "$dir/seed/"
  cp ci/boot/guest/vendor-data "$dir/seed/vendor-data"
  for f in user-data meta-data network-config vendor-data; do
    [ -f "$dir/seed/$f" ] && files+=("$f")
  done
  (cd "$dir/seed" && genisoimage -quiet -output ../seed.iso -volid cidata -joliet -rock "${files[@]}")
}

# read_disk DIR NAME DISK_QCOW2: raw copy + /var/lib/imgbuild-test -> DIR/NAME.disk/
# (and DIR/NAME.raw when keep_raw is set)
read_disk() {
  local dir=$1 name=$2 disk=$3
  qemu-img convert -f qcow2 -O raw "$disk" "$dir/$name.raw"
  rm -rf "$dir/$name.disk" "$dir/$name.rdump"
  # rdump copies the directory itself into the destination.
  disk_rdump "$dir/$name.raw" cloudimg-rootfs /var/lib/imgbuild-test "$dir/$name.rdump" \
    && [ -d "$dir/$name.rdump/imgbuild-test" ] \
    || { echo "no /var/lib/imgbuild-test on the disk after $name" >"$dir/boot-error"; return 1; }
  mv "$dir/$name.rdump/imgbuild-test" "$dir/$name.disk"
  rm -rf "$dir/$name.rdump"
  # keep_raw (set by a scenario): the raw copy stays for a scan of the whole disk
  [ -n "${keep_raw:-}" ] || rm -f "$dir/$name.raw"
}

# ---------------------------------------------------------------- scenario runner
run_scenario() {
  local s=$1 dir ts
  dir="$work/scenario-$s"
  rm -rf "$dir" && mkdir -p "$dir"
  ts=$(date +%s)
  if (set -euo pipefail; "scenario_${s//-/_}" "$dir") >"$dir/log" 2>&1; then
    echo "PASS" >"$dir/result"
  else
    [ -s "$dir/result" ] || echo "FAIL" >"$dir/result"
  fi
  echo "$(($(date +%s) - ts))" >"$dir/seconds"
}

if [ -n "${BOOT_TEST_REUSE:-}" ] && [ -s "$work/nodes" ]; then
  say "BOOT_TEST_REUSE: reusing images, cluster and seeds in $work"
elif ! prepare >"$work/prepare.log" 2>&1; then
  cat "$work/prepare.log" >&2
  die "preparing images and seeds failed (log above)"
fi

# At most $jobs boots at a time (they are CPU-bound); the mirror server is a job too,
# so count the scenario PIDs only.
pids=()
for s in "${scenarios[@]}"; do
  while :; do
    running=()
    for p in ${pids[@]+"${pids[@]}"}; do kill -0 "$p" 2>/dev/null && running+=("$p"); done
    pids=(${running[@]+"${running[@]}"})
    [ ${#pids[@]} -lt "$jobs" ] && break
    sleep 2
  done
  say "scenario $s: starting"
  run_scenario "$s" &
  pids+=($!)
done
for p in ${pids[@]+"${pids[@]}"}; do wait "$p" || true; done

fail=0
npass=0
nfail=0
echo
printf '%-12s %-6s %8s  %s\n' scenario result seconds "boots (seconds each)"
for s in "${scenarios[@]}"; do
  dir="$work/scenario-$s"
  r=$(head -n1 "$dir/result" 2>/dev/null || echo FAIL)
  printf '%-12s %-6s %8s  %s\n' "$s" "$r" "$(cat "$dir/seconds" 2>/dev/null || echo '?')" \
    "$(tr '\n' ' ' <"$dir/boot-times" 2>/dev/null || true)"
  case $r in
  PASS) npass=$((npass + 1)) ;;
  SKIP*) ;;
  *)
    fail=1
    nfail=$((nfail + 1))
    ;;
  esac
done
echo
for s in "${scenarios[@]}"; do
  dir="$work/scenario-$s"
  r=$(head -n1 "$dir/result" 2>/dev/null || echo FAIL)
  [ "$r" = PASS ] && grep -q '^SKIP' "$dir/log" 2>/dev/null && sed -n 's/^SKIP/  '"$s"': SKIP/p' "$dir/log"
  sed -n 's/^packages:/  '"$s"': packages:/p' "$dir/log" 2>/dev/null || true
  sed -n 's/^images:/  '"$s"': images:/p' "$dir/log" 2>/dev/null || true
  sed -n 's/^addons:/  '"$s"': addons:/p' "$dir/log" 2>/dev/null || true
  if [ "$r" != PASS ]; then
    echo "---- $s: $r"
    grep -a '^FAIL' "$dir/log" || true
    echo "(last lines of $dir/log:)"
    tail -n 15 "$dir/log"
    [ -f "$dir/boot-error" ] && cat "$dir/boot-error"
  fi
done
say "accelerator $accel; base ${base_secs}s this run (cold build ${base_built}s); total $(($(date +%s) - t0))s"
if [ "$fail" = 0 ] && [ -z "${BOOT_TEST_WORK:-}" ]; then
  rm -rf "$work"
else
  say "kept $work"
fi
# The plain summary line CI reads (scenarios, not individual assertions).
echo "boot-scenarios: $npass passed, $nfail failed"
exit "$fail"
