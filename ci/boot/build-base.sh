#!/usr/bin/env bash
# Build (or reuse from the cache) a BOOTABLE stand-in for the Ubuntu 24.04 cloud image,
# made from Debian 12 packages because Ubuntu's archive is not reachable from CI.
#
# Laid out like noble's cloud image (livecd-rootfs disk-image-uefi.binary): GPT, 3.5 GiB
# virtual, 14 BIOS boot (4 MiB), 15 ESP vfat "UEFI" (106 MiB), 16 ext4 "BOOT" (/boot,
# ends at 1 GiB), 1 ext4 "cloudimg-rootfs" last on disk; fstab by label; qcow2.
# No mount and no loop device: the filesystems are made with `mke2fs -d` / mtools at
# their partition offsets inside the raw file. mmdebstrap needs root or user namespaces.
#
# Usage: ci/boot/build-base.sh            -> prints the cache dir holding base.qcow2
#        ci/boot/build-base.sh --key      -> prints the cache key only
# Cache: ${IMGBUILD_TEST_CACHE:-$HOME/.cache/imgbuild-test}/base/<key>/
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

suite=bookworm
mirror=${IMGBUILD_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${IMGBUILD_TEST_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

packages=$(grep -v '^[[:space:]]*\(#\|$\)' "$here/base-packages.txt" | tr '\n' ',' | sed 's/,$//')

# The key covers everything that shapes the image; the archive's state is not part of it
# (a cached base is reused until an input here changes or the cache is cleared).
key=$(cat "$here/build-base.sh" "$here/base-assemble.sh" "$here/base-packages.txt" \
  | { cat; echo "$suite $mirror $security"; } | sha256sum | cut -c1-16)
if [ "${1:-}" = --key ]; then
  echo "$key"
  exit 0
fi

cache=${IMGBUILD_TEST_CACHE:-${HOME:-/root}/.cache/imgbuild-test}
dest="$cache/base/$key"
if [ -s "$dest/base.qcow2" ] && [ -s "$dest/base.qcow2.sha256" ]; then
  echo "build-base: cached $dest" >&2
  echo "$dest"
  exit 0
fi

for t in mmdebstrap mke2fs sgdisk mkfs.vfat mmd qemu-img; do
  command -v "$t" >/dev/null || { echo "build-base: missing tool $t" >&2; exit 1; }
done

mkdir -p "$cache/base"
work=$(mktemp -d "$cache/base/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

echo "build-base: mmdebstrap $suite ($packages) ..." >&2
# --format=null: the customize hook assembles the disk from the finished tree itself,
# still inside mmdebstrap's (possibly unshared) namespace, so file owners are right
# even without real root.
mmdebstrap --variant=minbase --mode=auto --format=null \
  --include="$packages" \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --aptopt='Acquire::Retries "3"' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/kernel"' \
  --essential-hook='printf "MODULES=list\nCOMPRESS=zstd\n" > "$1/etc/initramfs-tools/conf.d/imgbuild-test"' \
  --essential-hook='printf "%s\n" virtio_pci virtio_blk virtio_scsi sd_mod ext4 > "$1/etc/initramfs-tools/modules"' \
  --essential-hook='printf "do_symlinks = yes\nlink_in_boot = yes\n" > "$1/etc/kernel-img.conf"' \
  --customize-hook="\"$here/base-assemble.sh\" \"\$1\" \"$work\"" \
  "$suite" /dev/null \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main" \
  >"$work/mmdebstrap.log" 2>&1 || {
  tail -n 40 "$work/mmdebstrap.log" >&2
  echo "build-base: mmdebstrap failed (log above)" >&2
  exit 1
}

qemu-img convert -f raw -O qcow2 -o compat=1.1 "$work/disk.raw" "$work/base.qcow2"
(cd "$work" && sha256sum base.qcow2 >base.qcow2.sha256)
secs=$(($(date +%s) - start))
echo "$secs" >"$work/build-seconds"
rm -f "$work/disk.raw"
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
echo "build-base: built $dest in ${secs}s" >&2
echo "$dest"
