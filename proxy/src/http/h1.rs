//! The downstream HTTP/1.1 server: one loop per connection that parses each request head with
//! httparse, runs the request through the router, and writes the response. There is no
//! connection task besides this loop and no channel per request: the request body reads the
//! socket itself (and hands it back when it ends), and the response head and a ready body go
//! out in one `writev`.
//!
//! What it enforces, as Envoy's HTTP/1 codec does:
//! - a request head larger than `max_request_headers_kb` or with more than
//!   `max_headers_count` headers: 431; a malformed head: 400; both `content-length` and
//!   `transfer-encoding`, or conflicting lengths: 400 (request smuggling); a transfer coding
//!   other than `chunked`: 501; HTTP/1.0 without `accept_http_10`: 426; no `Host` on
//!   HTTP/1.1: 400; a head not complete within `request_headers_timeout`: 408. These
//!   answers close the connection.
//! - `Expect: 100-continue` is answered with `100 Continue` at once and removed.
//! - Keep-alive (HTTP/1.1 unless `connection: close`; HTTP/1.0 only with `keep-alive`),
//!   pipelining (responses in order), and `connection: close` on the response in flight once
//!   the connection drains. A response whose request body was not read to its end closes
//!   the connection after it (`connection: close` on it when the body was still streaming as
//!   the response head went out).
//! - A client that closes its connection while its request is in flight, or while its
//!   response body waits for the upstream, cancels the request.
//! - Upgrades: after a `101` (or a `2xx` to CONNECT) the socket and the bytes read past the
//!   request go to the tunnel (`upgrade.rs`). An upgrade request answered otherwise closes
//!   the connection: the bytes after its head are never parsed as requests. `h2c` upgrade
//!   requests are served as plain HTTP/1.1 (their upgrade headers removed), as in Envoy.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::upgrade::{PendingUpgrade, Upgraded};
use super::wire::{self, Chunk, In};
use super::Conn;
use crate::body::{Body, BoxError};

/// Headers parsed on the stack; a configured `max_headers_count` above this parses into a
/// vector.
const STACK_HEADERS: usize = 128;
/// Most headers a request head may have whatever `max_headers_count` says (more: 431).
const MAX_HEADERS_PARSED: usize = 4096;
/// Output gathered before a write, so the head and a ready body go out in one `writev`.
const GATHER: usize = 64 * 1024;
/// Bytes of pipelined requests read ahead while a request is in flight.
const READ_AHEAD: usize = 64 * 1024;

/// The connection's read side: the socket and what was read from it but not parsed yet.
struct Reader {
    io: OwnedReadHalf,
    buf: BytesMut,
    hint: usize,
}

impl Reader {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        wire::poll_fill(&mut self.io, &mut self.buf, &mut self.hint, cx)
    }
}

/// A request head that was rejected: the status to answer with before closing, and why (the
/// access log's `%RESPONSE_CODE_DETAILS%`, named as Envoy's codec names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reject(u16, &'static str);

/// Envoy's generic detail for an HTTP/1 request its codec could not parse.
const CODEC_ERROR: &str = "http1.codec_error";
const HEADERS_TOO_LARGE: &str = "http1.headers_too_large";
const TOO_MANY_HEADERS: &str = "http1.too_many_headers";

/// A parsed request head and what the connection needs to know about it.
struct Parsed {
    parts: http::request::Parts,
    body: In,
    keep_alive: bool,
    upgrade: bool,
    /// The client may send `trailer` fields back (`te: trailers`): a chunked response keeps them.
    trailers: bool,
    /// `Expect: 100-continue` (removed from the headers: the proxy answers it).
    expect_continue: bool,
}

/// The HCM settings the codec applies.
struct Limits {
    max_head: usize,
    max_headers: usize,
    accept_http_10: bool,
    absolute_url: bool,
    /// `request_headers_timeout`: from a head's first byte to its last.
    headers_timeout: Option<std::time::Duration>,
    default_host_10: Option<HeaderValue>,
}

