//! Clusters at run time: the hosts a cluster currently has (static, EDS or DNS), its load
//! balancer, per-host connection pools and Envoy's cluster stats. A cluster's endpoints are an
//! immutable `EndpointSet` swapped atomically; hosts that survive an update keep their pools.

pub mod h1;
pub mod h2;
pub mod lb;
pub mod outlier;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::model::cluster::{Cluster, Discovery, EndpointSpec, Endpoints, Target};
use crate::stats::{Counter, Gauge, Histogram, StatValue};
use lb::Balancer;
use pool::{Pool, PoolSettings};

/// One upstream host.
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
    pub locality: Arc<str>,
    /// For `auto_host_rewrite`: the endpoint's hostname (empty when it has none).
    pub hostname: String,
    /// Requests in flight (least-request balancing, admin).
    pub active: crate::stats::Gauge,
    pub pool: Arc<Pool>,
    /// Outlier detection state (counters, ejection).
    pub outlier: outlier::HostOutlier,
    /// The endpoint's priority (0 is the highest).
    pub priority: u32,
}

impl Host {
    pub fn new(addr: SocketAddr, weight: u32, healthy: bool, locality: Arc<str>) -> Host {
        Host {
            addr,
            weight: weight.max(1),
            healthy,
            locality,
            hostname: String::new(),
            active: Default::default(),
            pool: Arc::new(Pool::default()),
            outlier: outlier::HostOutlier::default(),
            priority: 0,
        }
    }
}

/// The hosts of a cluster at one moment, with their balancer.
#[derive(Debug)]
pub struct EndpointSet {
    pub hosts: Vec<Arc<Host>>,
    pub balancer: Balancer,
    /// The configured endpoints this set was built from (for change detection and EDS dumps).
    pub spec: Endpoints,
}

/// Envoy's per-cluster stats: plain atomics owned by the cluster (shared by the runtimes a
/// cluster goes through as its config changes), rendered as `cluster.NAME.STAT` by
/// [`ClusterStats::visit`] rather than registered by name.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    /// Open upstream connections (HTTP pools and TCP proxy), kept by the connection slots.
    pub upstream_cx_active: Gauge,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_timeout: Counter,
    /// Requests the proxy gave up on while in flight (the downstream went away).
    pub upstream_rq_tx_reset: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_overflow: Counter,
    pub rq_2xx: Counter,
    pub rq_3xx: Counter,
    pub rq_4xx: Counter,
    pub rq_5xx: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    /// `upstream_rq_time` and `upstream_cx_connect_ms`, allocated on first use.
    pub hists: std::sync::OnceLock<Box<ClusterHists>>,
}

/// A cluster's histograms (1008 bytes, allocated when the cluster first records one).
#[derive(Debug, Default)]
pub struct ClusterHists {
    pub upstream_rq_time: Histogram,
    pub upstream_cx_connect_ms: Histogram,
}

