//! One HTTP/2 connection's state as its task and its streams' handles share it: every stream's
//! flow-control windows, received data not yet read, whether each side has ended or the stream
//! was reset, and the output (frames queued for the socket, the HPACK encoder). The connection's
//! task (`server.rs`) feeds received frames in and writes the output out; stream handles
//! (`stream.rs`) read bodies and queue responses. Handles polled by the connection's own task
//! do not wake it (it flushes after polling them); handles in other tasks (a tunnel, a request
//! body read by an upstream connection) do.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use super::frame::{self, ErrorCode, MAX_WINDOW};
use super::hpack::Encoder;
use crate::http::wire::Queue;

/// Queued output past which senders wait for the socket to take some.
const HIGH_WATER: usize = 256 * 1024;
/// DATA payloads shorter than this are copied next to their frame head; longer ones go out
/// from their own buffer in the same vectored write.
const COPY_MAX: usize = 1024;

/// What the connection's task and its streams' handles share.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// `Inner`'s own flag (`gone || goaway`), read without the lock: a pool asks before every
    /// request.
    no_new_streams: Arc<AtomicBool>,
}

impl Shared {
    pub(crate) fn new(inner: Inner) -> Shared {
        Shared {
            no_new_streams: inner.no_new_streams.clone(),
            inner: Mutex::new(inner),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection ended or is going away: set by [`Inner::close_all`] and
    /// [`Inner::on_goaway`].
    pub(crate) fn refuses_new_streams(&self) -> bool {
        self.no_new_streams.load(Ordering::Acquire)
    }
}

/// Stream ids hashed by one multiplication: they are the peer's own counters, not chosen to
/// collide, and SipHash cost about 3k instructions per proxied request across the lookups of
/// both connections.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A connection's streams: slots reused from one stream to the next (a new stream is written
/// into a free slot, keeping its receive queue's allocation; nothing moves when a stream comes
/// or goes), found by id through a small map.
#[derive(Default)]
struct Streams {
    index: HashMap<u32, usize, std::hash::BuildHasherDefault<IdHasher>>,
    slots: Vec<Stream>,
    free: Vec<usize>,
}

/// Free slots kept once no stream is open (more were needed only for a burst).
const KEPT_SLOTS: usize = 8;

impl Streams {
    fn get(&self, id: &u32) -> Option<&Stream> {
        self.index.get(id).map(|&i| &self.slots[i])
    }

    fn get_mut(&mut self, id: &u32) -> Option<&mut Stream> {
        self.index.get(id).map(|&i| &mut self.slots[i])
    }

    fn contains_key(&self, id: &u32) -> bool {
        self.index.contains_key(id)
    }

    /// A new stream, in a reset slot.
    fn insert(&mut self, id: u32) -> &mut Stream {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Stream::default());
                self.slots.len() - 1
            }
        };
        self.index.insert(id, i);
        let s = &mut self.slots[i];
        s.live = true;
        s
    }

    fn remove(&mut self, id: &u32) {
        if let Some(i) = self.index.remove(id) {
            self.slots[i].clear();
            self.free.push(i);
            if self.index.is_empty() && self.slots.len() > KEPT_SLOTS {
                self.slots.truncate(KEPT_SLOTS);
                self.free.clear();
                self.free.extend(0..KEPT_SLOTS);
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = &u32> {
        self.index.keys()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.slots.iter_mut().filter(|s| s.live)
    }
}

/// Why a stream handle cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream reset by the peer ({0:?})")]
    Reset(ErrorCode),
    #[error("stream reset ({0:?})")]
    LocalReset(ErrorCode),
    #[error("connection closed")]
    ConnectionGone,
    /// The peer did not process the stream (REFUSED_STREAM, or past its GOAWAY): a request
    /// may be retried.
    #[error("stream refused ({0:?})")]
    Refused(ErrorCode),
}

#[derive(Debug, Default)]
pub(crate) struct Stream {
    // Receiving.
    recv: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// END_STREAM received.
    recv_end: bool,
    recv_waker: Option<Waker>,
    /// What the peer may still send on this stream.
    recv_window: i64,
    /// Read by the handle, not yet given back to the peer.
    recv_unacked: u32,
    /// Nobody reads the body any more: DATA is dropped as it arrives.
    recv_dropped: bool,
    content_length: Option<u64>,
    received: u64,
    // Sending.
    send_window: i64,
    /// END_STREAM queued.
    send_end: bool,
    /// The sending handle: waiting for window, or watching for a reset.
    send_waker: Option<Waker>,
    reset: Option<(ErrorCode, bool)>,
    /// Handles alive (the body reader, the responder).
    handles: u8,
    /// Counted in `open` (not closed yet).
    open: bool,
    /// The slot holds a stream.
    live: bool,
    /// Listed in `Inner::blocked` (waiting for connection window).
    blocked: bool,
    /// Client: the response head, until taken.
    head: Option<(StatusCode, HeaderMap)>,
    head_seen: bool,
    /// Client: past the peer's GOAWAY, never processed.
    refused: bool,
}

impl Stream {
    /// Back to a free slot's state; the receive queue keeps its allocation.
    fn clear(&mut self) {
        let mut recv = std::mem::take(&mut self.recv);
        recv.clear();
        *self = Stream {
            recv,
            ..Stream::default()
        };
    }

    fn closed(&self) -> bool {
        self.reset.is_some() || (self.recv_end && self.send_end)
    }

    fn wake(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }

    fn err(&self) -> Option<StreamError> {
        self.reset.map(|(code, by_peer)| {
            if by_peer && (code == ErrorCode::REFUSED_STREAM || self.refused) {
                StreamError::Refused(code)
            } else if by_peer {
                StreamError::Reset(code)
            } else {
                StreamError::LocalReset(code)
            }
        })
    }
}

/// A frame the connection must answer with a connection error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnError(pub ErrorCode, pub &'static str);

/// The pseudo-header fields of a header block sent.
pub(crate) enum Pseudo<'a> {
    Response(StatusCode),
    Request(&'a http::request::Parts),
    /// Trailers.
    None,
}

pub(crate) struct Inner {
    /// Which side of the connection this is.
    is_server: bool,
    streams: Streams,
    /// Client: the next stream id, the peer's SETTINGS_MAX_CONCURRENT_STREAMS, requests
    /// waiting for a stream, and GOAWAY received (no new streams).
    next_id: u32,
    peer_max_streams: usize,
    open_waiters: Vec<Waker>,
    pub(crate) goaway: bool,
    /// Client: the connection's handle was dropped (the connection ends once no stream is
    /// open).
    pub(crate) handle_gone: bool,
    /// Frame heads, control frames and short payloads not yet in `queue`.
    out: BytesMut,
    queue: Queue,
    encoder: Encoder,
    /// The connection's send window.
    send_window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// What the peer may still send on the connection, and what was read but not given back.
    recv_window: i64,
    recv_unacked: u32,
    /// This side's connection and stream windows (WINDOW_UPDATEs go out at half).
    conn_window: u32,
    stream_window: u32,
    /// Streams waiting for connection window.
    blocked: Vec<u32>,
    /// Senders waiting for the output to drain.
    flush_waiters: Vec<Waker>,
    conn_waker: Option<Waker>,
    /// The connection's task is running: it flushes before it sleeps, so no wake-up needed.
    pub(crate) driving: bool,
    /// The connection is closed: every handle fails.
    pub(crate) gone: bool,
    /// Set with `gone` and `goaway`, shared with [`Shared`] for reading without the lock.
    no_new_streams: Arc<AtomicBool>,
    /// Streams not closed.
    pub(crate) open: usize,
    /// The latest streams this side reset: frames the peer sent before it saw the reset are
    /// ignored (RFC 9113 §5.1), not taken for protocol errors.
    recent_resets: VecDeque<u32>,
}

/// How many reset streams [`Inner::recently_reset`] remembers.
const RECENT_RESETS: usize = 128;

impl Inner {
    pub(crate) fn new(is_server: bool, conn_window: u32, stream_window: u32) -> Inner {
        Inner {
            is_server,
            streams: Streams::default(),
            next_id: 1,
            peer_max_streams: usize::MAX,
            open_waiters: Vec::new(),
            goaway: false,
            handle_gone: false,
            out: BytesMut::new(),
            queue: Queue::default(),
            encoder: Encoder::new(),
            send_window: 65_535,
            peer_initial_window: 65_535,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            recv_window: 65_535,
            recv_unacked: 0,
            conn_window,
            stream_window,
            blocked: Vec::new(),
            flush_waiters: Vec::new(),
            conn_waker: None,
            driving: false,
            gone: false,
            no_new_streams: Arc::default(),
            open: 0,
            recent_resets: VecDeque::new(),
        }
    }

    /// Wakes the connection's task if it is not the one running.
    fn notify(&mut self) {
        if !self.driving {
            if let Some(w) = &self.conn_waker {
                w.wake_by_ref();
            }
        }
    }

    pub(crate) fn set_conn_waker(&mut self, w: &Waker) {
        match &self.conn_waker {
            Some(old) if old.will_wake(w) => {}
            _ => self.conn_waker = Some(w.clone()),
        }
    }

    pub(crate) fn out_mut(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// The output to write, and how much of it there is.
    pub(crate) fn pending_output(&mut self) -> &mut Queue {
        if !self.out.is_empty() {
            let b = self.out.split().freeze();
            self.queue.push(b);
        }
        &mut self.queue
    }

    pub(crate) fn output_len(&self) -> usize {
        self.queue.len() + self.out.len()
    }

    /// After a write: senders waiting for room go on.
    pub(crate) fn wrote(&mut self) {
        if self.output_len() < HIGH_WATER {
            for w in self.flush_waiters.drain(..) {
                w.wake();
            }
        }
    }

    pub(crate) fn below_high_water(&self) -> bool {
        self.output_len() < HIGH_WATER
    }

    // ---- Streams coming and going (the connection's task).

    /// A new stream from the peer's HEADERS.
    pub(crate) fn open_stream(
        &mut self,
        id: u32,
        recv_end: bool,
        content_length: Option<u64>,
        handles: u8,
    ) {
        let (recv_window, send_window) = (i64::from(self.stream_window), self.peer_initial_window);
        let s = self.streams.insert(id);
        s.recv_end = recv_end;
        s.handles = handles;
        s.recv_window = recv_window;
        s.send_window = send_window;
        s.content_length = content_length;
        s.open = true;
        self.open += 1;
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.streams.contains_key(&id)
    }

    /// Counts a closed stream out of `open`, and forgets it once no handle is left. Data a
    /// reset stream still held, or a forgotten one, is given back to the connection's window.
    fn settle(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let mut give_back = 0;
        if s.open && s.closed() {
            s.open = false;
            self.open -= 1;
            for w in self.open_waiters.drain(..) {
                w.wake();
            }
            if s.reset.is_some() {
                give_back += s.recv.drain(..).map(|b| b.len() as u32).sum::<u32>();
            }
        }
        if !s.open && s.handles == 0 {
            give_back += s.recv.iter().map(|b| b.len() as u32).sum::<u32>();
            self.streams.remove(&id);
        }
        if give_back > 0 {
            self.release_conn(give_back);
        }
    }

    pub(crate) fn drop_handle(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.handles = s.handles.saturating_sub(1);
        }
        self.settle(id);
    }

    /// The connection ended: every handle fails from now on.
    pub(crate) fn close_all(&mut self) {
        self.gone = true;
        self.no_new_streams.store(true, Ordering::Release);
        for s in self.streams.values_mut() {
            s.wake();
        }
        for w in self
            .flush_waiters
            .drain(..)
            .chain(self.open_waiters.drain(..))
        {
            w.wake();
        }
    }

    // ---- Frames received (the connection's task).

    /// A DATA frame. `Err` is a connection error; a stream error resets the stream here.
    pub(crate) fn on_data(
        &mut self,
        id: u32,
        data: Bytes,
        end: bool,
        flow_len: u32,
        last_stream: u32,
    ) -> Result<(), ConnError> {
        if i64::from(flow_len) > self.recv_window {
            return Err(ConnError(
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA past the connection window",
            ));
        }
        self.recv_window -= i64::from(flow_len);
        let Some(s) = self.streams.get_mut(&id) else {
            if id > last_stream {
                return Err(ConnError(
                    ErrorCode::PROTOCOL_ERROR,
                    "DATA on an idle stream",
                ));
            }
            // A stream closed (and forgotten) already: its window is the connection's again.
            self.release_conn(flow_len);
            if !self.recently_reset(id) {
                frame::write_rst_stream(&mut self.out, id, ErrorCode::STREAM_CLOSED);
            }
            return Ok(());
        };
        if s.recv_end || s.reset.is_some() {
            let was_reset = s.reset.is_some();
            self.release_conn(flow_len);
            if !was_reset {
                self.reset(id, ErrorCode::STREAM_CLOSED);
            }
            return Ok(());
        }
        if i64::from(flow_len) > s.recv_window {
            self.release_conn(flow_len);
            self.reset(id, ErrorCode::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.recv_window -= i64::from(flow_len);
        s.received += data.len() as u64;
        let bad_length = s
            .content_length
            .is_some_and(|cl| s.received > cl || (end && s.received != cl));
        if bad_length {
            self.release_conn(flow_len);
            self.reset(id, ErrorCode::PROTOCOL_ERROR);
            return Ok(());
        }
        // Padding is given back at once; the data once read.
        let padding = flow_len - data.len() as u32;
        let keep = !s.recv_dropped && !data.is_empty();
        if keep {
            s.recv.push_back(data);
        }
        if end {
            s.recv_end = true;
        }
        if keep || end {
            if let Some(w) = s.recv_waker.take() {
                w.wake();
            }
        }
        let given_back = if keep { padding } else { flow_len };
        if given_back > 0 {
            self.release(id, given_back);
        }
        if end {
            self.settle(id);
        }
        Ok(())
    }

    /// Trailers (a HEADERS frame that ends the stream after its head).
    pub(crate) fn on_trailers(&mut self, id: u32, trailers: HeaderMap) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if let Some(cl) = s.content_length {
            if s.received != cl {
                self.reset(id, ErrorCode::PROTOCOL_ERROR);
                return;
            }
        }
        s.recv_end = true;
        if !s.recv_dropped {
            s.trailers = Some(trailers);
        }
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        self.settle(id);
    }

    /// The peer's RST_STREAM. Returns whether the stream was still in flight (not responded).
    pub(crate) fn on_reset(&mut self, id: u32, code: ErrorCode) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return false;
        };
        if s.reset.is_some() {
            return false;
        }
        let premature = !s.send_end;
        s.reset = Some((code, true));
        s.wake();
        self.settle(id);
        premature
    }

    pub(crate) fn on_window_update(&mut self, id: u32, inc: u32) -> Result<(), ConnError> {
        if id == 0 {
            self.send_window += i64::from(inc);
            if self.send_window > i64::from(MAX_WINDOW) {
                return Err(ConnError(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "connection window past 2^31-1",
                ));
            }
            for id in std::mem::take(&mut self.blocked) {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.blocked = false;
                    if let Some(w) = s.send_waker.take() {
                        w.wake();
                    }
                }
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        s.send_window += i64::from(inc);
        if s.send_window > i64::from(MAX_WINDOW) {
            self.reset(id, ErrorCode::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if let Some(w) = s.send_waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE changed: every stream's window moves by the
    /// difference (RFC 9113 §6.9.2), possibly below zero.
    pub(crate) fn set_peer_initial_window(&mut self, size: u32) -> Result<(), ConnError> {
        let delta = i64::from(size) - self.peer_initial_window;
        self.peer_initial_window = i64::from(size);
        for s in self.streams.values_mut() {
            s.send_window += delta;
            if s.send_window > i64::from(MAX_WINDOW) {
                return Err(ConnError(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "SETTINGS_INITIAL_WINDOW_SIZE takes a window past 2^31-1",
                ));
            }
            if delta > 0 {
                if let Some(w) = s.send_waker.take() {
                    w.wake();
                }
            }
        }
        Ok(())
    }

    pub(crate) fn set_peer_max_frame(&mut self, size: u32) {
        self.peer_max_frame = size as usize;
    }

    pub(crate) fn set_peer_table_size(&mut self, size: u32) {
        self.encoder.set_max_size(size as usize);
    }

    /// This side's connection window grows from the default 65,535 to its configured size.
    pub(crate) fn open_conn_window(&mut self) {
        let inc = i64::from(self.conn_window) - 65_535;
        if inc > 0 {
            self.recv_window += inc;
            frame::write_window_update(&mut self.out, 0, inc as u32);
        }
    }

    // ---- Flow control given back.

    /// `n` bytes of stream `id` were read (or dropped): give them back to the peer, in a
    /// WINDOW_UPDATE once half a window is due.
    pub(crate) fn release(&mut self, id: u32, n: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.recv_end && s.reset.is_none() {
                s.recv_unacked += n;
                if s.recv_unacked >= self.stream_window / 2 {
                    let inc = std::mem::take(&mut s.recv_unacked);
                    s.recv_window += i64::from(inc);
                    frame::write_window_update(&mut self.out, id, inc);
                    self.notify();
                }
            }
        }
        self.release_conn(n);
    }

    fn release_conn(&mut self, n: u32) {
        self.recv_unacked += n;
        if self.recv_unacked >= self.conn_window / 2 {
            let inc = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(inc);
            frame::write_window_update(&mut self.out, 0, inc);
            self.notify();
        }
    }

    // ---- Reading a body (stream handles).

    /// The next piece of a stream's body: `Some(Ok(data))`, then `None` at its end (trailers,
    /// if any, are taken with [`Inner::take_trailers`]).
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
    ) -> Poll<Option<Result<Bytes, StreamError>>> {
        let gone = self.gone;
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Some(Err(StreamError::ConnectionGone)));
        };
        if let Some(e) = s.err() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(data) = s.recv.pop_front() {
            let n = data.len() as u32;
            self.release(id, n);
            return Poll::Ready(Some(Ok(data)));
        }
        if s.recv_end {
            return Poll::Ready(None);
        }
        if gone {
            return Poll::Ready(Some(Err(StreamError::ConnectionGone)));
        }
        match &s.recv_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.recv_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(crate) fn take_trailers(&mut self, id: u32) -> Option<HeaderMap> {
        self.streams.get_mut(&id)?.trailers.take()
    }

    pub(crate) fn recv_ended(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(|s| {
            s.recv_end && s.recv.is_empty() && s.trailers.is_none() || s.reset.is_some()
        })
    }

    /// The body reader is gone: what it did not read is given back, later DATA is dropped.
    pub(crate) fn drop_reader(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !self.is_server && !s.recv_end {
                // A response nobody reads: the server may stop sending it.
                self.reset(id, ErrorCode::CANCEL);
                self.drop_handle(id);
                return;
            }
            s.recv_dropped = true;
            s.trailers = None;
            let held: usize = s.recv.drain(..).map(|b| b.len()).sum();
            if held > 0 {
                self.release(id, held as u32);
            }
        }
        self.drop_handle(id);
    }

    // ---- Sending (stream handles).

    /// Ready with the stream's error once it is reset (or the connection gone).
    pub(crate) fn poll_reset(&mut self, cx: &mut Context<'_>, id: u32) -> Poll<StreamError> {
        let gone = self.gone;
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(StreamError::ConnectionGone);
        };
        if let Some(e) = s.err() {
            return Poll::Ready(e);
        }
        if gone {
            return Poll::Ready(StreamError::ConnectionGone);
        }
        match &s.send_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.send_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn check_send(&self, id: u32) -> Result<(), StreamError> {
        if self.gone {
            return Err(StreamError::ConnectionGone);
        }
        match self.streams.get(&id) {
            None => Err(StreamError::ConnectionGone),
            Some(s) => match s.err() {
                Some(e) => Err(e),
                None if s.send_end => Err(StreamError::LocalReset(ErrorCode::STREAM_CLOSED)),
                None => Ok(()),
            },
        }
    }

    /// Queues a HEADERS frame (and CONTINUATIONs): a response head when `status` is given,
    /// trailers otherwise.
    pub(crate) fn send_headers(
        &mut self,
        id: u32,
        pseudo: Pseudo<'_>,
        headers: &HeaderMap,
        end: bool,
    ) -> Result<(), StreamError> {
        self.check_send(id)?;
        self.write_headers(id, pseudo, headers, end);
        Ok(())
    }

    fn write_headers(&mut self, id: u32, pseudo: Pseudo<'_>, headers: &HeaderMap, end: bool) {
        // The block is encoded right after a frame head reserved for it; a block too large
        // for one frame is moved into HEADERS + CONTINUATIONs.
        let start = self.out.len();
        self.out.put_slice(&[0; 9]);
        let block_start = self.out.len();
        self.encoder.begin(&mut self.out);
        match pseudo {
            Pseudo::Response(status) => {
                self.encoder
                    .field(b":status", status.as_str().as_bytes(), false, &mut self.out);
            }
            Pseudo::Request(p) => {
                let e = &mut self.encoder;
                e.field(
                    b":method",
                    p.method.as_str().as_bytes(),
                    false,
                    &mut self.out,
                );
                if p.method != http::Method::CONNECT {
                    let scheme = p.uri.scheme_str().unwrap_or("http");
                    e.field(b":scheme", scheme.as_bytes(), false, &mut self.out);
                }
                if let Some(a) = p.uri.authority() {
                    e.field(b":authority", a.as_str().as_bytes(), false, &mut self.out);
                }
                if p.method != http::Method::CONNECT {
                    let path = p.uri.path_and_query().map_or("/", |pq| pq.as_str());
                    e.field(b":path", path.as_bytes(), false, &mut self.out);
                }
            }
            Pseudo::None => {}
        }
        for (name, value) in headers {
            self.encoder.field(
                name.as_str().as_bytes(),
                value.as_bytes(),
                value.is_sensitive(),
                &mut self.out,
            );
        }
        let len = self.out.len() - block_start;
        if len <= self.peer_max_frame {
            let mut flags = frame::flag::END_HEADERS;
            if end {
                flags |= frame::flag::END_STREAM;
            }
            let head = &mut self.out[start..block_start];
            head[..3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
            head[3] = frame::kind::HEADERS;
            head[4] = flags;
            head[5..9].copy_from_slice(&id.to_be_bytes());
        } else {
            let block = self.out.split_off(block_start);
            self.out.truncate(start);
            frame::write_headers(&mut self.out, id, &block, end, self.peer_max_frame as u32);
        }
        if end {
            self.end_sent(id);
        }
        self.notify();
    }

    fn end_sent(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_end = true;
            // A response complete before its request: the peer need not send the rest
            // (RFC 9113 §8.1).
            if self.is_server && !s.recv_end && s.reset.is_none() {
                self.reset(id, ErrorCode::NO_ERROR);
                return;
            }
        }
        self.settle(id);
    }

    /// Sends as much of `data` as the windows allow (all of it, then `Ready`); `end` sets
    /// END_STREAM on the last frame.
    pub(crate) fn poll_send_data(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        data: &mut Bytes,
        end: bool,
    ) -> Poll<Result<(), StreamError>> {
        self.check_send(id)?;
        loop {
            if data.is_empty() {
                if end {
                    frame::write_data_head(&mut self.out, id, 0, true);
                    self.end_sent(id);
                    self.notify();
                }
                return Poll::Ready(Ok(()));
            }
            if self.output_len() >= HIGH_WATER {
                if !self.flush_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    self.flush_waiters.push(cx.waker().clone());
                }
                self.notify();
                return Poll::Pending;
            }
            let s = self.streams.get_mut(&id).expect("checked above");
            let window = s.send_window.min(self.send_window);
            if window <= 0 {
                s.send_waker = Some(cx.waker().clone());
                // Waiting on the connection's window: listed once, however often polled.
                if s.send_window > 0 && !s.blocked {
                    s.blocked = true;
                    self.blocked.push(id);
                }
                self.notify();
                return Poll::Pending;
            }
            let n = data.len().min(window as usize).min(self.peer_max_frame);
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            let chunk = data.split_to(n);
            let last = end && data.is_empty();
            frame::write_data_head(&mut self.out, id, n, last);
            if n <= COPY_MAX {
                self.out.put_slice(&chunk);
            } else {
                let head = self.out.split().freeze();
                self.queue.push(head);
                self.queue.push(chunk);
            }
            if last {
                self.end_sent(id);
                self.notify();
                return Poll::Ready(Ok(()));
            }
            if data.is_empty() {
                self.notify();
                return Poll::Ready(Ok(()));
            }
        }
    }

    // ---- Client.

    /// Opens a stream for a request and queues its head, once the peer's concurrency limit
    /// allows. Fails (without sending) when the connection is gone or going away.
    pub(crate) fn poll_open_request(
        &mut self,
        cx: &mut Context<'_>,
        head: &http::request::Parts,
        end: bool,
    ) -> Poll<Result<u32, StreamError>> {
        if self.gone || self.goaway || self.next_id > MAX_WINDOW {
            return Poll::Ready(Err(StreamError::ConnectionGone));
        }
        if self.open >= self.peer_max_streams {
            self.open_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let id = self.next_id;
        self.next_id += 2;
        self.open_stream(id, false, None, if end { 1 } else { 2 });
        self.write_headers(id, Pseudo::Request(head), &head.headers, end);
        Poll::Ready(Ok(id))
    }

    /// The connection's handle is gone: its task looks at whether it can end.
    pub(crate) fn connection_handle_dropped(&mut self) {
        self.handle_gone = true;
        if let Some(w) = &self.conn_waker {
            w.wake_by_ref();
        }
    }

    /// The highest stream id opened so far (client).
    pub(crate) fn last_opened(&self) -> u32 {
        self.next_id.saturating_sub(2)
    }

    pub(crate) fn set_peer_max_streams(&mut self, n: u32) {
        self.peer_max_streams = n as usize;
        for w in self.open_waiters.drain(..) {
            w.wake();
        }
    }

    /// Whether a HEADERS frame for `id` is a response head (none came yet).
    pub(crate) fn awaits_head(&self, id: u32) -> Option<bool> {
        self.streams.get(&id).map(|s| !s.head_seen)
    }

    pub(crate) fn on_response_head(
        &mut self,
        id: u32,
        status: StatusCode,
        headers: HeaderMap,
        end: bool,
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        s.head_seen = true;
        s.head = Some((status, headers));
        if end {
            s.recv_end = true;
        }
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        if end {
            self.settle(id);
        }
    }

    /// The peer's GOAWAY: no new streams; those past `last` were not processed.
    pub(crate) fn on_goaway(&mut self, last: u32) {
        self.goaway = true;
        self.no_new_streams.store(true, Ordering::Release);
        let past: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last)
            .collect();
        for id in past {
            if let Some(s) = self.streams.get_mut(&id) {
                if s.reset.is_none() {
                    s.refused = true;
                    s.reset = Some((ErrorCode::REFUSED_STREAM, true));
                    s.wake();
                    self.settle(id);
                }
            }
        }
        for w in self.open_waiters.drain(..) {
            w.wake();
        }
    }

    /// The response head, once it came.
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
    ) -> Poll<Result<(StatusCode, HeaderMap, bool), StreamError>> {
        let gone = self.gone;
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(StreamError::ConnectionGone));
        };
        if let Some((status, headers)) = s.head.take() {
            let end = s.recv_end && s.recv.is_empty() && s.trailers.is_none();
            return Poll::Ready(Ok((status, headers, end)));
        }
        if let Some(e) = s.err() {
            return Poll::Ready(Err(e));
        }
        if gone {
            return Poll::Ready(Err(StreamError::ConnectionGone));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Resets a stream that was never opened (refused, or its request malformed).
    pub(crate) fn reset_unopened(&mut self, id: u32, code: ErrorCode) {
        self.remember_reset(id);
        frame::write_rst_stream(&mut self.out, id, code);
    }

    fn remember_reset(&mut self, id: u32) {
        if self.recent_resets.len() == RECENT_RESETS {
            self.recent_resets.pop_front();
        }
        self.recent_resets.push_back(id);
    }

    pub(crate) fn recently_reset(&self, id: u32) -> bool {
        self.recent_resets.contains(&id)
    }

    /// This side ended the connection with `code` (its GOAWAY is queued): streams still open
    /// fail with it, as if each were reset from this side, rather than as a connection that
    /// merely went away.
    pub(crate) fn fail_open_streams(&mut self, code: ErrorCode) {
        for s in self.streams.values_mut() {
            if s.reset.is_none() && !(s.send_end && s.recv_end) {
                s.reset = Some((code, false));
                s.wake();
            }
        }
    }

    /// Resets a stream from this side.
    pub(crate) fn reset(&mut self, id: u32, code: ErrorCode) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.reset.is_some() || (s.send_end && s.recv_end) {
                return;
            }
            s.reset = Some((code, false));
            s.wake();
            self.remember_reset(id);
            frame::write_rst_stream(&mut self.out, id, code);
            self.notify();
            self.settle(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream waiting for connection window is listed once however often it is polled (a
    /// peer sending 1-byte stream WINDOW_UPDATEs would otherwise grow the list without end),
    /// and goes on when the connection's window opens.
    #[test]
    fn a_stream_blocked_on_the_connection_window_is_listed_once() {
        let mut inner = Inner::new(true, 1 << 20, 1 << 20);
        inner.open_stream(1, true, None, 1);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        // 65,535 bytes go out, the connection's whole initial window.
        let mut data = Bytes::from(vec![0u8; 70_000]);
        assert!(inner
            .poll_send_data(&mut cx, 1, &mut data, true)
            .is_pending());
        assert_eq!(data.len(), 70_000 - 65_535);
        for _ in 0..100 {
            inner.on_window_update(1, 1).unwrap();
            assert!(inner
                .poll_send_data(&mut cx, 1, &mut data, true)
                .is_pending());
        }
        assert_eq!(inner.blocked.len(), 1);
        inner.on_window_update(0, 10_000).unwrap();
        assert!(inner.blocked.is_empty());
        inner.on_window_update(1, 10_000).unwrap();
        assert!(inner.poll_send_data(&mut cx, 1, &mut data, true).is_ready());
        assert!(data.is_empty());
    }
}
