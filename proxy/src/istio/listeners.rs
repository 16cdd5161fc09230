//! Sidecar listeners as istiod shapes them: `virtualOutbound` (15001, `use_original_dst`, the
//! catch-all chain to PassthroughCluster), one `0.0.0.0_PORT` listener per outbound port
//! (`bind_to_port: false`; HTTP through RDS route `PORT`, TCP/TLS through tcp_proxy, sniffing
//! where the port says nothing), `VIP_PORT` listeners for TCP services with a VIP, `PODIP_PORT`
//! listeners for the endpoints of headless Kubernetes services' TCP ports, and
//! `virtualInbound` (15006) with a chain per inbound port to `inbound|PORT||`.
//!
//! With [`Interception::None`] the per-port listeners bind `127.0.0.1:PORT` instead (named
//! `127.0.0.1_PORT`) and the virtual listeners are left out.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use serde_json::{json, Value};

use super::clusters::outbound_name;
use super::model::{L4Match, Object, RouteDestination, VirtualServiceSpec};
use super::registry::{Protocol, Registry, Resolution, Service};
use super::routes::{dest_cluster, gateway_listed, mesh_vs_for, Ctx};
use super::validate::{Level, Message};
use super::{pb, Interception, Node, Resources};

/// The HTTP connection manager filter with istiod's routing HTTP filters (fault, cors, router).
pub fn hcm(stat_prefix: &str, rds: Option<&str>, inline: Option<Value>) -> Value {
    let mut t = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "http_filters": [
            {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
    });
    if let Some(r) = rds {
        t["rds"] = json!({"route_config_name": r, "config_source": {"ads": {}, "resource_api_version": "V3"}});
    }
    if let Some(rc) = inline {
        t["route_config"] = rc;
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": t})
}

/// A tcp_proxy filter to one cluster or several weighted ones.
pub fn tcp_proxy(clusters: &[(String, u32)]) -> Value {
    let mut t = json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"});
    if clusters.len() == 1 {
        t["stat_prefix"] = json!(clusters[0].0);
        t["cluster"] = json!(clusters[0].0);
    } else {
        t["stat_prefix"] = json!("weighted");
        t["weighted_clusters"] = json!({"clusters": clusters.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect::<Vec<_>>()});
    }
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": t})
}

fn weighted(ctx: &Ctx, ns: &str, r: &[RouteDestination]) -> Vec<(String, u32)> {
    let total: i64 = r.iter().map(|d| d.weight.unwrap_or(0).max(0)).sum();
    r.iter()
        .map(|d| {
            let w = if r.len() == 1 || total == 0 {
                1
            } else {
                d.weight.unwrap_or(0).max(0) as u32
            };
            (dest_cluster(ctx, &d.destination, ns).0, w)
        })
        .filter(|(_, w)| *w > 0)
        .collect()
}

/// istiod's `matchTCP`: port, gateways (`mesh` on sidecars), source labels and namespace.
pub fn l4_applies(ctx: &Ctx, m: &L4Match, vs_ns: &str) -> bool {
    m.port.is_none_or(|p| p == 0 || p == ctx.port)
        && (m.gateways.is_empty() || gateway_listed(&m.gateways, ctx.gateway, vs_ns))
        && m.source_labels
            .iter()
            .all(|(k, v)| ctx.node.labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|n| n.is_empty() || *n == ctx.node.namespace)
}

/// What a VirtualService's `tcp` section routes on one port for this node, as istiod walks it:
/// routes whose applying matches all carry `destinationSubnets` give a chain for those
/// subnets each; the first route without a match, or with an applying match without subnets,
/// is the terminal (default) route.
#[derive(Debug, Default)]
struct TcpRoutes {
    /// `(subnets, weighted clusters)` per route.
    subnets: Vec<(Vec<String>, Clusters)>,
    default: Option<Clusters>,
}

/// Weighted clusters of a tcp_proxy.
type Clusters = Vec<(String, u32)>;

fn tcp_routes(ctx: &Ctx, o: &Object, vs: &VirtualServiceSpec) -> TcpRoutes {
    let mut out = TcpRoutes::default();
    for r in vs.tcp.iter().filter(|r| !r.route.is_empty()) {
        let clusters = weighted(ctx, &o.namespace, &r.route);
        if r.matches.is_empty() {
            out.default = Some(clusters);
            return out;
        }
        let mut subnets = Vec::new();
        for m in r
            .matches
            .iter()
            .filter(|m| l4_applies(ctx, m, &o.namespace))
        {
            if m.destination_subnets.is_empty() {
                out.default = Some(clusters);
                return out;
            }
            subnets.extend(m.destination_subnets.iter().cloned());
        }
        if !subnets.is_empty() {
            out.subnets.push((subnets, clusters));
        }
    }
    out
}

fn prefix_ranges<S: AsRef<str>>(cidrs: &[S]) -> Vec<Value> {
    cidrs
        .iter()
        .map(|c| {
            let c = c.as_ref();
            let (a, l) = c
                .split_once('/')
                .unwrap_or((c, if c.contains(':') { "128" } else { "32" }));
            json!({"address_prefix": a, "prefix_len": l.parse::<u32>().unwrap_or(32)})
        })
        .collect()
}

#[derive(Default)]
struct Plan {
    address: String,
    port: u32,
    chains: Vec<Value>,
    default: Option<Value>,
    tls_inspector: bool,
    http_inspector: bool,
    owner: String,
}

fn plan<'a>(
    plans: &'a mut BTreeMap<String, Plan>,
    node: &Node,
    ip: &str,
    port: u32,
) -> Option<&'a mut Plan> {
    let (name, addr) = match (node.interception, ip) {
        (Interception::None, "0.0.0.0") => (format!("127.0.0.1_{port}"), "127.0.0.1".to_string()),
        (Interception::None, _) => return None,
        _ => (format!("{ip}_{port}"), ip.to_string()),
    };
    Some(plans.entry(name).or_insert_with(|| Plan {
        address: addr,
        port,
        ..Default::default()
    }))
}

