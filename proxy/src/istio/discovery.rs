//! `sluice discovery`: an Aggregated Discovery Service (xDS v3, state of the world and delta)
//! serving each connecting proxy the translation ([`translate`](super::translate)) of a config
//! directory for its own node identity, and pushing what changes when the directory changes.
//!
//! - **Identity.** The first request of a stream must carry a `Node`. Its id is Istio's
//!   `sidecar~IP~POD.NS~NS.svc.cluster.local` (or `router~...`); labels come from the
//!   `LABELS` metadata struct, the namespace from `NAMESPACE` metadata or the id, the
//!   interception mode from `INTERCEPTION_MODE` (`NONE`, else redirect), HTTP/1.0 support from
//!   `HTTP10` (`1`). See [`node_from_proto`].
//! - **Translation** is cached per node identity and config generation ([`Discovery`]), so
//!   proxies of the same workload share the work. Every resource has a version: the FNV-1a hash
//!   of its canonical encoding (Envoy JSON with sorted keys: the binary encoding of proto maps
//!   such as `Struct` metadata follows hash-map order, so it differs between translations of the
//!   same resource), stable across streams, generations and server restarts.
//! - **State of the world.** Listener and Cluster responses carry every resource; Route and
//!   Endpoint responses those named in `resource_names`, or all when none are named. The
//!   response version is a hash of the (name, version) pairs sent; every response has a fresh
//!   nonce. Requests with a stale nonce are ignored. An ACK only records what the proxy has;
//!   a NACK (`error_detail`) is logged and nothing is resent until the config changes.
//! - **Delta.** Per type, the stream tracks the subscription (wildcard, `*`, or names, via
//!   `resource_names_subscribe` / `_unsubscribe`) and the version the proxy has of each
//!   resource (seeded by `initial_resource_versions`); responses carry only resources whose
//!   version differs and the names that disappeared (or, once, subscribed names that do not
//!   exist). Subscribing again to a name resends it. The first response of a type is sent even
//!   when empty; NACKs are logged and nothing is resent until the config changes.
//! - **Push on change.** [`Discovery::watch`] polls the directory (like `sluice run
//!   --config-dir`), loads it when a file changed, and publishes a new generation; every
//!   stream re-translates for its node and pushes the types that changed, clusters and
//!   endpoints before listeners and routes. A load error keeps the last good generation.
//! - **Shutdown.** When [`Discovery::serve`]'s shutdown future completes, open streams end with
//!   `UNAVAILABLE`, so proxies reconnect (with their versions) to the next server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node as NodeProto;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{load_path, Config, Interception, Level, LoadError, Node, Resources, Role};

/// Type URLs served, in push order (clusters and endpoints before what uses them).
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Push order.
    pub const ALL: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
}

/// Errors of the discovery server.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("loading {dir}: {source}")]
    Load {
        dir: PathBuf,
        #[source]
        source: LoadError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Why a `Node` cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("the first request of a stream must carry a node")]
    Missing,
    #[error("node id {0:?} is not TYPE~IP~POD.NAMESPACE~DOMAIN")]
    BadId(String),
    #[error("node id {id:?}: proxy type {kind:?} is neither sidecar nor router")]
    BadType { id: String, kind: String },
    #[error("node {0:?} names no namespace (id or NAMESPACE metadata)")]
    NoNamespace(String),
}

