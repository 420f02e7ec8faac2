//! Output formats: every one is written from the disk stream ([`super::stream`]) by a
//! writer of this crate, front to back, hashed as it goes:
//!
//! - **qcow2**: [`super::qcow2::write`], or [`super::qcow2::write_zstd`] with `--compress`;
//! - **raw** and **vhd** (fixed, Azure): [`super::vhd`];
//! - **vhdx** (dynamic, Hyper-V): [`super::vhdx`];
//! - **vmdk** (streamOptimized): [`super::vmdk`], grains deflated on every core;
//! - **ova**: a ustar archive holding the OVF descriptor first, then the manifest
//!   (`.mf`, SHA256 lines), then the streamOptimized vmdk — the order DSP0243 asks for,
//!   so importers can read the descriptor without scanning the archive. The vmdk is
//!   written straight into the archive at its final offset (the descriptor's length
//!   does not depend on the vmdk's size, see [`ovf_descriptor`]), and the headers, the
//!   descriptor and the manifest (which needs the vmdk's digest) are written before it
//!   afterwards: no second copy of the disk. Tar headers are fixed (mtime =
//!   `source_date_epoch`, uid/gid 0, mode 0644).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::stream::Hashing;
use super::{qcow2, vhd, vhdx, vmdk, DiskError};
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
    /// vhd: the digest of the disk's first bytes, taken ahead of the stream.
    pub ahead: Option<&'a vhd::Prefix>,
}

/// Alignment of a VHD's virtual size (Azure refuses anything else).
pub const VHD_ALIGN: u64 = vhd::ALIGN;

/// OVF resources of the virtual machine in an OVA; importers let users change them.
const OVA_CPUS: u32 = 2;
const OVA_MEMORY_MIB: u32 = 4096;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Write the disk of `size` bytes (the stream `clusters` + `fill`) as `fmt` to `dst`;
/// returns its sha256 (hex). `compress` applies to qcow2 (zstd clusters); vmdk and ova
/// are always compressed.
pub fn write_stream<F>(
    fmt: OutFormat,
    compress: bool,
    dst: &Path,
    st: &Stamp,
    size: u64,
    clusters: &[u64],
    fill: F,
) -> Result<String, DiskError>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    let ctx = || format!("writing {}", dst.display());
    let sha = match fmt {
        OutFormat::Qcow2 if compress => qcow2::write_zstd(dst, size, clusters, threads(), fill),
        OutFormat::Qcow2 => qcow2::write(dst, size, clusters, fill),
        OutFormat::Raw => vhd::write(dst, size, clusters, None, None, fill),
        OutFormat::Vhd => {
            if size % VHD_ALIGN != 0 {
                return Err(DiskError::Corrupt {
                    path: dst.display().to_string(),
                    msg: format!("a VHD's size must be a multiple of 1 MiB, the disk has {size} bytes"),
                });
            }
            let foot = vhd::fixed_footer(size, st.source_date_epoch, st.seed);
            vhd::write(dst, size, clusters, Some(&foot), st.ahead, fill)
        }
        OutFormat::Vmdk => (|| {
            let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let f = std::fs::File::create(dst)?;
            let w = Hashing::new(std::io::BufWriter::with_capacity(1 << 20, f));
            let m = vmdk::Meta { file_name: &name, seed: st.seed };
            let (w, _) = vmdk::write(w, size, clusters, threads(), &m, fill)?;
            Ok(w.finish()?.0)
        })(),
        OutFormat::Ova => return write_ova(dst, st, size, clusters, fill),
        OutFormat::Vhdx => vhdx::write(dst, size, clusters, st.seed, fill),
    };
    sha.map_err(DiskError::io(ctx()))
}

/// A ustar header of a regular file, as every member of the OVA has.
fn tar_header(name: &str, size: u64, st: &Stamp) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(st.source_date_epoch);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_cksum();
    Ok(h)
}

/// A tar member's data padded to whole 512-byte blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

fn manifest(ovf_name: &str, ovf: &[u8], disk_name: &str, disk_sha: &str) -> String {
    format!("SHA256({ovf_name})= {}\nSHA256({disk_name})= {disk_sha}\n", hex::encode(Sha256::digest(ovf)))
}

