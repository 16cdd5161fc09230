//! HTTP/2 frames (RFC 9113 §4 and §6): [`Reader`] takes whole frames off a read buffer without
//! copying payloads, checks what the frame layer can check (sizes, stream-id rules, padding,
//! SETTINGS values) and hands a header block over only once its CONTINUATION frames are all in;
//! the `write_*` functions append frames to an output buffer, a header block split into
//! CONTINUATIONs as the peer's frame size requires.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a client sends first (RFC 9113 §3.4), before its SETTINGS.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The frame size every endpoint accepts until told otherwise.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed.
pub const MAX_MAX_FRAME_SIZE: u32 = 16_777_215;
/// The largest window (and window increment).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

const HEAD: usize = 9;

pub(crate) mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

pub(crate) mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// An error code (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);
}

/// A stream's priority as HEADERS or PRIORITY frames carry it (deprecated by RFC 9113, still
/// parsed: a stream may not depend on itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub dependency: u32,
    pub exclusive: bool,
    pub weight: u8,
}

/// SETTINGS parameters (RFC 9113 §6.5.2); `None` for those the frame did not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    /// RFC 8441's SETTINGS_ENABLE_CONNECT_PROTOCOL.
    pub enable_connect_protocol: Option<bool>,
}

/// One frame read, or a header block with its CONTINUATIONs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
        /// The frame's whole payload, padding included: what it takes from the flow-control
        /// windows.
        flow_len: u32,
    },
    Headers {
        stream: u32,
        block: Bytes,
        end_stream: bool,
        priority: Option<Priority>,
    },
    Priority {
        stream: u32,
        priority: Priority,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    Settings(Settings),
    SettingsAck,
    PushPromise {
        stream: u32,
        promised: u32,
        block: Bytes,
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
        debug: Bytes,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    /// A frame of a type this codec does not know: ignored, as RFC 9113 §4.1 requires.
    Unknown {
        kind: u8,
    },
}

/// A frame that breaks the protocol: the whole connection, or only one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("connection error {0:?}: {1}")]
    Connection(ErrorCode, &'static str),
    #[error("stream {0} error {1:?}: {2}")]
    Stream(u32, ErrorCode, &'static str),
}

use FrameError::{Connection, Stream};

/// A header block whose CONTINUATIONs are still due.
#[derive(Debug)]
struct Partial {
    stream: u32,
    promised: Option<u32>,
    block: BytesMut,
    end_stream: bool,
    priority: Option<Priority>,
}

/// Reads frames off a connection's read buffer.
#[derive(Debug)]
pub struct Reader {
    /// SETTINGS_MAX_FRAME_SIZE as this side announced it.
    max_frame_size: u32,
    /// The most bytes of one header block (HEADERS and its CONTINUATIONs) accepted: a peer that
    /// sends endless CONTINUATIONs loses the connection instead of filling memory.
    max_header_block: usize,
    partial: Option<Partial>,
}

impl Reader {
    pub fn new(max_frame_size: u32, max_header_block: usize) -> Reader {
        Reader {
            max_frame_size,
            max_header_block,
            partial: None,
        }
    }

    /// A new SETTINGS_MAX_FRAME_SIZE of this side, once the peer acknowledged it.
    pub fn set_max_frame_size(&mut self, size: u32) {
        self.max_frame_size = size;
    }

    /// The next frame, taken off the front of `buf`; `None` until `buf` holds a whole one.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if buf.len() < HEAD {
                return Ok(None);
            }
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & MAX_WINDOW;
            if len > self.max_frame_size {
                return Err(Connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if buf.len() < HEAD + len as usize {
                buf.reserve(HEAD + len as usize - buf.len());
                return Ok(None);
            }
            let mut payload = buf.split_to(HEAD + len as usize).freeze();
            payload.advance(HEAD);
            if let Some(p) = &mut self.partial {
                if kind != kind::CONTINUATION || stream != p.stream {
                    return Err(Connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "header block interrupted before END_HEADERS",
                    ));
                }
                if p.block.len() + payload.len() > self.max_header_block {
                    return Err(Connection(
                        ErrorCode::ENHANCE_YOUR_CALM,
                        "header block too large",
                    ));
                }
                p.block.extend_from_slice(&payload);
                if flags & flag::END_HEADERS == 0 {
                    continue;
                }
                let p = self.partial.take().expect("checked above");
                return Ok(Some(p.finish()));
            }
            match self.frame(kind, flags, stream, payload)? {
                Some(f) => return Ok(Some(f)),
                None => continue,
            }
        }
    }

    /// One frame's payload; `None` when it starts a header block that continues.
    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: Bytes,
    ) -> Result<Option<Frame>, FrameError> {
        let len = payload.len();
        let f = match kind {
            kind::DATA => {
                on_stream(stream, "DATA")?;
                unpad(flags, &mut payload)?;
                Frame::Data {
                    stream,
                    data: payload,
                    end_stream: flags & flag::END_STREAM != 0,
                    flow_len: len as u32,
                }
            }
            kind::HEADERS => {
                on_stream(stream, "HEADERS")?;
                unpad(flags, &mut payload)?;
                let priority = if flags & flag::PRIORITY != 0 {
                    if payload.len() < 5 {
                        return Err(Connection(
                            ErrorCode::FRAME_SIZE_ERROR,
                            "HEADERS too short for its priority",
                        ));
                    }
                    let p = priority(stream, &payload[..5])?;
                    payload.advance(5);
                    Some(p)
                } else {
                    None
                };
                let partial = Partial {
                    stream,
                    promised: None,
                    block: BytesMut::new(),
                    end_stream: flags & flag::END_STREAM != 0,
                    priority,
                };
                return self.header_block(flags, partial, payload);
            }
            kind::PRIORITY => {
                on_stream(stream, "PRIORITY")?;
                if len != 5 {
                    return Err(Stream(
                        stream,
                        ErrorCode::FRAME_SIZE_ERROR,
                        "PRIORITY is not 5 bytes",
                    ));
                }
                Frame::Priority {
                    stream,
                    priority: priority(stream, &payload)?,
                }
            }
            kind::RST_STREAM => {
                on_stream(stream, "RST_STREAM")?;
                if len != 4 {
                    return Err(Connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "RST_STREAM is not 4 bytes",
                    ));
                }
                Frame::RstStream {
                    stream,
                    code: ErrorCode(payload.get_u32()),
                }
            }
            kind::SETTINGS => {
                on_connection(stream, "SETTINGS")?;
                if flags & flag::ACK != 0 {
                    if len != 0 {
                        return Err(Connection(
                            ErrorCode::FRAME_SIZE_ERROR,
                            "SETTINGS ack with a payload",
                        ));
                    }
                    Frame::SettingsAck
                } else {
                    Frame::Settings(settings(&payload)?)
                }
            }
            kind::PUSH_PROMISE => {
                on_stream(stream, "PUSH_PROMISE")?;
                unpad(flags, &mut payload)?;
                if payload.len() < 4 {
                    return Err(Connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "PUSH_PROMISE too short",
                    ));
                }
                let promised = payload.get_u32() & MAX_WINDOW;
                let partial = Partial {
                    stream,
                    promised: Some(promised),
                    block: BytesMut::new(),
                    end_stream: false,
                    priority: None,
                };
                return self.header_block(flags, partial, payload);
            }
            kind::PING => {
                on_connection(stream, "PING")?;
                if len != 8 {
                    return Err(Connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "PING is not 8 bytes",
                    ));
                }
                let mut data = [0u8; 8];
                data.copy_from_slice(&payload);
                Frame::Ping {
                    ack: flags & flag::ACK != 0,
                    data,
                }
            }
            kind::GOAWAY => {
                on_connection(stream, "GOAWAY")?;
                if len < 8 {
                    return Err(Connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "GOAWAY shorter than 8 bytes",
                    ));
                }
                let last_stream = payload.get_u32() & MAX_WINDOW;
                let code = ErrorCode(payload.get_u32());
                Frame::GoAway {
                    last_stream,
                    code,
                    debug: payload,
                }
            }
            kind::WINDOW_UPDATE => {
                if len != 4 {
                    return Err(Connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "WINDOW_UPDATE is not 4 bytes",
                    ));
                }
                let increment = payload.get_u32() & MAX_WINDOW;
                if increment == 0 {
                    let why = "WINDOW_UPDATE of 0";
                    return Err(if stream == 0 {
                        Connection(ErrorCode::PROTOCOL_ERROR, why)
                    } else {
                        Stream(stream, ErrorCode::PROTOCOL_ERROR, why)
                    });
                }
                Frame::WindowUpdate { stream, increment }
            }
            kind::CONTINUATION => {
                return Err(Connection(
                    ErrorCode::PROTOCOL_ERROR,
                    "CONTINUATION without a header block to continue",
                ))
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some(f))
    }

    /// A header block's first fragment: the frame if it is complete (END_HEADERS), else the
    /// block waits for its CONTINUATIONs.
    fn header_block(
        &mut self,
        flags: u8,
        mut partial: Partial,
        fragment: Bytes,
    ) -> Result<Option<Frame>, FrameError> {
        if flags & flag::END_HEADERS != 0 {
            // The common case: one frame, no copy.
            return Ok(Some(partial.frame(fragment)));
        }
        if fragment.len() > self.max_header_block {
            return Err(Connection(
                ErrorCode::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        partial.block.extend_from_slice(&fragment);
        self.partial = Some(partial);
        Ok(None)
    }
}

impl Partial {
    fn finish(mut self) -> Frame {
        let block = std::mem::take(&mut self.block).freeze();
        self.frame(block)
    }

    fn frame(self, block: Bytes) -> Frame {
        match self.promised {
            Some(promised) => Frame::PushPromise {
                stream: self.stream,
                promised,
                block,
            },
            None => Frame::Headers {
                stream: self.stream,
                block,
                end_stream: self.end_stream,
                priority: self.priority,
            },
        }
    }
}

fn on_stream(stream: u32, what: &'static str) -> Result<(), FrameError> {
    if stream == 0 {
        return Err(Connection(ErrorCode::PROTOCOL_ERROR, what));
    }
    Ok(())
}

fn on_connection(stream: u32, what: &'static str) -> Result<(), FrameError> {
    if stream != 0 {
        return Err(Connection(ErrorCode::PROTOCOL_ERROR, what));
    }
    Ok(())
}

/// Removes the padding of a PADDED frame (RFC 9113 §6.1).
fn unpad(flags: u8, payload: &mut Bytes) -> Result<(), FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(());
    }
    let Some(&pad) = payload.first() else {
        return Err(Connection(
            ErrorCode::FRAME_SIZE_ERROR,
            "PADDED frame without a pad length",
        ));
    };
    if pad as usize >= payload.len() {
        return Err(Connection(
            ErrorCode::PROTOCOL_ERROR,
            "padding as long as the frame",
        ));
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad as usize);
    Ok(())
}

