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

/// What a file that is not an image looks like, for messages: ` (it looks like gzip)`,
/// or nothing when its first bytes say nothing known.
pub fn what_is(head: &[u8]) -> String {
    FOREIGN
        .iter()
        .find(|(m, at, _)| head.get(*at..*at + m.len()) == Some(*m))
        .map(|(_, _, name)| format!(" (it looks like {name})"))
        .unwrap_or_default()
}

fn classify(head: &[u8]) -> Result<BaseFormat, String> {
    if head.starts_with(b"QFI\xfb") {
        // A backing file or an external data file would make qemu-img read other
        // host files into the image: a base must be self-contained.
        let u64at =
            |o: usize| head.get(o..o + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
        if u64at(8).unwrap_or(0) != 0 {
            return Err(" (qcow2 with a backing file; a base image must be self-contained)".into());
        }
        let version =
            head.get(4..8).map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default())).unwrap_or(0);
        if version >= 3 && u64at(72).unwrap_or(0) & 0b100 != 0 {
            return Err(" (qcow2 with an external data file; a base image must be self-contained)".into());
        }
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
        let mut backed = vec![0u8; 512];
        backed[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        backed[15] = 0x70;
        assert!(classify(&backed).unwrap_err().contains("backing file"));
        assert!(classify(b"").is_err());
    }
}
