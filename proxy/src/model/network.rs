//! Network filters of a filter chain: the TCP proxy and the HTTP connection manager, with the
//! HTTP filters Sluice runs (router, fault, cors) and the telemetry-only ones it skips.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use crate::config::proto;

/// A protobuf Duration as a std Duration.
pub fn duration(d: &Option<PbDuration>) -> Option<Duration> {
    d.as_ref().map(|d| {
        Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64)
    })
}

/// Envoy filters that only produce telemetry (or Istio-specific metadata) and can be skipped
/// without changing where traffic goes. Each skip is logged once.
const TELEMETRY_ONLY: &[&str] = &[
    "istio.stats",
    "istio.metadata_exchange",
    "istio.alpn",
    "envoy.filters.network.metadata_exchange",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.network.connection_limit",
];

/// Filter-chain level network filter.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    Tcp(Arc<TcpProxy>),
    Http(Arc<HttpConnectionManager>),
}

/// `envoy.filters.network.tcp_proxy`.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    pub stat_prefix: String,
    /// `(cluster, weight)`; one entry with weight 1 for a plain `cluster`.
    pub clusters: Vec<(String, u32)>,
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
    pub access_logs: Vec<Arc<crate::access_log::AccessLog>>,
    /// `tcp.<stat_prefix>.*`, registered when the filter is built.
    pub stats: TcpStats,
}

/// `http.<stat_prefix>.*` counters of one connection manager.
#[derive(Debug)]
pub struct HcmStats {
    pub downstream_cx_total: Arc<crate::stats::Counter>,
    pub downstream_cx_active: Arc<crate::stats::Gauge>,
    pub downstream_cx_http1_total: Arc<crate::stats::Counter>,
    pub downstream_cx_http2_total: Arc<crate::stats::Counter>,
    pub downstream_cx_idle_timeout: Arc<crate::stats::Counter>,
    /// Requests the HTTP/1 codec rejected (400, 426, 431, 501), and HTTP/2 connections
    /// closed for a protocol error.
    pub downstream_cx_protocol_error: Arc<crate::stats::Counter>,
    /// Connections the client closed with a request in flight.
    pub downstream_cx_destroy_remote_active_rq: Arc<crate::stats::Counter>,
    /// HTTP/2 streams the client reset (or whose connection failed) before their response
    /// ended.
    pub downstream_rq_rx_reset: Arc<crate::stats::Counter>,
    /// Request heads not complete within `request_headers_timeout`.
    pub downstream_rq_header_timeout: Arc<crate::stats::Counter>,
    /// Streams ended by the stream idle timeout.
    pub downstream_rq_idle_timeout: Arc<crate::stats::Counter>,
    pub downstream_rq_total: Arc<crate::stats::Counter>,
    pub downstream_rq_active: Arc<crate::stats::Gauge>,
    pub rq_1xx: Arc<crate::stats::Counter>,
    pub rq_2xx: Arc<crate::stats::Counter>,
    pub rq_3xx: Arc<crate::stats::Counter>,
    pub rq_4xx: Arc<crate::stats::Counter>,
    pub rq_5xx: Arc<crate::stats::Counter>,
    pub no_route: Arc<crate::stats::Counter>,
    pub no_cluster: Arc<crate::stats::Counter>,
    pub rq_timeout: Arc<crate::stats::Counter>,
    pub fault_delays: Arc<crate::stats::Counter>,
    pub fault_aborts: Arc<crate::stats::Counter>,
    pub downstream_rq_max_duration_reached: Arc<crate::stats::Counter>,
    /// Envoy's `downstream_rq_time` (here: until the response head is ready).
    pub downstream_rq_time: Arc<crate::stats::Histogram>,
    pub cors: crate::http::cors::CorsStats,
}

