//! The client: configuration, handler registration, the reconnect loop, and the handles the
//! proxy keeps (subscriptions, connection state, readiness, stats).
//!
//! [`XdsClient::builder`] collects one handler per type URL; [`XdsClientBuilder::build`]
//! returns a cloneable [`XdsClient`] handle and the [`AdsTask`] to spawn. The task connects,
//! runs one ADS stream (`sotw.rs` or `delta.rs`) until it fails, then waits a jittered
//! exponential back-off (`backoff.rs`) and reconnects, resubscribing to everything the
//! handle asks for. Versions and known resources survive reconnects; handlers are never
//! called while the control plane is away, so the proxy keeps serving its last config.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::handler::{ErasedHandler, Handler, Typed, XdsResource};
use crate::type_url;

/// Errors of the client and its handles.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid control plane address {address:?}: {source}")]
    InvalidAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("ADS stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("control plane closed the ADS stream")]
    Closed,
    #[error("no handler registered for type URL {0}")]
    UnknownType(String),
    #[error("type URL {0} is subscribed by wildcard; its resource names cannot be set")]
    Wildcard(String),
}

/// Which ADS variant to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `StreamAggregatedResources`.
    #[default]
    StateOfTheWorld,
    /// `DeltaAggregatedResources` (incremental).
    Delta,
}

/// What the client asks for, per type URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Everything the control plane has (Listener and Cluster by default).
    Wildcard,
    /// Only these names (Route, Endpoint, Secret). An empty set asks for nothing.
    Names(BTreeSet<String>),
}

/// How to reach the control plane and who we are.
#[derive(Debug, Clone)]
pub struct Config {
    /// e.g. `http://istiod.istio-system.svc:15010`.
    pub address: String,
    pub node: Node,
    pub protocol: Protocol,
    pub backoff: BackoffConfig,
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval; the stream is considered dead after `keepalive_timeout` without
    /// an answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Config {
    pub fn new(address: impl Into<String>, node: Node) -> Self {
        Config {
            address: address.into(),
            node,
            protocol: Protocol::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
}

/// Connection to the control plane, as a `watch` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// The task has not started yet.
    Idle,
    Connecting,
    /// An ADS stream is open.
    Connected,
    /// The last attempt or stream failed; a reconnect is scheduled.
    Disconnected {
        error: String,
    },
}

/// Counters of one resource type, as Envoy names them under `control_plane`/`*ds.`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Responses received.
    pub update_attempt: u64,
    /// Responses ACKed.
    pub update_success: u64,
    /// Responses NACKed.
    pub update_rejected: u64,
    /// Last ACKed version (`version_info`; delta: `system_version_info`).
    pub version: String,
    /// `error_detail` of the last NACK.
    pub last_error: Option<String>,
}

/// A snapshot of the client's counters, for `/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub connect_attempts: u64,
    /// ADS streams established.
    pub streams: u64,
    /// Failed attempts and broken streams.
    pub disconnects: u64,
    pub types: BTreeMap<String, TypeStats>,
}

/// State shared between the task and the handles.
pub(crate) struct Shared {
    pub handlers: BTreeMap<String, Box<dyn ErasedHandler>>,
    pub interests: watch::Sender<BTreeMap<String, Interest>>,
    pub connection: watch::Sender<ConnectionState>,
    pub ready: watch::Sender<BTreeSet<String>>,
    pub stats: Mutex<Stats>,
    pub node: Node,
}

impl Shared {
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one response of `type_url`: `Ok(version)` for an ACK, `Err(detail)` for a NACK.
    pub fn record(&self, type_url: &str, result: Result<&str, &str>) {
        if !self.handlers.contains_key(type_url) {
            return;
        }
        let mut stats = self.stats();
        let t = stats.types.entry(type_url.to_owned()).or_default();
        t.update_attempt += 1;
        match result {
            Ok(version) => {
                t.update_success += 1;
                t.version = version.to_owned();
            }
            Err(detail) => {
                t.update_rejected += 1;
                t.last_error = Some(detail.to_owned());
            }
        }
        drop(stats);
        self.ready
            .send_if_modified(|ready| ready.insert(type_url.to_owned()));
    }

    pub fn set_connection(&self, state: ConnectionState) {
        self.connection.send_replace(state);
    }
}

