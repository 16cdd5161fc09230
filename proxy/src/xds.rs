//! Dynamic configuration from an xDS control plane: registers `xds-client` handlers that turn
//! each `Update<T>` into a [`State`] update, and owns what Envoy's cluster and listener managers
//! do around xDS.
//!
//! - **Apply**: Listener/Cluster updates go to `State::apply_listeners` / `apply_clusters` with
//!   the client's computed removals (SotW full state: previous set minus this response; delta:
//!   `removed_resources`), RouteConfigurations to `apply_routes`, ClusterLoadAssignments to
//!   `apply_endpoints` (a removed assignment empties its cluster). Each `state::Rejected` goes
//!   back to the client, which NACKs naming the resource and the reason; the rest of the batch
//!   applies and the rejected resource keeps its previous version.
//! - **Follow references**: after every LDS/CDS update the RDS/EDS subscriptions are set from
//!   `Snapshot::referenced_routes()` / `referenced_endpoints()`. Route configurations no
//!   listener references any more are unsubscribed but stay in the snapshot, so connections of
//!   a removed (draining) listener keep routing (Envoy frees them with the last HCM using them).
//! - **Versions**: each resource's version (delta: its own; SotW: the response's) is recorded
//!   for `/config_dump`.
//! - **Warming**: [`Xds::readiness`] is true once the first CDS and LDS responses are in and the
//!   snapshot is warm (EDS clusters have endpoints, referenced route configurations arrived), or
//!   once the initial fetch timeout (Envoy's 15 s) has passed since the first CDS+LDS; after
//!   that it stays true, as Envoy's init manager does.
//! - **Stats**: the client's per-type counters are mirrored into the stats registry every
//!   200 ms under Envoy's names: `cluster_manager.cds.*`, `listener_manager.lds.*`, and (one
//!   set per type rather than Envoy's per-route-config / per-cluster scopes) `rds.*`, `eds.*`:
//!   `update_attempt`, `update_success`, `update_rejected` (counters), `version_text` (text);
//!   plus `control_plane.connected_state` (gauge, 1 while a stream is open).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use tokio::task::JoinHandle;
use xds_client::{
    type_url, BackoffConfig, Config, ConnectionState, Protocol, Subscriptions, Update, XdsClient,
};

use crate::state::{Kind, State};
use crate::stats::registry;

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// `http://HOST:PORT` (see [`normalize_address`]).
    pub address: String,
    pub node: core::Node,
    /// Incremental (`DeltaAggregatedResources`) instead of state of the world.
    pub delta: bool,
    pub initial_fetch_timeout: Duration,
    pub backoff: BackoffConfig,
}

impl XdsOptions {
    pub fn new(address: impl Into<String>, node: core::Node) -> XdsOptions {
        XdsOptions {
            address: address.into(),
            node,
            delta: false,
            initial_fetch_timeout: DEFAULT_INITIAL_FETCH_TIMEOUT,
            backoff: BackoffConfig::default(),
        }
    }
}

/// Errors finding the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdsError {
    #[error("invalid xDS address {0:?}: expected grpc://HOST:PORT or http://HOST:PORT")]
    Address(String),
    #[error("bootstrap dynamic_resources.ads_config: {0}")]
    Bootstrap(String),
}

/// `grpc://h:p` and `h:p` become `http://h:p` (plaintext gRPC); `http://` passes through.
/// `https://` is refused: Sluice has no TLS client yet.
pub fn normalize_address(s: &str) -> Result<String, XdsError> {
    let rest = if let Some(r) = s.strip_prefix("grpc://") {
        r
    } else if let Some(r) = s.strip_prefix("http://") {
        r
    } else if s.contains("://") {
        return Err(XdsError::Address(s.into()));
    } else {
        s
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(format!("http://{rest}"))
        }
        _ => Err(XdsError::Address(s.into())),
    }
}

