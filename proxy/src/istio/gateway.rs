//! Gateways (role `router`): the Gateways whose selector matches the node's labels, a listener
//! `0.0.0.0_PORT` per server port, and for HTTP servers a route configuration `http.PORT` with a
//! virtual host per host that both a server and a bound VirtualService name. Server hosts are
//! namespace-scoped (`ns/host`, `./host`, `*/host`); VirtualServices bind through `gateways:`
//! (short names resolve in the VirtualService's namespace, or `ns/name`). TLS servers are
//! reported and skipped until Sluice terminates TLS.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use serde_json::{json, Value};

use super::listeners::{hcm, tcp_proxy};
use super::model::{GatewaySpec, Object, Server};
use super::registry::{host_matches, Protocol, Registry};
use super::routes::{dest_cluster, gateway_listed, http_routes, Ctx};
use super::validate::{Level, Message};
use super::{pb, Node, Resources};

/// Splits a server host into its namespace scope (`None` = any) and host.
fn scoped<'a>(h: &'a str, gw_ns: &'a str) -> (Option<&'a str>, &'a str) {
    match h.split_once('/') {
        Some(("*", host)) => (None, host),
        Some((".", host)) => (Some(gw_ns), host),
        Some((ns, host)) => (Some(ns), host),
        None => (None, h),
    }
}