/// Order of first requests: CDS and LDS first, as Envoy does, then what they point to.
pub(crate) fn subscription_order(type_url: &str) -> (u8, &str) {
    let rank = match type_url {
        type_url::CLUSTER => 0,
        type_url::LISTENER => 1,
        type_url::ENDPOINT => 2,
        type_url::ROUTE => 3,
        type_url::SECRET => 4,
        _ => 5,
    };
    (rank, type_url)
}

/// Type URLs of `interests` in subscription order.
pub(crate) fn ordered(interests: &BTreeMap<String, Interest>) -> Vec<String> {
    let mut urls: Vec<String> = interests.keys().cloned().collect();
    urls.sort_by(|a, b| subscription_order(a).cmp(&subscription_order(b)));
    urls
}

/// Registers handlers, then builds the client.
pub struct XdsClientBuilder {
    config: Config,
    handlers: BTreeMap<String, Box<dyn ErasedHandler>>,
    interests: BTreeMap<String, Interest>,
}

impl std::fmt::Debug for XdsClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClientBuilder")
            .field("config", &self.config)
            .field("interests", &self.interests)
            .finish_non_exhaustive()
    }
}

impl XdsClientBuilder {
    /// Registers the handler of `T`'s type URL. Listener and Cluster are subscribed by
    /// wildcard; other types start with no names (set them with [`Subscriptions::set`]).
    pub fn handler<T: XdsResource>(self, handler: impl Handler<T>) -> Self {
        let url = T::type_url();
        let interest = if url == type_url::LISTENER || url == type_url::CLUSTER {
            Interest::Wildcard
        } else {
            Interest::Names(BTreeSet::new())
        };
        self.handler_with_interest(interest, handler)
    }

    /// Registers the handler of `T`'s type URL with an explicit initial interest.
    /// Registering a type twice replaces the first handler.
    pub fn handler_with_interest<T: XdsResource>(
        mut self,
        interest: Interest,
        handler: impl Handler<T>,
    ) -> Self {
        let url = T::type_url();
        self.handlers
            .insert(url.clone(), Box::new(Typed::<T, _>::new(handler)));
        self.interests.insert(url, interest);
        self
    }

    /// The handle and the task to spawn (`tokio::spawn(task.run())`).
    pub fn build(self) -> (XdsClient, AdsTask) {
        let shared = Arc::new(Shared {
            handlers: self.handlers,
            interests: watch::Sender::new(self.interests),
            connection: watch::Sender::new(ConnectionState::Idle),
            ready: watch::Sender::new(BTreeSet::new()),
            stats: Mutex::new(Stats::default()),
            node: self.config.node.clone(),
        });
        let client = XdsClient {
            shared: shared.clone(),
        };
        (
            client,
            AdsTask {
                shared,
                config: self.config,
            },
        )
    }
}

/// Cloneable handle on a running (or not yet started) client.
#[derive(Clone)]
pub struct XdsClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("connection", &*self.shared.connection.borrow())
            .finish_non_exhaustive()
    }
}

impl XdsClient {
    pub fn builder(config: Config) -> XdsClientBuilder {
        XdsClientBuilder {
            config,
            handlers: BTreeMap::new(),
            interests: BTreeMap::new(),
        }
    }

    /// Named subscriptions (RDS, EDS, SDS names), driven by the proxy.
    pub fn subscriptions(&self) -> Subscriptions {
        Subscriptions {
            shared: self.shared.clone(),
        }
    }

    /// Connection state; `changed().await` to follow it.
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.shared.connection.subscribe()
    }

    /// Type URLs that have received (and ACKed or NACKed) at least one response, ever.
    pub fn ready_types(&self) -> watch::Receiver<BTreeSet<String>> {
        self.shared.ready.subscribe()
    }

    /// Whether `type_url` has received its first response.
    pub fn is_ready(&self, type_url: &str) -> bool {
        self.shared.ready.borrow().contains(type_url)
    }

    /// Waits until every type of `type_urls` has received its first response (the warming
    /// gate: Envoy finishes initialization once the first CDS and LDS responses are in).
    pub async fn wait_ready(&self, type_urls: &[&str]) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `shared`, which we hold: `wait_for` cannot fail.
        let _ = rx
            .wait_for(|ready| type_urls.iter().all(|t| ready.contains(*t)))
            .await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }
}

