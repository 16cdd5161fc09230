//! The compiled route table: [`RouteTable::from_proto`] turns a `RouteConfiguration` into
//! virtual hosts and routes once (regexes compiled, domains indexed, errors naming the virtual
//! host, route and field); [`RouteTable::select`] picks the action for a request and
//! [`RouteTable::finalize_request`] / [`RouteTable::finalize_response_headers`] apply the chosen
//! route's rewrites and header mutations.

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3 as rpb;

use super::action::{self, *};
use super::headers::{self, FormatCtx, HeaderMutations};
pub use super::matcher::RouteMatch;
use super::matcher::*;
use super::vhost::{DomainIndex, RouteIndex};
use super::{strip_query, DefaultRuntime, FieldError, RequestView, RouteError, Runtime};
use crate::http::cors::{CorsPolicy, Policies};
use crate::route::per_filter::PerFilter;

/// A compiled `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    domains: DomainIndex,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// Headers the connection manager strips from external requests.
    pub internal_only_headers: Vec<String>,
    pub most_specific_header_mutations_wins: bool,
    pub ignore_port_in_host_matching: bool,
    /// Select the virtual host by this header instead of `:authority` (lower-case).
    pub vhost_header: Option<String>,
}

/// Envoy's default `max_direct_response_body_size_bytes`.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY: usize = 4096;

/// `require_tls` on a virtual host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRequirement {
    None,
    ExternalOnly,
    All,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub require_tls: TlsRequirement,
    pub virtual_clusters: Vec<VirtualCluster>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// Boxed: requests read the copy in each forwarding route's entry, not this one.
    pub retry_policy: Option<Box<RetryPolicy>>,
    /// `typed_per_filter_config` compiled for the filters that read it per request.
    pub per_filter: PerFilter,
    /// The legacy `cors` field, compiled.
    pub cors: Option<Arc<CorsPolicy>>,
    /// Add `x-envoy-attempt-count` to upstream requests / downstream responses.
    pub include_request_attempt_count: bool,
    pub include_attempt_count_in_response: bool,
    pub(crate) index: Option<RouteIndex>,
}

/// A virtual cluster: a named request class for stats, matched by headers.
#[derive(Debug)]
pub struct VirtualCluster {
    pub name: String,
    pub headers: Vec<HeaderMatcher>,
}

/// Envoy's catch-all virtual cluster name.
pub const OTHER_VIRTUAL_CLUSTER: &str = "other";

#[derive(Debug)]
pub struct Route {
    /// Config name, or empty.
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// Boxed: only the route-check tool reads it, and most routes have none.
    pub metadata: Option<Box<envoy_types::pb::envoy::config::core::v3::Metadata>>,
    /// `typed_per_filter_config` compiled for the filters that read it per request.
    pub per_filter: PerFilter,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per route, built once; boxing buys nothing
pub enum Action {
    Forward(RouteEntry),
    Redirect(RedirectAction),
    Direct(DirectAction),
    /// `non_forwarding_action`: matched, but a filter produces the response.
    NonForwarding,
}

/// The outcome of route selection.
#[derive(Debug)]
pub enum Selected<'t> {
    /// Forward upstream to `cluster`.
    Route {
        vhost: &'t VirtualHost,
        route: &'t Route,
        entry: &'t RouteEntry,
        cluster: Cow<'t, str>,
        /// The picked weighted cluster, when the route uses weighted clusters.
        weighted: Option<&'t WeightedCluster>,
        /// `Some("other")` when the host has virtual clusters and none matched.
        virtual_cluster: Option<&'t str>,
    },
    /// A forwarding route whose cluster could not be determined (e.g. `cluster_header` absent).
    ClusterNotFound {
        vhost: &'t VirtualHost,
        route: &'t Route,
        entry: &'t RouteEntry,
        status: u16,
        virtual_cluster: Option<&'t str>,
    },
    /// Answer with a redirect. `route` is `None` for the virtual host's `require_tls` redirect.
    Redirect {
        vhost: &'t VirtualHost,
        route: Option<&'t Route>,
        location: String,
        status: u16,
    },
    /// Answer directly.
    Direct {
        vhost: &'t VirtualHost,
        route: &'t Route,
        status: u16,
        body: Option<&'t str>,
    },
    NonForwarding {
        vhost: &'t VirtualHost,
        route: &'t Route,
    },
    /// No virtual host or no route matched (404).
    NoRoute,
}

