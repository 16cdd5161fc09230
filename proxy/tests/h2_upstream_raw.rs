//! The HTTP/2 upstream client (`cluster/h2.rs` over `http2/client.rs`, or the `h2` crate's
//! with `SLUICE_H2_CLIENT=h2`) against a raw HTTP/2 upstream: a TCP listener whose frames are
//! written and parsed by hand, with the tests' own small HPACK decoder (static and dynamic
//! table, Huffman; `support::h2raw`) for Sluice's request header blocks, and responses encoded
//! as literals without indexing. Each test scripts the upstream connection frame by frame, so it can do what a
//! well-behaved server library will not: interim responses, tiny flow-control windows, resets
//! mid-body, GOAWAY with streams left unprocessed, malformed responses, PUSH_PROMISE, closing
//! the socket under a pending request. The downstream is plain HTTP/1.1 (hyper, or raw bytes
//! where headers or a cut body matter) or h2c (hyper).

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::h2raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a whole test may take.
const TEST: Duration = Duration::from_secs(60);

/// Runs a test body under the overall time limit.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST, f)
        .await
        .expect("the test finished in time")
}

/// Awaits a spawned downstream client (within 20 s: a big body takes a while in a debug build).
async fn joined<T>(what: &str, h: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in time"))
        .unwrap_or_else(|e| panic!("{what}: the client task failed: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Sluice set-up.
// ---------------------------------------------------------------------------------------------

const H2_OPTS: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

const RETRY_REFUSED: &str = ", retry_policy: {retry_on: refused-stream, num_retries: 1}";

/// Listener `raw` routing everything to cluster `up` (h2c to `up`), route timeout 10s plus
/// `route_extra`.
fn bootstrap(up: SocketAddr, route_extra: &str) -> String {
    let vh = format!(
        r#"            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: up, timeout: 10s{route_extra}}}
"#
    );
    format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("raw", &vh, ""),
        cluster("up", &[up], H2_OPTS)
    )
}

async fn setup(route_extra: &str) -> (sluice::app::App, SocketAddr, RawUpstream) {
    let up = raw_upstream().await;
    let app = sluice(&bootstrap(up.addr, route_extra)).await;
    let addr = app.listener_address("raw").unwrap();
    (app, addr, up)
}

/// An h2c client to Sluice (hyper's), keeping response trailers and body errors.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// `n` bytes: `abc...z` repeated.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Frames and header blocks only the upstream writes: the common ones, and the reading side with
// its HPACK decoder, are in `support::h2raw`. What the upstream sends is literals without
// indexing (`block`).
// ---------------------------------------------------------------------------------------------

fn push_promise(stream: u32, promised: u32, block: &[u8]) -> Vec<u8> {
    let mut p = promised.to_be_bytes().to_vec();
    p.extend_from_slice(block);
    frame(PUSH_PROMISE, END_HEADERS, stream, &p)
}

/// A response head's block: `:status` then `extra`.
fn response_block(status: u16, extra: &[(&str, &str)]) -> Vec<u8> {
    let status = status.to_string();
    let mut fields = vec![(":status", status.as_str())];
    fields.extend_from_slice(extra);
    block(&fields)
}

// ---------------------------------------------------------------------------------------------
// The raw upstream: a listener handing out its connections, and one connection's server side.
// ---------------------------------------------------------------------------------------------

/// A request as the upstream received it.
#[derive(Debug, Clone, Default)]
struct Req {
    stream: u32,
    /// The request head's fields, in order.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
    /// The sizes of its DATA frames.
    frames: Vec<usize>,
    /// END_STREAM received.
    end: bool,
}

impl Req {
    fn field(&self, name: &str) -> Option<&str> {
        field_value(&self.fields, name)
    }
    fn path(&self) -> &str {
        self.field(":path").unwrap_or("")
    }
}

struct RawUpstream {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    accepted: Arc<AtomicUsize>,
}

async fn raw_upstream() -> RawUpstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, conns) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            s.set_nodelay(true).unwrap();
            if tx.send(Conn::new(s, n)).is_err() {
                return;
            }
        }
    });
    RawUpstream {
        addr,
        conns,
        accepted,
    }
}

impl RawUpstream {
    /// The next connection from Sluice, nothing read yet.
    async fn accept(&mut self) -> Conn {
        tokio::time::timeout(STEP, self.conns.recv())
            .await
            .expect("Sluice connects to the upstream in time")
            .unwrap()
    }

