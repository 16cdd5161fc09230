//! What a matched route does: forward to a cluster ([`RouteEntry`]: named, from a header, or a
//! weighted pick; rewrites; timeouts; retry and hash policies), redirect ([`RedirectAction`],
//! building the `Location` URI as Envoy's `newUri`), or answer directly ([`DirectAction`]).

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as rpb;

use super::headers::HeaderMutations;
use super::matcher::RegexRewrite;
use super::{FieldError, RequestView, Runtime};

/// Envoy's route timeout when none is configured.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Which cluster a forwarding route sends to.
#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    Named(String),
    /// The first value of this request header (lower-case name).
    Header(String),
    Weighted(WeightedClusters),
}

/// `weighted_clusters`: pick `random % total` over `[0,w1)`, `[w1,w1+w2)`, ….
#[derive(Debug, Clone)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    /// Deprecated `total_weight`, when configured (the sum of weights must equal it).
    pub total_weight: Option<u64>,
    /// Weights are read from runtime key `<prefix>.<cluster>` when set.
    pub runtime_key_prefix: Option<String>,
    /// Take the random value from this request header instead (lower-case name).
    pub header_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WeightedCluster {
    /// Empty when `cluster_header` is used.
    pub name: String,
    pub cluster_header: Option<String>,
    pub weight: u64,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite_literal: Option<String>,
    /// CORS policies in `typed_per_filter_config`, compiled.
    pub per_filter: crate::route::per_filter::PerFilter,
}

impl WeightedClusters {
    /// Picks the cluster for `random` (Envoy's `pickWeightedCluster`).
    pub fn pick(&self, random: u64, runtime: &dyn Runtime, req: &RequestView<'_>) -> Option<usize> {
        let random = match &self.header_name {
            // Only a single-valued header counts; anything else falls back to `random`.
            Some(h) => {
                let mut values = req.headers.get_all(h.as_str()).iter();
                match (values.next(), values.next()) {
                    (Some(v), None) => v
                        .to_str()
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(random),
                    _ => random,
                }
            }
            None => random,
        };
        let weight = |c: &WeightedCluster| match &self.runtime_key_prefix {
            Some(p) => runtime.get_integer(&format!("{p}.{}", c.name), c.weight),
            None => c.weight,
        };
        let total: u64 = match (self.total_weight, &self.runtime_key_prefix) {
            (Some(t), None) => t,
            _ => self.clusters.iter().map(weight).sum(),
        };
        if total == 0 {
            return None;
        }
        let selected = random % total;
        let mut begin = 0u64;
        for (i, c) in self.clusters.iter().enumerate() {
            let end = begin + weight(c);
            if selected >= begin && selected < end {
                return Some(i);
            }
            begin = end;
        }
        None
    }
}

/// Path rewrite applied when forwarding (or before building a redirect).
#[derive(Debug, Clone, Default)]
pub enum PathRewrite {
    #[default]
    None,
    /// Replace the matched prefix/path (or, for regex routes, the whole path) with this.
    Prefix(String),
    /// Replace every match in the path (query kept).
    Regex(RegexRewrite),
}

/// Host (`:authority`) rewrite when forwarding.
#[derive(Debug, Clone, Default)]
pub enum HostRewrite {
    #[default]
    None,
    Literal(String),
    /// Take the value of this request header (lower-case) when present and non-empty.
    Header(String),
    /// Substitute over the request path (without query).
    PathRegex(RegexRewrite),
    /// `auto_host_rewrite`: the data path sets the upstream host's hostname.
    Auto,
}

