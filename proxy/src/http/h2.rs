//! The downstream HTTP/2 (h2c) server: one task per connection drives the connection
//! (`http2::server`, Sluice's own codec) and polls every stream's future itself, so a stream
//! costs no task of its own and no cross-task wake-up. Each stream runs the request through the
//! router and sends the response: its head, then its body within the client's flow-control
//! windows, then trailers. A client's RST_STREAM cancels the stream's request (and its upstream
//! request). A CONNECT stream answered with a 2xx becomes a byte tunnel
//! (`upgrade::Upgraded::Own`).
//!
//! SETTINGS from the HCM's `http2_protocol_options` (concurrent streams, stream and connection
//! windows; `model::network::Http2Settings`) and `max_request_headers_kb` (the header list
//! limit). With `connection_keepalive`, the client is sent PINGs and the connection closed when
//! a PONG is late. The connection's own limits (rapid reset, stream errors, output queued for
//! a client that does not read) are `http2::server`'s.
//!
//! With `SLUICE_H2_SERVER=h2` the `h2` crate's server runs instead (`serve_h2`), as it did
//! before the codec: 400 KiB of send buffer per stream, a client resetting more than 20
//! streams before they are accepted, or causing 1,024 stream errors, loses the connection.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::h2stream::{strip_connection_headers, Ended, Keepalive, Pump, RecvBody, Tunnel};
use super::timeout::Deadline;
use super::upgrade::{PendingUpgrade, Upgraded};
use super::{router, wire, Conn};
use crate::body;
use crate::http2::frame::ErrorCode;
use crate::http2::server;
use crate::http2::stream::{BodyPump, Tunnel as OwnTunnel};
use crate::listener::{reached, Phase};

const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Whether connections are served by Sluice's own HTTP/2 codec (`http2::server`, the
/// default) or by the `h2` crate (`SLUICE_H2_SERVER=h2`, kept while the codec is new).
fn own_codec() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("SLUICE_H2_SERVER").map_or(true, |v| v != "h2"))
}

/// Serves one HTTP/2 connection until it closes. Once `stop` resolves (idle timeout or drain)
/// the server sends GOAWAY and lets the streams in flight finish, until the listener's close
/// phase.
pub(super) async fn serve(
    conn: Arc<Conn>,
    io: TcpStream,
    stop: impl Future<Output = ()>,
    phase: &mut watch::Receiver<Phase>,
) {
    if own_codec() {
        serve_own(conn, io, stop, phase).await
    } else {
        serve_h2(conn, io, stop, phase).await
    }
}

/// The `h2` crate's server.
async fn serve_h2(
    conn: Arc<Conn>,
    io: TcpStream,
    stop: impl Future<Output = ()>,
    phase: &mut watch::Receiver<Phase>,
) {
    let max_headers = (conn.hcm.max_request_headers_kb as usize * 1024).max(8192);
    let settings = conn.hcm.http2;
    let mut stop = pin!(stop);
    let handshake = h2::server::Builder::new()
        .initial_window_size(settings.initial_stream_window_size)
        .initial_connection_window_size(settings.initial_connection_window_size)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(max_headers as u32)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(io);
    let mut h2 = tokio::select! {
        r = handshake => match r {
            Ok(h2) => h2,
            Err(e) => {
                tracing::debug!("downstream h2 handshake: {e}");
                return;
            }
        },
        _ = stop.as_mut() => return,
    };
    let mut keepalive = settings
        .keepalive
        .map(|k| Keepalive::new(h2.ping_pong(), k));
    let mut streams = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        // Streams first: what they send goes out in the same turn, when the connection is
        // polled below.
        tokio::select! {
            biased;
            Some(()) = streams.next(), if !streams.is_empty() => {}
            accepted = h2.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    // Built in its box: the stream's future is large (the router's), and
                    // `Box::pin(fut)` would copy it from the stack.
                    let fut = Box::into_pin(Box::write(
                        Box::new_uninit(),
                        stream(conn.clone(), req, respond),
                    ));
                    streams.push(fut);
                }
                Some(Err(e)) => {
                    if !e.is_io() && e.reason().is_some_and(|r| r != Reason::NO_ERROR) {
                        conn.stats.downstream_cx_protocol_error.inc();
                    }
                    tracing::debug!("downstream h2 connection: {e}");
                    break;
                }
                None => break,
            },
            _ = stop.as_mut(), if !stopping => {
                stopping = true;
                h2.graceful_shutdown();
            }
            _ = reached(phase, Phase::Close), if stopping => break,
            _ = poll_fn(|cx| keepalive.as_mut().map_or(Poll::Pending, |k| k.poll_late(cx))),
                if keepalive.is_some() => {
                tracing::debug!("downstream h2 connection: no PONG in time, closing");
                break;
            }
        }
    }
}

