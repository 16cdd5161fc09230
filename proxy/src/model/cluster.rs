//! Clusters and their endpoints, validated: discovery type, load-balancing policy, protocol,
//! timeouts, and endpoints with weight, locality, health and metadata (for subsets).
//! Envoy's deprecated cluster fields are still honoured, as Envoy does.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::Message;

use super::network::duration;
use super::{socket_address, ModelError};

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    Eds,
    OriginalDst,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choices: u32 },
    Random,
    RingHash { min_size: u64, max_size: u64 },
    Maglev { table_size: u64 },
}

/// Upstream HTTP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// h2c (prior knowledge) to the upstream.
    Http2,
    /// Same protocol as downstream.
    UseDownstream,
}

/// HTTP/2 keep-alive PINGs on upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Envoy's `TcpKeepalive`: `SO_KEEPALIVE` with these settings (seconds; unset ones keep the
/// system's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<u32>,
    pub interval: Option<u32>,
}

/// A cluster, validated.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub eds_service_name: String,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub dns_refresh: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    /// Circuit breaker `max_connections` (default priority), Envoy's default 1024.
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Static endpoints (STATIC, DNS hostnames, or inline EDS load_assignment).
    pub load_assignment: Option<Endpoints>,
    /// `upstream_bind_config.source_address`: the local address upstream connections bind.
    pub upstream_bind: Option<std::net::IpAddr>,
    /// `upstream_connection_options.tcp_keepalive`: TCP keepalive on upstream sockets.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `http2_protocol_options.connection_keepalive`.
    pub h2_keepalive: Option<H2Keepalive>,
    /// `outlier_detection`, when configured.
    pub outlier: Option<Arc<crate::cluster::outlier::OutlierConfig>>,
    /// `common_lb_config.healthy_panic_threshold` in percent (Envoy's default 50): below it,
    /// load balancing ignores host health.
    pub panic_threshold: f64,
    /// The resource as received, protobuf-encoded: `/config_dump` decodes it on demand
    /// ([`Cluster::proto`]), so the data path does not carry the 3 KB proto struct.
    proto: Box<[u8]>,
}

/// A cluster's endpoints, across localities and priorities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoints {
    pub endpoints: Vec<EndpointSpec>,
    /// `policy.overprovisioning_factor` (percent; Envoy's default 140 when unset).
    pub overprovisioning: Option<u32>,
}

/// Flattened endpoint metadata (`namespace.key` → value), sorted by key: a boxed slice, as
/// most endpoints carry one or two entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(m: BTreeMap<String, String>) -> Labels {
        Labels(m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// Where an endpoint is: an IP address, or a hostname to resolve (DNS clusters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Ip(SocketAddr),
    Dns(String, u16),
}

/// One endpoint as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    pub target: Target,
    pub weight: u32,
    pub priority: u32,
    pub healthy: bool,
    /// `region/zone/sub_zone`, shared by the endpoints of one locality and their hosts.
    pub locality: Arc<str>,
    /// Flattened `filter_metadata` string values, `namespace.key` → value, used for subsets
    /// (`envoy.lb.version` → `v1`) and Istio labels.
    pub metadata: Labels,
    /// The endpoint's hostname (`Endpoint.hostname`, or the DNS name it was resolved from):
    /// what `auto_host_rewrite` puts in `Host`.
    pub hostname: String,
}

