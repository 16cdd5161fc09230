//! An HTTP/2 (h2c, prior knowledge) client connection to one upstream host, on Sluice's own
//! codec (`http2::client`; the `h2` crate's client with `SLUICE_H2_CLIENT=h2`): one task per
//! connection (reading frames, writing what the streams queued, with the cluster's
//! `connection_keepalive` PINGs), and each request sent from the request's own task. A request body is streamed from that task until the response head arrives, so a
//! body-less request or a small one (gRPC unary) costs no extra task; only a body still
//! streaming when the response starts moves to a task of its own.

use std::future::{poll_fn, Future};

use futures_util::future::Either;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use http::{Request, Response};
use http_body::Body as _;
use tokio::net::TcpStream;

use super::pool::{Slot, UpstreamError};
use crate::body::Body;
use crate::http::h2stream::{strip_connection_headers, Ended, Keepalive, Pump, RecvBody};
use crate::http2::client as own;
use crate::http2::frame::ErrorCode;
use crate::http2::stream::BodyPump;
use crate::http2::StreamError;
use crate::model::cluster::H2Keepalive;

/// Flow-control windows and buffers, as hyper's HTTP/2 client sets them.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// A handle on one HTTP/2 connection (a pool shares it in an `Arc`).
pub struct Connection(Client);

/// Sluice's own client (`http2::client`, the default) or the `h2` crate's
/// (`SLUICE_H2_CLIENT=h2`, kept while the codec is new).
enum Client {
    Own(own::Connection),
    Crate {
        tx: SendRequest<Bytes>,
        closed: Arc<AtomicBool>,
    },
}

fn own_codec() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("SLUICE_H2_CLIENT").map_or(true, |v| v != "h2"))
}

/// Why [`Connection::send`] did not return a response.
pub enum SendError {
    /// The connection could take no new stream (closed, or GOAWAY received): the request was
    /// not sent and may go out on another connection (boxed: a rare path).
    Unsent(Box<Request<Body>>),
    Failed(UpstreamError),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h2::Connection")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// The HTTP/2 handshake over `io`; the connection runs in its own task, which holds `slot`
    /// (the cluster's connection count) until the connection ends.
    pub async fn handshake(
        io: TcpStream,
        slot: Slot,
        keepalive: Option<H2Keepalive>,
    ) -> Result<Connection, UpstreamError> {
        if own_codec() {
            let (conn, driver) = own::start(
                io,
                own::Config {
                    initial_stream_window: STREAM_WINDOW,
                    initial_connection_window: CONN_WINDOW,
                    max_header_list: MAX_HEADER_LIST,
                    keepalive: keepalive.map(|k| (k.interval, k.timeout)),
                },
            );
            tokio::spawn(async move {
                driver.await;
                drop(slot);
            });
            return Ok(Connection(Client::Own(conn)));
        }
        let (tx, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| UpstreamError::Handshake(e.into()))?;
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        tokio::spawn(async move {
            match keepalive {
                Some(k) => drive(conn, k).await,
                None => {
                    let _ = conn.await;
                }
            }
            done.store(true, Ordering::Release);
            drop(slot);
        });
        Ok(Connection(Client::Crate { tx, closed }))
    }

    /// True once the connection has ended (or, on the own codec, can take no new stream).
    pub fn is_closed(&self) -> bool {
        match &self.0 {
            Client::Own(c) => c.is_closed(),
            Client::Crate { closed, .. } => closed.load(Ordering::Acquire),
        }
    }

    /// Identifies the connection (equal for handles on the same one).
    pub fn key(&self) -> usize {
        match &self.0 {
            Client::Own(c) => c.key(),
            Client::Crate { closed, .. } => Arc::as_ptr(closed) as usize,
        }
    }

    /// Sends `req` (its URI carries scheme and authority) and waits for the response head.
    /// Not an `async fn`: a level of its own around the client's future would store the
    /// request twice more.
    pub fn send(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + '_ {
        match &self.0 {
            Client::Own(c) => Either::Left(send_own(c, req)),
            Client::Crate { tx, .. } => Either::Right(send_crate(tx.clone(), req)),
        }
    }
}

/// Sends a request on the `h2` crate's client.
async fn send_crate(
    tx: SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    let mut tx = match tx.ready().await {
        Ok(tx) => tx,
        Err(_) => return Err(SendError::Unsent(Box::new(req))),
    };
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    let end = body.is_end_stream();
    let (resp, stream) = tx
        .send_request(Request::from_parts(parts, ()), end)
        // No stream was opened: nothing reached the upstream.
        .map_err(|e| SendError::Failed(UpstreamError::Refused(e.into())))?;
    drop(tx);
    let resp = if end {
        resp.await
    } else {
        let mut pump = Pump::new(body, stream, Reason::CANCEL);
        send_with_body(resp, move |cx| pump.poll_pump(cx)).await
    };
    match resp {
        Ok(resp) => Ok(resp.map(|recv| crate::body::boxed(RecvBody::new(recv)))),
        Err(e) => Err(SendError::Failed(upstream_error(e))),
    }
}