/// A forwarding route's parameters.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub cluster: ClusterSpecifier,
    /// Status when the cluster does not exist (default 503).
    pub cluster_not_found_response_code: u16,
    pub path_rewrite: PathRewrite,
    pub host_rewrite: HostRewrite,
    pub append_x_forwarded_host: bool,
    /// Upstream timeout; `Duration::ZERO` disables it. Defaults to 15s.
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// The route's retry policy, else the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    pub hash_policy: Vec<HashPolicy>,
    pub priority_high: bool,
    /// `upgrade_configs`: upgrade type (lower-case, e.g. `websocket`, `connect`) → enabled.
    pub upgrades: Vec<(String, bool)>,
    pub request_mirrors: Vec<RequestMirror>,
    pub max_stream_duration: Option<StreamDuration>,
    /// Deprecated `max_grpc_timeout` (Istio still sets it): gRPC requests take their timeout
    /// from `grpc-timeout`, capped by this value unless it is zero.
    pub max_grpc_timeout: Option<Duration>,
    /// Deprecated `grpc_timeout_offset`, subtracted from `grpc-timeout`.
    pub grpc_timeout_offset: Option<Duration>,
    /// The legacy `cors` field, compiled.
    pub cors: Option<std::sync::Arc<crate::http::cors::CorsPolicy>>,
}

/// One `request_mirror_policies` entry: shadow a `fraction` of requests to `cluster`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMirror {
    pub cluster: String,
    /// Take the cluster from this request header instead (lower-case).
    pub cluster_header: Option<String>,
    /// `(runtime key, default fraction)`; `None` mirrors every request.
    pub fraction: Option<(String, super::Fraction)>,
    pub trace_sampled: Option<bool>,
}

/// `max_stream_duration` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDuration {
    pub max_stream_duration: Option<Duration>,
    pub grpc_timeout_header_max: Option<Duration>,
    pub grpc_timeout_header_offset: Option<Duration>,
}

pub(crate) fn fraction(
    f: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>,
) -> Result<super::Fraction, FieldError> {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let f = f.copied().unwrap_or_default();
    let denominator = match D::try_from(f.denominator) {
        Ok(D::Hundred) => 100,
        Ok(D::TenThousand) => 10_000,
        Ok(D::Million) => 1_000_000,
        Err(_) => return Err(FieldError::new("denominator", "unknown value")),
    };
    Ok(super::Fraction {
        numerator: u64::from(f.numerator),
        denominator,
    })
}

/// Retry policy (`envoy.config.route.v3.RetryPolicy`) as plain values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicy {
    /// `retry_on` conditions, e.g. `5xx`, `connect-failure`, `retriable-status-codes`.
    pub retry_on: Vec<String>,
    /// Default 1.
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    pub back_off: Option<RetryBackOff>,
    pub retriable_status_codes: Vec<u32>,
    /// `envoy.retry_host_predicates.previous_hosts` is configured.
    pub previous_hosts_predicate: bool,
    /// Every host predicate name, in order.
    pub host_predicates: Vec<String>,
    pub host_selection_retry_max_attempts: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackOff {
    pub base_interval: Duration,
    /// Default 10 × base.
    pub max_interval: Duration,
}

/// One `hash_policy` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum HashPolicy {
    Header {
        name: String,
        terminal: bool,
    },
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
        terminal: bool,
    },
    SourceIp {
        terminal: bool,
    },
    QueryParameter {
        name: String,
        terminal: bool,
    },
    FilterState {
        key: String,
        terminal: bool,
    },
}

/// A redirect route's parameters.
#[derive(Debug, Clone)]
pub struct RedirectAction {
    /// `https_redirect` gives `https`; `scheme_redirect` its value.
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: RedirectPath,
    pub strip_query: bool,
    pub status: u16,
}

#[derive(Debug, Clone, Default)]
pub enum RedirectPath {
    #[default]
    Keep,
    /// Replace the path; the request's query is kept unless this has its own.
    Path(String),
    /// Rewrite the matched prefix (like a forwarding prefix rewrite).
    Prefix(String),
    Regex(RegexRewrite),
}

/// A direct-response route.
#[derive(Debug, Clone)]
pub struct DirectAction {
    pub status: u16,
    pub body: Option<String>,
}

pub(crate) fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

