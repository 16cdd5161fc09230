//! Clusters and endpoints as istiod names and shapes them: `outbound|PORT|SUBSET|HOST` (EDS for
//! known instances, STRICT_DNS/LOGICAL_DNS for DNS resolution, ORIGINAL_DST for passthrough),
//! `inbound|PORT||`, BlackHoleCluster, PassthroughCluster and InboundPassthroughClusterIpv4.
//! DestinationRule traffic policies (top, port and subset level) map onto each cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use serde_json::{json, Value};

use super::model::{ConnectionPool, LoadBalancer, OutlierDetection, TrafficPolicy};
use super::registry::{Instance, Protocol, Registry, Resolution, Service, SvcPort};
use super::validate::parse_duration;
use super::{pb, Node, Resources};

/// `outbound|PORT|SUBSET|HOST`.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// A duration in protobuf JSON form.
pub fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{s:.9}s")
    }
}

fn dur_str(s: &Option<String>) -> Option<String> {
    s.as_deref().and_then(parse_duration).map(dur)
}

/// The policy pieces that apply to one cluster, after merging levels.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub lb: Option<LoadBalancer>,
    pub pool: Option<ConnectionPool>,
    pub outlier: Option<OutlierDetection>,
}

impl Policy {
    /// `tp` for `port`: its port-level settings override the top level.
    fn overlay(mut self, tp: Option<&TrafficPolicy>, port: u32) -> Policy {
        let Some(tp) = tp else { return self };
        if tp.load_balancer.is_some() {
            self.lb = tp.load_balancer.clone();
        }
        if tp.connection_pool.is_some() {
            self.pool = tp.connection_pool.clone();
        }
        if tp.outlier_detection.is_some() {
            self.outlier = tp.outlier_detection.clone();
        }
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port))
        {
            if pl.load_balancer.is_some() {
                self.lb = pl.load_balancer.clone();
            }
            if pl.connection_pool.is_some() {
                self.pool = pl.connection_pool.clone();
            }
            if pl.outlier_detection.is_some() {
                self.outlier = pl.outlier_detection.clone();
            }
        }
        self
    }
}

/// The merged policy for `host:port` (and `subset`) as seen from `node`.
pub fn policy_for(reg: &Registry, host: &str, port: u32, subset: &str, node: &Node) -> Policy {
    let Some((_, dr)) = reg.destination_rule(host, &node.namespace, &node.labels) else {
        return Policy::default();
    };
    let p = Policy::default().overlay(dr.traffic_policy.as_ref(), port);
    match dr.subsets.iter().find(|s| s.name == subset) {
        Some(s) => p.overlay(s.traffic_policy.as_ref(), port),
        None => p,
    }
}

