//! HTTP/1.1 wire framing shared by the downstream server (`http/h1.rs`) and the upstream
//! client (`cluster/h1.rs`): reading into a growing buffer, output queued for one `writev`,
//! how a message body is delimited (RFC 9112 §6), the chunked decoder and encoder, and
//! `Connection` header tokens.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use http_body::Frame;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// First read size; grows while reads fill the buffer (large bodies), up to `MAX_READ`.
pub const MIN_READ: usize = 8 * 1024;
pub const MAX_READ: usize = 256 * 1024;
/// Most trailers a chunked body may end with.
const MAX_TRAILERS: usize = 32;
/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 96 * 1024;

/// A TCP socket, or the half of one, that the codecs read from and write to.
pub trait Socket {
    fn socket(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Socket for tokio::net::tcp::OwnedReadHalf {
    fn socket(&self) -> &TcpStream {
        self.as_ref()
    }
}

impl Socket for tokio::net::tcp::OwnedWriteHalf {
    fn socket(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// Reads into `buf` once the socket is readable, by a direct system call (`sys::recv`) under
/// tokio's readiness. As tokio's own reads do, a read that does not fill `buf` drained the
/// socket: its readiness is cleared then, so that the next read waits for the next event
/// instead of making a system call to learn that there is nothing.
pub fn poll_recv(
    s: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> Poll<io::Result<usize>> {
    use std::os::fd::AsRawFd;
    let len = buf.len();
    poll_io(s, cx, Interest::READABLE, len, || {
        crate::sys::recv(s.as_raw_fd(), buf)
    })
}

/// Writes `bufs` once the socket is writable, by a direct system call (`sys::writev`) under
/// tokio's readiness; a write that takes less than all of it filled the socket's buffer, and
/// clears its readiness (see [`poll_recv`]).
pub fn poll_writev(
    s: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    use std::os::fd::AsRawFd;
    let len = bufs.iter().map(|b| b.len()).sum();
    poll_io(s, cx, Interest::WRITABLE, len, || {
        crate::sys::writev(s.as_raw_fd(), bufs)
    })
}

/// `op`, for up to `len` bytes, once the socket is ready for `interest`; a count short of
/// `len` clears the readiness that was seen before the call (`try_io` clears it when the call
/// says `WouldBlock`: a short count says it too, and is handed over in `short`).
fn poll_io(
    s: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    len: usize,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest.is_readable() {
            ready!(s.poll_read_ready(cx))?;
        } else {
            ready!(s.poll_write_ready(cx))?;
        }
        let mut short = None;
        match s.try_io(interest, || {
            let n = op()?;
            if n > 0 && n < len {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(n) = short {
                    return Poll::Ready(Ok(n));
                }
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// What connections going idle give back, kept per thread for the next connection that has
/// something to read or write: read buffers ([`release`]), header maps and head buffers
/// ([`SpareHeaders::release`], [`HeadBuf::release`]). A thousand idle keep-alive connections
/// then hold none of them.
const POOLED: usize = 64;
/// Read buffers larger than this (grown by large bodies) are freed, not kept.
const POOLED_MAX: usize = 64 * 1024;

thread_local! {
    static READ_BUFFERS: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static HEAD_BUFFERS: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static HEADER_MAPS: std::cell::RefCell<Vec<HeaderMap>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn pool_put<T>(pool: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>, t: T) {
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOLED {
            p.push(t);
        }
    });
}

fn pool_take<T>(pool: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>) -> Option<T> {
    pool.with(|p| p.borrow_mut().pop())
}

/// Gives back the read buffer of a connection going idle, if nothing is left in it; the next
/// [`poll_fill`] waits for the socket to be readable before it takes a buffer.
pub fn release(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let b = std::mem::take(buf);
    if (MIN_READ / 2..=POOLED_MAX).contains(&b.capacity()) {
        pool_put(&READ_BUFFERS, b);
    }
}

fn take_buffer() -> BytesMut {
    pool_take(&READ_BUFFERS).unwrap_or_else(|| BytesMut::with_capacity(MIN_READ))
}

/// Reads more bytes into `buf`; `Ok(0)` is the end of the stream. The read size doubles
/// while reads fill it (`hint`, up to `MAX_READ`). A connection that has to wait gives its
/// empty buffer back, and takes one once the socket is readable.
#[allow(unsafe_code)]
pub fn poll_fill<S: Socket>(
    io: &mut S,
    buf: &mut BytesMut,
    hint: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let s = io.socket();
    if buf.capacity() == 0 {
        ready!(s.poll_read_ready(cx))?;
        *buf = take_buffer();
    }
    if buf.capacity() - buf.len() < *hint / 2 {
        buf.reserve(*hint);
    }
    let spare = buf.spare_capacity_mut();
    let want = spare.len();
    let read = poll_recv(s, cx, spare);
    let Poll::Ready(read) = read else {
        // Nothing to read yet: an empty buffer goes back to the pool while the connection
        // waits (a large one, grown by a body in flight, stays for the rest of it).
        if buf.is_empty() && buf.capacity() <= POOLED_MAX {
            release(buf);
        }
        return Poll::Pending;
    };
    let n = read?;
    // SAFETY: the kernel wrote `n` bytes at the start of the spare capacity, which are the
    // bytes right after the buffer's current length.
    unsafe { buf.set_len(buf.len() + n) };
    if n == want {
        *hint = (*hint * 2).min(MAX_READ);
    }
    Poll::Ready(Ok(n))
}

/// Output queued for one vectored write.
#[derive(Default)]
pub struct Queue {
    bufs: VecDeque<Bytes>,
    len: usize,
}

impl Queue {
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.bufs.push_back(b);
        }
    }

    /// `data` as one chunk of a chunked body (nothing for empty data: that would end it).
    pub fn push_chunk(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.push(chunk_size_line(data.len()));
            self.push(data);
            self.push(Bytes::from_static(b"\r\n"));
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.bufs.clear();
        self.len = 0;
    }

    /// Fills `slices` from the front of the queue; returns how many were filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, b) in slices.iter_mut().zip(&self.bufs) {
            *slot = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// Drops the first `written` bytes (a write took them).
    pub fn advance(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            let front = self.bufs.front_mut().expect("written bytes were queued");
            if front.len() <= written {
                written -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
}

/// How the rest of a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection ends (responses only).
    UntilClose,
    Done,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// True if a `transfer-encoding` value ends in `chunked`.
pub fn ends_chunked(te: &[u8]) -> bool {
    te.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// True if the comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Decodes buffered chunked bytes (`state` is `In::Chunked`): `Some(frame)` (or `Some(None)`
/// at the end, `state` then `Done`), `None` when more bytes are needed.
pub fn decode_chunk(
    state: &mut In,
    buf: &mut BytesMut,
) -> Result<Option<Option<Frame<Bytes>>>, &'static str> {
    loop {
        let In::Chunked(at) = *state else {
            return Ok(Some(None));
        };
        match at {
            Chunk::Size => {
                let Some(end) = buf
                    .iter()
                    .take(MAX_CHUNK_LINE + 1)
                    .position(|b| *b == b'\n')
                else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    return Ok(None);
                };
                let digits = buf[..end]
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.len() <= 16)
                    .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or("chunk size")?;
                buf.advance(end + 1);
                *state = In::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (buf.len() as u64).min(left);
                let data = buf.split_to(n as usize).freeze();
                *state = In::Chunked(if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                });
                return Ok(Some(Some(Frame::data(data))));
            }
            Chunk::DataEnd => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                } else if buf.starts_with(b"\n") {
                    buf.advance(1);
                } else if buf.is_empty() || &buf[..] == b"\r" {
                    return Ok(None);
                } else {
                    return Err("chunk not followed by CRLF");
                }
                *state = In::Chunked(Chunk::Size);
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                    buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
                    *state = In::Done;
                    return Ok(Some(None));
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                return match httparse::parse_headers(buf, &mut headers) {
                    Ok(httparse::Status::Complete((len, hs))) => {
                        let mut map = HeaderMap::with_capacity(hs.len());
                        for h in hs {
                            let name = HeaderName::from_bytes(h.name.as_bytes())
                                .map_err(|_| "trailer name")?;
                            let value =
                                HeaderValue::from_bytes(h.value).map_err(|_| "trailer value")?;
                            map.append(name, value);
                        }
                        buf.advance(len);
                        *state = In::Done;
                        Ok(Some(Some(Frame::trailers(map))))
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILER_BYTES => Ok(None),
                    _ => Err("trailers"),
                };
            }
        }
    }
}

/// The line that starts a chunk of `len` bytes.
pub fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// The last chunk, with the trailer section (empty if `None`).
pub fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let Some(t) = trailers.filter(|t| !t.is_empty()) else {
        return Bytes::from_static(b"0\r\n\r\n");
    };
    let mut b = BytesMut::from(&b"0\r\n"[..]);
    for (k, v) in t {
        b.extend_from_slice(k.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"\r\n");
    b.freeze()
}

/// A header map kept by a connection between exchanges: the map of a message that went out
/// is emptied and becomes the map of the next one parsed, so that a steady exchange allocates
/// no header map (two allocations and two frees each, at glibc's slowest sizes).
#[derive(Default)]
pub struct SpareHeaders(Option<HeaderMap>);

/// A map that grew past this many entries is not kept (one huge message must not pin its
/// memory for the connection's life).
const SPARE_HEADERS_MAX: usize = 128;

impl SpareHeaders {
    /// An empty map with room for `n` entries: the kept one if there is one, else one from the
    /// thread's pool.
    pub fn take(&mut self, n: usize) -> HeaderMap {
        match self.0.take() {
            Some(mut m) => {
                m.reserve(n);
                m
            }
            None => take_header_map(n),
        }
    }

    /// The connection goes idle: its map goes to the thread's pool.
    pub fn release(&mut self) {
        if let Some(m) = self.0.take() {
            pool_put(&HEADER_MAPS, m);
        }
    }

    /// Keeps `m` (emptied) for the next message, unless it is too big or one is kept already.
    pub fn keep(&mut self, mut m: HeaderMap) {
        if self.0.is_none() && m.capacity() <= SPARE_HEADERS_MAX {
            m.clear();
            self.0 = Some(m);
        }
    }
}

/// An empty header map with room for `n` entries, from the thread's pool when it has one (for
/// HTTP/2 streams, whose maps come and go out of order, so no connection keeps one).
pub fn take_header_map(n: usize) -> HeaderMap {
    match pool_take(&HEADER_MAPS) {
        Some(mut m) => {
            m.reserve(n);
            m
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Gives a map that is done with (its message went out) to the thread's pool, emptied.
pub fn recycle_header_map(mut m: HeaderMap) {
    if m.capacity() <= SPARE_HEADERS_MAX && m.capacity() > 0 {
        m.clear();
        pool_put(&HEADER_MAPS, m);
    }
}

/// A buffer that message heads are written into and split off from: once the previous head
/// went out (its `Bytes` dropped), the next one reuses the same allocation.
#[derive(Default)]
pub struct HeadBuf(BytesMut);

/// The smallest head buffer allocated (most heads fit, so it is allocated once).
const HEAD_BUF_MIN: usize = 512;
/// Heads longer than this do not keep their buffer.
const HEAD_BUF_KEEP: usize = 16 * 1024;

impl HeadBuf {
    /// The buffer, empty, with room for `len` bytes.
    pub fn start(&mut self, len: usize) -> &mut BytesMut {
        if self.0.capacity() == 0 {
            if let Some(b) = pool_take(&HEAD_BUFFERS) {
                self.0 = b;
            }
        }
        self.0.clear();
        self.0.reserve(len.max(HEAD_BUF_MIN));
        &mut self.0
    }

    /// The connection goes idle (its last head written): the buffer goes to the thread's pool.
    pub fn release(&mut self) {
        // Its capacity may be what is left after the last head was split off: `start`
        // reclaims the whole allocation once that head is gone.
        let b = std::mem::take(&mut self.0);
        if b.capacity() > 0 {
            pool_put(&HEAD_BUFFERS, b);
        }
    }

    /// The head written since `start`. A big one's buffer is not kept for the next.
    pub fn finish(&mut self) -> Bytes {
        let head = self.0.split().freeze();
        if head.len() > HEAD_BUF_KEEP {
            self.0 = BytesMut::new();
        }
        head
    }
}

/// The `date` header value (IMF-fixdate, 29 bytes), formatted once per second per thread.
pub fn date_value() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, v) = c.get();
        if at == secs {
            return v;
        }
        let mut v = [0u8; 29];
        let text = httpdate::fmt_http_date(now);
        if text.len() == v.len() {
            v.copy_from_slice(text.as_bytes());
        }
        c.set((secs, v));
        v
    })
}

/// The `date` header, for HTTP/2 responses: shared per thread and second, so setting it costs
/// a reference count, not an allocation.
pub fn date_header() -> http::HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<([u8; 29], http::HeaderValue)> =
            const { RefCell::new(([0; 29], http::HeaderValue::from_static(""))) };
    }
    let now = date_value();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now {
            if let Ok(v) = http::HeaderValue::from_bytes(&now) {
                *c = (now, v);
            }
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let mut state = In::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(input);
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = decode_chunk(&mut state, &mut buf)? {
            let Some(frame) = frame else { break };
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(state, In::Done, "incomplete");
        Ok((data, trailers))
    }

    #[tokio::test]
    async fn a_waiting_reader_holds_no_buffer_until_its_socket_is_readable() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let mut hint = MIN_READ;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // A new connection with nothing to read: pending, and no buffer kept.
        assert!(poll_fill(&mut s, &mut buf, &mut hint, &mut cx).is_pending());
        assert_eq!(buf.capacity(), 0);
        let pooled = READ_BUFFERS.with(|p| p.borrow().len());
        assert!(pooled >= 1, "the buffer went back to the pool");
        c.write_all(b"GET").await.unwrap();
        let n = std::future::poll_fn(|cx| poll_fill(&mut s, &mut buf, &mut hint, cx))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"GET");
        // The pooled buffer was reused, not a new one allocated.
        assert_eq!(READ_BUFFERS.with(|p| p.borrow().len()), pooled - 1);
        // Bytes not parsed yet stay with their connection while it waits for more...
        assert!(poll_fill(&mut s, &mut buf, &mut hint, &mut cx).is_pending());
        assert_eq!(&buf[..], b"GET");
        // ...and once they are taken, the next wait gives the buffer back.
        buf.clear();
        assert!(poll_fill(&mut s, &mut buf, &mut hint, &mut cx).is_pending());
        assert_eq!(buf.capacity(), 0);
        assert_eq!(READ_BUFFERS.with(|p| p.borrow().len()), pooled);
    }