impl Cluster {
    /// Validates a Cluster resource.
    pub fn from_proto(c: &cpb::Cluster) -> Result<Cluster, ModelError> {
        let res = format!("cluster {}", c.name);
        let err = |f: &str, r: String| ModelError::new(&res, f, r);
        if c.name.is_empty() {
            return Err(err("name", "cluster name is empty".into()));
        }
        use cpb::cluster::{ClusterDiscoveryType, DiscoveryType};
        let discovery = match &c.cluster_discovery_type {
            None => Discovery::Static,
            Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
                Ok(DiscoveryType::Static) => Discovery::Static,
                Ok(DiscoveryType::StrictDns) => Discovery::StrictDns,
                Ok(DiscoveryType::LogicalDns) => Discovery::LogicalDns,
                Ok(DiscoveryType::Eds) => Discovery::Eds,
                Ok(DiscoveryType::OriginalDst) => Discovery::OriginalDst,
                Err(_) => return Err(err("type", format!("unknown discovery type {t}"))),
            },
            Some(ClusterDiscoveryType::ClusterType(ct)) => {
                return Err(err(
                    "cluster_type",
                    format!("custom cluster type {} is not supported", ct.name),
                ))
            }
        };
        let lb = lb_policy(c).map_err(|(f, r)| err(&f, r))?;
        if discovery == Discovery::OriginalDst
            && !matches!(c.lb_policy, 6 /* CLUSTER_PROVIDED */ | 0)
        {
            return Err(err(
                "lb_policy",
                "ORIGINAL_DST clusters need lb_policy CLUSTER_PROVIDED".into(),
            ));
        }
        if !c.transport_socket_matches.is_empty() {
            // Istio's `tlsMode` matches: TLS to endpoints labelled `tlsMode: istio`, plaintext
            // otherwise. Without TLS, Sluice uses the plaintext entry for every endpoint.
            if !c
                .transport_socket_matches
                .iter()
                .any(|m| is_plaintext(m.transport_socket.as_ref()))
            {
                return Err(err(
                    "transport_socket_matches",
                    "no plaintext (raw_buffer) entry, and TLS transport sockets are not supported yet"
                        .into(),
                ));
            }
        } else if let Some(ts) = c
            .transport_socket
            .as_ref()
            .filter(|t| !is_plaintext(Some(t)))
        {
            return Err(err(
                "transport_socket",
                format!("transport socket {} is not supported yet", ts.name),
            ));
        }
        unhonoured_fields(c).map_err(|(f, r)| err(f, r.to_string()))?;
        let protocol = protocol(c).map_err(|(f, r)| err(&f, r))?;
        let load_assignment = match &c.load_assignment {
            Some(la) => Some(
                endpoints(la, discovery)
                    .map_err(|(f, r)| err(&format!("load_assignment.{f}"), r))?,
            ),
            None => None,
        };
        if matches!(
            discovery,
            Discovery::StrictDns | Discovery::LogicalDns | Discovery::Static
        ) && load_assignment.is_none()
        {
            return Err(err("load_assignment", "no endpoints configured".into()));
        }
        let thresholds = c
            .circuit_breakers
            .as_ref()
            .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0));
        let th = |f: fn(&cpb::circuit_breakers::Thresholds) -> Option<u32>, default: u32| {
            thresholds.and_then(f).unwrap_or(default)
        };
        let upstream_bind = match &c.upstream_bind_config {
            Some(b) => Some(
                b.source_address
                    .as_ref()
                    .and_then(|a| a.address.parse::<std::net::IpAddr>().ok())
                    .ok_or_else(|| {
                        err(
                            "upstream_bind_config.source_address",
                            "needs an IP address".into(),
                        )
                    })?,
            ),
            None => None,
        };
        let tcp_keepalive = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
            .map(|k| TcpKeepalive {
                probes: k.keepalive_probes.as_ref().map(|v| v.value),
                time: k.keepalive_time.as_ref().map(|v| v.value),
                interval: k.keepalive_interval.as_ref().map(|v| v.value),
            });
        let outlier = match &c.outlier_detection {
            Some(o) => Some(Arc::new(
                crate::cluster::outlier::OutlierConfig::from_proto(o)
                    .map_err(|(f, r)| err(&format!("outlier_detection.{f}"), r))?,
            )),
            None => None,
        };
        let panic_threshold = c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map_or(50.0, |p| p.value);
        if !(0.0..=100.0).contains(&panic_threshold) {
            return Err(err(
                "common_lb_config.healthy_panic_threshold",
                format!("{panic_threshold} is not a percentage"),
            ));
        }
        Ok(Cluster {
            name: c.name.clone(),
            discovery,
            eds_service_name: c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone()),
            lb,
            connect_timeout: duration(&c.connect_timeout).unwrap_or(Duration::from_secs(5)),
            protocol,
            dns_refresh: duration(&c.dns_refresh_rate).unwrap_or(Duration::from_secs(5)),
            idle_timeout: idle_timeout(c),
            max_requests_per_connection: c
                .max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|v| *v > 0),
            max_connections: th(|t| t.max_connections.as_ref().map(|v| v.value), 1024),
            max_pending_requests: th(|t| t.max_pending_requests.as_ref().map(|v| v.value), 1024),
            max_requests: th(|t| t.max_requests.as_ref().map(|v| v.value), 1024),
            max_retries: th(|t| t.max_retries.as_ref().map(|v| v.value), 3),
            load_assignment,
            upstream_bind,
            tcp_keepalive,
            h2_keepalive: h2_keepalive(c),
            outlier,
            panic_threshold,
            proto: c.encode_to_vec().into_boxed_slice(),
        })
    }

    /// The resource as received (decoded from its stored encoding).
    pub fn proto(&self) -> cpb::Cluster {
        cpb::Cluster::decode(&*self.proto).expect("a cluster's own encoding decodes")
    }

    /// Whether `other` is the same resource this one was built from. Encodings of equal
    /// messages have equal lengths; equal bytes mean equal messages. Same length and
    /// different bytes can still be equal (map fields encode in hash order): then decode.
    pub fn same_proto(&self, other: &Cluster) -> bool {
        if self.proto.len() != other.proto.len() {
            return false;
        }
        self.proto == other.proto || self.proto() == other.proto()
    }
}

