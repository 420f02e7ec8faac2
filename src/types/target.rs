//! What a build targets and writes: the node role, the CPU architecture, the output
//! format; and the kinds of items it downloads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Node role. The string forms are the CLI and YAML spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::ControlPlane, Role::Worker];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU architecture, in Debian/Go spelling (what upstream URLs use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Output formats of `imgbuild build --format` (the file extension of the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vhdx,
    Vhd,
    Ova,
}

impl OutFormat {
    pub const ALL: [OutFormat; 6] =
        [OutFormat::Qcow2, OutFormat::Raw, OutFormat::Vmdk, OutFormat::Vhdx, OutFormat::Vhd, OutFormat::Ova];

    pub fn as_str(self) -> &'static str {
        match self {
            OutFormat::Qcow2 => "qcow2",
            OutFormat::Raw => "raw",
            OutFormat::Vmdk => "vmdk",
            OutFormat::Vhdx => "vhdx",
            OutFormat::Vhd => "vhd",
            OutFormat::Ova => "ova",
        }
    }

    /// The format whose file extension is `ext`.
    pub fn from_extension(ext: &str) -> Option<OutFormat> {
        OutFormat::ALL.into_iter().find(|f| f.as_str() == ext)
    }
}

impl fmt::Display for OutFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of thing a build downloads: each kind has its own list in the plan and the
/// manifest, its own line prefix in the inputs digest and its SBOM purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// The base cloud image.
    Base,
    /// A recipe artifact (binaries, tarballs, charts).
    Artifact,
    /// An Ubuntu package (.deb) from the recipe's lock.
    Package,
    /// A blob of a container image (index, manifest, config, layer), fetched by digest
    /// from its registry.
    Image,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Base => "base",
            ItemKind::Artifact => "artifact",
            ItemKind::Package => "package",
            ItemKind::Image => "image",
        }
    }
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
