//! Output formats that need more than `qemu-img convert` plus a fixed seed:
//!
//! - **vhd**: fixed VHD (Azure). qemu-img writes the footer (the last 512 bytes) with
//!   the current time and a random UUID; both are replaced (time: the build's
//!   `source_date_epoch`, UUID: derived from the inputs digest) and the footer checksum
//!   is recomputed.
//! - **ova**: a ustar archive holding the OVF descriptor first, then the manifest
//!   (`.mf`, SHA256 lines), then the streamOptimized vmdk — the order DSP0243 asks for,
//!   so importers can read the descriptor without scanning the archive. Tar headers are
//!   fixed (mtime = `source_date_epoch`, uid/gid 0, mode 0644).
//!
//! Everything else goes straight to [`qemu::convert_out`].

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::qemu;
use super::DiskError;
use crate::types::OutFormat;

/// What makes an output reproducible and names what is inside it.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// The build's inputs digest: replaces random identifiers.
    pub seed: &'a str,
    /// Seconds since the epoch written wherever a format stores a time.
    pub source_date_epoch: u64,
    /// `<recipe>-<role>-<arch>`: the OVA's virtual machine and file names.
    pub name: &'a str,
}

/// Alignment of a VHD's virtual size (Azure refuses anything else).
pub const VHD_ALIGN: u64 = 1 << 20;

/// OVF resources of the virtual machine in an OVA; importers let users change them.
const OVA_CPUS: u32 = 2;
const OVA_MEMORY_MIB: u32 = 4096;

/// Write `raw` (the finished disk) as `fmt` to `dst`.
/// `compress` applies to qcow2 (zstd clusters); vmdk and ova are always compressed.
pub fn write(raw: &Path, fmt: OutFormat, compress: bool, dst: &Path, st: &Stamp) -> Result<(), DiskError> {
    match fmt {
        OutFormat::Vhd => write_vhd(raw, dst, st),
        OutFormat::Ova => write_ova(raw, dst, st),
        OutFormat::Qcow2 => qemu::convert_out(raw, fmt, compress, dst, st.seed),
        OutFormat::Raw | OutFormat::Vmdk | OutFormat::Vhdx => {
            qemu::convert_out(raw, fmt, false, dst, st.seed)
        }
    }
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    DiskError::io(format!("{what} {}", p.display()))
}

fn write_vhd(raw: &Path, dst: &Path, st: &Stamp) -> Result<(), DiskError> {
    let len = std::fs::metadata(raw).map_err(io("stat", raw))?.len();
    if len % VHD_ALIGN != 0 {
        return Err(DiskError::Corrupt {
            path: raw.display().to_string(),
            msg: format!("a VHD's size must be a multiple of 1 MiB, the disk has {len} bytes"),
        });
    }
    qemu::convert_out(raw, OutFormat::Vhd, false, dst, st.seed)?;
    fix_vhd_footer(dst, len, st)
}

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;

/// Pin the fixed VHD footer's timestamp and unique id; `size` is the expected
/// virtual size (checked against the footer's current size).
fn fix_vhd_footer(path: &Path, size: u64, st: &Stamp) -> Result<(), DiskError> {
    use std::os::unix::fs::FileExt;
    let corrupt = |msg: String| DiskError::Corrupt { path: path.display().to_string(), msg };
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io("opening", path))?;
    let flen = f.metadata().map_err(io("stat", path))?.len();
    if flen != size + 512 {
        return Err(corrupt(format!("fixed VHD of {flen} bytes for a {size}-byte disk")));
    }
    let mut foot = [0u8; 512];
    f.read_exact_at(&mut foot, size).map_err(io("reading the VHD footer of", path))?;
    let be32 = |o: usize| u32::from_be_bytes([foot[o], foot[o + 1], foot[o + 2], foot[o + 3]]);
    let be64 = |o: usize| u64::from_be_bytes(foot[o..o + 8].try_into().unwrap_or_default());
    if &foot[..8] != b"conectix" || be32(60) != 2 {
        return Err(corrupt("no fixed-disk VHD footer".into()));
    }
    if be64(48) != size {
        return Err(corrupt(format!("VHD footer says {} bytes, the disk has {size}", be64(48))));
    }
    let stamp = u32::try_from(st.source_date_epoch.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    foot[24..28].copy_from_slice(&stamp.to_be_bytes());
    foot[68..84].copy_from_slice(&qemu::derived_id(st.seed, "vhd UniqueId"));
    let sum = vhd_checksum(&foot);
    foot[64..68].copy_from_slice(&sum.to_be_bytes());
    f.write_all_at(&foot, size).map_err(io("writing the VHD footer of", path))?;
    f.sync_all().map_err(io("syncing", path))?;
    Ok(())
}

/// One's complement of the byte sum of the footer, its checksum field taken as zero.
pub fn vhd_checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(b as u32));
    !sum
}

