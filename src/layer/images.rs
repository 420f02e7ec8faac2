//! The container images of a role in the layer: the OCI image layout of
//! `oci::layout` at [`IMAGES_DIR`], every blob once (a layer several images
//! share is one file), plus `oci-layout`, `index.json` and `images.tsv`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Content, Layer};
use crate::oci::layout::{index_and_list, Embedded, IMAGES_DIR};
use crate::oci::{Digest, OciError};

/// What the layout holds, for progress lines and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub images: usize,
    pub blobs: usize,
    /// Bytes of blobs as written (each once).
    pub bytes: u64,
    /// Bytes the images would take with every image's blobs stored separately.
    pub bytes_if_separate: u64,
}

/// Write the layout into `layer`: each distinct blob once, then `oci-layout`,
/// `index.json` and `images.tsv`. A blob whose digest two images share must be the
/// same size in both (it is the same content, verified by digest).
pub fn add(layer: &mut Layer, images: &[Embedded]) -> Result<Stats, OciError> {
    let mut blobs: BTreeMap<&Digest, (u64, &Path)> = BTreeMap::new();
    let mut stats = Stats { images: images.len(), ..Stats::default() };
    for img in images {
        for (d, size, path) in &img.blobs {
            stats.bytes_if_separate += size;
            if let Some((s, _)) = blobs.insert(d, (*size, path)) {
                if s != *size {
                    return Err(OciError::Integrity {
                        image: img.reference.to_string(),
                        what: format!("blob {d}"),
                        expected: format!("{s} bytes"),
                        actual: format!("{size} bytes"),
                    });
                }
            }
        }
    }
    for (d, (size, path)) in &blobs {
        let to = format!("{IMAGES_DIR}/blobs/sha256/{}", d.sha256());
        layer.file(&to, Content::Path(path.to_path_buf()), 0o644);
        // The blob was verified against its digest when it was fetched.
        layer.know_digest(&to, d.sha256().clone());
        stats.bytes += size;
    }
    stats.blobs = blobs.len();
    let (index, tsv) = index_and_list(images);
    layer.file(
        &format!("{IMAGES_DIR}/oci-layout"),
        Content::Bytes(b"{\"imageLayoutVersion\":\"1.0.0\"}\n".to_vec()),
        0o644,
    );
    layer.file(&format!("{IMAGES_DIR}/index.json"), Content::Bytes(index), 0o644);
    layer.file(&format!("{IMAGES_DIR}/images.tsv"), Content::Bytes(tsv.into_bytes()), 0o644);
    Ok(stats)
}
