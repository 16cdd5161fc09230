//! Real istiod output: every Listener, Cluster, RouteConfiguration and ClusterLoadAssignment in
//! `../shared/conformance/istio-configdump/*.json` (static and dynamic entries of Envoy config
//! dumps istiod generated) is served to Sluice through the fake ADS server, one proxy per dump.
//! Each resource must be ACKed or NACKed with exactly the reason listed in `EXPECTED_REJECTS`;
//! then requests are sent through every route (inline and RDS, via the dump's own bound
//! listeners and via probe listeners) and must reach the cluster the route names.
//!
//! Addresses in the dumps are never contacted: every socket address is rewritten before
//! anything is sent — listeners to 127.0.0.1:0, endpoints to a local test upstream named
//! after its cluster.

mod support;
mod xds_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use serde_json::{json, Value};
use sluice::config::proto::decode_json_value;
use support::{upstream, Behaviour};
use xds_support::*;

/// What Sluice refuses in these dumps, and why: (file, type, resource name, reason substring).
/// Everything else must be accepted.
const EXPECTED_REJECTS: &[(&str, &str, &str, &str)] = &[
    // Ambient waypoint plumbing: Envoy-internal listeners and the clusters/endpoints reaching
    // them (internal_upstream transport, envoy_internal_address endpoints).
    (
        "proxyconfig__config_dump.json",
        "Cluster",
        "inbound-vip|8000|http|httpbin.default.svc.cluster.local",
        "transport_socket: transport socket internal_upstream is not supported yet",
    ),
    (
        "proxyconfig__config_dump.json",
        "ClusterLoadAssignment",
        "inbound-vip|8100|http|httpbin.default.svc.cluster.local",
        "endpoint.address: internal addresses are not supported",
    ),
    (
        "proxyconfig__config_dump.json",
        "Listener",
        "main_internal",
        "internal_listener: internal listeners",
    ),
    (
        "writer__compare__configdump.json",
        "Cluster",
        "inbound-vip|9080|http|ratings.default.svc.cluster.local",
        "transport_socket: transport socket internal_upstream is not supported yet",
    ),
    (
        "writer__compare__configdump.json",
        "Listener",
        "main_internal",
        "internal_listener: internal listeners",
    ),
    (
        "writer__compare__configdump.json",
        "Listener",
        "connect_originate",
        "internal_listener: internal listeners",
    ),
    // HBONE termination: mTLS on the downstream.
    (
        "writer__compare__configdump.json",
        "Listener",
        "connect_terminate",
        "filter_chains[0].transport_socket: transport socket tls is not supported yet",
    ),
    // istio-agent's xDS and SDS proxies over unix sockets.
    (
        "writer__envoy__configdump__endpoint__configdump.json",
        "ClusterLoadAssignment",
        "sds-grpc",
        "unix pipe addresses are not supported",
    ),
    (
        "writer__envoy__configdump__endpoint__configdump.json",
        "ClusterLoadAssignment",
        "xds-grpc",
        "unix pipe addresses are not supported",
    ),
];

fn dump_dir() -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/istio-configdump");
    assert!(
        d.is_dir(),
        "istiod config dumps missing at {} (see shared/conformance/README.md)",
        d.display()
    );
    d
}

/// The resources of one dump, as JSON (addresses not yet rewritten).
#[derive(Default, Debug)]
struct Extracted {
    clusters: Vec<Value>,
    endpoints: Vec<Value>,
    listeners: Vec<Value>,
    routes: Vec<Value>,
    /// Resource kinds present in the dump that xDS-over-ADS here does not carry (secrets...).
    skipped: Vec<String>,
}