/// No transport socket, or `raw_buffer` (by name or by its typed config).
fn is_plaintext(ts: Option<&core::TransportSocket>) -> bool {
    use core::transport_socket::ConfigType;
    let Some(ts) = ts else { return true };
    let typed_raw = match &ts.config_type {
        Some(ConfigType::TypedConfig(a)) => a
            .type_url
            .ends_with("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"),
        None => false,
    };
    ts.name.is_empty() || ts.name == "envoy.transport_sockets.raw_buffer" || typed_raw
}

/// Fields Sluice does not act on. Those that would change where traffic goes are rejected
/// (with the field named); those that only tune or protect are accepted with one warning per
/// field, so a config keeps working and the gap is visible in the log.
fn unhonoured_fields(c: &cpb::Cluster) -> Result<(), (&'static str, &'static str)> {
    if !c.health_checks.is_empty() {
        return Err(("health_checks", "active health checking is not supported"));
    }
    if c.lb_subset_config
        .as_ref()
        .is_some_and(|s| !s.subset_selectors.is_empty())
    {
        return Err((
            "lb_subset_config",
            "subset load balancing is not supported (use one cluster per subset, as Istio does)",
        ));
    }
    if c.load_balancing_policy.is_some() {
        return Err((
            "load_balancing_policy",
            "typed load-balancing policies are not supported; use lb_policy",
        ));
    }
    let mut ignored: Vec<&'static str> = Vec::new();
    if c.common_lb_config
        .as_ref()
        .is_some_and(|l| l.locality_config_specifier.is_some())
    {
        ignored.push("common_lb_config.locality_config_specifier");
    }
    if let Some(o) = &c.upstream_connection_options {
        if o.set_local_interface_name_on_upstream_connections {
            ignored.push(
                "upstream_connection_options.set_local_interface_name_on_upstream_connections",
            );
        }
        if o.happy_eyeballs_config.is_some() {
            ignored.push("upstream_connection_options.happy_eyeballs_config");
        }
    }
    for f in ignored {
        warn_ignored_once("Cluster", f);
    }
    Ok(())
}

/// Logs once per message type and field that a configured field is accepted but not acted on,
/// and counts it in `server.config_fields_ignored`.
pub fn warn_ignored_once(kind: &str, field: &str) {
    if super::warn_once(
        &format!("{kind}.{field}"),
        "configured field is accepted but not acted on",
    ) {
        crate::stats::registry()
            .counter("server.config_fields_ignored")
            .inc();
    }
}