pub(crate) fn compile_retry(p: &rpb::RetryPolicy) -> Result<RetryPolicy, FieldError> {
    let back_off = match &p.retry_back_off {
        None => None,
        Some(b) => {
            let base = b
                .base_interval
                .as_ref()
                .map(duration)
                .ok_or_else(|| FieldError::new("retry_back_off.base_interval", "missing"))?;
            if base.is_zero() {
                return Err(FieldError::new(
                    "retry_back_off.base_interval",
                    "must be > 0",
                ));
            }
            let max = b.max_interval.as_ref().map(duration).unwrap_or(base * 10);
            if max < base {
                return Err(FieldError::new(
                    "retry_back_off.max_interval",
                    "must be >= base_interval",
                ));
            }
            Some(RetryBackOff {
                base_interval: base,
                max_interval: max,
            })
        }
    };
    let host_predicates: Vec<String> = p
        .retry_host_predicate
        .iter()
        .map(|h| h.name.clone())
        .collect();
    Ok(RetryPolicy {
        retry_on: p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        num_retries: p.num_retries.map_or(1, |n| n.value),
        per_try_timeout: p.per_try_timeout.as_ref().map(duration),
        per_try_idle_timeout: p.per_try_idle_timeout.as_ref().map(duration),
        back_off,
        retriable_status_codes: p.retriable_status_codes.clone(),
        previous_hosts_predicate: host_predicates
            .iter()
            .any(|n| n == "envoy.retry_host_predicates.previous_hosts"),
        host_predicates,
        host_selection_retry_max_attempts: p.host_selection_retry_max_attempts,
    })
}

pub(crate) fn compile_hash(h: &rpb::route_action::HashPolicy) -> Result<HashPolicy, FieldError> {
    use rpb::route_action::hash_policy::PolicySpecifier as P;
    let terminal = h.terminal;
    Ok(match &h.policy_specifier {
        Some(P::Header(x)) => HashPolicy::Header {
            name: x.header_name.to_ascii_lowercase(),
            terminal,
        },
        Some(P::Cookie(c)) => HashPolicy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.as_ref().map(duration),
            path: c.path.clone(),
            terminal,
        },
        Some(P::ConnectionProperties(c)) if c.source_ip => HashPolicy::SourceIp { terminal },
        Some(P::ConnectionProperties(_)) => {
            return Err(FieldError::new(
                "connection_properties.source_ip",
                "must be true",
            ))
        }
        Some(P::QueryParameter(q)) => HashPolicy::QueryParameter {
            name: q.name.clone(),
            terminal,
        },
        Some(P::FilterState(f)) => HashPolicy::FilterState {
            key: f.key.clone(),
            terminal,
        },
        None => return Err(FieldError::new("policy_specifier", "no policy set")),
    })
}

pub(crate) fn compile_weighted(w: &rpb::WeightedCluster) -> Result<WeightedClusters, FieldError> {
    use rpb::weighted_cluster::RandomValueSpecifier as R;
    if w.clusters.is_empty() {
        return Err(FieldError::new("clusters", "must not be empty"));
    }
    let mut clusters = Vec::with_capacity(w.clusters.len());
    for (i, c) in w.clusters.iter().enumerate() {
        let at = |f: &str| format!("clusters[{i}].{f}");
        if c.name.is_empty() && c.cluster_header.is_empty() {
            return Err(FieldError::new(
                at("name"),
                "name or cluster_header is required",
            ));
        }
        let request_headers =
            HeaderMutations::compile(&c.request_headers_to_add, &c.request_headers_to_remove)
                .map_err(|e| e.under(&at("request_headers")))?;
        let response_headers =
            HeaderMutations::compile(&c.response_headers_to_add, &c.response_headers_to_remove)
                .map_err(|e| e.under(&at("response_headers")))?;
        clusters.push(WeightedCluster {
            name: c.name.clone(),
            cluster_header: (!c.cluster_header.is_empty())
                .then(|| c.cluster_header.to_ascii_lowercase()),
            weight: u64::from(c.weight.map_or(0, |w| w.value)),
            request_headers,
            response_headers,
            host_rewrite_literal: c.host_rewrite_specifier.as_ref().map(|h| match h {
                rpb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                    s,
                ) => s.clone(),
            }),
            per_filter: crate::route::per_filter::PerFilter::compile(&c.typed_per_filter_config)
                .map_err(|e| e.under(&format!("clusters[{i}]")))?,
        });
    }
    let sum: u64 = clusters.iter().map(|c| c.weight).sum();
    #[allow(deprecated)]
    let total_weight = w
        .total_weight
        .map(|t| u64::from(t.value))
        .filter(|t| *t > 0);
    if let Some(t) = total_weight {
        if t != sum {
            return Err(FieldError::new(
                "total_weight",
                format!("sum of weights {sum} must equal total_weight {t}"),
            ));
        }
    }
    if sum == 0 {
        return Err(FieldError::new(
            "clusters",
            "sum of weights must be greater than 0",
        ));
    }
    let header_name = match &w.random_value_specifier {
        Some(R::HeaderName(h)) => Some(h.to_ascii_lowercase()),
        // The hash-policy-derived value is computed by the data path; the random value stands in.
        Some(R::UseHashPolicy(_)) | None => None,
    };
    Ok(WeightedClusters {
        clusters,
        total_weight,
        runtime_key_prefix: (!w.runtime_key_prefix.is_empty())
            .then(|| w.runtime_key_prefix.clone()),
        header_name,
    })
}