/// Maps an xDS `Node` (as istio-agent or `xds_client::NodeSettings` builds it) to the
/// translation's [`Node`].
pub fn node_from_proto(node: Option<&NodeProto>) -> Result<Node, NodeError> {
    let node = node.ok_or(NodeError::Missing)?;
    let parts: Vec<&str> = node.id.split('~').collect();
    if parts.len() != 4 {
        return Err(NodeError::BadId(node.id.clone()));
    }
    let role = match parts[0] {
        "sidecar" => Role::Sidecar,
        "router" => Role::Router,
        other => {
            return Err(NodeError::BadType {
                id: node.id.clone(),
                kind: other.to_string(),
            })
        }
    };
    let empty = Struct::default();
    let md = node.metadata.as_ref().unwrap_or(&empty);
    let string = |key: &str| match md.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let namespace = string("NAMESPACE")
        .or_else(|| {
            parts[2]
                .split_once('.')
                .map(|(_, ns)| ns.to_string())
                .filter(|ns| !ns.is_empty())
        })
        .or_else(|| {
            parts[3]
                .split('.')
                .next()
                .filter(|ns| !ns.is_empty())
                .map(String::from)
        })
        .ok_or_else(|| NodeError::NoNamespace(node.id.clone()))?;
    let mut labels = BTreeMap::new();
    if let Some(Kind::StructValue(s)) = md.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        for (k, v) in &s.fields {
            let v = match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                Some(Kind::NumberValue(n)) => n.to_string(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                _ => continue,
            };
            labels.insert(k.clone(), v);
        }
    }
    let ip = Some(parts[1].to_string())
        .filter(|ip| !ip.is_empty())
        .or_else(|| {
            string("INSTANCE_IPS").and_then(|s| s.split(',').next().map(|s| s.trim().to_string()))
        });
    let interception = match string("INTERCEPTION_MODE").as_deref() {
        Some("NONE") => Interception::None,
        _ => Interception::Redirect,
    };
    Ok(Node {
        role,
        namespace,
        labels,
        ip,
        interception,
        access_log_file: None,
        http10: string("HTTP10").as_deref() == Some("1"),
    })
}

/// A cache key for a node identity (everything the translation reads).
fn node_key(n: &Node) -> String {
    format!("{n:?}")
}

/// FNV-1a, 64 bits: stable across processes and Rust versions (unlike `DefaultHasher`).
fn fnv(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One resource ready to send.
#[derive(Debug, Clone)]
pub struct Item {
    pub any: Any,
    /// Hash of the canonical encoding.
    pub version: String,
}

/// The resources of one type, by name.
pub type TypeSet = BTreeMap<String, Item>;

/// A translation for one node and generation, with resource versions.
#[derive(Debug)]
pub struct Translated {
    pub generation: u64,
    pub resources: Resources,
    /// Type URL → resources.
    pub sets: BTreeMap<&'static str, TypeSet>,
}

impl Translated {
    fn new(generation: u64, resources: Resources, prev: Option<&Translated>) -> Translated {
        let mut sets = BTreeMap::new();
        let p = prev.map(|p| &p.resources);
        let ps = |t: &str| prev.and_then(|p| p.sets.get(t));
        sets.insert(
            type_url::CLUSTER,
            index(
                &resources.clusters,
                p.map(|p| &p.clusters[..]),
                ps(type_url::CLUSTER),
                |c| &c.name,
            ),
        );
        sets.insert(
            type_url::ENDPOINT,
            index(
                &resources.endpoints,
                p.map(|p| &p.endpoints[..]),
                ps(type_url::ENDPOINT),
                |c| &c.cluster_name,
            ),
        );
        sets.insert(
            type_url::LISTENER,
            index(
                &resources.listeners,
                p.map(|p| &p.listeners[..]),
                ps(type_url::LISTENER),
                |c| &c.name,
            ),
        );
        sets.insert(
            type_url::ROUTE,
            index(
                &resources.routes,
                p.map(|p| &p.routes[..]),
                ps(type_url::ROUTE),
                |c| &c.name,
            ),
        );
        Translated {
            generation,
            resources,
            sets,
        }
    }

    fn set(&self, type_url: &str) -> Option<&TypeSet> {
        self.sets.get(type_url)
    }
}

/// Packs and versions `items` by name; an item equal to its previous version is reused as is.
fn index<T: Message + prost::Name + PartialEq + Clone>(
    items: &[T],
    prev: Option<&[T]>,
    prev_set: Option<&TypeSet>,
    name: fn(&T) -> &String,
) -> TypeSet {
    let old: HashMap<&str, &T> = prev
        .unwrap_or_default()
        .iter()
        .map(|t| (name(t).as_str(), t))
        .collect();
    let mut out = TypeSet::new();
    for t in items {
        let n = name(t);
        if let (Some(o), Some(item)) = (old.get(n.as_str()), prev_set.and_then(|s| s.get(n))) {
            if *o == t {
                out.insert(n.clone(), item.clone());
                continue;
            }
        }
        let canonical = serde_json::to_vec(&crate::config::proto::to_json(t)).unwrap_or_default();
        let version = format!("{:016x}", fnv(canonical, FNV_OFFSET));
        let any = envoy_types::util::pack_any(t.clone());
        out.insert(n.clone(), Item { any, version });
    }
    out
}

/// Loaded configuration of one generation.
#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
}

