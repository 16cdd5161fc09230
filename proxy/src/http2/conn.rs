//! What both sides of an HTTP/2 connection do alike (`server.rs` and `client.rs` build on it):
//! reading frames off the socket, writing the queued output in vectored writes, the frames
//! that concern the connection as a whole (SETTINGS and their ACK, PING, WINDOW_UPDATE), the
//! keep-alive PINGs, and ending with GOAWAY on a connection error.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::frame::{self, ErrorCode, Frame, FrameError, Reader};
use super::hpack::Decoder;
use super::shared::{ConnError, Inner, Shared};
use crate::http::wire;

/// PINGs every `interval`; the connection closes when a PONG takes longer than `timeout`.
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    awaiting: bool,
}

pub(crate) struct Core {
    io: TcpStream,
    pub(crate) shared: Arc<Shared>,
    reader: Reader,
    pub(crate) decoder: Decoder,
    rbuf: BytesMut,
    hint: usize,
    /// The peer's SETTINGS came (its first frame must be one).
    settings_seen: bool,
    pub(crate) read_closed: bool,
    /// The last write would block: the socket wakes the task when it takes more.
    write_blocked: bool,
    /// A connection error was queued (GOAWAY): flush, then close.
    pub(crate) failed: Option<ErrorCode>,
    keepalive: Option<Keepalive>,
}

/// What a read brought.
pub(crate) enum Read {
    /// Bytes are in the read buffer: take frames with [`Core::next_frame`].
    Bytes,
    Closed,
}

impl Core {
    pub(crate) fn new(
        io: TcpStream,
        inner: Inner,
        max_header_block: usize,
        keepalive: Option<(Duration, Duration)>,
    ) -> Core {
        Core {
            io,
            shared: Arc::new(Shared::new(inner)),
            reader: Reader::new(frame::DEFAULT_MAX_FRAME_SIZE, max_header_block),
            decoder: Decoder::new(4096),
            rbuf: BytesMut::new(),
            hint: 16 * 1024,
            settings_seen: false,
            read_closed: false,
            write_blocked: false,
            failed: None,
            keepalive: keepalive.map(|(interval, timeout)| Keepalive {
                interval,
                timeout,
                timer: Box::pin(tokio::time::sleep(interval)),
                awaiting: false,
            }),
        }
    }

    /// Marks the owner's turn as running (handles polled in it need not wake the task) or
    /// over. Ending a turn reports whether output was queued since the last flush: then the
    /// turn goes on.
    pub(crate) fn set_driving(&self, driving: bool) -> bool {
        let mut inner = self.shared.lock();
        inner.driving = driving;
        !driving && inner.output_len() > 0 && !self.write_blocked && self.failed.is_none()
    }

    /// Queues GOAWAY with `code` and marks the connection failed.
    pub(crate) fn fail(&mut self, last_stream: u32, code: ErrorCode, why: &'static str) {
        tracing::debug!("h2 connection error {code:?}: {why}");
        frame::write_goaway(
            self.shared.lock().out_mut(),
            last_stream,
            code,
            why.as_bytes(),
        );
        self.failed = Some(code);
    }