fn write_ova<F>(dst: &Path, st: &Stamp, size: u64, clusters: &[u64], fill: F) -> Result<String, DiskError>
where
    F: FnMut(u64, u64, &mut [u8]) -> std::io::Result<()>,
{
    let io = |what: &str| DiskError::io(format!("{what} {}", dst.display()));
    // The vmdk's embedded descriptor names its own file: the name it has in the archive.
    let disk_name = format!("{}-disk1.vmdk", st.name);
    let ovf_name = format!("{}.ovf", st.name);
    let mf_name = format!("{}.mf", st.name);
    // Neither length depends on the vmdk: where it starts is known now.
    let ovf_len = ovf_descriptor(st, &disk_name, 0, size).len() as u64;
    let mf_len = manifest(&ovf_name, b"", &disk_name, &"0".repeat(64)).len() as u64;
    let disk_at = 512 + ovf_len.div_ceil(512) * 512 + 512 + mf_len.div_ceil(512) * 512 + 512;
    let f = std::fs::File::create(dst).map_err(io("creating"))?;
    let (disk_sha, disk_len) = (|| -> std::io::Result<(String, u64)> {
        let mut file = &f;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(disk_at))?;
        let w = Hashing::new(std::io::BufWriter::with_capacity(1 << 20, file));
        let m = vmdk::Meta { file_name: &disk_name, seed: st.seed };
        let (w, len) = vmdk::write(w, size, clusters, threads(), &m, fill)?;
        let (sha, mut w) = w.finish()?;
        // The vmdk is whole sectors; the archive ends with two zero blocks.
        w.write_all(&[0u8; 1024])?;
        w.flush()?;
        Ok((sha, len))
    })()
    .map_err(io("writing the vmdk into"))?;
    let ovf = ovf_descriptor(st, &disk_name, disk_len, size).into_bytes();
    let mf = manifest(&ovf_name, &ovf, &disk_name, &disk_sha).into_bytes();
    let mut head = Vec::with_capacity(disk_at as usize);
    for (name, data) in [(&ovf_name, &ovf[..]), (&mf_name, &mf[..])] {
        head.extend_from_slice(
            tar_header(name, data.len() as u64, st).map_err(io("naming a member of"))?.as_bytes(),
        );
        head.extend_from_slice(&padded(data));
    }
    head.extend_from_slice(
        tar_header(&disk_name, disk_len, st).map_err(io("naming a member of"))?.as_bytes(),
    );
    if head.len() as u64 != disk_at || disk_len % 512 != 0 {
        return Err(DiskError::Corrupt { path: dst.display().to_string(), msg: "OVA layout moved".into() });
    }
    f.write_all_at(&head, 0).map_err(io("writing"))?;
    drop(f);
    // The archive is read once more for its digest. It cannot be hashed as it is
    // written: SHA-256 takes the bytes front to back, and the ones ahead of the vmdk
    // (the descriptor's `ovf:size`, the manifest's digest, the vmdk member's tar header
    // with its size) are known only once the vmdk is compressed, whatever the member
    // order. Hashing the vmdk a second time without reading it back would mean holding
    // all of it in memory or compressing it twice. SHA-256 is what that pass costs: the
    // reading (from the page cache) runs beside it on another thread.
    super::stream::hash_file(dst).map_err(io("hashing"))
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
    // Spaces after the size keep the descriptor's length the same for any size, so the
    // OVA's layout is known before the vmdk is written (XML allows space before `/>`).
    let pad = " ".repeat(20usize.saturating_sub(disk_size.to_string().len()));
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file1" ovf:href="{href}" ovf:size="{disk_size}"{pad}/>
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

    #[test]
    fn ovf_escapes_names() {
        let st = Stamp { seed: "s", source_date_epoch: 0, name: "a&b<c>", ahead: None };
        let x = ovf_descriptor(&st, "a&b.vmdk", 1, 2);
        assert!(
            x.contains("<Name>a&amp;b&lt;c&gt;</Name>") && x.contains("ovf:href=\"a&amp;b.vmdk\""),
            "{x}"
        );
    }

    /// The digest the OVA writer returns is the sha256 of the archive on disk, the same
    /// for two writes; the archive holds the descriptor, the manifest and the vmdk, in
    /// that order; the manifest's lines are its members' digests and the descriptor
    /// names the vmdk's length (an empty disk too: the layout guard holds for both).
    #[test]
    fn ova_digest_is_the_archives_and_its_manifest_the_members() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        let st = Stamp { seed: "s", source_date_epoch: 1_724_198_400, name: "n", ahead: None };
        let cs = super::super::stream::CLUSTER;
        let fill = |first: u64, n: u64, buf: &mut [u8]| {
            for i in 0..n {
                super::super::stream::test_pattern(
                    first + i,
                    &mut buf[(i * cs) as usize..((i + 1) * cs) as usize],
                );
            }
            Ok(())
        };
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        for clusters in [vec![], vec![0u64, 1, 2, 3, 40, 41, 79]] {
            let (a, b) = (d.path().join("a.ova"), d.path().join("b.ova"));
            let digest = write_stream(OutFormat::Ova, false, &a, &st, 80 * cs, &clusters, fill).unwrap();
            let bytes = std::fs::read(&a).unwrap();
            assert_eq!(digest, sha(&bytes), "{clusters:?}");
            assert_eq!(
                write_stream(OutFormat::Ova, false, &b, &st, 80 * cs, &clusters, fill).unwrap(),
                digest
            );
            assert!(bytes == std::fs::read(&b).unwrap(), "two writes differ");
            let mut members = Vec::new();
            for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                members.push((e.path().unwrap().to_string_lossy().into_owned(), data));
            }
            let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
            assert_eq!(names, ["n.ovf", "n.mf", "n-disk1.vmdk"]);
            let (ovf, mf, vmdk) = (&members[0].1, &members[1].1, &members[2].1);
            let want = format!("SHA256(n.ovf)= {}\nSHA256(n-disk1.vmdk)= {}\n", sha(ovf), sha(vmdk));
            assert_eq!(String::from_utf8_lossy(mf), want);
            let ovf = String::from_utf8_lossy(ovf);
            assert!(ovf.contains(&format!("ovf:size=\"{}\"", vmdk.len())), "{ovf}");
        }
    }

    /// The descriptor is as long for any vmdk size: the OVA's layout is fixed up front.
    #[test]
    fn ovf_length_does_not_depend_on_the_disk_size() {
        let st = Stamp { seed: "s", source_date_epoch: 0, name: "n", ahead: None };
        let a = ovf_descriptor(&st, "d.vmdk", 0, 5);
        for n in [1u64, 512, 123_456_789, u64::MAX] {
            let b = ovf_descriptor(&st, "d.vmdk", n, 5);
            assert_eq!(a.len(), b.len(), "{n}");
            assert!(b.contains(&format!("ovf:size=\"{n}\"")));
        }
    }
}