impl<'t> Selected<'t> {
    pub fn vhost(&self) -> Option<&'t VirtualHost> {
        match self {
            Selected::Route { vhost, .. }
            | Selected::ClusterNotFound { vhost, .. }
            | Selected::Redirect { vhost, .. }
            | Selected::Direct { vhost, .. }
            | Selected::NonForwarding { vhost, .. } => Some(vhost),
            Selected::NoRoute => None,
        }
    }

    pub fn route(&self) -> Option<&'t Route> {
        match self {
            Selected::Route { route, .. }
            | Selected::ClusterNotFound { route, .. }
            | Selected::Direct { route, .. }
            | Selected::NonForwarding { route, .. } => Some(route),
            Selected::Redirect { route, .. } => *route,
            Selected::NoRoute => None,
        }
    }

    /// The forwarding parameters, for forwarding routes.
    pub fn entry(&self) -> Option<&'t RouteEntry> {
        match self {
            Selected::Route { entry, .. } | Selected::ClusterNotFound { entry, .. } => Some(entry),
            _ => None,
        }
    }

    /// The fault filter override for the filter named `filter`: weighted cluster, route, then
    /// virtual host, the most specific first (compiled when the table was built).
    pub fn fault_config(
        &self,
        filter: &str,
    ) -> Option<&'t envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault> {
        if let Selected::Route {
            weighted: Some(w), ..
        } = self
        {
            if let Some(f) = w.per_filter.fault(filter) {
                return Some(f);
            }
        }
        self.route()
            .and_then(|r| r.per_filter.fault(filter))
            .or_else(|| self.vhost()?.per_filter.fault(filter))
    }
}

impl<'t> Selected<'t> {
    /// The CORS policies for the filter named `filter`, most specific first (Envoy's order):
    /// per-filter policies of the weighted cluster, route and virtual host; when there are none,
    /// the legacy `cors` of the route action and the virtual host. Only forwarding routes have
    /// any.
    pub fn cors_policies(&self, filter: &str) -> Policies<'t> {
        let Some(entry) = self.entry() else {
            return Policies::default();
        };
        let mut out = Vec::new();
        if let Selected::Route {
            weighted: Some(w), ..
        } = self
        {
            out.extend(w.per_filter.cors(filter));
        }
        out.extend(self.route().and_then(|r| r.per_filter.cors(filter)));
        out.extend(self.vhost().and_then(|v| v.per_filter.cors(filter)));
        if out.is_empty() {
            out.extend(entry.cors.as_deref());
            out.extend(self.vhost().and_then(|v| v.cors.as_deref()));
        }
        Policies(out)
    }
}

fn route_label(i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("#{i}")
    } else {
        format!("#{i} ({name})")
    }
}

