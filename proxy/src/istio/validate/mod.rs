//! Messages in the manner of `istioctl analyze`: a level, the file (and document) a resource came
//! from, the resource (`Kind ns/name`), the field path and what is wrong. Errors drop only the
//! resource (or the part of it) they name; warnings keep it.
//!
//! The checks that need the whole configuration (subsets no DestinationRule defines, gateways
//! that don't exist, hosts that match nothing, bad regexes, weights) live here too.

//!
//! The per-resource rules follow istiod's admission webhook (`pkg/config/validation`): what it
//! refuses is an error here and drops the resource, what it warns about is a warning. Sluice adds
//! errors only where Envoy would refuse the generated configuration or Sluice does not implement
//! a setting, and says so in the message.

mod destination_rule;
mod gateway;
pub mod names;
mod service_entry;
mod sidecar;
mod virtual_service;

#[cfg(test)]
mod tests;

pub(crate) use virtual_service::grpc_code;

use std::collections::BTreeSet;
use std::fmt;

use super::model::{Kind, Object, Origin};
use super::registry::Registry;

/// How bad a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub level: Level,
    pub origin: Origin,
    /// `Kind ns/name`, or empty for file-level problems.
    pub resource: String,
    /// Field path under the resource (`spec.http[0].match[0].uri.regex`), or empty.
    pub field: String,
    pub text: String,
}

impl Message {
    pub fn new(
        level: Level,
        o: &Object,
        field: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        Message {
            level,
            origin: o.origin.clone(),
            resource: o.id(),
            field: field.into(),
            text: text.into(),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lvl = match self.level {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        };
        write!(f, "{lvl} [{}#{}]", self.origin.file, self.origin.doc)?;
        if !self.resource.is_empty() {
            write!(f, " ({})", self.resource)?;
        }
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.text)
    }
}

/// The messages found while checking one resource.
pub(crate) struct Findings<'a> {
    pub o: &'a Object,
    pub out: Vec<Message>,
}

impl<'a> Findings<'a> {
    fn new(o: &'a Object) -> Self {
        Findings { o, out: Vec::new() }
    }

    pub fn error(&mut self, field: impl Into<String>, text: impl Into<String>) {
        self.out
            .push(Message::new(Level::Error, self.o, field, text));
    }

    pub fn warn(&mut self, field: impl Into<String>, text: impl Into<String>) {
        self.out
            .push(Message::new(Level::Warning, self.o, field, text));
    }

    pub fn info(&mut self, field: impl Into<String>, text: impl Into<String>) {
        self.out
            .push(Message::new(Level::Info, self.o, field, text));
    }

    /// An error at `field` if `r` failed.
    pub fn check<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(field, e);
                None
            }
        }
    }

    /// An optional duration, held to istiod's rule (at least 1ms, whole milliseconds).
    pub fn duration(&mut self, field: impl Into<String>, d: &Option<String>) {
        if let Some(d) = d {
            self.check(field, names::check_duration(d));
        }
    }

    /// Label keys and values.
    pub fn labels<'m>(
        &mut self,
        field: &str,
        labels: impl IntoIterator<Item = (&'m String, &'m String)>,
    ) {
        for bad in names::check_label_map(labels) {
            self.error(field, bad);
        }
    }

    /// A workload selector's labels: no empty keys, no wildcards (errors at `field`); none at
    /// all selects the whole namespace (a warning at `warn_field`). False if there was an error.
    pub fn selector(
        &mut self,
        field: &str,
        warn_field: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        for (k, v) in labels {
            if k.is_empty() {
                self.error(field, "an empty label key cannot select");
                return false;
            }
            if k.contains('*') || v.contains('*') {
                self.error(field, format!("{k}={v}: wildcards cannot select"));
                return false;
            }
        }
        if labels.is_empty() {
            self.warn(
                warn_field,
                "a selector without labels selects every workload of the namespace",
            );
        }
        true
    }

    /// `exportTo`: `.`, `*` or namespace names, no duplicates, `*` alone; `~` (nobody) only
    /// for ServiceEntries, and alone.
    pub fn export_to(&mut self, field: &str, list: &[String], service_entry: bool) {
        let ns = self.o.namespace.clone();
        let mut seen = BTreeSet::new();
        for (i, e) in list.iter().enumerate() {
            let f = format!("{field}[{i}]");
            match e.as_str() {
                "." | "*" => {}
                "~" if service_entry => {}
                "~" => self.error(
                    &f,
                    "`~` (export to nobody) is allowed only on ServiceEntries",
                ),
                n if names::is_label(n) => {}
                _ => self.error(
                    &f,
                    format!("{e:?} is neither `.`, `*` nor a namespace name"),
                ),
            }
            let key = if e == "." { ns.as_str() } else { e.as_str() };
            if !seen.insert(key.to_string()) {
                self.error(
                    &f,
                    format!("{e:?} is listed twice (`.` is namespace {ns:?})"),
                );
            }
        }
        if list.len() > 1 && list.iter().any(|e| e == "*") {
            self.error(
                field,
                "`*` (everywhere) cannot be combined with other entries",
            );
        }
        if list.len() > 1 && list.iter().any(|e| e == "~") {
            self.error(field, "`~` (nobody) cannot be combined with other entries");
        }
    }
}

