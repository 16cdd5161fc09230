//! One stream's handles, as the server hands them out: [`RecvBody`] reads the request body (DATA
//! then trailers, giving flow-control window back as it is read), [`Respond`] sends the
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
use super::shared::{Shared, StreamError};

/// A request body read from its stream.
pub struct RecvBody {
    shared: Arc<Shared>,
    id: u32,
    data_done: bool,
    /// Bytes still to come, from `content-length`.
    remaining: Option<u64>,
}

impl RecvBody {
    pub(crate) fn new(shared: Arc<Shared>, id: u32, content_length: Option<u64>) -> RecvBody {
        RecvBody {
            shared,
            id,
            data_done: false,
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
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(inner.take_trailers(this.id).map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.shared.lock().recv_ended(self.id)
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

/// The sending side of a stream: the response.
pub struct Respond {
    shared: Arc<Shared>,
    id: u32,
    ended: bool,
}

impl Respond {
    pub(crate) fn new(shared: Arc<Shared>, id: u32) -> Respond {
        Respond {
            shared,
            id,
            ended: false,
        }
    }

    pub fn stream_id(&self) -> u32 {
        self.id
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
            .send_headers(self.id, Some(status), headers, end)
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
            .send_headers(self.id, None, trailers, true)
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

impl Drop for Respond {
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
    send: Respond,
    /// Received bytes not yet read.
    buf: Bytes,
}

impl Tunnel {
    pub fn new(recv: RecvBody, send: Respond) -> Tunnel {
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