    /// The next connection, handshaken with these SETTINGS.
    async fn accept_with(&mut self, params: &[(u16, u32)]) -> Conn {
        let mut c = self.accept().await;
        c.handshake(params).await;
        c
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The server side of one connection from Sluice. Every frame read is accounted for as it
/// comes: Sluice's SETTINGS (later ones are acknowledged) and its ACKs of ours, PINGs
/// (answered), WINDOW_UPDATEs (this side's send windows), requests (heads, DATA, trailers),
/// RST_STREAMs and GOAWAYs. DATA is given back at once unless `auto_window` is off.
struct Conn {
    id: usize,
    wire: Wire,
    /// Descriptions of every frame read, for failure messages.
    log: Vec<String>,
    /// Sluice's SETTINGS parameters, and how many SETTINGS frames came.
    client_settings: HashMap<u16, u32>,
    settings_frames: usize,
    /// Sluice acknowledged this side's SETTINGS.
    settings_acked: bool,
    ping_acks: Vec<Vec<u8>>,
    /// WINDOW_UPDATEs received: (stream, increment).
    window_updates: Vec<(u32, u32)>,
    /// What this side may still send: on the connection, and per stream.
    conn_window: i64,
    stream_windows: HashMap<u32, i64>,
    /// Sluice's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_initial_window: i64,
    peer_max_frame: usize,
    auto_window: bool,
    /// Requests by stream, and the streams in the order their heads came.
    reqs: HashMap<u32, Req>,
    order: Vec<u32>,
    heads_taken: HashSet<u32>,
    reqs_taken: HashSet<u32>,
    /// RST_STREAMs and GOAWAYs received: (stream or last stream, code).
    resets: Vec<(u32, u32)>,
    goaways: Vec<(u32, u32)>,
}

impl Conn {
    fn new(s: TcpStream, id: usize) -> Conn {
        Conn {
            id,
            wire: Wire::new(s),
            log: Vec::new(),
            client_settings: HashMap::new(),
            settings_frames: 0,
            settings_acked: false,
            ping_acks: Vec::new(),
            window_updates: Vec::new(),
            conn_window: 65_535,
            stream_windows: HashMap::new(),
            peer_initial_window: 65_535,
            peer_max_frame: 16_384,
            auto_window: true,
            reqs: HashMap::new(),
            order: Vec::new(),
            heads_taken: HashSet::new(),
            reqs_taken: HashSet::new(),
            resets: Vec::new(),
            goaways: Vec::new(),
        }
    }

    fn history(&self) -> String {
        format!(
            "upstream connection {}:\n  {}",
            self.id,
            self.log.join("\n  ")
        )
    }

    async fn send(&mut self, bytes: &[u8]) {
        match tokio::time::timeout(STEP, self.wire.s.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("upstream write: {e}; {}", self.history()),
            Err(_) => panic!("upstream write not taken in time; {}", self.history()),
        }
    }

    /// Sends, ignoring errors (Sluice may have closed already).
    async fn try_send(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(STEP, self.wire.s.write_all(bytes)).await;
    }

    /// `n` raw bytes (the preface).
    async fn take_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.wire.buf.len() < n {
            let mut tmp = vec![0u8; 65536];
            match tokio::time::timeout(STEP, self.wire.s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => panic!("closed before {n} bytes: {:?}", self.wire.buf),
                Ok(Ok(k)) => self.wire.buf.extend_from_slice(&tmp[..k]),
                Err(_) => panic!("no {n} bytes in time: {:?}", self.wire.buf),
            }
        }
        self.wire.buf.drain(..n).collect()
    }

    /// The next frame within `wait`, accounted for. Header blocks are decoded (CONTINUATIONs
    /// joined).
    async fn read(&mut self, wait: Duration) -> Read {
        let f = match self.wire.read(wait).await {
            Ok(Read::Frame(f)) => f,
            Ok(Read::Closed) => {
                if self.log.last().map(String::as_str) != Some("(closed)") {
                    self.log.push("(closed)".into());
                }
                return Read::Closed;
            }
            Ok(Read::Quiet) => return Read::Quiet,
            Err(e) => panic!("Sluice's {e}; {}", self.history()),
        };
        self.log.push(f.describe());
        self.account(&f).await;
        Read::Frame(f)
    }

    async fn account(&mut self, f: &Frame) {
        match f.ty {
            SETTINGS if f.has(ACK) => {
                assert!(
                    f.payload.is_empty() && f.stream == 0,
                    "a SETTINGS ACK with a payload or on a stream; {}",
                    self.history()
                );
                self.settings_acked = true;
            }
            SETTINGS => {
                let p = settings_params(&f.payload);
                if let Some(&w) = p.get(&INITIAL_WINDOW_SIZE) {
                    let delta = i64::from(w) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(w);
                    for v in self.stream_windows.values_mut() {
                        *v += delta;
                    }
                }
                if let Some(&m) = p.get(&MAX_FRAME_SIZE) {
                    self.peer_max_frame = m as usize;
                }
                self.client_settings.extend(p);
                self.settings_frames += 1;
                // The first is acknowledged by `handshake`.
                if self.settings_frames > 1 {
                    self.try_send(&settings_ack()).await;
                }
            }
            PING if f.has(ACK) => self.ping_acks.push(f.payload.clone()),
            PING => {
                let ack = frame(PING, ACK, 0, &f.payload);
                self.try_send(&ack).await;
            }
            WINDOW_UPDATE => {
                let inc = u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & MAX_WINDOW;
                self.window_updates.push((f.stream, inc));
                if f.stream == 0 {
                    self.conn_window += i64::from(inc);
                } else if let Some(w) = self.stream_windows.get_mut(&f.stream) {
                    *w += i64::from(inc);
                }
            }
            HEADERS => match self.reqs.get_mut(&f.stream) {
                None => {
                    self.order.push(f.stream);
                    self.stream_windows
                        .insert(f.stream, self.peer_initial_window);
                    self.reqs.insert(
                        f.stream,
                        Req {
                            stream: f.stream,
                            fields: f.fields.clone(),
                            end: f.has(END_STREAM),
                            ..Req::default()
                        },
                    );
                }
                // Trailers.
                Some(r) => r.end = true,
            },
            DATA => {
                if let Some(r) = self.reqs.get_mut(&f.stream) {
                    r.body.extend_from_slice(f.data());
                    r.frames.push(f.payload.len());
                    r.end |= f.has(END_STREAM);
                }
                let n = f.payload.len() as u32;
                if self.auto_window && n > 0 {
                    let mut out = window_update(0, n);
                    if !f.has(END_STREAM) {
                        out.extend(window_update(f.stream, n));
                    }
                    self.try_send(&out).await;
                }
            }
            RST_STREAM => self.resets.push((f.stream, f.code())),
            GOAWAY => self.goaways.push((f.last_stream(), f.code())),
            _ => {}
        }
    }

    /// The next frame; panics on close or after STEP.
    async fn next(&mut self, what: &str) -> Frame {
        match self.read(STEP).await {
            Read::Frame(f) => f,
            Read::Closed => panic!("closed waiting for {what}; {}", self.history()),
            Read::Quiet => panic!("nothing in time waiting for {what}; {}", self.history()),
        }
    }

    /// Reads until `done` holds.
    async fn wait_until(&mut self, what: &str, done: impl Fn(&Conn) -> bool) {
        while !done(self) {
            self.next(what).await;
        }
    }

    /// Reads until the connection closes (within STEP).
    async fn wait_closed(&mut self, what: &str) {
        loop {
            match self.read(STEP).await {
                Read::Frame(_) => {}
                Read::Closed => return,
                Read::Quiet => panic!("{what}: connection not closed; {}", self.history()),
            }
        }
    }

    /// Reads Sluice's preface and first SETTINGS, sends this side's SETTINGS (`params`) and the
    /// ACK of Sluice's.
    async fn handshake(&mut self, params: &[(u16, u32)]) -> Frame {
        let preface = self.take_bytes(PREFACE.len()).await;
        assert_eq!(preface, PREFACE, "the client connection preface");
        let first = self.next("Sluice's SETTINGS").await;
        assert!(
            first.ty == SETTINGS && !first.has(ACK) && first.stream == 0,
            "the frame after the preface is not SETTINGS: {}",
            first.describe()
        );
        self.send(&cat(&[settings(params), settings_ack()])).await;
        first
    }

    /// The next request whose head came (its body may still be on its way).
    async fn head(&mut self) -> Req {
        loop {
            let found = self
                .order
                .iter()
                .copied()
                .find(|id| !self.heads_taken.contains(id));
            if let Some(id) = found {
                self.heads_taken.insert(id);
                return self.reqs[&id].clone();
            }
            self.next("a request head").await;
        }
    }

    /// The next whole request (END_STREAM received).
    async fn request(&mut self) -> Req {
        loop {
            let found = self
                .order
                .iter()
                .copied()
                .find(|id| self.reqs[id].end && !self.reqs_taken.contains(id));
            if let Some(id) = found {
                self.heads_taken.insert(id);
                self.reqs_taken.insert(id);
                return self.reqs[&id].clone();
            }
            self.next("a request").await;
        }
    }

    /// Reads until Sluice resets `stream` (or sends GOAWAY); the RST_STREAM's code, `None` for a
    /// GOAWAY.
    async fn reset_of(&mut self, stream: u32) -> Option<u32> {
        loop {
            if let Some(&(_, code)) = self.resets.iter().find(|(s, _)| *s == stream) {
                return Some(code);
            }
            if !self.goaways.is_empty() {
                return None;
            }
            self.next(&format!("RST_STREAM on stream {stream}")).await;
        }
    }

    async fn send_head(&mut self, stream: u32, status: u16, extra: &[(&str, &str)], end: bool) {
        self.send(&headers(stream, &response_block(status, extra), end))
            .await;
    }

    /// Sends `body` on `stream` in DATA frames of at most `chunk` bytes, within the windows
    /// Sluice gave (reading its WINDOW_UPDATEs while blocked); END_STREAM on the last if `end`.
    async fn send_data(&mut self, stream: u32, body: &[u8], chunk: usize, end: bool) {
        let mut rest = body;
        if rest.is_empty() && end {
            self.send(&data(stream, &[], true)).await;
        }
        while !rest.is_empty() {
            let stream_window = self.stream_windows.get(&stream).copied().unwrap_or(0);
            let window = self.conn_window.min(stream_window);
            if window <= 0 {
                match self.read(STEP).await {
                    Read::Frame(_) => continue,
                    Read::Closed => panic!("closed while sending DATA; {}", self.history()),
                    Read::Quiet => panic!(
                        "no window to send the rest ({} bytes) in time: connection window {}, \
                         stream window {stream_window}; {}",
                        rest.len(),
                        self.conn_window,
                        self.history()
                    ),
                }
            }
            let n = rest
                .len()
                .min(window as usize)
                .min(chunk)
                .min(self.peer_max_frame);
            let (now, later) = rest.split_at(n);
            self.conn_window -= n as i64;
            *self.stream_windows.get_mut(&stream).unwrap() -= n as i64;
            self.send(&data(stream, now, end && later.is_empty())).await;
            rest = later;
        }
    }

    async fn send_trailers(&mut self, stream: u32, trailers: &[(&str, &str)]) {
        self.send(&headers(stream, &block(trailers), true)).await;
    }

    /// A whole response: `status`, `extra` headers, `body` (none: the head ends the stream).
    async fn respond(&mut self, stream: u32, status: u16, extra: &[(&str, &str)], body: &[u8]) {
        self.send_head(stream, status, extra, body.is_empty()).await;
        if !body.is_empty() {
            self.send_data(stream, body, 16_384, true).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 downstream client, for exact request bytes and cut responses.
// ---------------------------------------------------------------------------------------------

struct H1Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct H1Resp {
    status: u16,
    /// Interim (1xx) statuses that came first.
    interim: Vec<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    /// The body came whole (its length, the last chunk, or the close that delimits it).
    complete: bool,
}

impl H1Resp {
    fn header(&self, name: &str) -> Option<&str> {
        field_value(&self.headers, name)
    }
}

impl H1Raw {
    async fn connect(addr: SocketAddr) -> H1Raw {
        let s = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        s.set_nodelay(true).unwrap();
        H1Raw { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.s.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Reads more; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut tmp = vec![0u8; 65536];
        match tokio::time::timeout(STEP, self.s.read(&mut tmp)).await {
            Err(_) => panic!(
                "downstream: nothing more in time after {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Some(String::from_utf8_lossy(&line[..p]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn fields(&mut self) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await?;
            if l.is_empty() {
                return Some(out);
            }
            let (n, v) = l.split_once(':').expect("a header line");
            out.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }

    /// One response; interim ones are noted and skipped.
    async fn response(&mut self) -> H1Resp {
        let mut interim = Vec::new();
        loop {
            let status_line = self
                .line()
                .await
                .expect("a response (the connection closed first)");
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
            let headers = self.fields().await.expect("a whole response head");
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let mut r = H1Resp {
                status,
                interim,
                headers: headers.clone(),
                body: Vec::new(),
                trailers: Vec::new(),
                complete: false,
            };
            if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                self.chunked(&mut r).await;
            } else if let Some(n) = get("content-length") {
                let n: usize = n.parse().unwrap();
                while self.buf.len() < n && self.fill().await {}
                let k = n.min(self.buf.len());
                r.body = self.buf.drain(..k).collect();
                r.complete = k == n;
            } else if status == 204 || status == 304 {
                r.complete = true;
            } else {
                while self.fill().await {}
                r.body = std::mem::take(&mut self.buf);
                r.complete = true;
            }
            return r;
        }
    }

    async fn chunked(&mut self, r: &mut H1Resp) {
        loop {
            let Some(line) = self.line().await else {
                return;
            };
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size: {line:?}"));
            if size == 0 {
                if let Some(t) = self.fields().await {
                    r.trailers = t;
                    r.complete = true;
                }
                return;
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await {
                    let k = size.min(self.buf.len());
                    r.body.extend(self.buf.drain(..k));
                    return;
                }
            }
            r.body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

/// One request on a new downstream connection.
async fn h1_exchange(addr: SocketAddr, request: &[u8]) -> H1Resp {
    let mut c = H1Raw::connect(addr).await;
    c.send(request).await;
    c.response().await
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// 1. The connection preface, SETTINGS and PING.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn preface_settings_without_push_then_acks_and_ping_answers() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/preface")).await });
        let mut c = up.accept().await;
        let preface = c.take_bytes(PREFACE.len()).await;
        assert_eq!(preface, PREFACE, "the client connection preface");
        let first = c.next("Sluice's SETTINGS").await;
        assert!(
            first.ty == SETTINGS && !first.has(ACK) && first.stream == 0,
            "the first frame after the preface: {}",
            first.describe()
        );
        let params = settings_params(&first.payload);
        assert_eq!(
            params.get(&ENABLE_PUSH),
            Some(&0),
            "SETTINGS_ENABLE_PUSH=0 in {params:?}"
        );
        if let Some(w) = params.get(&INITIAL_WINDOW_SIZE) {
            assert!(*w <= MAX_WINDOW, "{params:?}");
        }
        if let Some(m) = params.get(&MAX_FRAME_SIZE) {
            assert!((16_384..=16_777_215).contains(m), "{params:?}");
        }

        // The server's SETTINGS, its ACK of Sluice's, and a PING: Sluice acknowledges the
        // SETTINGS and answers the PING with the same payload.
        c.send(&cat(&[
            settings(&[(MAX_CONCURRENT_STREAMS, 100), (HEADER_TABLE_SIZE, 4096)]),
            settings_ack(),
            ping(*b"sluice?!"),
        ]))
        .await;
        c.wait_until("SETTINGS ACK and PING ACK", |c| {
            c.settings_acked && c.ping_acks.iter().any(|p| p == b"sluice?!")
        })
        .await;

        let req = c.request().await;
        assert_eq!(req.path(), "/preface");
        c.respond(req.stream, 200, &[], b"hello").await;
        let r = joined("GET /preface", client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");

        // A later PING on the established connection is answered too.
        c.send(&ping(*b"again!!!")).await;
        c.wait_until("the second PING ACK", |c| {
            c.ping_acks.iter().any(|p| p == b"again!!!")
        })
        .await;
        assert_eq!(c.settings_frames, 1, "{}", c.history());
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. The request head.
// ---------------------------------------------------------------------------------------------

/// Checks an HTTP/2 request head: the four pseudo-header fields, each once, before any other;
/// lowercase names; no connection-specific field (RFC 9113 §8.2.2, §8.3.1).
fn check_request_head(req: &Req, method: &str, path: &str) {
    let fields = &req.fields;
    let pseudo: Vec<&str> = fields
        .iter()
        .take_while(|(n, _)| n.starts_with(':'))
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        fields[pseudo.len()..]
            .iter()
            .all(|(n, _)| !n.starts_with(':')),
        "pseudo-header fields after regular ones: {fields:?}"
    );
    let mut sorted = pseudo.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [":authority", ":method", ":path", ":scheme"],
        "pseudo-header fields: {fields:?}"
    );
    assert_eq!(req.field(":method"), Some(method), "{fields:?}");
    assert_eq!(req.field(":scheme"), Some("http"), "{fields:?}");
    assert_eq!(req.field(":authority"), Some("example.com"), "{fields:?}");
    assert_eq!(req.field(":path"), Some(path), "{fields:?}");
    for (n, v) in fields {
        assert!(
            !n.bytes().any(|b| b.is_ascii_uppercase()),
            "uppercase name {n:?}: {fields:?}"
        );
        let forbidden = matches!(
            n.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) || (n == "te" && v != "trailers");
        assert!(
            !forbidden,
            "connection-specific field {n}: {v} sent upstream: {fields:?}"
        );
    }
}

#[tokio::test]
async fn request_heads_have_pseudo_headers_first_and_no_connection_headers() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move {
            let mut d = H1Raw::connect(addr).await;
            let mut out = Vec::new();
            d.send(
                b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n\
                  Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n\
                  TE: trailers\r\nX-Custom: yes\r\n\r\n",
            )
            .await;
            out.push(d.response().await);
            d.send(
                b"POST /upload HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n\
                  Transfer-Encoding: chunked\r\nTE: gzip\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
            .await;
            out.push(d.response().await);
            out
        });
        let mut c = up.accept_with(&[]).await;

        let r = c.request().await;
        check_request_head(&r, "GET", "/path?q=1");
        assert_eq!(r.field("x-custom"), Some("yes"), "{:?}", r.fields);
        assert!(r.body.is_empty() && r.frames.is_empty(), "{r:?}");
        c.respond(r.stream, 200, &[], b"one").await;

        let r = c.request().await;
        check_request_head(&r, "POST", "/upload");
        assert_eq!(r.body, b"hello world");
        c.respond(r.stream, 200, &[], b"two").await;

        let got = joined("the two requests", client).await;
        let bodies: Vec<&[u8]> = got.iter().map(|r| r.body.as_slice()).collect();
        assert_eq!(bodies, [&b"one"[..], b"two"]);
        assert!(got.iter().all(|r| r.status == 200));
        assert_eq!(up.connections(), 1);
    })
    .await
}

#[tokio::test]
async fn a_second_te_field_other_than_trailers_is_not_sent_upstream() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        // Two TE fields, `trailers` first: `gzip` must not reach an HTTP/2 upstream either
        // (RFC 9113 §8.2.2).
        let client = tokio::spawn(async move {
            h1_exchange(
                addr,
                b"GET /two-te HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\nTE: gzip\r\n\r\n",
            )
            .await
        });
        let mut c = up.accept_with(&[]).await;
        let r = c.request().await;
        c.respond(r.stream, 200, &[], b"ok").await;
        assert_eq!(joined("GET /two-te", client).await.status, 200);
        check_request_head(&r, "GET", "/two-te");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Interim responses.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn interim_responses_before_the_final_one_are_skipped() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/early-hints")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.send_head(
            req.stream,
            103,
            &[("link", "</style.css>; rel=preload; as=style")],
            false,
        )
        .await;
        c.send_head(req.stream, 100, &[], false).await;
        c.send_head(req.stream, 200, &[("x-final", "yes")], false)
            .await;
        c.send_data(req.stream, b"final body", 16_384, true).await;
        let r = joined("GET /early-hints", client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-final"), Some("yes"), "{r:?}");
        assert_eq!(r.body, b"final body");
        assert!(r.complete, "{r:?}");
        println!("interim responses seen downstream: {:?}", r.interim);

        // An h2 downstream too.
        let mut tx = h2_client(addr).await;
        let client = tokio::spawn(async move {
            let req = Request::get("http://example.com/early-hints-h2")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.send_head(req.stream, 103, &[("link", "</a.js>; rel=preload")], false)
            .await;
        c.send_head(req.stream, 200, &[], false).await;
        c.send_data(req.stream, b"h2 final", 16_384, true).await;
        let (status, body) = joined("GET /early-hints-h2", client).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"h2 final");
    })
    .await
}

/// What [`on_same_conn`] saw first.
enum Next {
    Req(Req),
    NewConnection,
}

/// The next request (or request head) on `c`; fails if Sluice opens a new upstream connection
/// instead.
async fn on_same_conn(c: &mut Conn, up: &mut RawUpstream, head_only: bool) -> Req {
    let next = tokio::select! {
        r = async {
            if head_only {
                c.head().await
            } else {
                c.request().await
            }
        } => Next::Req(r),
        _ = up.conns.recv() => Next::NewConnection,
    };
    match next {
        Next::Req(r) => r,
        Next::NewConnection => panic!(
            "Sluice opened a new upstream connection instead of using connection {}; {}",
            c.id,
            c.history()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Response bodies: many DATA frames, trailers, more than the windows.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_in_many_data_frames_and_its_trailers_reach_the_downstream() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let body = pattern(5000);
        let trailers = [("grpc-status", "0"), ("x-checksum", "5000")];

        // h2 downstream: the trailers come as trailers.
        let mut tx = h2_client(addr).await;
        let client = tokio::spawn(async move {
            let req = Request::get("http://example.com/trailers")
                .header("te", "trailers")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            let status = resp.status();
            let got = resp.into_body().collect().await.unwrap();
            (status, got.trailers().cloned(), got.to_bytes())
        });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.send_head(req.stream, 200, &[("content-type", "text/plain")], false)
            .await;
        // 50 DATA frames of 100 bytes.
        c.send_data(req.stream, &body, 100, false).await;
        c.send_trailers(req.stream, &trailers).await;
        let (status, got_trailers, got) = joined("GET /trailers (h2)", client).await;
        assert_eq!(status, 200);
        assert_eq!(&got[..], &body[..]);
        let t = got_trailers.expect("response trailers downstream (h2)");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-checksum"], "5000");

        // HTTP/1.1 downstream that sends `TE: trailers`: chunked, the trailers after the last
        // chunk.
        let client = tokio::spawn(async move {
            h1_exchange(
                addr,
                b"GET /trailers-h1 HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\n\r\n",
            )
            .await
        });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.send_head(req.stream, 200, &[], false).await;
        c.send_data(req.stream, &body, 100, false).await;
        c.send_trailers(req.stream, &trailers).await;
        let r = joined("GET /trailers-h1", client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
        assert!(r.complete, "{r:?}");
        assert_eq!(r.body, body);
        assert!(
            r.trailers
                .iter()
                .any(|(n, v)| n == "x-checksum" && v == "5000"),
            "HTTP/1.1 trailers: {:?}",
            r.trailers
        );
    })
    .await
}

#[tokio::test]
async fn a_response_larger_than_the_flow_control_windows_is_delivered_whole() {
    within(async {
        const SIZE: usize = 8 * 1024 * 1024;
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move {
            let mut h = H1::connect(addr).await;
            h.get("example.com", "/big").await
        });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        let stream_window = c.peer_initial_window;
        let body = pattern(SIZE);
        c.send_head(
            req.stream,
            200,
            &[("content-length", &SIZE.to_string())],
            false,
        )
        .await;
        // Within the windows Sluice gives: 8 MiB needs its WINDOW_UPDATEs.
        c.send_data(req.stream, &body, 16_384, true).await;
        let r = joined("GET /big", client).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), SIZE);
        assert!(r.body.as_bytes() == body, "the body arrived intact");
        let on_stream: u64 = c
            .window_updates
            .iter()
            .filter(|(s, _)| *s == req.stream)
            .map(|(_, i)| u64::from(*i))
            .sum();
        let on_conn: Vec<u32> = c
            .window_updates
            .iter()
            .filter(|(s, _)| *s == 0)
            .map(|(_, i)| *i)
            .collect();
        println!(
            "initial stream window {stream_window}; stream WINDOW_UPDATEs total {on_stream}; \
             connection WINDOW_UPDATEs {on_conn:?}"
        );
        assert!(on_stream > 0, "no stream WINDOW_UPDATE; {}", c.history());
        assert!(on_conn.len() > 1, "one connection WINDOW_UPDATE only");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. The request body within the server's windows.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_body_keeps_within_a_small_initial_window() {
    within(async {
        const WINDOW: u32 = 100;
        let (_app, addr, mut up) = setup("").await;
        // A first request: the connection is up and the upstream's SETTINGS acknowledged.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/settle")).await });
        let mut c = up.accept_with(&[(INITIAL_WINDOW_SIZE, WINDOW)]).await;
        let req = c.request().await;
        c.respond(req.stream, 200, &[], b"ok").await;
        assert_eq!(joined("GET /settle", client).await.status, 200);
        c.wait_until("the SETTINGS ACK", |c| c.settings_acked).await;

        c.auto_window = false;
        let body = pattern(10 * 1024);
        let mut post = format!(
            "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        post.extend_from_slice(&body);
        let client = tokio::spawn(async move { h1_exchange(addr, &post).await });
        let head = on_same_conn(&mut c, &mut up, true).await;
        let id = head.stream;
        let (mut stream_window, mut conn_window) = (i64::from(WINDOW), 65_535i64);
        let (mut got, mut frames, mut ended) = (Vec::new(), 0, head.end);
        while !ended {
            let f = c.next("the request body").await;
            if f.stream != id {
                continue;
            }
            match f.ty {
                DATA => {
                    let n = f.payload.len() as i64;
                    assert!(
                        n <= stream_window && n <= conn_window && n <= 16_384,
                        "DATA of {n} bytes with windows stream {stream_window} connection \
                         {conn_window}; {}",
                        c.history()
                    );
                    stream_window -= n;
                    conn_window -= n;
                    got.extend_from_slice(f.data());
                    frames += 1;
                    ended = f.has(END_STREAM);
                    let mut grant = Vec::new();
                    if !ended && stream_window < i64::from(WINDOW) {
                        grant.extend(window_update(id, WINDOW - stream_window as u32));
                        stream_window = i64::from(WINDOW);
                    }
                    if n > 0 {
                        grant.extend(window_update(0, n as u32));
                        conn_window += n;
                    }
                    c.send(&grant).await;
                }
                HEADERS => ended = true,
                RST_STREAM => panic!("the request was reset; {}", c.history()),
                _ => {}
            }
        }
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the body arrived intact");
        assert!(
            frames >= 10 * 1024 / WINDOW as usize,
            "{frames} DATA frames"
        );
        c.respond(id, 200, &[], b"got it").await;
        let r = joined("POST /upload", client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, b"got it");
        println!("{frames} DATA frames for {} bytes", body.len());
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 6. SETTINGS_MAX_CONCURRENT_STREAMS.
// ---------------------------------------------------------------------------------------------

/// Serves a connection with SETTINGS_MAX_CONCURRENT_STREAMS=1, answering each request 40 ms
/// after it came, in order; notes the most streams Sluice had open at once.
async fn serve_one_at_a_time(mut c: Conn, max_open: Arc<AtomicUsize>, served: Arc<AtomicUsize>) {
    c.handshake(&[(MAX_CONCURRENT_STREAMS, 1)]).await;
    let mut answered: HashSet<u32> = HashSet::new();
    let mut queued: HashSet<u32> = HashSet::new();
    let mut queue: VecDeque<(u32, Instant)> = VecDeque::new();
    loop {
        if let Read::Closed = c.read(Duration::from_millis(5)).await {
            return;
        }
        for id in c.order.clone() {
            if c.reqs[&id].end && queued.insert(id) {
                queue.push_back((id, Instant::now()));
            }
        }
        let reset: HashSet<u32> = c.resets.iter().map(|r| r.0).collect();
        let open = c
            .order
            .iter()
            .filter(|id| !answered.contains(id) && !reset.contains(id))
            .count();
        if open > 1 {
            println!(
                "{open} streams open at once on connection {}: {:?}",
                c.id, c.order
            );
        }
        max_open.fetch_max(open, Ordering::SeqCst);
        if let Some(&(id, since)) = queue.front() {
            if since.elapsed() >= Duration::from_millis(40) {
                queue.pop_front();
                answered.insert(id);
                let body = format!("connection {} stream {id}", c.id);
                c.respond(id, 200, &[], body.as_bytes()).await;
                served.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test]
async fn the_upstreams_max_concurrent_streams_of_one_is_respected() {
    within(async {
        let (_app, addr, up) = setup("").await;
        let (max_open, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let accepted = up.accepted.clone();
        let (m, s) = (max_open.clone(), served.clone());
        let mut conns = up.conns;
        tokio::spawn(async move {
            while let Some(c) = conns.recv().await {
                tokio::spawn(serve_one_at_a_time(c, m.clone(), s.clone()));
            }
        });
        // One request first: the upstream's SETTINGS are known.
        let r = H1::connect(addr).await.get("example.com", "/first").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                tokio::spawn(async move {
                    let mut h = H1::connect(addr).await;
                    h.get("example.com", &format!("/c{i}")).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let r = joined(&format!("GET /c{i}"), t).await;
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
            println!("/c{i}: {}", r.body);
        }
        assert_eq!(served.load(Ordering::SeqCst), 5);
        assert_eq!(
            max_open.load(Ordering::SeqCst),
            1,
            "streams open at once on one upstream connection"
        );
        println!("upstream connections: {}", accepted.load(Ordering::SeqCst));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 7. RST_STREAM from the upstream.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_stream_is_retried_with_retry_on_refused_stream() {
    within(async {
        let (_app, addr, mut up) = setup(RETRY_REFUSED).await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/refused-once")).await });
        let mut c = up.accept_with(&[]).await;
        let first = c.request().await;
        c.send(&rst(first.stream, REFUSED_STREAM)).await;
        // The retry, on this connection or a new one.
        let retry = tokio::select! {
            r = c.request() => Ok(r),
            n = up.conns.recv() => Err(n.unwrap()),
        };
        let (mut other, again) = match retry {
            Ok(r) => (None, r),
            Err(mut n) => {
                n.handshake(&[]).await;
                let r = n.request().await;
                (Some(n), r)
            }
        };
        assert_eq!(again.path(), "/refused-once");
        println!(
            "retried on {} connection (stream {})",
            if other.is_some() { "a new" } else { "the same" },
            again.stream
        );
        let target = other.as_mut().unwrap_or(&mut c);
        target.respond(again.stream, 200, &[], b"second try").await;
        let r = joined("GET /refused-once", client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, b"second try");
    })
    .await
}

#[tokio::test]
async fn a_reset_before_the_response_is_a_503_remote_reset_and_the_connection_serves_on() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/reset-early")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.send(&rst(req.stream, INTERNAL_ERROR)).await;
        let r = joined("GET /reset-early", client).await;
        // Envoy's reset reason for a stream the peer reset (flag UR), not a connection that
        // closed.
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            r.body.ends_with(b"reset reason: remote reset"),
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );

        let client = tokio::spawn(async move { h1_exchange(addr, &get("/after-reset")).await });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.respond(req.stream, 200, &[], b"fine").await;
        let r = joined("GET /after-reset", client).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"fine"[..]));
        assert_eq!(up.connections(), 1);
    })
    .await
}

#[tokio::test]
async fn a_reset_mid_body_cuts_the_response_and_the_connection_serves_on() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        // HTTP/1.1 downstream: the chunked response ends without its last chunk.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/cut")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.send_head(req.stream, 200, &[], false).await;
        c.send_data(req.stream, &pattern(1000), 16_384, false).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(&rst(req.stream, INTERNAL_ERROR)).await;
        let r = joined("GET /cut", client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            !r.complete,
            "the cut response reached the HTTP/1.1 client as whole: {r:?}"
        );
        assert!(r.body.len() <= 1000 && r.body == pattern(r.body.len()));

        // h2 downstream: the stream is reset.
        let mut tx = h2_client(addr).await;
        let client = tokio::spawn(async move {
            let req = Request::get("http://example.com/cut-h2")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await;
            (
                status,
                body.map(|b| b.to_bytes().len()).map_err(|e| e.to_string()),
            )
        });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.send_head(req.stream, 200, &[], false).await;
        c.send_data(req.stream, &pattern(1000), 16_384, false).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(&rst(req.stream, INTERNAL_ERROR)).await;
        let (status, body) = joined("GET /cut-h2", client).await;
        assert_eq!(status, 200);
        assert!(body.is_err(), "the h2 body ended cleanly: {body:?}");
        println!("h2 downstream body: {body:?}");

        // The upstream connection serves on.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/after")).await });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.respond(req.stream, 200, &[], b"fine").await;
        let r = joined("GET /after", client).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"fine"[..]));
        assert_eq!(up.connections(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 8. GOAWAY with a stream past its last stream id.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_past_the_goaway_is_retried_on_a_new_connection() {
    within(async {
        let (_app, addr, mut up) = setup(RETRY_REFUSED).await;
        let first = tokio::spawn(async move { h1_exchange(addr, &get("/first")).await });
        let mut a = up.accept_with(&[]).await;
        let r1 = a.request().await;
        let second = tokio::spawn(async move { h1_exchange(addr, &get("/second")).await });
        let r2 = a.request().await;
        assert_eq!((r1.path(), r2.path()), ("/first", "/second"));
        assert!(r2.stream > r1.stream);
        // Stream 1 will be processed, stream 3 will not.
        a.send(&goaway(r1.stream, NO_ERROR)).await;
        a.respond(r1.stream, 200, &[], b"first, before the GOAWAY")
            .await;
        let r = joined("GET /first", first).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, b"first, before the GOAWAY");

        let mut b = up.accept_with(&[]).await;
        let again = b.request().await;
        assert_eq!(again.path(), "/second");
        b.respond(again.stream, 200, &[], b"second, on a new connection")
            .await;
        let r = joined("GET /second", second).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, b"second, on a new connection");
        assert_eq!(up.connections(), 2);

        // The old connection, with no stream left, is closed.
        a.wait_closed("the connection after its GOAWAY").await;
    })
    .await
}

#[tokio::test]
async fn without_a_retry_policy_a_stream_past_the_goaway_fails_fast() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/first")).await });
        let mut a = up.accept_with(&[]).await;
        let r1 = a.request().await;
        a.respond(r1.stream, 200, &[], b"first").await;
        assert_eq!(joined("GET /first", client).await.status, 200);

        let client = tokio::spawn(async move { h1_exchange(addr, &get("/second")).await });
        let r2 = on_same_conn(&mut a, &mut up, false).await;
        let t = Instant::now();
        a.send(&goaway(r1.stream, NO_ERROR)).await;
        let r = joined("GET /second", client).await;
        println!("without retries: {} after {:?}", r.status, t.elapsed());
        assert_eq!(r.status, 503, "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(r2.stream > r1.stream);

        // The next request: a new connection.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/third")).await });
        let mut b = up.accept_with(&[]).await;
        let r3 = b.request().await;
        b.respond(r3.stream, 200, &[], b"third").await;
        assert_eq!(joined("GET /third", client).await.status, 200);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 9. Malformed responses.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_responses_are_502_protocol_errors_and_the_connection_serves_on() {
    type Build = fn(u32) -> Vec<u8>;
    let cases: [(&str, Build); 11] = [
        ("no :status", |s| {
            cat(&[
                headers(s, &block(&[("content-type", "text/plain")]), false),
                data(s, b"x", true),
            ])
        }),
        ("an uppercase field name", |s| {
            cat(&[
                headers(s, &response_block(200, &[("X-Upper", "1")]), false),
                data(s, b"x", true),
            ])
        }),
        ("a connection field", |s| {
            cat(&[
                headers(s, &response_block(200, &[("connection", "close")]), false),
                data(s, b"x", true),
            ])
        }),
        ("a keep-alive field", |s| {
            cat(&[
                headers(
                    s,
                    &response_block(200, &[("keep-alive", "timeout=5")]),
                    false,
                ),
                data(s, b"x", true),
            ])
        }),
        ("a transfer-encoding field", |s| {
            cat(&[
                headers(
                    s,
                    &response_block(200, &[("transfer-encoding", "chunked")]),
                    false,
                ),
                data(s, b"x", true),
            ])
        }),
        (":status after a regular field", |s| {
            cat(&[
                headers(s, &block(&[("x-a", "1"), (":status", "200")]), false),
                data(s, b"x", true),
            ])
        }),
        ("a request pseudo-header field", |s| {
            cat(&[
                headers(s, &block(&[(":status", "200"), (":path", "/")]), false),
                data(s, b"x", true),
            ])
        }),
        ("two :status fields", |s| {
            cat(&[
                headers(s, &block(&[(":status", "200"), (":status", "204")]), false),
                data(s, b"x", true),
            ])
        }),
        ("an invalid :status", |s| {
            cat(&[
                headers(s, &block(&[(":status", "2x0")]), false),
                data(s, b"x", true),
            ])
        }),
        ("an interim response that ends the stream", |s| {
            headers(s, &response_block(100, &[]), true)
        }),
        // HTTP/2 has no 101 (RFC 9113 §8.6).
        ("a 101", |s| {
            cat(&[
                headers(s, &response_block(101, &[("upgrade", "websocket")]), false),
                data(s, b"x", true),
            ])
        }),
    ];
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/good")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.respond(req.stream, 200, &[], b"good").await;
        assert_eq!(joined("GET /good", client).await.status, 200);

        let mut failures = Vec::new();
        for (i, (what, build)) in cases.iter().enumerate() {
            let path = format!("/bad{i}");
            let client = tokio::spawn(async move { h1_exchange(addr, &get(&path)).await });
            let req = on_same_conn(&mut c, &mut up, false).await;
            c.send(&build(req.stream)).await;
            let r = joined(what, client).await;
            let reset = c.reset_of(req.stream).await;
            println!(
                "{what}: downstream {}, upstream stream {}: {}",
                r.status,
                req.stream,
                reset.map_or("GOAWAY".into(), code_name)
            );
            if r.status != 502 || !r.body.ends_with(b"reset reason: protocol error") {
                failures.push(format!(
                    "{what}: downstream got {} {:?} where Envoy's 502 for a protocol error was due",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
            if reset != Some(PROTOCOL_ERROR) {
                failures.push(format!(
                    "{what}: upstream stream {} got {:?} where RST_STREAM(PROTOCOL_ERROR) was due",
                    req.stream,
                    reset.map(code_name)
                ));
            }
            if reset.is_none() {
                break;
            }
        }
        assert!(failures.is_empty(), "{failures:#?}\n{}", c.history());

        // The connection serves on.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/good-again")).await });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.respond(req.stream, 200, &[], b"good again").await;
        let r = joined("GET /good-again", client).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"good again"[..]));
        assert_eq!(up.connections(), 1);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 10. PUSH_PROMISE with push disabled.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_push_promise_is_a_connection_error_and_the_next_request_gets_a_new_connection() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/pushy")).await });
        let mut a = up.accept_with(&[]).await;
        let req = a.request().await;
        let promised = block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/pushed"),
        ]);
        a.send(&push_promise(req.stream, 2, &promised)).await;
        a.wait_closed("after PUSH_PROMISE").await;
        assert_eq!(
            a.goaways.first().map(|g| g.1),
            Some(PROTOCOL_ERROR),
            "GOAWAY(PROTOCOL_ERROR) before the close; {}",
            a.history()
        );
        let r = joined("GET /pushy", client).await;
        // The connection's protocol error is the stream's reset reason, as in Envoy.
        assert_eq!(r.status, 502, "{r:?}");
        assert!(r.body.ends_with(b"reset reason: protocol error"), "{r:?}");

        let client = tokio::spawn(async move { h1_exchange(addr, &get("/after-push")).await });
        let mut b = up.accept_with(&[]).await;
        let req = b.request().await;
        b.respond(req.stream, 200, &[], b"fresh").await;
        let r = joined("GET /after-push", client).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"fresh"[..]));
        assert_eq!(up.connections(), 2);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 11. The downstream goes away.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_downstream_disconnect_cancels_the_upstream_stream() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        // A body-less request waiting for its response.
        let mut d = H1Raw::connect(addr).await;
        d.send(&get("/slow")).await;
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        drop(d);
        let code = c.reset_of(req.stream).await;
        assert_eq!(
            code.map(code_name),
            Some(code_name(CANCEL)),
            "a GET abandoned downstream; {}",
            c.history()
        );

        // A request whose body is still on its way.
        let mut d = H1Raw::connect(addr).await;
        d.send(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await;
        let head = on_same_conn(&mut c, &mut up, true).await;
        let id = head.stream;
        c.wait_until("the first body bytes", |c| c.reqs[&id].body.len() >= 10)
            .await;
        drop(d);
        let code = c.reset_of(id).await;
        assert_eq!(
            code.map(code_name),
            Some(code_name(CANCEL)),
            "a POST cut short downstream; {}",
            c.history()
        );
        assert!(
            !c.reqs[&id].end,
            "a cut request body was ended with END_STREAM; {}",
            c.history()
        );

        // The connection serves on.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/after")).await });
        let req = on_same_conn(&mut c, &mut up, false).await;
        c.respond(req.stream, 200, &[], b"fine").await;
        assert_eq!(joined("GET /after", client).await.status, 200);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 12. The upstream closes the connection.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_close_under_a_pending_request_is_a_prompt_503() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/pending")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        assert_eq!(req.path(), "/pending");
        let t = Instant::now();
        drop(c);
        let r = joined("GET /pending", client).await;
        println!("{} after {:?}", r.status, t.elapsed());
        assert_eq!(r.status, 503, "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        // Mid-body: the response is cut.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/mid-body")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.send_head(req.stream, 200, &[("content-length", "2000")], false)
            .await;
        c.send_data(req.stream, &pattern(500), 16_384, false).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(c);
        let r = joined("GET /mid-body", client).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.complete && r.body.len() <= 500, "{r:?}");

        // The next request: a new connection.
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/next")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.respond(req.stream, 200, &[], b"next").await;
        assert_eq!(joined("GET /next", client).await.status, 200);
        assert_eq!(up.connections(), 3);
    })
    .await
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_without_failing_a_request() {
    within(async {
        let (_app, addr, mut up) = setup("").await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/one")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.respond(req.stream, 200, &[], b"one").await;
        assert_eq!(joined("GET /one", client).await.status, 200);
        // The upstream closes the idle connection (GOAWAY, then FIN).
        c.send(&goaway(req.stream, NO_ERROR)).await;
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let client = tokio::spawn(async move { h1_exchange(addr, &get("/two")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.respond(req.stream, 200, &[], b"two").await;
        let r = joined("GET /two", client).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"two"[..]));

        // Without the GOAWAY: a bare close.
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let client = tokio::spawn(async move { h1_exchange(addr, &get("/three")).await });
        let mut c = up.accept_with(&[]).await;
        let req = c.request().await;
        c.respond(req.stream, 200, &[], b"three").await;
        let r = joined("GET /three", client).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"three"[..]));
        assert_eq!(up.connections(), 3);
    })
    .await
}