fn extract(dump: &Value) -> Extracted {
    let mut x = Extracted::default();
    let configs = dump["configs"].as_array().expect("configs");
    for c in configs {
        let t = c["@type"].as_str().unwrap_or("");
        let items = |k: &str| c[k].as_array().cloned().unwrap_or_default();
        match t.rsplit('.').next().unwrap_or("") {
            "ClustersConfigDump" => {
                for k in [
                    "static_clusters",
                    "dynamic_active_clusters",
                    "dynamic_warming_clusters",
                ] {
                    x.clusters
                        .extend(items(k).into_iter().map(|e| e["cluster"].clone()));
                }
            }
            "EndpointsConfigDump" => {
                for k in ["static_endpoint_configs", "dynamic_endpoint_configs"] {
                    x.endpoints
                        .extend(items(k).into_iter().map(|e| e["endpoint_config"].clone()));
                }
            }
            "ListenersConfigDump" => {
                x.listeners.extend(
                    items("static_listeners")
                        .into_iter()
                        .map(|e| e["listener"].clone()),
                );
                for e in items("dynamic_listeners") {
                    for state in ["active_state", "warming_state"] {
                        if !e[state].is_null() {
                            x.listeners.push(e[state]["listener"].clone());
                        }
                    }
                }
            }
            "RoutesConfigDump" => {
                for k in ["static_route_configs", "dynamic_route_configs"] {
                    x.routes
                        .extend(items(k).into_iter().map(|e| e["route_config"].clone()));
                }
            }
            "BootstrapConfigDump" => {} // its static resources are in the other dumps
            other => {
                let n: usize = c
                    .as_object()
                    .map(|o| o.values().filter_map(|v| v.as_array()).map(Vec::len).sum())
                    .unwrap_or(0);
                if n > 0 {
                    x.skipped.push(format!("{other} ({n} entries)"));
                }
            }
        }
    }
    x
}