/// The ADS server named by a bootstrap's `dynamic_resources.ads_config`: the first endpoint of
/// the static cluster its first `envoy_grpc` service names, and whether `api_type` is
/// `DELTA_GRPC`. `Ok(None)` when the bootstrap has no ADS config.
pub fn ads_from_bootstrap(b: &Bootstrap) -> Result<Option<(String, bool)>, XdsError> {
    use core::api_config_source::ApiType;
    use core::grpc_service::TargetSpecifier;
    let Some(ads) = b
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.ads_config.as_ref())
    else {
        return Ok(None);
    };
    let err = |m: String| XdsError::Bootstrap(m);
    let delta = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        _ => {
            return Err(err(format!(
                "api_type {} is not supported (GRPC or DELTA_GRPC)",
                ads.api_type
            )))
        }
    };
    let cluster = match ads
        .grpc_services
        .first()
        .and_then(|g| g.target_specifier.as_ref())
    {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.clone(),
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            return normalize_address(&g.target_uri).map(|a| Some((a, delta)))
        }
        None => return Err(err("grpc_services[0] names no cluster".into())),
    };
    let c = b
        .static_resources
        .as_ref()
        .and_then(|s| s.clusters.iter().find(|c| c.name == cluster))
        .ok_or_else(|| err(format!("cluster {cluster:?} is not a static cluster")))?;
    let addr = c
        .load_assignment
        .iter()
        .flat_map(|la| &la.endpoints)
        .flat_map(|l| &l.lb_endpoints)
        .find_map(|e| match &e.host_identifier {
            Some(epb::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })
        .and_then(|a| match &a.address {
            Some(core::address::Address::SocketAddress(sa)) => Some(sa),
            _ => None,
        })
        .ok_or_else(|| {
            err(format!(
                "cluster {cluster:?} has no socket address endpoint"
            ))
        })?;
    let port = match sa_port(addr) {
        Some(p) => p,
        None => return Err(err(format!("cluster {cluster:?}: endpoint has no port"))),
    };
    let host = if addr.address.contains(':') {
        format!("[{}]", addr.address)
    } else {
        addr.address.clone()
    };
    Ok(Some((format!("http://{host}:{port}"), delta)))
}

fn sa_port(sa: &core::SocketAddress) -> Option<u32> {
    match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => Some(p),
        _ => None,
    }
}

/// A running xDS subscription. Dropping it stops the client (the last configuration keeps
/// serving).
pub struct Xds {
    pub client: XdsClient,
    warmth: Arc<Warmth>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Xds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xds")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Drop for Xds {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Xds {
    /// Whether the first configuration is complete (what `/ready` reports).
    pub fn readiness(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let w = self.warmth.clone();
        Arc::new(move || w.is_ready())
    }

    pub fn is_ready(&self) -> bool {
        self.warmth.is_ready()
    }
}

/// Envoy-style initialization: first CDS+LDS responses, then warm or timed out; latched.
struct Warmth {
    state: Arc<State>,
    timeout: Duration,
    /// When the first CDS and LDS responses had both arrived.
    since: OnceLock<Instant>,
    done: AtomicBool,
}

impl Warmth {
    fn is_ready(&self) -> bool {
        if self.done.load(Ordering::Acquire) {
            return true;
        }
        let Some(since) = self.since.get() else {
            return false;
        };
        let ready = self.state.load().is_warm() || since.elapsed() >= self.timeout;
        if ready {
            self.done.store(true, Ordering::Release);
            tracing::info!(
                warm = self.state.load().is_warm(),
                "xDS initialization complete"
            );
        }
        ready
    }
}

/// What the handlers share.
struct Ctx {
    state: Arc<State>,
    subs: OnceLock<Subscriptions>,
}

impl Ctx {
    fn subscribe(&self, type_url: &str, names: BTreeSet<String>) {
        if let Some(s) = self.subs.get() {
            if let Err(e) = s.set(type_url, names) {
                tracing::warn!(%e, type_url, "cannot update xDS subscription");
            }
        }
    }
}

/// Splits an update into messages and (name, version) pairs; the version passed to `State`
/// is the response's, per-resource versions are recorded afterwards when they differ.
fn unpack<T>(u: &mut Update<T>) -> (Vec<T>, Vec<(String, String)>) {
    let mut msgs = Vec::with_capacity(u.updated.len());
    let mut versions = Vec::new();
    for r in std::mem::take(&mut u.updated) {
        if r.version != u.version_info {
            versions.push((r.name, r.version));
        }
        msgs.push(r.message);
    }
    (msgs, versions)
}

/// Per-resource versions of the accepted resources (a rejected one keeps its old version).
fn record_versions(
    ctx: &Ctx,
    kind: Kind,
    mut versions: Vec<(String, String)>,
    rejected: &[crate::state::Rejected],
) {
    versions.retain(|(n, _)| !rejected.iter().any(|r| &r.name == n));
    if !versions.is_empty() {
        ctx.state.set_versions(kind, &versions);
    }
}

type HandlerResult = Result<(), Vec<xds_client::Rejected>>;