/// Sends a request on the own codec: the head, then the body while waiting for the response
/// head; a body still streaming when the head arrives goes on in a task of its own.
async fn send_own(conn: &own::Connection, req: Request<Body>) -> Result<Response<Body>, SendError> {
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    let end = body.is_end_stream();
    let (send, resp) = match conn.open(&parts, end).await {
        Ok(opened) => {
            crate::http::wire::recycle_header_map(std::mem::take(&mut parts.headers));
            opened
        }
        // No stream was opened: nothing reached the upstream.
        Err(_) => {
            return Err(SendError::Unsent(Box::new(Request::from_parts(
                parts, body,
            ))))
        }
    };
    let r = match send {
        None => resp.await,
        Some(send) => {
            let mut pump = BodyPump::new(body, send, ErrorCode::CANCEL);
            send_with_body(resp, move |cx| pump.poll_pump(cx)).await
        }
    };
    match r {
        Ok((status, headers, recv)) => {
            let body = match recv {
                Some(b) => crate::body::boxed(b),
                None => crate::body::empty(),
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            *resp.version_mut() = http::Version::HTTP_2;
            *resp.headers_mut() = headers;
            Ok(resp)
        }
        Err(e @ StreamError::Refused(_)) => {
            Err(SendError::Failed(UpstreamError::Refused(e.into())))
        }
        Err(e @ StreamError::Reset(_)) => {
            Err(SendError::Failed(UpstreamError::RemoteReset(e.into())))
        }
        Err(e @ StreamError::LocalReset(code)) if is_violation(code.0) => {
            Err(SendError::Failed(UpstreamError::Protocol(e.into())))
        }
        Err(e) => Err(SendError::Failed(UpstreamError::Reset(e.into()))),
    }
}

/// Error codes this side resets a stream (or ends the connection) with when the upstream broke
/// HTTP/2: a malformed response, a frame it must not send. Not CANCEL or the like, which this
/// side sends for its own reasons.
fn is_violation(code: u32) -> bool {
    [
        ErrorCode::PROTOCOL_ERROR,
        ErrorCode::FLOW_CONTROL_ERROR,
        ErrorCode::FRAME_SIZE_ERROR,
        ErrorCode::COMPRESSION_ERROR,
    ]
    .iter()
    .any(|c| c.0 == code)
}

/// Streams the request body (`pump`) while waiting for the response head (`resp`); a body
/// still streaming when the head arrives goes on in a task of its own (full duplex, e.g. gRPC
/// streaming). For both clients.
async fn send_with_body<T, E>(
    mut resp: impl Future<Output = Result<T, E>> + Unpin,
    mut pump: impl FnMut(&mut Context<'_>) -> Poll<Ended> + Send + 'static,
) -> Result<T, E> {
    let mut pumping = true;
    let r = poll_fn(|cx| {
        if pumping && pump(cx).is_ready() {
            pumping = false;
        }
        Pin::new(&mut resp).poll(cx)
    })
    .await;
    if pumping && r.is_ok() {
        tokio::spawn(poll_fn(move |cx| pump(cx).map(drop)));
    }
    r
}

/// Maps a stream failure: `REFUSED_STREAM`, and streams a graceful GOAWAY left unprocessed,
/// never reached the application.
fn upstream_error(e: h2::Error) -> UpstreamError {
    let refused = e.reason() == Some(Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR));
    if refused {
        UpstreamError::Refused(e.into())
    } else if !e.is_remote() && e.reason().is_some_and(|r| is_violation(r.into())) {
        UpstreamError::Protocol(e.into())
    } else if e.is_reset() && e.is_remote() {
        UpstreamError::RemoteReset(e.into())
    } else {
        UpstreamError::Reset(e.into())
    }
}

/// Runs the connection until it ends, or a keep-alive PONG is late.
async fn drive(conn: h2::client::Connection<TcpStream, Bytes>, k: H2Keepalive) {
    let mut conn = conn;
    let mut keepalive = Keepalive::new(conn.ping_pong(), k);
    let mut conn = std::pin::pin!(conn);
    poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        ready!(keepalive.poll_late(cx));
        tracing::debug!("upstream h2 connection: no PONG in time, closing");
        Poll::Ready(())
    })
    .await
}
