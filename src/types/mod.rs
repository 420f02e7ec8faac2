//! Value types shared across the pipeline: parsed once, carried typed. Nothing here
//! depends on another module of the crate.
//!
//! - [`Sha256`]: a pinned content digest;
//! - [`Role`], [`Arch`]: what a build targets;
//! - [`debian`]: Debian versions and package requests (`name` or `name=version`);
//! - [`image`]: container image references and their `sha256:` digests.

pub mod debian;
mod digest;
pub mod image;
mod target;

pub use debian::PackageRequest;
pub use digest::Sha256;
pub use image::{Digest, ImageRef};
pub use target::{Arch, Role};
