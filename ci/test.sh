#!/usr/bin/env bash
# The project's test command (README "Quick start"; called by .ci/run).
# Installs what the suite needs when it is missing, then runs format, lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
deps=(
  "debugfs e2fsprogs"
  "sgdisk gdisk"
  "sfdisk fdisk"
  "mkfs.vfat dosfstools"
  "mcopy mtools"
  "genisoimage genisoimage"
  "xorriso xorriso"
  "shellcheck shellcheck"
  "qemu-img qemu-utils"
  "curl curl"
  "openssl openssl"
  "nft nftables"
  "sshd openssh-server"
  "systemd-analyze systemd"
  "gpg gnupg"
  "gpg-agent gnupg"
  "dpkg-deb dpkg"
  "xz xz-utils"
)
missing=()
for d in "${deps[@]}"; do
  set -- $d
  if ! command -v "$1" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$1" ] && ! [ -x "/sbin/$1" ]; then
    missing+=("$2")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "ci/test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "ci/test.sh: missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
