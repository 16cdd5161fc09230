//! One stream's handles, as the server hands them out: [`RecvBody`] reads the request body (DATA
//! then trailers, giving flow-control window back as it is read), [`SendStream`] sends the
//! response (head, DATA within the peer's windows, trailers) and sees a reset, and [`Tunnel`]
//! is a CONNECT stream after its 2xx, as a byte stream both ways. Each holds the connection's
//! shared state (`shared.rs`) and its stream id.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::ErrorCode;
use super::shared::{Pseudo, Shared, StreamError};
use crate::http::h2stream::Ended;

/// A request body read from its stream.
pub struct RecvBody {
    shared: Arc<Shared>,
    id: u32,
    data_done: bool,
    /// Seen ended (it stays so) under the lock `poll_frame` took anyway: the body pump asks
    /// after every DATA frame whether it was the last.
    ended: bool,
    /// Bytes still to come, from `content-length`.
    remaining: Option<u64>,
}

impl RecvBody {
    pub(crate) fn new(shared: Arc<Shared>, id: u32, content_length: Option<u64>) -> RecvBody {
        RecvBody {
            shared,
            id,
            data_done: false,
            ended: false,
            remaining: content_length,
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        let mut inner = this.shared.lock();
        if !this.data_done {
            match ready!(inner.poll_data(cx, this.id)) {
                Some(Ok(data)) => {
                    if let Some(r) = this.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    this.ended = inner.recv_ended(this.id);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        // No data left and the trailers taken: nothing more comes.
        this.ended = true;
        Poll::Ready(inner.take_trailers(this.id).map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.shared.lock().recv_ended(self.id)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        self.shared.lock().drop_reader(self.id);
    }
}

/// The sending side of a stream: the response (server), the request body (client).
pub struct SendStream {
    shared: Arc<Shared>,
    id: u32,
    ended: bool,
}

impl SendStream {
    pub(crate) fn new(shared: Arc<Shared>, id: u32) -> SendStream {
        SendStream {
            shared,
            id,
            ended: false,
        }
    }

    /// Queues the response head; `end` when there is no body.
    pub fn send_head(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        end: bool,
    ) -> Result<(), StreamError> {
        self.ended |= end;
        self.shared
            .lock()
            .send_headers(self.id, Pseudo::Response(status), headers, end)
    }

    /// Sends `data` as the windows allow; ready once all of it is queued.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        end: bool,
    ) -> Poll<Result<(), StreamError>> {
        let r = ready!(self.shared.lock().poll_send_data(cx, self.id, data, end));
        self.ended |= end && r.is_ok();
        Poll::Ready(r)
    }

    pub fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), StreamError> {
        self.ended = true;
        self.shared
            .lock()
            .send_headers(self.id, Pseudo::None, trailers, true)
    }

    /// Ready once the stream is reset (by the peer, or the connection is gone).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<StreamError> {
        self.shared.lock().poll_reset(cx, self.id)
    }

    pub fn reset(&mut self, code: ErrorCode) {
        self.ended = true;
        self.shared.lock().reset(self.id, code);
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if !self.ended {
            inner.reset(self.id, ErrorCode::CANCEL);
        }
        inner.drop_handle(self.id);
    }
}

/// A CONNECT stream after its 2xx response: DATA frames both ways as a byte stream.
pub struct Tunnel {
    recv: RecvBody,
    send: SendStream,
    /// Received bytes not yet read.
    buf: Bytes,
}

impl Tunnel {
    pub fn new(recv: RecvBody, send: SendStream) -> Tunnel {
        Tunnel {
            recv,
            send,
            buf: Bytes::new(),
        }
    }
}

fn io_error(e: StreamError) -> io::Error {
    let kind = match e {
        StreamError::ConnectionGone => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() && !this.recv.data_done {
            let mut inner = this.recv.shared.lock();
            match ready!(inner.poll_data(cx, this.recv.id)) {
                Some(Ok(data)) => this.buf = data,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => this.recv.data_done = true,
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(16 * 1024);
        let mut data = Bytes::copy_from_slice(&buf[..n]);
        match self.send.poll_send(cx, &mut data, false) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(io_error(e))),
            // Part of it went out before the window closed.
            Poll::Pending if data.len() < n => Poll::Ready(Ok(n - data.len())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.send.ended {
            return Poll::Ready(Ok(()));
        }
        let mut empty = Bytes::new();
        match ready!(self.send.poll_send(cx, &mut empty, true)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

/// Copies a body into its stream: DATA frames within the peer's windows (the last with
/// END_STREAM when the body says it is the last), then trailers or an empty END_STREAM. A
/// body that fails resets the stream with `on_error`.
pub struct BodyPump {
    body: crate::body::Body,
    send: SendStream,
    on_error: ErrorCode,
    buf: Bytes,
    last: bool,
}

impl BodyPump {
    pub fn new(body: crate::body::Body, send: SendStream, on_error: ErrorCode) -> BodyPump {
        BodyPump {
            body,
            send,
            on_error,
            buf: Bytes::new(),
            last: false,
        }
    }

    /// Ready when the body is sent, failed, or the stream is gone, saying which.
    pub fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        use http_body::Body as _;
        loop {
            if !self.buf.is_empty() || self.last {
                match ready!(self.send.poll_send(cx, &mut self.buf, self.last)) {
                    Err(_) => return Poll::Ready(Ended::Reset),
                    Ok(()) if self.last => return Poll::Ready(Ended::Sent),
                    Ok(()) => {}
                }
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.last = self.body.is_end_stream();
                        self.buf = data;
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = self.send.send_trailers(&trailers);
                            return Poll::Ready(Ended::Sent);
                        }
                    }
                },
                Poll::Ready(None) => self.last = true,
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!("body failed: {e}; resetting its h2 stream");
                    self.send.reset(self.on_error);
                    return Poll::Ready(Ended::BodyFailed);
                }
                Poll::Pending => {
                    return match self.send.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(Ended::Reset),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// A request's response head (client), then its body.
pub struct ResponseFuture {
    shared: Arc<Shared>,
    id: u32,
    /// The handle went to the body.
    taken: bool,
}

impl ResponseFuture {
    pub(crate) fn new(shared: Arc<Shared>, id: u32) -> ResponseFuture {
        ResponseFuture {
            shared,
            id,
            taken: false,
        }
    }
}

impl std::future::Future for ResponseFuture {
    type Output = Result<(StatusCode, HeaderMap, Option<RecvBody>), StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (status, headers, end) = ready!(self.shared.lock().poll_response(cx, self.id))?;
        let body = if end {
            None
        } else {
            self.taken = true;
            Some(RecvBody::new(self.shared.clone(), self.id, None))
        };
        Poll::Ready(Ok((status, headers, body)))
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if !self.taken {
            self.shared.lock().drop_reader(self.id);
        }
    }
}
