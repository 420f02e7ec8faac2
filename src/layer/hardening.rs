//! Hardening that is not a plain file: masked units (a symlink to /dev/null, as
//! `systemctl mask` makes it) and the firewall ruleset, which differs per role.
//! The static hardening files (sysctl, sshd, journald, apt) are in `image-files/`.

use super::{firewall, Content, Layer};
use crate::types::Role;

/// Units masked in every image, with the reason (docs/hardening.md).
pub const MASKED: &[(&str, &str)] = &[
    ("apt-daily.timer", "immutable node: no periodic apt update"),
    ("apt-daily.service", "immutable node: no periodic apt update"),
    ("apt-daily-upgrade.timer", "immutable node: no unattended upgrades"),
    ("apt-daily-upgrade.service", "immutable node: no unattended upgrades"),
    ("unattended-upgrades.service", "immutable node: no unattended upgrades"),
    ("swap.target", "kubelet requires swap off: fstab/GPT swap units are never pulled in"),
];

pub fn install(layer: &mut Layer, role: Role) {
    for (unit, _why) in MASKED {
        layer.symlink(&format!("{}/{unit}", super::tree::UNIT_DIR), "/dev/null");
    }
    layer.file("/etc/nftables.conf", Content::Bytes(firewall::nftables_conf(role).into_bytes()), 0o644);
    // Root-only: the directory first boot writes the cluster network into.
    layer.dir(firewall::INCLUDE_DIR, 0o700);
}
