//! The live configuration: an immutable `Snapshot` behind an `ArcSwap`. Readers (every new
//! connection and request) load it without locks; updates validate each resource on its own,
//! build a new snapshot off the data path and swap it in. A resource that fails validation is
//! rejected alone (named, with the reason) and the rest of the update applies, as Envoy does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3 as rpb;

use crate::cluster::ClusterRt;
use crate::model::cluster::{endpoints, Cluster};
use crate::model::listener::Listener;
use crate::model::network::{NetworkFilter, RouteSource};
use crate::route::RouteTable;

/// Version and update time of one resource, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Meta {
    pub version: String,
    pub last_updated: SystemTime,
    /// From the bootstrap's `static_resources`.
    pub is_static: bool,
}

/// A route configuration: the resource as received, protobuf-encoded (decoded on demand by
/// `/config_dump`: a 10,000-virtual-host table's proto struct is tens of MB), and the compiled
/// table.
#[derive(Debug)]
pub struct Routes {
    encoded: bytes::Bytes,
    pub table: Arc<RouteTable>,
    pub meta: Meta,
}

impl Routes {
    /// The route configuration as received.
    pub fn proto(&self) -> rpb::RouteConfiguration {
        use prost::Message;
        rpb::RouteConfiguration::decode(self.encoded.clone())
            .expect("a route configuration's own encoding decodes")
    }
}

/// Everything the data path reads, at one version. Cloning copies the maps of `Arc`s, not the
/// resources.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub listeners: BTreeMap<String, (Arc<Listener>, Meta)>,
    pub routes: BTreeMap<String, Arc<Routes>>,
    pub clusters: BTreeMap<String, (Arc<ClusterRt>, Meta)>,
    /// EDS metadata per cluster (endpoints themselves live in the cluster runtime).
    pub endpoint_meta: BTreeMap<String, Meta>,
    /// Listener by bound address, for original-destination hand-off.
    pub by_address: BTreeMap<SocketAddr, String>,
}

impl Snapshot {
    /// The listener a redirected connection to `dst` belongs to: exact `ip:port`, else the
    /// wildcard address on that port.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        let name = self.by_address.get(&dst).or_else(|| {
            let any: SocketAddr = if dst.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], dst.port()))
            } else {
                SocketAddr::from(([0u16; 8], dst.port()))
            };
            self.by_address.get(&any)
        })?;
        self.listeners.get(name).map(|l| &l.0)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterRt>> {
        self.clusters.get(name).map(|c| &c.0)
    }

    /// RDS names referenced by accepted listeners (what to subscribe to).
    pub fn referenced_routes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (l, _) in self.listeners.values() {
            for ch in l.chains.iter().chain(l.default_chain.iter()) {
                if let NetworkFilter::Http(h) = &ch.filter {
                    if let RouteSource::Rds(n) = &h.route {
                        out.insert(n.clone());
                    }
                }
            }
        }
        out
    }

    /// EDS service names of accepted EDS clusters (what to subscribe to).
    pub fn referenced_endpoints(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter(|(c, _)| c.cfg.discovery == crate::model::cluster::Discovery::Eds)
            .map(|(c, _)| c.cfg.eds_service_name.clone())
            .collect()
    }

    /// Ready when every EDS cluster has endpoints and every RDS route config has arrived.
    pub fn is_warm(&self) -> bool {
        self.clusters.values().all(|(c, _)| c.is_warm())
            && self
                .referenced_routes()
                .iter()
                .all(|r| self.routes.contains_key(r))
    }
}

/// Per-cluster stats of the clusters in this snapshot (for `/stats`).
impl crate::stats::StatSource for Snapshot {
    fn visit(&self, f: &mut dyn FnMut(String, crate::stats::StatValue)) {
        for (name, (rt, _)) in &self.clusters {
            rt.stats.visit(name, f);
        }
    }
    fn reset_counters(&self) {
        for (rt, _) in self.clusters.values() {
            rt.stats.reset_counters();
        }
    }
}

/// A rejected resource: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// A resource type, for [`State::set_versions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Listener,
    Route,
    Cluster,
    Endpoint,
}

impl Rejected {
    pub fn new(name: &str, reason: impl std::fmt::Display) -> Rejected {
        Rejected {
            name: name.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// What binds and unbinds listener sockets when the listener set changes.
pub trait ListenerHost: Send + Sync {
    /// Starts serving `l` (binding its address). Errors reject the listener.
    fn start(&self, l: &Arc<Listener>) -> Result<(), String>;
    /// Stops accepting on a listener; its open connections drain.
    fn stop(&self, name: &str);
}

/// The live configuration and its update path.
pub struct State {
    snap: ArcSwap<Snapshot>,
    update: Mutex<()>,
    host: Mutex<Option<Arc<dyn ListenerHost>>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            snap: ArcSwap::from_pointee(Snapshot::default()),
            update: Mutex::new(()),
            host: Mutex::new(None),
        }
    }
}

fn meta(version: &str, is_static: bool) -> Meta {
    Meta {
        version: version.to_string(),
        last_updated: SystemTime::now(),
        is_static,
    }
}

fn dup_check<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            dups.insert(n.to_string());
        }
    }
    dups
}