/// The server's shared state: the current config generation and translations per node.
#[derive(Debug)]
pub struct Discovery {
    dir: PathBuf,
    config: watch::Sender<Arc<Generation>>,
    cache: tokio::sync::Mutex<HashMap<String, Arc<Translated>>>,
    /// Set when [`serve`](Discovery::serve) shuts down: open streams end with `UNAVAILABLE`
    /// (so proxies reconnect) instead of holding the graceful shutdown open.
    closing: watch::Sender<bool>,
}

/// Paths, modification times and sizes of the config files (what a reload compares).
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    super::load::config_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let t = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map(|m| m.len()).unwrap_or(0);
            (f, t, len)
        })
        .collect()
}

fn log_messages(cfg: &Config) {
    for m in &cfg.messages {
        match m.level {
            Level::Error => tracing::error!("{m}"),
            Level::Warning => tracing::warn!("{m}"),
            Level::Info => tracing::debug!("{m}"),
        }
    }
}

impl Discovery {
    /// Loads `dir` (generation 1).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Arc<Discovery>, DiscoveryError> {
        let dir = dir.into();
        let cfg = load_path(&dir).map_err(|source| DiscoveryError::Load {
            dir: dir.clone(),
            source,
        })?;
        log_messages(&cfg);
        Ok(Arc::new(Discovery {
            dir,
            config: watch::Sender::new(Arc::new(Generation {
                number: 1,
                config: Arc::new(cfg),
            })),
            cache: Default::default(),
            closing: watch::Sender::new(false),
        }))
    }

    /// The current generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.config.borrow().clone()
    }

    /// Publishes `cfg` as the next generation (every stream re-translates and pushes).
    pub fn publish(&self, cfg: Config) {
        log_messages(&cfg);
        self.config.send_modify(|g| {
            *g = Arc::new(Generation {
                number: g.number + 1,
                config: Arc::new(cfg),
            })
        });
        tracing::info!(
            generation = self.generation().number,
            "config changed in {}",
            self.dir.display()
        );
    }

    /// Loads the directory again and publishes it; on a load error the current generation
    /// stays.
    pub fn reload(&self) -> Result<(), DiscoveryError> {
        let cfg = load_path(&self.dir).map_err(|source| DiscoveryError::Load {
            dir: self.dir.clone(),
            source,
        })?;
        self.publish(cfg);
        Ok(())
    }

    /// Polls the directory every `every` and reloads when a file changed. Runs forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut last = fingerprint(&self.dir);
        loop {
            tokio::time::sleep(every).await;
            let fp = fingerprint(&self.dir);
            if fp == last {
                continue;
            }
            last = fp;
            if let Err(e) = self.reload() {
                tracing::error!(error = %e, "reloading Istio config; keeping the last good one");
            }
        }
    }

    /// The translation of the current generation for `node` (cached per node identity).
    pub async fn translation(&self, node: &Node) -> Arc<Translated> {
        let generation = self.generation();
        let key = node_key(node);
        let mut cache = self.cache.lock().await;
        let prev = cache.get(&key).cloned();
        if let Some(p) = &prev {
            if p.generation == generation.number {
                return p.clone();
            }
        }
        let node2 = node.clone();
        let cfg = generation.config.clone();
        let resources = tokio::task::spawn_blocking(move || super::translate(&cfg, &node2))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "translation panicked");
                Resources::default()
            });
        let t = Arc::new(Translated::new(
            generation.number,
            resources,
            prev.as_deref(),
        ));
        // Forget translations of nodes no stream holds any more.
        cache.retain(|_, v| Arc::strong_count(v) > 1);
        cache.insert(key, t.clone());
        t
    }

    /// The gRPC service.
    pub fn service(self: &Arc<Self>) -> AggregatedDiscoveryServiceServer<Service> {
        AggregatedDiscoveryServiceServer::new(Service(self.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// Serves ADS on `listener` until `shutdown` completes; then ends every open stream
    /// with `UNAVAILABLE` and returns once connections have closed.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), DiscoveryError> {
        let closing = self.closing.clone();
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                self.service(),
                TcpListenerStream::new(listener),
                async move {
                    shutdown.await;
                    closing.send_replace(true);
                },
            )
            .await?;
        Ok(())
    }

    /// Completes when the server shuts down.
    async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn signalled() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down: ending ADS streams");
}