impl HcmStats {
    pub fn new(prefix: &str) -> HcmStats {
        let r = crate::stats::registry();
        let c = |s: &str| r.counter(&format!("http.{prefix}.{s}"));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: r.gauge(&format!("http.{prefix}.downstream_cx_active")),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_destroy_remote_active_rq: c("downstream_cx_destroy_remote_active_rq"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: r.gauge(&format!("http.{prefix}.downstream_rq_active")),
            rq_1xx: c("downstream_rq_1xx"),
            rq_2xx: c("downstream_rq_2xx"),
            rq_3xx: c("downstream_rq_3xx"),
            rq_4xx: c("downstream_rq_4xx"),
            rq_5xx: c("downstream_rq_5xx"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_timeout: c("downstream_rq_timeout"),
            fault_delays: c("fault.delays_injected"),
            fault_aborts: c("fault.aborts_injected"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_time: r.histogram(&format!("http.{prefix}.downstream_rq_time")),
            cors: crate::http::cors::CorsStats {
                origin_valid: c("cors.origin_valid"),
                origin_invalid: c("cors.origin_invalid"),
            },
        }
    }

    pub fn status(&self, code: u16) {
        match code / 100 {
            1 => self.rq_1xx.inc(),
            2 => self.rq_2xx.inc(),
            3 => self.rq_3xx.inc(),
            4 => self.rq_4xx.inc(),
            _ => self.rq_5xx.inc(),
        }
    }
}

/// Envoy's `tcp.<stat_prefix>.*` counters.
#[derive(Debug, Clone)]
pub struct TcpStats {
    pub downstream_cx_total: Arc<crate::stats::Counter>,
    pub downstream_cx_no_route: Arc<crate::stats::Counter>,
    pub downstream_cx_rx_bytes_total: Arc<crate::stats::Counter>,
    pub downstream_cx_tx_bytes_total: Arc<crate::stats::Counter>,
}

impl TcpStats {
    fn new(prefix: &str) -> TcpStats {
        let c = |s: &str| crate::stats::registry().counter(&format!("tcp.{prefix}.{s}"));
        TcpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
        }
    }
}

/// Where the HTTP connection manager gets its routes.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// An inline `route_config`, compiled when the listener is built.
    Inline(Arc<crate::route::RouteTable>),
    Rds(String),
}

/// An HTTP filter Sluice runs.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// The fault filter: its configured name (the key for per-route overrides) and config.
    Fault(String, Arc<HttpFault>),
    /// The CORS filter: its configured name (the key for per-route policies).
    Cors(String),
    Router,
}

/// HTTP codec selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// `envoy.filters.network.http_connection_manager`.
#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub route: RouteSource,
    pub filters: Vec<HttpFilter>,
    pub server_name: String,
    /// `server_name` as a header value, built once (None if it is not a valid value).
    pub server_header: Option<http::HeaderValue>,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub stream_idle_timeout: Option<Duration>,
    /// `stream_idle_timeout` was configured (not Envoy's 5-minute default). The default
    /// bounds the wait for a response head only; a configured value also bounds response
    /// bodies that stall, which costs a timer per waiting body.
    pub stream_idle_timeout_set: bool,
    /// `common_http_protocol_options.idle_timeout`: a downstream connection with no request
    /// in flight for this long is closed (default 1 h, `0s` disables).
    pub idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    /// `request_headers_timeout`: a request head must be complete this long after its first
    /// byte (408 otherwise; default none).
    pub request_headers_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    /// `common_http_protocol_options.max_headers_count` (default 100): more is a 431.
    pub max_headers_count: u32,
    /// `http_protocol_options.accept_http_10`: HTTP/1.0 requests are served (else 426).
    pub accept_http_10: bool,
    /// `http_protocol_options.allow_absolute_url` (default true): an absolute-form request
    /// target (`GET http://host/path`) sets `Host` from its authority.
    pub allow_absolute_url: bool,
    /// `http_protocol_options.default_host_for_http_10`: the `Host` of HTTP/1.0 requests
    /// that have none.
    pub default_host_for_http_10: Option<String>,
    /// `http2_protocol_options`, for HTTP/2 downstream connections.
    pub http2: Http2Settings,
    pub upgrades: Vec<String>,
    pub via: String,
    pub path: crate::http::path::PathOptions,
    pub access_logs: Vec<Arc<crate::access_log::AccessLog>>,
    /// `http.<stat_prefix>.*`, registered when the filter is built.
    pub stats: Arc<HcmStats>,
}

