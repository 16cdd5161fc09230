//! Which files of the embedded descriptor set a document needs.
//!
//! The whole Envoy v3 schema, expanded into a `prost_reflect::DescriptorPool`, takes about
//! 14 MiB of heap; a bootstrap, a route table or an extension config uses a small part of it.
//! [`Index`] reads the set's wire form without decoding it into messages: for each file, where
//! its bytes are, which files it imports, and the messages (nested ones included) it defines.
//! [`Index::closure`] then gives the files that define a list of message types, with
//! everything they import, and [`Index::subset`] the bytes of a smaller set of just those.

use std::collections::HashMap;
use std::ops::Range;

/// One file of the set.
struct File {
    /// The file's whole entry in the set (tag, length and body), so that entries concatenate
    /// into a valid smaller set.
    entry: Range<usize>,
    imports: Vec<usize>,
}

/// Where the files of a `FileDescriptorSet` are, what they import and define.
pub struct Index {
    files: Vec<File>,
    /// A message's full name (`envoy.config.core.v3.Address`) → the file that defines it.
    by_message: HashMap<Box<str>, usize>,
}

/// A file set that is not the protobuf wire form of a `FileDescriptorSet`.
#[derive(Debug, thiserror::Error)]
#[error("descriptor set: malformed at byte {0}")]
pub struct Malformed(usize);

/// Reads protobuf wire format: varints, and skipping fields.
struct Wire<'a> {
    b: &'a [u8],
    at: usize,
    /// Offset of `b` within the whole set (for errors and entry ranges).
    base: usize,
}

impl<'a> Wire<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or(Malformed(self.base + self.at))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed(self.base + self.at))
    }

    /// The next field's number and, for a length-delimited field, its bytes; other wire types
    /// are skipped and come back as `None`.
    fn field(&mut self) -> Result<(u64, Option<Wire<'a>>), Malformed> {
        let key = self.varint()?;
        let at = self.base + self.at;
        match key & 7 {
            0 => {
                self.varint()?;
                Ok((key >> 3, None))
            }
            1 => self.skip(8).map(|_| (key >> 3, None)),
            5 => self.skip(4).map(|_| (key >> 3, None)),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Malformed(at))?;
                let start = self.at;
                self.skip(len)?;
                let inner = Wire {
                    b: &self.b[start..start + len],
                    at: 0,
                    base: self.base + start,
                };
                Ok((key >> 3, Some(inner)))
            }
            _ => Err(Malformed(at)),
        }
    }

    fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        if self.b.len() - self.at < n {
            return Err(Malformed(self.base + self.at));
        }
        self.at += n;
        Ok(())
    }

    fn str(&self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.b).map_err(|_| Malformed(self.base))
    }
}

// Field numbers in descriptor.proto.
const SET_FILE: u64 = 1;
const FILE_NAME: u64 = 1;
const FILE_PACKAGE: u64 = 2;
const FILE_DEPENDENCY: u64 = 3;
const FILE_MESSAGE_TYPE: u64 = 4;
const MESSAGE_NAME: u64 = 1;
const MESSAGE_NESTED_TYPE: u64 = 3;

impl Index {
    /// Indexes a serialized `FileDescriptorSet` whose files come after the files they import
    /// (as protoc and protox write them).
    pub fn new(set: &[u8]) -> Result<Index, Malformed> {
        let mut files = Vec::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut imports_by_name: Vec<Vec<&str>> = Vec::new();
        let mut by_message = HashMap::new();
        let mut w = Wire {
            b: set,
            at: 0,
            base: 0,
        };
        while !w.done() {
            let start = w.at;
            let (num, body) = w.field()?;
            let (SET_FILE, Some(mut body)) = (num, body) else {
                continue;
            };
            let idx = files.len();
            let (mut package, mut imports, mut messages) = ("", Vec::new(), Vec::new());
            while !body.done() {
                match body.field()? {
                    (FILE_NAME, Some(v)) => {
                        by_name.insert(v.str()?, idx);
                    }
                    (FILE_PACKAGE, Some(v)) => package = v.str()?,
                    (FILE_DEPENDENCY, Some(v)) => imports.push(v.str()?),
                    (FILE_MESSAGE_TYPE, Some(v)) => messages.push(v),
                    _ => {}
                }
            }
            for m in messages {
                message_names(m, package, &mut |name| {
                    by_message.insert(name.into_boxed_str(), idx);
                })?;
            }
            files.push(File {
                entry: start..w.at,
                imports: Vec::new(),
            });
            imports_by_name.push(imports);
        }
        // An import missing from the set is left out: the pool reports it if it matters.
        for (f, names) in files.iter_mut().zip(imports_by_name) {
            f.imports = names
                .iter()
                .filter_map(|n| by_name.get(n).copied())
                .collect();
        }
        Ok(Index { files, by_message })
    }

    /// Every file, as a selection for [`Index::subset`].
    pub fn all(&self) -> Vec<bool> {
        vec![true; self.files.len()]
    }

    /// The files that define these message types (full names; unknown ones are skipped), and
    /// every file they import, directly or not.
    pub fn closure<'a>(&self, types: impl IntoIterator<Item = &'a str>) -> Vec<bool> {
        let mut keep = vec![false; self.files.len()];
        let mut todo: Vec<usize> = types
            .into_iter()
            .filter_map(|t| self.by_message.get(t).copied())
            .collect();
        while let Some(f) = todo.pop() {
            if !std::mem::replace(&mut keep[f], true) {
                todo.extend(self.files[f].imports.iter().copied());
            }
        }
        keep
    }

    /// A `FileDescriptorSet` of the selected files, in the set's order (imports first).
    pub fn subset(&self, set: &[u8], keep: &[bool]) -> Vec<u8> {
        let mut out = Vec::new();
        for (f, _) in self.files.iter().zip(keep).filter(|(_, k)| **k) {
            out.extend_from_slice(&set[f.entry.clone()]);
        }
        out
    }
}

