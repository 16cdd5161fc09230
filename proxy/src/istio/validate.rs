//! Messages in the manner of `istioctl analyze`: a level, the file (and document) a resource came
//! from, the resource (`Kind ns/name`), the field path and what is wrong. Errors drop only the
//! resource (or the part of it) they name; warnings keep it.
//!
//! The checks that need the whole configuration (subsets no DestinationRule defines, gateways
//! that don't exist, hosts that match nothing, bad regexes, weights) live here too.

use std::collections::BTreeSet;
use std::fmt;

use super::model::{Kind, Object, Origin, StringMatch};
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

/// Parses a Go/protobuf duration (`7s`, `0.5s`, `1m`, `8ms`, `1h30m`).
/// istiod's `validateCORSPolicy`.
fn check_cors(out: &mut Vec<Message>, o: &Object, p: &str, c: &super::model::CorsPolicy) {
    let mut err = |field: String, msg: String| out.push(Message::new(Level::Error, o, field, msg));
    for (i, m) in c.allow_origins.iter().enumerate() {
        let v = m.exact.as_ref().or(m.prefix.as_ref()).or(m.regex.as_ref());
        match v {
            None => err(
                format!("{p}.allowOrigins[{i}]"),
                "an exact, prefix or regex match is required".into(),
            ),
            Some(v) if v.is_empty() => err(
                format!("{p}.allowOrigins[{i}]"),
                "'' is not a valid match for CORS allow origins".into(),
            ),
            Some(_) => {}
        }
        if let Some(r) = &m.regex {
            if let Err(e) = regex::Regex::new(r) {
                let e = e.to_string();
                err(
                    format!("{p}.allowOrigins[{i}].regex"),
                    format!("bad regex: {}", e.lines().last().unwrap_or("")),
                );
            }
        }
    }
    const METHODS: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
    ];
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            err(
                format!("{p}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in names.iter().enumerate() {
            let ok = h == "*"
                || (!h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !ok {
                err(
                    format!("{p}.{field}[{i}]"),
                    format!("{h:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(m) = &c.max_age {
        match parse_duration(m) {
            None => err(format!("{p}.maxAge"), format!("invalid duration {m:?}")),
            Some(d) if d.subsec_nanos() > 0 => err(
                format!("{p}.maxAge"),
                "max_age duration is accurate only to seconds precision".into(),
            ),
            Some(d) if d < std::time::Duration::from_millis(1) => err(
                format!("{p}.maxAge"),
                "duration must be at least 1ms".into(),
            ),
            Some(_) => {}
        }
    }
    if let Some(u) = &c.unmatched_preflights {
        if !matches!(
            u.as_str(),
            "UNSPECIFIED_UNMATCHED_PREFLIGHTS" | "FORWARD" | "IGNORE"
        ) {
            err(
                format!("{p}.unmatchedPreflights"),
                format!("unknown value {u:?} (FORWARD or IGNORE)"),
            );
        }
    }
}

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

fn check_duration(out: &mut Vec<Message>, o: &Object, field: &str, d: &Option<String>) {
    if let Some(d) = d {
        if parse_duration(d).is_none() {
            out.push(Message::new(
                Level::Error,
                o,
                field,
                format!("invalid duration {d:?}"),
            ));
        }
    }
}

/// Checks one StringMatch: exactly one kind, and a regex that compiles.
pub fn check_string_match(out: &mut Vec<Message>, o: &Object, field: &str, m: &StringMatch) {
    let n = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if n > 1 {
        out.push(Message::new(
            Level::Error,
            o,
            field,
            "only one of exact, prefix or regex may be set",
        ));
    }
    if let Some(r) = &m.regex {
        if let Err(e) = regex::Regex::new(&format!("^(?:{r})$")) {
            out.push(Message::new(
                Level::Error,
                o,
                format!("{field}.regex"),
                format!(
                    "bad regex {r:?}: {}",
                    e.to_string().lines().last().unwrap_or("")
                ),
            ));
        }
    }
}

/// Per-resource checks that need nothing else. Returns the messages; any `Error` means the
/// resource is not used.
pub fn check_object(o: &Object) -> Vec<Message> {
    let mut out = Vec::new();
    match &o.kind {
        Kind::VirtualService(vs) => {
            if vs.hosts.is_empty() && o.meta.annotations.is_empty() && vs.gateways.is_empty() {
                // Delegate VirtualServices have no hosts; that is only valid as a delegate.
            }
            for (i, r) in vs.http.iter().enumerate() {
                let p = format!("spec.http[{i}]");
                for (j, m) in r.matches.iter().enumerate() {
                    let mp = format!("{p}.match[{j}]");
                    for (name, sm) in [
                        ("uri", &m.uri),
                        ("scheme", &m.scheme),
                        ("method", &m.method),
                        ("authority", &m.authority),
                    ] {
                        if let Some(sm) = sm {
                            check_string_match(&mut out, o, &format!("{mp}.{name}"), sm);
                        }
                    }
                    if m.ignore_uri_case && m.uri.as_ref().is_some_and(|u| u.regex.is_some()) {
                        out.push(Message::new(
                            Level::Warning,
                            o,
                            format!("{mp}.ignoreUriCase"),
                            "has no effect on a regex uri (Envoy ignores case_sensitive for regex paths, as with istiod); use (?i) in the regex",
                        ));
                    }
                    for (k, sm) in m.headers.iter().chain(&m.without_headers) {
                        check_string_match(&mut out, o, &format!("{mp}.headers.{k}"), sm);
                        if k.starts_with("@request.auth.claims") {
                            out.push(Message::new(
                                Level::Warning,
                                o,
                                format!("{mp}.headers.{k}"),
                                "JWT claim matches need RequestAuthentication, which Sluice does not implement: it is matched as a request header of that name (never sent), not as the claim",
                            ));
                        }
                    }
                    for (k, sm) in &m.query_params {
                        check_string_match(&mut out, o, &format!("{mp}.queryParams.{k}"), sm);
                    }
                }
                let actions = [
                    !r.route.is_empty(),
                    r.redirect.is_some(),
                    r.direct_response.is_some(),
                    r.delegate.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if actions == 0 {
                    out.push(Message::new(
                        Level::Error,
                        o,
                        &p,
                        "one of route, redirect, directResponse or delegate is required",
                    ));
                } else if actions > 1 {
                    out.push(Message::new(
                        Level::Error,
                        o,
                        &p,
                        "route, redirect, directResponse and delegate are mutually exclusive",
                    ));
                }
                check_weights(
                    &mut out,
                    o,
                    &format!("{p}.route"),
                    r.route.iter().map(|d| d.weight),
                );
                check_duration(&mut out, o, &format!("{p}.timeout"), &r.timeout);
                if let Some(rt) = &r.retries {
                    check_duration(
                        &mut out,
                        o,
                        &format!("{p}.retries.perTryTimeout"),
                        &rt.per_try_timeout,
                    );
                }
                if let Some(f) = &r.fault {
                    if let Some(d) = &f.delay {
                        check_duration(
                            &mut out,
                            o,
                            &format!("{p}.fault.delay.fixedDelay"),
                            &d.fixed_delay,
                        );
                        if d.fixed_delay.is_none() {
                            out.push(Message::new(
                                Level::Error,
                                o,
                                format!("{p}.fault.delay"),
                                "fixedDelay is required (exponentialDelay is not supported)",
                            ));
                        }
                    }
                    if let Some(a) = &f.abort {
                        if a.http_status.is_none() {
                            out.push(Message::new(Level::Error, o, format!("{p}.fault.abort"), "httpStatus is required (grpcStatus and http2Error are not supported)"));
                        }
                        if let Some(s) = a.http_status {
                            if !(200..=599).contains(&s) {
                                out.push(Message::new(
                                    Level::Error,
                                    o,
                                    format!("{p}.fault.abort.httpStatus"),
                                    format!("status {s} is outside 200-599"),
                                ));
                            }
                        }
                    }
                }
                if let Some(rw) = &r.rewrite {
                    if let Some(rr) = &rw.uri_regex_rewrite {
                        if rw.uri.is_some() {
                            out.push(Message::new(
                                Level::Error,
                                o,
                                format!("{p}.rewrite"),
                                "uri and uriRegexRewrite are mutually exclusive",
                            ));
                        }
                        if let Err(e) = regex::Regex::new(&rr.pattern) {
                            out.push(Message::new(
                                Level::Error,
                                o,
                                format!("{p}.rewrite.uriRegexRewrite.match"),
                                format!(
                                    "bad regex: {}",
                                    e.to_string().lines().last().unwrap_or("")
                                ),
                            ));
                        }
                    }
                }
                if let Some(c) = &r.cors_policy {
                    check_cors(&mut out, o, &format!("{p}.corsPolicy"), c);
                }
            }
            for (i, r) in vs.tcp.iter().enumerate() {
                check_weights(
                    &mut out,
                    o,
                    &format!("spec.tcp[{i}].route"),
                    r.route.iter().map(|d| d.weight),
                );
            }
            for (i, r) in vs.tls.iter().enumerate() {
                check_weights(
                    &mut out,
                    o,
                    &format!("spec.tls[{i}].route"),
                    r.route.iter().map(|d| d.weight),
                );
                if r.matches.iter().any(|m| m.sni_hosts.is_empty()) {
                    out.push(Message::new(
                        Level::Error,
                        o,
                        format!("spec.tls[{i}].match"),
                        "sniHosts is required",
                    ));
                }
            }
        }
        Kind::DestinationRule(dr) => {
            if dr.host.is_empty() {
                out.push(Message::new(
                    Level::Error,
                    o,
                    "spec.host",
                    "host is required",
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, s) in dr.subsets.iter().enumerate() {
                if !seen.insert(&s.name) {
                    out.push(Message::new(
                        Level::Error,
                        o,
                        format!("spec.subsets[{i}].name"),
                        format!("duplicate subset {:?}", s.name),
                    ));
                }
            }
            let mut pols = vec![("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref())];
            for (i, s) in dr.subsets.iter().enumerate() {
                pols.push((
                    format!("spec.subsets[{i}].trafficPolicy"),
                    s.traffic_policy.as_ref(),
                ));
            }
            for (p, tp) in pols {
                let Some(tp) = tp else { continue };
                if let Some(cp) = &tp.connection_pool {
                    if let Some(t) = &cp.tcp {
                        check_duration(
                            &mut out,
                            o,
                            &format!("{p}.connectionPool.tcp.connectTimeout"),
                            &t.connect_timeout,
                        );
                        if let Some(k) = &t.tcp_keepalive {
                            for (f, d) in [("time", &k.time), ("interval", &k.interval)] {
                                check_duration(
                                    &mut out,
                                    o,
                                    &format!("{p}.connectionPool.tcp.tcpKeepalive.{f}"),
                                    d,
                                );
                            }
                        }
                    }
                    if let Some(h) = &cp.http {
                        check_duration(
                            &mut out,
                            o,
                            &format!("{p}.connectionPool.http.idleTimeout"),
                            &h.idle_timeout,
                        );
                    }
                }
                if let Some(od) = &tp.outlier_detection {
                    check_duration(
                        &mut out,
                        o,
                        &format!("{p}.outlierDetection.interval"),
                        &od.interval,
                    );
                    check_duration(
                        &mut out,
                        o,
                        &format!("{p}.outlierDetection.baseEjectionTime"),
                        &od.base_ejection_time,
                    );
                }
                if let Some(lb) = &tp.load_balancer {
                    if let Some(s) = &lb.simple {
                        if !matches!(
                            s.as_str(),
                            "UNSPECIFIED"
                                | "ROUND_ROBIN"
                                | "LEAST_CONN"
                                | "LEAST_REQUEST"
                                | "RANDOM"
                                | "PASSTHROUGH"
                        ) {
                            out.push(Message::new(
                                Level::Error,
                                o,
                                format!("{p}.loadBalancer.simple"),
                                format!("unknown load balancer {s:?}"),
                            ));
                        }
                    }
                }
                if tp.tls.is_some() {
                    out.push(Message::new(
                        Level::Info,
                        o,
                        format!("{p}.tls"),
                        "TLS settings are recorded; Sluice connects in plaintext for now",
                    ));
                }
            }
        }
        Kind::ServiceEntry(se) => {
            if se.hosts.is_empty() {
                out.push(Message::new(
                    Level::Error,
                    o,
                    "spec.hosts",
                    "at least one host is required",
                ));
            }
            let res = se.resolution.as_deref().unwrap_or("NONE");
            if !matches!(res, "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN") {
                out.push(Message::new(
                    Level::Error,
                    o,
                    "spec.resolution",
                    format!("unknown resolution {res:?}"),
                ));
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                if res == "STATIC"
                    && e.address.parse::<std::net::IpAddr>().is_err()
                    && !e.address.starts_with("unix://")
                {
                    out.push(Message::new(
                        Level::Error,
                        o,
                        format!("spec.endpoints[{i}].address"),
                        format!("{:?} is not an IP address (resolution STATIC)", e.address),
                    ));
                }
                for name in e.ports.keys() {
                    if !se.ports.iter().any(|p| &p.name == name) {
                        out.push(Message::new(
                            Level::Warning,
                            o,
                            format!("spec.endpoints[{i}].ports.{name}"),
                            "names no port of the ServiceEntry",
                        ));
                    }
                }
            }
            if se.ports.is_empty() {
                out.push(Message::new(
                    Level::Error,
                    o,
                    "spec.ports",
                    "at least one port is required",
                ));
            }
        }
        Kind::Gateway(g) => {
            for (i, s) in g.servers.iter().enumerate() {
                if s.hosts.is_empty() {
                    out.push(Message::new(
                        Level::Error,
                        o,
                        format!("spec.servers[{i}].hosts"),
                        "at least one host is required",
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

fn check_weights(
    out: &mut Vec<Message>,
    o: &Object,
    field: &str,
    w: impl Iterator<Item = Option<i64>>,
) {
    let w: Vec<_> = w.collect();
    if w.len() < 2 && w.iter().all(|x| x.is_none_or(|v| v == 100 || v == 0)) {
        return;
    }
    if w.iter().any(|x| x.is_some_and(|v| v < 0)) {
        out.push(Message::new(
            Level::Error,
            o,
            field,
            "weights must not be negative",
        ));
        return;
    }
    let sum: i64 = w.iter().map(|x| x.unwrap_or(0)).sum();
    if sum == 0 {
        out.push(Message::new(Level::Error, o, field, "weights sum to 0"));
    } else if sum != 100 {
        out.push(Message::new(
            Level::Warning,
            o,
            field,
            format!("weights sum to {sum}, not 100; they are used as relative weights"),
        ));
    }
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
