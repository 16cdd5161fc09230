//! HTTP/2 streams of the `h2` crate (`SendStream`/`RecvStream`) as the proxy sees them, for the
//! crate's server and client kept behind `SLUICE_H2_SERVER=h2` / `SLUICE_H2_CLIENT=h2`: a
//! received stream as a body, a body pumped into a stream within the peer's flow-control
//! window, a CONNECT stream as a byte tunnel. Also the connection-specific headers HTTP/2
//! forbids (`strip_connection_headers`), which both codecs use.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderName, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::Body;
use crate::model::cluster::H2Keepalive;

/// A body read from a received h2 stream: DATA frames (their flow-control capacity given back
/// as they are handed on), then trailers.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl RecvBody {
    pub fn new(recv: RecvStream) -> RecvBody {
        RecvBody {
            recv,
            data_done: false,
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        while !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// How a [`Pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The whole body (and trailers) went into the stream.
    Sent,
    /// The body failed; the stream was reset with the pump's error code.
    BodyFailed,
    /// The peer reset the stream, or the connection failed, before the body was sent.
    Reset,
}

/// Copies a body into its stream: DATA frames within the flow-control capacity the peer
/// grants, then the trailers or an empty END_STREAM frame. A body that fails resets the stream
/// with `on_error`.
pub struct Pump {
    body: Body,
    stream: SendStream<Bytes>,
    on_error: Reason,
    /// A data frame being sent, and whether it is the body's last.
    buf: Bytes,
    last: bool,
}

impl Pump {
    pub fn new(body: Body, stream: SendStream<Bytes>, on_error: Reason) -> Pump {
        Pump {
            body,
            stream,
            on_error,
            buf: Bytes::new(),
            last: false,
        }
    }

    /// Ready when the body is sent, failed, or the stream is gone (reset by the peer), saying
    /// which.
    pub fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        loop {
            if !self.buf.is_empty() {
                self.stream.reserve_capacity(self.buf.len());
                match ready!(self.stream.poll_capacity(cx)) {
                    Some(Ok(0)) => continue,
                    Some(Ok(n)) => {
                        let chunk = self.buf.split_to(n.min(self.buf.len()));
                        let end = self.last && self.buf.is_empty();
                        if self.stream.send_data(chunk, end).is_err() {
                            return Poll::Ready(Ended::Reset);
                        }
                        if end {
                            return Poll::Ready(Ended::Sent);
                        }
                    }
                    // The stream was reset or the connection failed.
                    Some(Err(_)) | None => return Poll::Ready(Ended::Reset),
                }
                continue;
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let last = self.body.is_end_stream();
                        if data.is_empty() {
                            if last {
                                let _ = self.stream.send_data(Bytes::new(), true);
                                return Poll::Ready(Ended::Sent);
                            }
                        } else {
                            self.buf = data;
                            self.last = last;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = self.stream.send_trailers(trailers);
                            return Poll::Ready(Ended::Sent);
                        }
                    }
                },
                Poll::Ready(None) => {
                    let _ = self.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(Ended::Sent);
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!("body failed: {e}; resetting its h2 stream");
                    self.stream.send_reset(self.on_error);
                    return Poll::Ready(Ended::BodyFailed);
                }
                Poll::Pending => {
                    // Stop reading the body once the peer reset the stream.
                    return match self.stream.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(Ended::Reset),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// An HTTP/2 CONNECT stream after its 2xx: DATA frames both ways as a byte stream. Received
/// capacity is given back as frames arrive; writes wait for send capacity.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet read.
    buf: Bytes,
    ended: bool,
}

impl Tunnel {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Tunnel {
        Tunnel {
            send,
            recv,
            buf: Bytes::new(),
            ended: false,
        }
    }
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.buf = data;
                }
                // The peer's END_STREAM (or a reset with NO_ERROR) ends the byte stream.
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(io_error)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what was queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            this.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Keep-alive PINGs on one connection (`http2_protocol_options.connection_keepalive`): a PING
/// `interval` after the last PONG; the peer is taken for gone when a PONG is more than
/// `timeout` late.
pub struct Keepalive {
    pings: Option<h2::PingPong>,
    timer: Pin<Box<tokio::time::Sleep>>,
    awaiting_pong: bool,
    k: H2Keepalive,
}

impl Keepalive {
    /// `None` when the connection's PING handle was taken already.
    pub fn new(pings: Option<h2::PingPong>, k: H2Keepalive) -> Keepalive {
        Keepalive {
            pings,
            timer: Box::pin(tokio::time::sleep(k.interval)),
            awaiting_pong: false,
            k,
        }
    }

    /// Ready once a PONG is late: the connection should be closed.
    pub fn poll_late(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(pp) = self.pings.as_mut() else {
            return Poll::Pending;
        };
        loop {
            if self.awaiting_pong {
                match pp.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        let next = tokio::time::Instant::now() + self.k.interval;
                        self.timer.as_mut().reset(next);
                    }
                    Poll::Ready(Err(_)) => {
                        self.pings = None;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.awaiting_pong {
                return Poll::Ready(());
            }
            if pp.send_ping(h2::Ping::opaque()).is_err() {
                self.pings = None;
                return Poll::Pending;
            }
            self.awaiting_pong = true;
            let next = tokio::time::Instant::now() + self.k.timeout;
            self.timer.as_mut().reset(next);
        }
    }
}

/// Removes the connection-specific headers HTTP/2 forbids (RFC 9113 §8.2.2; the h2 crate
/// refuses a message carrying one), keeping `te: trailers`. The common case, none present,
/// is one pass over the names.
pub fn strip_connection_headers(h: &mut HeaderMap) {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    let present = h.keys().any(|k| {
        k == CONNECTION
            || k == TRANSFER_ENCODING
            || k == UPGRADE
            || k == TE
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
    });
    if !present {
        return;
    }
    for n in [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ] {
        h.remove(n);
    }
    // `te` may only say `trailers` (RFC 9113 §8.2.2): every field is looked at, and one
    // `te: trailers` is kept if any of them lists that token (`gzip, trailers` included).
    let values = h.get_all(TE);
    let mut n = 0;
    let mut trailers = false;
    let mut only_trailers = true;
    for v in values.iter() {
        n += 1;
        let exact = v.as_bytes().eq_ignore_ascii_case(b"trailers");
        only_trailers &= exact;
        trailers |= exact || crate::http::wire::has_token(v.as_bytes(), b"trailers");
    }
    if n == 0 || (n == 1 && only_trailers) {
        return;
    }
    h.remove(TE);
    if trailers {
        h.insert(TE, http::HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TE, v.parse().unwrap());
        }
        h.insert(CONNECTION, "keep-alive".parse().unwrap());
        strip_connection_headers(&mut h);
        assert!(!h.contains_key(CONNECTION));
        h.get_all(TE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn te_keeps_only_trailers_whatever_the_fields_say() {
        assert_eq!(te(&[]), Vec::<String>::new());
        assert_eq!(te(&["trailers"]), ["trailers"]);
        assert_eq!(te(&["Trailers"]), ["Trailers"]);
        assert_eq!(te(&["gzip"]), Vec::<String>::new());
        assert_eq!(te(&["trailers", "gzip"]), ["trailers"]);
        assert_eq!(te(&["gzip", "trailers"]), ["trailers"]);
        assert_eq!(te(&["gzip, trailers"]), ["trailers"]);
        assert_eq!(te(&["gzip", "deflate"]), Vec::<String>::new());
    }
}
