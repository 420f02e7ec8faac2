//! A build's output set: the image and its sidecars, one type for the build that writes
//! them and for `verify`, `inspect`, `upload` and `lint` that read them.
//!
//! | file | what |
//! |------|------|
//! | `<stem>.<format>` | the image |
//! | `<stem>.manifest.json` | the manifest, byte-identical to `/etc/imgbuild/manifest.json` inside |
//! | `<stem>.<format>.sha256` | the image's digest, `sha256sum` format |
//! | `<stem>.spdx.json` | SPDX 2.3 SBOM |
//!
//! Writing: every file is staged in the build's temp dir and renamed into the output dir,
//! the image last, so a present image always comes with its complete set of sidecars.
//!
//! Reading: a sidecar that is missing means the image was not given as the set `build`
//! writes (exit 2, invalid input); a sidecar that is present but unreadable or does not
//! match is an integrity failure (exit 3).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::disk::{DiskError, OpenImage};
use crate::exit::{Classify, Code, PathIo};
use crate::layer::Sealed;
use crate::manifest::Manifest;
use crate::reporter::{human_bytes, Reporter};
use crate::types::{ItemKind, OutFormat, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The image path itself: missing, not a regular file.
    #[error(transparent)]
    Image(#[from] DiskError),
    #[error("{what} {} is missing (`imgbuild build` writes it beside the image)", path.display())]
    MissingSidecar { what: &'static str, path: PathBuf },
    #[error("{}: {msg}", path.display())]
    BadSidecar { path: PathBuf, msg: String },
    #[error(
        "{}: sha256 mismatch: the image hashes to {actual}, which does not match {expected} recorded in {}",
        path.display(),
        sidecar.display()
    )]
    Mismatch { path: PathBuf, sidecar: PathBuf, expected: Sha256, actual: Sha256 },
    #[error(transparent)]
    Io(#[from] PathIo),
}

impl Classify for OutputError {
    fn code(&self) -> Code {
        match self {
            OutputError::Image(e) => e.code(),
            OutputError::MissingSidecar { .. } => Code::Input,
            OutputError::BadSidecar { .. } | OutputError::Mismatch { .. } => Code::Integrity,
            OutputError::Io(e) => e.code(),
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let at = PathIo::at(what, path);
    move |e| at(e).into()
}

/// The four files of one build, by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSet {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub checksum: PathBuf,
    pub sbom: PathBuf,
}

impl OutputSet {
    /// The files a build of `stem` in `format` writes into `dir`.
    pub fn named(dir: &Path, stem: &str, format: OutFormat) -> OutputSet {
        let image = dir.join(format!("{stem}.{format}"));
        OutputSet {
            checksum: dir.join(format!("{stem}.{format}.sha256")),
            manifest: dir.join(format!("{stem}.manifest.json")),
            sbom: dir.join(format!("{stem}.spdx.json")),
            image,
        }
    }

    /// The set an image belongs to, by the names `build` gives its sidecars (the stem is
    /// the image's file name without its extension). Nothing is read.
    pub fn beside(image: &Path) -> OutputSet {
        let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(&name);
        let dir = image.parent().unwrap_or(Path::new(""));
        OutputSet {
            image: image.to_path_buf(),
            checksum: dir.join(format!("{name}.sha256")),
            manifest: dir.join(format!("{stem}.manifest.json")),
            sbom: dir.join(format!("{stem}.spdx.json")),
        }
    }

    /// (what, path) of every file, the image first.
    pub fn files(&self) -> [(&'static str, &Path); 4] {
        [
            ("image", &self.image),
            ("manifest", &self.manifest),
            ("checksum", &self.checksum),
            ("sbom", &self.sbom),
        ]
    }

    /// The image's file name (what the checksum sidecar names).
    pub fn image_name(&self) -> String {
        self.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Write the sidecars of `staged_image` (whose digest is `image_sha256`) into
    /// `staging`, then move all four to this set's paths, the image last. `sealed` is
    /// the manifest exactly as written into the image.
    pub fn write(
        &self,
        staging: &Path,
        staged_image: &Path,
        image_sha256: &Sha256,
        sealed: &Sealed,
        source_date_epoch: u64,
    ) -> Result<(), OutputError> {
        let stage = |p: &Path| staging.join(p.file_name().unwrap_or_default());
        let write = |to: &Path, bytes: &[u8]| -> Result<PathBuf, OutputError> {
            let p = stage(to);
            std::fs::write(&p, bytes).map_err(io("writing", &p))?;
            Ok(p)
        };
        let man = write(&self.manifest, &sealed.json)?;
        let sum = write(&self.checksum, format!("{image_sha256}  {}\n", self.image_name()).as_bytes())?;
        let stem = self.image_name();
        let stem = stem.rsplit_once('.').map(|(s, _)| s).unwrap_or(&stem);
        let doc = sbom(&sealed.manifest, stem, &self.image_name(), image_sha256, source_date_epoch);
        let mut sbom_bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        sbom_bytes.push(b'\n');
        let sb = write(&self.sbom, &sbom_bytes)?;
        for (from, to) in [(&man, &self.manifest), (&sum, &self.checksum), (&sb, &self.sbom)] {
            std::fs::rename(from, to).map_err(io("moving into place", to))?;
        }
        std::fs::rename(staged_image, &self.image).map_err(io("moving into place", &self.image))
    }

    /// Move the four files into `dir` (same names), sidecars first and the image last.
    pub fn move_into(&self, dir: &Path) -> Result<OutputSet, OutputError> {
        let to = |p: &Path| dir.join(p.file_name().unwrap_or_default());
        let moved = OutputSet {
            image: to(&self.image),
            manifest: to(&self.manifest),
            checksum: to(&self.checksum),
            sbom: to(&self.sbom),
        };
        for (from, to) in
            [(&self.manifest, &moved.manifest), (&self.checksum, &moved.checksum), (&self.sbom, &moved.sbom)]
        {
            std::fs::rename(from, to).map_err(io("moving into place", to))?;
        }
        std::fs::rename(&self.image, &moved.image).map_err(io("moving into place", &moved.image))?;
        Ok(moved)
    }

    fn read_sidecar(&self, what: &'static str, path: &Path) -> Result<Vec<u8>, OutputError> {
        std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OutputError::MissingSidecar { what, path: path.to_path_buf() },
            _ => io("reading", path)(e),
        })
    }

    /// The digest the checksum sidecar records for the image.
    pub fn recorded_sha256(&self) -> Result<Sha256, OutputError> {
        let bytes = self.read_sidecar("checksum file", &self.checksum)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| OutputError::BadSidecar {
            path: self.checksum.clone(),
            msg: "not text in sha256sum format".into(),
        })?;
        let name = self.image_name();
        crate::types::digest::find_in_sums(text, &name).ok_or_else(|| OutputError::BadSidecar {
            path: self.checksum.clone(),
            msg: format!("no `<sha256>  {name}` line (sha256sum format)"),
        })
    }

    /// Hash the image (a progress task on `rep`) and compare it with the checksum
    /// sidecar; its digest when they match.
    pub fn verify_checksum(&self, rep: &Reporter) -> Result<Sha256, OutputError> {
        let len = crate::disk::open::regular_file(&self.image)?;
        let expected = self.recorded_sha256()?;
        let name = self.image_name();
        let task = rep.task(&format!("sha256 {name}"), Some(len));
        let mut f = std::fs::File::open(&self.image).map_err(io("opening", &self.image))?;
        let actual = match Sha256::of_reader(&mut f, |n| task.inc(n)) {
            Ok((sha, _)) => sha,
            Err(e) => {
                task.abandon();
                return Err(io("hashing", &self.image)(e));
            }
        };
        if actual != expected {
            task.abandon();
            return Err(OutputError::Mismatch {
                path: self.image.clone(),
                sidecar: self.checksum.clone(),
                expected,
                actual,
            });
        }
        task.finish(&format!("verified sha256 {name} ({})", human_bytes(len)));
        Ok(actual)
    }

    /// The manifest sidecar.
    pub fn read_manifest(&self) -> Result<Manifest, OutputError> {
        let bytes = self.read_sidecar("manifest", &self.manifest)?;
        serde_json::from_slice(&bytes).map_err(|e| OutputError::BadSidecar {
            path: self.manifest.clone(),
            msg: format!("not an imgbuild manifest: {e}"),
        })
    }

    /// Open the image read-only (any format a build writes).
    pub fn open(&self, root_label: &str) -> Result<OpenImage, DiskError> {
        crate::disk::open_read_only(&self.image, root_label)
    }
}

/// SPDX 2.3 JSON: the image as the described package, containing everything it was
/// built from (the manifest's components: base, artifacts, packages) with its version,
/// first download URL and sha256. `created` is the recipe's source_date_epoch, so the
/// document is reproducible.
pub fn sbom(
    m: &Manifest,
    stem: &str,
    image_name: &str,
    image_sha256: &Sha256,
    sde: u64,
) -> serde_json::Value {
    let id = |kind: ItemKind, name: &str| {
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
            .collect();
        // Names are unique within a kind; packages get their own namespace.
        match kind {
            ItemKind::Package => format!("SPDXRef-Package-deb-{clean}"),
            ItemKind::Image => format!("SPDXRef-Package-image-{clean}"),
            ItemKind::Base | ItemKind::Artifact => format!("SPDXRef-Package-{clean}"),
        }
    };
    let purpose = |kind: ItemKind| match kind {
        ItemKind::Base => "OPERATING-SYSTEM",
        ItemKind::Artifact | ItemKind::Package => "APPLICATION",
        ItemKind::Image => "CONTAINER",
    };
    let mut packages = vec![json!({
        "name": image_name,
        "SPDXID": "SPDXRef-Image",
        "versionInfo": m.inputs_digest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": image_sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
    })];
    let mut rels = vec![
        json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"}),
    ];
    for (kind, d) in m.components() {
        packages.push(json!({
            "name": d.name,
            "SPDXID": id(kind, &d.name),
            "versionInfo": d.version,
            "downloadLocation": d.urls.first().cloned().unwrap_or_else(|| "NOASSERTION".into()),
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": d.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": purpose(kind),
        }));
        rels.push(json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id(kind, &d.name)}));
    }
    images_in_sbom(m, &mut packages, &mut rels);
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": stem,
        "documentNamespace": format!("https://imgbuild.invalid/spdx/{stem}/{}", m.inputs_digest),
        "creationInfo": {
            "created": rfc3339(sde),
            "creators": [format!("Tool: imgbuild-{}", m.imgbuild_version)],
        },
        "packages": packages,
        "relationships": rels,
    })
}