fn write_ova(raw: &Path, dst: &Path, st: &Stamp) -> Result<(), DiskError> {
    let capacity = std::fs::metadata(raw).map_err(io("stat", raw))?.len();
    let dir = dst.parent().unwrap_or(Path::new("."));
    // The vmdk's embedded descriptor names its own file: create it under the name it
    // has inside the archive.
    let disk_name = format!("{}-disk1.vmdk", st.name);
    let ovf_name = format!("{}.ovf", st.name);
    let mf_name = format!("{}.mf", st.name);
    let vmdk = dir.join(&disk_name);
    qemu::convert_out(raw, OutFormat::Vmdk, false, &vmdk, st.seed)?;
    let r = (|| {
        let vmdk_size = std::fs::metadata(&vmdk).map_err(io("stat", &vmdk))?.len();
        let ovf = ovf_descriptor(st, &disk_name, vmdk_size, capacity).into_bytes();
        let vmdk_sha = crate::types::Sha256::of_file(&vmdk).map_err(io("hashing", &vmdk))?;
        let mf = format!(
            "SHA256({ovf_name})= {}\nSHA256({disk_name})= {vmdk_sha}\n",
            hex::encode(Sha256::digest(&ovf))
        );
        let out = std::fs::File::create(dst).map_err(io("creating", dst))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
        let mut add = |name: &str, size: u64, data: &mut dyn Read| -> Result<(), DiskError> {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).map_err(io(&format!("naming {name} in"), dst))?;
            h.set_size(size);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(st.source_date_epoch);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_username("root").map_err(io("writing", dst))?;
            h.set_groupname("root").map_err(io("writing", dst))?;
            h.set_cksum();
            tar.append(&h, data).map_err(io(&format!("adding {name} to"), dst))
        };
        add(&ovf_name, ovf.len() as u64, &mut ovf.as_slice())?;
        add(&mf_name, mf.len() as u64, &mut mf.as_bytes())?;
        let mut v = std::fs::File::open(&vmdk).map_err(io("opening", &vmdk))?;
        add(&disk_name, vmdk_size, &mut v)?;
        let w = tar.into_inner().map_err(io("finishing", dst))?;
        let f = w.into_inner().map_err(|e| io("writing", dst)(e.into_error()))?;
        f.sync_all().map_err(io("syncing", dst))
    })();
    let _ = std::fs::remove_file(&vmdk);
    r
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// OVF 1.0 descriptor, shaped like the ones ovftool and VirtualBox export: one disk
/// (streamOptimized, capacity in bytes) on an LSI Logic SCSI controller, an E1000 NIC
/// on "VM Network", Ubuntu 64-bit (CIM id 94, vSphere `ubuntu64Guest`).
pub fn ovf_descriptor(st: &Stamp, disk_href: &str, disk_size: u64, capacity: u64) -> String {
    let name = xml_escape(st.name);
    let href = xml_escape(disk_href);
    let seed = xml_escape(st.seed);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file1" ovf:href="{href}" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A Kubernetes node image built by imgbuild</Info>
    <Name>{name}</Name>
    <AnnotationSection>
      <Info>Build provenance</Info>
      <Annotation>{name} built by imgbuild {version}, inputs digest {seed}</Annotation>
    </AnnotationSection>
    <OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Ubuntu 64-bit</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{OVA_CPUS} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{OVA_CPUS}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{OVA_MEMORY_MIB} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{OVA_MEMORY_MIB}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        version = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn raw_disk(dir: &Path) -> PathBuf {
        let raw = dir.join("in.raw");
        let mut bytes = vec![0u8; 8 << 20];
        bytes[510] = 0x55;
        bytes[511] = 0xaa;
        bytes[5 << 20..(5 << 20) + 5].copy_from_slice(b"hello");
        std::fs::write(&raw, &bytes).unwrap();
        raw
    }

    /// The VHD footer: exact size, pinned time and id, valid checksum, same bytes twice.
    #[test]
    fn fixed_vhd_footer_is_pinned() {
        let d = tempfile::tempdir().unwrap();
        let raw = raw_disk(d.path());
        let st = Stamp { seed: "seed", source_date_epoch: 1_724_198_400, name: "n" };
        let (a, b) = (d.path().join("a.vhd"), d.path().join("b.vhd"));
        write(&raw, OutFormat::Vhd, false, &a, &st).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write(&raw, OutFormat::Vhd, false, &b, &st).unwrap();
        let x = std::fs::read(&a).unwrap();
        assert_eq!(x, std::fs::read(&b).unwrap());
        assert_eq!(x.len(), (8 << 20) + 512);
        let foot: [u8; 512] = x[8 << 20..].try_into().unwrap();
        assert_eq!(&foot[..8], b"conectix");
        assert_eq!(u32::from_be_bytes(foot[24..28].try_into().unwrap()), 1_724_198_400 - 946_684_800);
        assert_eq!(u32::from_be_bytes(foot[64..68].try_into().unwrap()), vhd_checksum(&foot));
        assert_eq!(&foot[68..84], &qemu::derived_id("seed", "vhd UniqueId"));
        // A different seed gives a different id.
        let st2 = Stamp { seed: "other", ..st };
        write(&raw, OutFormat::Vhd, false, &b, &st2).unwrap();
        assert_ne!(x, std::fs::read(&b).unwrap());
        // Not MiB-aligned: refused rather than silently rounded.
        std::fs::OpenOptions::new().write(true).open(&raw).unwrap().set_len((8 << 20) + 4096).unwrap();
        assert!(write(&raw, OutFormat::Vhd, false, &b, &st).unwrap_err().to_string().contains("1 MiB"));
    }

    #[test]
    fn ovf_escapes_names() {
        let st = Stamp { seed: "s", source_date_epoch: 0, name: "a&b<c>" };
        let x = ovf_descriptor(&st, "a&b.vmdk", 1, 2);
        assert!(
            x.contains("<Name>a&amp;b&lt;c&gt;</Name>") && x.contains("ovf:href=\"a&amp;b.vmdk\""),
            "{x}"
        );
    }
}