impl RouteTable {
    /// Compiles `rc`; any invalid field rejects the whole configuration.
    pub fn from_proto(rc: &rpb::RouteConfiguration) -> Result<RouteTable, RouteError> {
        let cfg_err = |e: FieldError| RouteError::Config {
            name: rc.name.clone(),
            field: e.field,
            message: e.message,
        };
        if !rc.cluster_specifier_plugins.is_empty() {
            return Err(cfg_err(FieldError::new(
                "cluster_specifier_plugins",
                "not supported",
            )));
        }
        let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
        for vh in &rc.virtual_hosts {
            virtual_hosts.push(compile_vhost(vh)?);
        }
        let max_body = rc
            .max_direct_response_body_size_bytes
            .map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |v| v.value as usize);
        for vh in &virtual_hosts {
            for (i, r) in vh.routes.iter().enumerate() {
                if let Action::Direct(DirectAction { body: Some(b), .. }) = &r.action {
                    if b.len() > max_body {
                        return Err(RouteError::Route {
                            vhost: vh.name.clone(),
                            route: route_label(i, &r.name),
                            field: "direct_response.body".into(),
                            message: format!(
                                "{} bytes exceeds max_direct_response_body_size_bytes {max_body}",
                                b.len()
                            ),
                        });
                    }
                }
            }
        }
        let domains = DomainIndex::build(&virtual_hosts)?;
        Ok(RouteTable {
            name: rc.name.clone(),
            domains,
            virtual_hosts,
            request_headers: HeaderMutations::compile(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
            )
            .map_err(|e| cfg_err(e.under("request_headers")))?,
            response_headers: HeaderMutations::compile(
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
            )
            .map_err(|e| cfg_err(e.under("response_headers")))?,
            internal_only_headers: rc
                .internal_only_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
            ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
            vhost_header: (!rc.vhost_header.is_empty())
                .then(|| rc.vhost_header.to_ascii_lowercase()),
        })
    }

    /// The virtual host for `req` (by `:authority`, or `vhost_header`).
    pub fn find_vhost(&self, req: &RequestView<'_>) -> Option<&VirtualHost> {
        let host = match &self.vhost_header {
            Some(h) => super::HeaderSource::header(req, h).unwrap_or_default(),
            None => Cow::Borrowed(req.authority),
        };
        let host = if self.ignore_port_in_host_matching {
            action::strip_port(&host)
        } else {
            &host
        };
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        self.domains.find(host).map(|i| &self.virtual_hosts[i])
    }

    /// Selects with the default runtime (configured fractions and weights).
    pub fn select(&self, req: &RequestView<'_>, random: u64) -> Selected<'_> {
        self.select_with(req, random, &DefaultRuntime)
    }

    /// Selects the action for `req`. `random` drives weighted clusters and runtime fractions.
    pub fn select_with(
        &self,
        req: &RequestView<'_>,
        random: u64,
        runtime: &dyn Runtime,
    ) -> Selected<'_> {
        let Some(vh) = self.find_vhost(req) else {
            return Selected::NoRoute;
        };
        let needs_tls = match vh.require_tls {
            TlsRequirement::None => false,
            TlsRequirement::All => !req.is_https(),
            TlsRequirement::ExternalOnly => !req.is_https() && !req.internal,
        };
        if needs_tls {
            let to_https = RedirectAction {
                scheme: Some("https".into()),
                host: None,
                port: None,
                path: RedirectPath::Keep,
                strip_query: false,
                status: 301,
            };
            return Selected::Redirect {
                vhost: vh,
                route: None,
                location: action::new_uri(Some(&to_https), req, req.path),
                status: 301,
            };
        }
        let found = match &vh.index {
            Some(ix) => ix
                .candidates(req.path_only())
                .into_iter()
                .map(|i| &vh.routes[i])
                .find(|r| r.matcher.matches(req, random, runtime)),
            None => vh
                .routes
                .iter()
                .find(|r| r.matcher.matches(req, random, runtime)),
        };
        match found {
            Some(route) => act(vh, route, req, random, runtime),
            None => Selected::NoRoute,
        }
    }

    /// Header-mutation levels for `sel`, in evaluation order (later wins). No allocation: this
    /// runs twice per request.
    fn levels<'a>(
        &'a self,
        sel: &Selected<'a>,
        response: bool,
    ) -> impl Iterator<Item = &'a HeaderMutations> {
        let mut v: [Option<&HeaderMutations>; 4] = [None; 4];
        let mut n = 0;
        let mut push = |m: &'a HeaderMutations| {
            v[n] = Some(m);
            n += 1;
        };
        let side =
            |req: &'a HeaderMutations, resp: &'a HeaderMutations| if response { resp } else { req };
        if let Selected::Route {
            weighted: Some(w), ..
        } = sel
        {
            push(side(&w.request_headers, &w.response_headers));
        }
        if let Some(r) = sel.route() {
            push(side(&r.request_headers, &r.response_headers));
        }
        if let Some(vh) = sel.vhost() {
            if sel.route().is_some() {
                push(side(&vh.request_headers, &vh.response_headers));
            }
        }
        if sel.route().is_some() {
            push(side(&self.request_headers, &self.response_headers));
        }
        if self.most_specific_header_mutations_wins {
            v[..n].reverse();
        }
        v.into_iter().flatten()
    }

    /// Applies the selected forwarding route's header mutations, host rewrite and path rewrite
    /// to the request (Envoy's `finalizeRequestHeaders`). Non-forwarding selections are a no-op.
    pub fn finalize_request(
        &self,
        sel: &Selected<'_>,
        parts: &mut http::request::Parts,
        ctx: &FormatCtx<'_>,
    ) {
        let (Some(route), Some(entry)) = (sel.route(), sel.entry()) else {
            return;
        };
        for m in self.levels(sel, false) {
            m.apply(parts, ctx);
        }
        let mut new_host: Option<String> = None;
        if let Selected::Route {
            weighted: Some(w), ..
        } = sel
        {
            new_host = w.host_rewrite_literal.clone();
        }
        match &entry.host_rewrite {
            HostRewrite::Literal(h) => new_host = Some(h.clone()),
            // An untrusted header: only its first value is used, and only when non-empty.
            HostRewrite::Header(name) => {
                if let Some(v) = parts
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                {
                    if !v.is_empty() {
                        new_host = Some(v.to_string());
                    }
                }
            }
            HostRewrite::PathRegex(rw) => {
                let path = super::HeaderSource::header(parts, ":path").unwrap_or_default();
                new_host = Some(rw.replace_all(strip_query(&path)));
            }
            HostRewrite::None | HostRewrite::Auto => {}
        }
        if let Some(h) = new_host {
            let old = headers::authority_of(parts).unwrap_or("").to_string();
            if entry.append_x_forwarded_host && !old.is_empty() {
                append_xfh(parts, &old);
            }
            headers::set_authority(parts, &h);
        }
        if matches!(entry.path_rewrite, PathRewrite::None) {
            return;
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        if let Some(p) = rewrite_path(&path, &entry.path_rewrite, &route.matcher.path) {
            if ctx.insert_original_path {
                if let Ok(v) = http::HeaderValue::from_str(&path) {
                    parts.headers.insert("x-envoy-original-path", v);
                }
            }
            headers::set_path(parts, &p);
        }
    }

    /// Applies response header mutations for `sel` (weighted cluster, route, virtual host,
    /// route config; also for direct responses).
    pub fn finalize_response_headers(
        &self,
        sel: &Selected<'_>,
        parts: &mut http::response::Parts,
        ctx: &FormatCtx<'_>,
    ) {
        for m in self.levels(sel, true) {
            m.apply(parts, ctx);
        }
    }
}

