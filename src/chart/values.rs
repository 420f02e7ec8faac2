//! Helm values checked before they reach a node, in Rust and without helm: the values
//! a release gets are the chart's `values.yaml` coalesced with each `--values` file in
//! order (helm's rules: maps merge, a later scalar or list replaces, `null` removes a
//! key), and helm refuses to install when the result violates the chart's
//! `values.schema.json`. [`check`] computes the same result and validates it with the
//! same schema, so an invalid value is reported with its field path at render time
//! instead of failing on the first control plane after boot.
//!
//! Where the schemas come from ([`Charts`]): the embedded backend chart always; the
//! recipe add-ons' charts from the download cache (`imgbuild fetch`/`build` put them
//! there, verified by the recipe's sha256, verified again here), else not checked.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{Map, Value};

use super::ChartError;
use crate::plan::BuildPlan;
use crate::types::Sha256;

/// Largest chart file read from a chart archive (values.yaml of big charts is ~150 KiB).
const MAX_CHART_FILE: u64 = 4 << 20;

/// A chart's defaults and schema.
#[derive(Debug, Clone)]
pub struct ChartValues {
    /// Where it came from, for messages (`charts/backend`, `cilium-1.16.1.tgz`).
    pub origin: String,
    pub defaults: Value,
    pub schema: Option<Value>,
}

/// One schema violation: the field's path in the values (`secret.values`,
/// `probes.liveness.periodSeconds`, `tolerations[0]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

/// `base` with `over` merged in, like helm merges several `--values` files.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The chart's defaults coalesced with user values: user values win, maps merge,
/// a user `null` deletes the default (helm's chartutil.CoalesceValues).
pub fn coalesce(defaults: &Value, user: &Value) -> Value {
    let mut out = defaults.clone();
    if let (Value::Object(o), Value::Object(u)) = (&mut out, user) {
        for (k, v) in u {
            if v.is_null() {
                o.remove(k);
            } else if let (Some(d), true) = (o.get(k), v.is_object()) {
                let merged = if d.is_object() { coalesce(d, v) } else { strip_nulls(v) };
                o.insert(k.clone(), merged);
            } else {
                o.insert(k.clone(), strip_nulls(v));
            }
        }
        return out;
    }
    strip_nulls(user)
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(_, x)| !x.is_null()).map(|(k, x)| (k.clone(), strip_nulls(x))).collect(),
        ),
        x => x.clone(),
    }
}

/// The values a release gets from `layers` (in `--values` order) over the chart's
/// defaults, checked against the chart's schema.
pub fn check(chart: &ChartValues, layers: &[&Value]) -> Result<Vec<Violation>, ChartError> {
    let Some(schema) = &chart.schema else { return Ok(Vec::new()) };
    let mut user = Value::Object(Map::new());
    for l in layers {
        merge(&mut user, l);
    }
    let values = coalesce(&chart.defaults, &user);
    let v = jsonschema::validator_for(schema).map_err(|e| ChartError::Invalid {
        origin: chart.origin.clone(),
        msg: format!("values.schema.json does not compile: {e}"),
    })?;
    let mut out: Vec<Violation> = v
        .iter_errors(&values)
        .map(|e| {
            let mut path = dotted(&values, e.instance_path.as_str());
            if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } = &e.kind {
                // name the offending field itself, not the map that holds it
                if let [one] = unexpected.as_slice() {
                    path = if path.is_empty() { one.clone() } else { format!("{path}.{one}") };
                    return Violation {
                        path,
                        message: format!("unknown field ({} allows no {one:?} here)", chart.origin),
                    };
                }
            }
            Violation { path, message: e.to_string() }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path).then(a.message.cmp(&b.message)));
    out.dedup();
    Ok(out)
}

/// A JSON pointer as a dotted path (`/probes/liveness/periodSeconds` →
/// `probes.liveness.periodSeconds`, list indexes as `[n]`).
fn dotted(root: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut cur = Some(root);
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        match cur {
            Some(Value::Array(a)) => {
                out.push_str(&format!("[{seg}]"));
                cur = seg.parse::<usize>().ok().and_then(|i| a.get(i));
            }
            other => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&seg);
                cur = other.and_then(|o| o.get(&seg));
            }
        }
    }
    out
}

/// `values.yaml` and `values.schema.json` of a chart archive (`<name>/values.yaml`).
pub fn from_archive(origin: &str, tgz: &[u8]) -> Result<ChartValues, ChartError> {
    let bad = |msg: String| ChartError::Invalid { origin: origin.to_string(), msg };
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in ar.entries().map_err(|e| bad(format!("not a chart archive: {e}")))? {
        let mut e = e.map_err(|e| bad(format!("not a chart archive: {e}")))?;
        let path = e.path().map_err(|e| bad(e.to_string()))?.to_string_lossy().into_owned();
        // the chart's own files, not its subcharts' (<name>/charts/...)
        let rel = path.split_once('/').map(|(_, r)| r).unwrap_or("");
        if rel == "values.yaml" || rel == "values.schema.json" {
            if e.size() > MAX_CHART_FILE {
                return Err(bad(format!("{path} is larger than {MAX_CHART_FILE} bytes")));
            }
            let mut b = Vec::new();
            e.by_ref().take(MAX_CHART_FILE).read_to_end(&mut b).map_err(|e| bad(e.to_string()))?;
            files.insert(rel.to_string(), b);
        }
    }
    from_files(
        origin,
        files.get("values.yaml").map(Vec::as_slice),
        files.get("values.schema.json").map(Vec::as_slice),
    )
}