fn lb_policy(c: &cpb::Cluster) -> Result<LbPolicy, (String, String)> {
    use cpb::cluster::LbConfig;
    Ok(match c.lb_policy {
        0 => LbPolicy::RoundRobin,
        1 => LbPolicy::LeastRequest {
            choices: match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => {
                    l.choice_count.as_ref().map(|v| v.value).unwrap_or(2).max(2)
                }
                _ => 2,
            },
        },
        2 => {
            let (min, max) = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => (
                    r.minimum_ring_size
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(1024),
                    r.maximum_ring_size
                        .as_ref()
                        .map(|v| v.value)
                        .unwrap_or(8 * 1024 * 1024),
                ),
                _ => (1024, 8 * 1024 * 1024),
            };
            if min > max {
                return Err((
                    "ring_hash_lb_config".into(),
                    "minimum_ring_size exceeds maximum_ring_size".into(),
                ));
            }
            LbPolicy::RingHash {
                min_size: min,
                max_size: max,
            }
        }
        3 => LbPolicy::Random,
        5 => LbPolicy::Maglev {
            table_size: match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => {
                    m.table_size.as_ref().map(|v| v.value).unwrap_or(65537)
                }
                _ => 65537,
            },
        },
        6 => LbPolicy::RoundRobin, // CLUSTER_PROVIDED (original destination)
        p => {
            return Err((
                "lb_policy".into(),
                format!("load-balancing policy {p} is not supported"),
            ))
        }
    })
}

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn protocol(c: &cpb::Cluster) -> Result<UpstreamProtocol, (String, String)> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
    };
    if let Some(any) = c
        .typed_extension_protocol_options
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    {
        if !any.type_url.ends_with(HTTP_PROTOCOL_OPTIONS) {
            return Err((
                "typed_extension_protocol_options".into(),
                format!("unexpected type {}", any.type_url),
            ));
        }
        let o = HttpProtocolOptions::decode(any.value.as_slice()).map_err(|e| {
            (
                "typed_extension_protocol_options".into(),
                format!("decoding HttpProtocolOptions: {e}"),
            )
        })?;
        return Ok(match o.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err((
                        "typed_extension_protocol_options".into(),
                        "HTTP/3 upstreams are not supported".into(),
                    ))
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                UpstreamProtocol::UseDownstream
            }
            // Auto config needs ALPN (TLS); over plaintext Envoy speaks HTTP/1.1.
            Some(UpstreamProtocolOptions::AutoConfig(_)) | None => UpstreamProtocol::Http1,
        });
    }
    #[allow(deprecated)]
    if c.http2_protocol_options.is_some() {
        return Ok(UpstreamProtocol::Http2);
    }
    if c.protocol_selection == 1 {
        return Ok(UpstreamProtocol::UseDownstream);
    }
    Ok(UpstreamProtocol::Http1)
}

/// `http2_protocol_options.connection_keepalive` (explicit, downstream-following or the
/// deprecated cluster field): PINGs every `interval`, the connection closed when one is not
/// answered within `timeout` (Envoy's default 5 s if unset). Without it, no PINGs, as in
/// Envoy (some servers, gRPC-Go's among them, close connections that ping while idle).
fn h2_keepalive(c: &cpb::Cluster) -> Option<H2Keepalive> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
    };
    let o = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|a| HttpProtocolOptions::decode(a.value.as_slice()).ok());
    #[allow(deprecated)]
    let h2 = match o.and_then(|o| o.upstream_protocol_options) {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(h)) => Some(h),
            _ => None,
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => d.http2_protocol_options,
        _ => c.http2_protocol_options.clone(),
    };
    keepalive(h2?.connection_keepalive.as_ref()?)
}

/// `connection_keepalive`: PINGs every `interval` (none without one), a PONG due within
/// `timeout` (5 s when unset).
pub(crate) fn keepalive(
    k: &envoy_types::pb::envoy::config::core::v3::KeepaliveSettings,
) -> Option<H2Keepalive> {
    let interval = duration(&k.interval).filter(|d| !d.is_zero())?;
    Some(H2Keepalive {
        interval,
        timeout: duration(&k.timeout)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5)),
    })
}

fn idle_timeout(c: &cpb::Cluster) -> Option<Duration> {
    let o = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|a| HttpProtocolOptions::decode(a.value.as_slice()).ok());
    #[allow(deprecated)]
    let common = o
        .and_then(|o| o.common_http_protocol_options)
        .or(c.common_http_protocol_options);
    match common.and_then(|c| duration(&c.idle_timeout)) {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(3600)),
    }
}