fn append_xfh(parts: &mut http::request::Parts, host: &str) {
    let v = match parts
        .headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.is_empty() => format!("{prev},{host}"),
        _ => host.to_string(),
    };
    if let Ok(v) = http::HeaderValue::from_str(&v) {
        parts.headers.insert("x-forwarded-host", v);
    }
}

/// The rewritten path (query kept), or `None` when the route does not rewrite.
pub(crate) fn rewrite_path(path: &str, rw: &PathRewrite, m: &PathMatch) -> Option<String> {
    match rw {
        PathRewrite::None => None,
        PathRewrite::Prefix(p) => {
            let n = m.literal().map_or(strip_query(path).len(), str::len);
            Some(format!("{p}{}", path.get(n..).unwrap_or("")))
        }
        PathRewrite::Regex(r) => {
            let just = strip_query(path);
            Some(format!("{}{}", r.replace_all(just), &path[just.len()..]))
        }
    }
}

/// A local reply's head as Envoy sends it: `content-type: text/plain` and `content-length` when
/// the body is non-empty.
pub fn local_reply_head(status: u16, body: Option<&str>) -> http::response::Parts {
    let mut b = http::Response::builder().status(status);
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        b = b
            .header(http::header::CONTENT_TYPE, "text/plain")
            .header(http::header::CONTENT_LENGTH, body.len());
    }
    b.body(())
        .unwrap_or_else(|_| http::Response::new(()))
        .into_parts()
        .0
}

