# shellcheck shell=bash
# Helpers of ci/boot-test.sh: disk reading (offline, no mount) and QEMU.

# Byte offset of the ext4 filesystem labelled $2 inside raw disk $1 (by label, not by
# partition number: noble's /boot moved from 16 to 13 in later releases).
part_offset_by_label() {
  local disk=$1 label=$2 start
  for start in $(sfdisk --json "$disk" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    print(p["start"])'); do
    if dumpe2fs -h "$disk?offset=$((start * 512))" 2>/dev/null \
      | grep -qx "Filesystem volume name: *$label"; then
      echo $((start * 512))
      return 0
    fi
  done
  echo "no ext4 partition labelled $label in $disk" >&2
  return 1
}

# debugfs that fails on any error line (debugfs itself exits 0 when a command fails).
debugfs_ro() {
  local fs=$1 cmd=$2 err
  err=$(mktemp)
  debugfs -R "$cmd" "$fs" 2>"$err"
  if grep -v '^debugfs [0-9.]* (' "$err" | grep -q .; then
    cat "$err" >&2
    rm -f "$err"
    return 1
  fi
  rm -f "$err"
}

# Copy directory $3 of the ext4 labelled $2 in raw disk $1 into host dir $4.
disk_rdump() {
  local off
  off=$(part_offset_by_label "$1" "$2") || return 1
  mkdir -p "$4"
  debugfs_ro "$1?offset=$off" "rdump $3 $4"
}

# Print file $3 of the ext4 labelled $2 in raw disk $1 (fails when missing).
disk_cat() {
  local off
  off=$(part_offset_by_label "$1" "$2") || return 1
  debugfs_ro "$1?offset=$off" "cat $3"
}

# True when path $3 exists on the ext4 labelled $2.
disk_exists() {
  local off
  off=$(part_offset_by_label "$1" "$2") || return 1
  debugfs -R "stat $3" "$1?offset=$off" 2>&1 | grep -q '^Inode:'
}

# Extract the newest kernel and its initrd from the BOOT partition of raw disk $1 into
# dir $2 (vmlinuz, initrd.img); prints the kernel version.
extract_kernel() {
  local disk=$1 dir=$2 off ver
  off=$(part_offset_by_label "$disk" BOOT) || return 1
  ver=$(debugfs -R 'ls -p /' "$disk?offset=$off" 2>/dev/null \
    | awk -F/ '$6 ~ /^vmlinuz-/ {sub(/^vmlinuz-/, "", $6); print $6}' | sort -V | tail -n1)
  [ -n "$ver" ] || { echo "no vmlinuz-* on BOOT of $disk" >&2; return 1; }
  mkdir -p "$dir"
  rm -f "$dir/vmlinuz" "$dir/initrd.img"
  debugfs_ro "$disk?offset=$off" "dump /vmlinuz-$ver $dir/vmlinuz" || return 1
  debugfs_ro "$disk?offset=$off" "dump /initrd.img-$ver $dir/initrd.img" || return 1
  echo "$ver"
}

# Install QEMU by validators.md route (b): Debian's qemu-system-x86 7.2 unpacked into
# a folder (keeps the preinstalled qemu-utils 10). Sets QEMU and QEMU_MODULE_DIR.
QEMU_LIBS="ipxe-qemu libbrlapi0.8 libcacard0 libcapstone4 libdaxctl1 libepoxy0 libexecs0 libfdt1
  libgstreamer-plugins-base1.0-0 libibverbs1 libndctl6 libnl-3-200 libnl-route-3-200 libopus0
  liborc-0.4-0 libpmem1 librdmacm1 libslirp0 libsndio7.0 libspice-server1 libusb-1.0-0
  libusbredirparser1 libvdeplug2 qemu-system-data seabios"
setup_qemu() {
  local cache=$1 dir
  if command -v qemu-system-x86_64 >/dev/null && [ -z "${BOOT_TEST_QEMU_UNPACKED:-}" ]; then
    QEMU=$(command -v qemu-system-x86_64)
    return 0
  fi
  dir="$cache/qemu-system-x86"
  if ! [ -x "$dir/Q/usr/bin/qemu-system-x86_64" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "boot-test: no qemu-system-x86_64; run as root once (installs $QEMU_LIBS)" >&2
      return 1
    fi
    # shellcheck disable=SC2086 # a word list
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $QEMU_LIBS >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $QEMU_LIBS >/dev/null; } || return 1
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    # (apt-get download as root warns that _apt cannot write here; harmless)
    (cd "$dir.tmp" && apt-get download -qq qemu-system-x86 qemu-system-common 2>/dev/null \
      && for d in qemu-system-*.deb; do dpkg -x "$d" Q; done && rm -f qemu-system-*.deb) || return 1
    [ -x "$dir.tmp/Q/usr/bin/qemu-system-x86_64" ] || return 1
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  QEMU="$dir/Q/usr/bin/qemu-system-x86_64"
  export QEMU_MODULE_DIR="$dir/Q/usr/lib/x86_64-linux-gnu/qemu"
}

# qemu-system-x86_64 with the firmware search path Debian's split packages need.
qemu() {
  "$QEMU" -L "${QEMU_DATA:-/usr/share/qemu}" -L /usr/share/seabios -L /usr/lib/ipxe/qemu "$@"
}

# Does -accel kvm actually run a guest here? (/dev/kvm can exist and still fail.)
# Boots the kernel without root: it must reach its "VFS: Unable to mount root" panic.
probe_accel() {
  local kernel=$1 log
  if [ -n "${BOOT_TEST_ACCEL:-}" ]; then
    echo "$BOOT_TEST_ACCEL"
    return 0
  fi
  if ! [ -w /dev/kvm ]; then
    echo tcg
    return 0
  fi
  log=$(mktemp)
  (timeout 30 "$QEMU" -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -m 256 \
    -display none -monitor none -no-reboot -nic none -serial "file:$log" \
    -kernel "$kernel" -append "console=ttyS0 panic=-1") >/dev/null 2>&1 || true
  if grep -q 'Kernel panic\|VFS: Unable to mount root' "$log"; then echo kvm; else echo tcg; fi
  rm -f "$log"
}