fn result(rejected: Vec<crate::state::Rejected>) -> HandlerResult {
    if rejected.is_empty() {
        return Ok(());
    }
    for r in &rejected {
        tracing::warn!(resource = %r.name, reason = %r.reason, "rejecting xDS resource");
    }
    Err(rejected
        .into_iter()
        .map(|r| xds_client::Rejected::new(r.name, r.reason))
        .collect())
}

fn on_clusters(ctx: &Ctx, mut u: Update<cpb::Cluster>) -> HandlerResult {
    let (msgs, versions) = unpack(&mut u);
    let rejected = ctx
        .state
        .apply_clusters(&msgs, &u.removed, false, &u.version_info, false);
    record_versions(ctx, Kind::Cluster, versions, &rejected);
    ctx.subscribe(type_url::ENDPOINT, ctx.state.load().referenced_endpoints());
    tracing::debug!(version = %u.version_info, clusters = msgs.len(), removed = u.removed.len(), "CDS update");
    result(rejected)
}

fn on_listeners(ctx: &Ctx, mut u: Update<lpb::Listener>) -> HandlerResult {
    let (msgs, versions) = unpack(&mut u);
    let rejected = ctx
        .state
        .apply_listeners(&msgs, &u.removed, false, &u.version_info, false);
    record_versions(ctx, Kind::Listener, versions, &rejected);
    // Route configurations no listener references any more are unsubscribed but kept: a
    // removed listener's open connections still route with them until they close.
    let referenced = ctx.state.load().referenced_routes();
    ctx.subscribe(type_url::ROUTE, referenced);
    tracing::debug!(version = %u.version_info, listeners = msgs.len(), removed = u.removed.len(), "LDS update");
    result(rejected)
}

fn on_routes(ctx: &Ctx, mut u: Update<rpb::RouteConfiguration>) -> HandlerResult {
    let (msgs, versions) = unpack(&mut u);
    let rejected = ctx
        .state
        .apply_routes(&msgs, &u.removed, &u.version_info, false);
    record_versions(ctx, Kind::Route, versions, &rejected);
    result(rejected)
}

fn on_endpoints(ctx: &Ctx, mut u: Update<epb::ClusterLoadAssignment>) -> HandlerResult {
    let (mut msgs, versions) = unpack(&mut u);
    // A removed assignment leaves its cluster without endpoints.
    msgs.extend(u.removed.iter().map(|n| epb::ClusterLoadAssignment {
        cluster_name: n.clone(),
        ..Default::default()
    }));
    let rejected = ctx.state.apply_endpoints(&msgs, &u.version_info);
    record_versions(ctx, Kind::Endpoint, versions, &rejected);
    result(rejected)
}

