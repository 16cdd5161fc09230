//! The DNS table from the Istio registry, as istiod's name table plus istio-agent's alternate
//! hosts make it for one proxy (in namespace `ns`, with the pod's resolv.conf search domains):
//!
//! - Kubernetes services with a cluster IP: `name.ns.svc.cluster.local`, `name.ns.svc`,
//!   `name.ns`, and `name` when the service is in the proxy's namespace, all to the cluster IPs;
//! - headless services (`clusterIP: None`): the same names to the ready endpoint addresses,
//!   and each endpoint with a `hostname` (Endpoints or EndpointSlice; StatefulSet pods) as
//!   `hostname.svc.ns.svc.cluster.local` (plus `hostname.svc.ns`, `hostname.svc.ns.svc`, and
//!   `hostname.svc` in the own namespace);
//! - `ExternalName` services: the same names as a CNAME to the external name (istio-agent
//!   leaves these to kube-dns; Sluice answers them as kube-dns would);
//! - ServiceEntry hosts (wildcards too) to their `addresses` (CIDRs are not addresses: such a
//!   host is skipped, as istiod does); without addresses, to an auto-allocated VIP
//!   ([`auto_allocate`]) unless the resolution is NONE, where only endpoint IPs can answer.
//!   A Kubernetes service wins over a ServiceEntry for the same host; several ServiceEntries
//!   for one host merge their addresses.
//!
//! Only services visible from `ns` (`exportTo`) are in the table. [`watch`] rebuilds the table
//! when the config directory changes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::istio::model::{Kind, Object, ServiceSpec};
use crate::istio::registry::{Registry, Service, DOMAIN};

use super::{DnsError, SharedTable, Table};

/// The cluster domain the registry's hostnames are under.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub use crate::istio::registry::{auto_allocate, AUTO_VIP_PREFIX};

/// The names a Kubernetes host answers to for a proxy in `ns` (istio-agent's alternate hosts):
/// the FQDN, `short.namespace`, `short.namespace.svc`, and `short` in the own namespace.
fn alt_hosts(hostname: &str, short: &str, svc_ns: &str, ns: &str) -> Vec<String> {
    let mut out = vec![hostname.to_string()];
    if !hostname.ends_with(&format!(".{DOMAIN}")) {
        return out;
    }
    out.push(format!("{short}.{svc_ns}"));
    out.push(format!("{short}.{svc_ns}.svc"));
    if svc_ns == ns {
        out.push(short.to_string());
    }
    out
}

fn service_spec<'a>(reg: &'a Registry, s: &Service) -> Option<&'a ServiceSpec> {
    reg.objects.iter().find_map(|o| match &o.kind {
        Kind::Service(spec) if o.namespace == s.namespace && o.meta.name == s.k8s_name => {
            Some(spec)
        }
        _ => None,
    })
}