/// A connection manager's `http2_protocol_options`: what the downstream HTTP/2 server
/// announces in its SETTINGS and window updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Envoy's default: 2^31 - 1 (no practical limit). Istio's gateways set 100.
    pub max_concurrent_streams: u32,
    /// Default 1 MiB, where Envoy's is 256 MiB: the `h2` crate holds what a client sends
    /// within the window until the request body is read on, so a large default would let
    /// one slow upstream make the proxy buffer that much per stream.
    pub initial_stream_window_size: u32,
    /// Default 1 MiB (Envoy: 256 MiB), as above.
    pub initial_connection_window_size: u32,
    /// `connection_keepalive`: PINGs to the client, the connection closed when a PONG is late.
    pub keepalive: Option<crate::model::cluster::H2Keepalive>,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: i32::MAX as u32,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 1 << 20,
            keepalive: None,
        }
    }
}

/// Reads `http2_protocol_options` with Envoy's bounds: a stream or connection window of
/// 65,535 to 2^31 - 1 bytes, 1 to 2^31 - 1 concurrent streams.
fn http2_settings(
    o: Option<&envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions>,
) -> Result<Http2Settings, (String, String)> {
    let mut s = Http2Settings::default();
    let Some(o) = o else { return Ok(s) };
    let field = |name: &str, v: Option<u32>, min: u32, out: &mut u32| match v {
        None => Ok(()),
        Some(v) if (min..=i32::MAX as u32).contains(&v) => {
            *out = v;
            Ok(())
        }
        Some(v) => Err((
            format!("http2_protocol_options.{name}"),
            format!("{v} is out of range: it must be from {min} to 2147483647"),
        )),
    };
    field(
        "max_concurrent_streams",
        o.max_concurrent_streams.as_ref().map(|v| v.value),
        1,
        &mut s.max_concurrent_streams,
    )?;
    field(
        "initial_stream_window_size",
        o.initial_stream_window_size.as_ref().map(|v| v.value),
        65_535,
        &mut s.initial_stream_window_size,
    )?;
    field(
        "initial_connection_window_size",
        o.initial_connection_window_size.as_ref().map(|v| v.value),
        65_535,
        &mut s.initial_connection_window_size,
    )?;
    s.keepalive = o
        .connection_keepalive
        .as_ref()
        .and_then(crate::model::cluster::keepalive);
    Ok(s)
}

fn tname(any: &prost_types::Any) -> &str {
    proto::any_type_name(&any.type_url)
}

/// Builds the network filter of a filter chain. `res` names the resource for errors, `path`
/// the chain's field path.
pub fn network_filter(
    res: &str,
    path: &str,
    filters: &[lpb::Filter],
) -> Result<NetworkFilter, super::ModelError> {
    let err = |field: String, reason: String| super::ModelError::new(res, &field, reason);
    let mut terminal = None;
    for (i, f) in filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        let any = match &f.config_type {
            Some(lpb::filter::ConfigType::TypedConfig(a)) => to_prost_any(a),
            Some(lpb::filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(err(
                    fpath + ".config_discovery",
                    "filter config discovery (ECDS) is not supported".into(),
                ))
            }
            None => {
                return Err(err(
                    fpath + ".typed_config",
                    format!("filter {} has no typed_config", f.name),
                ))
            }
        };
        match tname(&any) {
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
                let t: tcp::TcpProxy = decode(&any).map_err(|e| err(fpath.clone(), e))?;
                terminal = Some(NetworkFilter::Tcp(Arc::new(
                    tcp_proxy(&t).map_err(|(f, r)| err(format!("{fpath}.typed_config.{f}"), r))?,
                )));
            }
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
                let h: hcm::HttpConnectionManager =
                    decode(&any).map_err(|e| err(fpath.clone(), e))?;
                terminal = Some(NetworkFilter::Http(Arc::new(
                    http_connection_manager(&h)
                        .map_err(|(f, r)| err(format!("{fpath}.typed_config.{f}"), r))?,
                )));
            }
            t if TELEMETRY_ONLY.contains(&f.name.as_str()) || t.starts_with("istio.") => {
                skip_once(&f.name);
            }
            t => {
                return Err(err(
                    fpath,
                    format!("unsupported network filter {} ({t})", f.name),
                ))
            }
        }
    }
    terminal.ok_or_else(|| {
        err(
            format!("{path}.filters"),
            "no terminal filter (tcp_proxy or http_connection_manager)".into(),
        )
    })
}

fn skip_once(name: &str) {
    super::warn_once(name, "skipping telemetry-only filter");
}

/// envoy-types' `google.protobuf.Any` is its own struct; the proto helpers use prost-types'.
pub fn to_prost_any(a: &envoy_types::pb::google::protobuf::Any) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

