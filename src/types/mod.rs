//! Value types shared across the pipeline: parsed once, carried typed. Nothing here
//! depends on another module of the crate.
//!
//! - [`Sha256`]: a pinned content digest;
//! - [`Role`], [`Arch`], [`OutFormat`]: what a build targets and writes;
//! - [`ItemKind`]: the kinds of things a build downloads and installs;
//! - [`debian`]: Debian versions and package requests (`name` or `name=version`);
//! - [`image`]: container image references and their `sha256:` digests;
//! - [`size`]: disk sizes as people write them (`8G`);
//! - [`private_ranges`]: the private address ranges the firewall defaults to.

pub mod debian;
pub mod digest;
pub mod image;
pub mod private_ranges;
pub mod size;
mod target;

pub use debian::PackageRequest;
pub use digest::Sha256;
pub use image::{Digest, ImageRef};
pub use target::{Arch, ItemKind, OutFormat, Role};