fn act<'t>(
    vh: &'t VirtualHost,
    route: &'t Route,
    req: &RequestView<'_>,
    random: u64,
    runtime: &dyn Runtime,
) -> Selected<'t> {
    match &route.action {
        Action::Forward(entry) => {
            let virtual_cluster = vh.virtual_cluster(req);
            let header_value = |h: &str| -> Option<String> {
                let v = if h.starts_with(':') {
                    super::HeaderSource::header(req, h).map(Cow::into_owned)
                } else {
                    req.headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                };
                v.filter(|v| !v.is_empty())
            };
            let mut weighted = None;
            let cluster: Option<Cow<'t, str>> = match &entry.cluster {
                ClusterSpecifier::Named(n) => Some(Cow::Borrowed(n.as_str())),
                ClusterSpecifier::Header(h) => header_value(h).map(Cow::Owned),
                ClusterSpecifier::Weighted(w) => w.pick(random, runtime, req).and_then(|i| {
                    let c = &w.clusters[i];
                    weighted = Some(c);
                    match &c.cluster_header {
                        Some(h) => header_value(h).map(Cow::Owned),
                        None => Some(Cow::Borrowed(c.name.as_str())),
                    }
                }),
            };
            match cluster {
                Some(cluster) => Selected::Route {
                    vhost: vh,
                    route,
                    entry,
                    cluster,
                    weighted,
                    virtual_cluster,
                },
                None => Selected::ClusterNotFound {
                    vhost: vh,
                    route,
                    entry,
                    status: entry.cluster_not_found_response_code,
                    virtual_cluster,
                },
            }
        }
        Action::Redirect(r) => {
            let rewritten = match &r.path {
                RedirectPath::Prefix(p) => rewrite_path(
                    req.path,
                    &PathRewrite::Prefix(p.clone()),
                    &route.matcher.path,
                ),
                RedirectPath::Regex(rw) => rewrite_path(
                    req.path,
                    &PathRewrite::Regex(rw.clone()),
                    &route.matcher.path,
                ),
                _ => None,
            };
            let path = rewritten.as_deref().unwrap_or(req.path);
            Selected::Redirect {
                vhost: vh,
                route: Some(route),
                location: action::new_uri(Some(r), req, path),
                status: r.status,
            }
        }
        Action::Direct(d) => Selected::Direct {
            vhost: vh,
            route,
            status: d.status,
            body: d.body.as_deref(),
        },
        Action::NonForwarding => Selected::NonForwarding { vhost: vh, route },
    }
}

impl VirtualHost {
    /// The matching virtual cluster's name: `Some("other")` when none matches, `None` when the
    /// host defines no virtual clusters.
    pub fn virtual_cluster(&self, req: &RequestView<'_>) -> Option<&str> {
        if self.virtual_clusters.is_empty() {
            return None;
        }
        Some(
            self.virtual_clusters
                .iter()
                .find(|vc| all_headers_match(&vc.headers, req))
                .map_or(OTHER_VIRTUAL_CLUSTER, |vc| vc.name.as_str()),
        )
    }
}