/// Serves one HTTP/1.1 connection until it closes, the client goes away, or `stop` resolves
/// with no request in flight (a request in flight then gets `connection: close`).
pub(super) async fn serve(conn: Arc<Conn>, io: TcpStream, stop: impl Future<Output = ()>) {
    let hcm = &conn.hcm;
    let limits = Limits {
        max_head: (hcm.max_request_headers_kb as usize * 1024).max(1024),
        max_headers: hcm.max_headers_count as usize,
        accept_http_10: hcm.accept_http_10,
        absolute_url: hcm.allow_absolute_url,
        headers_timeout: hcm.request_headers_timeout,
        default_host_10: hcm
            .default_host_for_http_10
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok()),
    };
    let (rd, wr) = io.into_split();
    let mut home = Some(Reader {
        io: rd,
        buf: BytesMut::new(),
        hint: wire::MIN_READ,
    });
    let mut w = Writer {
        io: wr,
        queue: wire::Queue::default(),
        head: wire::HeadBuf::default(),
        spare: wire::SpareHeaders::default(),
    };
    // The caller's `stop` is gated (`crate::gate`): polling it on every wake-up of the
    // connection costs a load.
    let mut stop = pin!(stop);
    let mut stopping = false;
    let mut headers_timer = None;
    // Kept for the connection's requests, one after the other (`timeout::Deadline`).
    let mut timer = super::timeout::Deadline::default();
    let mut idx: Vec<[usize; 4]> = Vec::new();
    loop {
        let Some(mut reader) = home.take() else {
            return;
        };
        // The next request head (or the end of the connection).
        let parsed = std::future::poll_fn(|cx| {
            next_head(
                &mut reader,
                &limits,
                &mut idx,
                &mut w.spare,
                stop.as_mut(),
                &mut stopping,
                &mut headers_timer,
                cx,
            )
        })
        .await;
        let mut parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(Reject(status, details)) => {
                let resp = protocol_error(&conn, status);
                super::access::log_rejected(
                    &conn,
                    status,
                    details,
                    resp.body().size_hint().lower(),
                );
                let info = ReqInfo {
                    head: false,
                    connect: false,
                    trailers: false,
                    http10: false,
                };
                let _ = write_response(&mut w, resp, &info, false, None).await;
                close(w, reader).await;
                return;
            }
        };
        if parsed.expect_continue && parsed.parts.version == Version::HTTP_11 {
            w.push(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
            if std::future::poll_fn(|cx| w.poll_flush(cx)).await.is_err() {
                return;
            }
        }
        let info = ReqInfo {
            head: parsed.parts.method == Method::HEAD,
            connect: parsed.parts.method == Method::CONNECT,
            trailers: parsed.trailers,
            http10: parsed.parts.version == Version::HTTP_10,
        };
        let upgrade_tx = parsed.upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            parsed.parts.extensions.insert(PendingUpgrade::new(rx));
            tx
        });
        // The body, if any, takes the reader along and sends it back when it is done.
        let mut back = None;
        let body = if parsed.body == In::Done {
            home = Some(reader);
            RequestBody {
                reader: None,
                state: In::Done,
                back: None,
            }
        } else {
            let (tx, rx) = oneshot::channel();
            back = Some(rx);
            RequestBody {
                reader: Some(reader),
                state: parsed.body,
                back: Some(tx),
            }
        };
        let req = Request::from_parts(parsed.parts, body);

        // The request runs while the connection watches for the client going away (and
        // reads ahead pipelined requests), and for the end of the request body.
        let mut rest = In::Done;
        let mut invalid = false;
        let resp = {
            let mut handler = pin!(super::router::handle(conn.clone(), req, &mut timer));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = handler.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if !stopping && stop.as_mut().poll(cx).is_ready() {
                    stopping = true;
                }
                if let Some(rx) = back.as_mut() {
                    if let Poll::Ready(r) = Pin::new(rx).poll(cx) {
                        back = None;
                        if let Ok(b) = r {
                            home = Some(b.reader);
                            rest = b.rest;
                            invalid = b.invalid;
                        }
                    }
                }
                if let Some(r) = home.as_mut().filter(|_| rest == In::Done) {
                    while r.buf.len() < READ_AHEAD {
                        match r.poll_fill(cx) {
                            Poll::Pending => break,
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Ready(Ok(_)) => {}
                        }
                    }
                }
                Poll::Pending
            })
            .await
        };
        let Some(resp) = resp else {
            // The client closed with its request in flight: the request is cancelled.
            conn.stats.downstream_cx_destroy_remote_active_rq.inc();
            return;
        };
        // Is the request body back (read to its end)?
        if let Some(rx) = back.as_mut() {
            match rx.try_recv() {
                Ok(b) => {
                    back = None;
                    home = Some(b.reader);
                    rest = b.rest;
                    invalid = b.invalid;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => back = None,
            }
        }
        if invalid {
            // A request body that broke its framing: Envoy's codec error, whatever the
            // upstream made of it.
            let resp = protocol_error(&conn, 400);
            let _ = write_response(&mut w, resp, &info, false, None).await;
            if let Some(r) = home {
                close(w, r).await;
            }
            return;
        }
        // What is left of a body nobody read (a local reply) is skipped if it is already
        // here, so the connection can stay open.
        if let Some(r) = home.as_mut() {
            rest = skip_buffered(r, rest);
        }
        let body_lost = back.is_none() && home.is_none();
        let upgraded = upgrade_tx.is_some()
            && (resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (info.connect && resp.status().is_success()));
        // An upgrade request that was not upgraded ends the connection: what the client sent
        // after its head is tunnel payload, not requests (Envoy's codec takes it as the
        // request's body), and parsing it as the next request would smuggle that request
        // past whatever sits in front and expected a tunnel.
        // A request body still streaming (the response came first) is not waited for: the
        // response says `connection: close` and the connection ends after it, as Envoy does
        // when it answers before the request is complete.
        let keep_alive = parsed.keep_alive
            && upgrade_tx.is_none()
            && !stopping
            && rest == In::Done
            && back.is_none()
            && !body_lost
            && !conn_close(&resp);
        // While the response body waits, the client's close is noticed (pipelined requests
        // are read ahead meanwhile).
        let watch = home.as_mut().filter(|_| rest == In::Done);
        match write_response(&mut w, resp, &info, keep_alive || upgraded, watch).await {
            Ok(true) => {}
            r => {
                if matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionAborted) {
                    // The client left while the response body was still coming.
                    conn.stats.downstream_cx_destroy_remote_active_rq.inc();
                }
                if let Some(r) = home {
                    close(w, r).await;
                }
                return;
            }
        }
        if upgraded {
            // The tunnel takes the socket; the connection's work is done.
            let (Some(tx), Some(r)) = (upgrade_tx, home) else {
                return;
            };
            if let Ok(io) = r.io.reunite(w.io) {
                let _ = tx.send(Upgraded::Http1 {
                    io,
                    read_ahead: r.buf.freeze(),
                });
            }
            return;
        }
        // A body still streaming upstream after the response: it cannot be waited for (the
        // reader, if it is back by now, is only wanted for the delayed close).
        if let Some(b) = back.and_then(|mut rx| rx.try_recv().ok()) {
            home = Some(b.reader);
        }
        if !keep_alive || rest != In::Done {
            if let Some(r) = home {
                close(w, r).await;
            }
            return;
        }
        // Waiting for the next request, the connection holds no buffers and no header map.
        if let Some(r) = home.as_mut() {
            if r.buf.is_empty() {
                wire::release(&mut r.buf);
                r.hint = wire::MIN_READ;
                w.head.release();
                w.spare.release();
            }
        }
    }
}

