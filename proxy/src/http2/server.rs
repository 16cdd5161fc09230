//! The server side of an HTTP/2 connection: reads the client's preface and frames, keeps the
//! connection's rules (SETTINGS and their ACK, PING, flow control, stream states and ids,
//! concurrency, GOAWAY) and hands each new request out as an [`Accepted`]: its head, its body
//! and the handle to respond with. Output that the streams queue is written by the same task,
//! in one vectored write per turn.
//!
//! Defences: a client that makes the server reset streams 1,024 times, or resets more than
//! half of its streams before their responses once it has reset 100 (rapid reset,
//! CVE-2023-44487), loses the connection with ENHANCE_YOUR_CALM. The socket is not read while
//! the output queued for it is past a high-water mark, so a client that does not read cannot
//! make the server queue without bound (PING or SETTINGS floods).

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use tokio::net::TcpStream;

use super::conn::{Core, Read};
use super::frame::{self, ErrorCode, Frame, FrameError, Settings, PREFACE};
use super::hpack::DecodeError;
use super::request::{Head, Kind};
use super::shared::{ConnError, Inner};
use super::stream::{RecvBody, SendStream};

const MAX_LOCAL_RESETS: u32 = 1024;
const RAPID_RESETS: u32 = 100;

/// This side's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_header_list: u32,
    /// PING the client every `interval`; close when the PONG takes longer than `timeout`.
    pub keepalive: Option<(Duration, Duration)>,
}

/// A request the client opened.
pub struct Accepted {
    pub head: Parts,
    /// `None` when the HEADERS frame ended the stream.
    pub body: Option<RecvBody>,
    pub respond: SendStream,
}

/// What the connection has for its owner. Not boxed: every request is one, and a box would
/// be an allocation per request where the move is a copy.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Request(Accepted),
    /// The connection is over; `Some` with the code of a connection error this side found.
    Closed(Option<ErrorCode>),
}

pub struct Connection {
    core: Core,
    config: Config,
    preface: bool,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// GOAWAY sent: streams past `last_stream` then are refused.
    goaway_sent: Option<u32>,
    goaway_received: bool,
    local_resets: u32,
    premature_resets: u32,
    streams_opened: u32,
    accepted: VecDeque<Accepted>,
}

impl Connection {
    pub fn new(io: TcpStream, config: Config) -> Connection {
        let mut inner = Inner::new(
            true,
            config.initial_connection_window,
            config.initial_stream_window,
        );
        let ours = Settings {
            max_concurrent_streams: Some(config.max_concurrent_streams),
            initial_window_size: (config.initial_stream_window != 65_535)
                .then_some(config.initial_stream_window),
            max_header_list_size: Some(config.max_header_list),
            ..Settings::default()
        };
        frame::write_settings(inner.out_mut(), &ours);
        inner.open_conn_window();
        // A header block may be as large as the header list it decodes to, plus slack for
        // its encoding.
        let max_block = config.max_header_list as usize + 16 * 1024;
        Connection {
            core: Core::new(io, inner, max_block, config.keepalive),
            config,
            preface: false,
            last_stream: 0,
            goaway_sent: None,
            goaway_received: false,
            local_resets: 0,
            premature_resets: 0,
            streams_opened: 0,
            accepted: VecDeque::new(),
        }
    }

    /// See [`Core::set_driving`].
    pub fn set_driving(&self, driving: bool) -> bool {
        self.core.set_driving(driving)
    }

    /// Sends GOAWAY: streams opened so far finish, later ones are refused; the connection
    /// closes when none is left.
    pub fn graceful_shutdown(&mut self) {
        if self.goaway_sent.is_none() {
            self.goaway_sent = Some(self.last_stream);
            frame::write_goaway(
                self.core.shared.lock().out_mut(),
                self.last_stream,
                ErrorCode::NO_ERROR,
                b"",
            );
        }
    }

