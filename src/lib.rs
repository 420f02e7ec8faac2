//! imgbuild: immutable Kubernetes node images from Ubuntu cloud images, built
//! offline and rootless, plus the cloud-init that makes VMs self-join a cluster.
//!
//! Data flow of `imgbuild build`:
//! [`recipe`] → [`plan`] → [`fetch`] (into the [`cache`]) → [`layer`] → [`disk`] → [`output`].
//! Of `imgbuild cluster` / `imgbuild cloud-init`: [`cluster`] → [`cloudinit`].

pub mod apt;
pub mod bearer;
pub mod build;
pub mod cache;
pub mod chart;
pub mod cli;
pub mod cloudinit;
pub mod cluster;
pub mod disk;
pub mod exit;
pub mod fetch;
pub mod inspect;
pub mod layer;
pub mod lint;
pub mod manifest;
pub mod oci;
pub mod output;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod smallget;
pub mod tools;
pub mod upload;
pub mod verify;
pub mod yamlpos;
