//! Value types shared across the pipeline: parsed once, carried typed. Nothing here
//! depends on another module of the crate.
//!
//! - [`Sha256`]: a pinned content digest;
//! - [`Role`], [`Arch`], [`OutFormat`]: what a build targets and writes;
//! - [`ItemKind`]: the kinds of things a build downloads and installs;
//! - [`debian`]: Debian versions and package requests (`name` or `name=version`);
//! - [`size`]: disk sizes as people write them (`8G`);
//! - [`private_ranges`]: the private address ranges the firewall defaults to;
//! - [`PodSecurity`]: a Pod Security Standards level;
//! - [`Profile`]: an optional group of add-ons.

pub mod debian;
pub mod digest;
mod pod_security;
pub mod private_ranges;
mod profile;
pub mod size;
mod target;

pub use debian::PackageRequest;
pub use digest::Sha256;
pub use pod_security::PodSecurity;
pub use profile::Profile;
pub use target::{Arch, ItemKind, OutFormat, Role};