pub(crate) fn compile_entry(ra: &rpb::RouteAction) -> Result<RouteEntry, FieldError> {
    use rpb::route_action::ClusterSpecifier as C;
    use rpb::route_action::HostRewriteSpecifier as H;
    let cluster = match &ra.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterSpecifier::Named(c.clone()),
        Some(C::Cluster(_)) => return Err(FieldError::new("cluster", "must not be empty")),
        Some(C::ClusterHeader(h)) if !h.is_empty() => {
            ClusterSpecifier::Header(h.to_ascii_lowercase())
        }
        Some(C::ClusterHeader(_)) => {
            return Err(FieldError::new("cluster_header", "must not be empty"))
        }
        Some(C::WeightedClusters(w)) => ClusterSpecifier::Weighted(
            compile_weighted(w).map_err(|e| e.under("weighted_clusters"))?,
        ),
        Some(C::ClusterSpecifierPlugin(_) | C::InlineClusterSpecifierPlugin(_)) => {
            return Err(FieldError::new("cluster_specifier_plugin", "not supported"))
        }
        None => {
            return Err(FieldError::new(
                "cluster_specifier",
                "one of cluster, cluster_header or weighted_clusters is required",
            ))
        }
    };
    use rpb::route_action::ClusterNotFoundResponseCode as N;
    let cluster_not_found_response_code = match N::try_from(ra.cluster_not_found_response_code) {
        Ok(N::ServiceUnavailable) => 503,
        Ok(N::NotFound) => 404,
        Ok(N::InternalServerError) => 500,
        Err(_) => {
            return Err(FieldError::new(
                "cluster_not_found_response_code",
                "unknown value",
            ))
        }
    };
    let rewrites = [
        !ra.prefix_rewrite.is_empty(),
        ra.regex_rewrite.is_some(),
        !ra.path_rewrite.is_empty(),
    ];
    if rewrites.iter().filter(|x| **x).count() > 1 {
        return Err(FieldError::new(
            "prefix_rewrite",
            "only one of prefix_rewrite, regex_rewrite and path_rewrite may be set",
        ));
    }
    if ra.path_rewrite_policy.is_some() || !ra.path_rewrite.is_empty() {
        return Err(FieldError::new(
            "path_rewrite_policy",
            "URI template rewrites are not supported",
        ));
    }
    let path_rewrite = if !ra.prefix_rewrite.is_empty() {
        PathRewrite::Prefix(ra.prefix_rewrite.clone())
    } else if let Some(r) = &ra.regex_rewrite {
        PathRewrite::Regex(RegexRewrite::compile(r).map_err(|e| e.under("regex_rewrite"))?)
    } else {
        PathRewrite::None
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        None => HostRewrite::None,
        #[allow(deprecated)]
        Some(H::HostRewriteLiteral(h) | H::HostRewrite(h)) => HostRewrite::Literal(h.clone()),
        Some(H::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
        Some(H::AutoHostRewrite(_)) => HostRewrite::None,
        Some(H::HostRewriteHeader(h)) => HostRewrite::Header(h.to_ascii_lowercase()),
        Some(H::HostRewritePathRegex(r)) => HostRewrite::PathRegex(
            RegexRewrite::compile(r).map_err(|e| e.under("host_rewrite_path_regex"))?,
        ),
    };
    let retry_policy = ra
        .retry_policy
        .as_ref()
        .map(compile_retry)
        .transpose()
        .map_err(|e| e.under("retry_policy"))?;
    let hash_policy = ra
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| compile_hash(h).map_err(|e| e.under(&format!("hash_policy[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(RouteEntry {
        cluster,
        cluster_not_found_response_code,
        path_rewrite,
        host_rewrite,
        append_x_forwarded_host: ra.append_x_forwarded_host,
        timeout: ra.timeout.as_ref().map_or(DEFAULT_ROUTE_TIMEOUT, duration),
        idle_timeout: ra.idle_timeout.as_ref().map(duration),
        retry_policy,
        hash_policy,
        priority_high: ra.priority == 1,
        upgrades: ra
            .upgrade_configs
            .iter()
            .map(|u| {
                (
                    u.upgrade_type.to_ascii_lowercase(),
                    u.enabled.is_none_or(|b| b.value),
                )
            })
            .collect(),
        request_mirrors: ra
            .request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let fraction = match &m.runtime_fraction {
                    None => None,
                    Some(rf) => Some((
                        rf.runtime_key.clone(),
                        fraction(rf.default_value.as_ref()).map_err(|e| {
                            e.under(&format!(
                                "request_mirror_policies[{i}].runtime_fraction.default_value"
                            ))
                        })?,
                    )),
                };
                Ok(RequestMirror {
                    cluster: m.cluster.clone(),
                    cluster_header: (!m.cluster_header.is_empty())
                        .then(|| m.cluster_header.to_ascii_lowercase()),
                    fraction,
                    trace_sampled: m.trace_sampled.map(|b| b.value),
                })
            })
            .collect::<Result<_, FieldError>>()?,
        max_stream_duration: ra.max_stream_duration.as_ref().map(|m| StreamDuration {
            max_stream_duration: m.max_stream_duration.as_ref().map(duration),
            grpc_timeout_header_max: m.grpc_timeout_header_max.as_ref().map(duration),
            grpc_timeout_header_offset: m.grpc_timeout_header_offset.as_ref().map(duration),
        }),
        #[allow(deprecated)]
        max_grpc_timeout: ra.max_grpc_timeout.as_ref().map(duration),
        #[allow(deprecated)]
        grpc_timeout_offset: ra.grpc_timeout_offset.as_ref().map(duration),
        cors: {
            #[allow(deprecated)]
            let legacy = &ra.cors;
            legacy
        }
        .as_ref()
        .map(|c| crate::http::cors::CorsPolicy::compile_legacy(c).map(std::sync::Arc::new))
        .transpose()
        .map_err(|e| e.under("cors"))?,
    })
}