/// Calls `add` with the full name of a `DescriptorProto` and of every message nested in it.
fn message_names(
    mut m: Wire<'_>,
    scope: &str,
    add: &mut dyn FnMut(String),
) -> Result<(), Malformed> {
    let mut name = "";
    let mut nested = Vec::new();
    while !m.done() {
        match m.field()? {
            (MESSAGE_NAME, Some(v)) => name = v.str()?,
            (MESSAGE_NESTED_TYPE, Some(v)) => nested.push(v),
            _ => {}
        }
    }
    let full = if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    };
    for n in nested {
        message_names(n, &full, add)?;
    }
    add(full);
    Ok(())
}

/// The message types a JSON document names in `"@type"` (an `Any`'s type URL, at any depth).
pub fn any_types(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("@type").and_then(|t| t.as_str()) {
                out.push(super::proto::any_type_name(t).to_string());
            }
            for child in o.values() {
                any_types(child, out);
            }
        }
        serde_json::Value::Array(a) => {
            for child in a {
                any_types(child, out);
            }
        }
        _ => {}
    }
}

/// The message types that `type.googleapis.com/` type URLs name in protobuf wire bytes (any
/// string field that holds one; more is harmless, since these only choose schema files).
pub fn type_urls_in(wire: &[u8]) -> impl Iterator<Item = &str> {
    const PREFIX: &[u8] = b"type.googleapis.com/";
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(i) = find(&wire[at..], PREFIX) {
            let start = at + i + PREFIX.len();
            let len = wire[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'_')
                .count();
            at = start + len;
            if len > 0 {
                return std::str::from_utf8(&wire[start..at]).ok();
            }
        }
        None
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

    fn file(name: &str, package: &str, deps: &[&str], messages: &[&str]) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some(package.into()),
            dependency: deps.iter().map(|d| d.to_string()).collect(),
            message_type: messages
                .iter()
                .map(|m| DescriptorProto {
                    name: Some(m.to_string()),
                    nested_type: vec![DescriptorProto {
                        name: Some("Inner".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            syntax: Some("proto3".into()),
            ..Default::default()
        }
    }

    fn set() -> Vec<u8> {
        FileDescriptorSet {
            file: vec![
                file("base.proto", "p.base", &[], &["B"]),
                file("mid.proto", "p.mid", &["base.proto"], &["M"]),
                file("top.proto", "p.top", &["mid.proto"], &["T", "U"]),
                file("other.proto", "p.other", &["base.proto"], &["O"]),
            ],
        }
        .encode_to_vec()
    }

    #[test]
    fn a_type_brings_its_file_and_every_import() {
        let bytes = set();
        let ix = Index::new(&bytes).unwrap();
        assert_eq!(ix.all().len(), 4);
        assert_eq!(ix.closure(["p.top.U"]), [true, true, true, false]);
        assert_eq!(ix.closure(["p.other.O.Inner"]), [true, false, false, true]);
        assert_eq!(
            ix.closure(["p.mid.M", "no.such.Type"]),
            [true, true, false, false]
        );
        assert_eq!(ix.closure(["no.such.Type"]), [false; 4]);
    }

    #[test]
    fn a_subset_is_a_valid_set_of_the_selected_files() {
        let bytes = set();
        let ix = Index::new(&bytes).unwrap();
        let sub = ix.subset(&bytes, &ix.closure(["p.top.T"]));
        let decoded = FileDescriptorSet::decode(sub.as_slice()).unwrap();
        let names: Vec<&str> = decoded.file.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["base.proto", "mid.proto", "top.proto"]);
        let pool = prost_reflect::DescriptorPool::decode(sub.as_slice()).unwrap();
        assert!(pool.get_message_by_name("p.top.T.Inner").is_some());
        assert!(pool.get_message_by_name("p.other.O").is_none());
    }

    #[test]
    fn malformed_sets_are_errors() {
        let bytes = set();
        assert!(Index::new(&bytes[..bytes.len() - 3]).is_err());
        assert!(Index::new(&[0x0a, 0xff]).is_err());
        assert!(Index::new(&[0x0b]).is_err()); // wire type 3 (groups) is not used here
    }

    #[test]
    fn type_urls_are_found_in_wire_bytes() {
        let any = prost_types::Any {
            type_url: "type.googleapis.com/a.b.C".into(),
            value: prost_types::Any {
                type_url: "type.googleapis.com/d.E_f".into(),
                value: vec![],
            }
            .encode_to_vec(),
        };
        let wire = any.encode_to_vec();
        let found: Vec<&str> = type_urls_in(&wire).collect();
        assert_eq!(found, ["a.b.C", "d.E_f"]);
        assert_eq!(type_urls_in(b"type.googleapis.com/").count(), 0);
        assert_eq!(type_urls_in(b"").count(), 0);
    }

    #[test]
    fn any_types_are_found_at_any_depth() {
        let v = serde_json::json!({
            "a": [{"@type": "type.googleapis.com/x.Y", "b": {"@type": "z.W"}}],
            "@type": "t/r.S"
        });
        let mut out = Vec::new();
        any_types(&v, &mut out);
        out.sort();
        assert_eq!(out, ["r.S", "x.Y", "z.W"]);
    }
}
