//! A scripted fake ADS server for tests (feature `testing`): the test decides every response.
//!
//! [`FakeAds::start`] binds `127.0.0.1:0` and serves both `StreamAggregatedResources` and
//! `DeltaAggregatedResources`. It never answers on its own: the test pushes responses with
//! [`FakeAds::respond`] / [`FakeAds::respond_delta`] (to every open stream of that variant),
//! and reads what the client sent with [`FakeAds::next_sotw`] / [`FakeAds::next_delta`],
//! which return the oldest request of a type not yet read (waiting up to
//! [`FakeAds::timeout`], then panicking with what was received). [`FakeAds::stop`] ends all
//! streams with `UNAVAILABLE` and closes the port; [`FakeAds::restart`] serves again on the
//! same port, as a restarted control plane would.
//!
//! ```no_run
//! # async fn t() {
//! use xds_client::testing::{any, FakeAds};
//! use xds_client::type_url;
//! use envoy_types::pb::envoy::config::cluster::v3::Cluster;
//!
//! let mut ads = FakeAds::start().await;
//! // ... start a client at ads.uri() ...
//! let first = ads.next_sotw(type_url::CLUSTER).await;
//! assert!(first.node.is_some());
//! ads.respond(type_url::CLUSTER, "v1", "n1", [any(Cluster { name: "a".into(), ..Default::default() })]);
//! let ack = ads.next_sotw(type_url::CLUSTER).await;
//! assert_eq!((ack.version_info.as_str(), ack.response_nonce.as_str()), ("v1", "n1"));
//! ads.restart().await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Packs a message into an `Any` (re-export of `envoy_types::util::pack_any`).
pub use envoy_types::util::pack_any as any;

/// A delta `Resource` wrapper around `message`.
pub fn delta_resource(name: &str, version: &str, message: Any) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(message),
        ..Default::default()
    }
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

impl Received {
    /// The SotW request; panics on a delta one.
    pub fn sotw(self) -> DiscoveryRequest {
        match self {
            Received::Sotw(r) => r,
            Received::Delta(r) => panic!("expected a SotW request, got {r:?}"),
        }
    }

    /// The delta request; panics on a SotW one.
    pub fn delta(self) -> DeltaDiscoveryRequest {
        match self {
            Received::Delta(r) => r,
            Received::Sotw(r) => panic!("expected a delta request, got {r:?}"),
        }
    }

    pub fn type_url(&self) -> &str {
        match self {
            Received::Sotw(r) => &r.type_url,
            Received::Delta(r) => &r.type_url,
        }
    }
}

/// A received request and the stream it came on (streams are numbered from 1, across
/// restarts, so a reconnect shows up as a new number).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub stream: u64,
    pub request: Received,
}

type SotwTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

enum OpenStream {
    Sotw(SotwTx, JoinHandle<()>),
    Delta(DeltaTx, JoinHandle<()>),
}

#[derive(Default)]
struct State {
    streams_opened: u64,
    open: BTreeMap<u64, OpenStream>,
    log: Vec<Recorded>,
    read: Vec<bool>,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every request and stream change; waiters watch it.
    events: watch::Sender<u64>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    fn record(&self, stream: u64, request: Received) {
        let mut s = self.state();
        s.log.push(Recorded { stream, request });
        s.read.push(false);
        drop(s);
        self.bump();
    }

    fn open(&self, make: impl FnOnce(u64) -> OpenStream) {
        let mut s = self.state();
        s.streams_opened += 1;
        let id = s.streams_opened;
        s.open.insert(id, make(id));
        drop(s);
        self.bump();
    }

    fn close(&self, id: u64) {
        self.state().open.remove(&id);
        self.bump();
    }
}

/// Records requests of one stream until it ends.
fn spawn_reader<T: Send + 'static>(
    inner: Arc<Inner>,
    id: u64,
    mut requests: Streaming<T>,
    wrap: fn(T) -> Received,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(request)) = requests.message().await {
            inner.record(id, wrap(request));
        }
        inner.close(id);
    })
}