impl ClusterStats {
    fn counters(&self) -> [(&'static str, &Counter); 14] {
        [
            ("upstream_cx_total", &self.upstream_cx_total),
            ("upstream_cx_connect_fail", &self.upstream_cx_connect_fail),
            (
                "upstream_cx_connect_timeout",
                &self.upstream_cx_connect_timeout,
            ),
            ("upstream_rq_total", &self.upstream_rq_total),
            ("upstream_rq_retry", &self.upstream_rq_retry),
            ("upstream_rq_timeout", &self.upstream_rq_timeout),
            ("upstream_rq_tx_reset", &self.upstream_rq_tx_reset),
            (
                "upstream_rq_pending_overflow",
                &self.upstream_rq_pending_overflow,
            ),
            ("upstream_cx_none_healthy", &self.upstream_cx_none_healthy),
            ("upstream_cx_overflow", &self.upstream_cx_overflow),
            ("upstream_rq_2xx", &self.rq_2xx),
            ("upstream_rq_3xx", &self.rq_3xx),
            ("upstream_rq_4xx", &self.rq_4xx),
            ("upstream_rq_5xx", &self.rq_5xx),
        ]
    }

    /// Calls `f` with each stat's full name (`cluster.NAME.STAT`) and value; histograms only
    /// once the cluster has recorded into them.
    pub fn visit(&self, cluster: &str, f: &mut dyn FnMut(String, StatValue)) {
        for (n, c) in self.counters() {
            f(
                format!("cluster.{cluster}.{n}"),
                StatValue::Counter(c.get()),
            );
        }
        let gauges: [(&str, &Gauge); 4] = [
            ("upstream_cx_active", &self.upstream_cx_active),
            ("upstream_rq_active", &self.upstream_rq_active),
            ("membership_total", &self.membership_total),
            ("membership_healthy", &self.membership_healthy),
        ];
        for (n, g) in gauges {
            f(format!("cluster.{cluster}.{n}"), StatValue::Gauge(g.get()));
        }
        if let Some(h) = self.hists.get() {
            f(
                format!("cluster.{cluster}.upstream_cx_connect_ms"),
                StatValue::Histogram(h.upstream_cx_connect_ms.snapshot()),
            );
            f(
                format!("cluster.{cluster}.upstream_rq_time"),
                StatValue::Histogram(h.upstream_rq_time.snapshot()),
            );
        }
    }

    /// `/reset_counters`.
    pub fn reset_counters(&self) {
        for (_, c) in self.counters() {
            c.reset();
        }
    }

    /// The cluster's histograms, allocated on first use (a cluster that never carries
    /// traffic costs one pointer).
    #[inline]
    pub fn hists(&self) -> &ClusterHists {
        self.hists.get_or_init(Default::default)
    }

    /// An upstream response: its status class and its time (Envoy's `upstream_rq_time`).
    #[inline]
    pub fn response(&self, code: u16, took: std::time::Duration) {
        self.status(code);
        self.hists().upstream_rq_time.record(took);
    }

    /// Counts a response status in the `upstream_rq_Nxx` family.
    pub fn status(&self, code: u16) {
        match code / 100 {
            2 => self.rq_2xx.inc(),
            3 => self.rq_3xx.inc(),
            4 => self.rq_4xx.inc(),
            5 => self.rq_5xx.inc(),
            _ => {}
        }
    }
}

/// A cluster at run time.
#[derive(Debug)]
pub struct ClusterRt {
    pub cfg: Arc<Cluster>,
    pub endpoints: ArcSwap<EndpointSet>,
    pub stats: Arc<ClusterStats>,
    pub settings: PoolSettings,
    /// ORIGINAL_DST hosts, created per destination on demand.
    orig_dst_hosts: Mutex<HashMap<SocketAddr, Arc<Host>>>,
    /// Background DNS refresh, stopped when the cluster goes away.
    dns_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether endpoints have arrived (EDS warming); static and DNS clusters start warm.
    pub warm: std::sync::atomic::AtomicBool,
    /// Outlier detection, when configured, with its interval task.
    pub outlier: Option<Box<outlier::Detector>>,
    outlier_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Serialises endpoint-set rebuilds (EDS/DNS updates, ejections).
    rebuild: Mutex<()>,
    /// Connection circuit breakers, shared by the hosts' pools and the TCP proxy.
    pub limits: Arc<pool::ConnLimits>,
}

impl Drop for ClusterRt {
    fn drop(&mut self) {
        if let Some(t) = self.dns_task.lock().unwrap().take() {
            t.abort();
        }
        if let Some(t) = self.outlier_task.lock().unwrap().take() {
            t.abort();
        }
    }
}

impl ClusterRt {
    /// Builds a cluster runtime. `previous` (same name) donates hosts and pools.
    pub fn new(cfg: Arc<Cluster>, previous: Option<&ClusterRt>) -> Arc<ClusterRt> {
        let initial = match (&cfg.load_assignment, cfg.discovery) {
            (_, Discovery::Eds) => previous
                .map(|p| p.endpoints.load().spec.clone())
                .unwrap_or_default(),
            (Some(la), Discovery::Static) => la.clone(),
            _ => Endpoints::default(),
        };
        let old_hosts: Vec<Arc<Host>> = previous
            .map(|p| p.endpoints.load().hosts.clone())
            .unwrap_or_default();
        let set = build_set(&cfg, initial, &old_hosts);
        let warm = match cfg.discovery {
            Discovery::Eds => previous.is_some_and(|p| p.is_warm()),
            _ => true,
        };
        let stats: Arc<ClusterStats> = previous.map(|p| p.stats.clone()).unwrap_or_default();
        let rt = Arc::new(ClusterRt {
            stats: stats.clone(),
            settings: PoolSettings {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                max_requests_per_connection: cfg.max_requests_per_connection,
                source: cfg.upstream_bind,
                keepalive: cfg.tcp_keepalive,
                h2_keepalive: cfg.h2_keepalive,
            },
            endpoints: ArcSwap::from_pointee(set),
            orig_dst_hosts: Mutex::new(HashMap::new()),
            dns_task: Mutex::new(None),
            warm: std::sync::atomic::AtomicBool::new(warm),
            outlier: cfg
                .outlier
                .as_ref()
                .map(|o| Box::new(outlier::Detector::new(&cfg.name, (**o).clone()))),
            outlier_task: Mutex::new(None),
            rebuild: Mutex::new(()),
            limits: Arc::new(
                pool::ConnLimits::new(cfg.max_connections, cfg.max_pending_requests).counted(stats),
            ),
            cfg,
        });
        rt.update_membership_stats();
        if let Some(d) = &rt.outlier {
            // Hosts carried over from the previous version may be ejected already.
            let set = rt.endpoints.load();
            let n = set.hosts.iter().filter(|h| h.outlier.is_ejected()).count();
            d.stats.ejections_active.set(n as i64);
            let weak = Arc::downgrade(&rt);
            let task = tokio::spawn(outlier_interval(weak, d.cfg.interval));
            *rt.outlier_task.lock().unwrap() = Some(task);
        }
        if matches!(
            rt.cfg.discovery,
            Discovery::StrictDns | Discovery::LogicalDns
        ) {
            let weak = Arc::downgrade(&rt);
            let task = tokio::spawn(dns_refresh(weak));
            *rt.dns_task.lock().unwrap() = Some(task);
        }
        rt
    }

