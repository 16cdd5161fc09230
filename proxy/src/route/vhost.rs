//! Indexes that make selection fast without changing its result: the domain index picks the
//! virtual host as Envoy does (exact, then `*suffix` longest first, then `prefix*` longest
//! first, then `*`), and the route index narrows a large host's routes to the candidates whose
//! path condition can match, evaluated in config order so the first match is unchanged.

use std::collections::HashMap;

use super::matcher::PathMatch;
use super::table::{Route, VirtualHost};
use super::RouteError;

/// Virtual host lookup by lower-case host.
#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    exact: HashMap<String, usize>,
    /// `*.foo.com` stored as `.foo.com`, grouped by length, longest first.
    suffix: Vec<(usize, HashMap<String, usize>)>,
    /// `foo.*` stored as `foo.`, grouped by length, longest first.
    prefix: Vec<(usize, HashMap<String, usize>)>,
    default: Option<usize>,
}

fn insert_grouped(
    groups: &mut Vec<(usize, HashMap<String, usize>)>,
    key: String,
    i: usize,
) -> Option<usize> {
    let len = key.len();
    let pos = match groups.iter().position(|(l, _)| *l <= len) {
        Some(p) if groups[p].0 == len => p,
        Some(p) => {
            groups.insert(p, (len, HashMap::new()));
            p
        }
        None => {
            groups.push((len, HashMap::new()));
            groups.len() - 1
        }
    };
    groups[pos].1.insert(key, i)
}

impl DomainIndex {
    pub(crate) fn build(vhosts: &[VirtualHost]) -> Result<Self, RouteError> {
        let mut ix = DomainIndex::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, vh) in vhosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if d.is_empty() {
                    return Err(RouteError::VirtualHost {
                        vhost: vh.name.clone(),
                        field: "domains".into(),
                        message: "empty domain".into(),
                    });
                }
                if let Some(prev) = seen.insert(d.clone(), i) {
                    return Err(RouteError::DuplicateDomain {
                        domain: d,
                        first: vhosts[prev].name.clone(),
                        second: vh.name.clone(),
                    });
                }
                if d == "*" {
                    ix.default = Some(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    insert_grouped(&mut ix.suffix, s.to_string(), i);
                } else if let Some(p) = d.strip_suffix('*') {
                    insert_grouped(&mut ix.prefix, p.to_string(), i);
                } else {
                    ix.exact.insert(d, i);
                }
            }
        }
        Ok(ix)
    }

    /// The virtual host index for `host` (already lower-case).
    pub(crate) fn find(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        // A wildcard must match at least one character: `*.foo.com` does not match `.foo.com`.
        for (len, map) in &self.suffix {
            if *len < host.len() {
                if let Some(i) = host.get(host.len() - len..).and_then(|s| map.get(s)) {
                    return Some(*i);
                }
            }
        }
        for (len, map) in &self.prefix {
            if *len < host.len() {
                if let Some(i) = host.get(..*len).and_then(|s| map.get(s)) {
                    return Some(*i);
                }
            }
        }
        self.default
    }
}

/// Routes below this count are scanned linearly.
pub const INDEX_MIN_ROUTES: usize = 32;

/// Candidate routes by path for one virtual host.
#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    exact: HashMap<String, Vec<usize>>,
    exact_ci: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    prefix_ci: HashMap<String, Vec<usize>>,
    /// Longest indexed prefix (bounds the prefix probes).
    max_prefix: usize,
    /// Routes whose path condition is not indexable (regex, CONNECT): always candidates.
    other: Vec<usize>,
}