impl State {
    pub fn new() -> Arc<State> {
        Arc::new(State::default())
    }

    /// The current snapshot.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snap.load()
    }

    /// A full `Arc` of the current snapshot (held for a connection's lifetime).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.snap.load_full()
    }

    /// Sets what binds listeners (the listener manager).
    pub fn set_listener_host(&self, h: Arc<dyn ListenerHost>) {
        *self.host.lock().unwrap() = Some(h);
    }

    /// Publishes a copy of the current snapshot changed by `f` (callers hold `update`).
    fn modify(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut next = Snapshot::clone(&self.snap.load());
        f(&mut next);
        self.snap.store(Arc::new(next));
    }

    /// Records per-resource versions (delta xDS versions each resource on its own) for
    /// `/config_dump`; resources themselves are untouched, unknown names are ignored.
    pub fn set_versions(&self, kind: Kind, versions: &[(String, String)]) {
        let _g = self.update.lock().unwrap();
        let mut next = Snapshot::clone(&self.snap.load());
        for (name, version) in versions {
            let m = match kind {
                Kind::Listener => next.listeners.get_mut(name).map(|e| &mut e.1),
                Kind::Cluster => next.clusters.get_mut(name).map(|e| &mut e.1),
                Kind::Endpoint => next.endpoint_meta.get_mut(name),
                Kind::Route => {
                    if let Some(r) = next.routes.get_mut(name) {
                        let mut meta = r.meta.clone();
                        meta.version = version.clone();
                        *r = Arc::new(Routes {
                            encoded: r.encoded.clone(),
                            table: r.table.clone(),
                            meta,
                        });
                    }
                    None
                }
            };
            if let Some(m) = m {
                m.version = version.clone();
            }
        }
        self.snap.store(Arc::new(next));
    }

    /// Applies clusters. `full` (state of the world): clusters not listed are removed, except
    /// static ones.
    pub fn apply_clusters(
        &self,
        upserts: &[cpb::Cluster],
        removes: &[String],
        full: bool,
        version: &str,
        is_static: bool,
    ) -> Vec<Rejected> {
        let _g = self.update.lock().unwrap();
        let mut rejected = Vec::new();
        let dups = dup_check(upserts.iter().map(|c| c.name.as_str()));
        let cur = self.snap.load_full();
        let mut clusters = cur.clusters.clone();
        let listed: BTreeSet<&str> = upserts.iter().map(|c| c.name.as_str()).collect();
        if full {
            clusters.retain(|n, (_, m)| m.is_static || listed.contains(n.as_str()));
        }
        for n in removes {
            if clusters.get(n).is_some_and(|(_, m)| !m.is_static) {
                clusters.remove(n);
            }
        }
        for c in upserts {
            if dups.contains(&c.name) {
                rejected.push(Rejected::new(
                    &c.name,
                    "duplicate cluster name in one update",
                ));
                continue;
            }
            match Cluster::from_proto(c) {
                Ok(model) => {
                    let prev = clusters.get(&c.name);
                    // An identical resource keeps its runtime (pools, counters, warm state).
                    if let Some((rt, m)) = prev {
                        if rt.cfg.same_proto(&model) {
                            let m = Meta {
                                version: version.to_string(),
                                ..m.clone()
                            };
                            clusters.insert(c.name.clone(), (rt.clone(), m));
                            continue;
                        }
                    }
                    let rt = ClusterRt::new(Arc::new(model), prev.map(|p| &*p.0));
                    clusters.insert(c.name.clone(), (rt, meta(version, is_static)));
                }
                Err(e) => rejected.push(Rejected::new(&c.name, e)),
            }
        }
        self.modify(|s| s.clusters = clusters);
        rejected
    }

    /// Applies ClusterLoadAssignments (EDS). Assignments for unknown clusters are kept for
    /// nothing: Envoy only asks for clusters it has.
    pub fn apply_endpoints(
        &self,
        upserts: &[epb::ClusterLoadAssignment],
        version: &str,
    ) -> Vec<Rejected> {
        let _g = self.update.lock().unwrap();
        let mut rejected = Vec::new();
        let dups = dup_check(upserts.iter().map(|c| c.cluster_name.as_str()));
        let cur = self.snap.load_full();
        let mut em = cur.endpoint_meta.clone();
        // EDS clusters by service name (one lookup per assignment, not a scan).
        let mut by_service: std::collections::HashMap<&str, Vec<&Arc<ClusterRt>>> =
            std::collections::HashMap::new();
        for (c, _) in cur.clusters.values() {
            if c.cfg.discovery == crate::model::cluster::Discovery::Eds {
                by_service
                    .entry(c.cfg.eds_service_name.as_str())
                    .or_default()
                    .push(c);
            }
        }
        for la in upserts {
            if dups.contains(&la.cluster_name) {
                rejected.push(Rejected::new(
                    &la.cluster_name,
                    "duplicate cluster_name in one update",
                ));
                continue;
            }
            let eps = match endpoints(la, crate::model::cluster::Discovery::Eds) {
                Ok(e) => e,
                Err((f, r)) => {
                    rejected.push(Rejected::new(&la.cluster_name, format!("{f}: {r}")));
                    continue;
                }
            };
            for c in by_service
                .get(la.cluster_name.as_str())
                .into_iter()
                .flatten()
            {
                c.set_endpoints(eps.clone());
            }
            em.insert(la.cluster_name.clone(), meta(version, false));
        }
        self.modify(|s| s.endpoint_meta = em);
        rejected
    }

    /// Applies route configurations (RDS).
    pub fn apply_routes(
        &self,
        upserts: &[rpb::RouteConfiguration],
        removes: &[String],
        version: &str,
        is_static: bool,
    ) -> Vec<Rejected> {
        let _g = self.update.lock().unwrap();
        let mut rejected = Vec::new();
        let dups = dup_check(upserts.iter().map(|c| c.name.as_str()));
        let cur = self.snap.load_full();
        let mut routes = cur.routes.clone();
        for n in removes {
            routes.remove(n);
        }
        for rc in upserts {
            if dups.contains(&rc.name) {
                rejected.push(Rejected::new(
                    &rc.name,
                    "duplicate route configuration name in one update",
                ));
                continue;
            }
            match RouteTable::from_proto(rc) {
                Ok(t) => {
                    routes.insert(
                        rc.name.clone(),
                        Arc::new(Routes {
                            encoded: prost::Message::encode_to_vec(rc).into(),
                            table: Arc::new(t),
                            meta: meta(version, is_static),
                        }),
                    );
                }
                Err(e) => rejected.push(Rejected::new(&rc.name, e)),
            }
        }
        self.modify(|s| s.routes = routes);
        rejected
    }

    /// Applies listeners: new ones bind, removed ones stop accepting and drain, changed ones
    /// serve new connections with the new filter chains.
    pub fn apply_listeners(
        &self,
        upserts: &[lpb::Listener],
        removes: &[String],
        full: bool,
        version: &str,
        is_static: bool,
    ) -> Vec<Rejected> {
        let _g = self.update.lock().unwrap();
        let host = self.host.lock().unwrap().clone();
        let mut rejected = Vec::new();
        let dups = dup_check(upserts.iter().map(|c| c.name.as_str()));
        let cur = self.snap.load_full();
        let mut listeners = cur.listeners.clone();
        let listed: BTreeSet<&str> = upserts.iter().map(|c| c.name.as_str()).collect();
        let mut stopped = Vec::new();
        if full {
            listeners.retain(|n, (_, m)| {
                let keep = m.is_static || listed.contains(n.as_str());
                if !keep {
                    stopped.push(n.clone());
                }
                keep
            });
        }
        for n in removes {
            if listeners.get(n).is_some_and(|(_, m)| !m.is_static) {
                listeners.remove(n);
                stopped.push(n.clone());
            }
        }
        for l in upserts {
            if dups.contains(&l.name) {
                rejected.push(Rejected::new(
                    &l.name,
                    "duplicate listener name in one update",
                ));
                continue;
            }
            if let Some((old, m)) = listeners.get(&l.name) {
                if old.same_proto(l) {
                    let m = Meta {
                        version: version.to_string(),
                        ..m.clone()
                    };
                    let old = old.clone();
                    listeners.insert(l.name.clone(), (old, m));
                    continue;
                }
            }
            let model = match Listener::from_proto(l) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    rejected.push(Rejected::new(&l.name, e));
                    continue;
                }
            };
            // Another listener already on this address? (Port 0 binds a fresh port each time.)
            if let Some(addr) = model
                .address
                .filter(|a| model.bind_to_port && a.port() != 0)
            {
                if let Some((other, _)) = listeners.values().find(|(o, _)| {
                    o.name != model.name && o.bind_to_port && o.address == Some(addr)
                }) {
                    rejected.push(Rejected::new(
                        &l.name,
                        format!("address {addr} is already used by listener {}", other.name),
                    ));
                    continue;
                }
            }
            let old = listeners.get(&l.name).map(|o| o.0.clone());
            let rebinding = old
                .as_ref()
                .is_none_or(|o| o.address != model.address || o.bind_to_port != model.bind_to_port);
            if let (Some(h), true) = (&host, model.bind_to_port) {
                if rebinding {
                    if old.is_some() {
                        h.stop(&l.name);
                    }
                    if let Err(e) = h.start(&model) {
                        rejected.push(Rejected::new(&l.name, e));
                        if let Some(o) = &old {
                            // Keep the old listener serving.
                            let _ = h.start(o);
                        }
                        continue;
                    }
                }
            }
            listeners.insert(l.name.clone(), (model, meta(version, is_static)));
        }
        if let Some(h) = &host {
            for n in &stopped {
                h.stop(n);
            }
        }
        let by_address = listeners
            .values()
            .filter_map(|(l, _)| l.address.map(|a| (a, l.name.clone())))
            .collect();
        self.modify(|s| {
            s.listeners = listeners;
            s.by_address = by_address;
        });
        rejected
    }
}
