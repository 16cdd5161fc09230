//! Raw HTTP/2 for the tests that speak it by hand (`h2_downstream`, `h2_upstream_raw`): frame
//! type, flag, error code and SETTINGS constants (RFC 9113); frames written as bytes; HPACK
//! (RFC 7541) integers, string literals and literal fields for the header blocks a test sends;
//! and, for what it reads, [`Wire`], which takes frames off a socket, joins a header block's
//! CONTINUATIONs and decodes it with a small HPACK decoder of its own ([`Hpack`]: static and
//! dynamic table, Huffman).
//!
//! This is deliberately independent of Sluice's own HTTP/2 codec (`proxy/src/http2`): it is
//! written from the RFCs, and the static table and the Huffman code are spelled out here rather
//! than taken from the codec, so that the tests do not check the codec with itself.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long any single step (connect or accept, a frame, a write) may take before the test
/// fails.
pub const STEP: Duration = Duration::from_secs(5);

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

// SETTINGS parameters (RFC 9113 §6.5.2).
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;

/// The largest flow-control window, and the mask of a 31-bit stream id or increment.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// An error code's name (RFC 9113 §7), or its value in hex.
pub fn code_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("0x{code:x}"))
}

// ---------------------------------------------------------------------------------------------
// Frames, written by hand.
// ---------------------------------------------------------------------------------------------

pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24);
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// A SETTINGS payload's parameters.
pub fn settings_params(payload: &[u8]) -> HashMap<u16, u32> {
    payload
        .chunks(6)
        .map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            )
        })
        .collect()
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

/// A HEADERS frame carrying a whole header block (END_HEADERS), with END_STREAM if `end`.
pub fn headers(stream: u32, block: &[u8], end: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, block)
}

pub fn data(stream: u32, bytes: &[u8], end: bool) -> Vec<u8> {
    frame(DATA, if end { END_STREAM } else { 0 }, stream, bytes)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping(payload: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &payload)
}

pub fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
    let mut p = last_stream.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &p)
}

pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// HPACK, written by hand (RFC 7541).
// ---------------------------------------------------------------------------------------------

/// An integer with a `prefix`-bit prefix; `first` holds the bits above the prefix (§5.1).
pub fn hpack_int(first: u8, prefix: u8, value: usize) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A string literal without Huffman coding (§5.2).
pub fn hpack_str(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(0, 7, s.len());
    out.extend_from_slice(s);
    out
}

/// A literal field without indexing, with a literal name (§6.2.2).
pub fn lit(name: &str, value: &str) -> Vec<u8> {
    cat(&[
        vec![0x00],
        hpack_str(name.as_bytes()),
        hpack_str(value.as_bytes()),
    ])
}

/// A header block of literal fields, in this order.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .map(|(n, v)| lit(n, v))
        .collect::<Vec<_>>()
        .concat()
}

/// The static table (RFC 7541 Appendix A).
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The Huffman code's lengths in bits, for symbols 0..=255 and EOS (RFC 7541 Appendix B). The
/// code is canonical, so the codes follow from the lengths.
pub const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The canonical Huffman code, both ways.
struct Huffman {
    /// (length, code) → symbol.
    decode: HashMap<(u8, u32), u16>,
    /// symbol → (code, length).
    encode: Vec<(u32, u8)>,
}

fn huffman() -> &'static Huffman {
    static H: OnceLock<Huffman> = OnceLock::new();
    H.get_or_init(|| {
        let mut symbols: Vec<usize> = (0..257).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[s], s));
        let mut encode = vec![(0u32, 0u8); 257];
        let mut decode = HashMap::new();
        let (mut code, mut len) = (0u32, HUFFMAN_LENGTHS[symbols[0]]);
        for (i, &s) in symbols.iter().enumerate() {
            let l = HUFFMAN_LENGTHS[s];
            if i > 0 {
                code = (code + 1) << (l - len);
            }
            len = l;
            encode[s] = (code, l);
            decode.insert((l, code), s as u16);
        }
        Huffman { decode, encode }
    })
}

pub fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let h = huffman();
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &b in src {
        let (code, len) = h.encode[b as usize];
        acc = (acc << len) | code as u64;
        bits += len as u32;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Padded with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
    }
    out
}

pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, String> {
    let h = huffman();
    let (mut acc, mut bits, mut out) = (0u32, 0u8, Vec::new());
    for &byte in src {
        for i in (0..8).rev() {
            acc = (acc << 1) | ((byte >> i) & 1) as u32;
            bits += 1;
            if let Some(&s) = h.decode.get(&(bits, acc)) {
                if s == 256 {
                    return Err("EOS in a Huffman string".into());
                }
                out.push(s as u8);
                (acc, bits) = (0, 0);
            } else if bits >= 30 {
                return Err("invalid Huffman code".into());
            }
        }
    }
    if bits > 7 || acc != (1 << bits) - 1 {
        return Err("invalid Huffman padding".into());
    }
    Ok(out)
}

/// An integer with a `prefix`-bit prefix off the front of `b` (§5.1).
pub fn hpack_read_int(b: &mut &[u8], prefix: u8) -> Result<usize, String> {
    let max = (1usize << prefix) - 1;
    let (&first, rest) = b.split_first().ok_or("truncated integer")?;
    *b = rest;
    let mut v = (first as usize) & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let (&next, rest) = b.split_first().ok_or("truncated integer")?;
        *b = rest;
        v += ((next & 0x7f) as usize) << shift;
        shift += 7;
        if next & 0x80 == 0 {
            return Ok(v);
        }
        if shift > 28 {
            return Err("integer overflow".into());
        }
    }
}