    /// Writes the queued output until it is all written or the socket is full (see
    /// [`Core::poll_flush_then`]).
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_then(cx, |_| ()).0
    }

    /// [`Core::poll_flush`], then, under the same lock, registers the task's waker with the
    /// connection and reads its state with `state`: one lock for each turn of a connection's
    /// loop instead of one for each of these steps.
    pub(crate) fn poll_flush_then<R>(
        &mut self,
        cx: &mut Context<'_>,
        state: impl FnOnce(&mut Inner) -> R,
    ) -> (Poll<io::Result<()>>, R) {
        let mut inner = self.shared.lock();
        let flushed = flush(&mut self.io, &mut self.write_blocked, &mut inner, cx);
        inner.set_conn_waker(cx.waker());
        (flushed, state(&mut inner))
    }

    /// Ready once a keep-alive PONG is late.
    pub(crate) fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(k) = self.keepalive.as_mut() else {
            return Poll::Pending;
        };
        while k.timer.as_mut().poll(cx).is_ready() {
            if k.awaiting {
                return Poll::Ready(());
            }
            frame::write_ping(self.shared.lock().out_mut(), false, *b"sluice\0\0");
            k.awaiting = true;
            let next = tokio::time::Instant::now() + k.timeout;
            k.timer.as_mut().reset(next);
        }
        Poll::Pending
    }

    /// Reads from the socket, unless the output is past its high-water mark
    /// (`below_high_water` false, from [`Inner::below_high_water`]: the peer is not reading,
    /// and no more of its frames are taken until it does).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>, below_high_water: bool) -> Poll<Read> {
        if self.read_closed || !below_high_water {
            return Poll::Pending;
        }
        match wire::poll_fill(&mut self.io, &mut self.rbuf, &mut self.hint, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => {
                self.read_closed = true;
                Poll::Ready(Read::Closed)
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Read::Bytes),
            Poll::Ready(Err(e)) => {
                tracing::debug!("h2 read: {e}");
                self.read_closed = true;
                Poll::Ready(Read::Closed)
            }
        }
    }

    /// The read buffer, for a preface check.
    pub(crate) fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// The next whole frame read; frames of the connection as a whole are handled here and
    /// not returned. `Ok(None)` when no whole frame is buffered.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Result<Frame, FrameError>>, ConnError> {
        loop {
            let f = match self.reader.next(&mut self.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if self.rbuf.is_empty() {
                        wire::release(&mut self.rbuf);
                    }
                    return Ok(None);
                }
                Err(FrameError::Connection(code, why)) => return Err(ConnError(code, why)),
                Err(e) => return Ok(Some(Err(e))),
            };
            if !self.settings_seen {
                if !matches!(f, Frame::Settings(_)) {
                    return Err(ConnError(
                        ErrorCode::PROTOCOL_ERROR,
                        "first frame is not SETTINGS",
                    ));
                }
                self.settings_seen = true;
            }
            match f {
                Frame::Priority { .. } | Frame::Unknown { .. } | Frame::SettingsAck => {}
                Frame::Settings(s) => {
                    let mut inner = self.shared.lock();
                    if let Some(size) = s.header_table_size {
                        inner.set_peer_table_size(size);
                    }
                    if let Some(size) = s.max_frame_size {
                        inner.set_peer_max_frame(size);
                    }
                    if let Some(size) = s.initial_window_size {
                        inner.set_peer_initial_window(size)?;
                    }
                    if let Some(n) = s.max_concurrent_streams {
                        inner.set_peer_max_streams(n);
                    }
                    frame::write_settings_ack(inner.out_mut());
                }
                Frame::Ping { ack: true, .. } => {
                    if let Some(k) = self.keepalive.as_mut() {
                        if k.awaiting {
                            k.awaiting = false;
                            let next = tokio::time::Instant::now() + k.interval;
                            k.timer.as_mut().reset(next);
                        }
                    }
                }
                Frame::Ping { ack: false, data } => {
                    frame::write_ping(self.shared.lock().out_mut(), true, data);
                }
                f => return Ok(Some(Ok(f))),
            }
        }
    }
}

/// Writes `inner`'s queued output to `io` until it is all written or the socket is full
/// (`blocked`: it is, and wakes the task when it takes more).
fn flush(
    io: &mut TcpStream,
    blocked: &mut bool,
    inner: &mut Inner,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    *blocked = false;
    loop {
        let queue = inner.pending_output();
        if queue.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut slices = [IoSlice::new(&[]); 64];
        let n = queue.slices(&mut slices);
        let written = match wire::poll_writev(io, cx, &slices[..n]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(w)) => w,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                *blocked = true;
                return Poll::Pending;
            }
        };
        queue.advance(written);
        inner.wrote();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shared.lock().close_all();
    }
}
