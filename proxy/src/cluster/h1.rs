//! An HTTP/1.1 client connection driven by the request that uses it. There is no connection
//! task and no channel: the request's own future writes the head and the request body, parses
//! the response head, and the response body it returns reads the rest from the socket (and
//! finishes writing a request body that is still streaming). When the exchange ends cleanly,
//! the connection goes back to its host's pool.
//!
//! Framing follows RFC 9112: the request gets `content-length` from a known body size or
//! `transfer-encoding: chunked`; the response body is delimited by `transfer-encoding`
//! (chunked, with trailers), `content-length`, or the end of the connection. 1xx responses
//! are skipped. Upgrades (`101`) are not handled here: those requests go over hyper's client,
//! and a `101` to any other request is a protocol error. A response that cannot be parsed
//! fails with [`Error::Invalid`]; the pool reports it as a protocol error (a 502).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use super::pool::Slot;
use crate::body::{Body, BoxError};
use crate::http::wire::{self, Chunk, In};

/// Most headers a response (or its trailers) may have: Envoy's default `max_headers_count`.
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and headers) accepted: Envoy's default
/// `max_response_headers_kb` (60).
const MAX_HEAD: usize = 60 * 1024;
/// Output gathered before a write, so head and a ready body go out in one `writev`.
const GATHER: usize = 64 * 1024;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// One upstream HTTP/1.1 connection, idle in a pool or owned by an exchange.
pub struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
    read_hint: usize,
    /// Header positions while a response head is parsed (kept to reuse its allocation).
    idx: Vec<[usize; 4]>,
    /// Output queued for the socket (kept to reuse its allocation).
    out: wire::Queue,
    /// A request's header map, emptied: the next response's headers go in it.
    spare: wire::SpareHeaders,
    /// Request heads are written here.
    head: wire::HeadBuf,
    /// Requests sent on it (for `max_requests_per_connection`).
    pub used: u32,
    /// When it last went idle.
    pub since: Instant,
    _slot: Slot,
}

impl Conn {
    pub fn new(io: TcpStream, slot: Slot) -> Box<Conn> {
        Box::new(Conn {
            io,
            rbuf: BytesMut::new(),
            read_hint: wire::MIN_READ,
            idx: Vec::new(),
            out: wire::Queue::default(),
            spare: wire::SpareHeaders::default(),
            head: wire::HeadBuf::default(),
            used: 0,
            since: Instant::now(),
            _slot: slot,
        })
    }

    /// Fit for another request: idle for less than `idle_timeout` and still open.
    pub fn reusable(&self, idle_timeout: Option<Duration>) -> bool {
        idle_timeout.is_none_or(|t| crate::clock::now() - self.since < t) && self.is_open()
    }

