//! Reading Istio/Kubernetes YAML: files or directories of them, multi-document files,
//! `kind: List`, and the API versions Istio serves (`networking.istio.io` v1alpha3, v1beta1,
//! v1; Kubernetes `v1`; `discovery.k8s.io/v1`). Every problem becomes a [`Message`] naming the
//! file, document, resource and field; a broken document never stops the others.
//!
//! Istio itself accepts unknown fields (it retries decoding leniently), so an unknown field is a
//! warning here: it is reported with its path, dropped, and the rest of the resource is used.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::{Kind, Meta, Object, Origin};
use super::validate::{names, Level, Message};

/// Errors that stop loading altogether (an unreadable directory).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Everything loaded from a set of files.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub messages: Vec<Message>,
}

/// The YAML/JSON files under `dir` (recursively), sorted by path.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| LoadError::Io(d.clone(), e))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every config file under `dir` (or `dir` itself when it is a file).
pub fn load_path(dir: &Path) -> Result<Loaded, LoadError> {
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        config_files(dir)?
    };
    let mut out = Loaded::default();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| LoadError::Io(f.clone(), e))?;
        load_str(&f.display().to_string(), &text, &mut out);
    }
    Ok(out)
}

fn file_msg(level: Level, file: &str, doc: usize, text: String) -> Message {
    Message {
        level,
        origin: Origin {
            file: file.to_string(),
            doc,
        },
        resource: String::new(),
        field: String::new(),
        text,
    }
}

