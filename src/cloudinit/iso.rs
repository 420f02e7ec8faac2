//! A NoCloud ISO seed written in memory: ISO 9660 (ECMA-119) with a Joliet tree
//! and Rock Ridge (RRIP 1.10, `RRIP_1991A`) entries, one flat root directory.
//!
//! Why here and not a crate or a process: a seed per node (1000 nodes in well under
//! a second; one xorriso per node took 91 s), and byte-reproducible output. The one
//! Rust writer with Rock Ridge and Joliet (hadris-iso) stamps the wall clock into the
//! volume descriptors and every Rock Ridge time with no way to fix it.
//!
//! What readers need: blkid (cloud-init's ds-identify) takes the label from the
//! primary volume id or, when a Joliet descriptor exists, from the Joliet one — both
//! are the volume id given. Linux isofs reads the Rock Ridge `NM` names (`user-data`)
//! when the root's `.` record starts with `SP` and an `ER` names RRIP; it honours an
//! `RR` entry's flags (a name is read only when `RR` says `NM` is present). Without
//! Rock Ridge it falls back to the Joliet names (`user-data;1`, version stripped).

use time::OffsetDateTime;

const SECTOR: usize = 2048;
/// Sectors 0..16 are the system area (zeros).
const PVD: usize = 16;
const SVD: usize = 17;
const TERMINATOR: usize = 18;
const PATH_L: usize = 19;
const PATH_M: usize = 20;
const JPATH_L: usize = 21;
const JPATH_M: usize = 22;
/// The Rock Ridge continuation area holding the `ER` entry (too long for the `.` record).
const CE_AREA: usize = 23;
const ROOT: usize = 24;

/// Longest file name accepted (Joliet allows 64 UCS-2 characters).
pub const MAX_NAME: usize = 64;

const ER_ID: &[u8] = b"RRIP_1991A";
const ER_DES: &[u8] = b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const ER_SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

// RR entry flags (RRIP 1.09 4.1.7): which other entries the record carries.
const RR_PX: u8 = 0x01;
const RR_NM: u8 = 0x08;
const RR_TF: u8 = 0x80;

/// Directory and file modes: read-only media, root only (a seed carries secrets;
/// cloud-init reads it as root).
const DIR_MODE: u32 = 0o040_500;
const FILE_MODE: u32 = 0o100_400;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("ISO seed: file name {0:?} is not 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-' (not starting with '.')")]
    Name(String),
    #[error("ISO seed: {0:?} and {1:?} map to the same ISO 9660 name {2}")]
    Clash(String, String, String),
    #[error("ISO seed: volume id {0:?} is not 1-16 characters of a-z, A-Z, 0-9, '_'")]
    VolumeId(String),
    #[error("ISO seed: {0} is too large")]
    TooLarge(String),
    #[error("ISO seed: timestamp {0} is out of range")]
    Time(i64),
}

