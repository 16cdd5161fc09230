//! Upstream HTTP connections to one host: HTTP/1.1 keep-alive connections reused one request
//! at a time, or one multiplexed HTTP/2 (h2c) connection. A pooled connection that the server
//! closed while idle never fails a request: the request comes back unsent and goes out on a
//! fresh connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h1;
use crate::body::{Body, BoxError};

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("connect failure: {0}")]
    Connect(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(BoxError),
    /// The connection reset or closed before a response arrived.
    #[error("upstream reset: {0}")]
    Reset(BoxError),
    /// The upstream refused the request before processing it (HTTP/2 `REFUSED_STREAM`).
    #[error("upstream refused the stream: {0}")]
    Refused(BoxError),
    /// The upstream reset the stream (HTTP/2 `RST_STREAM`) on a connection that stays up.
    #[error("upstream reset the stream: {0}")]
    RemoteReset(BoxError),
    /// The upstream broke the protocol (a malformed response, a `101` nobody asked for); the
    /// connection is not used again. Envoy's `protocol error` reset reason: a 502.
    #[error("upstream protocol error: {0}")]
    Protocol(BoxError),
    #[error("circuit breaker open: {0}")]
    Overflow(&'static str),
}

/// hyper's client (used for upgrades) reports a request it never sent as canceled, and a
/// response it could not parse as a parse error.
fn reset(e: hyper::Error) -> UpstreamError {
    if e.is_canceled() {
        UpstreamError::Refused(e.into())
    } else if e.is_parse() {
        UpstreamError::Protocol(e.into())
    } else {
        UpstreamError::Reset(e.into())
    }
}

impl UpstreamError {
    /// True when the request provably never reached the upstream (safe to retry anywhere).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout | UpstreamError::Connect(_) | UpstreamError::Handshake(_)
        )
    }
}

/// Connection settings for a host's pool, from its cluster.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    /// The cluster's `upstream_bind_config` source address (Istio binds 127.0.0.6 inbound).
    pub source: Option<IpAddr>,
    /// The cluster's `upstream_connection_options.tcp_keepalive`.
    pub keepalive: Option<crate::model::cluster::TcpKeepalive>,
    /// The cluster's `http2_protocol_options.connection_keepalive`.
    pub h2_keepalive: Option<crate::model::cluster::H2Keepalive>,
}

/// How an upstream socket is set up: where it comes from and its socket options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Source {
    /// Local address to bind before connecting (port chosen by the kernel).
    pub bind: Option<IpAddr>,
    /// Bind a non-local address (`IP_TRANSPARENT`): the downstream's own source address, as
    /// Envoy's `original_src` listener filter does under TPROXY. Needs `CAP_NET_ADMIN`.
    pub transparent: bool,
    /// `SO_MARK` for the upstream socket (`original_src`'s `mark`); needs `CAP_NET_ADMIN`.
    pub mark: Option<u32>,
    /// TCP keepalive (the cluster's `upstream_connection_options.tcp_keepalive`).
    pub keepalive: Option<crate::model::cluster::TcpKeepalive>,
}

/// A cluster's connection circuit breakers (Envoy's `max_connections` and
/// `max_pending_requests`, shared by every host's pool and the TCP proxy). A request that
/// needs a new connection when the cluster is at `max_connections` waits as a pending request
/// for a pooled connection or a free slot; past `max_pending_requests` it fails at once.
#[derive(Debug)]
pub struct ConnLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    active: AtomicU32,
    pending: AtomicU32,
    freed: tokio::sync::Notify,
    /// The cluster's stats, whose `upstream_cx_active` follows the slots (the stats outlive
    /// a cluster update; these limits do not).
    stats: Option<Arc<super::ClusterStats>>,
}

