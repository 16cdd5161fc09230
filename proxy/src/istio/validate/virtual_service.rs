//! VirtualService rules: hosts and gateways, and every HTTP, TLS and TCP route (matches,
//! destinations and weights, redirects, rewrites, header changes, timeouts, retries, faults,
//! mirrors, direct responses, CORS).

use super::names::{self, check_port, check_wildcard_domain, is_ip};
use super::Findings;
use crate::istio::model::{
    CorsPolicy, Destination, HeaderOps, Headers, HttpMatch, HttpRoute, L4Match, Percent,
    StringMatch, VirtualServiceSpec,
};
use crate::istio::registry::host_matches;

pub(super) fn check(f: &mut Findings, vs: &VirtualServiceSpec) {
    let delegate = vs.hosts.is_empty();
    let gateway_bound = !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh");
    if delegate {
        for (field, set) in [
            ("spec.gateways", !vs.gateways.is_empty()),
            ("spec.tls", !vs.tls.is_empty()),
            ("spec.tcp", !vs.tcp.is_empty()),
        ] {
            if set {
                f.error(
                    field,
                    "a VirtualService without hosts is a delegate: it may have only http routes and no gateways",
                );
            }
        }
    }
    gateway_names(f, "spec.gateways", &vs.gateways);
    let sni = vs
        .tls
        .iter()
        .any(|r| r.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut hosts_ok = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let r = if gateway_bound && sni && h.starts_with("outbound_") {
            auto_passthrough_sni(h)
        } else {
            check_wildcard_domain(h)
        };
        if let Err(e) = r {
            if !is_ip(h) {
                f.error(format!("spec.hosts[{i}]"), e);
                hosts_ok = false;
            }
        }
        if h == "*" && !gateway_bound {
            f.error(
                format!("spec.hosts[{i}]"),
                "the host `*` is allowed only on a VirtualService bound to gateways (not to the mesh)",
            );
        }
    }
    if hosts_ok {
        for (i, a) in vs.hosts.iter().enumerate() {
            for b in &vs.hosts[i + 1..] {
                if overlap(a, b) {
                    f.error(
                        format!("spec.hosts[{i}]"),
                        format!("hosts {a:?} and {b:?} overlap; list each host once"),
                    );
                }
            }
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        f.error("spec", "at least one http, tcp or tls route is required");
    }
    f.export_to("spec.exportTo", &vs.export_to, false);
    for (i, r) in vs.http.iter().enumerate() {
        http_route(f, &format!("spec.http[{i}]"), r, delegate, gateway_bound);
    }
    unreachable(
        f,
        "spec.http",
        vs.http.iter().map(|r| {
            let keys = r.matches.iter().map(|m| {
                let mut m = m.clone();
                m.name = None;
                format!("{m:?}")
            });
            (r.name.clone(), keys.collect())
        }),
    );
    let l4 = |m: &[L4Match]| m.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>();
    unreachable(f, "spec.tcp", vs.tcp.iter().map(|r| (None, l4(&r.matches))));
    unreachable(f, "spec.tls", vs.tls.iter().map(|r| (None, l4(&r.matches))));
    for (i, r) in vs.tls.iter().enumerate() {
        let p = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            f.error(format!("{p}.match"), "a TLS route needs at least one match");
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            if m.sni_hosts.is_empty() {
                f.error(format!("{mp}.sniHosts"), "sniHosts is required");
            }
            for (k, s) in m.sni_hosts.iter().enumerate() {
                let sp = format!("{mp}.sniHosts[{k}]");
                let r = if gateway_bound && s.starts_with("outbound_") {
                    auto_passthrough_sni(s)
                } else {
                    check_wildcard_domain(s)
                };
                match r {
                    Err(_) if is_ip(s) => f.warn(
                        &sp,
                        format!("{s:?} is an IP address; SNI carries host names and most clients never send an IP"),
                    ),
                    Err(e) => f.error(&sp, e),
                    Ok(()) => {
                        if !vs.hosts.iter().any(|h| host_matches(h, s)) {
                            f.error(
                                &sp,
                                format!(
                                    "SNI host {s:?} is not within any of the VirtualService's hosts {:?}",
                                    vs.hosts
                                ),
                            );
                        }
                    }
                }
            }
            l4_match(f, &mp, m);
        }
        route_destinations(f, &p, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            l4_match(f, &format!("{p}.match[{j}]"), m);
        }
        route_destinations(f, &p, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
}

/// Rules no request can reach (istiod's analysis warns the same): any rule after one without
/// matches, and matches an earlier rule already has. Each rule is its name and its matches.
fn unreachable(
    f: &mut Findings,
    field: &str,
    rules: impl Iterator<Item = (Option<String>, Vec<String>)>,
) {
    let mut catch_all: Option<String> = None;
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, (name, matches)) in rules.enumerate() {
        let label = name.map_or_else(|| format!("#{i}"), |n| format!("{n:?}"));
        if let Some(first) = &catch_all {
            f.warn(
                format!("{field}[{i}]"),
                format!("rule {label} is never used: rule {first} before it has no match and takes every request"),
            );
            continue;
        }
        if matches.is_empty() {
            catch_all = Some(label);
            continue;
        }
        for (j, m) in matches.iter().enumerate() {
            if let Some((earlier, _)) = seen.iter().find(|(_, k)| k == m) {
                f.warn(
                    format!("{field}[{i}].match[{j}]"),
                    format!("never used: rule {earlier} has the same match"),
                );
            }
        }
        seen.extend(matches.into_iter().map(|m| (label.clone(), m)));
    }
}

/// Gateway references: `ns/name` with both parts DNS labels, or a bare name.
pub(super) fn gateway_names(f: &mut Findings, field: &str, list: &[String]) {
    for (i, g) in list.iter().enumerate() {
        let p = format!("{field}[{i}]");
        match g.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    f.error(&p, "a gateway reference `namespace/name` needs both parts");
                } else if !names::is_label(ns) {
                    f.error(&p, format!("{ns:?} is not a valid namespace"));
                } else if !names::is_label(name) {
                    f.error(&p, format!("{name:?} is not a valid gateway name"));
                }
            }
            None => {
                if g.contains('.') {
                    f.warn(
                        &p,
                        format!("{g:?} uses the old `name.namespace` form; write `namespace/name`"),
                    );
                }
                f.check(&p, names::check_fqdn(g));
            }
        }
    }
}

