//! The service registry istiod would build: services (Kubernetes Services and ServiceEntry hosts)
//! with their hostnames, VIPs, ports and protocols, and their instances (from Endpoints,
//! EndpointSlices, Pods, WorkloadEntries and ServiceEntry endpoints), plus lookups by host,
//! short name, subset and gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::model::{
    DestinationRuleSpec, GatewaySpec, IntOrString, Kind, Object, ServicePort, Subset,
    VirtualServiceSpec, WorkloadEntrySpec,
};
use super::validate::{Level, Message};

/// The cluster domain suffix.
pub const DOMAIN: &str = "svc.cluster.local";

/// A port's application protocol, as Istio selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
    Https,
    /// Opaque protocols Istio knows (Mongo, Redis, MySQL): TCP proxying.
    Opaque,
    /// Nothing said: protocol sniffing.
    Unknown,
}

impl Protocol {
    /// From an Istio protocol name or a Kubernetes port name prefix / appProtocol.
    pub fn parse(s: &str) -> Protocol {
        let p = s.split('-').next().unwrap_or("").to_ascii_lowercase();
        match p.as_str() {
            "http" | "http1" | "websocket" => Protocol::Http,
            "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" | "grpc_web" => Protocol::Grpc,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "https" => Protocol::Https,
            "mongo" | "redis" | "mysql" | "udp" => Protocol::Opaque,
            _ => Protocol::Unknown,
        }
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// How a service's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Known instances, served by EDS.
    ClientSideLb,
    Dns,
    DnsRoundRobin,
    /// Connect where the client connected (ORIGINAL_DST).
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPort {
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub address: String,
    pub port: u32,
    pub svc_port: u32,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub locality: Option<String>,
}

/// A service as istiod sees it (one per Kubernetes Service, one per ServiceEntry host).
#[derive(Debug, Clone)]
pub struct Service {
    pub hostname: String,
    pub namespace: String,
    /// The Kubernetes Service name (for short names); empty for ServiceEntry hosts.
    pub k8s_name: String,
    pub vips: Vec<String>,
    pub ports: Vec<SvcPort>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub export_to: Vec<String>,
    pub instances: Vec<Instance>,
    /// Pod labels that select this service's workloads (inbound side).
    pub selector: Option<BTreeMap<String, String>>,
    /// `targetPort` per service port, for inbound clusters.
    pub target_ports: BTreeMap<u32, u32>,
}

impl Service {
    /// Whether a proxy in `ns` may see this service (`exportTo`).
    pub fn visible_from(&self, ns: &str) -> bool {
        visible(&self.export_to, &self.namespace, ns)
    }
}

/// `exportTo` semantics: empty or `*` is everywhere, `.` the own namespace, else listed ones.
pub fn visible(export_to: &[String], own: &str, from: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && own == from) || e == from)
}

/// Everything translation looks up.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub services: Vec<Service>,
    pub objects: Vec<Object>,
    pub messages: Vec<Message>,
    /// The mesh-wide settings: the `istio` ConfigMap of `istio-system` if there is one, else
    /// any other, else the defaults.
    pub mesh: super::model::MeshConfig,
    /// The `Sidecar` resource that scopes the proxy being translated for, if any.
    pub sidecar: Option<SidecarScope>,
}

/// What one `Sidecar` resource lets a proxy see: `egress[].hosts` as `(namespace, host)`
/// imports and `~`-prefixed exclusions (`*` for any namespace, `.` already resolved).
#[derive(Debug, Clone, Default)]
pub struct SidecarScope {
    /// `Sidecar ns/name`, for messages.
    pub id: String,
    pub imports: Vec<(String, String)>,
    pub excludes: Vec<(String, String)>,
    /// `outboundTrafficPolicy.mode`, which overrides the mesh's.
    pub mode: Option<String>,
}