impl ConnLimits {
    pub fn new(max_connections: u32, max_pending: u32) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_pending,
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
            stats: None,
        }
    }

    /// Limits whose slots are counted in the cluster's `upstream_cx_active`.
    pub fn counted(mut self, stats: Arc<super::ClusterStats>) -> ConnLimits {
        self.stats = Some(stats);
        self
    }

    /// Takes a connection slot if the cluster is under `max_connections`; it is given back when
    /// the slot is dropped (the connection closed).
    pub fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                if let Some(s) = &self.stats {
                    s.upstream_cx_active.inc();
                }
                Slot(self.clone())
            })
    }

    /// Takes a connection slot, waiting as a pending request while the cluster is at
    /// `max_connections` (failing past `max_pending_requests`).
    pub async fn slot(self: &Arc<Self>) -> Result<Slot, UpstreamError> {
        let mut pending: Option<PendingGuard> = None;
        loop {
            if let Some(slot) = self.try_slot() {
                return Ok(slot);
            }
            self.wait_for_room(&mut pending, || false).await?;
        }
    }

    /// Open connections counted against the limit.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Waits, as a pending request, until a connection slot may be free or (`idle`) a pooled
    /// connection is back; fails at once past `max_pending_requests`. `pending` holds this
    /// request's place in the queue across calls.
    async fn wait_for_room(
        self: &Arc<Self>,
        pending: &mut Option<PendingGuard>,
        idle: impl Fn() -> bool,
    ) -> Result<(), UpstreamError> {
        if pending.is_none() {
            self.pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_pending).then_some(n + 1)
                })
                .map_err(|_| UpstreamError::Overflow("max_pending_requests"))?;
            *pending = Some(PendingGuard(self.clone()));
        }
        let freed = self.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !idle() && self.active() >= self.max_connections {
            freed.await;
        }
        Ok(())
    }
}

struct PendingGuard(Arc<ConnLimits>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection slot of the cluster, given back when dropped (the connection's task ended).
pub struct Slot(Arc<ConnLimits>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(s) = &self.0.stats {
            s.upstream_cx_active.dec();
        }
        self.0.freed.notify_one();
    }
}

/// The connection pool of one host.
#[derive(Default)]
pub struct Pool {
    /// Boxed although in a `Vec`: a connection taken from here moves through the request's
    /// futures and back as a pointer, not as a few hundred bytes copied at every step.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<h1::Conn>>>,
    /// Shared by reference count: a request takes the pool's connection with one atomic
    /// increment.
    h2: Mutex<Option<Arc<super::h2::Connection>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.lock().map(|i| i.len()).unwrap_or(0))
            .finish()
    }
}

/// Opens a TCP connection with the cluster's connect timeout and TCP_NODELAY.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    connect_from(addr, timeout, Source::default()).await
}

/// Opens a TCP connection from `src` (bound source address, transparent, mark).
pub async fn connect_from(
    addr: SocketAddr,
    timeout: Duration,
    src: Source,
) -> Result<TcpStream, UpstreamError> {
    let connecting = async {
        if src == Source::default() {
            return TcpStream::connect(addr).await;
        }
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let raw = socket2::SockRef::from(&sock);
        if src.transparent {
            if addr.is_ipv4() {
                raw.set_ip_transparent_v4(true)?;
            } else {
                raw.set_ip_transparent_v6(true)?;
            }
        }
        if let Some(mark) = src.mark.filter(|m| *m != 0) {
            raw.set_mark(mark)?;
        }
        if let Some(ip) = src.bind.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        sock.connect(addr).await
    };
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(UpstreamError::ConnectTimeout),
        Ok(Err(e)) => Err(UpstreamError::Connect(e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            if let Some(k) = src.keepalive {
                set_keepalive(&s, k);
            }
            Ok(s)
        }
    }
}

/// `SO_KEEPALIVE` with the given idle time, probe interval and probe count (seconds; unset
/// ones keep the system's defaults). A failure is logged, not fatal, as in Envoy.
fn set_keepalive(s: &TcpStream, k: crate::model::cluster::TcpKeepalive) {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(Duration::from_secs(t.into()));
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(Duration::from_secs(i.into()));
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
    }
    let sock = socket2::SockRef::from(s);
    if let Err(e) = sock
        .set_keepalive(true)
        .and_then(|_| sock.set_tcp_keepalive(&ka))
    {
        tracing::debug!(%e, "could not set TCP keepalive on an upstream socket");
    }
}

