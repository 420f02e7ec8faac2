//! imgbuild: immutable Kubernetes node images from Ubuntu cloud images, built
//! offline and rootless, plus the cloud-init that makes VMs self-join a cluster.
//!
//! Data flow of `imgbuild build`:
//! [`recipe`] → [`plan`] → [`fetch`] (into the [`cache`]) → [`layer`] → [`disk`] → [`output`].
//! Of `imgbuild cluster` / `imgbuild cloud-init`: [`cluster`] → [`cloudinit`].
//!
//! Dependencies point down: [`cmd`] (clap types, dispatch, exit codes) uses everything;
//! nothing uses [`cmd`]; [`types`], [`exit`], [`reporter`] and [`keys`] use nothing of
//! the crate. `tests/it/module_graph.rs` fails on any cycle between these modules.

// Library code never panics on a failure and never prints: errors travel up with context to
// the command layer, progress goes through `reporter::Reporter`, data to stdout only from
// `cmd`. Unit tests may (clippy.toml `allow-*-in-tests`). The rules for every target are in
// Cargo.toml's [lints].
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

pub mod apt;
pub mod bearer;
pub mod build;
pub mod cache;
pub mod chart;
pub mod cloudinit;
pub mod cluster;
pub mod cmd;
pub mod disk;
pub mod etcd;
pub mod exit;
pub mod fetch;
pub mod inspect;
pub mod keys;
pub mod kube;
pub mod layer;
pub mod lint;
pub mod lockfile;
pub mod manifest;
pub mod net;
pub mod nodup;
pub mod oci;
pub mod output;
pub mod plan;
pub mod recipe;
pub mod reporter;
pub mod template;
pub mod tools;
pub mod types;
pub mod upload;
pub mod verify;
pub mod yamlpos;