/// The local reply to a request the codec rejected (its body is the status's reason).
fn protocol_error(conn: &Conn, status: u16) -> Response<Body> {
    if status == 408 {
        conn.stats.downstream_rq_header_timeout.inc();
    } else {
        conn.stats.downstream_cx_protocol_error.inc();
    }
    conn.stats.status(status);
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut resp = super::router::local_reply(status, reason);
    if let Some(v) = &conn.hcm.server_header {
        resp.headers_mut().insert(http::header::SERVER, v.clone());
    }
    resp
}

/// Skips the rest of a request body as far as it is buffered; returns where it is left.
fn skip_buffered(r: &mut Reader, mut rest: In) -> In {
    loop {
        match rest {
            In::Length(n) => {
                let k = (r.buf.len() as u64).min(n);
                r.buf.advance(k as usize);
                return if k == n { In::Done } else { In::Length(n - k) };
            }
            In::Chunked(_) => match wire::decode_chunk(&mut rest, &mut r.buf) {
                Ok(Some(Some(_))) => {}
                Ok(Some(None)) => return In::Done,
                // Incomplete, or invalid: the connection closes either way.
                Ok(None) | Err(_) => return rest,
            },
            other => return other,
        }
    }
}

/// Reads and parses the next request head. `Ok(None)`: the connection ended (or `stop`
/// resolved) before one arrived.
#[allow(clippy::too_many_arguments)]
fn next_head<S: Future<Output = ()>>(
    r: &mut Reader,
    limits: &Limits,
    idx: &mut Vec<[usize; 4]>,
    spare: &mut wire::SpareHeaders,
    mut stop: Pin<&mut S>,
    stopping: &mut bool,
    headers_timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Parsed>, Reject>> {
    loop {
        if !r.buf.is_empty() {
            if let Some(p) = parse(&mut r.buf, limits, idx, spare)? {
                *headers_timer = None;
                return Poll::Ready(Ok(Some(p)));
            }
            // A head has started: `request_headers_timeout` runs until it is complete.
            if let Some(d) = limits.headers_timeout.filter(|_| !r.buf.is_empty()) {
                let t = headers_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Reject(408, "request_header_timeout")));
                }
            }
        }
        if *stopping || stop.as_mut().poll(cx).is_ready() {
            *stopping = true;
            return Poll::Ready(Ok(None));
        }
        match ready!(r.poll_fill(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Ok(None)),
            Ok(_) => {}
        }
    }
}

