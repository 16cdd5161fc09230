//! Listeners: address, listener filters, filter chains and how a connection picks one — the
//! legacy `filter_chain_match` (Envoy's most-specific-wins order) or `filter_chain_matcher`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as lpb;

use super::matcher::Matcher;
use super::network::{duration, network_filter, NetworkFilter};
use super::{socket_address, Cidr, ConnInfo, ModelError};

/// Which listener filters run before a filter chain is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerFilters {
    pub original_dst: bool,
    pub http_inspector: bool,
    pub tls_inspector: bool,
    /// `original_src`: upstream connections bind the downstream's source address
    /// (transparently) and carry this `SO_MARK` (0: none).
    pub original_src: Option<u32>,
}

/// A listener, validated.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// `None` for internal listeners (not bound).
    pub address: Option<SocketAddr>,
    pub bind_to_port: bool,
    pub use_original_dst: bool,
    /// `transparent`: the socket may accept connections to non-local addresses (TPROXY).
    pub transparent: bool,
    pub filters: ListenerFilters,
    pub filters_timeout: Duration,
    pub continue_on_filters_timeout: bool,
    pub chains: Vec<Arc<FilterChain>>,
    pub default_chain: Option<Arc<FilterChain>>,
    pub matcher: Option<Matcher>,
    /// The resource as received, protobuf-encoded (decoded on demand for `/config_dump`).
    encoded: Box<[u8]>,
}

/// A filter chain: what it matches and the network filter it runs.
#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matches: ChainMatch,
    pub filter: NetworkFilter,
}

/// `FilterChainMatch`, validated.
#[derive(Debug, Clone, Default)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    /// 0 any, 1 same-ip-or-loopback, 2 external.
    pub source_type: i32,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
    pub server_names: Vec<String>,
    pub transport_protocol: String,
    pub application_protocols: Vec<String>,
}

fn cidrs(
    ranges: &[envoy_types::pb::envoy::config::core::v3::CidrRange],
) -> Result<Vec<Cidr>, String> {
    ranges
        .iter()
        .map(|r| Cidr::parse(&r.address_prefix, r.prefix_len.as_ref().map(|v| v.value)))
        .collect()
}

impl Listener {
    /// Validates a Listener resource.
    /// The resource as received.
    pub fn proto(&self) -> lpb::Listener {
        prost::Message::decode(&*self.encoded).expect("a listener's own encoding decodes")
    }

    /// Whether `l` is the resource this listener was built from (see
    /// `Cluster::same_proto`: equal lengths, then equal bytes, else decode and compare).
    pub fn same_proto(&self, l: &lpb::Listener) -> bool {
        let other = prost::Message::encode_to_vec(l);
        other.len() == self.encoded.len() && (*other == *self.encoded || self.proto() == *l)
    }

