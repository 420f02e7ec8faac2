//! Value types shared across the pipeline: parsed once, carried typed. Nothing here
//! depends on another module of the crate.
//!
//! - [`Sha256`]: a pinned content digest;
//! - [`Role`], [`Arch`], [`OutFormat`]: what a build targets and writes;
//! - [`ItemKind`]: the kinds of things a build downloads and installs;
//! - [`debian`]: Debian versions and package requests (`name` or `name=version`);
//! - [`image`]: container image references and their `sha256:` digests;
//! - [`size`]: disk sizes as people write them (`8G`);
//! - [`private_ranges`]: the private address ranges the firewall defaults to;
//! - [`PodSecurity`]: a Pod Security Standards level;
//! - [`Profile`]: an optional group of add-ons;
//! - [`rfc3339`]: a time as the SBOM and Kubernetes write it.

pub mod debian;
pub mod digest;
pub mod image;
mod pod_security;
pub mod private_ranges;
mod profile;
pub mod size;
mod target;

pub use debian::PackageRequest;
pub use digest::Sha256;
pub use image::{Digest, ImageRef};
pub use pod_security::PodSecurity;
pub use profile::Profile;
pub use target::{Arch, ItemKind, OutFormat, Role};

/// `t` in UTC as RFC 3339 with whole seconds (`2024-08-21T07:05:09Z`), what Go's
/// `time.RFC3339` prints and SPDX's `created` asks for.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    // RFC 3339 has four-digit years only; a time before year 0 (which nothing here makes)
    // prints in `time`'s own notation rather than not at all.
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}
