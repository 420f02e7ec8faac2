#!/usr/bin/env bash
# MSRV check: the library and the binary build with the toolchain that Cargo.toml's
# `rust-version` names, against the locked dependencies (`cargo check`, no codegen).
# The toolchain comes from rustup; its target dir is cached under ~/.cache, so a rerun checks
# only imgbuild itself. tests/it/house_rules.rs checks the cheaper half on every `cargo test`:
# no locked dependency declares a newer rust-version than ours.
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "ci/msrv.sh: no rust-version in Cargo.toml" >&2; exit 1; }
# rustup names toolchains by full version: "1.89" would be a second copy of 1.89.0.
case "$msrv" in *.*.*) toolchain=$msrv ;; *) toolchain=$msrv.0 ;; esac

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "ci/msrv.sh: installing Rust $toolchain (rust-version)" >&2
  if ! timeout 90 rustup toolchain install "$toolchain" --profile minimal >&2; then
    # A CI machine has exactly one toolchain and cannot fetch another (only the package
    # registries are reachable). What still checks rust-version there: clippy's
    # incompatible_msrv lint (on by default, -D warnings in ci/test.sh) refuses std APIs newer
    # than rust-version in our code, and tests/it/house_rules.rs refuses dependencies that need a
    # newer Rust. Only the compile with the old toolchain itself is missing; say so loudly.
    echo "ci/msrv.sh: NOT CHECKED: Rust $toolchain cannot be installed on this machine;" >&2
    echo "ci/msrv.sh: rust-version is covered only by clippy's incompatible_msrv and tests/it/house_rules.rs" >&2
    exit 0
  fi
fi
echo "ci/msrv.sh: cargo +$toolchain check --lib --bins --locked" >&2
CARGO_TARGET_DIR="${IMGBUILD_MSRV_TARGET:-$HOME/.cache/imgbuild-ci/msrv-target}" \
  cargo "+$toolchain" check --lib --bins --locked --quiet
echo "ci/msrv.sh: ok, builds with Rust $toolchain" >&2