    pub fn from_proto(l: &lpb::Listener) -> Result<Listener, ModelError> {
        let res = format!("listener {}", l.name);
        let err = |f: &str, r: String| ModelError::new(&res, f, r);
        if l.name.is_empty() {
            return Err(err("name", "listener name is empty".into()));
        }
        if l.listener_specifier.is_some() {
            return Err(err(
                "internal_listener",
                "internal listeners (reached through envoy_internal_address, as Istio ambient \
                 waypoints use them) are not supported"
                    .into(),
            ));
        }
        let address = match &l.address {
            Some(a) => socket_address(a).map_err(|e| err("address", e))?,
            None => None,
        };
        let bind_to_port = l.bind_to_port.as_ref().is_none_or(|v| v.value);
        if address.is_none() && bind_to_port {
            return Err(err("address", "listener has no socket address".into()));
        }
        let mut filters = ListenerFilters::default();
        for (i, f) in l.listener_filters.iter().enumerate() {
            let tn = match &f.config_type {
                Some(lpb::listener_filter::ConfigType::TypedConfig(a)) => {
                    crate::config::proto::any_type_name(&a.type_url).to_string()
                }
                _ => String::new(),
            };
            let kind = if tn.is_empty() {
                f.name.as_str()
            } else {
                tn.as_str()
            };
            match kind {
                "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
                | "envoy.filters.listener.original_dst" => filters.original_dst = true,
                "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
                | "envoy.filters.listener.http_inspector" => filters.http_inspector = true,
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                | "envoy.filters.listener.tls_inspector" => filters.tls_inspector = true,
                "envoy.extensions.filters.listener.original_src.v3.OriginalSrc"
                | "envoy.filters.listener.original_src" => {
                    use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
                    let mark = match &f.config_type {
                        Some(lpb::listener_filter::ConfigType::TypedConfig(a)) => {
                            <OriginalSrc as prost::Message>::decode(a.value.as_slice())
                                .map_err(|e| {
                                    err(
                                        &format!("listener_filters[{i}].typed_config"),
                                        format!("decoding OriginalSrc: {e}"),
                                    )
                                })?
                                .mark
                        }
                        _ => 0,
                    };
                    filters.original_src = Some(mark);
                }
                "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol" => {
                    return Err(err(
                        &format!("listener_filters[{i}]"),
                        "proxy_protocol is not supported".into(),
                    ))
                }
                other => {
                    return Err(err(
                        &format!("listener_filters[{i}]"),
                        format!("unsupported listener filter {} ({other})", f.name),
                    ))
                }
            }
        }
        let mut chains = Vec::new();
        for (i, fc) in l.filter_chains.iter().enumerate() {
            chains.push(Arc::new(chain(&res, &format!("filter_chains[{i}]"), fc)?));
        }
        let default_chain = match &l.default_filter_chain {
            Some(fc) => Some(Arc::new(chain(&res, "default_filter_chain", fc)?)),
            None => None,
        };
        let matcher = match &l.filter_chain_matcher {
            Some(m) => {
                let m = Matcher::compile(m).map_err(|e| err("filter_chain_matcher", e))?;
                for a in m.actions() {
                    if !chains.iter().any(|c| c.name == a) {
                        return Err(err(
                            "filter_chain_matcher",
                            format!("action names unknown filter chain {a:?}"),
                        ));
                    }
                }
                Some(m)
            }
            None => {
                check_unique_matches(&chains).map_err(|e| err("filter_chains", e))?;
                None
            }
        };
        let use_original_dst = l.use_original_dst.as_ref().is_some_and(|v| v.value);
        Ok(Listener {
            name: l.name.clone(),
            address,
            bind_to_port,
            use_original_dst,
            transparent: l.transparent.as_ref().is_some_and(|v| v.value),
            filters,
            filters_timeout: duration(&l.listener_filters_timeout)
                .unwrap_or(Duration::from_secs(15)),
            continue_on_filters_timeout: l.continue_on_listener_filters_timeout,
            chains,
            default_chain,
            matcher,
            encoded: prost::Message::encode_to_vec(l).into_boxed_slice(),
        })
    }

    /// Whether choosing a chain needs the TLS ClientHello or the HTTP preface.
    pub fn needs_inspection(&self) -> bool {
        self.filters.tls_inspector || self.filters.http_inspector
    }

    /// The filter chain for this connection, or `None` (Envoy closes the connection).
    pub fn select_chain(&self, c: &ConnInfo) -> Option<&Arc<FilterChain>> {
        let chosen = match &self.matcher {
            Some(m) => m
                .eval(c)
                .and_then(|name| self.chains.iter().find(|ch| ch.name == name)),
            None => select_legacy(&self.chains, c),
        };
        chosen.or(self.default_chain.as_ref())
    }
}

