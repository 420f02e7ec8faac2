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

# --- disk: SPDX validator for the build's SBOM (PyPI spdx-tools, in its own venv) ---
if ! command -v pyspdxtools >/dev/null 2>&1; then
  spdx_venv="${IMGBUILD_SPDX_VENV:-$HOME/.cache/imgbuild-ci/spdx-venv}"
  if [ ! -x "$spdx_venv/bin/pyspdxtools" ]; then
    echo "ci/test.sh: installing spdx-tools into $spdx_venv" >&2
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
    fi
    python3 -m venv "$spdx_venv" && "$spdx_venv/bin/pip" install -q spdx-tools==0.8.3
  fi
  export PATH="$PATH:$spdx_venv/bin"
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