struct Service(Arc<Inner>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.0.clone();
        let requests = request.into_inner();
        self.0
            .open(|id| OpenStream::Sotw(tx, spawn_reader(inner, id, requests, Received::Sotw)));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.0.clone();
        let requests = request.into_inner();
        self.0
            .open(|id| OpenStream::Delta(tx, spawn_reader(inner, id, requests, Received::Delta)));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The fake control plane. Dropping it stops the server.
pub struct FakeAds {
    addr: SocketAddr,
    inner: Arc<Inner>,
    running: Option<Running>,
    /// How long `next_*` wait before panicking. Default 5 s.
    pub timeout: Duration,
}

impl fmt::Debug for FakeAds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeAds")
            .field("addr", &self.addr)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl FakeAds {
    /// Binds `127.0.0.1:0` and serves.
    pub async fn start() -> FakeAds {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let mut ads = FakeAds {
            addr,
            inner: Arc::new(Inner {
                state: Mutex::default(),
                events: watch::Sender::new(0),
            }),
            running: None,
            timeout: Duration::from_secs(5),
        };
        ads.serve(listener);
        ads
    }

    fn serve(&mut self, listener: TcpListener) {
        let (shutdown, signal) = oneshot::channel::<()>();
        let service = AggregatedDiscoveryServiceServer::new(Service(self.inner.clone()));
        let task = tokio::spawn(async move {
            // `Server::serve_with_incoming_shutdown` takes the service directly, so the
            // workspace does not need tonic's `router` feature (axum).
            let result = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, TcpListenerStream::new(listener), async {
                    let _ = signal.await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "fake ADS server failed");
            }
        });
        self.running = Some(Running { shutdown, task });
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `Config::new`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends every stream with `UNAVAILABLE` and closes the listening socket.
    pub async fn stop(&mut self) {
        let open = std::mem::take(&mut self.inner.state().open);
        for (_, stream) in open {
            match stream {
                OpenStream::Sotw(tx, reader) => {
                    let _ = tx.send(Err(Status::unavailable("fake control plane stopped")));
                    reader.abort();
                }
                OpenStream::Delta(tx, reader) => {
                    let _ = tx.send(Err(Status::unavailable("fake control plane stopped")));
                    reader.abort();
                }
            }
        }
        self.inner.bump();
        if let Some(Running { shutdown, mut task }) = self.running.take() {
            let _ = shutdown.send(());
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Serves again on the same port (stopping first if running).
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut last_error = None;
        for _ in 0..50 {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            match socket.bind(self.addr).and_then(|()| socket.listen(128)) {
                Ok(listener) => {
                    self.serve(listener);
                    return;
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot rebind {}: {last_error:?}", self.addr);
    }

    /// Sends a SotW response to every open SotW stream; returns how many got it.
    pub fn push(&self, response: DiscoveryResponse) -> usize {
        let state = self.inner.state();
        state
            .open
            .values()
            .filter(|s| match s {
                OpenStream::Sotw(tx, _) => tx.send(Ok(response.clone())).is_ok(),
                OpenStream::Delta(..) => false,
            })
            .count()
    }

    /// Sends a delta response to every open delta stream; returns how many got it.
    pub fn push_delta(&self, response: DeltaDiscoveryResponse) -> usize {
        let state = self.inner.state();
        state
            .open
            .values()
            .filter(|s| match s {
                OpenStream::Delta(tx, _) => tx.send(Ok(response.clone())).is_ok(),
                OpenStream::Sotw(..) => false,
            })
            .count()
    }

    /// [`push`](Self::push) of a response built from its parts. Panics if no SotW stream
    /// is open (the test pushed too early: wait for the client's request first).
    pub fn respond(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        resources: impl IntoIterator<Item = Any>,
    ) {
        let sent = self.push(DiscoveryResponse {
            version_info: version.into(),
            resources: resources.into_iter().collect(),
            type_url: type_url.into(),
            nonce: nonce.into(),
            ..Default::default()
        });
        assert!(
            sent > 0,
            "respond({type_url}, {version}, {nonce}): no open SotW stream"
        );
    }

    /// [`push_delta`](Self::push_delta) of a response built from its parts (see
    /// [`delta_resource`]). Panics if no delta stream is open.
    pub fn respond_delta(
        &self,
        type_url: &str,
        system_version: &str,
        nonce: &str,
        resources: impl IntoIterator<Item = Resource>,
        removed: &[&str],
    ) {
        let sent = self.push_delta(DeltaDiscoveryResponse {
            system_version_info: system_version.into(),
            resources: resources.into_iter().collect(),
            type_url: type_url.into(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.into(),
            ..Default::default()
        });
        assert!(
            sent > 0,
            "respond_delta({type_url}, {nonce}): no open delta stream"
        );
    }

    /// Every request received so far, read or not.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.state().log.clone()
    }

    /// Streams opened since start (across restarts).
    pub fn streams_opened(&self) -> u64 {
        self.inner.state().streams_opened
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.state().open.len()
    }

    /// Waits until `f` returns `Some`, re-checking on every server event; panics after
    /// [`timeout`](Self::timeout) with `what`.
    async fn wait<T>(&self, what: &str, mut f: impl FnMut(&mut State) -> Option<T>) -> T {
        let mut events = self.inner.events.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            events.borrow_and_update();
            if let Some(v) = f(&mut self.inner.state()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                let log = self.requests();
                panic!(
                    "fake ADS: timed out after {:?} waiting for {what}; received so far: {log:#?}",
                    self.timeout
                );
            }
        }
    }

    /// The oldest unread request matching `pred`, marked read.
    pub async fn next_matching(&self, what: &str, pred: impl Fn(&Recorded) -> bool) -> Recorded {
        self.wait(what, |s| {
            let i = (0..s.log.len()).find(|&i| !s.read[i] && pred(&s.log[i]))?;
            s.read[i] = true;
            Some(s.log[i].clone())
        })
        .await
    }

    /// The oldest unread request of any type.
    pub async fn next_request(&self) -> Recorded {
        self.next_matching("any request", |_| true).await
    }

    /// The oldest unread SotW request for `type_url`.
    pub async fn next_sotw(&self, type_url: &str) -> DiscoveryRequest {
        let what = format!("a SotW request for {type_url}");
        match self
            .next_matching(
                &what,
                |r| matches!(&r.request, Received::Sotw(q) if q.type_url == type_url),
            )
            .await
            .request
        {
            Received::Sotw(r) => r,
            Received::Delta(_) => unreachable!(),
        }
    }

    /// The oldest unread delta request for `type_url`.
    pub async fn next_delta(&self, type_url: &str) -> DeltaDiscoveryRequest {
        let what = format!("a delta request for {type_url}");
        match self
            .next_matching(
                &what,
                |r| matches!(&r.request, Received::Delta(q) if q.type_url == type_url),
            )
            .await
            .request
        {
            Received::Delta(r) => r,
            Received::Sotw(_) => unreachable!(),
        }
    }

    /// Asserts that no request for `type_url` arrives (unread) within `within`.
    pub async fn expect_silence(&self, type_url: &str, within: Duration) {
        tokio::time::sleep(within).await;
        let s = self.inner.state();
        let unread: Vec<_> = (0..s.log.len())
            .filter(|&i| !s.read[i] && s.log[i].request.type_url() == type_url)
            .map(|i| &s.log[i])
            .collect();
        assert!(unread.is_empty(), "unexpected requests: {unread:#?}");
    }

    /// Waits until `n` streams have been opened since start.
    pub async fn wait_for_streams(&self, n: u64) {
        self.wait(&format!("{n} streams opened"), |s| {
            (s.streams_opened >= n).then_some(())
        })
        .await
    }
}

impl Drop for FakeAds {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(());
            running.task.abort();
        }
        for (_, stream) in std::mem::take(&mut self.inner.state().open) {
            match stream {
                OpenStream::Sotw(_, reader) | OpenStream::Delta(_, reader) => reader.abort(),
            }
        }
    }
}