fn chain(res: &str, path: &str, fc: &lpb::FilterChain) -> Result<FilterChain, ModelError> {
    let err = |f: String, r: String| ModelError::new(res, &f, r);
    if let Some(ts) = &fc.transport_socket {
        if ts.name != "envoy.transport_sockets.raw_buffer" {
            return Err(err(
                format!("{path}.transport_socket"),
                format!("transport socket {} is not supported yet", ts.name),
            ));
        }
    }
    let m = fc.filter_chain_match.clone().unwrap_or_default();
    let mp = format!("{path}.filter_chain_match");
    let matches = ChainMatch {
        destination_port: match m.destination_port.as_ref().map(|v| v.value) {
            Some(p) => Some(u16::try_from(p).map_err(|_| {
                err(
                    format!("{mp}.destination_port"),
                    format!("port out of range: {p}"),
                )
            })?),
            None => None,
        },
        prefix_ranges: cidrs(&m.prefix_ranges)
            .map_err(|e| err(format!("{mp}.prefix_ranges"), e))?,
        direct_source_prefix_ranges: cidrs(&m.direct_source_prefix_ranges)
            .map_err(|e| err(format!("{mp}.direct_source_prefix_ranges"), e))?,
        source_type: m.source_type,
        source_prefix_ranges: cidrs(&m.source_prefix_ranges)
            .map_err(|e| err(format!("{mp}.source_prefix_ranges"), e))?,
        source_ports: m
            .source_ports
            .iter()
            .map(|p| u16::try_from(*p).unwrap_or(0))
            .collect(),
        server_names: m
            .server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        transport_protocol: m.transport_protocol.clone(),
        application_protocols: m.application_protocols.clone(),
    };
    let filter = network_filter(res, path, &fc.filters)?;
    Ok(FilterChain {
        name: fc.name.clone(),
        matches,
        filter,
    })
}

/// Envoy rejects listeners whose filter chains have identical matches.
fn check_unique_matches(chains: &[Arc<FilterChain>]) -> Result<(), String> {
    for (i, a) in chains.iter().enumerate() {
        for (j, b) in chains.iter().enumerate().skip(i + 1) {
            if same_match(&a.matches, &b.matches) {
                return Err(format!(
                    "filter chains {i} and {j} have the same filter_chain_match"
                ));
            }
        }
    }
    Ok(())
}

fn same_match(a: &ChainMatch, b: &ChainMatch) -> bool {
    a.destination_port == b.destination_port
        && a.prefix_ranges == b.prefix_ranges
        && a.direct_source_prefix_ranges == b.direct_source_prefix_ranges
        && a.source_type == b.source_type
        && a.source_prefix_ranges == b.source_prefix_ranges
        && a.source_ports == b.source_ports
        && a.server_names == b.server_names
        && a.transport_protocol == b.transport_protocol
        && a.application_protocols == b.application_protocols
}

fn cidr_score(ranges: &[Cidr], ip: Option<IpAddr>) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    let ip = ip?;
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.len as u32 + 1)
        .max()
}

fn server_name_score(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    let mut best = None;
    for n in names {
        if *n == sni {
            return Some(u32::MAX);
        }
        if let Some(suffix) = n.strip_prefix('*') {
            if sni.ends_with(suffix) && sni.len() > suffix.len() {
                best = best.max(Some(suffix.len() as u32 + 1));
            }
        }
    }
    best
}