/// Loads `dir`, watches it (polling every `every`) and serves ADS on `addr` until SIGINT or
/// SIGTERM.
pub async fn run(dir: PathBuf, addr: SocketAddr, every: Duration) -> Result<(), DiscoveryError> {
    let d = Discovery::new(dir)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DiscoveryError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %bound, dir = %d.dir.display(), "serving ADS (state of the world and delta)");
    tokio::spawn(d.clone().watch(every));
    d.serve(listener, signalled()).await
}

/// The ADS service over a [`Discovery`].
#[derive(Debug, Clone)]
pub struct Service(Arc<Discovery>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let peer = request.remote_addr();
        tokio::spawn(drive(
            self.0.clone(),
            Sotw::default(),
            request.into_inner(),
            tx,
            peer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let peer = request.remote_addr();
        tokio::spawn(drive(
            self.0.clone(),
            Delta::default(),
            request.into_inner(),
            tx,
            peer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn known_type(t: &str) -> bool {
    type_url::ALL.contains(&t)
}

/// Listener and Cluster are always served whole in state of the world.
fn always_all(t: &str) -> bool {
    t == type_url::LISTENER || t == type_url::CLUSTER
}

/// The two ADS variants, as the stream driver ([`drive`]) sees them.
trait Variant: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    fn node(req: &Self::Request) -> Option<&NodeProto>;
    fn type_url(req: &Self::Request) -> &str;
    /// Records a request; returns whether `type_url` must be answered now (and whether a
    /// response is due even if nothing changed).
    fn on_request(&mut self, req: Self::Request, peer: &str) -> Option<bool>;
    /// The response for `type_url` from `t`, unless nothing is due (`force`: send anyway).
    fn respond(
        &mut self,
        t: &Translated,
        type_url: &str,
        force: bool,
        peer: &str,
    ) -> Option<Self::Response>;
}

/// Runs one ADS stream: identifies the proxy from the first request, answers requests, and
/// pushes what changed on every new config generation, until the proxy or the server goes.
async fn drive<V: Variant>(
    d: Arc<Discovery>,
    mut v: V,
    mut requests: Streaming<V::Request>,
    tx: mpsc::Sender<Result<V::Response, Status>>,
    addr: Option<SocketAddr>,
) {
    let mut config = d.config.subscribe();
    config.borrow_and_update();
    let mut peer: Option<(Node, String)> = None;
    let mut current: Option<Arc<Translated>> = None;
    loop {
        tokio::select! {
            msg = requests.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(?addr, error = %e, "ADS stream ended");
                        break;
                    }
                };
                let (node, id) = match &peer {
                    Some(p) => p,
                    None => match node_from_proto(V::node(&req)) {
                        Ok(n) => {
                            let id = V::node(&req).map(|n| n.id.clone()).unwrap_or_default();
                            tracing::info!(node = %id, role = ?n.role, namespace = %n.namespace,
                                labels = ?n.labels, "proxy connected");
                            peer.insert((n, id))
                        }
                        Err(e) => {
                            tracing::warn!(?addr, error = %e, "refusing ADS stream");
                            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                            return;
                        }
                    },
                };
                let type_url = V::type_url(&req).to_string();
                if !known_type(&type_url) {
                    tracing::warn!(node = %id, %type_url, "request for an unsupported type; ignored");
                    continue;
                }
                let Some(force) = v.on_request(req, id) else { continue };
                let t = match &current {
                    Some(t) => t.clone(),
                    None => current.insert(d.translation(node).await).clone(),
                };
                if let Some(resp) = v.respond(&t, &type_url, force, id) {
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            }
            () = d.closed() => {
                let _ = tx.send(Err(Status::unavailable("discovery server shutting down"))).await;
                return;
            }
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                config.borrow_and_update();
                let Some((node, id)) = &peer else { continue };
                let t = d.translation(node).await;
                current = Some(t.clone());
                for type_url in type_url::ALL {
                    if let Some(resp) = v.respond(&t, type_url, false, id) {
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
    if let Some((_, id)) = peer {
        tracing::info!(node = %id, "proxy disconnected");
    }
}

/// State-of-the-world state of one type on one stream.
#[derive(Debug, Default)]
struct SotwType {
    /// Requested names (empty: all).
    names: Vec<String>,
    /// Version and nonce of the last response.
    sent_version: Option<String>,
    nonce: String,
}

/// The SotW response of `type_url` for `names` (empty: all).
fn sotw_view<'a>(
    t: &'a Translated,
    type_url: &str,
    names: &[String],
) -> Vec<(&'a String, &'a Item)> {
    let Some(set) = t.set(type_url) else {
        return Vec::new();
    };
    if names.is_empty() || always_all(type_url) {
        set.iter().collect()
    } else {
        let wanted: BTreeSet<&String> = names.iter().collect();
        set.iter().filter(|(n, _)| wanted.contains(n)).collect()
    }
}

fn sotw_version(view: &[(&String, &Item)]) -> String {
    let mut h = FNV_OFFSET;
    for (n, i) in view {
        h = fnv(n.bytes().chain([0]), h);
        h = fnv(i.version.bytes().chain([0]), h);
    }
    format!("{h:016x}")
}

/// State of the world on one stream.
#[derive(Debug, Default)]
struct Sotw {
    types: BTreeMap<String, SotwType>,
    nonce: u64,
}

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn node(req: &DiscoveryRequest) -> Option<&NodeProto> {
        req.node.as_ref()
    }

    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }

    fn on_request(&mut self, req: DiscoveryRequest, peer: &str) -> Option<bool> {
        let type_url = &req.type_url;
        let st = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != st.nonce {
            tracing::debug!(node = %peer, %type_url, nonce = %req.response_nonce, "stale nonce; ignored");
            return None;
        }
        if let Some(err) = &req.error_detail {
            tracing::warn!(node = %peer, %type_url, version = ?st.sent_version,
                nonce = %req.response_nonce, error = %err.message,
                "NACK; not resending until the config changes");
            return None;
        }
        let names_changed = st.names != req.resource_names;
        st.names = req.resource_names;
        // A request without a nonce (a new stream, or a new type) is always answered.
        let first = req.response_nonce.is_empty();
        if !first && !names_changed {
            tracing::debug!(node = %peer, %type_url, version = %req.version_info, "ACK");
            return None;
        }
        Some(first)
    }

    fn respond(
        &mut self,
        t: &Translated,
        type_url: &str,
        force: bool,
        peer: &str,
    ) -> Option<DiscoveryResponse> {
        let st = self.types.get_mut(type_url)?;
        let view = sotw_view(t, type_url, &st.names);
        let version = sotw_version(&view);
        if !force && st.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        self.nonce += 1;
        st.nonce = self.nonce.to_string();
        tracing::debug!(node = %peer, %type_url, %version, nonce = %st.nonce,
            resources = view.len(), "sending DiscoveryResponse");
        st.sent_version = Some(version.clone());
        Some(DiscoveryResponse {
            version_info: version,
            resources: view.iter().map(|(_, i)| i.any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce: st.nonce.clone(),
            ..Default::default()
        })
    }
}

/// Delta state of one type on one stream.
#[derive(Debug, Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name → version.
    known: BTreeMap<String, String>,
    /// Names just subscribed to: if they do not exist, the next response says so (in
    /// `removed_resources`), so the proxy stops waiting for them.
    announce_missing: BTreeSet<String>,
    /// Nonce of the last response.
    nonce: String,
    /// Whether a response was sent on this stream.
    answered: bool,
}

impl DeltaType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Incremental xDS on one stream.
#[derive(Debug, Default)]
struct Delta {
    types: BTreeMap<String, DeltaType>,
    nonce: u64,
}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&NodeProto> {
        req.node.as_ref()
    }

    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest, peer: &str) -> Option<bool> {
        let type_url = &req.type_url;
        let first = !self.types.contains_key(type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        if let Some(err) = &req.error_detail {
            tracing::warn!(node = %peer, %type_url, nonce = %req.response_nonce,
                error = %err.message, "NACK; not resending until the config changes");
        } else if !req.response_nonce.is_empty() {
            tracing::debug!(node = %peer, %type_url, nonce = %req.response_nonce, "ACK");
        }
        if first {
            // Legacy wildcard: a first request naming nothing asks for everything.
            st.wildcard = req.resource_names_subscribe.is_empty();
            st.known = req.initial_resource_versions.into_iter().collect();
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(n.clone());
                st.announce_missing.insert(n.clone());
                if !first {
                    // Subscribing again asks for the resource again.
                    st.known.remove(n);
                }
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(n);
            }
        }
        // The proxy drops what it unsubscribed from by itself.
        let wanted: BTreeMap<String, String> = std::mem::take(&mut st.known)
            .into_iter()
            .filter(|(n, _)| st.wants(n))
            .collect();
        st.known = wanted;
        let changed = first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty();
        changed.then_some(false)
    }

    fn respond(
        &mut self,
        t: &Translated,
        type_url: &str,
        _force: bool,
        peer: &str,
    ) -> Option<DeltaDiscoveryResponse> {
        let st = self.types.get_mut(type_url)?;
        let empty = TypeSet::new();
        let set = t.set(type_url).unwrap_or(&empty);
        let mut resources = Vec::new();
        for (name, item) in set.iter().filter(|(n, _)| st.wants(n)) {
            if st.known.get(name) != Some(&item.version) {
                resources.push(DeltaResource {
                    name: name.clone(),
                    version: item.version.clone(),
                    resource: Some(item.any.clone()),
                    ..Default::default()
                });
            }
        }
        let mut removed: BTreeSet<String> = st
            .known
            .keys()
            .filter(|n| !set.contains_key(*n) || !st.wants(n))
            .cloned()
            .collect();
        removed.extend(
            std::mem::take(&mut st.announce_missing)
                .into_iter()
                .filter(|n| !set.contains_key(n) && st.wants(n)),
        );
        // The first response of a type is due even when empty: the proxy waits for it.
        if resources.is_empty() && removed.is_empty() && st.answered {
            return None;
        }
        for r in &resources {
            st.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            st.known.remove(n);
        }
        self.nonce += 1;
        st.nonce = self.nonce.to_string();
        st.answered = true;
        tracing::debug!(node = %peer, %type_url, nonce = %st.nonce, resources = resources.len(),
            removed = removed.len(), "sending DeltaDiscoveryResponse");
        Some(DeltaDiscoveryResponse {
            system_version_info: t.generation.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed.into_iter().collect(),
            nonce: st.nonce.clone(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    #[test]
    fn node_identity_from_istio_id_and_metadata() {
        let labels = Struct {
            fields: [
                ("app".to_string(), s("reviews")),
                ("version".to_string(), s("v2")),
            ]
            .into_iter()
            .collect(),
        };
        let n = NodeProto {
            id: "sidecar~10.1.2.3~reviews-v2-x.bookinfo~bookinfo.svc.cluster.local".into(),
            metadata: Some(Struct {
                fields: [
                    (
                        "LABELS".to_string(),
                        Value {
                            kind: Some(Kind::StructValue(labels)),
                        },
                    ),
                    ("INTERCEPTION_MODE".to_string(), s("NONE")),
                    ("HTTP10".to_string(), s("1")),
                ]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let node = node_from_proto(Some(&n)).unwrap();
        assert_eq!(node.role, Role::Sidecar);
        assert_eq!(node.namespace, "bookinfo");
        assert_eq!(node.ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(node.labels["version"], "v2");
        assert_eq!(node.interception, Interception::None);
        assert!(node.http10);

        let gw = NodeProto {
            id: "router~~gw-1.istio-system~istio-system.svc.cluster.local".into(),
            metadata: Some(Struct {
                fields: [
                    ("NAMESPACE".to_string(), s("ingress")),
                    ("INSTANCE_IPS".to_string(), s("10.0.0.9,fd00::9")),
                ]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let node = node_from_proto(Some(&gw)).unwrap();
        assert_eq!(node.role, Role::Router);
        assert_eq!(node.namespace, "ingress");
        assert!(!node.http10);
        assert_eq!(node.ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(node.interception, Interception::Redirect);

        assert_eq!(node_from_proto(None).unwrap_err(), NodeError::Missing);
        let bad = NodeProto {
            id: "envoy-1".into(),
            ..Default::default()
        };
        assert!(matches!(
            node_from_proto(Some(&bad)),
            Err(NodeError::BadId(_))
        ));
        let bad = NodeProto {
            id: "waypoint~1.2.3.4~a.b~b.svc.cluster.local".into(),
            ..Default::default()
        };
        assert!(matches!(
            node_from_proto(Some(&bad)),
            Err(NodeError::BadType { .. })
        ));
    }

    #[test]
    fn unchanged_resources_keep_versions_across_generations() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/bookinfo");
        let cfg = load_path(&dir).unwrap();
        let node = Node::sidecar("default");
        let a = Translated::new(1, super::super::translate(&cfg, &node), None);
        let b = Translated::new(2, super::super::translate(&cfg, &node), Some(&a));
        // Without a previous generation (another process): the same versions all the same.
        let c = Translated::new(1, super::super::translate(&cfg, &node), None);
        for t in type_url::ALL {
            let va: Vec<_> = a.sets[t].iter().map(|(n, i)| (n, &i.version)).collect();
            let vb: Vec<_> = b.sets[t].iter().map(|(n, i)| (n, &i.version)).collect();
            let vc: Vec<_> = c.sets[t].iter().map(|(n, i)| (n, &i.version)).collect();
            assert!(!va.is_empty(), "{t}");
            assert_eq!(va, vb, "{t}");
            assert_eq!(va, vc, "{t}");
        }
        assert_eq!(
            sotw_version(&sotw_view(&a, type_url::ROUTE, &[])),
            sotw_version(&sotw_view(&b, type_url::ROUTE, &[]))
        );
        let one = vec!["9080".to_string()];
        assert_eq!(sotw_view(&a, type_url::ROUTE, &one).len(), 1);
        assert_eq!(
            sotw_view(&a, type_url::CLUSTER, &one).len(),
            a.resources.clusters.len(),
            "clusters are always served whole"
        );
    }
}