fn decode<T: prost::Message + Default>(any: &prost_types::Any) -> Result<T, String> {
    T::decode(any.value.as_slice()).map_err(|e| format!("decoding {}: {e}", any.type_url))
}

fn tcp_proxy(t: &tcp::TcpProxy) -> Result<TcpProxy, (String, String)> {
    let clusters = match &t.cluster_specifier {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let v: Vec<_> = w
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight))
                .collect();
            if v.iter().map(|c| c.1 as u64).sum::<u64>() == 0 {
                return Err(("weighted_clusters".into(), "weights sum to zero".into()));
            }
            v
        }
        None => return Err(("cluster".into(), "no cluster specified".into())),
    };
    if t.tunneling_config.is_some() {
        return Err((
            "tunneling_config".into(),
            "TCP tunneling over HTTP is not supported".into(),
        ));
    }
    let access_logs = crate::access_log::AccessLog::from_protos(&t.access_log)?;
    Ok(TcpProxy {
        access_logs,
        stats: TcpStats::new(&t.stat_prefix),
        stat_prefix: t.stat_prefix.clone(),
        clusters,
        // Envoy's default idle timeout is 1 hour; an explicit 0 disables it.
        idle_timeout: match duration(&t.idle_timeout) {
            None => Some(Duration::from_secs(3600)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        },
        max_connect_attempts: t
            .max_connect_attempts
            .as_ref()
            .map(|v| v.value)
            .unwrap_or(1)
            .max(1),
    })
}