fn ips(addrs: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if let Ok(ip) = a.as_ref().parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// Endpoint addresses of a headless service (its first port), as Kubernetes DNS returns them.
fn endpoint_ips(s: &Service) -> Vec<IpAddr> {
    let Some(first) = s.ports.first() else {
        return Vec::new();
    };
    ips(s
        .instances
        .iter()
        .filter(|i| i.svc_port == first.port)
        .map(|i| &i.address))
}

/// `(hostname, ip)` of the endpoints of service `name` in `ns` that have a hostname.
fn pod_hostnames(objects: &[Object], ns: &str, name: &str) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.namespace == ns) {
        match &o.kind {
            Kind::Endpoints(subsets) if o.meta.name == name => {
                for a in subsets.iter().flat_map(|s| &s.addresses) {
                    if let (Some(h), Ok(ip)) = (&a.hostname, a.ip.parse()) {
                        out.push((h.clone(), ip));
                    }
                }
            }
            Kind::EndpointSlice { endpoints, .. }
                if o.meta
                    .labels
                    .get("kubernetes.io/service-name")
                    .map(String::as_str)
                    == Some(name) =>
            {
                for e in endpoints {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    let Some(h) = &e.hostname else { continue };
                    for ip in ips(&e.addresses) {
                        out.push((h.clone(), ip));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Adds the registry's hosts, as seen by a proxy in namespace `ns`, to `t`. Returns the number
/// of services added.
pub fn add_registry(t: &mut Table, reg: &Registry, ns: &str) -> usize {
    t.set_cluster_domain(CLUSTER_DOMAIN);
    let auto = auto_allocate(reg);
    let mut k8s_hosts = BTreeSet::new();
    let mut added = 0;
    let visible = reg.services.iter().filter(|s| s.visible_from(ns));
    for s in visible.clone().filter(|s| !s.k8s_name.is_empty()) {
        let Some(spec) = service_spec(reg, s) else {
            continue;
        };
        let names = alt_hosts(&s.hostname, &s.k8s_name, &s.namespace, ns);
        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(target) = spec.external_name.as_deref().filter(|x| !x.is_empty()) else {
                continue;
            };
            for n in &names {
                t.add_cname(n, target);
            }
        } else {
            let addrs = if s.vips.is_empty() {
                endpoint_ips(s)
            } else {
                ips(&s.vips)
            };
            if addrs.is_empty() {
                tracing::debug!(host = %s.hostname, "no addresses for DNS");
                continue;
            }
            for n in &names {
                for ip in &addrs {
                    t.add(n, *ip);
                }
            }
            if s.vips.is_empty() {
                // Headless: the pods by name.
                for (h, ip) in pod_hostnames(&reg.objects, &s.namespace, &s.k8s_name) {
                    let fqdn = format!("{h}.{}", s.hostname);
                    let short = format!("{h}.{}", s.k8s_name);
                    for n in alt_hosts(&fqdn, &short, &s.namespace, ns) {
                        t.add(&n, ip);
                    }
                }
            }
        }
        k8s_hosts.insert(s.hostname.as_str());
        added += 1;
    }
    for s in visible.filter(|s| s.k8s_name.is_empty()) {
        if k8s_hosts.contains(s.hostname.as_str()) {
            continue; // the Kubernetes service is authoritative for its own name
        }
        let addrs = if !s.vips.is_empty() {
            let a = ips(&s.vips);
            if a.len() < s.vips.len() {
                tracing::debug!(host = %s.hostname, vips = ?s.vips, "non-IP addresses skipped");
            }
            a
        } else if let Some(ip) = auto.get(&s.hostname) {
            vec![IpAddr::V4(*ip)]
        } else {
            endpoint_ips(s)
        };
        if addrs.is_empty() {
            continue;
        }
        for ip in addrs {
            t.add(&s.hostname, ip);
        }
        added += 1;
    }
    added
}

/// `base` (search domains, hosts-file entries) plus the registry of the config at `dir`.
pub fn load_table(base: &Table, dir: &Path, ns: &str) -> Result<Table, DnsError> {
    let cfg = crate::istio::load_path(dir)?;
    let reg = Registry::build(&cfg.objects);
    let mut t = base.clone();
    let n = add_registry(&mut t, &reg, ns);
    tracing::info!(
        services = n,
        names = t.len(),
        "DNS table from Istio config in {}",
        dir.display()
    );
    Ok(t)
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// Paths, modification times and sizes of the config files.
fn fingerprint(dir: &Path) -> Fingerprint {
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        crate::istio::load::config_files(dir).unwrap_or_default()
    };
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let t = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map(|m| m.len()).unwrap_or(0);
            (f, t, len)
        })
        .collect()
}

/// Rebuilds `table` from `base` and the config at `dir` whenever its files change (polled
/// every `every`). A config that fails to load keeps the previous table.
pub async fn watch(table: SharedTable, base: Table, dir: PathBuf, ns: String, every: Duration) {
    let mut last = fingerprint(&dir);
    loop {
        tokio::time::sleep(every).await;
        let fp = fingerprint(&dir);
        if fp == last {
            continue;
        }
        last = fp;
        match load_table(&base, &dir, &ns) {
            Ok(t) => table.set(t),
            Err(e) => tracing::error!(error = %e, "reloading the DNS table; keeping the last one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{answer_locally, local_answer};
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Name, RData, RecordType};

    const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: prod}
spec:
  clusterIP: 10.96.0.30
  clusterIPs: [10.96.0.30, "fd00::30"]
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: other, annotations: {networking.istio.io/exportTo: "."}}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: default}
subsets:
- addresses:
  - {ip: 10.1.0.5, hostname: db-0}
  - {ip: 10.1.0.6, hostname: db-1}
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec:
  type: ExternalName
  externalName: legacy.example.org
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com, db.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fixed, namespace: default}
spec:
  hosts: [fixed.example.com, "*.wild.example.com"]
  addresses: [192.0.2.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.11}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cidr, namespace: default}