/// A string literal, Huffman-coded or not, off the front of `b` (§5.2).
pub fn hpack_read_str(b: &mut &[u8]) -> Result<Vec<u8>, String> {
    let huff = b.first().ok_or("truncated string")? & 0x80 != 0;
    let len = hpack_read_int(b, 7)?;
    if b.len() < len {
        return Err("truncated string".into());
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    if huff {
        huffman_decode(s)
    } else {
        Ok(s.to_vec())
    }
}

/// An HPACK decoder for the peer's header blocks (the dynamic table at its default 4,096).
pub struct Hpack {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The dynamic table's size (§4.1).
    pub size: usize,
    max: usize,
}

impl Hpack {
    pub fn new() -> Hpack {
        Hpack {
            table: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }

    fn get(&self, index: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        match index {
            0 => Err("index 0".into()),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or_else(|| format!("index {index} past the table")),
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let (n, v) = self.table.pop_back().unwrap();
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        self.size += name.len() + value.len() + 32;
        self.table.push_front((name, value));
        self.evict();
    }

    /// A header block's fields, in order.
    pub fn decode(&mut self, mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        while let Some(&first) = b.first() {
            let (name, value) = if first & 0x80 != 0 {
                self.get(hpack_read_int(&mut b, 7)?)?
            } else if first & 0xe0 == 0x20 {
                let max = hpack_read_int(&mut b, 5)?;
                if max > 4096 {
                    return Err(format!("table size update to {max}"));
                }
                self.max = max;
                self.evict();
                continue;
            } else {
                let incremental = first & 0xc0 == 0x40;
                let index = hpack_read_int(&mut b, if incremental { 6 } else { 4 })?;
                let name = if index == 0 {
                    hpack_read_str(&mut b)?
                } else {
                    self.get(index)?.0
                };
                let value = hpack_read_str(&mut b)?;
                if incremental {
                    self.insert(name.clone(), value.clone());
                }
                (name, value)
            };
            out.push((
                String::from_utf8_lossy(&name).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Frames, read by hand.
// ---------------------------------------------------------------------------------------------

/// One frame from the peer; a header block (HEADERS or PUSH_PROMISE and its CONTINUATIONs)
/// comes as one frame with its decoded `fields`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    pub fields: Vec<(String, String)>,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn code(&self) -> u32 {
        let at = if self.ty == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
    /// A GOAWAY's last stream id.
    pub fn last_stream(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & MAX_WINDOW
    }
    /// DATA without its padding.
    pub fn data(&self) -> &[u8] {
        if self.has(PADDED) {
            let pad = self.payload[0] as usize;
            &self.payload[1..self.payload.len() - pad]
        } else {
            &self.payload
        }
    }
    /// A decoded header field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        field_value(&self.fields, name)
    }
    pub fn status(&self) -> Option<u16> {
        self.field(":status").and_then(|s| s.parse().ok())
    }
    /// `TYPE(stream N, flags 0xF, what it carries)`, for logs and failure messages.
    pub fn describe(&self) -> String {
        let name = [
            "DATA",
            "HEADERS",
            "PRIORITY",
            "RST_STREAM",
            "SETTINGS",
            "PUSH_PROMISE",
            "PING",
            "GOAWAY",
            "WINDOW_UPDATE",
            "CONTINUATION",
        ]
        .get(self.ty as usize)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("type 0x{:x}", self.ty));
        let what = match self.ty {
            DATA => format!("{} bytes", self.payload.len()),
            HEADERS => format!("{:?}", self.fields),
            RST_STREAM => code_name(self.code()),
            GOAWAY => format!(
                "last={} {} {:?}",
                self.last_stream(),
                code_name(self.code()),
                String::from_utf8_lossy(&self.payload[8..])
            ),
            WINDOW_UPDATE if self.payload.len() == 4 => format!(
                "+{}",
                u32::from_be_bytes(self.payload[..4].try_into().unwrap())
            ),
            SETTINGS if self.payload.len().is_multiple_of(6) => {
                format!("{:?}", settings_params(&self.payload))
            }
            _ => format!("{:?}", self.payload),
        };
        format!(
            "{name}(stream {}, flags 0x{:x}, {what})",
            self.stream, self.flags
        )
    }
}

/// The value of the first of `fields` named `name`.
pub fn field_value<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What a read found.
pub enum Read {
    Frame(Frame),
    /// EOF or a reset.
    Closed,
    /// Nothing within the wait.
    Quiet,
}

/// A frame as it came off the wire: (type, flags, stream, payload).
pub type RawFrame = (u8, u8, u32, Vec<u8>);

/// One end of a TCP connection speaking HTTP/2, its frames read by hand: the socket (written to
/// directly), the bytes read ahead, and the HPACK decoder for the peer's header blocks.
pub struct Wire {
    pub s: TcpStream,
    /// Bytes read and not yet taken as a frame (or, before the first, as the preface).
    pub buf: Vec<u8>,
    /// The peer closed (EOF or an error): the socket is not read again.
    closed: bool,
    hpack: Hpack,
}

impl Wire {
    pub fn new(s: TcpStream) -> Wire {
        Wire {
            s,
            buf: Vec::new(),
            closed: false,
            hpack: Hpack::new(),
        }
    }

    /// One raw frame off the wire, waiting up to `wait`: `None` when quiet, `Some(None)` when
    /// closed.
    async fn raw(&mut self, wait: Duration) -> Option<Option<RawFrame>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload: Vec<u8> = self.buf.drain(..len).collect();
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & MAX_WINDOW;
                    return Some(Some((head[3], head[4], stream, payload)));
                }
            }
            if self.closed {
                return Some(None);
            }
            let mut tmp = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    return Some(None);
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// The next frame within `wait`. A header block is decoded, its CONTINUATIONs joined (each
    /// within STEP); an error says how a header block is not continued or does not decode.
    pub async fn read(&mut self, wait: Duration) -> Result<Read, String> {
        let (ty, flags, stream, payload) = match self.raw(wait).await {
            None => return Ok(Read::Quiet),
            Some(None) => return Ok(Read::Closed),
            Some(Some(f)) => f,
        };
        let mut f = Frame {
            ty,
            flags,
            stream,
            payload,
            fields: Vec::new(),
        };
        if ty == HEADERS || ty == PUSH_PROMISE {
            let mut block = f.payload.clone();
            if f.has(PADDED) {
                let pad = block[0] as usize;
                block = block[1..block.len() - pad].to_vec();
            }
            if ty == HEADERS && f.has(PRIORITY_FLAG) {
                block.drain(..5);
            }
            if ty == PUSH_PROMISE {
                block.drain(..4);
            }
            while !f.has(END_HEADERS) {
                match self.raw(STEP).await {
                    Some(Some((CONTINUATION, flags, s, more))) if s == stream => {
                        block.extend_from_slice(&more);
                        f.flags |= flags & END_HEADERS;
                    }
                    other => {
                        return Err(format!(
                            "header block on stream {stream} not continued: {other:?}"
                        ))
                    }
                }
            }
            f.fields = self
                .hpack
                .decode(&block)
                .map_err(|e| format!("header block does not decode: {e}: {block:02x?}"))?;
        }
        Ok(Read::Frame(f))
    }
}