/// Envoy's filter chain selection: at each criterion, in order, keep only the chains with the
/// most specific match; a criterion nobody matches ends the search with no chain.
fn select_legacy<'a>(chains: &'a [Arc<FilterChain>], c: &ConnInfo) -> Option<&'a Arc<FilterChain>> {
    type Score = fn(&ChainMatch, &ConnInfo) -> Option<u32>;
    let criteria: [Score; 9] = [
        |m, c| match m.destination_port {
            None => Some(0),
            Some(p) => (c.local.map(|a| a.port()) == Some(p)).then_some(1),
        },
        |m, c| cidr_score(&m.prefix_ranges, c.local.map(|a| a.ip())),
        |m, c| server_name_score(&m.server_names, c.server_name.as_deref()),
        |m, c| {
            if m.transport_protocol.is_empty() {
                Some(0)
            } else {
                (m.transport_protocol == c.transport).then_some(1)
            }
        },
        |m, c| {
            if m.application_protocols.is_empty() {
                Some(0)
            } else {
                m.application_protocols
                    .iter()
                    .any(|p| c.alpn.contains(p))
                    .then_some(1)
            }
        },
        |m, c| cidr_score(&m.direct_source_prefix_ranges, c.remote.map(|a| a.ip())),
        |m, c| match m.source_type {
            1 => c.is_local_source().then_some(1),
            2 => (!c.is_local_source()).then_some(1),
            _ => Some(0),
        },
        |m, c| cidr_score(&m.source_prefix_ranges, c.remote.map(|a| a.ip())),
        |m, c| {
            if m.source_ports.is_empty() {
                Some(0)
            } else {
                c.remote
                    .is_some_and(|a| m.source_ports.contains(&a.port()))
                    .then_some(1)
            }
        },
    ];
    let mut candidates: Vec<&Arc<FilterChain>> = chains.iter().collect();
    for score in criteria {
        let scored: Vec<(u32, &Arc<FilterChain>)> = candidates
            .iter()
            .filter_map(|ch| score(&ch.matches, c).map(|s| (s, *ch)))
            .collect();
        let best = scored.iter().map(|s| s.0).max()?;
        candidates = scored
            .into_iter()
            .filter(|s| s.0 == best)
            .map(|s| s.1)
            .collect();
    }
    candidates.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proto::{decode, Format};

    fn listener(yaml: &str) -> Result<Listener, ModelError> {
        let l: lpb::Listener = decode(yaml, Format::Yaml).unwrap();
        Listener::from_proto(&l)
    }

    const TCP: &str = r#"
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s
          cluster: "#;

    #[test]
    fn legacy_selection_prefers_most_specific() {
        let y = format!(
            r#"
name: l
address: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}
filter_chains:
- name: any
  filters:{TCP} any
- name: port80
  filter_chain_match: {{destination_port: 80}}
  filters:{TCP} port80
- name: port80-net
  filter_chain_match: {{destination_port: 80, prefix_ranges: [{{address_prefix: 10.0.0.0, prefix_len: 8}}]}}
  filters:{TCP} port80net
- name: tls
  filter_chain_match: {{transport_protocol: tls, server_names: ["*.example.com"]}}
  filters:{TCP} tls
"#
        );
        let l = listener(&y).unwrap();
        let ci = |dst: &str, tls: bool, sni: Option<&str>| ConnInfo {
            local: Some(dst.parse().unwrap()),
            remote: Some("10.9.9.9:5555".parse().unwrap()),
            transport: if tls { "tls" } else { "raw_buffer" },
            server_name: sni.map(String::from),
            alpn: vec![],
        };
        let pick = |c: ConnInfo| l.select_chain(&c).map(|c| c.name.clone());
        assert_eq!(
            pick(ci("10.1.1.1:80", false, None)).as_deref(),
            Some("port80-net")
        );
        assert_eq!(
            pick(ci("192.168.1.1:80", false, None)).as_deref(),
            Some("port80")
        );
        assert_eq!(
            pick(ci("192.168.1.1:81", false, None)).as_deref(),
            Some("any")
        );
        assert_eq!(
            pick(ci("192.168.1.1:443", true, Some("a.example.com"))).as_deref(),
            Some("tls")
        );
    }

    #[test]
    fn duplicate_matches_rejected() {
        let y = format!(
            "name: l\naddress: {{socket_address: {{address: 0.0.0.0, port_value: 1}}}}\nfilter_chains:\n- filters:{TCP} a\n- filters:{TCP} b\n"
        );
        let e = listener(&y).unwrap_err();
        assert!(e.reason.contains("same filter_chain_match"), "{e}");
    }

    #[test]
    fn unknown_filter_named_in_error() {
        let y = "name: l\naddress: {socket_address: {address: 0.0.0.0, port_value: 1}}\nfilter_chains:\n- filters:\n  - name: envoy.filters.network.redis_proxy\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy\n      stat_prefix: r\n";
        let e = listener(y).unwrap_err();
        assert_eq!(e.field, "filter_chains[0].filters[0]");
        assert!(e.reason.contains("redis_proxy"), "{e}");
    }
}