/// One stream: the request through the router, then the response out.
async fn stream(conn: Arc<Conn>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (mut parts, recv) = req.into_parts();
    // A HEAD response's (empty) body says nothing about the length of the resource.
    let head = parts.method == Method::HEAD;
    // A CONNECT stream's DATA frames are the tunnel's bytes, not a request body.
    let mut tunnel = None;
    let body = if parts.method == Method::CONNECT {
        let (tx, rx) = oneshot::channel();
        parts.extensions.insert(PendingUpgrade::new(rx));
        tunnel = Some((tx, recv));
        body::empty()
    } else if recv.is_end_stream() {
        body::empty()
    } else {
        body::boxed(RecvBody::new(recv))
    };
    let stats = conn.stats.clone();
    let req = Request::from_parts(parts, body);
    let mut timer = Deadline::default();
    let Some((mut parts, body)) =
        route(conn, req, &mut timer, |cx| respond.poll_reset(cx).map(drop)).await
    else {
        stats.downstream_rq_rx_reset.inc();
        return;
    };
    if let Some((tx, recv)) = tunnel {
        if parts.status.is_success() {
            parts.headers.remove(CONTENT_LENGTH);
            match respond.send_response(Response::from_parts(parts, ()), false) {
                Ok(send) => {
                    let _ = tx.send(Upgraded::H2(Tunnel::new(send, recv)));
                }
                Err(e) => tracing::debug!("downstream h2 CONNECT response: {e}"),
            }
            return;
        }
    }
    let end = framing(&mut parts, &body, head);
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) if !end => {
            let mut pump = Pump::new(body, send, Reason::INTERNAL_ERROR);
            if poll_fn(|cx| pump.poll_pump(cx)).await == Ended::Reset {
                stats.downstream_rq_rx_reset.inc();
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("downstream h2 response: {e}"),
    }
}

/// How many ended streams' timers a connection keeps for its next streams (each is a few
/// hundred bytes, and wakes the connection once when its last deadline passes).
const SPARE_TIMERS: usize = 32;

/// Sluice's own server (`http2::server`). One turn of the task polls the streams, then the
/// connection (frames in, output out); handles polled in the turn do not wake the task.
async fn serve_own(
    conn: Arc<Conn>,
    io: TcpStream,
    stop: impl Future<Output = ()>,
    phase: &mut watch::Receiver<Phase>,
) {
    let max_headers = (conn.hcm.max_request_headers_kb as usize * 1024).max(8192);
    let settings = conn.hcm.http2;
    let mut connection = server::Connection::new(
        io,
        server::Config {
            max_concurrent_streams: settings.max_concurrent_streams,
            initial_stream_window: settings.initial_stream_window_size,
            initial_connection_window: settings.initial_connection_window_size,
            max_header_list: max_headers as u32,
            keepalive: settings.keepalive.map(|k| (k.interval, k.timeout)),
        },
    );
    let mut stop = pin!(stop);
    let mut close_phase = phase.clone();
    let mut close = pin!(async move { reached(&mut close_phase, Phase::Close).await });
    let mut stopping = false;
    let mut streams = FuturesUnordered::new();
    // Timers of streams that ended, for the next ones (`timeout::Deadline`).
    let mut timers: Vec<Deadline> = Vec::new();
    poll_fn(|cx| {
        connection.set_driving(true);
        loop {
            while let Poll::Ready(Some(t)) = streams.poll_next_unpin(cx) {
                if timers.len() < SPARE_TIMERS {
                    timers.push(t);
                }
            }
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                stopping = true;
                connection.graceful_shutdown();
            }
            if stopping && close.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            match connection.poll_event(cx) {
                Poll::Ready(server::Event::Request(a)) => {
                    // Built in its box: the stream's future is large (the router's).
                    let timer = timers.pop().unwrap_or_default();
                    let fut = Box::into_pin(Box::write(
                        Box::new_uninit(),
                        stream_own(conn.clone(), a, timer),
                    ));
                    streams.push(fut);
                    continue;
                }
                Poll::Ready(server::Event::Closed(code)) => {
                    if code.is_some_and(|c| c != ErrorCode::NO_ERROR) {
                        conn.stats.downstream_cx_protocol_error.inc();
                    }
                    return Poll::Ready(());
                }
                Poll::Pending => {}
            }
            if !connection.set_driving(false) {
                return Poll::Pending;
            }
            connection.set_driving(true);
        }
    })
    .await;
}