/// Rewrites every `socket_address` under `v` with `f(old address, old port)`.
fn rewrite(v: &mut Value, f: &mut dyn FnMut() -> SocketAddr) {
    match v {
        Value::Object(m) => {
            if let Some(sa) = m.get_mut("socket_address") {
                let a = f();
                *sa = json!({"address": a.ip().to_string(), "port_value": a.port()});
            }
            for (k, x) in m.iter_mut() {
                if k != "socket_address" {
                    rewrite(x, f);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, f)),
        _ => {}
    }
}

/// Inline route configurations of a listener's HTTP connection managers.
fn inline_routes(l: &Value, out: &mut Vec<Value>) {
    match l {
        Value::Object(m) => {
            if let Some(rc) = m.get("route_config") {
                out.push(rc.clone());
            }
            m.values().for_each(|x| inline_routes(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| inline_routes(x, out)),
        _ => {}
    }
}

/// Test upstreams, one per cluster name, each answering `name=<cluster>`.
#[derive(Default)]
struct Upstreams(BTreeMap<String, SocketAddr>);

impl Upstreams {
    async fn get(&mut self, cluster: &str) -> SocketAddr {
        if let Some(a) = self.0.get(cluster) {
            return *a;
        }
        let name: &'static str = Box::leak(cluster.to_string().into_boxed_str());
        let u = upstream(name, Behaviour::Echo).await;
        self.0.insert(cluster.to_string(), u.addr);
        u.addr
    }
}

/// Splits a NACK's error_detail (`name: reason` lines; reasons may span lines) by resource.
fn parse_nack(detail: &str, names: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in detail.lines() {
        let hit = names
            .iter()
            .filter(|n| line.starts_with(&format!("{n}: ")))
            .max_by_key(|n| n.len());
        match hit {
            Some(n) => {
                out.insert(n.clone(), line[n.len() + 2..].to_string());
                current = Some(n.clone());
            }
            None => {
                if let Some(c) = &current {
                    let r = out.get_mut(c).unwrap();
                    r.push('\n');
                    r.push_str(line);
                }
            }
        }
    }
    out
}

/// A route worth probing: (route config, host, path, cluster).
fn probes(rc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
        let domain = vh["domains"]
            .as_array()
            .and_then(|d| d.first())
            .and_then(Value::as_str)
            .unwrap_or("*");
        let host = domain.replace('*', "probe");
        for r in vh["routes"].as_array().into_iter().flatten() {
            let m = &r["match"];
            let path = m["prefix"].as_str().or(m["path"].as_str());
            let cluster = r["route"]["cluster"].as_str();
            let simple = m.get("headers").is_none() && m.get("query_parameters").is_none();
            if let (Some(p), Some(c), true) = (path, cluster, simple) {
                let p = if p.is_empty() { "/" } else { p };
                out.push((host.clone(), p.to_string(), c.to_string()));
            }
        }
    }
    out
}

#[derive(Debug, Default)]
struct Verdicts {
    /// (type, name) → None accepted, Some(reason) rejected.
    all: BTreeMap<(String, String), Option<String>>,
}

async fn serve_dump(file: &str, dump: &Value) -> (Verdicts, usize) {
    let x = extract(dump);
    let mut ups = Upstreams::default();
    let mut v = Verdicts::default();
    for s in &x.skipped {
        println!("{file}: not served over ADS here: {s}");
    }

    // Name unnamed static resources the way Envoy would need them named on the wire.
    let mut listeners = x.listeners.clone();
    for (i, l) in listeners.iter_mut().enumerate() {
        if l["name"].as_str().unwrap_or("").is_empty() {
            l["name"] = json!(format!("static_listener_{i}"));
        }
        let mut any_port = || SocketAddr::from(([127, 0, 0, 1], 0));
        rewrite(l, &mut any_port);
    }
    let mut routes = x.routes.clone();
    for (i, r) in routes.iter_mut().enumerate() {
        if r["name"].as_str().unwrap_or("").is_empty() {
            r["name"] = json!(format!("static_route_{i}"));
        }
    }
    // Every route configuration, top-level or inline, gets probed through its own listener.
    let mut probe_rcs: Vec<Value> = routes.clone();
    for l in &listeners {
        inline_routes(l, &mut probe_rcs);
    }
    for (i, rc) in probe_rcs.iter_mut().enumerate() {
        rc["name"] = json!(format!("probe_{i}"));
    }

    let mut clusters = Vec::new();
    let mut cluster_names = BTreeSet::new();
    for c in &x.clusters {
        let mut c = c.clone();
        let name = c["name"].as_str().unwrap_or("").to_string();
        let addr = ups.get(&name).await;
        rewrite(&mut c, &mut || addr);
        cluster_names.insert(name);
        clusters.push(c);
    }
    // Clusters the routes name that this dump does not define: static test clusters (synthetic).
    let mut synthetic = BTreeSet::new();
    for rc in &probe_rcs {
        for (_, _, c) in probes(rc) {
            if !cluster_names.contains(&c) && synthetic.insert(c.clone()) {
                let addr = ups.get(&c).await;
                clusters.push(
                    serde_json::to_value(sluice::config::proto::to_json(&static_cluster(&c, addr)))
                        .unwrap(),
                );
            }
        }
    }
    let mut endpoints = Vec::new();
    for e in &x.endpoints {
        let mut e = e.clone();
        let addr = ups.get(e["cluster_name"].as_str().unwrap_or("")).await;
        rewrite(&mut e, &mut || addr);
        endpoints.push(e);
    }

    let clusters: Vec<Cluster> = clusters
        .iter()
        .map(|j| {
            decode_json_value(j.clone())
                .unwrap_or_else(|e| panic!("{file}: cluster does not decode: {e}"))
        })
        .collect();
    let endpoints: Vec<ClusterLoadAssignment> = endpoints
        .iter()
        .map(|j| {
            decode_json_value(j.clone())
                .unwrap_or_else(|e| panic!("{file}: endpoints do not decode: {e}"))
        })
        .collect();
    let mut lds: Vec<Listener> = listeners
        .iter()
        .map(|j| {
            decode_json_value(j.clone())
                .unwrap_or_else(|e| panic!("{file}: listener does not decode: {e}"))
        })
        .collect();
    let mut rds: Vec<RouteConfiguration> = routes
        .iter()
        .chain(probe_rcs.iter())
        .map(|j| {
            decode_json_value(j.clone())
                .unwrap_or_else(|e| panic!("{file}: route config does not decode: {e}"))
        })
        .collect();
    for i in 0..probe_rcs.len() {
        lds.push(rds_listener(
            &format!("probe_listener_{i}"),
            0,
            &format!("probe_{i}"),
        ));
    }
    // Route configurations named twice in one dump (static and inline copies) go once.
    let mut seen = BTreeSet::new();
    rds.retain(|r| seen.insert(r.name.clone()));

    let env = start(false, Duration::from_secs(600)).await;
    env.ads.next_sotw(CDS).await;
    let mut nonce = 0;
    let mut serve =
        |t: &'static str, names: Vec<String>, res: Vec<envoy_types::pb::google::protobuf::Any>| {
            nonce += 1;
            let n = format!("n{nonce}");
            let ads = &env.ads;
            async move {
                let r = respond(ads, t, "istiod", &n, res).await;
                let set: BTreeSet<String> = names.iter().cloned().collect();
                let rejected = r
                    .error_detail
                    .map(|d| parse_nack(&d.message, &set))
                    .unwrap_or_default();
                (t, names, rejected)
            }
        };
    let mut results = Vec::new();
    results.push(
        serve(
            CDS,
            clusters.iter().map(|c| c.name.clone()).collect(),
            anys(clusters.clone()),
        )
        .await,
    );
    results.push(
        serve(
            EDS,
            endpoints.iter().map(|c| c.cluster_name.clone()).collect(),
            anys(endpoints.clone()),
        )
        .await,
    );
    results.push(
        serve(
            LDS,
            lds.iter().map(|c| c.name.clone()).collect(),
            anys(lds.clone()),
        )
        .await,
    );
    results.push(
        serve(
            RDS,
            rds.iter().map(|c| c.name.clone()).collect(),
            anys(rds.clone()),
        )
        .await,
    );
    for (t, names, rejected) in results {
        let kind = t.rsplit('.').next().unwrap().to_string();
        for n in names {
            if (t == CDS && synthetic.contains(&n)) || n.starts_with("probe_") {
                assert!(
                    !rejected.contains_key(&n),
                    "{file}: test resource {n} rejected: {:?}",
                    rejected.get(&n)
                );
                continue;
            }
            v.all
                .insert((kind.clone(), n.clone()), rejected.get(&n).cloned());
        }
    }

    // Traffic: through the dump's own bound listeners (inline routes) and every probe listener.
    let snap = env.app.state.load_full();
    let accepted_cluster = |c: &str| snap.cluster(c).is_some();
    let mut sent = 0;
    let check = |addr: SocketAddr, host: String, path: String, cluster: String| {
        let ok = accepted_cluster(&cluster);
        async move {
            let mut c = support::H1::connect(addr).await;
            let got = c.get(&host, &path).await;
            if ok {
                assert_eq!(
                    (got.status, got.field("name")),
                    (200, Some(cluster.as_str())),
                    "{file}: {host}{path} should reach {cluster}: {}",
                    got.body
                );
            } else {
                assert_eq!(
                    got.status, 503,
                    "{file}: {host}{path} names rejected cluster {cluster}"
                );
            }
        }
    };
    for (i, rc) in probe_rcs.iter().enumerate() {
        let Some(addr) = env.app.listener_address(&format!("probe_listener_{i}")) else {
            panic!("{file}: probe listener {i} not bound");
        };
        for (host, path, cluster) in probes(rc) {
            check(addr, host, path, cluster).await;
            sent += 1;
        }
    }
    for l in &listeners {
        let name = l["name"].as_str().unwrap();
        let (Some(addr), Some(_)) = (env.app.listener_address(name), snap.listeners.get(name))
        else {
            continue;
        };
        let mut rcs = Vec::new();
        inline_routes(l, &mut rcs);
        for rc in &rcs {
            for (host, path, cluster) in probes(rc) {
                check(addr, host, path, cluster).await;
                sent += 1;
            }
        }
    }
    (v, sent)
}

/// Every filter a listener uses: (kind, name, config type).
fn filters(v: &Value, out: &mut BTreeSet<(String, String, String)>) {
    match v {
        Value::Object(m) => {
            for (kind, key) in [
                ("listener filter", "listener_filters"),
                ("network filter", "filters"),
                ("http filter", "http_filters"),
            ] {
                for f in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                    let t = f["typed_config"]["@type"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("");
                    let inner = f["typed_config"]["type_url"].as_str().unwrap_or("");
                    let t = if inner.is_empty() {
                        t.to_string()
                    } else {
                        format!("{t} of {inner}")
                    };
                    out.insert((kind.into(), f["name"].as_str().unwrap_or("").into(), t));
                }
            }
            m.values().for_each(|x| filters(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| filters(x, out)),
        _ => {}
    }
}

/// What a rejected listener would run into next, were its first problem solved (internal
/// listener given a socket address, downstream TLS dropped): shows every unsupported piece.
fn beyond_first_problem(l: &Value) -> Result<(), String> {
    let mut l = l.clone();
    let o = l.as_object_mut().unwrap();
    o.remove("internal_listener");
    o.insert(
        "address".into(),
        json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}}),
    );
    for fc in o
        .get_mut("filter_chains")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        fc.as_object_mut().unwrap().remove("transport_socket");
    }
    let l: Listener = decode_json_value(l).map_err(|e| e.to_string())?;
    sluice::model::listener::Listener::from_proto(&l)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn filter_inventory_of_the_dumps() {
    let mut all = BTreeSet::new();
    for e in std::fs::read_dir(dump_dir()).unwrap() {
        let p = e.unwrap().path();
        let dump: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        filters(&dump, &mut all);
        for l in extract(&dump).listeners {
            if l["name"].is_string()
                && sluice::model::listener::Listener::from_proto(
                    &decode_json_value::<Listener>(l.clone()).unwrap(),
                )
                .is_err()
            {
                println!(
                    "{}: listener {}: beyond its first problem: {:?}",
                    p.file_name().unwrap().to_string_lossy(),
                    l["name"],
                    beyond_first_problem(&l)
                );
            }
        }
    }
    for (kind, name, t) in &all {
        println!("{kind}: {name} ({t})");
    }
    assert!(!all.is_empty());
}

