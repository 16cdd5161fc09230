//! The pure HTTP route engine: Envoy's `RouteConfiguration` compiled once into a [`RouteTable`]
//! (regexes compiled, domains indexed), then queried per request with [`RouteTable::select`].
//!
//! Selection follows Envoy: the virtual host by `:authority` (exact, `*.suffix`, `prefix*`, `*`),
//! then that host's routes in order, first match wins. The random value that drives weighted
//! clusters and `runtime_fraction` is passed in, so every decision is deterministic in tests.
//! Nothing here does I/O on the request path.
//!
//! Use on the data path (sketch):
//!
//! ```text
//! let table = RouteTable::from_proto(&route_configuration)?;       // once per RDS update
//! let view = RequestView { remote_addr, tls, ..RequestView::from_parts(&parts) };
//! match table.select(&view, random) {
//!     Selected::Route { cluster, entry, .. } => {
//!         table.finalize_request(&sel, &mut parts, &ctx);          // rewrites + headers
//!         /* forward to `cluster` with entry.timeout, entry.retry_policy, ... */
//!     }
//!     Selected::Redirect { location, status, .. } => /* 3xx with Location */,
//!     Selected::Direct { status, body, .. } => /* local reply */,
//!     Selected::ClusterNotFound { status, .. } => /* local reply `status` */,
//!     Selected::NonForwarding { .. } | Selected::NoRoute => /* filter decides / 404 */,
//! }
//! table.finalize_response_headers(&sel, &mut response_parts, &ctx);
//! ```
//!
//! Modules: `table` (compiled config, selection, finalization), `vhost` (domain and route
//! indexes), `matcher` (path/header/query/metadata matchers), `action` (forward, redirect, direct
//! response, weighted pick, retry/hash policy models), `headers` (header mutations and
//! `%FORMATTERS%`), `check` (Envoy's `router_check_tool`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;

pub mod action;
pub mod check;
pub mod headers;
pub mod matcher;
pub mod per_filter;
pub mod table;
pub mod vhost;

pub use action::{
    ClusterSpecifier, DirectAction, HashPolicy, HostRewrite, PathRewrite, RedirectAction,
    RetryBackOff, RetryPolicy, RouteEntry, WeightedCluster, WeightedClusters,
};
pub use headers::{FormatCtx, HeaderMutations};
pub use matcher::HeaderSource;
pub use table::{Action, Route, RouteTable, Selected, VirtualCluster, VirtualHost};

/// Error compiling a `RouteConfiguration`; every message names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("virtual host {vhost:?}, route {route}: {field}: {message}")]
    Route {
        vhost: String,
        /// `#index` or `#index (name)`.
        route: String,
        field: String,
        message: String,
    },
    #[error("virtual host {vhost:?}: {field}: {message}")]
    VirtualHost {
        vhost: String,
        field: String,
        message: String,
    },
    #[error("route configuration {name:?}: {field}: {message}")]
    Config {
        name: String,
        field: String,
        message: String,
    },
    #[error("domain {domain:?} appears in virtual hosts {first:?} and {second:?}; domains must be unique")]
    DuplicateDomain {
        domain: String,
        first: String,
        second: String,
    },
}

/// An error inside one resource, with the field path relative to it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path: `regex` under `match.safe_regex` → `match.safe_regex.regex`.
    pub(crate) fn under(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with(['[', '_']) {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Dynamic metadata: filter namespace → struct (the shape of `Metadata.filter_metadata`).
pub type DynamicMetadata = HashMap<String, envoy_types::pb::google::protobuf::Struct>;

/// Downstream TLS facts that `tls_context` route matches look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub peer_certificate_presented: bool,
    pub peer_certificate_validated: bool,
}

/// What route selection reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `:authority` (or `Host`), as received.
    pub authority: &'a str,
    /// `:path`, including any query string.
    pub path: &'a str,
    pub method: &'a str,
    /// Regular headers (pseudo-headers are the fields above).
    pub headers: &'a http::HeaderMap,
    /// `http` or `https`: the request's effective scheme (`x-forwarded-proto` in Envoy terms).
    pub scheme: &'a str,
    /// The request is internal (`x-envoy-internal: true`); `require_tls: EXTERNAL_ONLY` skips it.
    pub internal: bool,
    pub remote_addr: Option<SocketAddr>,
    /// `None` when the downstream connection is plaintext.
    pub tls: Option<TlsInfo>,
    pub dynamic_metadata: Option<&'a DynamicMetadata>,
}

impl<'a> RequestView<'a> {
    /// A view of a request head. The authority comes from the URI or else the `Host` header, the
    /// scheme from `x-forwarded-proto`, else the URI, else `http`; `internal` from
    /// `x-envoy-internal: true`.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        // `HeaderName` statics: a `&str` name would be parsed and hashed on every request.
        static X_FORWARDED_PROTO: http::HeaderName =
            http::HeaderName::from_static("x-forwarded-proto");
        static X_ENVOY_INTERNAL: http::HeaderName =
            http::HeaderName::from_static("x-envoy-internal");
        let scheme = parts
            .headers
            .get(&X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.scheme_str())
            .unwrap_or("http");
        let internal = parts
            .headers
            .get(&X_ENVOY_INTERNAL)
            .is_some_and(|v| v.as_bytes() == b"true");
        RequestView {
            authority,
            path,
            method: parts.method.as_str(),
            headers: &parts.headers,
            scheme,
            internal,
            remote_addr: None,
            tls: None,
            dynamic_metadata: None,
        }
    }

    pub fn is_https(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("https")
    }

    /// The path without query string or fragment.
    pub fn path_only(&self) -> &'a str {
        strip_query(self.path)
    }
}

impl HeaderSource for RequestView<'_> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            ":authority" => Some(Cow::Borrowed(self.authority)),
            ":path" => Some(Cow::Borrowed(self.path)),
            ":method" => Some(Cow::Borrowed(self.method)),
            ":scheme" => Some(Cow::Borrowed(self.scheme)),
            n if n.starts_with(':') => None,
            n => matcher::joined(self.headers, n),
        }
    }
}

/// `/a/b?x=1#f` → `/a/b`.
pub(crate) fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// Runtime values that route selection consults (`runtime_fraction`, weighted-cluster
/// `runtime_key_prefix`). The data path plugs in its runtime layer; tests plug in mocks.
pub trait Runtime: Send + Sync {
    /// Whether `key` is enabled for this `random` draw, given the configured default fraction.
    fn feature_enabled(&self, key: &str, default: Fraction, random: u64) -> bool;
    /// An integer runtime value, or `default` when unset.
    fn get_integer(&self, key: &str, default: u64) -> u64;
}

/// A fraction `numerator / denominator` (denominator 100, 10 000 or 1 000 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u64,
    pub denominator: u64,
}

impl Fraction {
    /// Envoy's evaluation: enabled when `random % denominator < numerator`.
    pub fn enabled(&self, random: u64) -> bool {
        self.denominator != 0 && random % self.denominator < self.numerator
    }
}

/// The runtime with no overrides: every key takes its configured default.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultRuntime;

impl Runtime for DefaultRuntime {
    fn feature_enabled(&self, _key: &str, default: Fraction, random: u64) -> bool {
        default.enabled(random)
    }
    fn get_integer(&self, _key: &str, default: u64) -> u64 {
        default
    }
}