/// One file of the root directory.
#[derive(Debug, Clone, Copy)]
pub struct IsoFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// The image: `volume_id` (blkid's LABEL), the files in the root directory, and the
/// one timestamp every date in the image carries (seconds since the Unix epoch, UTC).
/// The same arguments give the same bytes.
pub fn image(volume_id: &str, files: &[IsoFile<'_>], mtime: i64) -> Result<Vec<u8>, IsoError> {
    if volume_id.is_empty()
        || volume_id.len() > 16
        || !volume_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(IsoError::VolumeId(volume_id.into()));
    }
    let when = Stamp::new(mtime)?;
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if f.name.is_empty()
            || f.name.len() > MAX_NAME
            || f.name.starts_with('.')
            || !f.name.bytes().all(ok_char)
        {
            return Err(IsoError::Name(f.name.into()));
        }
        let size = u32::try_from(f.data.len()).map_err(|_| IsoError::TooLarge(f.name.into()))?;
        entries.push(Entry { name: f.name, iso: level1_name(f.name), data: f.data, size, extent: 0 });
    }
    // ECMA-119 9.3: records in ascending order of their identifiers. File data follows
    // that order too.
    entries.sort_by(|a, b| a.iso.cmp(&b.iso));
    for w in entries.windows(2) {
        if w[0].iso == w[1].iso {
            return Err(IsoError::Clash(
                w[0].name.into(),
                w[1].name.into(),
                String::from_utf8_lossy(&w[0].iso).into_owned(),
            ));
        }
    }

    // Directory extents first (their sizes do not depend on where the data goes), then data.
    let primary_len = |es: &[Entry]| dir_size(primary_records(es, 0, 0, &when).iter().map(Vec::len));
    let primary_sectors = primary_len(&entries) / SECTOR;
    let mut joliet_order: Vec<usize> = (0..entries.len()).collect();
    joliet_order.sort_by(|&a, &b| joliet_name(entries[a].name).cmp(&joliet_name(entries[b].name)));
    let joliet_sectors =
        dir_size(joliet_records(&entries, &joliet_order, 0, 0, &when).iter().map(Vec::len)) / SECTOR;
    let jroot = ROOT + primary_sectors;
    let mut next = jroot + joliet_sectors;
    for e in &mut entries {
        e.extent = to_u32(next, "the image")?;
        next += (e.size as usize).div_ceil(SECTOR);
    }
    let total = next;

    let mut img = vec![0u8; total * SECTOR];
    let total32 = to_u32(total, "the image")?;
    let root32 = to_u32(ROOT, "the root")?;
    let jroot32 = to_u32(jroot, "the root")?;
    let psize = to_u32(primary_sectors * SECTOR, "the root directory")?;
    let jsize = to_u32(joliet_sectors * SECTOR, "the root directory")?;

    // Primary volume descriptor (ECMA-119 8.4).
    {
        let d = &mut img[PVD * SECTOR..(PVD + 1) * SECTOR];
        descriptor_head(d, 1);
        d[8..40].fill(b' ');
        pad_ascii(&mut d[40..72], volume_id.as_bytes());
        volume_common(d, total32, to_u32(PATH_L, "")?, to_u32(PATH_M, "")?, &when);
        d[156..190].copy_from_slice(&dir_record(&[0], root32, psize, true, &[], &when));
        for r in [190..318, 318..446, 446..574, 702..739, 739..776, 776..813] {
            d[r].fill(b' ');
        }
        pad_ascii(&mut d[574..702], b"IMGBUILD");
    }
    // Joliet supplementary volume descriptor: identifiers in UCS-2 (big-endian).
    {
        let d = &mut img[SVD * SECTOR..(SVD + 1) * SECTOR];
        descriptor_head(d, 2);
        pad_ucs2(&mut d[8..40], "");
        pad_ucs2(&mut d[40..72], volume_id);
        d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        volume_common(d, total32, to_u32(JPATH_L, "")?, to_u32(JPATH_M, "")?, &when);
        d[156..190].copy_from_slice(&dir_record(&[0], jroot32, jsize, true, &[], &when));
        for r in [190..318, 318..446, 446..574, 702..739, 739..776, 776..813] {
            pad_ucs2(&mut d[r], "");
        }
        pad_ucs2(&mut d[574..702], "IMGBUILD");
    }
    descriptor_head(&mut img[TERMINATOR * SECTOR..(TERMINATOR + 1) * SECTOR], 255);

    // Path tables: the root only (ECMA-119 9.4).
    for (sector, loc, big) in
        [(PATH_L, root32, false), (PATH_M, root32, true), (JPATH_L, jroot32, false), (JPATH_M, jroot32, true)]
    {
        let p = &mut img[sector * SECTOR..sector * SECTOR + 10];
        p[0] = 1;
        let (l, parent) = if big {
            (loc.to_be_bytes(), 1u16.to_be_bytes())
        } else {
            (loc.to_le_bytes(), 1u16.to_le_bytes())
        };
        p[2..6].copy_from_slice(&l);
        p[6..8].copy_from_slice(&parent);
    }

    // The ER entry, pointed to by the root's CE entry.
    let er = er_entry();
    img[CE_AREA * SECTOR..CE_AREA * SECTOR + er.len()].copy_from_slice(&er);

    lay_dir(&mut img, ROOT, &primary_records(&entries, root32, psize, &when));
    lay_dir(&mut img, jroot, &joliet_records(&entries, &joliet_order, jroot32, jsize, &when));
    for e in &entries {
        let at = e.extent as usize * SECTOR;
        img[at..at + e.data.len()].copy_from_slice(e.data);
    }
    Ok(img)
}

struct Entry<'a> {
    name: &'a str,
    /// The ISO 9660 level 1 identifier, `NAME.EXT;1`.
    iso: Vec<u8>,
    data: &'a [u8],
    size: u32,
    extent: u32,
}

fn to_u32(v: usize, what: &str) -> Result<u32, IsoError> {
    u32::try_from(v).map_err(|_| IsoError::TooLarge(what.into()))
}

/// The times of an ISO image, all from one instant.
struct Stamp {
    /// Directory record form (ECMA-119 9.1.5): years since 1900, month, day, h, m, s, UTC offset.
    dir: [u8; 7],
    /// Volume descriptor form (8.4.26.1): 16 digits and the UTC offset.
    volume: [u8; 17],
}