    /// The current endpoints as a ClusterLoadAssignment (for `/config_dump?include_eds`).
    pub fn endpoint_assignment(
        &self,
    ) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::core::v3 as core;
        use envoy_types::pb::envoy::config::endpoint::v3 as epb;
        let set = self.endpoints.load();
        let lb_endpoint = |h: &Arc<Host>| epb::LbEndpoint {
            host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(epb::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: h.addr.ip().to_string(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                            h.addr.port() as u32,
                        )),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            health_status: if h.healthy { 1 } else { 2 },
            load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: h.weight,
            }),
            ..Default::default()
        };
        // One group per priority, in order.
        let mut prios: Vec<u32> = set.hosts.iter().map(|h| h.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        epb::ClusterLoadAssignment {
            cluster_name: self.cfg.eds_service_name.clone(),
            endpoints: prios
                .into_iter()
                .map(|p| epb::LocalityLbEndpoints {
                    lb_endpoints: set
                        .hosts
                        .iter()
                        .filter(|h| h.priority == p)
                        .map(lb_endpoint)
                        .collect(),
                    priority: p,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    pub fn is_warm(&self) -> bool {
        self.warm.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces the endpoints (EDS update or DNS answer).
    pub fn set_endpoints(&self, spec: Endpoints) {
        let _g = self.rebuild.lock().unwrap();
        let current = self.endpoints.load();
        if current.spec == spec && self.is_warm() {
            return;
        }
        let set = build_set(&self.cfg, spec, &current.hosts);
        if let Some(d) = &self.outlier {
            for h in current.hosts.iter() {
                if !set.hosts.iter().any(|n| Arc::ptr_eq(n, h)) {
                    d.forget(&h.outlier);
                }
            }
        }
        self.endpoints.store(Arc::new(set));
        self.warm.store(true, std::sync::atomic::Ordering::Release);
        self.update_membership_stats();
    }

    fn update_membership_stats(&self) {
        let set = self.endpoints.load();
        self.stats.membership_total.set(set.hosts.len() as i64);
        self.stats.membership_healthy.set(
            set.hosts
                .iter()
                .filter(|h| h.healthy && !h.outlier.is_ejected())
                .count() as i64,
        );
    }

    /// Tells outlier detection how a request to `host` went; an ejection rebuilds the balancer.
    pub fn report(&self, host: &Host, outcome: outlier::Outcome) {
        let Some(d) = &self.outlier else { return };
        let Some(fired) = d.record(&host.outlier, outcome) else {
            return;
        };
        let _g = self.rebuild.lock().unwrap();
        let set = self.endpoints.load();
        if !set.hosts.iter().any(|h| std::ptr::eq(&**h, host)) {
            return;
        }
        let ejected = set.hosts.iter().filter(|h| h.outlier.is_ejected()).count();
        if d.try_eject(&host.outlier, fired, ejected, set.hosts.len()) {
            tracing::info!(cluster = %self.cfg.name, host = %host.addr, kind = ?fired, "outlier ejected");
            self.rebalance(&set);
        }
    }

    /// Rebuilds the balancer over the same hosts (their health or ejection changed).
    fn rebalance(&self, set: &EndpointSet) {
        let hosts = set.hosts.clone();
        let balancer = Balancer::for_set(
            self.cfg.lb,
            &hosts,
            self.cfg.panic_threshold,
            set.spec.overprovisioning.unwrap_or(140),
        );
        self.endpoints.store(Arc::new(EndpointSet {
            hosts,
            balancer,
            spec: set.spec.clone(),
        }));
        self.update_membership_stats();
    }

    /// Picks a host for a request. For ORIGINAL_DST clusters `orig_dst` is the host.
    pub fn pick(
        &self,
        hash: Option<u64>,
        orig_dst: Option<SocketAddr>,
        avoid: &dyn Fn(&Host) -> bool,
    ) -> Option<Arc<Host>> {
        if self.cfg.discovery == Discovery::OriginalDst {
            let addr = orig_dst?;
            let mut m = self.orig_dst_hosts.lock().unwrap();
            if m.len() > 10_000 {
                m.retain(|_, h| Arc::strong_count(h) > 1);
            }
            return Some(
                m.entry(addr)
                    .or_insert_with(|| Arc::new(Host::new(addr, 1, true, Arc::from(""))))
                    .clone(),
            );
        }
        let set = self.endpoints.load();
        let h = set.balancer.pick(&set.hosts, hash, avoid);
        if h.is_none() {
            self.stats.upstream_cx_none_healthy.inc();
        }
        h
    }
}

fn build_set(cfg: &Cluster, spec: Endpoints, old: &[Arc<Host>]) -> EndpointSet {
    let mut hosts = Vec::new();
    for e in &spec.endpoints {
        let Target::Ip(addr) = e.target else { continue };
        hosts.push(reuse_or_new(old, addr, e));
    }
    EndpointSet {
        balancer: Balancer::for_set(
            cfg.lb,
            &hosts,
            cfg.panic_threshold,
            spec.overprovisioning.unwrap_or(140),
        ),
        hosts,
        spec,
    }
}

fn reuse_or_new(old: &[Arc<Host>], addr: SocketAddr, e: &EndpointSpec) -> Arc<Host> {
    if let Some(h) = old.iter().find(|h| {
        h.addr == addr
            && h.weight == e.weight.max(1)
            && h.healthy == e.healthy
            && h.locality == e.locality
            && h.hostname == e.hostname
            && h.priority == e.priority
    }) {
        return h.clone();
    }
    let mut h = Host::new(addr, e.weight, e.healthy, e.locality.clone());
    h.hostname = e.hostname.clone();
    h.priority = e.priority;
    // A host whose attributes changed keeps its connections.
    if let Some(prev) = old.iter().find(|h| h.addr == addr) {
        h.pool = prev.pool.clone();
    }
    Arc::new(h)
}

/// Outlier detection's interval: ejected hosts whose time is served come back.
async fn outlier_interval(weak: std::sync::Weak<ClusterRt>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rt) = weak.upgrade() else { return };
        let Some(d) = &rt.outlier else { return };
        let _g = rt.rebuild.lock().unwrap();
        let set = rt.endpoints.load_full();
        let mut back = false;
        for h in &set.hosts {
            if d.tick(&h.outlier) {
                tracing::info!(cluster = %rt.cfg.name, host = %h.addr, "outlier ejection ended");
                back = true;
            }
        }
        if back {
            rt.rebalance(&set);
        }
    }
}

/// STRICT_DNS: every address of every hostname is a host. LOGICAL_DNS: the first address.
async fn dns_refresh(weak: std::sync::Weak<ClusterRt>) {
    loop {
        let Some(rt) = weak.upgrade() else { return };
        let la = rt.cfg.load_assignment.clone().unwrap_or_default();
        let logical = rt.cfg.discovery == Discovery::LogicalDns;
        let refresh = rt.cfg.dns_refresh;
        drop(rt);
        let mut out = Vec::new();
        let mut failed = false;
        for e in &la.endpoints {
            match &e.target {
                Target::Ip(_) => out.push(e.clone()),
                Target::Dns(host, port) => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addrs) => {
                            let mut addrs: Vec<SocketAddr> = addrs.collect();
                            addrs.sort();
                            addrs.dedup();
                            if logical {
                                addrs.truncate(1);
                            }
                            for a in addrs {
                                let mut spec = e.clone();
                                spec.target = Target::Ip(a);
                                out.push(spec);
                            }
                        }
                        Err(err) => {
                            tracing::warn!(host, %err, "DNS resolution failed");
                            failed = true;
                        }
                    }
                }
            }
        }
        let Some(rt) = weak.upgrade() else { return };
        // Keep the last good answer when resolution fails.
        if !failed || !out.is_empty() {
            rt.set_endpoints(Endpoints {
                endpoints: out,
                overprovisioning: la.overprovisioning,
            });
        }
        drop(rt);
        tokio::time::sleep(refresh).await;
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn cluster_histograms_are_allocated_on_first_use() {
        // 18 counters and gauges of a cell per worker and a shared one, and one pointer-sized
        // lazy slot for the histograms.
        let cells = crate::stats::OWNED + 1;
        assert_eq!(std::mem::size_of::<ClusterStats>(), 18 * 8 * cells + 16);
        let s = ClusterStats::default();
        let mut names = Vec::new();
        s.visit("c", &mut |n, _| names.push(n));
        assert_eq!(names.len(), 18);
        assert!(s.hists.get().is_none());
        s.response(200, std::time::Duration::from_millis(3));
        let mut hist = None;
        s.visit("c", &mut |n, v| {
            if n == "cluster.c.upstream_rq_time" {
                hist = Some(v);
            }
        });
        let Some(StatValue::Histogram(h)) = hist else {
            panic!("no histogram")
        };
        assert_eq!((h.count(), h.counts[2]), (1, 1));
        assert_eq!(s.rq_2xx.get(), 1);
        s.reset_counters();
        assert_eq!(s.rq_2xx.get(), 0);
    }
}
