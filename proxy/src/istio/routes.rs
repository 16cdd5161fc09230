//! VirtualService `http` routes → Envoy routes, and the sidecar's route configurations: one per
//! port (named `9080`), a virtual host `HOST:PORT` per service with all its short-name domains,
//! and `allow_any` to PassthroughCluster last.
//!
//! Matches (uri exact/prefix/regex, headers, withoutHeaders, queryParams, method, authority,
//! scheme, ignoreUriCase, port, gateways, sourceLabels, sourceNamespace), actions (weighted
//! destinations with subsets and ports, redirect, directResponse, delegate), rewrites, header
//! operations, timeouts, retries and faults (`envoy.filters.http.fault` per-route config) are
//! generated as istiod does. CORS becomes the cors filter's per-route `CorsPolicy` (as istiod);
//! mirrors become `request_mirror_policies`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use serde_json::{json, Value};

use super::clusters::{dur, outbound_name};
use super::model::{
    Destination, Headers, HttpMatch, HttpRoute, Kind, Object, StringMatch, VirtualServiceSpec,
};
use super::registry::{host_matches, visible, Registry, Service, DOMAIN};
use super::validate::{self, parse_duration, Level, Message};
use super::{pb, Node, Resources};

/// Where routes are being generated: a port, and the gateway (`None` = the mesh, sidecars).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub reg: &'a Registry,
    pub node: &'a Node,
    pub port: u32,
    /// `ns/name` of the gateway, or `None` for sidecars (`mesh`).
    pub gateway: Option<&'a str>,
}

fn string_match(m: &StringMatch, ignore_case: bool) -> Value {
    if let Some(e) = &m.exact {
        json!({"exact": e, "ignore_case": ignore_case})
    } else if let Some(p) = &m.prefix {
        json!({"prefix": p, "ignore_case": ignore_case})
    } else if let Some(r) = &m.regex {
        json!({"safe_regex": {"regex": r}})
    } else {
        json!({})
    }
}

/// istiod's `canBeConvertedToPresentMatch`: no match type, or the regex `*`.
fn present_only(m: &StringMatch) -> bool {
    (m.exact.is_none() && m.prefix.is_none() && m.regex.is_none())
        || m.regex.as_deref() == Some("*")
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> Value {
    let mut h = if present_only(m) {
        json!({"name": name, "present_match": true})
    } else {
        json!({"name": name, "string_match": string_match(m, false)})
    };
    if invert {
        h["invert_match"] = json!(true);
        // `withoutHeaders` also matches requests without the header (istiod).
        if !present_only(m) {
            h["treat_missing_header_as_empty"] = json!(true);
        }
    }
    h
}

/// istiod's `TranslateRouteMatch`. `ignoreUriCase` is `case_sensitive: false`, which Envoy
/// ignores for `safe_regex` paths (so does istiod; validation warns).
fn envoy_match(m: &HttpMatch) -> Value {
    let mut out = json!({});
    match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => out["path"] = json!(e),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => out["prefix"] = json!(p),
        Some(StringMatch { regex: Some(r), .. }) => out["safe_regex"] = json!({"regex": r}),
        _ => out["prefix"] = json!("/"),
    }
    out["case_sensitive"] = json!(!m.ignore_uri_case);
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        headers.push(header_matcher(&k.to_ascii_lowercase(), v, false));
    }
    for (k, v) in &m.without_headers {
        headers.push(header_matcher(&k.to_ascii_lowercase(), v, true));
    }
    // istiod sorts the header matchers by name, then adds method, authority and scheme.
    headers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    for (name, v) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(v) = v {
            headers.push(header_matcher(name, v, false));
        }
    }
    if !headers.is_empty() {
        out["headers"] = json!(headers);
    }
    let q: Vec<Value> = m
        .query_params
        .iter()
        .map(|(k, v)| {
            if present_only(v) {
                json!({"name": k, "present_match": true})
            } else {
                json!({"name": k, "string_match": string_match(v, false)})
            }
        })
        .collect();
    if !q.is_empty() {
        out["query_parameters"] = json!(q);
    }
    out
}