    /// Reads and handles frames, writes queued output; ready with the next request or the
    /// connection's end.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            if let Some(a) = self.accepted.pop_front() {
                return Poll::Ready(Event::Request(a));
            }
            if let Some(code) = self.core.failed {
                // Best effort: the GOAWAY goes out if the socket takes it now.
                let _ = self.core.poll_flush(cx);
                return Poll::Ready(Event::Closed(Some(code)));
            }
            // One lock: the output written, the task's waker set, the state read.
            let (flushed, (idle, below_high_water)) = self.core.poll_flush_then(cx, |inner| {
                (
                    inner.open == 0 && inner.output_len() == 0,
                    inner.below_high_water(),
                )
            });
            if let Poll::Ready(Err(e)) = flushed {
                tracing::debug!("downstream h2 write: {e}");
                return Poll::Ready(Event::Closed(None));
            }
            // Done: GOAWAY went both or one way, no stream is open and the output is written
            // (no request is waiting to be taken: the queue was emptied above).
            if idle && (self.goaway_sent.is_some() || self.goaway_received) {
                return Poll::Ready(Event::Closed(None));
            }
            if self.core.poll_keepalive(cx).is_ready() {
                tracing::debug!("downstream h2 connection: no PONG in time, closing");
                return Poll::Ready(Event::Closed(None));
            }
            match self.core.poll_read(cx, below_high_water) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Read::Closed) => return Poll::Ready(Event::Closed(None)),
                Poll::Ready(Read::Bytes) => {
                    if let Err(ConnError(code, why)) = self.on_bytes() {
                        self.core.fail(self.last_stream, code, why);
                    }
                }
            }
        }
    }

    /// Handles every whole frame read.
    fn on_bytes(&mut self) -> Result<(), ConnError> {
        if !self.preface {
            let buf = self.core.read_buffer();
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return Err(ConnError(
                    ErrorCode::PROTOCOL_ERROR,
                    "bad connection preface",
                ));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            let _ = buf.split_to(PREFACE.len());
            self.preface = true;
        }
        while let Some(f) = self.core.next_frame()? {
            match f {
                Ok(f) => self.on_frame(f)?,
                Err(FrameError::Stream(id, code, why)) => {
                    tracing::debug!("downstream h2 stream {id} error {code:?}: {why}");
                    self.local_reset(id, code)?;
                }
                Err(FrameError::Connection(code, why)) => return Err(ConnError(code, why)),
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), ConnError> {
        match f {
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.core.shared.lock().on_data(
                stream,
                data,
                end_stream,
                flow_len,
                self.last_stream,
            ),
            Frame::Headers {
                stream,
                block,
                end_stream,
                ..
            } => self.on_headers(stream, block, end_stream),
            Frame::RstStream { stream, code } => {
                if stream > self.last_stream {
                    return Err(ConnError(
                        ErrorCode::PROTOCOL_ERROR,
                        "RST_STREAM on an idle stream",
                    ));
                }
                if self.core.shared.lock().on_reset(stream, code) {
                    self.premature_resets += 1;
                    if self.premature_resets >= RAPID_RESETS
                        && self.premature_resets * 2 > self.streams_opened
                    {
                        return Err(ConnError(
                            ErrorCode::ENHANCE_YOUR_CALM,
                            "too many streams reset before their responses",
                        ));
                    }
                }
                Ok(())
            }
            Frame::PushPromise { .. } => Err(ConnError(
                ErrorCode::PROTOCOL_ERROR,
                "PUSH_PROMISE from a client",
            )),
            Frame::GoAway { code, .. } => {
                if code != ErrorCode::NO_ERROR {
                    tracing::debug!("downstream h2 client sent GOAWAY {code:?}");
                }
                self.goaway_received = true;
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                if stream > self.last_stream {
                    return Err(ConnError(
                        ErrorCode::PROTOCOL_ERROR,
                        "WINDOW_UPDATE on an idle stream",
                    ));
                }
                self.core.shared.lock().on_window_update(stream, increment)
            }
            // The connection's own frames are handled by `Core`.
            _ => Ok(()),
        }
    }

    /// A stream error found here: the stream is reset; too many and the connection goes.
    fn local_reset(&mut self, id: u32, code: ErrorCode) -> Result<(), ConnError> {
        let mut inner = self.core.shared.lock();
        if inner.contains(id) {
            inner.reset(id, code);
        } else {
            inner.reset_unopened(id, code);
        }
        self.local_resets += 1;
        if self.local_resets > MAX_LOCAL_RESETS {
            return Err(ConnError(
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many stream errors",
            ));
        }
        Ok(())
    }

    fn decode(&mut self, block: &Bytes, trailers: bool) -> Result<Result<Head, ()>, ConnError> {
        let (kind, n) = if trailers {
            (Kind::Trailers, 0)
        } else {
            (Kind::Request, 12)
        };
        let mut head = Head::with_capacity(n);
        match self
            .core
            .decoder
            .decode(block, self.config.max_header_list as usize, |f, known| {
                head.field(f, known, kind)
            }) {
            Ok(()) => Ok(Ok(head)),
            Err(DecodeError::ListTooLarge(_)) => Ok(Err(())),
            Err(e) => {
                tracing::debug!("downstream h2 header block: {e}");
                Err(ConnError(
                    ErrorCode::COMPRESSION_ERROR,
                    "header block cannot be decoded",
                ))
            }
        }
    }

    fn on_headers(&mut self, id: u32, block: Bytes, end: bool) -> Result<(), ConnError> {
        if id.is_multiple_of(2) {
            return Err(ConnError(
                ErrorCode::PROTOCOL_ERROR,
                "client stream with an even id",
            ));
        }
        if id <= self.last_stream {
            // Trailers, or a frame on a stream that is closed.
            let decoded = self.decode(&block, true)?;
            let inner = self.core.shared.lock();
            if !inner.contains(id) {
                if inner.recently_reset(id) {
                    return Ok(());
                }
                return Err(ConnError(
                    ErrorCode::PROTOCOL_ERROR,
                    "HEADERS on a closed stream",
                ));
            }
            drop(inner);
            if !end {
                return self.local_reset(id, ErrorCode::PROTOCOL_ERROR);
            }
            match decoded.map(|h| h.into_trailers()) {
                Ok(Ok(trailers)) => {
                    let mut inner = self.core.shared.lock();
                    if inner.recv_ended(id) {
                        drop(inner);
                        return self.local_reset(id, ErrorCode::STREAM_CLOSED);
                    }
                    inner.on_trailers(id, trailers);
                    Ok(())
                }
                _ => self.local_reset(id, ErrorCode::PROTOCOL_ERROR),
            }
        } else {
            self.last_stream = id;
            let decoded = self.decode(&block, false)?;
            if self.goaway_sent.is_some_and(|last| id > last) {
                // Past the GOAWAY: not processed; the client may retry it elsewhere.
                return Ok(());
            }
            self.streams_opened += 1;
            // Checked in this order: the concurrency limit, the header list's size, the
            // request's form; the request is built before the lock is taken, and one lock
            // covers the limit and the opening.
            let request = decoded.map(|head| {
                head.into_request().map_err(|why| {
                    tracing::debug!("downstream h2 stream {id}: malformed request: {why}")
                })
            });
            let mut inner = self.core.shared.lock();
            if inner.open >= self.config.max_concurrent_streams as usize {
                drop(inner);
                return self.local_reset(id, ErrorCode::REFUSED_STREAM);
            }
            let (parts, content_length) = match request {
                Ok(Ok(p)) => p,
                Err(()) => {
                    // The header list is over the limit: 431, as Envoy answers.
                    inner.open_stream(id, end, None, 1);
                    drop(inner);
                    let mut respond = SendStream::new(self.core.shared.clone(), id);
                    let _ = respond.send_head(
                        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        &http::HeaderMap::new(),
                        true,
                    );
                    return Ok(());
                }
                Ok(Err(())) => {
                    drop(inner);
                    return self.local_reset(id, ErrorCode::PROTOCOL_ERROR);
                }
            };
            if end && content_length.is_some_and(|n| n != 0) {
                drop(inner);
                return self.local_reset(id, ErrorCode::PROTOCOL_ERROR);
            }
            let handles = if end { 1 } else { 2 };
            inner.open_stream(id, end, content_length, handles);
            drop(inner);
            let body = (!end).then(|| RecvBody::new(self.core.shared.clone(), id, content_length));
            self.accepted.push_back(Accepted {
                head: parts,
                body,
                respond: SendStream::new(self.core.shared.clone(), id),
            });
            Ok(())
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.core.shared.lock().close_all();
    }
}