/// Starts the xDS client for `state` (on the current tokio runtime).
pub fn start(state: Arc<State>, opts: XdsOptions) -> Xds {
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        subs: OnceLock::new(),
    });
    let (c1, c2, c3, c4) = (ctx.clone(), ctx.clone(), ctx.clone(), ctx.clone());
    let protocol = if opts.delta {
        Protocol::Delta
    } else {
        Protocol::StateOfTheWorld
    };
    let config = Config::new(opts.address.clone(), opts.node.clone())
        .protocol(protocol)
        .backoff(opts.backoff);
    let (client, task) = XdsClient::builder(config)
        .handler(move |u: Update<cpb::Cluster>| on_clusters(&c1, u))
        .handler(move |u: Update<lpb::Listener>| on_listeners(&c2, u))
        .handler(move |u: Update<rpb::RouteConfiguration>| on_routes(&c3, u))
        .handler(move |u: Update<epb::ClusterLoadAssignment>| on_endpoints(&c4, u))
        .build();
    let _ = ctx.subs.set(client.subscriptions());
    // Static resources may already reference RDS/EDS names.
    let snap = state.load();
    ctx.subscribe(type_url::ROUTE, snap.referenced_routes());
    ctx.subscribe(type_url::ENDPOINT, snap.referenced_endpoints());
    drop(snap);

    let warmth = Arc::new(Warmth {
        state,
        timeout: opts.initial_fetch_timeout,
        since: OnceLock::new(),
        done: AtomicBool::new(false),
    });
    let address = opts.address.clone();
    let mut tasks = vec![tokio::spawn(async move {
        if let Err(e) = task.run().await {
            tracing::error!(%address, %e, "xDS client stopped");
        }
    })];
    let (w, cl) = (warmth.clone(), client.clone());
    tasks.push(tokio::spawn(async move {
        cl.wait_ready(&[type_url::CLUSTER, type_url::LISTENER])
            .await;
        let _ = w.since.set(Instant::now());
        // Latch readiness as soon as it is reached, even if nobody asks.
        while !w.is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    tasks.push(tokio::spawn(mirror_stats(client.clone())));
    tracing::info!(address = %opts.address, delta = opts.delta, node = %opts.node.id, "xDS client started");
    Xds {
        client,
        warmth,
        tasks,
    }
}

/// The stats prefix of a type URL.
fn stat_prefix(type_url: &str) -> Option<&'static str> {
    Some(match type_url {
        type_url::CLUSTER => "cluster_manager.cds",
        type_url::LISTENER => "listener_manager.lds",
        type_url::ROUTE => "rds",
        type_url::ENDPOINT => "eds",
        _ => return None,
    })
}

/// Names of the per-type stats (for docs and tests).
pub fn stat_names(type_url: &str) -> Vec<String> {
    let Some(p) = stat_prefix(type_url) else {
        return Vec::new();
    };
    [
        "update_attempt",
        "update_success",
        "update_rejected",
        "version_text",
    ]
    .iter()
    .map(|s| format!("{p}.{s}"))
    .collect()
}

/// Copies the client's counters into the registry: counters only ever grow by the difference.
async fn mirror_stats(client: XdsClient) {
    let r = registry();
    let connected = r.gauge("control_plane.connected_state");
    for t in [
        type_url::CLUSTER,
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::ENDPOINT,
    ] {
        // Present from the start, as Envoy's are.
        let p = stat_prefix(t).unwrap_or_default();
        for s in ["update_attempt", "update_success", "update_rejected"] {
            r.counter(&format!("{p}.{s}"));
        }
        r.text(&format!("{p}.version_text"));
    }
    let mut seen: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    // Decoding and applying a large response leaves tens of MB of freed heap that glibc keeps;
    // once updates are quiet for a tick, give it back (as the bootstrap path does).
    let mut trim_due = false;
    loop {
        let mut updated = false;
        let stats = client.stats();
        let up = matches!(*client.connection().borrow(), ConnectionState::Connected);
        connected.set(i64::from(up));
        for (t, ts) in &stats.types {
            let Some(p) = stat_prefix(t) else { continue };
            let last = seen.entry(t.clone()).or_default();
            let now = [ts.update_attempt, ts.update_success, ts.update_rejected];
            for (i, s) in ["update_attempt", "update_success", "update_rejected"]
                .iter()
                .enumerate()
            {
                if now[i] > last[i] {
                    r.counter(&format!("{p}.{s}")).add(now[i] - last[i]);
                    updated = true;
                }
            }
            *last = now;
            r.text(&format!("{p}.version_text")).set(&ts.version);
        }
        if updated {
            trim_due = true;
        } else if trim_due {
            trim_due = false;
            tokio::task::spawn_blocking(crate::sys::trim_heap);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            normalize_address("grpc://istiod:15010").unwrap(),
            "http://istiod:15010"
        );
        assert_eq!(
            normalize_address("127.0.0.1:15010").unwrap(),
            "http://127.0.0.1:15010"
        );
        assert_eq!(
            normalize_address("http://[::1]:15010/").unwrap(),
            "http://[::1]:15010"
        );
        assert!(normalize_address("https://istiod:15012").is_err());
        assert!(normalize_address("grpc://istiod").is_err());
    }

    #[test]
    fn bootstrap_ads_cluster() {
        let yaml = r#"
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]
  cds_config: {ads: {}}
  lds_config: {ads: {}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 15010}}}
"#;
        let b: Bootstrap =
            crate::config::proto::decode(yaml, crate::config::proto::Format::Yaml).unwrap();
        assert_eq!(
            ads_from_bootstrap(&b).unwrap(),
            Some(("http://127.0.0.1:15010".into(), true))
        );
        let none: Bootstrap =
            crate::config::proto::decode("{}", crate::config::proto::Format::Yaml).unwrap();
        assert_eq!(ads_from_bootstrap(&none).unwrap(), None);
        let bad = yaml.replace("cluster_name: xds-grpc}", "cluster_name: nope}");
        let b: Bootstrap =
            crate::config::proto::decode(&bad, crate::config::proto::Format::Yaml).unwrap();
        assert!(ads_from_bootstrap(&b)
            .unwrap_err()
            .to_string()
            .contains("\"nope\" is not a static cluster"));
    }
}