fn priority(stream: u32, b: &[u8]) -> Result<Priority, FrameError> {
    let dep = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let p = Priority {
        dependency: dep & MAX_WINDOW,
        exclusive: dep >> 31 == 1,
        weight: b[4],
    };
    if p.dependency == stream {
        return Err(Stream(
            stream,
            ErrorCode::PROTOCOL_ERROR,
            "stream depends on itself",
        ));
    }
    Ok(p)
}

fn settings(payload: &[u8]) -> Result<Settings, FrameError> {
    if !payload.len().is_multiple_of(6) {
        return Err(Connection(
            ErrorCode::FRAME_SIZE_ERROR,
            "SETTINGS not a multiple of 6 bytes",
        ));
    }
    let mut s = Settings::default();
    for p in payload.chunks_exact(6) {
        let v = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        match u16::from_be_bytes([p[0], p[1]]) {
            1 => s.header_table_size = Some(v),
            2 => {
                if v > 1 {
                    return Err(Connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_PUSH not 0 or 1",
                    ));
                }
                s.enable_push = Some(v == 1);
            }
            3 => s.max_concurrent_streams = Some(v),
            4 => {
                if v > MAX_WINDOW {
                    return Err(Connection(
                        ErrorCode::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1",
                    ));
                }
                s.initial_window_size = Some(v);
            }
            5 => {
                if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&v) {
                    return Err(Connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_MAX_FRAME_SIZE out of range",
                    ));
                }
                s.max_frame_size = Some(v);
            }
            6 => s.max_header_list_size = Some(v),
            8 => {
                if v > 1 {
                    return Err(Connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_CONNECT_PROTOCOL not 0 or 1",
                    ));
                }
                s.enable_connect_protocol = Some(v == 1);
            }
            // Unknown settings are ignored.
            _ => {}
        }
    }
    Ok(s)
}