    /// False if the server closed the idle connection (or sent something unasked). Costs no
    /// system call unless the socket became readable while idle.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.io.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Encodes a request's head into this connection's head buffer, and keeps the request's
    /// header map to hold the next response's headers.
    pub fn encode(&mut self, parts: http::request::Parts, body: &Body) -> Head {
        let head = encode(&parts, body, &mut self.head);
        self.spare.keep(parts.headers);
        head
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        wire::poll_fill(&mut self.io, &mut self.rbuf, &mut self.read_hint, cx)
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// As is (`content-length`, or no body).
    Raw,
    Chunked,
}

/// The head of a request, encoded, plus how its body goes out. Kept so that a request that
/// never reached a server can be sent again on another connection.
pub struct Head {
    bytes: Bytes,
    out: Out,
    /// HEAD: the response has no body whatever its headers say.
    head_method: bool,
    /// Safe to send twice (RFC 9110 idempotent methods).
    idempotent: bool,
    /// The request's `transfer-encoding` does not end in chunked: the body ends with the
    /// connection, which cannot be reused.
    close_after: bool,
}

/// Encodes the request head (origin-form target expected) into `buf` and decides the body
/// framing.
pub fn encode(parts: &http::request::Parts, body: &Body, buf: &mut wire::HeadBuf) -> Head {
    let h = &parts.headers;
    let mut out = Out::Raw;
    let mut close_after = false;
    let mut extra: Option<(&str, String)> = None;
    let te = h.get_all(TRANSFER_ENCODING).iter().next_back();
    if let Some(te) = te {
        if wire::ends_chunked(te.as_bytes()) {
            out = Out::Chunked;
        } else {
            close_after = true;
        }
    } else if !h.contains_key(CONTENT_LENGTH) {
        if body.is_end_stream() {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                extra = Some(("content-length", "0".into()));
            }
        } else if let Some(n) = body.size_hint().exact() {
            extra = Some(("content-length", n.to_string()));
        } else {
            out = Out::Chunked;
            extra = Some(("transfer-encoding", "chunked".into()));
        }
    }
    let target = match parts.uri.path_and_query() {
        Some(pq) => pq.as_str(),
        None => parts.uri.authority().map(|a| a.as_str()).unwrap_or("/"),
    };
    // The exact size: a buffer filled to capacity freezes without another allocation.
    let mut len = parts.method.as_str().len() + 1 + target.len() + 11 + 2;
    for (k, v) in h {
        if !(te.is_some() && k == CONTENT_LENGTH) {
            len += k.as_str().len() + v.len() + 4;
        }
    }
    if let Some((k, v)) = &extra {
        len += k.len() + v.len() + 4;
    }
    let b = buf.start(len);
    b.extend_from_slice(parts.method.as_str().as_bytes());
    b.extend_from_slice(b" ");
    b.extend_from_slice(target.as_bytes());
    b.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in h {
        // A request with transfer-encoding carries no content-length (RFC 9112 §6.2).
        if te.is_some() && k == CONTENT_LENGTH {
            continue;
        }
        b.extend_from_slice(k.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    if let Some((k, v)) = extra {
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"\r\n");
    debug_assert_eq!(b.len(), len);
    Head {
        bytes: buf.finish(),
        out,
        head_method: parts.method == Method::HEAD,
        idempotent: matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ),
        close_after,
    }
}

/// A failed exchange. `retry` gives the request body back when the request provably (or, for
/// idempotent requests, almost surely) never reached the server: a reused connection that was
/// closed under it before any byte of a response came.
pub struct Failed {
    pub error: Error,
    pub retry: Option<(Head, Body)>,
}

enum Parsed {
    Final(http::response::Parts),
    /// A 1xx response was skipped.
    Informational,
    Partial,
}

/// One request/response on a connection.
struct Exchange {
    /// Boxed: the connection (a few hundred bytes) moves between the pool, the exchange and
    /// the response body as a pointer.
    conn: Box<Conn>,
    /// The request head, written from here (not queued: it stays whole for a resend).
    head: Head,
    head_sent: usize,
    /// The request body still to send (`None` once it ended).
    body: Option<Body>,
    framing: Out,
    /// Nothing was taken from the request body yet (it can still be sent elsewhere).
    body_untouched: bool,
    /// The server stopped taking the request (write error): keep reading, never reuse.
    write_failed: bool,
    reading: In,
    reusable: bool,
}

impl Exchange {
    /// Moves the request forward: gathers ready body frames, writes them out. Ready(Ok) once
    /// all of the request is written (or the server stopped taking it).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while self.conn.out.len() < GATHER {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        self.body_untouched = false;
                        match frame.into_data() {
                            Ok(data) => self.push_data(data),
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    self.end_body(Some(&trailers));
                                }
                            }
                        }
                    }
                    Poll::Ready(None) => self.end_body(None),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e))),
                }
            }
            let head_left = &self.head.bytes[self.head_sent..];
            if head_left.is_empty() && self.conn.out.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let mut slices = [IoSlice::new(&[]); 16];
            let mut n = 0;
            if !head_left.is_empty() {
                slices[0] = IoSlice::new(head_left);
                n = 1;
            }
            n += self.conn.out.slices(&mut slices[n..]);
            match wire::poll_writev(&self.conn.io, cx, &slices[..n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.write_failed = true;
                    self.reusable = false;
                    self.head_sent = self.head.bytes.len();
                    self.conn.out.clear();
                    self.body = None;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(written)) => {
                    let from_head = written.min(self.head.bytes.len() - self.head_sent);
                    self.head_sent += from_head;
                    self.conn.out.advance(written - from_head);
                }
            }
        }
    }

    fn push_data(&mut self, data: Bytes) {
        if self.framing == Out::Chunked {
            self.conn.out.push_chunk(data);
        } else {
            self.conn.out.push(data);
        }
    }

    fn end_body(&mut self, trailers: Option<&HeaderMap>) {
        self.body = None;
        if self.framing != Out::Chunked {
            return;
        }
        self.conn.out.push(wire::last_chunk(trailers));
    }

    /// Reads until a final response head is parsed (skipping 1xx), while still writing.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<http::response::Parts, Error>> {
        if self.body.is_some() || self.writing() {
            if let Poll::Ready(Err(e)) = self.poll_write(cx) {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            if !self.conn.rbuf.is_empty() {
                match self.parse_head(self.head.head_method)? {
                    Parsed::Final(parts) => return Poll::Ready(Ok(parts)),
                    Parsed::Informational => continue,
                    Parsed::Partial if self.conn.rbuf.len() > MAX_HEAD => {
                        return Poll::Ready(Err(Error::Invalid("response head too large")))
                    }
                    Parsed::Partial => {}
                }
            }
            if ready!(self.conn.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }

    /// Parses a response head from the buffer.
    fn parse_head(&mut self, head_method: bool) -> Result<Parsed, Error> {
        // Uninitialized: zeroing 100 headers per response costs more than parsing them.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            &self.conn.rbuf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(Error::Invalid("response head too large"))
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many headers")),
            Err(_) => return Err(Error::Invalid("malformed head")),
        };
        let code = r.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Header positions, taken before the buffer is split off and frozen (into a vector
        // the connection keeps, so no allocation per response).
        let base = self.conn.rbuf.as_ptr() as usize;
        let mut idx = std::mem::take(&mut self.conn.idx);
        idx.clear();
        for h in r.headers.iter() {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            idx.push([n, n + h.name.len(), v, v + h.value.len()]);
        }
        let count = idx.len();
        let head = self.conn.rbuf.split_to(len).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Requests that ask for an upgrade go over hyper's client; a server may not
            // switch protocols unasked (RFC 9110 §15.2.2).
            return Err(Error::Invalid("101 to a request that asked for no upgrade"));
        }
        if status.is_informational() {
            return Ok(Parsed::Informational);
        }
        // Room for the headers the router adds on the way back (server, service time, ...).
        let mut map = self.conn.spare.take(count + 6);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut te = false;
        let mut close = version == Version::HTTP_10;
        for &[ns, ne, vs, ve] in &idx {
            let name =
                HeaderName::from_bytes(&head[ns..ne]).map_err(|_| Error::Invalid("header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| Error::Invalid("header value"))?;
            if name == CONTENT_LENGTH {
                let n = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(Error::Invalid("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("conflicting content-length"));
                }
                length = Some(n);
            } else if name == TRANSFER_ENCODING {
                te = true;
                chunked = wire::ends_chunked(value.as_bytes());
            } else if name == CONNECTION {
                let v = value.as_bytes();
                if wire::has_token(v, b"close") {
                    close = true;
                } else if version == Version::HTTP_10 && wire::has_token(v, b"keep-alive") {
                    close = false;
                }
            }
            map.append(name, value);
        }
        self.conn.idx = idx;
        let no_body =
            head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        self.reading = if no_body {
            In::Done
        } else if te {
            if !chunked {
                close = true;
                In::UntilClose
            } else {
                if length.is_some() {
                    close = true; // both framings: the connection cannot be trusted after
                }
                In::Chunked(Chunk::Size)
            }
        } else if let Some(n) = length {
            if n == 0 {
                In::Done
            } else {
                In::Length(n)
            }
        } else {
            close = true;
            In::UntilClose
        };
        if close {
            self.reusable = false;
        }
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = map;
        Ok(Parsed::Final(resp.into_parts().0))
    }

    /// The next piece of the response body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.body.is_some() || self.writing() {
            if let Poll::Ready(Err(e)) = self.poll_write(cx) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        loop {
            match self.reading {
                In::Done => return Poll::Ready(None),
                In::Length(left) => {
                    if self.conn.rbuf.is_empty() && ready!(self.conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                    let n = (self.conn.rbuf.len() as u64).min(left);
                    let data = self.conn.rbuf.split_to(n as usize).freeze();
                    self.reading = if n == left {
                        In::Done
                    } else {
                        In::Length(left - n)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                In::UntilClose => {
                    if self.conn.rbuf.is_empty() && ready!(self.conn.poll_fill(cx))? == 0 {
                        self.reading = In::Done;
                        return Poll::Ready(None);
                    }
                    let data = self.conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                In::Chunked(_) => {
                    if let Some(frame) = wire::decode_chunk(&mut self.reading, &mut self.conn.rbuf)
                        .map_err(Error::Invalid)?
                    {
                        return Poll::Ready(frame.map(Ok));
                    }
                    if ready!(self.conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                }
            }
        }
    }

    /// Queued output not yet written.
    fn writing(&self) -> bool {
        self.head_sent < self.head.bytes.len() || !self.conn.out.is_empty()
    }

    /// The response and the request both ended, on a connection that may carry another.
    fn clean_end(&self) -> bool {
        matches!(self.reading, In::Done)
            && self.reusable
            && !self.write_failed
            && self.body.is_none()
            && !self.writing()
            && self.conn.rbuf.is_empty()
    }
}

/// Sends `head` and `body` on `conn` and returns the response once its head arrived. The
/// response body carries the connection and hands it to `give_back` when the exchange ended
/// cleanly.
pub async fn send(
    mut conn: Box<Conn>,
    head: Head,
    body: Body,
    reused: bool,
    give_back: impl FnOnce(Box<Conn>) + Send + Unpin + 'static,
) -> Result<Response<Body>, Failed> {
    conn.used += 1;
    let ended = body.is_end_stream();
    let mut ex = Exchange {
        conn,
        body: (!ended).then_some(body),
        framing: head.out,
        head_sent: 0,
        body_untouched: true,
        write_failed: false,
        reading: In::Done,
        reusable: !head.close_after,
        head,
    };
    if ended {
        ex.end_body(None);
    }
    let got = std::future::poll_fn(|cx| ex.poll_head(cx)).await;
    match got {
        Ok(parts) => {
            let mut body = ResponseBody {
                ex: Some(ex),
                give_back: Some(give_back),
            };
            body.maybe_finish();
            Ok(Response::from_parts(parts, crate::body::boxed(body)))
        }
        Err(error) => {
            let nothing_came = ex.conn.rbuf.is_empty();
            let unsent = reused
                && nothing_came
                && matches!(error, Error::Closed | Error::Io(_))
                && (ex.body_untouched || ended)
                && (ex.write_failed || ex.head.idempotent);
            let retry = unsent.then(|| {
                let body = ex.body.take().unwrap_or_else(crate::body::empty);
                (ex.head, body)
            });
            Err(Failed { error, retry })
        }
    }
}

/// The response body: reads the rest of the response from the connection.
struct ResponseBody<F: FnOnce(Box<Conn>)> {
    ex: Option<Exchange>,
    give_back: Option<F>,
}

impl<F: FnOnce(Box<Conn>)> ResponseBody<F> {
    /// Hands the connection back once the exchange ended cleanly; drops (closes) it once it
    /// ended otherwise.
    fn maybe_finish(&mut self) {
        let Some(ex) = &self.ex else { return };
        if !matches!(ex.reading, In::Done) {
            return;
        }
        // A request body still streaming when the response ended is cut off with the
        // connection, as Envoy resets the upstream stream.
        let clean = ex.clean_end();
        let ex = self.ex.take().expect("checked above");
        if clean {
            let mut conn = ex.conn;
            conn.since = crate::clock::now();
            // An idle connection holds no buffers and no header map.
            wire::release(&mut conn.rbuf);
            conn.head.release();
            conn.spare.release();
            if let Some(f) = self.give_back.take() {
                f(conn);
            }
        }
    }
}

impl<F: FnOnce(Box<Conn>) + Unpin> http_body::Body for ResponseBody<F> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(ex) = this.ex.as_mut() else {
            return Poll::Ready(None);
        };
        let r = ex.poll_body(cx);
        match &r {
            Poll::Ready(Some(Err(_))) => this.ex = None,
            Poll::Ready(_) => this.maybe_finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ex
            .as_ref()
            .is_none_or(|ex| matches!(ex.reading, In::Done))
    }

    fn size_hint(&self) -> SizeHint {
        match self.ex.as_ref().map(|ex| ex.reading) {
            None | Some(In::Done) => SizeHint::with_exact(0),
            Some(In::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
