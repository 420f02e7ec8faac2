//! Base image format detection by magic bytes (never by file name).

use std::io::Read;
use std::path::Path;

use super::DiskError;

/// The formats a base image may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseFormat {
    Qcow2,
    Raw,
}

impl BaseFormat {
    /// qemu-img's name for the format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            BaseFormat::Qcow2 => "qcow2",
            BaseFormat::Raw => "raw",
        }
    }
}

/// Other container formats, named so the error says what the file is.
const FOREIGN: &[(&[u8], usize, &str)] = &[
    (b"KDMV", 0, "vmdk"),
    (b"# Disk DescriptorFile", 0, "vmdk descriptor"),
    (b"vhdxfile", 0, "vhdx"),
    (b"conectix", 0, "vhd"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>", 0, "vdi"),
    (b"\x1f\x8b", 0, "gzip"),
    (b"\xfd7zXZ\x00", 0, "xz"),
    (b"\x28\xb5\x2f\xfd", 0, "zstd"),
    (b"BZh", 0, "bzip2"),
    (b"QFI\xfb", 0, "qcow2"),
];

/// qcow2 starts with `QFI\xfb`; a raw disk has an MBR (or GPT protective MBR) boot
/// signature `55 aa` at byte 510. Anything else is refused.
pub fn detect(path: &Path) -> Result<BaseFormat, DiskError> {
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path).map_err(DiskError::io(format!("opening {}", path.display())))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(DiskError::io(format!("reading {}", path.display()))(e)),
        }
    }
    classify(&head[..n]).map_err(|detail| DiskError::BadFormat { path: path.display().to_string(), detail })
}

fn classify(head: &[u8]) -> Result<BaseFormat, String> {
    if head.starts_with(b"QFI\xfb") {
        return Ok(BaseFormat::Qcow2);
    }
    if let Some((_, _, name)) = FOREIGN.iter().find(|(m, at, _)| head.get(*at..*at + m.len()) == Some(*m)) {
        return Err(format!(" (it looks like {name})"));
    }
    if head.len() == 512 && head[510] == 0x55 && head[511] == 0xaa {
        return Ok(BaseFormat::Raw);
    }
    Err(" (no qcow2 magic and no MBR/GPT boot signature)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_decides() {
        let mut raw = vec![0u8; 512];
        raw[510] = 0x55;
        raw[511] = 0xaa;
        assert_eq!(classify(&raw), Ok(BaseFormat::Raw));
        assert_eq!(classify(b"QFI\xfb\0\0\0\x03"), Ok(BaseFormat::Qcow2));
        assert!(classify(b"vhdxfile....").unwrap_err().contains("vhdx"));
        assert!(classify(&[0u8; 512]).is_err());
        assert!(classify(b"").is_err());
    }
}
