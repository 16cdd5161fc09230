//! Upstream HTTP connections to one host: HTTP/1.1 keep-alive connections reused one request
//! at a time, or one multiplexed HTTP/2 (h2c) connection. A pooled connection that the server
//! closed while idle never fails a request: the request comes back unsent and goes out on a
//! fresh connection.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;

/// The cause under an upstream failure (hyper's, h2's or an I/O error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    #[error("circuit breaker open: {0}")]
    Overflow(&'static str),
}

/// hyper reports an h2 `REFUSED_STREAM` (and a request it never sent) as canceled.
fn reset(e: hyper::Error) -> UpstreamError {
    if e.is_canceled() {
        UpstreamError::Refused(e.into())
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
}

/// Where an upstream connection comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Source {
    /// Local address to bind before connecting (port chosen by the kernel).
    pub bind: Option<IpAddr>,
    /// Bind a non-local address (`IP_TRANSPARENT`): the downstream's own source address, as
    /// Envoy's `original_src` listener filter does under TPROXY. Needs `CAP_NET_ADMIN`.
    pub transparent: bool,
    /// `SO_MARK` for the upstream socket (`original_src`'s `mark`); needs `CAP_NET_ADMIN`.
    pub mark: Option<u32>,
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
}

impl ConnLimits {
    pub fn new(max_connections: u32, max_pending: u32) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_pending,
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Takes a connection slot if the cluster is under `max_connections`; it is given back when
    /// the slot is dropped (the connection closed).
    pub fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
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
        self.0.freed.notify_one();
    }
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
    used: u32,
}

/// The connection pool of one host.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<super::h2::Connection>>,
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
            Ok(s)
        }
    }
}

impl PoolSettings {
    /// The source for this cluster's connections.
    pub fn src(&self) -> Source {
        Source {
            bind: self.source,
            ..Source::default()
        }
    }
}

impl Pool {
    /// Number of idle HTTP/1 connections (admin and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Sends a request over HTTP/1.1, reusing an idle connection when one is alive.
    pub async fn send_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
        settings: PoolSettings,
        limits: &Arc<ConnLimits>,
        mut req: Request<Body>,
        on_new_connection: impl Fn(),
    ) -> Result<Response<Body>, UpstreamError> {
        let mut pending: Option<PendingGuard> = None;
        let slot = loop {
            while let Some(mut idle) = self.checkout(settings) {
                // Waits for the connection to finish its previous exchange; fails if closed.
                if idle.tx.ready().await.is_err() {
                    continue;
                }
                match idle.tx.try_send_request(req).await {
                    Ok(resp) => {
                        return Ok(self.wrap_http1(resp, idle.tx, idle.used + 1, settings, limits))
                    }
                    Err(mut e) => match e.take_message() {
                        // Never written: the connection was closing. Try the next one.
                        Some(r) => req = r,
                        None => return Err(reset(e.into_error())),
                    },
                }
            }
            if let Some(slot) = limits.try_slot() {
                break slot;
            }
            limits
                .wait_for_room(&mut pending, || self.idle_count() > 0)
                .await?;
        };
        drop(pending);
        // A new connection is the cold path: boxed, so that its futures do not make every
        // request's future (moved around per request) larger.
        let mut tx = Box::pin(async {
            let stream = connect_from(addr, settings.connect_timeout, settings.src()).await?;
            on_new_connection();
            let (tx, conn) = http1::Builder::new()
                .preserve_header_case(false)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| UpstreamError::Handshake(e.into()))?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
                drop(slot);
            });
            Ok::<_, UpstreamError>(tx)
        })
        .await?;
        let resp = tx
            .try_send_request(req)
            .await
            .map_err(|e| reset(e.into_error()))?;
        Ok(self.wrap_http1(resp, tx, 1, settings, limits))
    }

    fn checkout(&self, settings: PoolSettings) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap();
        while let Some(c) = idle.pop() {
            let expired = settings
                .idle_timeout
                .is_some_and(|t| c.since.elapsed() >= t);
            if !expired && !c.tx.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn wrap_http1(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        tx: http1::SendRequest<Body>,
        used: u32,
        settings: PoolSettings,
        limits: &Arc<ConnLimits>,
    ) -> Response<Body> {
        let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let reusable = !upgrade
            && settings
                .max_requests_per_connection
                .is_none_or(|m| used < m)
            && !resp
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let (parts, body) = resp.into_parts();
        let mut ret = reusable.then(|| (self.clone(), tx, used, limits.clone()));
        if body.is_end_stream() {
            give_back(&mut ret);
        }
        Response::from_parts(parts, crate::body::boxed(ReturnOnEnd { inner: body, ret }))
    }

    /// Sends a request over this host's shared HTTP/2 connection (h2c prior knowledge).
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        settings: PoolSettings,
        limits: &Arc<ConnLimits>,
        mut req: Request<Body>,
        on_new_connection: impl Fn(),
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
                        let mut pending: Option<PendingGuard> = None;
                        let slot = loop {
                            if let Some(slot) = limits.try_slot() {
                                break slot;
                            }
                            limits.wait_for_room(&mut pending, || false).await?;
                        };
                        drop(pending);
                        let stream =
                            connect_from(addr, settings.connect_timeout, settings.src()).await?;
                        on_new_connection();
                        super::h2::Connection::handshake(stream, slot).await
                    })
                    .await?;
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

type Return = Option<(Arc<Pool>, http1::SendRequest<Body>, u32, Arc<ConnLimits>)>;

fn give_back(ret: &mut Return) {
    if let Some((pool, tx, used, limits)) = ret.take() {
        pool.idle.lock().unwrap().push(Idle {
            tx,
            since: Instant::now(),
            used,
        });
        // A pending request may take it.
        limits.freed.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// A response body that hands its HTTP/1 connection back to the pool once the body has
    /// been read to the end. Dropped early, the connection is closed instead.
    struct ReturnOnEnd {
        #[pin]
        inner: Incoming,
        ret: Return,
    }
}

impl http_body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(None) => give_back(this.ret),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => give_back(this.ret),
            Poll::Ready(Some(Err(_))) => *this.ret = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
