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
  "isoinfo genisoimage"
  "mtype mtools"
  "blkid util-linux"
  "cloud-init cloud-init"
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

# cluster/cloud-init tests: Python jsonschema + PyYAML cross-check the cloud-init schema
if ! python3 -c 'import jsonschema, yaml' >/dev/null 2>&1; then
  echo "ci/test.sh: installing Python jsonschema + pyyaml" >&2
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q jsonschema pyyaml 2>/dev/null ||
      python3 -m pip install -q --break-system-packages jsonschema pyyaml
  else
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-jsonschema python3-yaml >/dev/null
  fi
  python3 -c 'import jsonschema, yaml'
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