fn from_files(origin: &str, values: Option<&[u8]>, schema: Option<&[u8]>) -> Result<ChartValues, ChartError> {
    let bad = |msg: String| ChartError::Invalid { origin: origin.to_string(), msg };
    let defaults: Value = match values {
        Some(b) => serde_yaml::from_slice::<Option<Value>>(b)
            .map_err(|e| bad(format!("values.yaml: {e}")))?
            .unwrap_or(Value::Object(Map::new())),
        None => Value::Object(Map::new()),
    };
    let schema = match schema {
        Some(b) => Some(serde_json::from_slice(b).map_err(|e| bad(format!("values.schema.json: {e}")))?),
        None => None,
    };
    Ok(ChartValues { origin: origin.to_string(), defaults, schema })
}

/// The embedded backend chart's defaults and schema.
pub fn backend() -> Result<ChartValues, ChartError> {
    let f = |name: &str| super::BACKEND.get_file(name).map(|f| f.contents());
    from_files("charts/backend values.schema.json", f("values.yaml"), f("values.schema.json"))
}

/// A recipe add-on as cloud-init sees it: the values baked into the image and, when
/// its chart was found in the cache, the chart's defaults and schema.
#[derive(Debug, Clone)]
pub struct Addon {
    pub release: String,
    /// `name-version.tgz`, for messages.
    pub file: String,
    pub baked: Value,
    pub chart: Option<ChartValues>,
}

/// What the values of a cluster are checked against.
#[derive(Debug, Clone)]
pub struct Charts {
    pub backend: ChartValues,
    /// The control-plane plan's add-ons, in install order.
    pub addons: Vec<Addon>,
    /// Charts that could not be read (missing from the cache, or not matching their digest).
    pub notes: Vec<String>,
}

impl Charts {
    /// The backend chart and `plan`'s add-ons, their charts looked up in `cache` by the
    /// digests the plan pins (and re-hashed: a cache entry is trusted only by its bytes).
    pub fn load(plan: &BuildPlan, cache: Option<&crate::cache::Cache>) -> Result<Charts, ChartError> {
        let mut notes = Vec::new();
        let mut addons = Vec::new();
        for a in &plan.addons {
            let file = format!("{}-{}.tgz", a.name, a.version);
            let found = match cache.map(|c| c.lookup(&a.sha256)).transpose() {
                Ok(found) => found.flatten(),
                Err(e) => {
                    notes.push(format!("{file} in the cache does not match its sha256 {}: {e}", a.sha256));
                    addons.push(Addon {
                        release: a.release.clone(),
                        file,
                        baked: a.values.clone(),
                        chart: None,
                    });
                    continue;
                }
            };
            let chart = match found {
                Some(p) => match std::fs::read(&p) {
                    Ok(b) if Sha256::of(&b) == a.sha256 => Some(from_archive(&file, &b)?),
                    Ok(_) => {
                        notes.push(format!("{} in the cache does not match its sha256 {}", file, a.sha256));
                        None
                    }
                    Err(e) => {
                        notes.push(format!("{}: {e}", p.display()));
                        None
                    }
                },
                None => {
                    notes.push(format!(
                        "chart {file} is not in the download cache (`imgbuild fetch --role control-plane` puts it there)"
                    ));
                    None
                }
            };
            addons.push(Addon { release: a.release.clone(), file, baked: a.values.clone(), chart });
        }
        Ok(Charts { backend: backend()?, addons, notes })
    }

    /// Only the backend chart (no add-on overrides can be checked).
    pub fn backend_only() -> Result<Charts, ChartError> {
        Ok(Charts { backend: backend()?, addons: Vec::new(), notes: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coalesce_follows_helm() {
        let d = json!({"a": {"x": 1, "y": 2}, "l": [1, 2], "s": "d", "gone": {"k": 1}});
        let u = json!({"a": {"y": 3, "z": null}, "l": [9], "gone": null, "new": {"n": null, "m": 1}});
        assert_eq!(coalesce(&d, &u), json!({"a": {"x": 1, "y": 3}, "l": [9], "s": "d", "new": {"m": 1}}));
        let mut base = json!({"a": {"x": 1}, "b": 1});
        merge(&mut base, &json!({"a": {"y": 2}, "b": {"c": 1}}));
        assert_eq!(base, json!({"a": {"x": 1, "y": 2}, "b": {"c": 1}}));
    }

    #[test]
    fn backend_violations_name_the_field() {
        let b = backend().unwrap();
        assert!(check(&b, &[&json!({})]).unwrap().is_empty(), "the chart's defaults are valid");
        let v = check(&b, &[&json!({"secret": {"values": {"A": "b"}}})]).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].path, "secret.values");
        assert!(v[0].message.contains("unknown field"), "{v:?}");
        let v = check(&b, &[&json!({"probes": {"liveness": {"periodSeconds": 0}}, "tolerations": ["x"]})])
            .unwrap();
        let paths: Vec<&str> = v.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, ["probes.liveness.periodSeconds", "tolerations[0]"], "{v:?}");
        // a later layer and a null both count, as with helm
        let v = check(&b, &[&json!({"image": {"repository": ""}}), &json!({"image": {"repository": "r"}})])
            .unwrap();
        assert!(v.is_empty(), "{v:?}");
        let v = check(&b, &[&json!({"resources": {"requests": null}})]).unwrap();
        assert_eq!(v[0].path, "resources", "{v:?}");
    }

    #[test]
    fn reads_a_chart_archive() {
        let p = super::super::package_backend(0).unwrap();
        let c = from_archive("backend.tgz", &p.bytes).unwrap();
        assert!(c.schema.is_some());
        assert_eq!(c.defaults["image"]["repository"], "ghcr.io/stefanprodan/podinfo");
        assert!(from_archive("x", b"not gzip").is_err());
    }
}