/// istiod's `IsCatchAllRoute`: path `/` (prefix) or `.*` (regex) and nothing else to match.
pub fn is_catch_all(r: &Value) -> bool {
    let m = &r["match"];
    let path =
        m["prefix"] == "/" || m["path_separated_prefix"] == "/" || m["safe_regex"]["regex"] == ".*";
    path && m.get("headers").is_none()
        && m.get("query_parameters").is_none()
        && m.get("dynamic_metadata").is_none()
}

/// istiod's `SortVHostRoutes`: catch-all routes last, the others in their order.
pub fn catch_all_last(routes: Vec<Value>) -> Vec<Value> {
    let (all, rest): (Vec<Value>, Vec<Value>) = routes.into_iter().partition(is_catch_all);
    rest.into_iter().chain(all).collect()
}

/// istiod's `TranslateHeadersOperations` for one direction: `set` overwrites, `add` appends;
/// pseudo-headers and `host` are never added or removed, and `:authority`/`host` in `set` (else
/// `add`) of the request becomes the host rewrite. Returns that authority.
fn header_ops(h: &Option<Headers>, target: &mut Value) -> Option<String> {
    let h = h.as_ref()?;
    let internal = |k: &str| k.starts_with(':') || k.eq_ignore_ascii_case("host");
    let is_authority =
        |k: &str| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host");
    let mut authority = None;
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let mut add = Vec::new();
        let mut set_auth = None;
        let mut add_auth = None;
        for (k, v) in &ops.set {
            if is_authority(k) {
                set_auth = Some(v.clone());
            }
            if !internal(k) {
                add.push(json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}));
            }
        }
        for (k, v) in &ops.add {
            if is_authority(k) {
                add_auth = Some(v.clone());
            }
            if !internal(k) {
                add.push(json!({"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}));
            }
        }
        if dir == "request" {
            authority = set_auth.or(add_auth);
        }
        let key = format!("{dir}_headers_to_add");
        if !add.is_empty() {
            match target[&key].as_array_mut() {
                Some(a) => a.extend(add),
                None => target[&key] = json!(add),
            }
        }
        let remove: Vec<&String> = ops.remove.iter().filter(|k| !internal(k)).collect();
        let key = format!("{dir}_headers_to_remove");
        if !remove.is_empty() {
            match target[&key].as_array_mut() {
                Some(a) => a.extend(remove.iter().map(|r| json!(r))),
                None => target[&key] = json!(remove),
            }
        }
    }
    authority
}

fn percent(p: &Option<super::model::Percent>, legacy: Option<i64>) -> Value {
    match (p.as_ref().and_then(|p| p.value), legacy) {
        (Some(v), _) => {
            json!({"numerator": (v * 10000.0).round() as u64, "denominator": "MILLION"})
        }
        (None, Some(l)) => json!({"numerator": l.max(0), "denominator": "HUNDRED"}),
        (None, None) => json!({"numerator": 100, "denominator": "HUNDRED"}),
    }
}

/// istiod's default retry policy (503 is no longer retried by default since Istio 1.24).
fn default_retry() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": previous_hosts(),
        "host_selection_retry_max_attempts": 5,
    })
}