/// The more specific of two host patterns if they overlap.
fn intersect(a: &str, b: &str) -> Option<String> {
    if host_matches(a, b) {
        Some(b.to_string())
    } else if host_matches(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

fn selected(g: &GatewaySpec, node: &Node) -> bool {
    node.labels.is_empty()
        || g.selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Builds gateway listeners and route configurations.
pub fn build(reg: &Registry, node: &Node, out: &mut Resources) {
    let mut by_port: BTreeMap<u32, Vec<(&Object, &Server)>> = BTreeMap::new();
    for (o, g) in reg.gateways().filter(|(_, g)| selected(g, node)) {
        for (i, s) in g.servers.iter().enumerate() {
            let proto = Protocol::parse(&s.port.protocol);
            if matches!(proto, Protocol::Https | Protocol::Tls) {
                out.messages.push(Message::new(
                    Level::Warning,
                    o,
                    format!("spec.servers[{i}]"),
                    format!(
                        "{} servers need TLS, which Sluice does not terminate yet; skipped",
                        s.port.protocol
                    ),
                ));
                continue;
            }
            by_port.entry(s.port.number).or_default().push((o, s));
        }
    }
    for (port, servers) in by_port {
        let http = servers
            .iter()
            .any(|(_, s)| Protocol::parse(&s.port.protocol).is_http());
        let name = format!("0.0.0.0_{port}");
        let filters = if http {
            build_http(reg, node, port, &servers, out);
            vec![hcm(
                &format!("outbound_0.0.0.0_{port}"),
                Some(&format!("http.{port}")),
                None,
            )]
        } else {
            match tcp_for(reg, node, port, &servers) {
                Some(c) => vec![tcp_proxy(&c)],
                None => {
                    let (o, _) = servers[0];
                    out.messages.push(Message::new(
                        Level::Warning,
                        o,
                        "spec.servers",
                        format!("no VirtualService routes TCP port {port}; no listener"),
                    ));
                    continue;
                }
            }
        };
        let l = json!({
            "name": name,
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
            "filter_chains": [{"filters": filters}],
            "traffic_direction": "OUTBOUND",
        });
        match pb::<Listener>(&name, l) {
            Ok(l) => out.listeners.push(l),
            Err(e) => out.skipped.push(e),
        }
    }
}

fn tcp_for(
    reg: &Registry,
    node: &Node,
    port: u32,
    servers: &[(&Object, &Server)],
) -> Option<Vec<(String, u32)>> {
    for (g, _) in servers {
        let gref = format!("{}/{}", g.namespace, g.meta.name);
        for (o, vs) in reg.virtual_services() {
            if !gateway_listed(&vs.gateways, Some(&gref), &o.namespace) {
                continue;
            }
            let ctx = Ctx {
                reg,
                node,
                port,
                gateway: Some(&gref),
            };
            for r in &vs.tcp {
                let ok = r.matches.is_empty()
                    || r.matches
                        .iter()
                        .any(|m| super::listeners::l4_applies(&ctx, m, &o.namespace));
                if ok && !r.route.is_empty() {
                    return Some(
                        r.route
                            .iter()
                            .map(|d| {
                                (
                                    dest_cluster(&ctx, &d.destination, &o.namespace).0,
                                    d.weight.unwrap_or(1).max(1) as u32,
                                )
                            })
                            .collect(),
                    );
                }
            }
        }
    }
    None
}

fn build_http(
    reg: &Registry,
    node: &Node,
    port: u32,
    servers: &[(&Object, &Server)],
    out: &mut Resources,
) {
    // host → routes, in the order hosts were first seen.
    let mut order: Vec<String> = Vec::new();
    let mut vhosts: BTreeMap<String, (Vec<Value>, bool)> = BTreeMap::new();
    for (g, s) in servers {
        let gref = format!("{}/{}", g.namespace, g.meta.name);
        let redirect = s
            .tls
            .as_ref()
            .and_then(|t| t.get("httpsRedirect"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let ctx = Ctx {
            reg,
            node,
            port,
            gateway: Some(&gref),
        };
        for (o, vs) in reg.virtual_services() {
            if !gateway_listed(&vs.gateways, Some(&gref), &o.namespace) {
                continue;
            }
            let mut routes: Option<Vec<Value>> = None;
            for vh in &vs.hosts {
                let vh = reg.resolve(vh, &o.namespace);
                for sh in &s.hosts {
                    let (sns, shost) = scoped(sh, &g.namespace);
                    if sns.is_some_and(|n| n != o.namespace) {
                        continue;
                    }
                    let Some(host) = intersect(shost, &vh) else {
                        continue;
                    };
                    let r = routes
                        .get_or_insert_with(|| http_routes(&ctx, o, vs, &mut out.messages))
                        .clone();
                    if !vhosts.contains_key(&host) {
                        order.push(host.clone());
                    }
                    let e = vhosts.entry(host).or_insert_with(|| (Vec::new(), redirect));
                    e.0.extend(r);
                }
            }
        }
    }
    let mut vh_json: Vec<Value> = order
        .iter()
        .map(|h| {
            let (routes, redirect) = &vhosts[h];
            let domains = if h == "*" { vec![h.clone()] } else { vec![h.clone(), format!("{h}:*")] };
            // Several VirtualServices merge into one host: catch-alls last, as istiod sorts them.
            let routes = super::routes::catch_all_last(routes.clone());
            let mut v = json!({"name": format!("{h}:{port}"), "domains": domains, "routes": routes, "include_request_attempt_count": true});
            if *redirect {
                v["require_tls"] = json!("ALL");
            }
            v
        })
        .collect();
    if vh_json.is_empty() {
        vh_json.push(json!({"name": format!("blackhole:{port}"), "domains": ["*"], "routes": []}));
    }
    let name = format!("http.{port}");
    let rc = json!({"name": name, "virtual_hosts": vh_json, "validate_clusters": false});
    match pb::<RouteConfiguration>(&name, rc) {
        Ok(rc) => out.routes.push(rc),
        Err(e) => out.skipped.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_scoping() {
        assert_eq!(scoped("ns1/a.com", "gw"), (Some("ns1"), "a.com"));
        assert_eq!(scoped("./a.com", "gw"), (Some("gw"), "a.com"));
        assert_eq!(scoped("*/a.com", "gw"), (None, "a.com"));
        assert_eq!(intersect("*", "a.com").as_deref(), Some("a.com"));
        assert_eq!(intersect("*.b.com", "a.b.com").as_deref(), Some("a.b.com"));
        assert_eq!(intersect("a.com", "b.com"), None);
    }
}