spec:
  hosts: [cidr.example.com]
  addresses: [192.0.2.0/24]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: default}
spec:
  hosts: [none.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#;

    fn registry() -> Registry {
        // One directory per call: the tests run in parallel, and each removes its own.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-dns-mesh-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("mesh.yaml");
        std::fs::write(&f, CONFIG).unwrap();
        let cfg = crate::istio::load_path(&f).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Registry::build(&cfg.objects)
    }

    fn table(ns: &str) -> Table {
        let mut t = Table::new(vec![
            format!("{ns}.svc.cluster.local"),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ]);
        add_registry(&mut t, &registry(), ns);
        t
    }

    fn v4(t: &Table, name: &str) -> Vec<String> {
        t.lookup(name)
            .unwrap_or_else(|| panic!("{name} not in table"))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn kubernetes_service_names_relative_to_the_namespace() {
        let t = table("default");
        for n in [
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local",
            "REVIEWS.default.svc.cluster.local.",
        ] {
            assert_eq!(v4(&t, n), ["10.96.0.20"], "{n}");
        }
        // Other namespaces: not by the bare name.
        assert_eq!(v4(&t, "ratings.prod"), ["10.96.0.30", "fd00::30"]);
        assert_eq!(v4(&t, "ratings.prod.svc"), ["10.96.0.30", "fd00::30"]);
        assert!(!t.contains("ratings"));
        // From prod, `ratings` is short and `reviews` is not.
        let p = table("prod");
        assert_eq!(v4(&p, "ratings"), ["10.96.0.30", "fd00::30"]);
        assert!(!p.contains("reviews"));
        // exportTo: "." hides it from other namespaces.
        assert!(t.lookup("hidden.other.svc.cluster.local").is_none());
        assert!(table("other")
            .lookup("hidden.other.svc.cluster.local")
            .is_some());
    }

    #[test]
    fn headless_service_and_its_pods() {
        let t = table("default");
        assert_eq!(
            v4(&t, "db.default.svc.cluster.local"),
            ["10.1.0.5", "10.1.0.6"]
        );
        assert_eq!(v4(&t, "db-0.db.default.svc.cluster.local"), ["10.1.0.5"]);
        assert_eq!(v4(&t, "db-1.db"), ["10.1.0.6"]);
        assert_eq!(v4(&t, "db-1.db.default"), ["10.1.0.6"]);
        assert!(t.lookup("db-2.db.default.svc.cluster.local").is_none());
    }

    #[test]
    fn service_entries_with_addresses_auto_vips_and_wildcards() {
        let reg = registry();
        let t = table("default");
        assert_eq!(v4(&t, "fixed.example.com"), ["192.0.2.10"]);
        assert_eq!(v4(&t, "x.wild.example.com"), ["192.0.2.10"]);
        assert!(t.lookup("wild.example.com").is_none());
        // CIDR addresses are not answers; NONE resolution without endpoints has none either.
        assert!(t.lookup("cidr.example.com").is_none());
        assert!(t.lookup("none.example.com").is_none());
        // Auto-allocated, in 240.240.0.0/16, distinct, and what the table answers.
        let auto = auto_allocate(&reg);
        assert_eq!(
            auto.keys().collect::<Vec<_>>(),
            ["api.example.com", "db.example.com"]
        );
        let (a, d) = (auto["api.example.com"], auto["db.example.com"]);
        assert_ne!(a, d);
        for ip in [a, d] {
            let o = ip.octets();
            assert_eq!(&o[..2], &AUTO_VIP_PREFIX);
            assert!(o[3] != 0 && o[3] != 255, "{ip}");
        }
        assert_eq!(v4(&t, "api.example.com"), [a.to_string()]);
        // Stable: the same host keeps its VIP whatever else is configured.
        let mut only_api = reg.clone();
        only_api
            .services
            .retain(|s| s.hostname == "api.example.com");
        assert_eq!(auto_allocate(&only_api)["api.example.com"], a);
        assert_eq!(auto_allocate(&reg), auto);
    }

    #[test]
    fn auto_allocation_resolves_collisions_deterministically() {
        // Many hosts: all distinct, all valid, same result every time.
        let mut reg = registry();
        let template = reg
            .services
            .iter()
            .find(|s| s.hostname == "api.example.com")
            .unwrap()
            .clone();
        for i in 0..3000 {
            let mut s = template.clone();
            s.hostname = format!("h{i}.example.net");
            reg.services.push(s);
        }
        let a = auto_allocate(&reg);
        let distinct: BTreeSet<_> = a.values().collect();
        assert_eq!(distinct.len(), a.len());
        assert!(a
            .values()
            .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255));
        reg.services.reverse();
        assert_eq!(auto_allocate(&reg), a, "independent of config order");
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    #[test]
    fn external_name_is_a_cname_to_chase_upstream() {
        let t = table("default");
        let l = local_answer(
            &t,
            &query("legacy.default.svc.cluster.local.", RecordType::A),
        )
        .unwrap();
        assert_eq!(l.response.answers.len(), 1);
        assert!(matches!(&l.response.answers[0].data,
            RData::CNAME(CNAME(n)) if n.to_ascii() == "legacy.example.org."));
        assert_eq!(
            l.chase.map(|n| n.to_ascii()).as_deref(),
            Some("legacy.example.org.")
        );
        // The short name too, and its first search expansion (CNAME, CNAME).
        let l = local_answer(
            &t,
            &query("legacy.default.default.svc.cluster.local.", RecordType::A),
        )
        .unwrap();
        let targets: Vec<String> = l
            .response
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::CNAME(CNAME(n)) => n.to_ascii(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(targets, ["legacy.default.", "legacy.example.org."]);
    }

    #[test]
    fn ndots_expansions_answer_in_one_round_trip() {
        let t = table("default");
        // Expansion of a known name: CNAME to it, then its address, in one answer.
        for q in [
            "reviews.default.svc.cluster.local.default.svc.cluster.local.",
            "reviews.default.svc.cluster.local.svc.cluster.local.",
            "api.example.com.default.svc.cluster.local.",
        ] {
            let r = answer_locally(&t, &query(q, RecordType::A)).unwrap();
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{q}");
            assert_eq!(r.answers.len(), 2, "{q}: {:?}", r.answers);
            assert!(matches!(r.answers[0].data, RData::CNAME(_)));
            assert!(matches!(r.answers[1].data, RData::A(_)));
            assert_eq!(r.answers[0].name.to_ascii(), q);
        }
        let r = answer_locally(
            &t,
            &query(
                "reviews.default.svc.cluster.local.default.svc.cluster.local.",
                RecordType::A,
            ),
        )
        .unwrap();
        assert!(matches!(&r.answers[1].data, RData::A(A(ip)) if ip.to_string() == "10.96.0.20"));
        // Expansions of unknown, already qualified names: NXDOMAIN here, any type.
        for q in [
            "ratings.default.svc.cluster.local.default.svc.cluster.local.",
            "www.example.org.default.svc.cluster.local.",
        ] {
            for qt in [RecordType::A, RecordType::AAAA, RecordType::MX] {
                let r = answer_locally(&t, &query(q, qt)).unwrap();
                assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{q}");
                assert!(r.metadata.authoritative);
            }
        }
        // Names Kubernetes DNS may have are forwarded: unknown services, pods of unknown
        // headless services, and names outside the cluster domain.
        for q in [
            "unknown.default.svc.cluster.local.",
            "pod-0.unknown.default.svc.cluster.local.",
            "www.example.org.svc.cluster.local.",
            "www.example.org.cluster.local.",
            "www.example.org.",
        ] {
            assert!(
                answer_locally(&t, &query(q, RecordType::A)).is_none(),
                "{q}"
            );
        }
        // Known name without an address of that family: NOERROR, no data.
        let r = answer_locally(&t, &query("reviews.default.", RecordType::AAAA)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn hosts_file_entries_merge_with_the_registry() {
        let mut base = Table::new(vec!["default.svc.cluster.local".into()]);
        base.add_hosts_file("198.19.0.1 vm.internal\n", "h")
            .unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-dns-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mesh.yaml"), CONFIG).unwrap();
        let t = load_table(&base, &dir, "default").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(v4(&t, "vm.internal"), ["198.19.0.1"]);
        assert_eq!(v4(&t, "reviews"), ["10.96.0.20"]);
        assert!(load_table(&base, Path::new("/nonexistent/sluice"), "default").is_err());
    }
}