/// Validates a ClusterLoadAssignment (from EDS or inline).
pub fn endpoints(
    la: &epb::ClusterLoadAssignment,
    discovery: Discovery,
) -> Result<Endpoints, (String, String)> {
    // Exact capacity: pushing one endpoint into an empty Vec reserves room for four.
    let mut out = Vec::with_capacity(la.endpoints.iter().map(|l| l.lb_endpoints.len()).sum());
    for (i, lle) in la.endpoints.iter().enumerate() {
        let locality = lle
            .locality
            .as_ref()
            .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone))
            .unwrap_or_default();
        let locality: Arc<str> = locality.into();
        for (j, le) in lle.lb_endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}].lb_endpoints[{j}]");
            let ep = match &le.host_identifier {
                Some(epb::lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                Some(epb::lb_endpoint::HostIdentifier::EndpointName(n)) => {
                    return Err((path, format!("named endpoints are not supported: {n}")))
                }
                None => return Err((path, "endpoint has no address".into())),
            };
            let addr = ep
                .address
                .as_ref()
                .ok_or_else(|| (format!("{path}.endpoint.address"), "missing".to_string()))?;
            let target = match &addr.address {
                Some(core::address::Address::SocketAddress(sa))
                    if matches!(discovery, Discovery::StrictDns | Discovery::LogicalDns)
                        && sa.address.parse::<std::net::IpAddr>().is_err() =>
                {
                    let port = match sa.port_specifier {
                        Some(core::socket_address::PortSpecifier::PortValue(p)) => p as u16,
                        _ => 0,
                    };
                    Target::Dns(sa.address.clone(), port)
                }
                _ => match socket_address(addr) {
                    Ok(Some(sa)) => Target::Ip(sa),
                    Ok(None) => {
                        return Err((
                            format!("{path}.endpoint.address"),
                            "internal addresses are not supported".into(),
                        ))
                    }
                    Err(e) => return Err((format!("{path}.endpoint.address"), e)),
                },
            };
            // UNHEALTHY (2), DRAINING (3), TIMEOUT (4) are not used for new requests.
            let healthy = !matches!(le.health_status, 2..=4);
            let hostname = match &target {
                Target::Dns(h, _) if ep.hostname.is_empty() => h.clone(),
                _ => ep.hostname.clone(),
            };
            out.push(EndpointSpec {
                target,
                weight: le
                    .load_balancing_weight
                    .as_ref()
                    .map(|v| v.value)
                    .unwrap_or_else(|| {
                        lle.load_balancing_weight
                            .as_ref()
                            .map(|v| v.value)
                            .unwrap_or(1)
                    })
                    .max(1),
                priority: lle.priority,
                healthy,
                locality: locality.clone(),
                metadata: flatten_metadata(le.metadata.as_ref()).into(),
                hostname,
            });
        }
    }
    Ok(Endpoints {
        endpoints: out,
        overprovisioning: la
            .policy
            .as_ref()
            .and_then(|p| p.overprovisioning_factor.as_ref())
            .map(|v| v.value),
    })
}