/// The retry host predicate that steers retries away from hosts already tried.
fn previous_hosts() -> Value {
    json!([{"name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}])
}

/// The cluster a destination names, from a VirtualService in `ns` routing on `port`.
/// `mirror` / `mirrorPercentage` (or the deprecated `mirrorPercent`) and `mirrors` as Envoy
/// `request_mirror_policies`, as istiod emits them: the fraction in parts per million.
fn mirror_policies(ctx: &Ctx, r: &super::model::HttpRoute, ns: &str) -> Vec<Value> {
    let policy = |d: &Destination, pct: Option<f64>| {
        let mut v = json!({"cluster": dest_cluster(ctx, d, ns).0});
        let pct = pct.unwrap_or(100.0).clamp(0.0, 100.0);
        if pct < 100.0 {
            v["runtime_fraction"] = json!({"default_value": {
                "numerator": (pct * 10_000.0).round() as u64,
                "denominator": "MILLION"
            }});
        }
        v
    };
    let mut out = Vec::new();
    if let Some(d) = &r.mirror {
        let pct = r
            .mirror_percentage
            .as_ref()
            .and_then(|p| p.value)
            .or(r.mirror_percent.map(f64::from));
        out.push(policy(d, pct));
    }
    for m in &r.mirrors {
        out.push(policy(
            &m.destination,
            m.percentage.as_ref().and_then(|p| p.value),
        ));
    }
    out
}

pub fn dest_cluster(ctx: &Ctx, d: &Destination, ns: &str) -> (String, Option<u32>) {
    let host = ctx.reg.resolve(&d.host, ns);
    let svc = ctx.reg.service(&host, &ctx.node.namespace);
    let port = d
        .port
        .as_ref()
        .and_then(|p| p.number)
        .or_else(|| {
            let s = svc?;
            if s.ports.len() == 1 {
                Some(s.ports[0].port)
            } else if s.ports.iter().any(|p| p.port == ctx.port) {
                Some(ctx.port)
            } else {
                s.ports.first().map(|p| p.port)
            }
        })
        .unwrap_or(ctx.port);
    let subset = d.subset.as_deref().unwrap_or("");
    (outbound_name(port, subset, &host), Some(port))
}

/// istiod's `HashForHTTPDestination`: the DestinationRule's consistent hash, overridden by the
/// port-level one (only when the destination names its port), the subset's, then the subset's
/// port-level one. Returns the hash policy and whether consistent hashing is configured.
fn hash_policy(ctx: &Ctx, d: &Destination, ns: &str) -> (Option<Value>, bool) {
    let host = ctx.reg.resolve(&d.host, ns);
    let Some((_, dr)) = ctx
        .reg
        .destination_rule(&host, &ctx.node.namespace, &ctx.node.labels)
    else {
        return (None, false);
    };
    let port = d.port.as_ref().and_then(|p| p.number);
    let lb_hash = |lb: Option<&super::model::LoadBalancer>| lb?.consistent_hash.clone();
    let pls_hash = |tp: Option<&super::model::TrafficPolicy>| {
        let port = port?;
        let pl = tp?
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port))?;
        lb_hash(pl.load_balancer.as_ref())
    };
    let top = dr.traffic_policy.as_ref();
    let subset = dr
        .subsets
        .iter()
        .find(|s| s.name == d.subset.as_deref().unwrap_or(""))
        .and_then(|s| s.traffic_policy.as_ref());
    let ch = pls_hash(subset)
        .or_else(|| lb_hash(subset.and_then(|t| t.load_balancer.as_ref())))
        .or_else(|| pls_hash(top))
        .or_else(|| lb_hash(top.and_then(|t| t.load_balancer.as_ref())));
    let Some(ch) = ch else {
        return (None, false);
    };
    (hash_value(ch), true)
}

fn hash_value(ch: super::model::ConsistentHash) -> Option<Value> {
    let hp = if let Some(h) = ch.http_header_name {
        json!({"header": {"header_name": h}})
    } else if let Some(c) = ch.http_cookie {
        let mut v = json!({"cookie": {"name": c.name}});
        if let Some(path) = c.path {
            v["cookie"]["path"] = json!(path);
        }
        if let Some(t) = c.ttl.as_deref().and_then(parse_duration) {
            v["cookie"]["ttl"] = json!(dur(t));
        }
        v
    } else if ch.use_source_ip == Some(true) {
        json!({"connection_properties": {"source_ip": true}})
    } else if let Some(q) = ch.http_query_parameter_name {
        json!({"query_parameter": {"name": q}})
    } else {
        return None;
    };
    Some(hp)
}

/// Whether a match applies in this context (istiod's port check and `sourceMatchHTTP`: a match
/// that lists gateways is decided by them alone; otherwise its source labels must all be on
/// the proxy and its source namespace, if any, be the proxy's).
fn applies(ctx: &Ctx, m: &HttpMatch, vs_ns: &str) -> bool {
    if m.port.is_some_and(|p| p != 0 && p != ctx.port) {
        return false;
    }
    if !m.gateways.is_empty() {
        return gateway_listed(&m.gateways, ctx.gateway, vs_ns);
    }
    if !m.source_labels.is_empty()
        && !m
            .source_labels
            .iter()
            .all(|(k, v)| ctx.node.labels.get(k) == Some(v))
    {
        return false;
    }
    if m.source_namespace
        .as_ref()
        .is_some_and(|n| n != &ctx.node.namespace)
    {
        return false;
    }
    true
}

/// Whether `gateways` (as written in a VirtualService of `vs_ns`) lists the context gateway.
pub fn gateway_listed(gateways: &[String], gw: Option<&str>, vs_ns: &str) -> bool {
    match gw {
        None => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
        Some(full) => gateways.iter().any(|g| {
            let (n, name) = super::registry::gateway_ref(g, vs_ns);
            format!("{n}/{name}") == full
        }),
    }
}

/// Child match refined by the parent's (delegation): the child's fields win, headers merge.
fn merge_match(parent: &HttpMatch, child: &HttpMatch) -> HttpMatch {
    let mut m = child.clone();
    m.uri = child.uri.clone().or_else(|| parent.uri.clone());
    m.method = child.method.clone().or_else(|| parent.method.clone());
    m.authority = child.authority.clone().or_else(|| parent.authority.clone());
    m.scheme = child.scheme.clone().or_else(|| parent.scheme.clone());
    m.port = child.port.or(parent.port);
    for (k, v) in &parent.headers {
        m.headers.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &parent.query_params {
        m.query_params.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &parent.without_headers {
        m.without_headers
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    if m.gateways.is_empty() {
        m.gateways = parent.gateways.clone();
    }
    m.ignore_uri_case |= parent.ignore_uri_case;
    m
}

/// Envoy routes for a VirtualService's `http` section in this context.
pub fn http_routes(
    ctx: &Ctx,
    vs_obj: &Object,
    vs: &VirtualServiceSpec,
    msgs: &mut Vec<Message>,
) -> Vec<Value> {
    let mut out = Vec::new();
    routes_inner(ctx, vs_obj, &vs.http, &[], 0, msgs, &mut out);
    // istiod stops at the first catch-all route: nothing after it could match.
    if let Some(i) = out.iter().position(is_catch_all) {
        out.truncate(i + 1);
    }
    out
}

fn routes_inner(
    ctx: &Ctx,
    vs_obj: &Object,
    http: &[HttpRoute],
    parent: &[HttpMatch],
    depth: usize,
    msgs: &mut Vec<Message>,
    out: &mut Vec<Value>,
) {
    let ns = vs_obj.namespace.as_str();
    for (i, r) in http.iter().enumerate() {
        let own: Vec<HttpMatch> = if r.matches.is_empty() {
            vec![HttpMatch::default()]
        } else {
            r.matches.clone()
        };
        let matches: Vec<HttpMatch> = if parent.is_empty() {
            own
        } else {
            parent
                .iter()
                .flat_map(|p| own.iter().map(move |c| merge_match(p, c)))
                .collect()
        };
        if let Some(d) = &r.delegate {
            let dns = d.namespace.clone().unwrap_or_else(|| ns.to_string());
            let child = ctx.reg.objects.iter().find(|o| {
                o.namespace == dns
                    && o.meta.name == d.name
                    && matches!(o.kind, Kind::VirtualService(_))
            });
            match (child, depth) {
                (Some(c), 0) => {
                    let Kind::VirtualService(cvs) = &c.kind else {
                        continue;
                    };
                    if !cvs.hosts.is_empty() {
                        msgs.push(Message::new(
                            Level::Error,
                            vs_obj,
                            format!("spec.http[{i}].delegate"),
                            format!("delegate {dns}/{} must not have hosts", d.name),
                        ));
                        continue;
                    }
                    routes_inner(ctx, c, &cvs.http, &matches, 1, msgs, out);
                }
                (Some(_), _) => msgs.push(Message::new(
                    Level::Error,
                    vs_obj,
                    format!("spec.http[{i}].delegate"),
                    "delegates cannot delegate again",
                )),
                (None, _) => msgs.push(Message::new(
                    Level::Warning,
                    vs_obj,
                    format!("spec.http[{i}].delegate"),
                    format!("VirtualService {dns}/{} does not exist", d.name),
                )),
            }
            continue;
        }
        for m in matches.iter().filter(|m| applies(ctx, m, ns)) {
            out.push(route(ctx, vs_obj, r, m));
        }
    }
}

fn route(ctx: &Ctx, vs_obj: &Object, r: &HttpRoute, m: &HttpMatch) -> Value {
    let ns = vs_obj.namespace.as_str();
    let mut rt = json!({
        "match": envoy_match(m),
        "metadata": {"filter_metadata": {"istio": {"config": format!("/apis/networking.istio.io/v1/namespaces/{ns}/virtual-service/{}", vs_obj.meta.name)}}},
    });
    // istiod: the route's name, then `.` and the match's name when it has one.
    let name = match (&r.name, &m.name) {
        (n, Some(mn)) if !mn.is_empty() => format!("{}.{mn}", n.as_deref().unwrap_or("")),
        (Some(n), _) => n.clone(),
        _ => String::new(),
    };
    if !name.is_empty() {
        rt["name"] = json!(name);
    }
    // Route-level header operations first (a `:authority`/`host` there is the host rewrite).
    let authority = header_ops(&r.headers, &mut rt);
    if let Some(red) = &r.redirect {
        let mut v = json!({});
        if let Some(u) = &red.uri {
            v["path_redirect"] = json!(u);
        }
        if let Some(a) = &red.authority {
            v["host_redirect"] = json!(a);
        }
        if let Some(s) = &red.scheme {
            v["scheme_redirect"] = json!(s);
        }
        if let Some(p) = &red.prefix_rewrite {
            v["prefix_rewrite"] = json!(p);
        }
        // istiod: `derivePort: FROM_REQUEST_PORT` is the port routes are built for; the
        // scheme's default port is left out of the Location.
        let port = match (red.port, red.derive_port.as_deref()) {
            (Some(p), _) => Some(p),
            (None, Some("FROM_REQUEST_PORT")) => Some(ctx.port),
            _ => None,
        };
        if let Some(p) = port {
            let scheme = red.scheme.as_deref().unwrap_or("http");
            if !((p == 80 && scheme == "http") || (p == 443 && scheme == "https")) {
                v["port_redirect"] = json!(p);
            }
        }
        v["response_code"] = json!(match red.redirect_code.unwrap_or(301) {
            302 => "FOUND",
            303 => "SEE_OTHER",
            307 => "TEMPORARY_REDIRECT",
            308 => "PERMANENT_REDIRECT",
            _ => "MOVED_PERMANENTLY",
        });
        rt["redirect"] = v;
    } else if let Some(dr) = &r.direct_response {
        let mut v = json!({"status": dr.status});
        if let Some(b) = &dr.body {
            if let Some(s) = &b.string {
                v["body"] = json!({"inline_string": s});
            } else if let Some(b) = &b.bytes {
                v["body"] = json!({"inline_bytes": b});
            }
        }
        rt["direct_response"] = v;
    } else {
        let mut action = json!({});
        let mut hash = Vec::new();
        let mut consistent_hash = false;
        if r.route.len() == 1 {
            // One destination: a plain cluster; its header operations join the route's.
            let d = &r.route[0];
            let (cluster, _) = dest_cluster(ctx, &d.destination, ns);
            action["cluster"] = json!(cluster);
            let dest_auth = header_ops(&d.headers, &mut rt);
            if let Some(a) = authority.clone().or(dest_auth) {
                action["host_rewrite_literal"] = json!(a);
            }
            let (hp, consistent) = hash_policy(ctx, &d.destination, ns);
            hash.extend(hp);
            consistent_hash = consistent;
        } else {
            if let Some(a) = &authority {
                action["host_rewrite_literal"] = json!(a);
            }
            let mut cl = Vec::new();
            // Zero weights are left out; if all are zero (validation reports it), equal shares.
            let all_zero = r.route.iter().all(|d| d.weight.unwrap_or(0) <= 0);
            for d in r
                .route
                .iter()
                .filter(|d| all_zero || d.weight.unwrap_or(0) > 0)
            {
                let (cluster, _) = dest_cluster(ctx, &d.destination, ns);
                let w = if all_zero { 1 } else { d.weight.unwrap_or(0) };
                let mut v = json!({"name": cluster, "weight": w});
                if let Some(a) = header_ops(&d.headers, &mut v) {
                    v["host_rewrite_literal"] = json!(a);
                }
                cl.push(v);
                hash.extend(hash_policy(ctx, &d.destination, ns).0);
            }
            action["weighted_clusters"] = json!({"clusters": cl});
        }
        if !hash.is_empty() {
            action["hash_policy"] = json!(hash);
        }
        let timeout = r
            .timeout
            .as_deref()
            .and_then(parse_duration)
            .map(dur)
            .unwrap_or_else(|| "0s".into());
        // istiod: gRPC requests take their deadline from grpc-timeout, capped by the route's.
        action["max_grpc_timeout"] = json!(timeout);
        action["timeout"] = json!(timeout);
        let retry = || {
            let mut p = default_retry();
            if consistent_hash {
                // istiod: consistent hashing retries on the same host.
                p.as_object_mut().unwrap().remove("retry_host_predicate");
            }
            p
        };
        match &r.retries {
            None => action["retry_policy"] = retry(),
            Some(rt) if rt.attempts.unwrap_or(0) <= 0 => {}
            Some(rt) => {
                let mut p = retry();
                p["num_retries"] = json!(rt.attempts);
                if let Some(on) = &rt.retry_on {
                    let (codes, names): (Vec<&str>, Vec<&str>) = on
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .partition(|s| s.parse::<u32>().is_ok());
                    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
                    let codes: Vec<u32> = codes.iter().filter_map(|c| c.parse().ok()).collect();
                    if !codes.is_empty() && !names.iter().any(|n| n == "retriable-status-codes") {
                        names.push("retriable-status-codes".into());
                    }
                    p["retry_on"] = json!(names.join(","));
                    p["retriable_status_codes"] = json!(codes);
                }
                if let Some(t) = rt.per_try_timeout.as_deref().and_then(parse_duration) {
                    p["per_try_timeout"] = json!(dur(t));
                }
                // istiod: an explicit retryIgnorePreviousHosts decides the host predicate,
                // consistent hashing or not.
                match rt.retry_ignore_previous_hosts {
                    Some(true) => p["retry_host_predicate"] = previous_hosts(),
                    Some(false) => {
                        p.as_object_mut().unwrap().remove("retry_host_predicate");
                    }
                    None => {}
                }
                if let Some(t) = rt.backoff.as_deref().and_then(parse_duration) {
                    p["retry_back_off"] = json!({"base_interval": dur(t)});
                }
                action["retry_policy"] = p;
            }
        }
        if let Some(rw) = &r.rewrite {
            if let Some(u) = &rw.uri {
                action["prefix_rewrite"] = json!(u);
            }
            if let Some(a) = &rw.authority {
                action["host_rewrite_literal"] = json!(a);
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                action["regex_rewrite"] =
                    json!({"pattern": {"regex": rr.pattern}, "substitution": rr.rewrite});
            }
        }
        let mirrors = mirror_policies(ctx, r, ns);
        if !mirrors.is_empty() {
            action["request_mirror_policies"] = json!(mirrors);
        }
        rt["route"] = action;
    }
    let mut tpfc = serde_json::Map::new();
    if let Some(f) = &r.fault {
        let mut v = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        if let Some(d) = &f.delay {
            if let Some(t) = d.fixed_delay.as_deref().and_then(parse_duration) {
                v["delay"] =
                    json!({"fixed_delay": dur(t), "percentage": percent(&d.percentage, d.percent)});
            }
        }
        if let Some(a) = &f.abort {
            if let Some(s) = a.http_status {
                v["abort"] = json!({"http_status": s, "percentage": percent(&a.percentage, None)});
            } else if let Some(g) = a.grpc_status.as_deref().and_then(validate::grpc_code) {
                v["abort"] = json!({"grpc_status": g, "percentage": percent(&a.percentage, None)});
            }
        }
        tpfc.insert("envoy.filters.http.fault".into(), v);
    }
    if let Some(c) = &r.cors_policy {
        tpfc.insert("envoy.filters.http.cors".into(), cors_policy(c));
    }
    if !tpfc.is_empty() {
        rt["typed_per_filter_config"] = Value::Object(tpfc);
    }
    rt
}

/// istiod's `TranslateCORSPolicy`: the filter's per-route `CorsPolicy`, enabled for 100% of
/// requests, `allowOrigins` (or, only without them, the deprecated exact `allowOrigin`), lists
/// joined by commas, `maxAge` in whole seconds, and `unmatchedPreflights: IGNORE` as
/// `forward_not_matching_preflights: false` (else true).
pub fn cors_policy(c: &super::model::CorsPolicy) -> Value {
    let origins: Vec<Value> = if !c.allow_origins.is_empty() {
        c.allow_origins
            .iter()
            .filter(|m| m.exact.is_some() || m.prefix.is_some() || m.regex.is_some())
            .map(|m| {
                if let Some(e) = &m.exact {
                    json!({"exact": e})
                } else if let Some(p) = &m.prefix {
                    json!({"prefix": p})
                } else {
                    json!({"safe_regex": {"regex": m.regex}})
                }
            })
            .collect()
    } else {
        c.allow_origin.iter().map(|o| json!({"exact": o})).collect()
    };
    let mut v = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "forward_not_matching_preflights": c.unmatched_preflights.as_deref() != Some("IGNORE"),
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    });
    if !origins.is_empty() {
        v["allow_origin_string_match"] = json!(origins);
    }
    if !c.allow_methods.is_empty() {
        v["allow_methods"] = json!(c.allow_methods.join(","));
    }
    if !c.allow_headers.is_empty() {
        v["allow_headers"] = json!(c.allow_headers.join(","));
    }
    if !c.expose_headers.is_empty() {
        v["expose_headers"] = json!(c.expose_headers.join(","));
    }
    if let Some(t) = c.max_age.as_deref().and_then(parse_duration) {
        v["max_age"] = json!(t.as_secs().to_string());
    }
    if let Some(b) = c.allow_credentials {
        v["allow_credentials"] = json!(b);
    }
    v
}

/// The catch-all route to one cluster (no VirtualService).
pub fn default_route(cluster: &str) -> Value {
    json!({"name": "default", "match": {"prefix": "/"},
           "route": {"cluster": cluster, "timeout": "0s", "max_grpc_timeout": "0s", "retry_policy": default_retry()}})
}

/// All the names a service is reached by from namespace `ns` on `port`.
pub fn domains(svc: &Service, port: u32, ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    if !svc.k8s_name.is_empty() {
        let base = format!("{}.{}", svc.k8s_name, svc.namespace);
        if svc.namespace == ns {
            names.push(svc.k8s_name.clone());
        }
        names.push(base.clone());
        names.push(format!("{base}.svc"));
        let _ = DOMAIN;
    }
    names.extend(svc.vips.iter().filter(|v| !v.contains('/')).cloned());
    let mut out = Vec::new();
    for n in names {
        out.push(format!("{n}:{port}"));
        out.push(n);
    }
    out
}

/// The mesh VirtualService for `host` as seen from the node (exact host before wildcard).
pub fn mesh_vs_for<'a>(
    reg: &'a Registry,
    node: &Node,
    host: &str,
) -> Option<(&'a Object, &'a VirtualServiceSpec)> {
    let cands: Vec<_> = reg
        .virtual_services()
        .filter(|(o, vs)| {
            !vs.hosts.is_empty()
                && visible(&vs.export_to, &o.namespace, &node.namespace)
                && gateway_listed(&vs.gateways, None, &o.namespace)
        })
        .collect();
    let exact = cands.iter().find(|(o, vs)| {
        vs.hosts
            .iter()
            .any(|h| reg.resolve(h, &o.namespace) == host)
    });
    // Else istiod's most specific wildcard (the longest matching pattern; the first
    // VirtualService in order for the same pattern).
    let wildcard = || {
        let mut best: Option<(usize, &(&'a Object, &'a VirtualServiceSpec))> = None;
        for c in &cands {
            for h in &c.1.hosts {
                let h = reg.resolve(h, &c.0.namespace);
                if h.contains('*')
                    && host_matches(&h, host)
                    && best.is_none_or(|(l, _)| h.len() > l)
                {
                    best = Some((h.len(), c));
                }
            }
        }
        best.map(|(_, c)| c)
    };
    exact.or_else(wildcard).copied()
}

/// Route configurations for a sidecar: one per HTTP (or sniffed) port of visible services.
pub fn build_sidecar(reg: &Registry, node: &Node, out: &mut Resources) {
    let mut by_port: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
    for s in reg.services.iter().filter(|s| reg.sees(s, &node.namespace)) {
        for p in &s.ports {
            if p.protocol.is_http() || p.protocol == super::registry::Protocol::Unknown {
                by_port.entry(p.port).or_default().push(s);
            }
        }
    }
    for (port, svcs) in by_port {
        let ctx = Ctx {
            reg,
            node,
            port,
            gateway: None,
        };
        let mut used = BTreeSet::new();
        let mut vhosts = Vec::new();
        let mut vs_hosts_done = BTreeSet::new();
        for svc in svcs {
            let routes = match mesh_vs_for(reg, node, &svc.hostname) {
                Some((o, vs)) => {
                    vs_hosts_done.insert((o.namespace.clone(), o.meta.name.clone()));
                    let r = http_routes(&ctx, o, vs, &mut out.messages);
                    // istiod: a VirtualService with no route for this proxy and port leaves
                    // the service its default route.
                    if r.is_empty() {
                        vec![default_route(&outbound_name(port, "", &svc.hostname))]
                    } else {
                        r
                    }
                }
                None => vec![default_route(&outbound_name(port, "", &svc.hostname))],
            };
            let doms: Vec<String> = domains(svc, port, &node.namespace)
                .into_iter()
                .filter(|d| used.insert(d.clone()))
                .collect();
            if doms.is_empty() {
                continue;
            }
            vhosts.push(json!({"name": format!("{}:{port}", svc.hostname), "domains": doms, "routes": routes, "include_request_attempt_count": true}));
        }
        // VirtualService hosts that are not services, as istiod places them: on the HTTP ports
        // of the services the same VirtualService names, or on port 80 when it names none.
        let svc_hosts: Vec<&str> = reg
            .services
            .iter()
            .filter(|s| reg.sees(s, &node.namespace))
            .map(|s| s.hostname.as_str())
            .collect();
        for (o, vs) in reg.virtual_services() {
            if !visible(&vs.export_to, &o.namespace, &node.namespace)
                || !gateway_listed(&vs.gateways, None, &o.namespace)
            {
                continue;
            }
            let hosts: Vec<String> = vs
                .hosts
                .iter()
                .map(|h| reg.resolve(h, &o.namespace))
                .collect();
            let named: Vec<&Service> = reg
                .services
                .iter()
                .filter(|s| reg.sees(s, &node.namespace))
                .filter(|s| hosts.iter().any(|h| host_matches(h, &s.hostname)))
                .collect();
            let http_ports: BTreeSet<u32> = named
                .iter()
                .flat_map(|s| &s.ports)
                .filter(|p| {
                    p.protocol.is_http() || p.protocol == super::registry::Protocol::Unknown
                })
                .map(|p| p.port)
                .collect();
            let on_port = if http_ports.is_empty() {
                port == 80
            } else {
                http_ports.contains(&port)
            };
            if !on_port {
                continue;
            }
            for host in hosts {
                // Services (and wildcards that cover one) have their own virtual hosts.
                if reg.service(&host, &node.namespace).is_some()
                    || (host.contains('*') && svc_hosts.iter().any(|s| host_matches(&host, s)))
                {
                    continue;
                }
                let doms: Vec<String> = [format!("{host}:{port}"), host.clone()]
                    .into_iter()
                    .filter(|d| used.insert(d.clone()))
                    .collect();
                if doms.is_empty() {
                    continue;
                }
                let routes = http_routes(&ctx, o, vs, &mut out.messages);
                if routes.is_empty() {
                    continue;
                }
                vhosts.push(json!({"name": format!("{host}:{port}"), "domains": doms, "routes": routes, "include_request_attempt_count": true}));
            }
        }
        vhosts.push(if reg.registry_only() {
            json!({"name": "block_all", "domains": ["*"], "routes": [
                {"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}
            ], "include_request_attempt_count": true})
        } else {
            json!({"name": "allow_any", "domains": ["*"], "routes": [
                {"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}
            ], "include_request_attempt_count": true})
        });
        let name = port.to_string();
        let rc = json!({"name": name, "virtual_hosts": vhosts, "validate_clusters": false});
        match pb::<RouteConfiguration>(&name, rc) {
            Ok(rc) => out.routes.push(rc),
            Err(e) => out.skipped.push(e),
        }
    }
}