impl Stamp {
    fn new(t: i64) -> Result<Stamp, IsoError> {
        let d = OffsetDateTime::from_unix_timestamp(t).map_err(|_| IsoError::Time(t))?;
        let year = d.year();
        if !(1900..=2155).contains(&year) {
            return Err(IsoError::Time(t));
        }
        let (mo, day, h, mi, s) = (u8::from(d.month()), d.day(), d.hour(), d.minute(), d.second());
        let dir = [(year - 1900) as u8, mo, day, h, mi, s, 0];
        let text = format!("{year:04}{mo:02}{day:02}{h:02}{mi:02}{s:02}00");
        let mut volume = [0u8; 17];
        volume[..16].copy_from_slice(text.as_bytes());
        Ok(Stamp { dir, volume })
    }
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn descriptor_head(d: &mut [u8], kind: u8) {
    d[0] = kind;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
}

/// The fields primary and Joliet descriptors share.
fn volume_common(d: &mut [u8], total: u32, path_l: u32, path_m: u32, when: &Stamp) {
    d[80..88].copy_from_slice(&both32(total));
    d[120..124].copy_from_slice(&both16(1)); // volume set size
    d[124..128].copy_from_slice(&both16(1)); // volume sequence number
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(10)); // path table size: the root's record
    d[140..144].copy_from_slice(&path_l.to_le_bytes());
    d[148..152].copy_from_slice(&path_m.to_be_bytes());
    d[813..830].copy_from_slice(&when.volume); // creation
    d[830..847].copy_from_slice(&when.volume); // modification
    d[847..863].fill(b'0'); // expiration: not specified
    d[864..881].copy_from_slice(&when.volume); // effective
    d[881] = 1; // file structure version
}

fn pad_ascii(field: &mut [u8], s: &[u8]) {
    field.fill(b' ');
    field[..s.len()].copy_from_slice(s);
}

/// UCS-2 big-endian, padded with spaces (an odd last byte stays zero).
fn pad_ucs2(field: &mut [u8], s: &str) {
    field.fill(0);
    let mut units = s.encode_utf16().chain(std::iter::repeat(0x20));
    for pair in field.chunks_exact_mut(2) {
        pair.copy_from_slice(&units.next().unwrap_or(0x20).to_be_bytes());
    }
}

/// ISO 9660 level 1 name: upper case, other characters as `_`, 8.3, version 1.
fn level1_name(name: &str) -> Vec<u8> {
    let (base, ext) = match name.rfind('.') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    let map = |s: &str, n: usize| -> Vec<u8> {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { b.to_ascii_uppercase() } else { b'_' })
            .take(n)
            .collect()
    };
    let mut v = map(base, 8);
    v.push(b'.');
    v.extend(map(ext, 3));
    v.extend(b";1");
    v
}

/// Joliet identifier: the name with version 1, UCS-2 big-endian.
fn joliet_name(name: &str) -> Vec<u8> {
    name.encode_utf16().chain(";1".encode_utf16()).flat_map(u16::to_be_bytes).collect()
}