/// istiod's auto-passthrough SNI form: `outbound_.<port>_._.<host>`.
fn auto_passthrough_sni(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.splitn(4, '_').collect();
    let shape = "`outbound_.<port>_._.<host>`";
    if parts.len() < 4 {
        return Err(format!("{s:?} should have the form {shape}"));
    }
    let port_ok = parts[1]
        .strip_prefix('.')
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| check_port(p).is_ok());
    let host = parts[3].strip_prefix('.').unwrap_or("");
    if parts[0] != "outbound" || parts[2] != "." || !port_ok || check_wildcard_domain(host).is_err()
    {
        return Err(format!("{s:?} should have the form {shape}"));
    }
    Ok(())
}

/// Whether two hosts (possibly `*.suffix` or `*`) can name the same host.
fn overlap(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

fn l4_match(f: &mut Findings, p: &str, m: &L4Match) {
    for (k, s) in m.destination_subnets.iter().enumerate() {
        f.check(
            format!("{p}.destinationSubnets[{k}]"),
            names::check_ip_or_cidr(s),
        );
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        f.check(format!("{p}.port"), check_port(port));
    }
    f.labels(&format!("{p}.sourceLabels"), &m.source_labels);
    gateway_names(f, &format!("{p}.gateways"), &m.gateways);
}

fn route_destinations<'a>(
    f: &mut Findings,
    p: &str,
    route: impl ExactSizeIterator<Item = (&'a Destination, Option<i64>)> + Clone,
) {
    if route.len() == 0 {
        f.error(
            format!("{p}.route"),
            "at least one route destination is required",
        );
    }
    for (j, (d, _)) in route.clone().enumerate() {
        destination(f, &format!("{p}.route[{j}].destination"), d);
    }
    weights(f, &format!("{p}.route"), route.map(|(_, w)| w));
}

fn destination(f: &mut Findings, p: &str, d: &Destination) {
    if d.host == "*" {
        f.error(format!("{p}.host"), "`*` is not a destination host");
    } else {
        f.check(format!("{p}.host"), check_wildcard_domain(&d.host));
    }
    if let Some(s) = &d.subset {
        if !names::is_label(s) {
            f.error(
                format!("{p}.subset"),
                format!("{s:?} is not a valid subset name (a DNS-1123 label)"),
            );
        }
    }
    if let Some(port) = &d.port {
        f.check(
            format!("{p}.port.number"),
            check_port(port.number.unwrap_or(0)),
        );
    }
}

fn weights(f: &mut Findings, field: &str, w: impl Iterator<Item = Option<i64>>) {
    let w: Vec<_> = w.collect();
    if let Some(v) = w.iter().flatten().find(|v| **v < 0) {
        f.error(field, format!("weight {v} is negative"));
        return;
    }
    let sum: i64 = w.iter().map(|x| x.unwrap_or(0)).sum();
    if w.len() > 1 && sum == 0 {
        f.error(field, "the weights sum to 0");
    } else if w.len() > 1 && sum != 100 {
        f.info(
            field,
            format!("the weights sum to {sum}, not 100; they are used as relative weights"),
        );
    }
}

fn http_route(f: &mut Findings, p: &str, r: &HttpRoute, in_delegate: bool, gateway_bound: bool) {
    if r.delegate.is_some() {
        if in_delegate {
            f.error(
                format!("{p}.delegate"),
                "a delegate's routes cannot delegate again",
            );
        }
        if r.redirect.is_some() {
            f.error(
                format!("{p}.redirect"),
                "a route that delegates cannot redirect",
            );
        }
        if !r.route.is_empty() {
            f.error(
                format!("{p}.route"),
                "a route that delegates cannot have destinations",
            );
        }
    } else {
        let conflicts = [
            (
                r.redirect.is_some(),
                "redirect",
                !r.route.is_empty(),
                "route",
            ),
            (r.redirect.is_some(), "redirect", r.fault.is_some(), "fault"),
            (
                r.redirect.is_some(),
                "redirect",
                r.rewrite.is_some(),
                "rewrite",
            ),
            (
                r.redirect.is_some(),
                "redirect",
                r.direct_response.is_some(),
                "directResponse",
            ),
            (
                r.direct_response.is_some() && r.redirect.is_none(),
                "directResponse",
                !r.route.is_empty(),
                "route",
            ),
            (
                r.direct_response.is_some() && r.redirect.is_none(),
                "directResponse",
                r.fault.is_some(),
                "fault",
            ),
            (
                r.direct_response.is_some() && r.redirect.is_none(),
                "directResponse",
                r.rewrite.is_some(),
                "rewrite",
            ),
        ];
        for (a, an, b, bn) in conflicts {
            if a && b {
                f.error(p, format!("{an} and {bn} cannot be used together"));
            }
        }
        if r.route.is_empty() && r.redirect.is_none() && r.direct_response.is_none() {
            f.error(
                p,
                "one of route, redirect, directResponse or delegate is required",
            );
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        f.error(p, "mirror and mirrors cannot be used together");
    }
    for (j, m) in r.matches.iter().enumerate() {
        http_match(f, &format!("{p}.match[{j}]"), m, gateway_bound);
    }
    header_ops(f, &format!("{p}.headers"), &r.headers);
    let mut authority = Vec::new();
    if let Some(a) = r.rewrite.as_ref().and_then(|rw| rw.authority.as_ref()) {
        authority.push(a.clone());
    }
    if let Some(req) = r.headers.as_ref().and_then(|h| h.request.as_ref()) {
        for (k, v) in req.set.iter().chain(&req.add) {
            if k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host") {
                authority.push(v.clone());
            }
        }
    }
    if authority.len() > 1 {
        f.error(
            p,
            format!(
                "the authority is rewritten more than once ({authority:?}); set it in one place"
            ),
        );
    }
    for (j, d) in r.route.iter().enumerate() {
        header_ops(f, &format!("{p}.route[{j}].headers"), &d.headers);
    }
    if !r.route.is_empty() {
        route_destinations(f, p, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
    if let Some(red) = &r.redirect {
        let rp = format!("{p}.redirect");
        let non_prefix_uri = r
            .matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()));
        if red.uri.is_some() && red.prefix_rewrite.is_some() {
            f.error(&rp, "uri and prefixRewrite cannot be used together");
        } else if red.prefix_rewrite.is_some() && non_prefix_uri {
            f.error(
                format!("{rp}.prefixRewrite"),
                "prefixRewrite needs every uri match of the route to be a prefix match",
            );
        } else if red.uri.is_none()
            && red.prefix_rewrite.is_none()
            && red.authority.is_none()
            && red.scheme.is_none()
            && red.port.is_none()
            && red.derive_port.is_none()
        {
            f.error(
                &rp,
                "a redirect needs a uri, prefixRewrite, authority, scheme or port",
            );
        } else if let Some(c) = red
            .redirect_code
            .filter(|c| *c != 0 && !(300..=399).contains(c))
        {
            f.error(
                format!("{rp}.redirectCode"),
                format!("{c} is not a 3xx code"),
            );
        } else if let Some(s) = red
            .scheme
            .as_deref()
            .filter(|s| !matches!(*s, "" | "http" | "https"))
        {
            f.error(
                format!("{rp}.scheme"),
                format!("{s:?} is neither http nor https"),
            );
        } else if let Some(port) = red.port.filter(|p| *p > 0) {
            f.check(format!("{rp}.port"), check_port(port));
        }
        if let Some(c) = red.redirect_code {
            if (300..=399).contains(&c) && !matches!(c, 301 | 302 | 303 | 307 | 308) {
                f.warn(
                    format!("{rp}.redirectCode"),
                    format!("Envoy redirects with 301, 302, 303, 307 or 308; {c} is sent as 301"),
                );
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        let wp = format!("{p}.rewrite");
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            f.error(&wp, "uri and uriRegexRewrite cannot be used together");
        }
        if rw.uri.is_none() && rw.uri_regex_rewrite.is_none() && rw.authority.is_none() {
            f.error(&wp, "a rewrite needs a uri, uriRegexRewrite or authority");
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rr.pattern.is_empty() || rr.rewrite.is_empty() {
                f.error(
                    format!("{wp}.uriRegexRewrite"),
                    "both match and rewrite are required",
                );
            } else {
                regex(f, &format!("{wp}.uriRegexRewrite.match"), &rr.pattern);
            }
        }
    }
    f.duration(format!("{p}.timeout"), &r.timeout);
    if let Some(rt) = &r.retries {
        let rp = format!("{p}.retries");
        let attempts = rt.attempts.unwrap_or(0);
        if attempts < 0 {
            f.error(format!("{rp}.attempts"), "attempts cannot be negative");
        } else if attempts == 0
            && (rt.per_try_timeout.is_some()
                || rt.retry_on.is_some()
                || rt.retry_remote_localities.is_some())
        {
            f.error(
                &rp,
                "attempts is 0 (retries off), yet perTryTimeout, retryOn or retryRemoteLocalities is set",
            );
        }
        f.duration(format!("{rp}.perTryTimeout"), &rt.per_try_timeout);
        f.duration(format!("{rp}.backoff"), &rt.backoff);
        if let Some(on) = &rt.retry_on {
            for c in on.split(',') {
                if !retry_on_known(c) {
                    f.error(
                        format!("{rp}.retryOn"),
                        format!("{c:?} is not a retry condition (list them comma-separated, without spaces)"),
                    );
                }
            }
        }
    }
    if let Some(fault) = &r.fault {
        let fp = format!("{p}.fault");
        if fault.abort.is_none() && fault.delay.is_none() {
            f.error(&fp, "a fault needs an abort, a delay or both");
        }
        if let Some(a) = &fault.abort {
            percentage(f, &format!("{fp}.abort.percentage"), &a.percentage);
            if let Some(s) = a.http_status {
                if !(200..=600).contains(&s) {
                    f.error(
                        format!("{fp}.abort.httpStatus"),
                        format!("status {s} is outside 200-599"),
                    );
                }
            }
            if let Some(g) = &a.grpc_status {
                if grpc_code(g).is_none() {
                    f.error(
                        format!("{fp}.abort.grpcStatus"),
                        format!(
                            "{g:?} is not a gRPC status name (such as UNAVAILABLE or NOT_FOUND)"
                        ),
                    );
                }
            }
            if a.http2_error.is_some() {
                f.error(
                    format!("{fp}.abort.http2Error"),
                    "HTTP/2 error aborts are not supported (nor by istiod)",
                );
            }
            if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
                f.warn(
                    format!("{fp}.abort"),
                    "no httpStatus or grpcStatus is set, so the abort does nothing",
                );
            }
        }
        if let Some(d) = &fault.delay {
            percentage(f, &format!("{fp}.delay.percentage"), &d.percentage);
            f.duration(format!("{fp}.delay.fixedDelay"), &d.fixed_delay);
            if d.exponential_delay.is_some() {
                f.error(
                    format!("{fp}.delay.exponentialDelay"),
                    "exponentialDelay is not supported (nor by istiod)",
                );
            } else if d.fixed_delay.is_none() {
                f.error(
                    format!("{fp}.delay"),
                    "fixedDelay is required: Envoy refuses a delay fault without one",
                );
            }
        }
    }
    if let Some(m) = &r.mirror {
        destination(f, &format!("{p}.mirror"), m);
    }
    if let Some(v) = r.mirror_percentage.as_ref().and_then(|m| m.value) {
        if !(0.0..=100.0).contains(&v) {
            f.error(
                format!("{p}.mirrorPercentage"),
                format!("{v} is outside 0-100"),
            );
        }
    }
    if let Some(v) = r.mirror_percent {
        if v > 100 {
            f.error(
                format!("{p}.mirrorPercent"),
                format!("{v} is outside 0-100"),
            );
        }
        f.warn(
            format!("{p}.mirrorPercent"),
            "mirrorPercent is deprecated; use mirrorPercentage",
        );
    }
    for (j, m) in r.mirrors.iter().enumerate() {
        let mp = format!("{p}.mirrors[{j}]");
        destination(f, &format!("{mp}.destination"), &m.destination);
        if let Some(v) = m.percentage.as_ref().and_then(|m| m.value) {
            if !(0.0..=100.0).contains(&v) {
                f.error(format!("{mp}.percentage"), format!("{v} is outside 0-100"));
            }
        }
    }
    if let Some(d) = &r.direct_response {
        if !(200..=600).contains(&d.status) {
            f.error(
                format!("{p}.directResponse.status"),
                format!("status {} is outside 200-599", d.status),
            );
        }
        let size = d.body.as_ref().map_or(0, |b| {
            b.string.as_ref().map_or(0, |s| s.len())
                + b.bytes.as_ref().map_or(0, |s| s.len() / 4 * 3)
        });
        if size > 1024 * 1024 {
            f.error(
                format!("{p}.directResponse.body"),
                format!("the body ({size} bytes) is over 1 MiB"),
            );
        } else if size > 100 * 1024 {
            f.warn(
                format!("{p}.directResponse.body"),
                format!("the body ({size} bytes) is over 100 KiB; every proxy holds a copy"),
            );
        }
    }
    if let Some(c) = &r.cors_policy {
        cors(f, &format!("{p}.corsPolicy"), c);
    }
}

fn http_match(f: &mut Findings, mp: &str, m: &HttpMatch, gateway_bound: bool) {
    if let Some(u) = &m.uri {
        string_match(f, &format!("{mp}.uri"), u, true);
    }
    for (name, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            string_match(f, &format!("{mp}.{name}"), sm, false);
        }
    }
    if m.ignore_uri_case && m.uri.as_ref().is_some_and(|u| u.regex.is_some()) {
        f.warn(
            format!("{mp}.ignoreUriCase"),
            "has no effect on a regex uri (Envoy ignores case_sensitive for regex paths, as with istiod); use (?i) in the regex",
        );
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (k, sm) in map {
            let hp = format!("{mp}.{field}.{k}");
            f.check(&hp, names::check_match_header_name(k));
            let present = field == "withoutHeaders" && sm.regex.as_deref() == Some("*");
            if !present {
                string_match(f, &hp, sm, false);
            }
            if k.starts_with("@request.auth.claims") {
                if gateway_bound {
                    f.warn(
                        &hp,
                        "JWT claim matches need RequestAuthentication, which Sluice does not implement: it is matched as a request header of that name (never sent), not as the claim",
                    );
                } else {
                    f.error(
                        &hp,
                        "JWT claim matches are allowed only on VirtualServices bound to gateways",
                    );
                }
            }
        }
    }
    for (k, sm) in &m.query_params {
        string_match(f, &format!("{mp}.queryParams.{k}"), sm, false);
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        f.check(format!("{mp}.port"), check_port(port));
    }
    f.labels(&format!("{mp}.sourceLabels"), &m.source_labels);
    gateway_names(f, &format!("{mp}.gateways"), &m.gateways);
    if let Some(ns) = &m.source_namespace {
        if !names::is_label(ns) {
            f.error(
                format!("{mp}.sourceNamespace"),
                format!("{ns:?} is not a valid namespace"),
            );
        }
    }
}

