//! Access logging for one HTTP request: counts the bytes each way and writes the connection
//! manager's access logs when the response body ends (or the stream is dropped), as Envoy logs
//! at stream end. Only used when the connection manager has access logs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};

use super::Conn;
use crate::access_log::{Entry, ReqHead};
use crate::body::{self, Body, BoxError};
use crate::clock;

/// The upstream host that answered (set by the forwarder).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamHost(pub SocketAddr);

/// The route and cluster a request was matched to (set by the router).
#[derive(Debug, Clone)]
pub struct RouteMeta {
    pub route: String,
    pub cluster: Option<String>,
}

/// A request being logged.
pub struct Pending {
    start: SystemTime,
    t0: Instant,
    rx: Arc<AtomicU64>,
}

impl Pending {
    /// A request that started at `t0` (the router's reading of the clock).
    pub fn start(t0: Instant) -> Pending {
        Pending {
            start: SystemTime::now(),
            t0,
            rx: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The request with its body counted.
    pub fn count_request<B>(&self, req: Request<B>) -> Request<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let rx = self.rx.clone();
        req.map(move |b| {
            body::boxed(Counted {
                inner: body::boxed(b),
                n: rx,
            })
        })
    }

    /// Wraps the response so that the log line is written when its body ends.
    pub fn finish(self, conn: &Arc<Conn>, head: ReqHead, resp: Response<Body>) -> Response<Body> {
        let status = resp.status().as_u16();
        let flags = resp
            .extensions()
            .get::<super::router::Local>()
            .map(|l| (l.flags(status), l.message.clone()));
        let route = resp.extensions().get::<RouteMeta>().cloned();
        let upstream = resp.extensions().get::<UpstreamHost>().map(|u| u.0);
        let record = Record {
            conn: conn.clone(),
            start: self.start,
            t0: self.t0,
            rx: self.rx,
            head,
            status,
            response_headers: resp.headers().clone(),
            upstream,
            route,
            flags: flags.as_ref().map_or("", |f| f.0),
            details: match &flags {
                Some((_, m)) if !m.is_empty() => m.clone(),
                Some(_) => "local_reply".into(),
                None if upstream.is_some() => "via_upstream".into(),
                None => String::new(),
            },
            tx: 0,
            done: false,
        };
        resp.map(move |b| {
            body::boxed(Logged {
                inner: b,
                record: Box::new(record),
            })
        })
    }
}

/// Logs a request the HTTP/1 codec rejected before the router saw it (bad framing, a head too
/// large, HTTP/1.0 refused, a header timeout), as Envoy logs its codec's local replies: no
/// request line, the status, and the reason in `%RESPONSE_CODE_DETAILS%`; the codec's protocol
/// errors carry Envoy's response flag `DPE`. `bytes_sent` is the reply's body length.
pub fn log_rejected(conn: &Conn, status: u16, details: &str, bytes_sent: u64) {
    if conn.hcm.access_logs.is_empty() {
        return;
    }
    // The codec's own errors (`http1.*`) are protocol errors; a missing Host, HTTP/1.0 refused
    // or a header timeout are not.
    let flags = if details.starts_with("http1.") {
        "DPE"
    } else {
        ""
    };
    let e = Entry {
        start: Some(SystemTime::now()),
        status: Some(status),
        protocol: Some(if details == "low_version" {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }),
        bytes_sent,
        downstream_local: conn.info.local,
        downstream_remote: conn.info.remote,
        server_name: conn.info.server_name.as_deref(),
        flags,
        details: Some(details),
        ..Entry::default()
    };
    for l in &conn.hcm.access_logs {
        l.log(&e);
    }
}

struct Record {
    conn: Arc<Conn>,
    start: SystemTime,
    t0: Instant,
    rx: Arc<AtomicU64>,
    head: ReqHead,
    status: u16,
    response_headers: HeaderMap,
    upstream: Option<SocketAddr>,
    route: Option<RouteMeta>,
    flags: &'static str,
    details: String,
    tx: u64,
    done: bool,
}

impl Record {
    fn write(&mut self, reset: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let conn = &self.conn;
        let flags = if reset && self.flags.is_empty() {
            // The client went away before the response was complete.
            "DC"
        } else {
            self.flags
        };
        let e = Entry {
            start: Some(self.start),
            duration: clock::now() - self.t0,
            request: Some(&self.head),
            status: Some(self.status),
            response_headers: Some(&self.response_headers),
            protocol: Some(if conn.http2 { "HTTP/2" } else { "HTTP/1.1" }),
            bytes_received: self.rx.load(Ordering::Relaxed),
            bytes_sent: self.tx,
            upstream_host: self.upstream,
            upstream_cluster: self.route.as_ref().and_then(|r| r.cluster.as_deref()),
            upstream_local: None,
            downstream_local: conn.info.local,
            downstream_remote: conn.info.remote,
            server_name: conn.info.server_name.as_deref(),
            route_name: self.route.as_ref().map(|r| r.route.as_str()),
            flags,
            details: Some(self.details.as_str()).filter(|d| !d.is_empty()),
        };
        for l in &conn.hcm.access_logs {
            l.log(&e);
        }
    }
}

struct Counted {
    inner: Body,
    n: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

struct Logged {
    inner: Body,
    record: Box<Record>,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.record.tx += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.record.write(false);
                }
            }
            Poll::Ready(None) => self.record.write(false),
            Poll::Ready(Some(Err(_))) => {
                if self.record.flags.is_empty() {
                    self.record.flags = "UR";
                }
                self.record.write(false)
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let reset = !http_body::Body::is_end_stream(&self.inner);
        self.record.write(reset);
    }
}