/// A directory record (ECMA-119 9.1) with its system use area.
fn dir_record(id: &[u8], extent: u32, size: u32, dir: bool, su: &[u8], when: &Stamp) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(&when.dir);
    r[25] = if dir { 0x02 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if id.len() % 2 == 0 {
        r.push(0); // padding field: the system use area starts at an even offset
    }
    r.extend_from_slice(su);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

fn susp(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(sig);
    v.push((4 + body.len()) as u8);
    v.push(1);
    v.extend_from_slice(body);
    v
}

fn rr(flags: u8) -> Vec<u8> {
    susp(b"RR", &[flags])
}

/// RRIP 1.10 `PX`: mode, links, uid 0, gid 0.
fn px(mode: u32, links: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    for v in [mode, links, 0, 0] {
        b.extend_from_slice(&both32(v));
    }
    susp(b"PX", &b)
}

/// `TF`: modification, access and attribute-change times.
fn tf(when: &Stamp) -> Vec<u8> {
    let mut b = vec![0x0E];
    for _ in 0..3 {
        b.extend_from_slice(&when.dir);
    }
    susp(b"TF", &b)
}

fn er_entry() -> Vec<u8> {
    let mut b = vec![ER_ID.len() as u8, ER_DES.len() as u8, ER_SRC.len() as u8, 1];
    b.extend_from_slice(ER_ID);
    b.extend_from_slice(ER_DES);
    b.extend_from_slice(ER_SRC);
    susp(b"ER", &b)
}

fn primary_records(es: &[Entry<'_>], root: u32, root_size: u32, when: &Stamp) -> Vec<Vec<u8>> {
    let mut dot = susp(b"SP", &[0xBE, 0xEF, 0]); // must come first: it marks the Rock Ridge volume
    dot.extend(rr(RR_PX | RR_TF));
    dot.extend(px(DIR_MODE, 2));
    dot.extend(tf(when));
    let mut ce = Vec::with_capacity(24);
    for v in [CE_AREA as u32, 0, er_entry().len() as u32] {
        ce.extend_from_slice(&both32(v));
    }
    dot.extend(susp(b"CE", &ce));
    let mut dotdot = rr(RR_PX | RR_TF);
    dotdot.extend(px(DIR_MODE, 2));
    dotdot.extend(tf(when));
    let mut v = vec![
        dir_record(&[0], root, root_size, true, &dot, when),
        dir_record(&[1], root, root_size, true, &dotdot, when),
    ];
    for e in es {
        let mut su = rr(RR_PX | RR_NM | RR_TF);
        su.extend(susp(b"NM", &[&[0u8][..], e.name.as_bytes()].concat()));
        su.extend(px(FILE_MODE, 1));
        su.extend(tf(when));
        v.push(dir_record(&e.iso, e.extent, e.size, false, &su, when));
    }
    v
}

fn joliet_records(es: &[Entry<'_>], order: &[usize], root: u32, size: u32, when: &Stamp) -> Vec<Vec<u8>> {
    let mut v =
        vec![dir_record(&[0], root, size, true, &[], when), dir_record(&[1], root, size, true, &[], when)];
    for &i in order {
        let e = &es[i];
        v.push(dir_record(&joliet_name(e.name), e.extent, e.size, false, &[], when));
    }
    v
}

/// Bytes a directory takes: records never cross a sector boundary (ECMA-119 6.8.1.1).
fn dir_size(lens: impl Iterator<Item = usize>) -> usize {
    let mut at = 0;
    for l in lens {
        if at % SECTOR + l > SECTOR {
            at = at.div_ceil(SECTOR) * SECTOR;
        }
        at += l;
    }
    at.div_ceil(SECTOR).max(1) * SECTOR
}

fn lay_dir(img: &mut [u8], sector: usize, records: &[Vec<u8>]) {
    let mut at = 0;
    for r in records {
        if at % SECTOR + r.len() > SECTOR {
            at = at.div_ceil(SECTOR) * SECTOR;
        }
        let o = sector * SECTOR + at;
        img[o..o + r.len()].copy_from_slice(r);
        at += r.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f<'a>(name: &'a str, data: &'a [u8]) -> IsoFile<'a> {
        IsoFile { name, data }
    }

    #[test]
    fn same_input_same_bytes_and_layout() {
        let files = [f("user-data", b"#cloud-config\n{}\n"), f("meta-data", b"instance-id: x\n")];
        let a = image("cidata", &files, 1_704_067_200).unwrap();
        let b = image("cidata", &files, 1_704_067_200).unwrap();
        assert_eq!(a, b);
        // descriptors, path tables, CE area, two directories, two data sectors
        assert_eq!(a.len(), (ROOT + 2 + 2) * SECTOR);
        assert_eq!(&a[PVD * SECTOR + 1..PVD * SECTOR + 6], b"CD001");
        assert_eq!(&a[PVD * SECTOR + 40..PVD * SECTOR + 46], b"cidata");
        assert_eq!(&a[PVD * SECTOR + 813..PVD * SECTOR + 829], b"2024010100000000");
        assert_eq!(a[TERMINATOR * SECTOR], 255);
        // input order does not matter
        let c = image("cidata", &[files[1], files[0]], 1_704_067_200).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn level1_names() {
        assert_eq!(level1_name("user-data"), b"USER_DAT.;1");
        assert_eq!(level1_name("network-config"), b"NETWORK_.;1");
        assert_eq!(level1_name("a.tar.gz"), b"A_TAR.GZ;1");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(image("cidata", &[f("../x", b"")], 0), Err(IsoError::Name(_))));
        assert!(matches!(image("cidata", &[f(".hidden", b"")], 0), Err(IsoError::Name(_))));
        assert!(matches!(image("cidata", &[f(&"a".repeat(65), b"")], 0), Err(IsoError::Name(_))));
        assert!(matches!(image("ci data", &[], 0), Err(IsoError::VolumeId(_))));
        let clash = image("cidata", &[f("user-data", b""), f("user_data", b"")], 0);
        assert!(matches!(clash, Err(IsoError::Clash(..))), "{clash:?}");
        assert!(matches!(image("cidata", &[], i64::MAX), Err(IsoError::Time(_))));
    }

    #[test]
    fn a_long_directory_spills_into_more_sectors() {
        let names: Vec<String> =
            (0..40).map(|i| format!("f{i:03}-with-a-long-name-to-fill-records")).collect();
        let files: Vec<IsoFile> = names.iter().map(|n| f(n, b"x")).collect();
        let img = image("cidata", &files, 0).unwrap();
        // the root record in the primary descriptor: extent and size (little-endian halves)
        let root = &img[PVD * SECTOR + 156..PVD * SECTOR + 190];
        let size = u32::from_le_bytes([root[10], root[11], root[12], root[13]]) as usize;
        assert!(size > SECTOR && size % SECTOR == 0, "{size}");
        assert_eq!(u32::from_le_bytes([root[2], root[3], root[4], root[5]]) as usize, ROOT);
    }
}