impl PoolSettings {
    /// Opens a new pool connection to `addr` and reports it, with its connect time, to
    /// `on_new` (the cluster's `upstream_cx_total` and `upstream_cx_connect_ms`).
    async fn open(
        &self,
        addr: SocketAddr,
        on_new: &impl Fn(Duration),
    ) -> Result<TcpStream, UpstreamError> {
        let t0 = std::time::Instant::now();
        let stream = connect_from(addr, self.connect_timeout, self.src()).await?;
        on_new(t0.elapsed());
        Ok(stream)
    }

    /// The source for this cluster's connections.
    pub fn src(&self) -> Source {
        Source {
            bind: self.source,
            keepalive: self.keepalive,
            ..Source::default()
        }
    }
}

impl Pool {
    /// Number of idle HTTP/1 connections (admin and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Sends a request over HTTP/1.1, reusing an idle connection when one is alive. The
    /// request's own future drives the connection (`h1.rs`); a request that a reused
    /// connection provably did not take goes out again on the next one.
    pub async fn send_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
        settings: &PoolSettings,
        limits: &Arc<ConnLimits>,
        req: Request<Body>,
        on_new_connection: impl Fn(Duration),
    ) -> Result<Response<Body>, UpstreamError> {
        if req.headers().contains_key(http::header::UPGRADE) {
            return Box::pin(send_upgrade(addr, settings, limits, req, on_new_connection)).await;
        }
        let (parts, mut body) = req.into_parts();
        // Encoded once, on the first connection (into its buffer); a resend reuses the head.
        let mut request: Result<h1::Head, http::request::Parts> = Err(parts);
        // One `h1::send` await for pooled and new connections alike: every await of it is
        // a slot of its size in this future, which the caller's futures contain in turn.
        loop {
            let (mut conn, reused) = match self.checkout(settings) {
                Some(c) => (c, true),
                // A new connection is the cold path: boxed, so that its futures do not make
                // every request's future larger.
                None => {
                    Box::pin(self.connect_h1(addr, settings, limits, &on_new_connection)).await?
                }
            };
            let head = match request {
                Ok(head) => head,
                Err(parts) => conn.encode(parts, &body),
            };
            let back = self.give_back(settings, limits);
            match h1::send(conn, head, body, reused, back).await {
                Ok(resp) => return Ok(resp),
                Err(h1::Failed {
                    retry: Some((h, b)),
                    error,
                }) => {
                    tracing::debug!(%addr, %error, "pooled connection closed under the request; sending it on another");
                    (request, body) = (Ok(h), b);
                }
                Err(h1::Failed {
                    error: e @ h1::Error::Invalid(_),
                    ..
                }) => return Err(UpstreamError::Protocol(e.into())),
                Err(f) => return Err(UpstreamError::Reset(f.error.into())),
            }
        }
    }

    /// A new HTTP/1 connection, once the cluster's connection limit has room for it (waiting
    /// as a pending request meanwhile), or a pooled one that went idle while it waited
    /// (`true`: reused).
    async fn connect_h1(
        self: &Arc<Self>,
        addr: SocketAddr,
        settings: &PoolSettings,
        limits: &Arc<ConnLimits>,
        on_new_connection: &impl Fn(Duration),
    ) -> Result<(Box<h1::Conn>, bool), UpstreamError> {
        let mut pending: Option<PendingGuard> = None;
        loop {
            if let Some(slot) = limits.try_slot() {
                drop(pending);
                let stream = settings.open(addr, on_new_connection).await?;
                return Ok((h1::Conn::new(stream, slot), false));
            }
            limits
                .wait_for_room(&mut pending, || self.idle_count() > 0)
                .await?;
            if let Some(c) = self.checkout(settings) {
                return Ok((c, true));
            }
        }
    }

    /// An idle connection that is still open and within the idle timeout.
    fn checkout(&self, settings: &PoolSettings) -> Option<Box<h1::Conn>> {
        let mut idle = self.idle.lock().unwrap();
        std::iter::from_fn(|| idle.pop()).find(|c| c.reusable(settings.idle_timeout))
    }

    /// What a finished exchange does with its connection: back into the pool, unless it
    /// reached `max_requests_per_connection`.
    fn give_back(
        self: &Arc<Self>,
        settings: &PoolSettings,
        limits: &Arc<ConnLimits>,
    ) -> impl FnOnce(Box<h1::Conn>) + Send + Unpin + 'static {
        let pool = self.clone();
        let limits = limits.clone();
        let (max_requests, idle_timeout) =
            (settings.max_requests_per_connection, settings.idle_timeout);
        move |conn: Box<h1::Conn>| {
            if max_requests.is_none_or(|m| conn.used < m) {
                let mut idle = pool.idle.lock().unwrap();
                // Connections are taken from the top; the oldest, at the bottom, is checked
                // here so that ones the server closed do not linger (no system call unless
                // its socket became readable).
                if idle.first().is_some_and(|c| !c.reusable(idle_timeout)) {
                    idle.remove(0);
                }
                idle.push(conn);
                drop(idle);
                // A pending request may take it.
                limits.freed.notify_one();
            }
        }
    }

    /// Sends a request over this host's shared HTTP/2 connection (h2c prior knowledge).
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        settings: &PoolSettings,
        limits: &Arc<ConnLimits>,
        mut req: Request<Body>,
        on_new_connection: impl Fn(Duration),
    ) -> Result<Response<Body>, UpstreamError> {
        // HTTP/2 requests carry the authority in the URI; hyper's h2 client needs scheme too.
        if req.uri().scheme().is_none() {
            // Only the authority is parsed; scheme and path are reused, not re-parsed.
            let authority = match req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                Some(h) => http::uri::Authority::try_from(h),
                None => http::uri::Authority::try_from(addr.to_string()),
            };
            if let Ok(a) = authority {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(a);
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                }
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            req.headers_mut().remove(http::header::HOST);
        }
        *req.version_mut() = http::Version::HTTP_2;
        for _ in 0..2 {
            let existing = {
                let g = self.h2.lock().unwrap();
                g.as_ref().filter(|c| !c.is_closed()).cloned()
            };
            let conn = match existing {
                Some(c) => c,
                None => {
                    // Cold path, boxed (see send_http1).
                    let c = Box::pin(async {
                        // One multiplexed connection per host; it needs a slot like any other.
                        let slot = limits.slot().await?;
                        let stream = settings.open(addr, &on_new_connection).await?;
                        super::h2::Connection::handshake(stream, slot, settings.h2_keepalive).await
                    })
                    .await
                    .map(Arc::new)?;
                    *self.h2.lock().unwrap() = Some(c.clone());
                    c
                }
            };
            let key = conn.key();
            match conn.send(req).await {
                Ok(resp) => return Ok(resp),
                // The connection was closing (GOAWAY, closed): try a fresh one.
                Err(super::h2::SendError::Unsent(r)) => {
                    req = *r;
                    let mut g = self.h2.lock().unwrap();
                    if g.as_ref().is_some_and(|c| c.key() == key) {
                        *g = None;
                    }
                }
                Err(super::h2::SendError::Failed(e)) => return Err(e),
            }
        }
        Err(UpstreamError::Overflow("http2 connection unavailable"))
    }
}

/// An upgrade (WebSocket and the like) goes over hyper's client on a connection of its own,
/// which is never pooled: after a `101` it belongs to the tunnel.
async fn send_upgrade(
    addr: SocketAddr,
    settings: &PoolSettings,
    limits: &Arc<ConnLimits>,
    req: Request<Body>,
    on_new_connection: impl Fn(Duration),
) -> Result<Response<Body>, UpstreamError> {
    let slot = limits.slot().await?;
    let stream = settings.open(addr, &on_new_connection).await?;
    let (mut tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(e.into()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        drop(slot);
    });
    let resp = tx.send_request(req).await.map_err(reset)?;
    Ok(resp.map(crate::body::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::TcpKeepalive;

    #[tokio::test]
    async fn upstream_sockets_get_the_clusters_tcp_keepalive() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let src = Source {
            keepalive: Some(TcpKeepalive {
                probes: Some(4),
                time: Some(30),
                interval: Some(5),
            }),
            ..Source::default()
        };
        let s = connect_from(addr, Duration::from_secs(2), src)
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);

        // Without the option the socket is left as the system makes it.
        let s = connect(addr, Duration::from_secs(2)).await.unwrap();
        assert!(!socket2::SockRef::from(&s).keepalive().unwrap());
    }
}