/// One StringMatch: one kind, a prefix that is not empty (a URI prefix may be), a regex that
/// is not empty, at most 1024 bytes and compiles.
fn string_match(f: &mut Findings, field: &str, m: &StringMatch, is_uri: bool) {
    let n = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if n > 1 {
        f.error(field, "only one of exact, prefix or regex may be set");
    }
    if m.prefix.as_deref() == Some("") && !is_uri {
        f.error(
            format!("{field}.prefix"),
            "an empty prefix match is not allowed",
        );
    }
    if let Some(r) = &m.regex {
        regex(f, &format!("{field}.regex"), r);
    }
}

fn regex(f: &mut Findings, field: &str, r: &str) {
    if r.is_empty() {
        f.error(field, "an empty regex is not allowed");
    } else if r.len() > 1024 {
        f.error(
            field,
            format!("the regex is {} bytes; at most 1024 are allowed", r.len()),
        );
    } else if let Err(e) = regex::Regex::new(&format!("^(?:{r})$")) {
        f.error(
            field,
            format!(
                "bad regex {r:?}: {} (RE2 syntax)",
                e.to_string().lines().last().unwrap_or("")
            ),
        );
    }
}

fn header_ops(f: &mut Findings, p: &str, h: &Option<Headers>) {
    let Some(h) = h else { return };
    let sides: [(&str, &Option<HeaderOps>); 2] =
        [("request", &h.request), ("response", &h.response)];
    for (side, ops) in sides {
        let Some(ops) = ops else { continue };
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (k, v) in map {
                let field = format!("{p}.{side}.{op}.{k}");
                let name = if side == "request" {
                    names::check_request_header_set(k)
                } else {
                    names::check_header_op(k)
                };
                f.check(&field, name);
                f.check(&field, names::check_header_value(v));
            }
        }
        for (i, k) in ops.remove.iter().enumerate() {
            f.check(format!("{p}.{side}.remove[{i}]"), names::check_header_op(k));
        }
    }
}