pub(crate) fn http_connection_manager(
    h: &hcm::HttpConnectionManager,
) -> Result<HttpConnectionManager, (String, String)> {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    let route = match &h.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(
            crate::route::RouteTable::from_proto(rc)
                .map_err(|e| ("route_config".to_string(), e.to_string()))?,
        )),
        Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds(rds.route_config_name.clone()),
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err((
                "scoped_routes".into(),
                "scoped routes are not supported".into(),
            ))
        }
        None => return Err(("route_config".into(), "no route specifier".into())),
    };
    let codec = match CodecType::try_from(h.codec_type).unwrap_or(CodecType::Auto) {
        CodecType::Http1 => Codec::Http1,
        CodecType::Http2 => Codec::Http2,
        CodecType::Http3 => return Err(("codec_type".into(), "HTTP/3 is not supported".into())),
        CodecType::Auto => Codec::Auto,
    };
    let mut filters = Vec::new();
    let mut has_router = false;
    for (i, f) in h.http_filters.iter().enumerate() {
        if f.disabled {
            continue;
        }
        let any = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => Some(to_prost_any(a)),
            _ => None,
        };
        let tn = any.as_ref().map(tname).unwrap_or("");
        match tn {
            "envoy.extensions.filters.http.router.v3.Router" => {
                has_router = true;
                filters.push(HttpFilter::Router);
            }
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => {
                let fault: HttpFault =
                    decode(any.as_ref().unwrap()).map_err(|e| (format!("http_filters[{i}]"), e))?;
                filters.push(HttpFilter::Fault(f.name.clone(), Arc::new(fault)));
            }
            crate::http::cors::FILTER_TYPE => filters.push(HttpFilter::Cors(f.name.clone())),
            _ if f.name == "envoy.filters.http.cors" && any.is_none() => {
                filters.push(HttpFilter::Cors(f.name.clone()))
            }
            _ if f.name == "envoy.filters.http.router" && any.is_none() => {
                has_router = true;
                filters.push(HttpFilter::Router);
            }
            _ if f.is_optional
                || TELEMETRY_ONLY.contains(&f.name.as_str())
                || TELEMETRY_ONLY.contains(&tn)
                || f.name.starts_with("istio.")
                || tn.starts_with("istio.") =>
            {
                skip_once(&f.name);
            }
            _ => {
                return Err((
                    format!("http_filters[{i}]"),
                    format!("unsupported HTTP filter {} ({tn})", f.name),
                ))
            }
        }
    }
    let server_name = if h.server_name.is_empty() {
        "envoy".to_string()
    } else {
        h.server_name.clone()
    };
    if !has_router {
        return Err((
            "http_filters".into(),
            "the last HTTP filter must be envoy.filters.http.router".into(),
        ));
    }
    let access_logs = crate::access_log::AccessLog::from_protos(&h.access_log)?;
    Ok(HttpConnectionManager {
        access_logs,
        stats: Arc::new(HcmStats::new(&h.stat_prefix)),
        stat_prefix: h.stat_prefix.clone(),
        codec,
        route,
        filters,
        server_name: server_name.clone(),
        server_header: http::HeaderValue::from_str(&server_name).ok(),
        use_remote_address: h.use_remote_address.as_ref().is_some_and(|v| v.value),
        xff_num_trusted_hops: h.xff_num_trusted_hops,
        skip_xff_append: h.skip_xff_append,
        generate_request_id: h.generate_request_id.as_ref().is_none_or(|v| v.value),
        preserve_external_request_id: h.preserve_external_request_id,
        always_set_request_id_in_response: h.always_set_request_id_in_response,
        stream_idle_timeout_set: h.stream_idle_timeout.is_some(),
        stream_idle_timeout: match duration(&h.stream_idle_timeout) {
            None => Some(Duration::from_secs(300)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        },
        idle_timeout: match duration(
            &h.common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout),
        ) {
            None => Some(Duration::from_secs(3600)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        },
        request_timeout: duration(&h.request_timeout).filter(|d| !d.is_zero()),
        request_headers_timeout: duration(&h.request_headers_timeout).filter(|d| !d.is_zero()),
        max_request_headers_kb: h
            .max_request_headers_kb
            .as_ref()
            .map(|v| v.value)
            .unwrap_or(60),
        max_headers_count: h
            .common_http_protocol_options
            .as_ref()
            .and_then(|o| o.max_headers_count.as_ref())
            .map(|v| v.value)
            .unwrap_or(100),
        accept_http_10: h
            .http_protocol_options
            .as_ref()
            .is_some_and(|o| o.accept_http_10),
        allow_absolute_url: h
            .http_protocol_options
            .as_ref()
            .and_then(|o| o.allow_absolute_url.as_ref())
            .is_none_or(|v| v.value),
        default_host_for_http_10: h
            .http_protocol_options
            .as_ref()
            .map(|o| o.default_host_for_http_10.clone())
            .filter(|d| !d.is_empty()),
        http2: http2_settings(h.http2_protocol_options.as_ref())?,
        upgrades: h
            .upgrade_configs
            .iter()
            .filter(|u| u.enabled.as_ref().is_none_or(|v| v.value))
            .map(|u| u.upgrade_type.to_ascii_lowercase())
            .collect(),
        via: h.via.clone(),
        path: crate::http::path::PathOptions {
            normalize: h.normalize_path.as_ref().is_some_and(|v| v.value),
            merge_slashes: h.merge_slashes,
            escaped_slashes: match h.path_with_escaped_slashes_action {
                2 => crate::http::path::EscapedSlashes::Reject,
                3 | 4 => crate::http::path::EscapedSlashes::Unescape,
                _ => crate::http::path::EscapedSlashes::Keep,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm(extra: &str) -> Result<HttpConnectionManager, (String, String)> {
        use crate::config::proto::{decode, Format};
        let h: hcm::HttpConnectionManager = decode(
            &format!("stat_prefix: t\nrds: {{route_config_name: r}}\n{extra}http_filters: [{{name: envoy.filters.http.router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"),
            Format::Yaml,
        )
        .unwrap();
        http_connection_manager(&h)
    }

    #[test]
    fn http2_protocol_options_are_read_and_bounded_as_envoy_bounds_them() {
        assert_eq!(hcm("").unwrap().http2, Http2Settings::default());
        let s = hcm("http2_protocol_options: {max_concurrent_streams: 100, initial_stream_window_size: 65535}\n")
            .unwrap()
            .http2;
        assert_eq!(s.max_concurrent_streams, 100);
        assert_eq!(s.initial_stream_window_size, 65_535);
        assert_eq!(s.initial_connection_window_size, 1 << 20);
        for (field, bad) in [
            ("max_concurrent_streams", 0u64),
            ("initial_stream_window_size", 65_534),
            ("initial_connection_window_size", 2_147_483_648),
        ] {
            let (path, msg) =
                hcm(&format!("http2_protocol_options: {{{field}: {bad}}}\n")).unwrap_err();
            assert_eq!(path, format!("http2_protocol_options.{field}"));
            assert!(msg.contains(&bad.to_string()), "{msg}");
        }
    }
}