fn compile_vhost(vh: &rpb::VirtualHost) -> Result<VirtualHost, RouteError> {
    let err = |e: FieldError| RouteError::VirtualHost {
        vhost: vh.name.clone(),
        field: e.field,
        message: e.message,
    };
    if vh.name.is_empty() {
        return Err(err(FieldError::new("name", "must not be empty")));
    }
    if vh.domains.is_empty() {
        return Err(err(FieldError::new("domains", "must not be empty")));
    }
    if vh.matcher.is_some() {
        return Err(err(FieldError::new(
            "matcher",
            "matcher trees are not supported; use routes",
        )));
    }
    use rpb::virtual_host::TlsRequirementType as T;
    let require_tls = match T::try_from(vh.require_tls) {
        Ok(T::None) => TlsRequirement::None,
        Ok(T::ExternalOnly) => TlsRequirement::ExternalOnly,
        Ok(T::All) => TlsRequirement::All,
        Err(_) => {
            return Err(err(FieldError::new(
                "require_tls",
                format!("unknown value {}", vh.require_tls),
            )))
        }
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        routes.push(compile_route(r, vh).map_err(|e| RouteError::Route {
            vhost: vh.name.clone(),
            route: route_label(i, &r.name),
            field: e.field,
            message: e.message,
        })?);
    }
    let mut virtual_clusters = Vec::with_capacity(vh.virtual_clusters.len());
    for (i, vc) in vh.virtual_clusters.iter().enumerate() {
        let headers = vc
            .headers
            .iter()
            .enumerate()
            .map(|(j, h)| {
                HeaderMatcher::compile(h)
                    .map_err(|e| e.under(&format!("virtual_clusters[{i}].headers[{j}]")))
            })
            .collect::<Result<_, _>>()
            .map_err(err)?;
        if vc.name.is_empty() {
            return Err(err(FieldError::new(
                format!("virtual_clusters[{i}].name"),
                "must not be empty",
            )));
        }
        virtual_clusters.push(VirtualCluster {
            name: vc.name.clone(),
            headers,
        });
    }
    let retry_policy = vh
        .retry_policy
        .as_ref()
        .map(compile_retry)
        .transpose()
        .map_err(|e| err(e.under("retry_policy")))?;
    let index = RouteIndex::build(&routes);
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        require_tls,
        virtual_clusters,
        request_headers: HeaderMutations::compile(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
        )
        .map_err(|e| err(e.under("request_headers")))?,
        response_headers: HeaderMutations::compile(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
        )
        .map_err(|e| err(e.under("response_headers")))?,
        retry_policy: retry_policy.clone().map(Box::new),
        include_request_attempt_count: vh.include_request_attempt_count,
        include_attempt_count_in_response: vh.include_attempt_count_in_response,
        per_filter: PerFilter::compile(&vh.typed_per_filter_config).map_err(&err)?,
        cors: {
            #[allow(deprecated)]
            let legacy = &vh.cors;
            legacy
        }
        .as_ref()
        .map(|c| CorsPolicy::compile_legacy(c).map(Arc::new))
        .transpose()
        .map_err(|e| err(e.under("cors")))?,
        index,
        routes: routes
            .into_iter()
            .map(|mut r| {
                if let Action::Forward(e) = &mut r.action {
                    if e.retry_policy.is_none() {
                        e.retry_policy = retry_policy.clone();
                    }
                }
                r
            })
            .collect(),
    })
}

fn compile_route(r: &rpb::Route, _vh: &rpb::VirtualHost) -> Result<Route, FieldError> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| FieldError::new("match", "missing"))?;
    let matcher = RouteMatch::compile(m).map_err(|e| e.under("match"))?;
    use rpb::route::Action as A;
    let action = match &r.action {
        Some(A::Route(ra)) => {
            Action::Forward(action::compile_entry(ra).map_err(|e| e.under("route"))?)
        }
        Some(A::Redirect(rd)) => {
            Action::Redirect(action::compile_redirect(rd).map_err(|e| e.under("redirect"))?)
        }
        Some(A::DirectResponse(d)) => {
            Action::Direct(action::compile_direct(d).map_err(|e| e.under("direct_response"))?)
        }
        Some(A::NonForwardingAction(_)) => Action::NonForwarding,
        Some(A::FilterAction(_)) => return Err(FieldError::new("filter_action", "not supported")),
        None => {
            return Err(FieldError::new(
                "action",
                "one of route, redirect or direct_response is required",
            ))
        }
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        request_headers: HeaderMutations::compile(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
        )
        .map_err(|e| e.under("request_headers"))?,
        response_headers: HeaderMutations::compile(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )
        .map_err(|e| e.under("response_headers"))?,
        metadata: r.metadata.clone().map(Box::new),
        per_filter: PerFilter::compile(&r.typed_per_filter_config)?,
    })
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