/// Parses one request head from the front of `buf` (`None`: incomplete).
fn parse(
    buf: &mut BytesMut,
    limits: &Limits,
    idx: &mut Vec<[usize; 4]>,
    spare: &mut wire::SpareHeaders,
) -> Result<Option<Parsed>, Reject> {
    // Empty lines before a request line are ignored (RFC 9112 §2.2).
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    buf.advance(skip);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap;
    let headers: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers < STACK_HEADERS {
        &mut stack
    } else {
        // Bounded: a huge configured count must not cost megabytes per request.
        let n = (limits.max_headers + 1).min(MAX_HEADERS_PARSED);
        heap = Vec::with_capacity(n);
        heap.resize_with(n, MaybeUninit::uninit);
        &mut heap
    };
    let mut r = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut r,
        &buf[..],
        headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head {
                Err(Reject(431, HEADERS_TOO_LARGE))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject(431, TOO_MANY_HEADERS)),
        Err(_) => return Err(Reject(400, CODEC_ERROR)),
    };
    if len > limits.max_head {
        return Err(Reject(431, HEADERS_TOO_LARGE));
    }
    if r.headers.len() > limits.max_headers {
        return Err(Reject(431, TOO_MANY_HEADERS));
    }
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        _ if !limits.accept_http_10 => return Err(Reject(426, "low_version")),
        _ => Version::HTTP_10,
    };
    let method = Method::from_bytes(r.method.unwrap_or_default().as_bytes())
        .map_err(|_| Reject(400, CODEC_ERROR))?;
    let base = buf.as_ptr() as usize;
    let target = r.path.ok_or(Reject(400, CODEC_ERROR))?;
    let target_at = target.as_ptr() as usize - base;
    let target_range = target_at..target_at + target.len();
    idx.clear();
    for h in r.headers.iter() {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        idx.push([n, n + h.name.len(), v, v + h.value.len()]);
    }
    let head = buf.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target_range)).map_err(|_| Reject(400, CODEC_ERROR))?;
    // CONNECT names an authority and nothing else; other methods a path (or an absolute URI,
    // or `*` for OPTIONS).
    if method == Method::CONNECT {
        if uri.authority().is_none() || uri.scheme().is_some() {
            return Err(Reject(400, CODEC_ERROR));
        }
    } else if uri.path_and_query().is_none()
        || (uri.scheme().is_none() && uri.authority().is_some())
    {
        return Err(Reject(400, CODEC_ERROR));
    }

    let mut map = spare.take(idx.len() + 6);
    let mut length: Option<u64> = None;
    let mut te: Option<Vec<u8>> = None;
    // `close` anywhere wins over `keep-alive` (HTTP/1.0 keeps the connection only when asked
    // to, and not told to close as well).
    let mut close_token = false;
    let mut keep_alive_token = false;
    let mut conn_upgrade = false;
    let mut trailers = false;
    let mut expect: Option<bool> = None;
    for &[ns, ne, vs, ve] in idx.iter() {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| Reject(400, CODEC_ERROR))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| Reject(400, CODEC_ERROR))?;
        if name == CONTENT_LENGTH {
            for part in value.as_bytes().split(|b| *b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                    return Err(Reject(400, CODEC_ERROR));
                }
                let n = std::str::from_utf8(part)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(Reject(400, CODEC_ERROR))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Reject(400, CODEC_ERROR));
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            let t = te.get_or_insert_with(Vec::new);
            if !t.is_empty() {
                t.push(b',');
            }
            t.extend_from_slice(value.as_bytes());
        } else if name == CONNECTION {
            let v = value.as_bytes();
            close_token |= wire::has_token(v, b"close");
            keep_alive_token |= wire::has_token(v, b"keep-alive");
            conn_upgrade |= wire::has_token(v, b"upgrade");
        } else if name == TE {
            trailers |= wire::has_token(value.as_bytes(), b"trailers");
        } else if name == EXPECT && expect.is_none() {
            expect = Some(value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        }
        map.append(name, value);
    }
    let close = close_token || (version == Version::HTTP_10 && !keep_alive_token);
    let body = match (te, length) {
        // Both framings: which one the next hop uses is how requests get smuggled.
        (Some(_), Some(_)) => {
            return Err(Reject(400, "http1.content_length_and_chunked_not_allowed"))
        }
        (Some(t), None) => {
            // Only `chunked` is a transfer coding a proxy can delimit and pass on.
            if version == Version::HTTP_10 {
                return Err(Reject(400, CODEC_ERROR));
            }
            if !t.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Reject(501, "http1.invalid_transfer_encoding"));
            }
            In::Chunked(Chunk::Size)
        }
        (None, Some(0)) | (None, None) => In::Done,
        (None, Some(n)) => In::Length(n),
    };
    // A request names its host (Envoy: `missing_host_header`); HTTP/1.0 may get a default.
    if !map.contains_key(HOST) && uri.authority().is_none() {
        match &limits.default_host_10 {
            Some(h) if version == Version::HTTP_10 => {
                map.insert(HOST, h.clone());
            }
            _ => return Err(Reject(400, "missing_host_header")),
        }
    }
    // An absolute-form target names the host: it replaces `Host`, and the request goes on
    // in origin form (Envoy's `allow_absolute_url`).
    let mut uri = uri;
    if limits.absolute_url && method != Method::CONNECT && uri.scheme().is_some() {
        if let Some(a) = uri.authority() {
            let host = HeaderValue::from_str(a.as_str()).map_err(|_| Reject(400, CODEC_ERROR))?;
            map.insert(HOST, host);
        }
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        uri = Uri::try_from(pq).map_err(|_| Reject(400, CODEC_ERROR))?;
    }
    // h2c upgrades are ignored, as Envoy's codec does: the upgrade headers go and the request
    // is an ordinary HTTP/1.1 one (`curl --http2` on a cleartext URL asks for it).
    if map
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c"))
    {
        map.remove(UPGRADE);
        map.remove("http2-settings");
        conn_upgrade = false;
    }
    let upgrade = method == Method::CONNECT || (conn_upgrade && map.contains_key(UPGRADE));
    let expect_continue = expect == Some(true);
    if expect_continue {
        map.remove(EXPECT);
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = map;
    Ok(Some(Parsed {
        parts: req.into_parts().0,
        body,
        keep_alive: !close,
        upgrade,
        trailers,
        expect_continue,
    }))
}