fn apply_policy(c: &mut Value, p: &Policy, proto: Protocol) {
    let mut passthrough = false;
    if let Some(lb) = &p.lb {
        if let Some(ch) = &lb.consistent_hash {
            if let Some(m) = &ch.maglev {
                c["lb_policy"] = json!("MAGLEV");
                if let Some(t) = m.table_size {
                    c["maglev_lb_config"] = json!({"table_size": t});
                }
            } else {
                c["lb_policy"] = json!("RING_HASH");
                let min = ch
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .unwrap_or(1024);
                c["ring_hash_lb_config"] = json!({"minimum_ring_size": min});
            }
        } else {
            match lb.simple.as_deref() {
                Some("ROUND_ROBIN") => c["lb_policy"] = json!("ROUND_ROBIN"),
                Some("RANDOM") => c["lb_policy"] = json!("RANDOM"),
                Some("PASSTHROUGH") => passthrough = true,
                _ => {}
            }
        }
    }
    if passthrough {
        c["type"] = json!("ORIGINAL_DST");
        c["lb_policy"] = json!("CLUSTER_PROVIDED");
        if let Some(o) = c.as_object_mut() {
            o.remove("eds_cluster_config");
            o.remove("load_assignment");
        }
    }
    let mut th = json!({
        "max_connections": 4294967295u32,
        "max_pending_requests": 4294967295u32,
        "max_requests": 4294967295u32,
        "max_retries": 4294967295u32,
    });
    let mut hpo = json!({});
    if let Some(pool) = &p.pool {
        if let Some(t) = &pool.tcp {
            if let Some(m) = t.max_connections {
                th["max_connections"] = json!(m);
            }
            if let Some(d) = dur_str(&t.connect_timeout) {
                c["connect_timeout"] = json!(d);
            }
            // As istiod: whole seconds; an empty tcpKeepalive still turns SO_KEEPALIVE on.
            if let Some(k) = &t.tcp_keepalive {
                let secs = |d: &Option<String>| {
                    d.as_deref()
                        .and_then(parse_duration)
                        .map(|d| d.as_secs().min(u32::MAX as u64))
                };
                let mut ka = json!({});
                if let Some(p) = k.probes.filter(|p| *p > 0) {
                    ka["keepalive_probes"] = json!(p);
                }
                if let Some(t) = secs(&k.time) {
                    ka["keepalive_time"] = json!(t);
                }
                if let Some(i) = secs(&k.interval) {
                    ka["keepalive_interval"] = json!(i);
                }
                c["upstream_connection_options"] = json!({ "tcp_keepalive": ka });
            }
        }
        if let Some(h) = &pool.http {
            if let Some(v) = h.http1_max_pending_requests {
                th["max_pending_requests"] = json!(v);
            }
            if let Some(v) = h.http2_max_requests {
                th["max_requests"] = json!(v);
            }
            if let Some(v) = h.max_retries {
                th["max_retries"] = json!(v);
            }
            if let Some(v) = h.max_requests_per_connection {
                hpo["common_http_protocol_options"]["max_requests_per_connection"] = json!(v);
            }
            if let Some(d) = dur_str(&h.idle_timeout) {
                hpo["common_http_protocol_options"]["idle_timeout"] = json!(d);
            }
        }
    }
    c["circuit_breakers"] = json!({"thresholds": [th]});
    if matches!(proto, Protocol::Http2 | Protocol::Grpc) {
        hpo["explicit_http_config"] = json!({"http2_protocol_options": {}});
    }
    if hpo.as_object().is_some_and(|o| !o.is_empty()) {
        if hpo.get("explicit_http_config").is_none() {
            hpo["explicit_http_config"] = json!({"http_protocol_options": {}});
        }
        hpo["@type"] =
            json!("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
        c["typed_extension_protocol_options"] =
            json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": hpo});
    }
    if let Some(od) = &p.outlier {
        let mut o = json!({});
        if let Some(v) = od.consecutive_5xx_errors.or(od.consecutive_errors) {
            o["consecutive_5xx"] = json!(v);
            o["enforcing_consecutive_5xx"] = json!(100);
        } else {
            o["enforcing_consecutive_5xx"] = json!(0);
        }
        if let Some(v) = od.consecutive_gateway_errors {
            o["consecutive_gateway_failure"] = json!(v);
            o["enforcing_consecutive_gateway_failure"] = json!(100);
        }
        if let Some(d) = dur_str(&od.interval) {
            o["interval"] = json!(d);
        }
        if let Some(d) = dur_str(&od.base_ejection_time) {
            o["base_ejection_time"] = json!(d);
        }
        if let Some(v) = od.max_ejection_percent {
            o["max_ejection_percent"] = json!(v);
        }
        o["enforcing_success_rate"] = json!(0);
        c["outlier_detection"] = o;
        // istiod always sets it: minHealthPercent defaults to 0, which turns panic mode off.
        c["common_lb_config"]["healthy_panic_threshold"] =
            json!({"value": od.min_health_percent.unwrap_or(0)});
    }
}

fn lb_endpoint(i: &Instance) -> Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in &i.labels {
        labels.insert(k.clone(), json!(v));
    }
    json!({
        "endpoint": {"address": {"socket_address": {"address": i.address, "port_value": i.port}}},
        "load_balancing_weight": i.weight,
        "metadata": {"filter_metadata": {"istio": {"labels": labels}}},
    })
}

/// A ClusterLoadAssignment with the instances, grouped by locality as istiod does.
pub fn load_assignment(name: &str, instances: &[&Instance]) -> Value {
    let mut by_loc: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for i in instances {
        by_loc
            .entry(i.locality.clone().unwrap_or_default())
            .or_default()
            .push(lb_endpoint(i));
    }
    let endpoints: Vec<Value> = by_loc
        .into_iter()
        .map(|(loc, eps)| {
            let mut parts = loc.splitn(3, '/');
            let w: usize = eps.len();
            json!({
                "locality": {"region": parts.next().unwrap_or(""), "zone": parts.next().unwrap_or(""), "sub_zone": parts.next().unwrap_or("")},
                "lb_endpoints": eps,
                "load_balancing_weight": w,
            })
        })
        .collect();
    json!({"cluster_name": name, "endpoints": endpoints})
}