    #[tokio::test]
    #[allow(unsafe_code)]
    async fn a_short_read_waits_for_the_next_bytes_and_is_woken_by_them() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(poll_recv(&s, &mut cx, &mut buf).is_pending());
        c.write_all(b"ab").await.unwrap();
        let n = std::future::poll_fn(|cx| poll_recv(&s, cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, 2);
        // The short read drained the socket: pending, and the next bytes wake the reader.
        assert!(poll_recv(&s, &mut cx, &mut buf).is_pending());
        c.write_all(b"cdefgh").await.unwrap();
        let n = std::future::poll_fn(|cx| poll_recv(&s, cx, &mut buf[..4]))
            .await
            .unwrap();
        // SAFETY: the read initialized the first `n` bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, b"cdef");
        // A read that filled its buffer may have left more: the next one reads it at once.
        assert!(matches!(
            poll_recv(&s, &mut cx, &mut buf),
            Poll::Ready(Ok(2))
        ));
        drop(c);
        let n = std::future::poll_fn(|cx| poll_recv(&s, cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, 0, "the end of the stream");
    }

    #[tokio::test]
    async fn vectored_writes_to_a_full_socket_wait_and_go_on_when_it_drains() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let data: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Nobody reads: the writes fill the socket and then wait.
        let mut sent = 0;
        loop {
            let rest = &data[sent..];
            let slices = [
                IoSlice::new(&rest[..rest.len() / 2]),
                IoSlice::new(&rest[rest.len() / 2..]),
            ];
            match poll_writev(&s, &mut cx, &slices) {
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => break,
            }
            assert!(sent < data.len(), "16 MiB fit in the socket buffers");
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        while sent < data.len() {
            let rest = &data[sent..];
            let slices = [
                IoSlice::new(&rest[..rest.len() / 2]),
                IoSlice::new(&rest[rest.len() / 2..]),
            ];
            sent += std::future::poll_fn(|cx| poll_writev(&s, cx, &slices))
                .await
                .unwrap();
        }
        drop(s);
        assert!(
            reader.await.unwrap() == data,
            "the bytes arrive whole and in order"
        );
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (d, t) = decode_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n").unwrap();
        assert_eq!(d, b"hello world");
        assert_eq!(t.unwrap()["x-t"], "1");
        let (d, t) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(d, b"0123456789");
        assert!(t.is_none());
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"+5\r\nhello\r\n0\r\n\r\n").is_err());
        assert!(decode_all(b"5\r\nhelloX\r\n0\r\n\r\n").is_err());
        assert!(decode_all(b"11111111111111111\r\n").is_err());
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(5000));
        assert!(decode_all(long_ext.as_bytes()).is_err());
    }

    #[test]
    fn encoder_round_trips() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut wire = Vec::new();
        wire.extend_from_slice(&chunk_size_line(3));
        wire.extend_from_slice(b"abc\r\n");
        wire.extend_from_slice(&last_chunk(Some(&t)));
        let (d, got) = decode_all(&wire).unwrap();
        assert_eq!(d, b"abc");
        assert_eq!(got.unwrap()["grpc-status"], "0");
        assert_eq!(&last_chunk(None)[..], b"0\r\n\r\n");
    }

    #[test]
    fn queue_advances_across_buffers() {
        let mut q = Queue::default();
        q.push(Bytes::from_static(b"head"));
        q.push_chunk(Bytes::from_static(b"abc"));
        q.push_chunk(Bytes::new());
        assert_eq!(q.len(), 4 + 3 + 3 + 2);
        q.advance(6);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = q.slices(&mut slices);
        let rest: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(rest, b"\nabc\r\n");
        q.advance(6);
        assert!(q.is_empty());
    }

    #[test]
    fn tokens() {
        assert!(ends_chunked(b"gzip, Chunked"));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert!(has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(!has_token(b"keep-alive", b"close"));
    }

    #[test]
    fn a_kept_header_map_comes_back_empty_and_a_huge_one_is_not_kept() {
        let mut spare = SpareHeaders::default();
        let mut m = spare.take(4);
        m.insert("x-a", HeaderValue::from_static("1"));
        m.append("x-a", HeaderValue::from_static("2"));
        let cap = m.capacity();
        spare.keep(m);
        let again = spare.take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap, "the kept map's allocation is reused");
        // Only one is kept; a second one is dropped.
        spare.keep(again);
        spare.keep(HeaderMap::with_capacity(8));
        assert_eq!(spare.take(0).capacity(), cap);
        let mut huge = HeaderMap::with_capacity(1000);
        huge.insert("x-b", HeaderValue::from_static("1"));
        spare.keep(huge);
        assert!(spare.take(0).capacity() < 1000);
    }

    #[test]
    fn head_buffer_is_reused_once_the_previous_head_is_gone() {
        let mut hb = HeadBuf::default();
        hb.start(40).extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let first = hb.finish();
        let at = first.as_ptr();
        drop(first);
        // Past what is left after the first head: the buffer is reclaimed, not reallocated.
        hb.start(HEAD_BUF_MIN)
            .extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        let second = hb.finish();
        assert_eq!(second.as_ptr(), at);
        assert_eq!(&second[..], b"HTTP/1.1 204 No Content\r\n\r\n");
        // While a head is still referenced (queued), the next one does not overwrite it.
        hb.start(HEAD_BUF_MIN)
            .extend_from_slice(b"HTTP/1.1 404 Not Found\r\n\r\n");
        let third = hb.finish();
        assert_eq!(&second[..], b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(&third[..], b"HTTP/1.1 404 Not Found\r\n\r\n");
        // A big head's buffer is let go.
        drop((second, third));
        let big = vec![b'a'; HEAD_BUF_KEEP + 1];
        hb.start(big.len()).extend_from_slice(&big);
        let b = hb.finish();
        assert_eq!(b.len(), big.len());
        assert_eq!(hb.0.capacity(), 0);
    }

    #[test]
    fn an_idle_connections_head_buffer_and_header_map_serve_the_next_connection() {
        // One connection's exchange, then it goes idle.
        let mut a_head = HeadBuf::default();
        let mut a_spare = SpareHeaders::default();
        a_head
            .start(40)
            .extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let head = a_head.finish();
        let at = head.as_ptr();
        drop(head);
        let mut m = a_spare.take(4);
        m.insert("x-a", HeaderValue::from_static("1"));
        let cap = m.capacity();
        a_spare.keep(m);
        a_head.release();
        a_spare.release();
        assert_eq!(a_head.0.capacity(), 0);
        assert!(a_spare.0.is_none());
        // Another connection's next message reuses both allocations.
        let mut b_head = HeadBuf::default();
        b_head
            .start(40)
            .extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(b_head.finish().as_ptr(), at);
        let m = SpareHeaders::default().take(4);
        assert!(m.is_empty());
        assert_eq!(m.capacity(), cap);
    }
}