fn percentage(f: &mut Findings, field: &str, p: &Option<Percent>) {
    if let Some(v) = p.as_ref().and_then(|p| p.value) {
        if !(v == 0.0 || (0.0001..=100.0).contains(&v)) {
            f.error(field, format!("{v} is neither 0 nor within 0.0001-100"));
        }
    }
}

/// Envoy's retry conditions as istiod accepts them, or an HTTP status code.
fn retry_on_known(c: &str) -> bool {
    if let Ok(n) = c.parse::<u16>() {
        return http::StatusCode::from_u16(n).is_ok_and(|s| s.canonical_reason().is_some());
    }
    matches!(
        c,
        "5xx"
            | "gateway-error"
            | "reset"
            | "reset-before-request"
            | "connect-failure"
            | "retriable-4xx"
            | "refused-stream"
            | "retriable-status-codes"
            | "retriable-headers"
            | "envoy-ratelimited"
            | "http3-post-connect-failure"
            | "cancelled"
            | "deadline-exceeded"
            | "internal"
            | "resource-exhausted"
            | "unavailable"
    )
}

/// The number of a gRPC status name.
pub(crate) fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

/// istiod's `validateCORSPolicy`.
fn cors(f: &mut Findings, p: &str, c: &CorsPolicy) {
    for (i, m) in c.allow_origins.iter().enumerate() {
        let v = m.exact.as_ref().or(m.prefix.as_ref()).or(m.regex.as_ref());
        match v {
            None => f.error(
                format!("{p}.allowOrigins[{i}]"),
                "an exact, prefix or regex match is required",
            ),
            Some(v) if v.is_empty() => f.error(
                format!("{p}.allowOrigins[{i}]"),
                "an empty origin match is not allowed",
            ),
            Some(_) => {}
        }
        if let Some(r) = m.regex.as_deref().filter(|r| !r.is_empty()) {
            regex(f, &format!("{p}.allowOrigins[{i}].regex"), r);
        }
    }
    const METHODS: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
    ];
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            f.error(
                format!("{p}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && !names::is_token(h) {
                f.error(
                    format!("{p}.{field}[{i}]"),
                    format!("{h:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(m) = &c.max_age {
        if let Some(d) = f.check(format!("{p}.maxAge"), names::check_duration(m)) {
            if d.subsec_nanos() > 0 {
                f.error(format!("{p}.maxAge"), "maxAge is counted in whole seconds");
            }
        }
    }
    if let Some(u) = &c.unmatched_preflights {
        if !matches!(
            u.as_str(),
            "UNSPECIFIED" | "UNSPECIFIED_UNMATCHED_PREFLIGHTS" | "FORWARD" | "IGNORE"
        ) {
            f.error(
                format!("{p}.unmatchedPreflights"),
                format!("unknown value {u:?} (FORWARD or IGNORE)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_relations() {
        assert!(overlap("*.foo.com", "a.foo.com"));
        assert!(overlap("*", "a"));
        assert!(overlap("a", "a"));
        assert!(!overlap("a.foo.com", "b.foo.com"));
        assert!(!overlap("*.foo.com", "foo.com"));
        assert!(host_matches("*.foo.com", "a.foo.com"));
        assert!(host_matches("*.foo.com", "*.bar.foo.com"));
        assert!(host_matches("*", "x"));
        assert!(!host_matches("a.foo.com", "*.foo.com"));
        assert!(!host_matches("*.foo.com", "a.bar.com"));
        assert!(
            auto_passthrough_sni("outbound_.8080_._.reviews.default.svc.cluster.local").is_ok()
        );
        assert!(auto_passthrough_sni("outbound_.x_._.reviews").is_err());
        assert!(retry_on_known("503"));
        assert!(!retry_on_known("599"));
        assert!(!retry_on_known(" reset"));
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
    }
}