/// Parses a Go/protobuf duration (`7s`, `0.5s`, `1m`, `8ms`, `1h30m`).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let v: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += v * mult;
        rest = &rest[u..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

/// Per-resource checks that need nothing else. Returns the messages; any `Error` means the
/// resource is not used.
pub fn check_object(o: &Object) -> Vec<Message> {
    let mut f = Findings::new(o);
    match &o.kind {
        Kind::VirtualService(vs) => virtual_service::check(&mut f, vs),
        Kind::DestinationRule(dr) => destination_rule::check(&mut f, dr),
        Kind::ServiceEntry(se) => service_entry::check(&mut f, se),
        Kind::Gateway(g) => gateway::check(&mut f, g),
        Kind::Sidecar(sc) => sidecar::check(&mut f, sc),
        _ => {}
    }
    f.out
}

/// Checks that need the registry: destinations and subsets that exist, gateways that exist.
pub fn check_references(reg: &Registry, objects: &[Object]) -> Vec<Message> {
    let mut out = Vec::new();
    // Several mesh VirtualServices for one host: sidecars use the first in istiod's order
    // (creation time, name, namespace) and drop the others for that host; only gateways merge.
    let mut mesh_hosts: std::collections::BTreeMap<String, &Object> = Default::default();
    for o in objects {
        let Kind::VirtualService(vs) = &o.kind else {
            continue;
        };
        if !super::routes::gateway_listed(&vs.gateways, None, &o.namespace) {
            continue;
        }
        for (hi, h) in vs.hosts.iter().enumerate() {
            let host = reg.resolve(h, &o.namespace);
            match mesh_hosts.get(&host) {
                Some(first) if first.id() != o.id() => out.push(Message::new(
                    Level::Warning,
                    o,
                    format!("spec.hosts[{hi}]"),
                    format!(
                        "host {host:?} is also defined by VirtualService {}/{} for the mesh; sidecars use that one (the older, else first by name) and ignore this one for the host, as istiod does; merge them into one VirtualService",
                        first.namespace, first.meta.name
                    ),
                )),
                Some(_) => {}
                None => {
                    mesh_hosts.insert(host, o);
                }
            }
        }
    }
    for o in objects {
        let Kind::VirtualService(vs) = &o.kind else {
            continue;
        };
        for (gi, g) in vs.gateways.iter().enumerate() {
            if g != "mesh" && reg.gateway(g, &o.namespace).is_none() {
                out.push(Message::new(
                    Level::Error,
                    o,
                    format!("spec.gateways[{gi}]"),
                    format!("gateway {g:?} does not exist"),
                ));
            }
        }
        let dests = vs.http.iter().enumerate().flat_map(|(i, r)| {
            r.route.iter().enumerate().map(move |(j, d)| {
                (
                    format!("spec.http[{i}].route[{j}].destination"),
                    &d.destination,
                )
            })
        });
        let l4 = vs.tcp.iter().enumerate().flat_map(|(i, r)| {
            r.route.iter().enumerate().map(move |(j, d)| {
                (
                    format!("spec.tcp[{i}].route[{j}].destination"),
                    &d.destination,
                )
            })
        });
        let tls = vs.tls.iter().enumerate().flat_map(|(i, r)| {
            r.route.iter().enumerate().map(move |(j, d)| {
                (
                    format!("spec.tls[{i}].route[{j}].destination"),
                    &d.destination,
                )
            })
        });
        for (p, d) in dests.chain(l4).chain(tls) {
            let host = reg.resolve(&d.host, &o.namespace);
            if reg.services_for_host(&host).is_empty() {
                out.push(Message::new(
                    Level::Warning,
                    o,
                    format!("{p}.host"),
                    format!("no service for host {host:?} (requests get 503)"),
                ));
                continue;
            }
            if let Some(s) = &d.subset {
                if reg.subset(&host, s, &o.namespace).is_none() {
                    out.push(Message::new(Level::Warning, o, format!("{p}.subset"), format!("no DestinationRule defines subset {s:?} for host {host:?} (requests get 503)")));
                }
            }
        }
    }
    out
}