/// Loads the documents of one file (`file` labels messages).
pub fn load_str(file: &str, text: &str, out: &mut Loaded) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => load_value(file, i, v, "", out),
            Err(e) => {
                out.messages
                    .push(file_msg(Level::Error, file, i, format!("YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        }
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(|x| x.as_str())
}

fn load_value(file: &str, doc: usize, v: Value, prefix: &str, out: &mut Loaded) {
    let api = str_field(&v, "apiVersion").unwrap_or("").to_string();
    let kind = str_field(&v, "kind").unwrap_or("").to_string();
    if kind.is_empty() || api.is_empty() {
        out.messages.push(file_msg(
            Level::Error,
            file,
            doc,
            format!("{prefix}document has no apiVersion/kind; skipped"),
        ));
        return;
    }
    if kind == "List" || kind.ends_with("List") && v.get("items").is_some() {
        if let Some(Value::Sequence(items)) = v.get("items") {
            for (j, it) in items.iter().enumerate() {
                load_value(file, doc, it.clone(), &format!("{prefix}items[{j}]: "), out);
            }
        }
        return;
    }
    let (group, version) = api.rsplit_once('/').unwrap_or(("", api.as_str()));
    let meta: Meta = v
        .get("metadata")
        .cloned()
        .and_then(|m| serde_yaml_ng::from_value(m).ok())
        .unwrap_or_default();
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let mut obj = Object {
        meta,
        namespace,
        kind: Kind::Namespace,
        origin: Origin {
            file: file.to_string(),
            doc,
        },
    };
    let id = format!("{kind} {}/{}", obj.namespace, obj.meta.name);
    let msg = |level, field: &str, text: String| Message {
        level,
        origin: obj.origin.clone(),
        resource: id.clone(),
        field: field.to_string(),
        text,
    };
    if obj.meta.name.is_empty() {
        out.messages.push(msg(
            Level::Error,
            "metadata.name",
            "name is required; skipped".into(),
        ));
        return;
    }
    // What the Kubernetes API server would refuse before any controller sees it.
    if let Some(problem) = names::object_name_problem(&kind, &obj.meta.name) {
        out.messages.push(msg(
            Level::Error,
            "metadata.name",
            format!("{problem}; skipped"),
        ));
        return;
    }
    if let Some(ns) = obj.meta.namespace.as_deref().filter(|n| !n.is_empty()) {
        if !names::is_lowercase_label(ns) {
            out.messages.push(msg(
                Level::Error,
                "metadata.namespace",
                format!("{ns:?} is not a namespace name (lowercase DNS-1123 label); skipped"),
            ));
            return;
        }
    }
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let istio_versions = ["v1alpha3", "v1beta1", "v1"];
    let mut msgs = Vec::new();
    let kind_val = match (group, kind.as_str()) {
        ("", "Service") => spec_of(spec, &mut msgs).map(Kind::Service),
        ("", "Endpoints") => {
            #[derive(Deserialize)]
            struct E {
                #[serde(default)]
                subsets: Vec<super::model::EndpointsSubset>,
            }
            decode::<E>(v.clone(), "", &mut msgs).map(|e| Kind::Endpoints(e.subsets))
        }
        ("", "Pod") => {
            let st = v.get("status").cloned().unwrap_or(Value::Null);
            spec_of(st, &mut msgs).map(Kind::Pod)
        }
        ("", "Namespace") => Some(Kind::Namespace),
        // Istio's mesh config: ConfigMap `istio` (or `istio-<revision>`), key `mesh`.
        ("", "ConfigMap")
            if (obj.meta.name == "istio" || obj.meta.name.starts_with("istio-"))
                && v.get("data").and_then(|d| d.get("mesh")).is_some() =>
        {
            let text = v["data"]["mesh"].as_str().unwrap_or_default();
            match serde_yaml_ng::from_str::<Option<super::model::MeshConfig>>(text) {
                Ok(m) => Some(Kind::MeshConfig(m.unwrap_or_default())),
                Err(e) => {
                    msgs.push((
                        Level::Error,
                        "data.mesh".into(),
                        format!("not valid YAML: {e}"),
                    ));
                    None
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") if matches!(version, "v1" | "v1beta1") => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct S {
                #[serde(default)]
                address_type: String,
                #[serde(default)]
                endpoints: Vec<super::model::SliceEndpoint>,
                #[serde(default)]
                ports: Vec<super::model::EndpointPort>,
            }
            decode::<S>(v.clone(), "", &mut msgs).map(|s| Kind::EndpointSlice {
                address_type: s.address_type,
                endpoints: s.endpoints,
                ports: s.ports,
            })
        }
        ("networking.istio.io", k) if istio_versions.contains(&version) => match k {
            "VirtualService" => spec_of(spec, &mut msgs).map(Kind::VirtualService),
            "DestinationRule" => spec_of(spec, &mut msgs).map(Kind::DestinationRule),
            "ServiceEntry" => spec_of(spec, &mut msgs).map(Kind::ServiceEntry),
            "WorkloadEntry" => spec_of(spec, &mut msgs).map(Kind::WorkloadEntry),
            "Gateway" => spec_of(spec, &mut msgs).map(Kind::Gateway),
            "Sidecar" => spec_of(spec, &mut msgs).map(Kind::Sidecar),
            _ => {
                out.messages.push(msg(
                    Level::Warning,
                    "kind",
                    format!("{k} is not supported by Sluice yet; ignored"),
                ));
                return;
            }
        },
        ("networking.istio.io", _) => {
            out.messages.push(msg(
                Level::Error,
                "apiVersion",
                format!("unknown version {api} (v1alpha3, v1beta1 and v1 are served)"),
            ));
            return;
        }
        _ => {
            out.messages.push(msg(
                Level::Info,
                "kind",
                format!("{api} {kind} does not affect the data plane; ignored"),
            ));
            return;
        }
    };
    for (level, field, text) in msgs {
        out.messages.push(msg(level, &field, text));
    }
    let Some(k) = kind_val else { return };
    obj.kind = k;
    let checks = super::validate::check_object(&obj);
    let bad = checks.iter().any(|m| m.level == Level::Error);
    out.messages.extend(checks);
    if bad {
        out.messages.push(msg(
            Level::Error,
            "",
            "resource rejected because of the errors above".into(),
        ));
    } else {
        out.objects.push(obj);
    }
}

type Found = (Level, String, String);

fn spec_of<T: DeserializeOwned + Default>(spec: Value, msgs: &mut Vec<Found>) -> Option<T> {
    if spec.is_null() {
        return Some(T::default());
    }
    decode(spec, "spec", msgs)
}

/// Decodes `v` into `T`, reporting unknown fields as warnings (and dropping them, as Istio
/// does) and any other mismatch as an error with its field path.
fn decode<T: DeserializeOwned>(mut v: Value, root: &str, msgs: &mut Vec<Found>) -> Option<T> {
    for _ in 0..64 {
        let r: Result<T, _> = serde_path_to_error::deserialize(v.clone());
        match r {
            Ok(t) => return Some(t),
            Err(e) => {
                let segs: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
                let text = e.inner().to_string();
                let path = join(root, &e.path().to_string());
                if let Some(field) = unknown_field(&text) {
                    // The path names the field itself (its key) or the map holding it.
                    let mut parent: Vec<String> = segs.clone();
                    if parent.last().is_some_and(|l| l == &field) {
                        parent.pop();
                    }
                    if remove(&mut v, &parent, &field) {
                        let at = join(&join(root, &parent.join(".")), &field);
                        msgs.push((
                            Level::Warning,
                            at.replace(".[", "["),
                            "unknown field; ignored".to_string(),
                        ));
                        continue;
                    }
                }
                msgs.push((Level::Error, path, text));
                return None;
            }
        }
    }
    msgs.push((
        Level::Error,
        root.to_string(),
        "too many unknown fields".into(),
    ));
    None
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty() || b == ".") {
        (true, _) => b.to_string(),
        (false, true) => a.to_string(),
        (false, false) if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Removes `field` from the mapping at `path` (segments as displayed: `http`, `[0]`).
fn remove(v: &mut Value, path: &[String], field: &str) -> bool {
    let mut cur = v;
    for seg in path {
        let next = if let Some(i) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            match (cur, i.parse::<usize>()) {
                (Value::Sequence(s), Ok(i)) => s.get_mut(i),
                _ => None,
            }
        } else {
            cur.get_mut(seg.as_str())
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match cur {
        Value::Mapping(m) => m.remove(field).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_doc_list_and_unknown_fields() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1alpha3
  kind: VirtualService
  metadata: {name: a, namespace: ns}
  spec:
    hosts: [a]
    http:
    - route:
      - destination: {host: a}
      websocketUpgrade: true
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: b}
spec:
  host: b
  subsets: {bad: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: c}
"#;
        let mut l = Loaded::default();
        load_str("f.yaml", text, &mut l);
        assert_eq!(l.objects.len(), 1, "{:#?}", l.messages);
        let w = &l.messages[0];
        assert_eq!(w.level, Level::Warning, "{w}");
        assert_eq!(w.field, "spec.http[0].websocketUpgrade", "{w}");
        assert_eq!(w.resource, "VirtualService ns/a");
        let e = l.messages.iter().find(|m| m.level == Level::Error).unwrap();
        assert_eq!(e.resource, "DestinationRule default/b");
        assert_eq!(e.field, "spec.subsets", "{e}");
        assert_eq!(e.origin.doc, 1);
    }

    #[test]
    fn bad_regex_rejects_resource() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - match:\n    - uri: {regex: 'a(b'}\n    route:\n    - destination: {host: r}\n";
        let mut l = Loaded::default();
        load_str("f.yaml", text, &mut l);
        assert!(l.objects.is_empty());
        assert!(
            l.messages
                .iter()
                .any(|m| m.field == "spec.http[0].match[0].uri.regex"),
            "{:#?}",
            l.messages
        );
    }
}