impl SidecarScope {
    /// Whether `hostname` of a service in `ns` is imported (istiod's `selectServices`: an
    /// exclusion wins, then an import in the service's namespace or in `*`).
    pub fn sees(&self, ns: &str, hostname: &str) -> bool {
        let hit = |list: &[(String, String)]| {
            list.iter()
                .any(|(n, h)| (n == "*" || n == ns) && host_matches(h, hostname))
        };
        !hit(&self.excludes) && hit(&self.imports)
    }
}

fn labels_match(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn port_protocol(p: &ServicePort) -> Protocol {
    if let Some(a) = &p.app_protocol {
        return Protocol::parse(a);
    }
    if p.protocol
        .as_deref()
        .is_some_and(|x| x.eq_ignore_ascii_case("udp"))
    {
        return Protocol::Opaque;
    }
    Protocol::parse(p.name.as_deref().unwrap_or(""))
}

impl Registry {
    /// `outboundTrafficPolicy.mode: REGISTRY_ONLY`: traffic to unknown hosts is refused
    /// (BlackHoleCluster, HTTP 502) instead of passed through.
    pub fn registry_only(&self) -> bool {
        self.sidecar
            .as_ref()
            .and_then(|s| s.mode.as_deref())
            .unwrap_or(&self.mesh.outbound_traffic_policy.mode)
            .eq_ignore_ascii_case("REGISTRY_ONLY")
    }

    /// Whether a proxy in `ns` sees service `s`: its `exportTo`, and the proxy's `Sidecar`.
    pub fn sees(&self, s: &Service, ns: &str) -> bool {
        s.visible_from(ns)
            && self
                .sidecar
                .as_ref()
                .is_none_or(|sc| sc.sees(&s.namespace, &s.hostname))
    }

    /// Picks the `Sidecar` for a workload in `ns` with `labels`, as istiod does: one of its
    /// namespace whose `workloadSelector` matches (the oldest, then by name), else its
    /// namespace's without a selector, else `istio-system`'s without a selector.
    pub fn select_sidecar(&mut self, ns: &str, labels: &BTreeMap<String, String>) {
        let mut candidates: Vec<(u8, Option<&str>, &str, &Object, &super::model::SidecarSpec)> =
            Vec::new();
        for o in &self.objects {
            let Kind::Sidecar(sc) = &o.kind else { continue };
            let rank = match &sc.workload_selector {
                Some(sel) if o.namespace == ns && labels_match(&sel.labels, labels) => 0,
                Some(_) => continue,
                None if o.namespace == ns => 1,
                None if o.namespace == "istio-system" => 2,
                None => continue,
            };
            candidates.push((
                rank,
                o.meta.creation_timestamp.as_deref(),
                &o.meta.name,
                o,
                sc,
            ));
        }
        candidates.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let Some(&(_, _, _, o, sc)) = candidates.first() else {
            self.sidecar = None;
            return;
        };
        let mut scope = SidecarScope {
            id: o.id(),
            mode: sc.outbound_traffic_policy.as_ref().map(|p| p.mode.clone()),
            ..Default::default()
        };
        let hosts: Vec<&String> = sc.egress.iter().flat_map(|e| &e.hosts).collect();
        if sc.egress.is_empty() {
            scope.imports.push(("*".into(), "*".into()));
        }
        for h in hosts {
            let Some((n, name)) = h.split_once('/') else {
                continue;
            };
            let (excluded, n) = match n.strip_prefix('~') {
                Some("") => (true, "*"),
                Some(rest) => (true, rest),
                None => (false, n),
            };
            let n = if n == "." { o.namespace.as_str() } else { n };
            let entry = (n.to_string(), name.to_string());
            if excluded {
                scope.excludes.push(entry);
            } else {
                scope.imports.push(entry);
            }
        }
        self.sidecar = Some(scope);
    }

    /// Builds the registry from loaded objects.
    pub fn build(objects: &[Object]) -> Registry {
        // A later definition of the same kind/namespace/name replaces the earlier one, as
        // `kubectl apply` of the files in order would.
        let mut last: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for (i, o) in objects.iter().enumerate() {
            last.insert((o.kind.name(), &o.namespace, &o.meta.name), i);
        }
        let mut messages = Vec::new();
        let kept: Vec<Object> = objects
            .iter()
            .enumerate()
            .filter(|(i, o)| {
                let winner = last[&(o.kind.name(), o.namespace.as_str(), o.meta.name.as_str())];
                if winner != *i {
                    let w = &objects[winner].origin;
                    messages.push(Message::new(
                        Level::Info,
                        o,
                        "",
                        format!("replaced by the later definition in {}#{}", w.file, w.doc),
                    ));
                }
                winner == *i
            })
            .map(|(_, o)| o.clone())
            .collect();
        let mut kept = kept;
        // istiod's order for VirtualServices (which one wins a host, how gateway routes merge):
        // creation time, then name, then namespace. Other kinds keep their places.
        let slots: Vec<usize> = (0..kept.len())
            .filter(|&i| matches!(kept[i].kind, Kind::VirtualService(_)))
            .collect();
        let mut vss: Vec<Object> = slots.iter().map(|&i| kept[i].clone()).collect();
        vss.sort_by(|a, b| {
            let ts = |o: &Object| o.meta.creation_timestamp.clone().unwrap_or_default();
            ts(a)
                .cmp(&ts(b))
                .then_with(|| a.meta.name.cmp(&b.meta.name))
                .then_with(|| a.namespace.cmp(&b.namespace))
        });
        for (slot, vs) in slots.into_iter().zip(vss) {
            kept[slot] = vs;
        }
        let objects = &kept[..];
        let mesh = objects
            .iter()
            .filter_map(|o| match &o.kind {
                Kind::MeshConfig(m) => Some((o.namespace == "istio-system", m)),
                _ => None,
            })
            .max_by_key(|(root, _)| *root)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let mut r = Registry {
            objects: objects.to_vec(),
            messages,
            mesh,
            ..Default::default()
        };
        let pods: BTreeMap<(String, String), &Object> = objects
            .iter()
            .filter(|o| matches!(o.kind, Kind::Pod(_)))
            .map(|o| ((o.namespace.clone(), o.meta.name.clone()), o))
            .collect();
        let workload_entries: Vec<(&Object, &WorkloadEntrySpec)> = objects
            .iter()
            .filter_map(|o| match &o.kind {
                Kind::WorkloadEntry(w) => Some((o, w)),
                _ => None,
            })
            .collect();
        for o in objects {
            match &o.kind {
                Kind::Service(spec) => {
                    let svc = r.k8s_service(o, spec, objects, &pods, &workload_entries);
                    r.services.push(svc);
                }
                Kind::ServiceEntry(se) => {
                    let res = match se.resolution.as_deref().unwrap_or("NONE") {
                        "STATIC" => Resolution::ClientSideLb,
                        "DNS" => Resolution::Dns,
                        "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
                        _ => Resolution::Passthrough,
                    };
                    let ports: Vec<SvcPort> = se
                        .ports
                        .iter()
                        .map(|p| SvcPort {
                            name: p.name.clone(),
                            port: p.number,
                            protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("")),
                        })
                        .collect();
                    let mut eps: Vec<WorkloadEntrySpec> = se.endpoints.clone();
                    if eps.is_empty() {
                        if let Some(sel) = &se.workload_selector {
                            eps = workload_entries
                                .iter()
                                .filter(|(wo, w)| {
                                    wo.namespace == o.namespace
                                        && labels_match(&sel.labels, &w.labels)
                                })
                                .map(|(_, w)| (*w).clone())
                                .collect();
                        }
                    }
                    for (i, e) in eps.iter().enumerate() {
                        if e.address.starts_with("unix://") {
                            r.messages.push(Message::new(
                                Level::Warning,
                                o,
                                format!("spec.endpoints[{i}].address"),
                                "unix domain socket endpoints are not supported; skipped",
                            ));
                        }
                    }
                    for host in &se.hosts {
                        let mut instances = Vec::new();
                        for p in &se.ports {
                            for e in eps.iter().filter(|e| !e.address.starts_with("unix://")) {
                                instances.push(Instance {
                                    address: e.address.clone(),
                                    port: e
                                        .ports
                                        .get(&p.name)
                                        .copied()
                                        .or(p.target_port)
                                        .unwrap_or(p.number),
                                    svc_port: p.number,
                                    labels: e.labels.clone(),
                                    weight: e.weight.unwrap_or(1).max(1),
                                    locality: e.locality.clone(),
                                });
                            }
                            if eps.is_empty() && res == Resolution::Dns && !host.starts_with('*') {
                                instances.push(Instance {
                                    address: host.clone(),
                                    port: p.target_port.unwrap_or(p.number),
                                    svc_port: p.number,
                                    labels: BTreeMap::new(),
                                    weight: 1,
                                    locality: None,
                                });
                            }
                        }
                        r.services.push(Service {
                            hostname: host.clone(),
                            namespace: o.namespace.clone(),
                            k8s_name: String::new(),
                            vips: se.addresses.clone(),
                            ports: ports.clone(),
                            resolution: res,
                            mesh_external: se.location.as_deref() != Some("MESH_INTERNAL"),
                            export_to: se.export_to.clone(),
                            instances,
                            selector: se.workload_selector.as_ref().map(|s| s.labels.clone()),
                            target_ports: se
                                .ports
                                .iter()
                                .map(|p| (p.number, p.target_port.unwrap_or(p.number)))
                                .collect(),
                        });
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn k8s_service(
        &mut self,
        o: &Object,
        spec: &super::model::ServiceSpec,
        objects: &[Object],
        pods: &BTreeMap<(String, String), &Object>,
        wes: &[(&Object, &WorkloadEntrySpec)],
    ) -> Service {
        let ns = &o.namespace;
        let hostname = format!("{}.{ns}.{DOMAIN}", o.meta.name);
        let external = spec.type_.as_deref() == Some("ExternalName");
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports: Vec<SvcPort> = spec
            .ports
            .iter()
            .map(|p| SvcPort {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: port_protocol(p),
            })
            .collect();
        let target_ports: BTreeMap<u32, u32> = spec
            .ports
            .iter()
            .map(|p| {
                let t = match &p.target_port {
                    Some(IntOrString::Int(t)) => *t,
                    _ => p.port,
                };
                (p.port, t)
            })
            .collect();
        let svc_port_for = |name: Option<&str>, port: u32| -> Option<u32> {
            spec.ports
                .iter()
                .find(|sp| match (sp.name.as_deref(), name) {
                    (Some(a), Some(b)) if !a.is_empty() => a == b,
                    _ => spec.ports.len() == 1 || sp.port == port,
                })
                .map(|sp| sp.port)
        };
        let pod_labels = |r: &Option<super::model::ObjectRef>| -> BTreeMap<String, String> {
            r.as_ref()
                .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                .and_then(|r| {
                    let pns = r.namespace.clone().unwrap_or_else(|| ns.clone());
                    pods.get(&(pns, r.name.clone().unwrap_or_default()))
                })
                .map(|p| p.meta.labels.clone())
                .unwrap_or_default()
        };
        let mut instances = Vec::new();
        let mut have_endpoints = false;
        for e in objects.iter().filter(|e| &e.namespace == ns) {
            match &e.kind {
                Kind::Endpoints(subsets) if e.meta.name == o.meta.name => {
                    have_endpoints = true;
                    for s in subsets {
                        for a in &s.addresses {
                            for p in &s.ports {
                                if let Some(sp) = svc_port_for(p.name.as_deref(), p.port) {
                                    instances.push(Instance {
                                        address: a.ip.clone(),
                                        port: p.port,
                                        svc_port: sp,
                                        labels: pod_labels(&a.target_ref),
                                        weight: 1,
                                        locality: None,
                                    });
                                }
                            }
                        }
                    }
                }
                Kind::EndpointSlice {
                    endpoints, ports, ..
                } if e.meta.labels.get("kubernetes.io/service-name") == Some(&o.meta.name) => {
                    have_endpoints = true;
                    for ep in endpoints {
                        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                            continue;
                        }
                        for a in &ep.addresses {
                            for p in ports {
                                if let Some(sp) = svc_port_for(p.name.as_deref(), p.port) {
                                    instances.push(Instance {
                                        address: a.clone(),
                                        port: p.port,
                                        svc_port: sp,
                                        labels: pod_labels(&ep.target_ref),
                                        weight: 1,
                                        locality: ep.zone.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let selector = spec.selector.clone().filter(|s| !s.is_empty());
        if let Some(sel) = &selector {
            if !have_endpoints {
                for p in pods.values().filter(|p| &p.namespace == ns) {
                    let Kind::Pod(st) = &p.kind else { continue };
                    let Some(ip) = &st.pod_ip else { continue };
                    if labels_match(sel, &p.meta.labels) {
                        for sp in &spec.ports {
                            instances.push(Instance {
                                address: ip.clone(),
                                port: target_ports[&sp.port],
                                svc_port: sp.port,
                                labels: p.meta.labels.clone(),
                                weight: 1,
                                locality: None,
                            });
                        }
                    }
                }
            }
            for (wo, w) in wes {
                if &wo.namespace == ns && labels_match(sel, &w.labels) {
                    for sp in &spec.ports {
                        let name = sp.name.clone().unwrap_or_default();
                        instances.push(Instance {
                            address: w.address.clone(),
                            port: w
                                .ports
                                .get(&name)
                                .copied()
                                .unwrap_or(target_ports[&sp.port]),
                            svc_port: sp.port,
                            labels: w.labels.clone(),
                            weight: w.weight.unwrap_or(1).max(1),
                            locality: w.locality.clone(),
                        });
                    }
                }
            }
        }
        let resolution = if external {
            for sp in &spec.ports {
                instances.push(Instance {
                    address: spec.external_name.clone().unwrap_or_default(),
                    port: sp.port,
                    svc_port: sp.port,
                    labels: BTreeMap::new(),
                    weight: 1,
                    locality: None,
                });
            }
            Resolution::Dns
        } else if headless {
            Resolution::Passthrough
        } else {
            Resolution::ClientSideLb
        };
        let vips = if headless || external {
            Vec::new()
        } else if !spec.cluster_ips.is_empty() {
            spec.cluster_ips.clone()
        } else {
            spec.cluster_ip
                .iter()
                .filter(|v| !v.is_empty())
                .cloned()
                .collect()
        };
        Service {
            hostname,
            namespace: ns.clone(),
            k8s_name: o.meta.name.clone(),
            vips,
            ports,
            resolution,
            mesh_external: false,
            export_to: o
                .meta
                .annotations
                .get("networking.istio.io/exportTo")
                .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
                .unwrap_or_default(),
            instances,
            selector,
            target_ports,
        }
    }

    /// A host as written in a resource of namespace `ns`, made fully qualified the way Istio
    /// does: names without a dot get `.ns.svc.cluster.local`.
    pub fn resolve(&self, host: &str, ns: &str) -> String {
        if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
            host.to_string()
        } else {
            format!("{host}.{ns}.{DOMAIN}")
        }
    }

    /// Services with exactly this hostname.
    pub fn services_for_host(&self, host: &str) -> Vec<&Service> {
        self.services
            .iter()
            .filter(|s| s.hostname == host)
            .collect()
    }

    /// The service for `host` visible from `ns` (own namespace first).
    pub fn service(&self, host: &str, ns: &str) -> Option<&Service> {
        let c = self.services_for_host(host);
        c.iter()
            .find(|s| s.namespace == ns && s.visible_from(ns))
            .or_else(|| c.iter().find(|s| s.visible_from(ns)))
            .copied()
    }

    /// VirtualServices with their objects.
    pub fn virtual_services(&self) -> impl Iterator<Item = (&Object, &VirtualServiceSpec)> {
        self.objects.iter().filter_map(|o| match &o.kind {
            Kind::VirtualService(v) => Some((o, v)),
            _ => None,
        })
    }

    /// Gateways with their objects.
    pub fn gateways(&self) -> impl Iterator<Item = (&Object, &GatewaySpec)> {
        self.objects.iter().filter_map(|o| match &o.kind {
            Kind::Gateway(g) => Some((o, g)),
            _ => None,
        })
    }

    /// A gateway named `name` (short, resolved in `ns`, or `ns/name`).
    pub fn gateway(&self, name: &str, ns: &str) -> Option<(&Object, &GatewaySpec)> {
        let (gns, gname) = gateway_ref(name, ns);
        self.gateways()
            .find(|(o, _)| o.namespace == gns && o.meta.name == gname)
    }

    /// The DestinationRule that applies to `host` for a client in `ns` with `labels`: an
    /// exact host match before wildcards, the client's namespace before the host's, and (as
    /// istiod's sidecar scope does for outbound traffic) among equals, a rule of the client's
    /// namespace whose `workloadSelector` matches the client before the rule without one.
    /// Rules with a selector apply only to the workloads they select in their namespace.
    pub fn destination_rule(
        &self,
        host: &str,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(&Object, &DestinationRuleSpec)> {
        let mut best: Option<(i32, (&Object, &DestinationRuleSpec))> = None;
        for o in &self.objects {
            let Kind::DestinationRule(dr) = &o.kind else {
                continue;
            };
            let selected = match &dr.workload_selector {
                None if visible(&dr.export_to, &o.namespace, ns) => false,
                Some(sel) if o.namespace == ns && labels_match(&sel.match_labels, labels) => true,
                _ => continue,
            };
            let h = self.resolve(&dr.host, &o.namespace);
            let score = if h == host {
                4000
            } else if host_matches(&h, host) {
                2 * h.len() as i32
            } else {
                continue;
            } + if o.namespace == ns { 8000 } else { 0 }
                + i32::from(selected);
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, (o, dr)));
            }
        }
        best.map(|b| b.1)
    }

    /// The subset `name` of `host` as seen from `ns`.
    pub fn subset(&self, host: &str, name: &str, ns: &str) -> Option<&Subset> {
        self.destination_rule(host, ns, &BTreeMap::new())
            .and_then(|(_, dr)| dr.subsets.iter().find(|s| s.name == name))
    }
}

/// `(namespace, name)` of a gateway reference made in namespace `ns`.
pub fn gateway_ref<'a>(name: &'a str, ns: &'a str) -> (&'a str, &'a str) {
    match name.split_once('/') {
        Some((n, g)) => (n, g),
        None => (ns, name),
    }
}

/// Whether pattern `p` (possibly `*.suffix` or `*`) matches host `h`.
pub fn host_matches(p: &str, h: &str) -> bool {
    if p == "*" || p == h {
        return true;
    }
    match p.strip_prefix('*') {
        Some(suffix) => h.ends_with(suffix) && h.len() > suffix.len(),
        None => false,
    }
}

// Auto-allocated VIPs (istio-agent's DNS auto-allocation), shared by DNS and listeners.

/// First two octets of auto-allocated VIPs: Istio's reserved class E block 240.240.0.0/16.
pub const AUTO_VIP_PREFIX: [u8; 2] = [240, 240];

/// Usable auto-allocated addresses: 240.240.0-255.1-254 (no .0 or .255 last octet).
const AUTO_SLOTS: u32 = 256 * 254;

fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn slot_ip(slot: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        AUTO_VIP_PREFIX[0],
        AUTO_VIP_PREFIX[1],
        (slot / 254) as u8,
        (slot % 254 + 1) as u8,
    )
}

/// Whether a ServiceEntry host gets an auto-allocated VIP, as istiod decides: no addresses,
/// not a wildcard, and a resolution other than NONE (with NONE the original destination is
/// all the proxy has, so it must be the real address).
fn wants_auto_vip(s: &Service) -> bool {
    s.k8s_name.is_empty()
        && s.vips.is_empty()
        && !s.hostname.starts_with('*')
        && s.resolution != Resolution::Passthrough
}

/// Auto-allocated VIPs for ServiceEntry hosts without addresses: host → 240.240.x.y.
///
/// Deterministic and stable across restarts and proxies: hosts are taken in sorted order, each
/// starts at the FNV-1a hash of its name in the 65,024 usable addresses, and a collision takes
/// the next free one. A host keeps its address while it stays in the config; only a new host
/// whose hash collides with an existing one and sorts before it can move that one.
///
/// The same map gives these hosts their listener addresses ([`Registry::assign_auto_vips`]),
/// so TCP services sharing a port stay distinguishable by VIP, as with istiod's auto-allocation.
pub fn auto_allocate(reg: &Registry) -> BTreeMap<String, Ipv4Addr> {
    let hosts: BTreeSet<&str> = reg
        .services
        .iter()
        .filter(|s| wants_auto_vip(s))
        .map(|s| s.hostname.as_str())
        .collect();
    // Hosts that also have addresses elsewhere (a Kubernetes service, another ServiceEntry)
    // answer with those; they still get a slot so the map does not depend on that.
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for h in hosts {
        if taken.len() as u32 >= AUTO_SLOTS {
            tracing::error!(host = h, "out of auto-allocated VIPs (240.240.0.0/16)");
            break;
        }
        let mut slot = fnv1a32(h) % AUTO_SLOTS;
        while !taken.insert(slot) {
            slot = (slot + 1) % AUTO_SLOTS;
        }
        out.insert(h.to_string(), slot_ip(slot));
    }
    out
}

impl Registry {
    /// Gives ServiceEntry hosts without addresses whose ports are opaque TCP their
    /// auto-allocated VIP (see [`auto_allocate`]), so each gets its own `VIP_PORT` listener and
    /// TCP services sharing a port stay apart; DNS answers the same address. HTTP and TLS hosts
    /// keep the port-wide listener, where Host and SNI tell them apart whatever IP was dialled.
    pub fn assign_auto_vips(&mut self) {
        let vips = auto_allocate(self);
        for s in &mut self.services {
            let opaque = s
                .ports
                .iter()
                .all(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Opaque));
            if let Some(ip) = vips
                .get(&s.hostname)
                .filter(|_| opaque && !s.ports.is_empty() && wants_auto_vip(s))
            {
                s.vips = vec![ip.to_string()];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(Protocol::parse("http"), Protocol::Http);
        assert_eq!(Protocol::parse("http-echo"), Protocol::Http);
        assert_eq!(Protocol::parse("grpc-ping"), Protocol::Grpc);
        assert_eq!(Protocol::parse("TCP"), Protocol::Tcp);
        assert_eq!(Protocol::parse("MONGO"), Protocol::Opaque);
        assert_eq!(Protocol::parse("foo"), Protocol::Unknown);
    }

    #[test]
    fn wildcard_hosts() {
        assert!(host_matches("*.foo.com", "a.foo.com"));
        assert!(!host_matches("*.foo.com", "foo.com"));
        assert!(host_matches("*", "x"));
    }
}
