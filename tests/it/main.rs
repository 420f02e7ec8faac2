//! The integration tests: one binary (`cargo test --test it`), one module per area.
//! `cargo test --test it <module>::` runs one area, e.g. `cargo test --test it apt::`.
//! Shared helpers are in `common` (see docs/testing.md).

mod common;
mod layer_fixture;

mod addon_values;
mod apt;
mod apt_real;
mod build;
mod cache;
mod chart;
mod chart_pinning;
mod cli_manual;
mod cli_output;
mod cloudinit;
mod cluster;
mod cluster_images;
mod cluster_registries;
mod day2;
mod disk;
mod docs;
mod dry_run;
mod fetch;
mod formats;
mod hostile;
mod house_rules;
mod iso_seed;
mod join;
mod kube;
mod layer;
mod layer_validate;
mod module_graph;
mod mutation;
mod oci_build;
mod oci_containerd;
mod oci_registry;
mod pod_security;
mod profiles;
mod resize;
mod smoke;
mod storage;
mod supply_cosign;
mod supply_lint;
mod supply_openpgp;
mod supply_verify;
mod upload_glance;
mod upload_libvirt;
mod upload_proxmox;
mod workflow;