/// One stream on the own server: the request through the router, then the response out. The
/// connection's spare timer comes in and goes back (one future: a level of its own would
/// copy the request head twice more).
async fn stream_own(conn: Arc<Conn>, a: server::Accepted, mut timer: Deadline) -> Deadline {
    'stream: {
        let server::Accepted {
            head: mut parts,
            body: recv,
            mut respond,
        } = a;
        let head = parts.method == Method::HEAD;
        let mut tunnel = None;
        let body = if parts.method == Method::CONNECT {
            let (tx, rx) = oneshot::channel();
            parts.extensions.insert(PendingUpgrade::new(rx));
            tunnel = recv.map(|r| (tx, r));
            body::empty()
        } else {
            match recv {
                None => body::empty(),
                Some(r) => body::boxed(r),
            }
        };
        let stats = conn.stats.clone();
        let req = Request::from_parts(parts, body);
        let Some((mut parts, body)) =
            route(conn, req, &mut timer, |cx| respond.poll_reset(cx).map(drop)).await
        else {
            stats.downstream_rq_rx_reset.inc();
            break 'stream;
        };
        if let Some((tx, recv)) = tunnel {
            if parts.status.is_success() {
                parts.headers.remove(CONTENT_LENGTH);
                match respond.send_head(parts.status, &parts.headers, false) {
                    Ok(()) => {
                        let _ = tx.send(Upgraded::Own(OwnTunnel::new(recv, respond)));
                    }
                    Err(e) => tracing::debug!("downstream h2 CONNECT response: {e}"),
                }
                break 'stream;
            }
        }
        let end = framing(&mut parts, &body, head);
        let sent = respond.send_head(parts.status, &parts.headers, end);
        wire::recycle_header_map(std::mem::take(&mut parts.headers));
        if let Err(e) = sent {
            tracing::debug!("downstream h2 response: {e}");
            break 'stream;
        }
        let mut pump = BodyPump::new(body, respond, ErrorCode::INTERNAL_ERROR);
        if !end && poll_fn(|cx| pump.poll_pump(cx)).await == Ended::Reset {
            stats.downstream_rq_rx_reset.inc();
        }
    }
    timer
}

/// The router's response to `req`, its head tidied (see [`tidy_head`]), unless the client
/// resets the stream first: then the request future is dropped, which cancels the upstream
/// request.
async fn route(
    conn: Arc<Conn>,
    req: Request<crate::body::Body>,
    timer: &mut Deadline,
    mut poll_reset: impl FnMut(&mut std::task::Context<'_>) -> Poll<()>,
) -> Option<(http::response::Parts, crate::body::Body)> {
    // Pinned where it is made: passing the router's future (a few KB) by value moved it once
    // more per request.
    let mut handle = pin!(router::handle(conn, req, timer));
    let resp = poll_fn(|cx| {
        if let Poll::Ready(r) = handle.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        poll_reset(cx).map(|()| None)
    })
    .await;
    let (mut parts, body) = resp?.into_parts();
    tidy_head(&mut parts);
    Some((parts, body))
}

/// What every response head gets: no connection-specific fields, and a `date` when the
/// upstream sent none.
fn tidy_head(parts: &mut http::response::Parts) {
    strip_connection_headers(&mut parts.headers);
    if !parts.headers.contains_key(DATE) {
        parts.headers.insert(DATE, wire::date_header());
    }
}

/// A response's framing; true when its head ends the stream. 204 and 304 have no content
/// (RFC 9110 §15.3.5, §15.4.5), and a HEAD response ends with its head: whatever body the route
/// produced is not sent. A 204 carries no `content-length` either (§8.6; a 304's is the
/// resource's); otherwise a body of known size gets one.
fn framing(parts: &mut http::response::Parts, body: &crate::body::Body, head: bool) -> bool {
    let no_content = matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) || parts.status.is_informational();
    if parts.status == StatusCode::NO_CONTENT || parts.status.is_informational() {
        parts.headers.remove(CONTENT_LENGTH);
    }
    if !(head || no_content || parts.headers.contains_key(CONTENT_LENGTH)) {
        if let Some(n) = body.size_hint().exact() {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    head || no_content || body.is_end_stream()
}