fn head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    out.reserve(HEAD + len);
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A DATA frame's 9-byte head; its `len` bytes of payload follow (appended, or written from
/// their own buffer in the same vectored write).
pub fn write_data_head(out: &mut BytesMut, stream: u32, len: usize, end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    head(out, len, kind::DATA, flags, stream);
}

/// A header block as a HEADERS frame plus CONTINUATIONs, each at most `max_frame_size` bytes.
pub fn write_headers(
    out: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size as usize;
    let (first, mut rest) = block.split_at(block.len().min(max));
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if rest.is_empty() {
        flags |= flag::END_HEADERS;
    }
    head(out, first.len(), kind::HEADERS, flags, stream);
    out.put_slice(first);
    while !rest.is_empty() {
        let (part, more) = rest.split_at(rest.len().min(max));
        let flags = if more.is_empty() {
            flag::END_HEADERS
        } else {
            0
        };
        head(out, part.len(), kind::CONTINUATION, flags, stream);
        out.put_slice(part);
        rest = more;
    }
}

pub fn write_settings(out: &mut BytesMut, s: &Settings) {
    let params = [
        (1u16, s.header_table_size),
        (2, s.enable_push.map(u32::from)),
        (3, s.max_concurrent_streams),
        (4, s.initial_window_size),
        (5, s.max_frame_size),
        (6, s.max_header_list_size),
        (8, s.enable_connect_protocol.map(u32::from)),
    ];
    let n = params.iter().filter(|(_, v)| v.is_some()).count();
    head(out, n * 6, kind::SETTINGS, 0, 0);
    for (id, v) in params {
        if let Some(v) = v {
            out.put_u16(id);
            out.put_u32(v);
        }
    }
}

pub fn write_settings_ack(out: &mut BytesMut) {
    head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn write_ping(out: &mut BytesMut, ack: bool, data: [u8; 8]) {
    head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.put_slice(&data);
}

pub fn write_goaway(out: &mut BytesMut, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.put_u32(last_stream);
    out.put_u32(code.0);
    out.put_slice(debug);
}

pub fn write_rst_stream(out: &mut BytesMut, stream: u32, code: ErrorCode) {
    head(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(code.0);
}

pub fn write_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

#[cfg(test)]
mod tests;