/// Builds the sidecar's listeners. `inbound` lists the inbound ports and protocols.
pub fn build_sidecar(
    reg: &Registry,
    node: &Node,
    inbound: &[(u32, Protocol)],
    out: &mut Resources,
) {
    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    let http_ports: Vec<u32> = out
        .routes
        .iter()
        .filter_map(|r| r.name.parse().ok())
        .collect();
    // HTTP (and sniffed) ports first: they own 0.0.0.0_PORT.
    for &port in &http_ports {
        let svcs: Vec<&Service> = reg
            .services
            .iter()
            .filter(|s| reg.sees(s, &node.namespace) && s.ports.iter().any(|p| p.port == port))
            .collect();
        let sniff = svcs.iter().any(|s| {
            s.ports
                .iter()
                .any(|p| p.port == port && p.protocol == Protocol::Unknown)
        });
        let Some(p) = plan(&mut plans, node, "0.0.0.0", port) else {
            continue;
        };
        p.owner = "http".into();
        let h = hcm(
            &format!("outbound_0.0.0.0_{port}"),
            Some(&port.to_string()),
            None,
        );
        if sniff {
            p.http_inspector = true;
            p.chains.push(json!({"name": "http", "filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]}, "filters": [h]}));
            let opaque: Vec<&&Service> = svcs
                .iter()
                .filter(|s| s.resolution != Resolution::Passthrough)
                .collect();
            let target = if opaque.len() == 1 {
                outbound_name(port, "", &opaque[0].hostname)
            } else {
                "PassthroughCluster".into()
            };
            p.default = Some(json!({"name": "tcp", "filters": [tcp_proxy(&[(target, 1)])]}));
        } else {
            p.chains.push(json!({"name": "http", "filters": [h]}));
        }
    }
    // TCP, TLS and opaque service ports.
    for svc in reg.services.iter().filter(|s| reg.sees(s, &node.namespace)) {
        for sp in svc
            .ports
            .iter()
            .filter(|p| !p.protocol.is_http() && p.protocol != Protocol::Unknown)
        {
            let port = sp.port;
            let ctx = Ctx {
                reg,
                node,
                port,
                gateway: None,
            };
            let vs = mesh_vs_for(reg, node, &svc.hostname);
            let mut clusters = vec![(outbound_name(port, "", &svc.hostname), 1)];
            let mut tcp = TcpRoutes::default();
            if let Some((o, v)) = vs {
                tcp = tcp_routes(&ctx, o, v);
                if let Some(c) = tcp.default.clone().filter(|c| !c.is_empty()) {
                    clusters = c;
                }
            }
            let tls = matches!(sp.protocol, Protocol::Tls | Protocol::Https);
            let vips: Vec<&String> = svc.vips.iter().filter(|v| !v.contains('/')).collect();
            let cidrs: Vec<&String> = svc.vips.iter().filter(|v| v.contains('/')).collect();
            if !vips.is_empty() {
                for vip in vips {
                    let Some(p) = plan(&mut plans, node, vip, port) else {
                        continue;
                    };
                    if p.chains.is_empty() && p.default.is_none() {
                        p.owner = svc.hostname.clone();
                        p.default =
                            Some(json!({"name": svc.hostname, "filters": [tcp_proxy(&clusters)]}));
                    }
                }
                continue;
            }
            if svc.resolution == Resolution::Passthrough
                && cidrs.is_empty()
                && !svc.k8s_name.is_empty()
            {
                // A headless Kubernetes service: istiod gives each endpoint (but the proxy's own
                // address) a listener `PODIP_PORT` on the service port, so that connections to
                // a pod go through the service's cluster and routes.
                let ips: std::collections::BTreeSet<&str> = svc
                    .instances
                    .iter()
                    .filter(|i| i.svc_port == port)
                    .map(|i| i.address.as_str())
                    .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                    .filter(|a| node.ip.as_deref() != Some(*a))
                    .collect();
                for ip in ips {
                    let Some(p) = plan(&mut plans, node, ip, port) else {
                        continue;
                    };
                    if p.chains.is_empty() && p.default.is_none() {
                        p.owner = svc.hostname.clone();
                        p.default =
                            Some(json!({"name": svc.hostname, "filters": [tcp_proxy(&clusters)]}));
                    }
                }
                continue;
            }
            if svc.resolution == Resolution::Passthrough && !tls && cidrs.is_empty() {
                // Reached through virtualOutbound's passthrough chain, as istiod leaves it.
                continue;
            }
            let Some(p) = plan(&mut plans, node, "0.0.0.0", port) else {
                continue;
            };
            if p.owner == "http" {
                out.messages.push(Message {
                    level: Level::Warning,
                    origin: Default::default(),
                    resource: format!("service {}", svc.hostname),
                    field: format!("port {port}"),
                    text: "TCP service without a VIP on a port used for HTTP; not reachable through a port listener".into(),
                });
                continue;
            }
            if !cidrs.is_empty() {
                // `destinationSubnets` routes get their own chains; one with exactly the
                // service's ranges replaces the service's chain (istiod).
                let mut own = true;
                for (subnets, cl) in &tcp.subnets {
                    let mut a: Vec<&str> = subnets.iter().map(String::as_str).collect();
                    let mut b: Vec<&str> = cidrs.iter().map(|c| c.as_str()).collect();
                    a.sort();
                    b.sort();
                    own &= a != b;
                    if cl.is_empty() {
                        continue;
                    }
                    let ranges = prefix_ranges(subnets);
                    if p.chains
                        .iter()
                        .any(|c| c["filter_chain_match"]["prefix_ranges"] == json!(ranges))
                    {
                        continue;
                    }
                    p.chains.push(json!({"name": format!("{}|{}", svc.hostname, subnets.join(",")), "filter_chain_match": {"prefix_ranges": ranges}, "filters": [tcp_proxy(cl)]}));
                }
                if own {
                    let ranges = prefix_ranges(&cidrs);
                    p.chains.push(json!({"name": svc.hostname, "filter_chain_match": {"prefix_ranges": ranges}, "filters": [tcp_proxy(&clusters)]}));
                }
            } else if tls {
                p.tls_inspector = true;
                let mut names = vec![svc.hostname.clone()];
                if let Some((o, v)) = vs {
                    for r in &v.tls {
                        for m in r
                            .matches
                            .iter()
                            .filter(|m| m.port.is_none_or(|x| x == port))
                        {
                            let cl = weighted(&ctx, &o.namespace, &r.route);
                            let sni: Vec<String> = m
                                .sni_hosts
                                .iter()
                                .filter(|h| {
                                    !p.chains.iter().any(|c| {
                                        c["filter_chain_match"]["server_names"]
                                            .as_array()
                                            .is_some_and(|a| a.iter().any(|x| x == *h))
                                    })
                                })
                                .cloned()
                                .collect();
                            if !sni.is_empty() && !cl.is_empty() {
                                names.retain(|n| !sni.contains(n));
                                p.chains.push(json!({"name": sni.join(","), "filter_chain_match": {"server_names": sni}, "filters": [tcp_proxy(&cl)]}));
                            }
                        }
                    }
                }
                names.retain(|n| {
                    !p.chains.iter().any(|c| {
                        c["filter_chain_match"]["server_names"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == n))
                    })
                });
                if !names.is_empty() {
                    p.chains.push(json!({"name": svc.hostname, "filter_chain_match": {"server_names": names}, "filters": [tcp_proxy(&clusters)]}));
                }
                p.default.get_or_insert_with(|| json!({"name": "passthrough", "filters": [tcp_proxy(&[(unknown_hosts(reg).into(), 1)])]}));
            } else if p.default.is_none() {
                p.owner = svc.hostname.clone();
                p.default = Some(json!({"name": svc.hostname, "filters": [tcp_proxy(&clusters)]}));
            } else {
                out.messages.push(Message {
                    level: Level::Warning,
                    origin: Default::default(),
                    resource: format!("service {}", svc.hostname),
                    field: format!("port {port}"),
                    text: format!("port {port} without a VIP is already used by {}; this service is not reachable through a port listener", p.owner),
                });
            }
        }
    }
    for (name, p) in plans {
        let mut l = json!({
            "name": name,
            "address": {"socket_address": {"address": p.address, "port_value": p.port}},
            "filter_chains": p.chains,
            "traffic_direction": "OUTBOUND",
        });
        if node.interception == Interception::Redirect {
            l["bind_to_port"] = json!(false);
        }
        if let Some(d) = p.default {
            l["default_filter_chain"] = d;
        }
        let mut lf = Vec::new();
        if p.tls_inspector {
            lf.push(json!({"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}));
        }
        if p.http_inspector {
            lf.push(json!({"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}));
        }
        if !lf.is_empty() {
            l["listener_filters"] = json!(lf);
        }
        push(out, &name, l);
    }
    if node.interception == Interception::Redirect {
        push(
            out,
            "virtualOutbound",
            json!({
                "name": "virtualOutbound",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                "use_original_dst": true,
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
                                   "filters": [tcp_proxy(&[("BlackHoleCluster".into(), 1)])]}],
                "default_filter_chain": {"name": "virtualOutbound-catchall-tcp", "filters": [tcp_proxy(&[(unknown_hosts(reg).into(), 1)])]},
            }),
        );
        push(out, "virtualInbound", virtual_inbound(inbound));
    }
}

/// Where traffic to hosts the mesh does not know goes: PassthroughCluster, or BlackHoleCluster
/// under `outboundTrafficPolicy: REGISTRY_ONLY` (istiod's catch-all chains).
fn unknown_hosts(reg: &Registry) -> &'static str {
    if reg.registry_only() {
        "BlackHoleCluster"
    } else {
        "PassthroughCluster"
    }
}

fn virtual_inbound(inbound: &[(u32, Protocol)]) -> Value {
    let mut chains = Vec::new();
    let mut sniff = false;
    for &(port, proto) in inbound {
        let cluster = format!("inbound|{port}||");
        let rc = json!({"name": cluster, "validate_clusters": false, "virtual_hosts": [{
            "name": format!("inbound|http|{port}"), "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s",
                "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}}]}]});
        let http = hcm(&format!("inbound_0.0.0.0_{port}"), None, Some(rc));
        let tcp = tcp_proxy(&[(cluster.clone(), 1)]);
        match proto {
            p if p.is_http() => chains.push(json!({"name": format!("0.0.0.0_{port}"), "filter_chain_match": {"destination_port": port}, "filters": [http]})),
            Protocol::Unknown => {
                sniff = true;
                chains.push(json!({"name": format!("0.0.0.0_{port}_http"), "filter_chain_match": {"destination_port": port, "application_protocols": ["http/1.1", "h2c"]}, "filters": [http]}));
                chains.push(json!({"name": format!("0.0.0.0_{port}"), "filter_chain_match": {"destination_port": port}, "filters": [tcp]}));
            }
            _ => chains.push(json!({"name": format!("0.0.0.0_{port}"), "filter_chain_match": {"destination_port": port}, "filters": [tcp]})),
        }
    }
    let mut lf = vec![
        json!({"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}),
    ];
    if sniff {
        lf.push(json!({"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}));
    }
    json!({
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "traffic_direction": "INBOUND",
        "listener_filters": lf,
        "filter_chains": chains,
        "default_filter_chain": {"name": "inbound-passthrough", "filters": [tcp_proxy(&[("InboundPassthroughClusterIpv4".into(), 1)])]},
    })
}

fn push(out: &mut Resources, name: &str, v: Value) {
    match pb::<Listener>(name, v) {
        Ok(l) => out.listeners.push(l),
        Err(e) => out.skipped.push(e),
    }
}

/// Calls `f` with the typed config of every network filter of `listeners` (default chains
/// included).
pub fn each_network_filter(
    listeners: &mut [Listener],
    mut f: impl FnMut(&mut envoy_types::pb::google::protobuf::Any),
) {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    for l in listeners {
        let chains = l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut());
        for fc in chains {
            for filter in &mut fc.filters {
                if let Some(ConfigType::TypedConfig(any)) = &mut filter.config_type {
                    f(any);
                }
            }
        }
    }
}

/// Every HTTP connection manager of `listeners` accepts HTTP/1.0 (node metadata `HTTP10`).
pub fn accept_http10(listeners: &mut [Listener]) {
    use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;
    each_network_filter(listeners, |any| {
        if !any.type_url.ends_with(".HttpConnectionManager") {
            return;
        }
        if let Ok(mut h) = HttpConnectionManager::decode(any.value.as_slice()) {
            h.http_protocol_options
                .get_or_insert_with(Http1ProtocolOptions::default)
                .accept_http_10 = true;
            any.value = h.encode_to_vec();
        }
    });
}