/// Builds the outbound cluster (and its endpoints when EDS) for one service port and subset.
fn outbound(
    out: &mut Resources,
    node: &Node,
    svc: &Service,
    port: &SvcPort,
    subset: &str,
    labels: &BTreeMap<String, String>,
    policy: &Policy,
) {
    let name = outbound_name(port.port, subset, &svc.hostname);
    let instances: Vec<&Instance> = svc
        .instances
        .iter()
        .filter(|i| i.svc_port == port.port)
        .filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
        .collect();
    let mut c = json!({
        "name": name,
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {},
        "metadata": {"filter_metadata": {"istio": {
            "default_original_port": port.port,
            "services": [{"host": svc.hostname, "name": if svc.k8s_name.is_empty() { &svc.hostname } else { &svc.k8s_name }, "namespace": svc.namespace}],
            "subset": subset,
        }}},
    });
    let mut eds = false;
    match svc.resolution {
        Resolution::ClientSideLb => {
            c["type"] = json!("EDS");
            c["eds_cluster_config"] = json!({"service_name": name, "eds_config": {"ads": {}, "resource_api_version": "V3"}});
            eds = true;
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            c["type"] = json!(if svc.resolution == Resolution::Dns {
                "STRICT_DNS"
            } else {
                "LOGICAL_DNS"
            });
            c["dns_lookup_family"] = json!("V4_ONLY");
            c["dns_refresh_rate"] = json!("60s");
            c["load_assignment"] = load_assignment(&name, &instances);
        }
        Resolution::Passthrough => {
            c["type"] = json!("ORIGINAL_DST");
            c["lb_policy"] = json!("CLUSTER_PROVIDED");
        }
    }
    if matches!(svc.resolution, Resolution::Dns | Resolution::DnsRoundRobin) && instances.is_empty()
    {
        // Envoy rejects DNS clusters without hosts; istiod does not generate them.
        out.skipped
            .push(format!("{name}: DNS cluster without endpoints"));
        return;
    }
    apply_policy(&mut c, policy, port.protocol);
    let eds = eds && c["type"] == "EDS";
    match pb::<Cluster>(&name, c) {
        Ok(cl) => out.clusters.push(cl),
        Err(e) => {
            out.skipped.push(e);
            return;
        }
    }
    if eds {
        match pb::<ClusterLoadAssignment>(&name, load_assignment(&name, &instances)) {
            Ok(la) => out.endpoints.push(la),
            Err(e) => out.skipped.push(e),
        }
    }
    let _ = node;
}

/// All outbound clusters visible to the node, plus the fixed ones.
pub fn build_outbound(reg: &Registry, node: &Node, out: &mut Resources) {
    for svc in reg.services.iter().filter(|s| reg.sees(s, &node.namespace)) {
        for port in &svc.ports {
            let policy = policy_for(reg, &svc.hostname, port.port, "", node);
            outbound(out, node, svc, port, "", &BTreeMap::new(), &policy);
            if let Some((_, dr)) =
                reg.destination_rule(&svc.hostname, &node.namespace, &node.labels)
            {
                for s in &dr.subsets {
                    let p = policy_for(reg, &svc.hostname, port.port, &s.name, node);
                    outbound(out, node, svc, port, &s.name, &s.labels, &p);
                }
            }
        }
    }
    let fixed = [
        json!({"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s",
               "load_assignment": {"cluster_name": "BlackHoleCluster"}}),
        json!({"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
               "lb_policy": "CLUSTER_PROVIDED",
               "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32, "max_requests": 4294967295u32, "max_retries": 4294967295u32}]}}),
    ];
    for c in fixed {
        let name = c["name"].as_str().unwrap_or("").to_string();
        match pb::<Cluster>(&name, c) {
            Ok(c) => out.clusters.push(c),
            Err(e) => out.skipped.push(e),
        }
    }
}

/// Inbound clusters `inbound|PORT||` for the services selecting this workload, and
/// InboundPassthroughClusterIpv4. Returns `(port, protocol)` per inbound port.
pub fn build_inbound(reg: &Registry, node: &Node, out: &mut Resources) -> Vec<(u32, Protocol)> {
    let mut ports: BTreeMap<u32, Protocol> = BTreeMap::new();
    for svc in &reg.services {
        let Some(sel) = &svc.selector else { continue };
        if svc.namespace != node.namespace
            || node.labels.is_empty()
            || !sel.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        {
            continue;
        }
        for p in &svc.ports {
            let t = svc.target_ports.get(&p.port).copied().unwrap_or(p.port);
            ports.entry(t).or_insert(p.protocol);
        }
    }
    for &port in ports.keys() {
        let name = format!("inbound|{port}||");
        let c = json!({
            "name": name, "type": "STATIC", "connect_timeout": "10s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
            "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32, "max_requests": 4294967295u32, "max_retries": 4294967295u32}]},
            "metadata": {"filter_metadata": {"istio": {"services": []}}},
        });
        match pb::<Cluster>(&name, c) {
            Ok(c) => out.clusters.push(c),
            Err(e) => out.skipped.push(e),
        }
    }
    let c = json!({"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST",
                   "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED"});
    match pb::<Cluster>("InboundPassthroughClusterIpv4", c) {
        Ok(c) => out.clusters.push(c),
        Err(e) => out.skipped.push(e),
    }
    ports.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(dur(Duration::from_secs(7)), "7s");
        assert_eq!(dur(Duration::from_millis(8)), "0.008000000s");
    }
}
