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
                PathMatch::Regex(_) | PathMatch::Connect => ix.other.push(i),
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