/// `filter_metadata` string values as `namespace.key` → value.
pub fn flatten_metadata(m: Option<&core::Metadata>) -> BTreeMap<String, String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let mut out = BTreeMap::new();
    if let Some(m) = m {
        for (ns, st) in &m.filter_metadata {
            for (k, v) in &st.fields {
                let s = match &v.kind {
                    Some(Kind::StringValue(s)) => s.clone(),
                    Some(Kind::NumberValue(n)) => n.to_string(),
                    Some(Kind::BoolValue(b)) => b.to_string(),
                    _ => continue,
                };
                out.insert(format!("{ns}.{k}"), s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proto::{decode, Format};

    fn cluster(y: &str) -> Result<Cluster, ModelError> {
        Cluster::from_proto(&decode::<cpb::Cluster>(y, Format::Yaml).unwrap())
    }

    #[test]
    fn static_cluster_with_h2() {
        let c = cluster(
            r#"
name: c
connect_timeout: 0.25s
lb_policy: LEAST_REQUEST
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}
load_assignment:
  cluster_name: c
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
      metadata: {filter_metadata: {envoy.lb: {version: v1}}}
    - endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 8080}}}
      health_status: UNHEALTHY
"#,
        )
        .unwrap();
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.lb, LbPolicy::LeastRequest { choices: 2 });
        let eps = c.load_assignment.unwrap().endpoints;
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].metadata.get("envoy.lb.version"), Some("v1"));
        assert!(!eps[1].healthy);
        assert_eq!(c.upstream_bind, None);
    }

    #[test]
    fn upstream_tcp_keepalive() {
        let c = cluster(
            "name: c\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\nupstream_connection_options: {tcp_keepalive: {keepalive_probes: 4, keepalive_time: 30}}\n",
        )
        .unwrap();
        assert_eq!(
            c.tcp_keepalive,
            Some(TcpKeepalive {
                probes: Some(4),
                time: Some(30),
                interval: None
            })
        );
        let c = cluster("name: c\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\n").unwrap();
        assert_eq!(c.tcp_keepalive, None);
    }

    #[test]
    fn upstream_bind_source_address() {
        let c = cluster(
            "name: inbound\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\nupstream_bind_config: {source_address: {address: 127.0.0.6, port_value: 0}}\n",
        )
        .unwrap();
        assert_eq!(c.upstream_bind, Some("127.0.0.6".parse().unwrap()));
        let e = cluster(
            "name: b\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\nupstream_bind_config: {source_address: {address: not-an-ip}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "upstream_bind_config.source_address");
    }

    #[test]
    fn dns_cluster_keeps_hostnames() {
        let c = cluster(
            "name: d\ntype: STRICT_DNS\nload_assignment:\n  cluster_name: d\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: localhost, port_value: 80}}}\n",
        )
        .unwrap();
        assert_eq!(c.discovery, Discovery::StrictDns);
        assert_eq!(
            c.load_assignment.unwrap().endpoints[0].target,
            Target::Dns("localhost".into(), 80)
        );
    }

    #[test]
    fn fields_that_change_routing_are_rejected() {
        let e = cluster("name: h\ntype: EDS\nhealth_checks: [{timeout: 1s, interval: 1s, tcp_health_check: {}}]\n")
            .unwrap_err();
        assert_eq!(e.field, "health_checks");
        let e = cluster(
            "name: s\ntype: EDS\nlb_subset_config: {subset_selectors: [{keys: [version]}]}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "lb_subset_config");
        // Tuning-only fields are accepted (and logged once).
        cluster(
            "name: o\ntype: EDS\ncircuit_breakers: {thresholds: [{max_pending_requests: 5}]}\n",
        )
        .unwrap();
        let c = cluster("name: o\ntype: EDS\noutlier_detection: {consecutive_5xx: 7}\n").unwrap();
        assert_eq!(c.outlier.unwrap().consecutive_5xx, 7);
        let e = cluster("name: o\ntype: EDS\noutlier_detection: {interval: 0s}\n").unwrap_err();
        assert_eq!(e.field, "outlier_detection.interval");
    }

    #[test]
    fn tls_transport_socket_is_named() {
        let e =
            cluster("name: t\ntype: EDS\ntransport_socket: {name: envoy.transport_sockets.tls}\n")
                .unwrap_err();
        assert_eq!(e.field, "transport_socket");
    }

    #[test]
    fn istio_tls_mode_matches_use_the_plaintext_entry() {
        let tls = "transport_socket: {name: envoy.transport_sockets.tls}";
        let raw = "transport_socket: {name: envoy.transport_sockets.raw_buffer, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}";
        let istio = format!(
            "name: t\ntype: EDS\ntransport_socket_matches:\n- name: tlsMode-istio\n  match: {{tlsMode: istio}}\n  {tls}\n- name: tlsMode-disabled\n  match: {{}}\n  {raw}\n"
        );
        assert!(cluster(&istio).is_ok());
        let only_tls = format!(
            "name: t\ntype: EDS\ntransport_socket_matches:\n- name: tlsMode-istio\n  match: {{tlsMode: istio}}\n  {tls}\n"
        );
        let e = cluster(&only_tls).unwrap_err();
        assert_eq!(e.field, "transport_socket_matches");
    }
}
