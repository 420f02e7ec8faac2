//! Build outputs beside the image: `<stem>.manifest.json`, `<stem>.<format>.sha256`
//! (sha256sum format) and `<stem>.spdx.json` (SPDX 2.3). Everything is written into
//! the build's temp dir first and renamed into the output dir at the end, the image
//! last, so a present image always comes with its complete set of sidecars.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::manifest::Manifest;

/// The files of one build, by final path.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub checksum: PathBuf,
    pub sbom: PathBuf,
    /// sha256 of the image file.
    pub image_sha256: String,
}

/// File names for `stem` (`<recipe>-<role>-<arch>`) and `format`.
pub fn names(stem: &str, format: &str) -> [String; 4] {
    [
        format!("{stem}.{format}"),
        format!("{stem}.manifest.json"),
        format!("{stem}.{format}.sha256"),
        format!("{stem}.spdx.json"),
    ]
}

/// Write the sidecars for `staged_image` into `staging`, then move all four into
/// `out_dir`. `manifest_json` is the exact manifest written into the image.
pub fn publish(
    staging: &Path,
    staged_image: &Path,
    out_dir: &Path,
    stem: &str,
    format: &str,
    manifest_json: &[u8],
    source_date_epoch: u64,
) -> Result<Outputs> {
    let sha = sha256_file(staged_image)?;
    publish_hashed(staging, staged_image, &sha, out_dir, stem, format, manifest_json, source_date_epoch)
}

/// [`publish`] for an image whose sha256 was computed while it was written.
#[allow(clippy::too_many_arguments)]
pub fn publish_hashed(
    staging: &Path,
    staged_image: &Path,
    image_sha256: &str,
    out_dir: &Path,
    stem: &str,
    format: &str,
    manifest_json: &[u8],
    source_date_epoch: u64,
) -> Result<Outputs> {
    let manifest: Manifest = serde_json::from_slice(manifest_json).context("parsing the layer's manifest")?;
    let [img_name, man_name, sum_name, sbom_name] = names(stem, format);
    let image_sha256 = image_sha256.to_string();
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = staging.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let man = write(&man_name, manifest_json)?;
    let sum = write(&sum_name, format!("{image_sha256}  {img_name}\n").as_bytes())?;
    let sbom_doc = sbom(&manifest, stem, &img_name, &image_sha256, source_date_epoch);
    let mut sbom_bytes = serde_json::to_vec_pretty(&sbom_doc)?;
    sbom_bytes.push(b'\n');
    let sb = write(&sbom_name, &sbom_bytes)?;
    let mv = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = out_dir.join(name);
        std::fs::rename(from, &to).with_context(|| format!("moving {} into place", to.display()))?;
        Ok(to)
    };
    let manifest = mv(&man, &man_name)?;
    let checksum = mv(&sum, &sum_name)?;
    let sbom = mv(&sb, &sbom_name)?;
    let image = mv(staged_image, &img_name)?;
    Ok(Outputs { image, manifest, checksum, sbom, image_sha256 })
}

pub fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// SPDX 2.3 JSON: the image as the described package, containing the base image and
/// every artifact with its version, first download URL and sha256. `created` is the
/// recipe's source_date_epoch, so the document is reproducible.
pub fn sbom(m: &Manifest, stem: &str, image_name: &str, image_sha256: &str, sde: u64) -> serde_json::Value {
    let id = |name: &str| {
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
            .collect();
        format!("SPDXRef-Package-{clean}")
    };
    let pkg = |d: &crate::manifest::Download, purpose: &str| {
        json!({
            "name": d.name,
            "SPDXID": id(&d.name),
            "versionInfo": d.version,
            "downloadLocation": d.urls.first().cloned().unwrap_or_else(|| "NOASSERTION".into()),
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": d.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": purpose,
        })
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
    packages.push(pkg(&m.base, "OPERATING-SYSTEM"));
    let mut rels = vec![
        json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"}),
        json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id(&m.base.name)}),
    ];
    for a in &m.artifacts {
        packages.push(pkg(a, "APPLICATION"));
        rels.push(
            json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id(&a.name)}),
        );
    }
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

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic
/// Gregorian), without a date crate.
pub fn rfc3339(secs: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1724198400), "2024-08-21T00:00:00Z");
        assert_eq!(rfc3339(951782400 + 3661), "2000-02-29T01:01:01Z");
    }
}