/// The embedded container images: one CONTAINER package per image (the digest its
/// reference resolved to as checksum, a `pkg:oci` purl with repository, tag and arch, the
/// platform manifest and config in its comment), each CONTAINS its layers: one ARCHIVE
/// package per distinct layer digest (a layer several images share is listed once).
fn images_in_sbom(m: &Manifest, packages: &mut Vec<serde_json::Value>, rels: &mut Vec<serde_json::Value>) {
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let mut layers_listed = std::collections::BTreeSet::new();
    for (n, img) in m.images.iter().enumerate() {
        let h = hex(&img.digest);
        let id = format!("SPDXRef-ContainerImage-{n}-{}", h.get(..12).unwrap_or(&h));
        let parsed = crate::types::ImageRef::parse(&img.reference).ok();
        let (location, purl, version) = match &parsed {
            Some(r) => {
                let short = r.path.rsplit('/').next().unwrap_or(&r.path);
                let mut purl = format!(
                    "pkg:oci/{short}@{}?repository_url={}&arch={}",
                    img.digest.replace(':', "%3A"),
                    r.name(),
                    m.arch
                );
                if let Some(t) = &r.tag {
                    purl.push_str(&format!("&tag={t}"));
                }
                let location = format!("https://{}/v2/{}/manifests/{}", r.api_host(), r.path, img.digest);
                (location, purl, r.tag.clone().unwrap_or_else(|| img.digest.clone()))
            }
            None => ("NOASSERTION".into(), String::new(), img.digest.clone()),
        };
        let mut p = json!({
            "name": img.reference,
            "SPDXID": id,
            "versionInfo": version,
            "downloadLocation": location,
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": hex(&img.digest)}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "CONTAINER",
            "comment": format!("linux/{} manifest {}, config {}", m.arch, img.manifest, img.config),
        });
        if !purl.is_empty() {
            p["externalRefs"] = json!([{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}]);
        }
        packages.push(p);
        rels.push(json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
        for l in &img.layers {
            let lid = format!("SPDXRef-Layer-{}", hex(l));
            if layers_listed.insert(lid.clone()) {
                packages.push(json!({
                    "name": l,
                    "SPDXID": lid,
                    "downloadLocation": "NOASSERTION",
                    "filesAnalyzed": false,
                    "checksums": [{"algorithm": "SHA256", "checksumValue": hex(l)}],
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": "NOASSERTION",
                    "copyrightText": "NOASSERTION",
                    "primaryPackagePurpose": "ARCHIVE",
                }));
            }
            rels.push(
                json!({"spdxElementId": id, "relationshipType": "CONTAINS", "relatedSpdxElement": lid}),
            );
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`. Recipe validation keeps a
/// source_date_epoch before 2446, well inside what `time` represents; a value past year 9999
/// (which no recipe passes) prints as that limit.
pub fn rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
    crate::types::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1724198400), "2024-08-21T00:00:00Z");
        assert_eq!(rfc3339(951782400 + 3661), "2000-02-29T01:01:01Z");
    }

    /// The hand-written civil-from-days conversion this module used before `time` did it,
    /// kept to show the two agree over every source_date_epoch a recipe may set.
    fn civil(secs: u64) -> String {
        let days = (secs / 86400) as i64;
        let rem = secs % 86400;
        let z = days + 719468;
        let era = z.div_euclid(146097);
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }

    #[test]
    fn dates_agree_with_the_civil_from_days_algorithm() {
        // A prime step visits every time of day and every day of the year many times over.
        let mut s = 0u64;
        while s <= crate::recipe::MAX_SOURCE_DATE_EPOCH {
            assert_eq!(rfc3339(s), civil(s), "{s}");
            s += 86_399 * 7 + 13;
        }
        let max = crate::recipe::MAX_SOURCE_DATE_EPOCH;
        assert_eq!(rfc3339(max), civil(max));
    }

    #[test]
    fn names_follow_the_image() {
        let s = OutputSet::named(Path::new("out"), "k8s-worker-amd64", OutFormat::Vmdk);
        assert_eq!(s, OutputSet::beside(Path::new("out/k8s-worker-amd64.vmdk")));
        assert_eq!(s.checksum, Path::new("out/k8s-worker-amd64.vmdk.sha256"));
        assert_eq!(s.manifest, Path::new("out/k8s-worker-amd64.manifest.json"));
        assert_eq!(s.sbom, Path::new("out/k8s-worker-amd64.spdx.json"));
        assert_eq!(s.image_name(), "k8s-worker-amd64.vmdk");
    }

    #[test]
    fn sidecar_problems_have_their_class() {
        let d = tempfile::tempdir().unwrap();
        let s = OutputSet::beside(&d.path().join("x.qcow2"));
        std::fs::write(&s.image, b"image").unwrap();
        let e = s.recorded_sha256().unwrap_err();
        assert_eq!(e.code(), Code::Input, "{e}");
        assert!(e.to_string().contains("x.qcow2.sha256 is missing"), "{e}");
        std::fs::write(&s.checksum, format!("{}  other.qcow2\n", Sha256::of(b"image"))).unwrap();
        assert_eq!(s.recorded_sha256().unwrap_err().code(), Code::Integrity);
        std::fs::write(&s.checksum, format!("{}  x.qcow2\n", Sha256::of(b"other"))).unwrap();
        let e = s.verify_checksum(&Reporter::silent()).unwrap_err();
        assert_eq!(e.code(), Code::Integrity);
        assert!(e.to_string().contains("sha256 mismatch"), "{e}");
        std::fs::write(&s.checksum, format!("{}  x.qcow2\n", Sha256::of(b"image"))).unwrap();
        assert_eq!(s.verify_checksum(&Reporter::silent()).unwrap(), Sha256::of(b"image"));
        let gone = OutputSet::beside(&d.path().join("gone.qcow2"));
        assert_eq!(gone.verify_checksum(&Reporter::silent()).unwrap_err().code(), Code::Input);
    }
}