#[tokio::test]
async fn istiod_config_dumps_are_accepted_or_rejected_by_name_and_route_as_named() {
    let dir = dump_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dumps in {}", dir.display());
    let mut report = Vec::new();
    let mut total_sent = 0;
    for f in &files {
        let file = f.file_name().unwrap().to_string_lossy().to_string();
        let dump: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let (v, sent) = serve_dump(&file, &dump).await;
        total_sent += sent;
        for ((t, n), r) in v.all {
            report.push((file.clone(), t, n, r));
        }
    }
    let (mut accepted, mut rejected) = (0, 0);
    let mut unexpected = Vec::new();
    for (file, t, n, r) in &report {
        match r {
            None => {
                accepted += 1;
                println!("ACCEPT {file} {t} {n}");
            }
            Some(reason) => {
                rejected += 1;
                println!("REJECT {file} {t} {n}: {reason}");
                if !EXPECTED_REJECTS
                    .iter()
                    .any(|(f, et, en, er)| f == file && t == et && n == en && reason.contains(er))
                {
                    unexpected.push(format!("{file} {t} {n}: {reason}"));
                }
            }
        }
    }
    for (f, t, n, _) in EXPECTED_REJECTS {
        assert!(
            report
                .iter()
                .any(|(rf, rt, rn, r)| rf == f && rt == t && rn == n && r.is_some()),
            "expected rejection did not happen: {f} {t} {n}"
        );
    }
    println!("{accepted} accepted, {rejected} rejected, {total_sent} requests routed");
    assert!(
        unexpected.is_empty(),
        "unexpected rejections:\n{}",
        unexpected.join("\n")
    );
    assert!(total_sent > 0);
}