impl RouteIndex {
    pub(crate) fn build(routes: &[Route]) -> Option<RouteIndex> {
        if routes.len() < INDEX_MIN_ROUTES {
            return None;
        }
        let mut ix = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let cs = r.matcher.case_sensitive;
            let key = |p: &str| {
                if cs {
                    p.to_string()
                } else {
                    p.to_ascii_lowercase()
                }
            };
            match &r.matcher.path {
                PathMatch::Exact(p) => {
                    let m = if cs { &mut ix.exact } else { &mut ix.exact_ci };
                    m.entry(key(p)).or_default().push(i);
                }
                // A separated prefix matches only paths that start with it.
                PathMatch::Prefix(p) | PathMatch::Separated(p) => {
                    ix.max_prefix = ix.max_prefix.max(p.len());
                    let m = if cs {
                        &mut ix.prefix
                    } else {
                        &mut ix.prefix_ci
                    };
                    m.entry(key(p)).or_default().push(i);
                }
                PathMatch::Regex(re) => match regex_literal_prefix(re.as_str()) {
                    // A full match must start with the regex's literal prefix.
                    Some(p) if !p.is_empty() => {
                        ix.max_prefix = ix.max_prefix.max(p.len());
                        ix.prefix.entry(p).or_default().push(i);
                    }
                    _ => ix.other.push(i),
                },
                PathMatch::Connect => ix.other.push(i),
            }
        }
        Some(ix)
    }

    /// Indices of routes whose path condition may match `path` (no query), ascending.
    pub(crate) fn candidates(&self, path: &str) -> Vec<usize> {
        let mut out = self.other.clone();
        let lower;
        let lower_path = if self.exact_ci.is_empty() && self.prefix_ci.is_empty() {
            ""
        } else {
            lower = path.to_ascii_lowercase();
            lower.as_str()
        };
        if let Some(v) = self.exact.get(path) {
            out.extend_from_slice(v);
        }
        if let Some(v) = self.exact_ci.get(lower_path) {
            out.extend_from_slice(v);
        }
        let max = self.max_prefix.min(path.len());
        for n in 0..=max {
            if !path.is_char_boundary(n) {
                continue;
            }
            if let Some(v) = self.prefix.get(&path[..n]) {
                out.extend_from_slice(v);
            }
            if !self.prefix_ci.is_empty() {
                if let Some(v) = self.prefix_ci.get(&lower_path[..n]) {
                    out.extend_from_slice(v);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The literal text every full match of `anchored` (`^(?:re)$`, as compiled by the matcher)
/// starts with; conservative: `None` when the pattern has alternation or starts with a group.
fn regex_literal_prefix(anchored: &str) -> Option<String> {
    let re = anchored.strip_prefix("^(?:")?.strip_suffix(")$")?;
    if re.contains('|') {
        return None;
    }
    let re = re.strip_prefix('^').unwrap_or(re);
    let mut out = String::new();
    let mut chars = re.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || "/-_~=&,;:@!'\"%<>#".contains(c) {
            if matches!(chars.peek(), Some('*' | '?' | '{')) {
                break;
            }
            out.push(c);
        } else {
            break;
        }
    }
    Some(out)
}

/// A `RouteConfiguration` with one virtual host (`*`) and `n` routes, for benchmarks and
/// scale tests. Route `i` is, by `i % 10`: an exact path `/svc/{i}`, a case-insensitive exact
/// path `/CI/{i}`, a prefix `/svc/{i}/` (with a header condition every 20th), a separated
/// prefix `/sep/{i}`, or (one in 10) a regex `/re/{i}/[0-9]+`; a catch-all `/` comes last.
pub fn large_config(n: usize) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    use envoy_types::pb::envoy::config::route::v3 as rpb;
    use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
    use rpb::route_match::PathSpecifier as P;
    let route = |i: usize, path: P, ci: bool, headers: Vec<rpb::HeaderMatcher>| rpb::Route {
        name: format!("r{i}"),
        r#match: Some(rpb::RouteMatch {
            path_specifier: Some(path),
            case_sensitive: ci
                .then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            headers,
            ..Default::default()
        }),
        action: Some(rpb::route::Action::Route(rpb::RouteAction {
            cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster(format!(
                "c{i}"
            ))),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut routes: Vec<rpb::Route> = (0..n)
        .map(|i| match i % 10 {
            0..=3 => route(i, P::Path(format!("/svc/{}", i / 2)), false, vec![]),
            4 => route(i, P::Path(format!("/CI/{i}")), true, vec![]),
            5..=7 => {
                let headers = if i % 20 == 5 {
                    vec![rpb::HeaderMatcher {
                        name: "x-canary".into(),
                        ..Default::default()
                    }]
                } else {
                    vec![]
                };
                route(i, P::Prefix(format!("/svc/{}/", i / 3)), false, headers)
            }
            8 => route(
                i,
                P::PathSeparatedPrefix(format!("/sep/{}", i / 4)),
                false,
                vec![],
            ),
            _ => route(
                i,
                P::SafeRegex(mpb::RegexMatcher {
                    regex: format!("/re/{}/[0-9]+", i / 5),
                    engine_type: None,
                }),
                false,
                vec![],
            ),
        })
        .collect();
    routes.push(route(n, P::Prefix("/".into()), false, vec![]));
    rpb::RouteConfiguration {
        name: "large".into(),
        virtual_hosts: vec![rpb::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{DefaultRuntime, RequestView, RouteTable, Selected};

    fn naive<'t>(t: &'t RouteTable, req: &RequestView<'_>) -> Option<&'t Route> {
        let vh = t.find_vhost(req)?;
        vh.routes
            .iter()
            .find(|r| r.matcher.matches(req, 0, &DefaultRuntime))
    }

    #[test]
    fn indexed_selection_equals_linear_scan() {
        let t = RouteTable::from_proto(&large_config(10_000)).unwrap();
        assert!(t.virtual_hosts[0].index.is_some());
        let mut rng = fastrand::Rng::with_seed(7);
        let plain = http::HeaderMap::new();
        let mut canary = http::HeaderMap::new();
        canary.insert("x-canary", "1".parse().unwrap());
        let mut checked = 0;
        for _ in 0..250 {
            let k = rng.usize(..6000);
            let path = match rng.u8(..8) {
                0 => format!("/svc/{k}"),
                1 => format!("/svc/{k}/x?q=1"),
                2 => format!("/ci/{k}"),
                3 => format!("/sep/{k}"),
                4 => format!("/sep/{k}/more"),
                5 => format!("/sep/{k}x"),
                6 => format!("/re/{k}/{}", rng.u16(..)),
                _ => format!("/other/{k}"),
            };
            for h in [&plain, &canary] {
                let req = RequestView {
                    authority: "any",
                    path: &path,
                    method: "GET",
                    headers: h,
                    scheme: "http",
                    internal: false,
                    remote_addr: None,
                    tls: None,
                    dynamic_metadata: None,
                };
                let got = t.select(&req, 0);
                let want = naive(&t, &req);
                let got_route = got.route();
                assert!(
                    std::ptr::eq(got_route.unwrap(), want.unwrap()),
                    "{path}: got {:?}, want {:?}",
                    got_route.map(|r| &r.name),
                    want.map(|r| &r.name)
                );
                assert!(matches!(got, Selected::Route { .. }));
                checked += 1;
            }
        }
        assert_eq!(checked, 500);
    }

    #[test]
    fn regex_prefixes() {
        let p = |re: &str| regex_literal_prefix(&format!("^(?:{re})$"));
        assert_eq!(p("/re/12/[0-9]+").as_deref(), Some("/re/12/"));
        assert_eq!(p("^/api/v[0-9]/.*").as_deref(), Some("/api/v"));
        assert_eq!(p("/ab?c").as_deref(), Some("/a"));
        assert_eq!(p("/a|/b"), None);
        assert_eq!(p("(?i)/abc").as_deref(), Some(""));
        assert_eq!(p("/a\\.b").as_deref(), Some("/a"));
    }

    #[test]
    fn index_keeps_first_match_order() {
        // A later exact route must not win over an earlier prefix route.
        let mut rc = large_config(40);
        let routes = &mut rc.virtual_hosts[0].routes;
        let exact = routes[0].clone(); // exact /svc/0
        let mut early_prefix = routes[5].clone(); // prefix /svc/1/
        if let Some(m) = early_prefix.r#match.as_mut() {
            m.path_specifier = Some(
                envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                    "/svc/".into(),
                ),
            );
            m.headers.clear();
        }
        early_prefix.name = "early".into();
        routes.insert(0, early_prefix);
        routes.push(exact);
        let t = RouteTable::from_proto(&rc).unwrap();
        let h = http::HeaderMap::new();
        let req = RequestView {
            authority: "x",
            path: "/svc/0",
            method: "GET",
            headers: &h,
            scheme: "http",
            internal: false,
            remote_addr: None,
            tls: None,
            dynamic_metadata: None,
        };
        assert_eq!(t.select(&req, 0).route().unwrap().name, "early");
    }
}