fn conn_close(resp: &Response<Body>) -> bool {
    resp.headers()
        .get_all(CONNECTION)
        .iter()
        .any(|v| wire::has_token(v.as_bytes(), b"close"))
}

/// A request body, read from the connection by whoever polls it. The reader goes back to
/// the connection when the body ends or is dropped, with how much of the body was left.
struct RequestBody {
    reader: Option<Reader>,
    state: In,
    back: Option<oneshot::Sender<Back>>,
}

/// The reader going back to the connection, and where the body was left.
struct Back {
    reader: Reader,
    rest: In,
    /// The body's framing was invalid: the request gets a 400 and the connection closes.
    invalid: bool,
}

impl RequestBody {
    fn give_back(&mut self) {
        self.send_back(false);
    }

    fn send_back(&mut self, invalid: bool) {
        if let (Some(reader), Some(tx)) = (self.reader.take(), self.back.take()) {
            let _ = tx.send(Back {
                reader,
                rest: self.state,
                invalid,
            });
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The client ended the connection in the middle of a request body.
#[derive(Debug, thiserror::Error)]
#[error("downstream connection closed in the request body")]
struct Truncated;

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(r) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state {
                In::Done | In::UntilClose => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                In::Length(left) => {
                    if r.buf.is_empty() {
                        match ready!(r.poll_fill(cx)) {
                            Ok(0) => return Poll::Ready(Some(Err(Box::new(Truncated)))),
                            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                            Ok(_) => {}
                        }
                    }
                    let n = (r.buf.len() as u64).min(left);
                    let data = r.buf.split_to(n as usize).freeze();
                    this.state = if n == left {
                        In::Done
                    } else {
                        In::Length(left - n)
                    };
                    if this.state == In::Done {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                In::Chunked(_) => {
                    match wire::decode_chunk(&mut this.state, &mut r.buf) {
                        Ok(Some(Some(frame))) => {
                            if this.state == In::Done {
                                this.give_back();
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Ok(Some(None)) => continue,
                        Ok(None) => {}
                        Err(e) => {
                            // The connection cannot be trusted after this.
                            this.send_back(true);
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                    match ready!(r.poll_fill(cx)) {
                        Ok(0) => return Poll::Ready(Some(Err(Box::new(Truncated)))),
                        Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == In::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            In::Done => SizeHint::with_exact(0),
            In::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The connection's write side, with output queued for one `writev`.
struct Writer {
    io: OwnedWriteHalf,
    queue: wire::Queue,
    /// Response heads are written here.
    head: wire::HeadBuf,
    /// The last response's header map, emptied: the next request's headers go in it.
    spare: wire::SpareHeaders,
}

impl Writer {
    fn push(&mut self, b: Bytes) {
        self.queue.push(b);
    }

    /// Writes until the queue is empty.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 16];
            let n = self.queue.slices(&mut slices);
            let written = ready!(wire::poll_writev(self.io.as_ref(), cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queue.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

/// What the response framing depends on in the request.
struct ReqInfo {
    head: bool,
    connect: bool,
    trailers: bool,
    http10: bool,
}

/// How a response body goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    Close,
}

/// Writes the response; `Ok(true)` if it went out whole and the connection may carry another
/// exchange (`keep_alive` as decided, and the framing allows it). `watch`, the connection's
/// reader when no request body holds it: while the response body waits, the client closing
/// the connection (EOF or an error) aborts the response, so that a quiet upstream stream
/// (long poll, event stream) ends with the client instead of lingering until a timeout, as
/// Envoy resets it.
async fn write_response(
    w: &mut Writer,
    resp: Response<Body>,
    info: &ReqInfo,
    keep_alive: bool,
    mut watch: Option<&mut Reader>,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    let no_body = info.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (info.connect && status.is_success());
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut extra_length = None;
    let mut keep_alive = keep_alive;
    let out = if no_body {
        Out::None
    } else if let Some(n) = declared {
        Out::Length(n)
    } else if body.is_end_stream() {
        extra_length = Some(0);
        Out::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        extra_length = Some(n);
        Out::Length(n)
    } else if info.http10 {
        keep_alive = false;
        Out::Close
    } else {
        Out::Chunked
    };
    // Framing and connection headers are ours (the router removed the upstream's). A 204 or
    // 1xx has no content-length at all (RFC 9110 §8.6); a 304's is the resource's.
    let no_length = status == StatusCode::NO_CONTENT || status.is_informational();
    let skip = |k: &HeaderName| {
        !upgrade
            && (k == TRANSFER_ENCODING
                || k == CONNECTION
                || (k == CONTENT_LENGTH
                    && (out == Out::Chunked || extra_length.is_some() || no_length)))
    };
    let date = (!parts.headers.contains_key(DATE)).then(wire::date_value);
    let length_line = extra_length.map(|n| format!("content-length: {n}\r\n"));
    let connection: &[u8] = if upgrade {
        b""
    } else if !keep_alive {
        b"connection: close\r\n"
    } else if info.http10 {
        b"connection: keep-alive\r\n"
    } else {
        b""
    };
    let chunked: &[u8] = if out == Out::Chunked {
        b"transfer-encoding: chunked\r\n"
    } else {
        b""
    };
    let reason = status.canonical_reason().unwrap_or("Unknown");
    // The exact size: a buffer filled to capacity freezes without another allocation.
    let mut len = 9 + 3 + 1 + reason.len() + 2 + 2 + connection.len() + chunked.len();
    for (k, v) in &parts.headers {
        if !skip(k) {
            len += k.as_str().len() + v.len() + 4;
        }
    }
    if let Some(d) = &date {
        len += 6 + d.len() + 2;
    }
    if let Some(l) = &length_line {
        len += l.len();
    }
    let b = w.head.start(len);
    b.extend_from_slice(b"HTTP/1.1 ");
    b.extend_from_slice(status.as_str().as_bytes());
    b.extend_from_slice(b" ");
    b.extend_from_slice(reason.as_bytes());
    b.extend_from_slice(b"\r\n");
    for (k, v) in &parts.headers {
        if skip(k) {
            continue;
        }
        b.extend_from_slice(k.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    if let Some(d) = &date {
        b.extend_from_slice(b"date: ");
        b.extend_from_slice(d);
        b.extend_from_slice(b"\r\n");
    }
    if let Some(l) = &length_line {
        b.extend_from_slice(l.as_bytes());
    }
    b.extend_from_slice(connection);
    b.extend_from_slice(chunked);
    b.extend_from_slice(b"\r\n");
    debug_assert_eq!(b.len(), len);
    let head = w.head.finish();
    w.push(head);
    w.spare.keep(parts.headers);

    let mut body = (out != Out::None).then_some(body);
    let mut left = match out {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    let mut failed = false;
    std::future::poll_fn(|cx| loop {
        while w.queue.len() < GATHER {
            let Some(b) = body.as_mut() else { break };
            match Pin::new(b).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    body = None;
                    match out {
                        Out::Chunked => w.push(wire::last_chunk(None)),
                        // Shorter than its content-length: the client must see it cut off.
                        Out::Length(_) if left != 0 => failed = true,
                        _ => {}
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    // The response cannot be completed: the connection closes mid-body.
                    body = None;
                    failed = true;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match out {
                        Out::Chunked => w.queue.push_chunk(data),
                        Out::Length(_) => {
                            let mut data = data;
                            if data.len() as u64 > left {
                                data.truncate(left as usize);
                                failed = true;
                                body = None;
                            }
                            left -= data.len() as u64;
                            w.push(data);
                        }
                        _ => w.push(data),
                    },
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            if out == Out::Chunked {
                                w.push(wire::last_chunk(info.trailers.then_some(&t)));
                                body = None;
                            }
                        }
                    }
                },
            }
            if failed {
                body = None;
            }
        }
        if w.queue.is_empty() {
            if body.is_none() {
                return Poll::Ready(Ok::<(), io::Error>(()));
            }
            if let Some(r) = watch.as_mut() {
                while r.buf.len() < READ_AHEAD {
                    match r.poll_fill(cx) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                        }
                        Poll::Ready(Ok(_)) => {}
                    }
                }
            }
            return Poll::Pending;
        }
        ready!(w.poll_flush(cx))?;
    })
    .await?;
    Ok(keep_alive && !failed && out != Out::Close)
}

/// Closes the connection: the write side first, then what the client still sends is read
/// and dropped for a moment, so that unread request bytes do not turn the close into a reset
/// that could destroy the response in flight (Envoy's delayed close).
async fn close(mut w: Writer, mut r: Reader) {
    let _ = w.io.shutdown().await;
    // Read into the reader's own buffer: a sink array here would sit in every connection's
    // future (this one is part of it), used or not.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let mut total = 0usize;
        while total < 1 << 20 {
            r.buf.clear();
            r.buf.reserve(4096);
            match r.io.read_buf(&mut r.buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head: 60 * 1024,
            max_headers: 100,
            accept_http_10: false,
            absolute_url: true,
            headers_timeout: None,
            default_host_10: None,
        }
    }

    fn parse_str(s: &str, l: &Limits) -> Result<Option<Parsed>, Reject> {
        let mut buf = BytesMut::from(s.as_bytes());
        parse(
            &mut buf,
            l,
            &mut Vec::new(),
            &mut wire::SpareHeaders::default(),
        )
    }

    #[test]
    fn heads_parse_with_their_framing() {
        let l = limits();
        let p = parse_str("GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n", &l)
            .unwrap()
            .unwrap();
        assert_eq!(p.parts.uri, "/a?b");
        assert_eq!(p.body, In::Done);
        assert!(p.keep_alive);
        let p = parse_str(
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            &l,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, In::Length(5));
        assert!(!p.keep_alive);
        let p = parse_str(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n",
            &l,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.body, In::Chunked(Chunk::Size));
        assert!(parse_str("GET / HTTP/1.1\r\nhost: h\r\n", &l)
            .unwrap()
            .is_none());
        let p = parse_str("\r\nCONNECT a.b:443 HTTP/1.1\r\nhost: a.b:443\r\n\r\n", &l)
            .unwrap()
            .unwrap();
        assert!(p.upgrade);
        let p = parse_str(
            "GET /ws HTTP/1.1\r\nhost: h\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            &l,
        )
        .unwrap()
        .unwrap();
        assert!(p.upgrade);
    }

    #[test]
    fn smuggling_and_bad_heads_are_rejected() {
        let l = limits();
        let bad = |s: &str| parse_str(s, &l).err().map(|r| r.0);
        assert_eq!(
            bad("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3, 4\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: +3\r\n\r\n"),
            Some(400)
        );
        assert!(parse_str(
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3, 3\r\n\r\n",
            &l
        )
        .is_ok());
        assert_eq!(
            bad("POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(bad("GET / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(
            bad("GET / HTTP/1.1\r\nhost: h\r\nbad line\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            bad("GET / HTTP/1.1\r\nhost: h\r\n folded\r\n\r\n"),
            Some(400)
        );
        assert_eq!(bad("GET / HTTP/1.0\r\nhost: h\r\n\r\n"), Some(426));
        assert_eq!(bad("GET a.b:80 HTTP/1.1\r\nhost: h\r\n\r\n"), Some(400));
        assert_eq!(bad("CONNECT /x HTTP/1.1\r\nhost: h\r\n\r\n"), Some(400));
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            bad(&format!("GET / HTTP/1.1\r\nhost: h\r\n{many}\r\n")),
            Some(431)
        );
        let big = "x".repeat(61 * 1024);
        assert_eq!(
            bad(&format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {big}")),
            Some(431)
        );
    }

    #[test]
    fn http10_when_accepted() {
        let mut l = limits();
        l.accept_http_10 = true;
        assert_eq!(
            parse_str("GET / HTTP/1.0\r\n\r\n", &l).err(),
            Some(Reject(400, "missing_host_header"))
        );
        let p = parse_str("GET / HTTP/1.0\r\nhost: h\r\n\r\n", &l)
            .unwrap()
            .unwrap();
        assert!(!p.keep_alive);
        l.default_host_10 = Some(HeaderValue::from_static("default.local"));
        let p = parse_str("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", &l)
            .unwrap()
            .unwrap();
        assert!(p.keep_alive);
        assert_eq!(p.parts.headers[HOST], "default.local");
    }
}
