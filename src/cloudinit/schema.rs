//! Validation of `#cloud-config` documents against the embedded cloud-init 24.1.3
//! JSON schema (draft 4, local refs only; see cloud-init/schema/README.md).

use std::sync::OnceLock;

use jsonschema::{Draft, Validator};

pub const SCHEMA_JSON: &str = include_str!("../../cloud-init/schema/schema-cloud-config-v1.json");

fn validator() -> Result<&'static Validator, String> {
    static V: OnceLock<Result<Validator, String>> = OnceLock::new();
    V.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(SCHEMA_JSON).map_err(|e| format!("embedded schema is not JSON: {e}"))?;
        jsonschema::options()
            .with_draft(Draft::Draft4)
            .build(&schema)
            .map_err(|e| format!("embedded schema does not compile: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Check a `#cloud-config` text: header, YAML, schema. Returns the parsed document.
pub fn check_user_data(text: &str) -> Result<serde_json::Value, String> {
    if text.lines().next() != Some("#cloud-config") {
        return Err("first line is not #cloud-config".into());
    }
    let doc: serde_json::Value = serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let v = validator()?;
    let errs: Vec<String> = v
        .iter_errors(&doc)
        .map(|e| {
            format!(
                "{}: {e}",
                if e.instance_path.as_str().is_empty() { "/" } else { e.instance_path.as_str() }
            )
        })
        .collect();
    if errs.is_empty() {
        Ok(doc)
    } else {
        Err(errs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_catches_errors() {
        assert!(check_user_data("#cloud-config\nhostname: a\nruncmd: [[echo, hi]]\n").is_ok());
        let e = check_user_data("#cloud-config\nuserz: 1\n").unwrap_err();
        assert!(e.contains("userz"), "{e}");
        let e = check_user_data("#cloud-config\nwrite_files:\n  - content: x\n").unwrap_err();
        assert!(e.contains("path"), "{e}");
        assert!(check_user_data("#cloud-config\nwrite_files:\n  - {path: /a, permissions: 644}\n").is_err());
        // serde_yaml reads 0644 as a string where PyYAML (cloud-init) reads octal 420:
        // templates therefore quote every permission
        assert!(check_user_data("hostname: a\n").is_err());
    }
}
