#!/usr/bin/env bash
# mmdebstrap customize hook of build-base.sh: finish the tree in $1 and assemble the
# noble-shaped disk at $2/disk.raw (no mount, no loop device).
set -euo pipefail
root=$1
work=$2
export PATH="$PATH:/usr/sbin:/sbin"

# --- finish the tree (only what noble's image also has; no test behaviour here) ---
cat >"$root/etc/fstab" <<'FSTAB'
LABEL=cloudimg-rootfs	/	 ext4	discard,commit=30,errors=remount-ro	0 1
LABEL=BOOT	/boot	ext4	defaults	0 2
LABEL=UEFI	/boot/efi	vfat	umask=0077	0 1
FSTAB
echo localhost >"$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# Empty machine-id: systemd treats the first boot as first boot (as in cloud images).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Host keys are per machine: cloud-init generates them on first boot.
rm -f "$root"/etc/ssh/ssh_host_*
# Only NoCloud (plus the None fallback): no probing for metadata services.
printf 'datasource_list: [ NoCloud, None ]\n' >"$root/etc/cloud/cloud.cfg.d/90_dpkg.cfg"
# cloud-init's default locale is en_US.UTF-8: have it generated and set already, so the
# locale module has nothing to do (noble ships its locale pre-generated as well).
echo 'en_US.UTF-8 UTF-8' >"$root/etc/locale.gen"
chroot "$root" locale-gen >/dev/null
echo 'LANG=en_US.UTF-8' >"$root/etc/default/locale"
# Under TCG an RSA-3072 (and DSA) host key costs ~20 s per boot; the boot tests do not
# need them. (Test base only: the product image never carries this file.)
printf 'ssh_genkeytypes: [ecdsa, ed25519]\n' >"$root/etc/cloud/cloud.cfg.d/91_imgbuild_test_base.cfg"
# noble configures its NICs with networkd through netplan (cloud-init renders netplan
# when it is installed), and resolves through systemd-resolved's stub, as here.
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages.txt"
ls "$root/boot" | sed -n 's/^vmlinuz-//p' | head -n1 >"$work/kernel-version"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
rm -f "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/etc/ssh/ssh_host_*

# --- stage the two ext4 trees (skipping the hook-time mounts: /proc, /sys, /dev/*) ---
stage="$work/stage"
mkdir -p "$stage/root" "$stage/boot"
cp -ax "$root/." "$stage/root/"
# /boot's content lives on the BOOT partition; the root keeps the empty mount point.
( shopt -s dotglob nullglob; mv "$stage/root/boot/"* "$stage/boot/" )
mkdir -p "$stage/boot/efi"

# --- partition: noble amd64 layout, 3.5 GiB ---
disk="$work/disk.raw"
rm -f "$disk"
truncate -s 3758096384 "$disk"
sgdisk -Z "$disk" >/dev/null 2>&1 || true
sgdisk --new=14::+4M --typecode=14:ef02 \
  --new=15::+106M --typecode=15:ef00 \
  --new=16::1G --typecode=16:ea00 \
  --new=1:: --typecode=1:8300 "$disk" >/dev/null
sgdisk -v "$disk" | grep -q 'No problems found' || { sgdisk -v "$disk" >&2; exit 1; }

first() { sgdisk -i "$1" "$disk" | sed -n 's/^First sector: \([0-9]*\).*/\1/p'; }
last() { sgdisk -i "$1" "$disk" | sed -n 's/^Last sector: \([0-9]*\).*/\1/p'; }
blocks() { echo $(( ($(last "$1") - $(first "$1") + 1) * 512 / 4096 )); }

# ESP: FAT32 with 1-sector clusters (a 106 MiB FAT32 has too few clusters otherwise).
esp_first=$(first 15)
mkfs.vfat -F 32 -s 1 -n UEFI --offset "$esp_first" "$disk" \
  $(( ($(last 15) - esp_first + 1) / 2 )) >/dev/null
mmd -i "$disk@@$((esp_first * 512))" ::/EFI

mke2fs -q -F -t ext4 -b 4096 -L BOOT -E "offset=$(( $(first 16) * 512 ))" \
  -d "$stage/boot" "$disk" "$(blocks 16)"
# mkfs options as livecd-rootfs uses for cloudimg-rootfs.
mke2fs -q -F -t ext4 -b 4096 -i 8192 -m 0 -L cloudimg-rootfs \
  -E "offset=$(( $(first 1) * 512 )),resize=536870912" \
  -d "$stage/root" "$disk" "$(blocks 1)"
sgdisk -v "$disk" | grep -q 'No problems found' || { sgdisk -v "$disk" >&2; exit 1; }
e2fsck -fn "$disk?offset=$(( $(first 1) * 512 ))" >/dev/null
e2fsck -fn "$disk?offset=$(( $(first 16) * 512 ))" >/dev/null
rm -rf "$stage"