/// Changes what the client asks for. Cheap to clone; every change is sent on the open
/// stream at once and replayed on reconnect.
#[derive(Clone)]
pub struct Subscriptions {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Subscriptions")
            .field(&*self.shared.interests.borrow())
            .finish()
    }
}

impl Subscriptions {
    /// Sets the resource names wanted for a named type (replacing the previous set).
    pub fn set(&self, type_url: &str, names: BTreeSet<String>) -> Result<(), Error> {
        let mut result = Ok(());
        self.shared
            .interests
            .send_if_modified(|all| match all.get_mut(type_url) {
                None => {
                    result = Err(Error::UnknownType(type_url.to_owned()));
                    false
                }
                Some(Interest::Wildcard) => {
                    result = Err(Error::Wildcard(type_url.to_owned()));
                    false
                }
                Some(Interest::Names(current)) if *current == names => false,
                Some(Interest::Names(current)) => {
                    *current = names;
                    true
                }
            });
        result
    }

    /// The current interest of `type_url`.
    pub fn get(&self, type_url: &str) -> Option<Interest> {
        self.shared.interests.borrow().get(type_url).cloned()
    }
}

/// The connection loop; runs until dropped (abort its task to stop it).
pub struct AdsTask {
    shared: Arc<Shared>,
    config: Config,
}

impl std::fmt::Debug for AdsTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsTask")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AdsTask {
    /// Connects, streams, and reconnects with back-off, forever. Fails only for an address
    /// that cannot be a URI.
    pub async fn run(self) -> Result<(), Error> {
        let endpoint = self.endpoint()?;
        let mut backoff = Backoff::new(self.config.backoff);
        let mut sotw = crate::sotw::SotwState::default();
        let mut delta = crate::delta::DeltaState::default();
        loop {
            self.shared.set_connection(ConnectionState::Connecting);
            self.shared.stats().connect_attempts += 1;
            let error = match endpoint.connect().await {
                Ok(channel) => {
                    self.stream(channel, &mut sotw, &mut delta, &mut backoff)
                        .await
                }
                Err(source) => Error::Connect {
                    address: self.config.address.clone(),
                    source,
                },
            };
            self.shared.stats().disconnects += 1;
            let delay = backoff.next_delay();
            warn!(address = %self.config.address, %error, ?delay, "xDS stream down; reconnecting");
            self.shared.set_connection(ConnectionState::Disconnected {
                error: error.to_string(),
            });
            tokio::time::sleep(delay).await;
        }
    }

    async fn stream(
        &self,
        channel: Channel,
        sotw: &mut crate::sotw::SotwState,
        delta: &mut crate::delta::DeltaState,
        backoff: &mut Backoff,
    ) -> Error {
        info!(address = %self.config.address, protocol = ?self.config.protocol, "connected to control plane");
        match self.config.protocol {
            Protocol::StateOfTheWorld => {
                crate::sotw::run_stream(&self.shared, sotw, channel, backoff).await
            }
            Protocol::Delta => {
                crate::delta::run_stream(&self.shared, delta, channel, backoff).await
            }
        }
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let c = &self.config;
        let endpoint =
            Endpoint::from_shared(c.address.clone()).map_err(|source| Error::InvalidAddress {
                address: c.address.clone(),
                source,
            })?;
        Ok(endpoint
            .connect_timeout(c.connect_timeout)
            .http2_keep_alive_interval(c.keepalive_interval)
            .keep_alive_timeout(c.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cds_and_lds_first() {
        let interests: BTreeMap<String, Interest> = [
            type_url::ROUTE,
            type_url::SECRET,
            type_url::LISTENER,
            "type.googleapis.com/x.Other",
            type_url::ENDPOINT,
            type_url::CLUSTER,
        ]
        .into_iter()
        .map(|t| (t.to_owned(), Interest::Wildcard))
        .collect();
        assert_eq!(
            ordered(&interests),
            [
                type_url::CLUSTER,
                type_url::LISTENER,
                type_url::ENDPOINT,
                type_url::ROUTE,
                type_url::SECRET,
                "type.googleapis.com/x.Other"
            ]
        );
    }
}