pub(crate) fn compile_redirect(r: &rpb::RedirectAction) -> Result<RedirectAction, FieldError> {
    use rpb::redirect_action::PathRewriteSpecifier as P;
    use rpb::redirect_action::RedirectResponseCode as R;
    use rpb::redirect_action::SchemeRewriteSpecifier as S;
    let status = match R::try_from(r.response_code) {
        Ok(R::MovedPermanently) => 301,
        Ok(R::Found) => 302,
        Ok(R::SeeOther) => 303,
        Ok(R::TemporaryRedirect) => 307,
        Ok(R::PermanentRedirect) => 308,
        Err(_) => {
            return Err(FieldError::new(
                "response_code",
                format!("unknown value {}", r.response_code),
            ))
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path = match &r.path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(P::PathRedirect(p)) => RedirectPath::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::Prefix(p.clone()),
        Some(P::RegexRewrite(rw)) => {
            RedirectPath::Regex(RegexRewrite::compile(rw).map_err(|e| e.under("regex_rewrite"))?)
        }
        Some(P::PathRewrite(_)) => {
            return Err(FieldError::new(
                "path_rewrite",
                "URI template rewrites are not supported",
            ))
        }
    };
    Ok(RedirectAction {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port: (r.port_redirect != 0).then_some(r.port_redirect),
        path,
        strip_query: r.strip_query,
        status,
    })
}

pub(crate) fn compile_direct(d: &rpb::DirectResponseAction) -> Result<DirectAction, FieldError> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as D;
    if !(200..=599).contains(&d.status) {
        return Err(FieldError::new(
            "status",
            format!("{} is not in [200, 600)", d.status),
        ));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(D::InlineString(s)) => Some(s.clone()),
        Some(D::InlineBytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        // Read once at load, as Envoy does.
        Some(D::Filename(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| FieldError::new("body.filename", format!("{f}: {e}")))?,
        ),
        Some(D::EnvironmentVariable(v)) => Some(std::env::var(v).map_err(|_| {
            FieldError::new("body.environment_variable", format!("{v} is not set"))
        })?),
    };
    Ok(DirectAction {
        status: d.status as u16,
        body,
    })
}

/// Envoy's `Http::Utility::newUri`: the redirect target for `req` under `redirect` (`None` for
/// direct responses, which report the request's own URI).
pub fn new_uri(redirect: Option<&RedirectAction>, req: &RequestView<'_>, path: &str) -> String {
    let scheme: &str = match redirect.and_then(|r| r.scheme.as_deref()) {
        Some(s) => s,
        None => req.scheme,
    };
    let port = redirect.and_then(|r| r.port).map(|p| format!(":{p}"));
    let host: String = match redirect.and_then(|r| r.host.as_deref()) {
        Some(h) => match &port {
            // A port given separately replaces any port in the host.
            Some(_) => strip_port(h).to_string(),
            None => h.to_string(),
        },
        None => request_host(req, scheme, port.is_some()).to_string(),
    };
    let mut final_path = match redirect.map(|r| &r.path) {
        Some(RedirectPath::Path(p)) if !p.contains('?') => match path.find('?') {
            Some(q) => format!("{p}{}", &path[q..]),
            None => p.clone(),
        },
        Some(RedirectPath::Path(p)) => p.clone(),
        _ => path.to_string(),
    };
    if !final_path.starts_with('/') {
        final_path.insert(0, '/');
    }
    let path_has_own_query =
        matches!(redirect.map(|r| &r.path), Some(RedirectPath::Path(p)) if p.contains('?'));
    if redirect.is_some_and(|r| r.strip_query) && !path_has_own_query {
        if let Some(q) = final_path.find('?') {
            final_path.truncate(q);
        }
    }
    format!(
        "{scheme}://{host}{}{final_path}",
        port.as_deref().unwrap_or("")
    )
}

/// Envoy's `processRequestHost`: drop the request's port when a new port is set, or when the
/// scheme changes and the port was the old scheme's default.
fn request_host<'a>(req: &RequestView<'a>, new_scheme: &str, new_port: bool) -> &'a str {
    let host = req.authority;
    let Some(i) = port_start(host) else {
        return host;
    };
    let port = &host[i..];
    let mut remove = new_port;
    if !new_scheme.eq_ignore_ascii_case(req.scheme) {
        remove |= req.is_https() && port == ":443";
        remove |= req.scheme.eq_ignore_ascii_case("http") && port == ":80";
    }
    if remove {
        &host[..i]
    } else {
        host
    }
}

/// Index of the `:` before a port in `host` (IPv6 literals in brackets handled).
pub fn port_start(host: &str) -> Option<usize> {
    let colon = host.rfind(':')?;
    match host.rfind(']') {
        Some(v6_end) if v6_end > colon => None,
        _ => Some(colon),
    }
}

/// `host:port` → `host`.
pub fn strip_port(host: &str) -> &str {
    match port_start(host) {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
#[path = "action_tests.rs"]
mod tests;
