//! Conformance tests for the downstream HTTP/2 server (h2c with prior knowledge), in the style
//! of h2spec: what a client speaking HTTP/2 to a Sluice listener sees, checked against RFC 9113
//! (HTTP/2) and RFC 7541 (HPACK). Most tests write frames to a socket as bytes and parse the
//! server's frames by hand, with a small HPACK decoder of their own (static and dynamic table,
//! Huffman; `support::h2raw`), so they do not depend on the codec under test. A local upstream echoes what it
//! received (headers, trailers and the exact body bytes) or answers with a body of a given size.
//!
//! Where the RFC lets a server choose (a stream error or a connection error, REFUSED_STREAM or
//! PROTOCOL_ERROR), the tests accept each allowed answer. Malformed requests must get a stream
//! error (RST_STREAM(PROTOCOL_ERROR) or a 400) after which the connection serves on; only where
//! the `h2` crate's server closes the connection instead, which RFC 9113 §5.4.1 allows, is a
//! GOAWAY(PROTOCOL_ERROR) accepted too (`Allow::StreamOrConnectionError`).
//!
//! The server on the `h2` crate (kept behind `SLUICE_H2_SERVER=h2` while Sluice's own codec is
//! new) fails ten of these: it answers frame-size, flow-control and HPACK errors with
//! PROTOCOL_ERROR, serves a request with neither `:path` nor `:authority` as `GET /`, drops a
//! pseudo-header in trailers, and keeps a connection that resets streams one write at a time.
//! `errors_end_the_connection_or_stream_whatever_their_code` checks, for any server, that those
//! inputs end the connection (or the stream).
//!
//! Sections: 1. preface and SETTINGS, 2. PING, 3. frame sizes, stream ids and frame-level
//! errors, 4. streams and requests, 5. malformed requests, 6. HPACK, 7. flow control, 8.
//! GOAWAY, idle timeout and drain, 9. rapid reset, 10. nghttp2's clients.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::h2raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the server must stay silent for "sends nothing" checks.
const QUIET: Duration = Duration::from_millis(150);

const AUTHORITY: &str = "h2.test";

fn codes(codes: &[u32]) -> String {
    codes
        .iter()
        .map(|c| code_name(*c))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

/// Cluster options for an h2c upstream.
const H2_UPSTREAM: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

// ---------------------------------------------------------------------------------------------
// The upstream.
// ---------------------------------------------------------------------------------------------

/// An upstream (HTTP/1.1 or h2c) that answers `/size/<n>` with `n` bytes of a known pattern
/// (`pattern(n)`), waits first on a path containing `/delay/<ms>`, and otherwise answers with a
/// description of the request, a blank line, then the exact request body bytes:
///
/// ```text
/// method=POST path=/x version=HTTP/1.1
/// h:<name>=<value>      (one per header)
/// t:<name>=<value>      (one per request trailer)
/// body-len=<n>
///
/// <body bytes>
/// ```
struct Upstream {
    addr: SocketAddr,
    /// The paths of the requests received, in order.
    paths: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn count(&self) -> usize {
        self.paths.lock().unwrap().len()
    }
    fn saw(&self, path: &str) -> bool {
        self.paths.lock().unwrap().iter().any(|p| p == path)
    }
}

async fn upstream() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(seen, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream { addr, paths }
}

/// `n` bytes: `abc...z` repeated.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn answer(seen: Arc<Mutex<Vec<String>>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(path.clone());
    if let Some((_, ms)) = path.split_once("/delay/") {
        let ms: String = ms.chars().take_while(char::is_ascii_digit).collect();
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = path.strip_prefix("/size/") {
        return Response::builder()
            .status(200)
            .body(Full::new(Bytes::from(pattern(n.parse().unwrap()))))
            .unwrap();
    }
    let mut desc = format!(
        "method={} path={} version={:?}\n",
        req.method(),
        path,
        req.version()
    );
    for (k, v) in req.headers() {
        desc.push_str(&format!(
            "h:{k}={}\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let (body, trailers) = match req.into_body().collect().await {
        Ok(c) => {
            let t = c.trailers().cloned();
            (c.to_bytes(), t)
        }
        Err(e) => {
            desc.push_str(&format!("body-error={e}\n"));
            (Bytes::new(), None)
        }
    };
    for (k, v) in trailers.iter().flatten() {
        desc.push_str(&format!(
            "t:{k}={}\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    desc.push_str(&format!("body-len={}\n\n", body.len()));
    let mut out = desc.into_bytes();
    out.extend_from_slice(&body);
    Response::builder()
        .status(200)
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(out)))
        .unwrap()
}

/// An echo answer: the description's lines and the body bytes.
struct Seen {
    desc: String,
    body: Vec<u8>,
}

impl Seen {
    fn parse(resp_body: &[u8]) -> Seen {
        let split = resp_body
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or_else(|| {
                panic!(
                    "no echo description: {:?}",
                    String::from_utf8_lossy(resp_body)
                )
            });
        Seen {
            desc: String::from_utf8_lossy(&resp_body[..split]).into_owned(),
            body: resp_body[split + 2..].to_vec(),
        }
    }
    fn field(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.desc
            .lines()
            .next()?
            .split(' ')
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    }
    fn line(&self, prefix: &str) -> Option<&str> {
        self.desc.lines().find_map(|l| l.strip_prefix(prefix))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.line(&format!("h:{name}="))
    }
    fn trailer(&self, name: &str) -> Option<&str> {
        self.line(&format!("t:{name}="))
    }
}

// ---------------------------------------------------------------------------------------------
// Sluice set-ups.
// ---------------------------------------------------------------------------------------------

/// An HTTP listener `name` (also its stat prefix) routing everything to cluster `name`, with
/// extra HTTP filters (before the router) and extra HCM fields (each line indented by 10
/// spaces).
fn listener(name: &str, filters: &str, hcm_extra: &str) -> String {
    http_listener(name, &all_to(name), filters).replace(
        &format!("          stat_prefix: {name}\n"),
        &format!("          stat_prefix: {name}\n{hcm_extra}"),
    )
}

/// Sluice with one listener `name` (see `listener`) and cluster `name` (with `cluster_extra`)
/// pointing at a fresh upstream.
async fn setup_with(
    name: &str,
    filters: &str,
    hcm_extra: &str,
    cluster_extra: &str,
) -> (sluice::app::App, SocketAddr, Upstream) {
    let up = upstream().await;
    let app = sluice(&bootstrap(
        &listener(name, filters, hcm_extra),
        &cluster(name, &[up.addr], cluster_extra),
    ))
    .await;
    let addr = app.listener_address(name).unwrap();
    (app, addr, up)
}

async fn setup(name: &str, hcm_extra: &str) -> (sluice::app::App, SocketAddr, Upstream) {
    setup_with(name, "", hcm_extra, "").await
}

// ---------------------------------------------------------------------------------------------
// HPACK, written by hand (RFC 7541): the fields only these tests send (the rest, and the
// frames, are in `support::h2raw`).
// ---------------------------------------------------------------------------------------------

/// A string literal with Huffman coding.
fn hpack_huffman_str(s: &[u8]) -> Vec<u8> {
    let coded = huffman_encode(s);
    let mut out = hpack_int(0x80, 7, coded.len());
    out.extend_from_slice(&coded);
    out
}

/// A literal field without indexing, with the name of static table entry `index`.
fn lit_name(index: usize, value: &str) -> Vec<u8> {
    cat(&[hpack_int(0x00, 4, index), hpack_str(value.as_bytes())])
}

/// A literal field with incremental indexing, with a literal name (§6.2.1).
fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
    cat(&[
        vec![0x40],
        hpack_str(name.as_bytes()),
        hpack_str(value.as_bytes()),
    ])
}

/// An indexed field (§6.1).
fn indexed(index: usize) -> Vec<u8> {
    hpack_int(0x80, 7, index)
}

/// A GET for `path`: `:method GET` and `:scheme http` from the static table, `:path` and
/// `:authority` as literals with indexed names.
fn get(path: &str) -> Vec<u8> {
    cat(&[
        indexed(2), // :method GET
        indexed(6), // :scheme http
        lit_name(4, path),
        lit_name(1, AUTHORITY),
    ])
}

/// A request's header block, all literals: the four pseudo-headers then `extra`.
fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", AUTHORITY),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/2 client connection.
// ---------------------------------------------------------------------------------------------

/// How a stream ended.
#[derive(Debug)]
enum Outcome {
    Response(Resp),
    Reset(u32),
}

#[derive(Debug, Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        field_value(&self.headers, name)
    }
    fn seen(&self) -> Seen {
        Seen::parse(&self.body)
    }
}

/// How the server answered a request it must reject.
#[derive(Debug, PartialEq, Eq)]
enum Rejected {
    /// RST_STREAM (or a 4xx response): the connection goes on.
    Stream,
    /// GOAWAY, then the connection closed.
    Connection,
}

struct H2c {
    wire: Wire,
    /// Descriptions of every frame read, for failure messages.
    log: Vec<String>,
    /// Answer the server's PINGs.
    auto_ping: bool,
    /// The parameters of the server's first SETTINGS.
    server_settings: HashMap<u16, u32>,
}

impl H2c {
    /// The server's SETTINGS_MAX_FRAME_SIZE.
    fn max_frame_size(&self) -> usize {
        self.server_settings
            .get(&MAX_FRAME_SIZE)
            .map_or(16_384, |v| *v as usize)
    }

    /// A TCP connection, nothing sent.
    async fn tcp(addr: SocketAddr) -> H2c {
        let s = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        s.set_nodelay(true).unwrap();
        H2c {
            wire: Wire::new(s),
            log: Vec::new(),
            auto_ping: true,
            server_settings: HashMap::new(),
        }
    }

    /// A connection past the preface: the client's preface and empty SETTINGS sent, the
    /// server's SETTINGS (which must come first) read and acknowledged.
    async fn open(addr: SocketAddr) -> H2c {
        H2c::open_with(addr, &[]).await
    }

    /// As `open`, with these SETTINGS parameters.
    async fn open_with(addr: SocketAddr, params: &[(u16, u32)]) -> H2c {
        let mut c = H2c::tcp(addr).await;
        c.send(&cat(&[PREFACE.to_vec(), settings(params)])).await;
        let first = c.next().await;
        assert!(
            first.ty == SETTINGS && !first.has(ACK) && first.stream == 0,
            "the server's first frame is not SETTINGS: {}",
            first.describe()
        );
        c.server_settings = settings_params(&first.payload);
        c.send(&settings_ack()).await;
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.wire.s.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Sends, ignoring errors (the server may have closed already).
    async fn try_send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(STEP, self.wire.s.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    fn history(&self) -> String {
        self.log.join("\n  ")
    }

    /// The next frame within `wait`. Header blocks are decoded (CONTINUATIONs joined); the
    /// server's PINGs are answered and not returned.
    async fn read(&mut self, wait: Duration) -> Read {
        loop {
            let f = match self.wire.read(wait).await {
                Ok(Read::Frame(f)) => f,
                Ok(Read::Closed) => {
                    self.log.push("(closed)".into());
                    return Read::Closed;
                }
                Ok(Read::Quiet) => return Read::Quiet,
                Err(e) => panic!("the server's {e}; after\n  {}", self.history()),
            };
            self.log.push(f.describe());
            if f.ty == PING && !f.has(ACK) && self.auto_ping {
                let mut p = [0u8; 8];
                p.copy_from_slice(&f.payload[..8]);
                self.try_send(&frame(PING, ACK, 0, &p)).await;
                continue;
            }
            return Read::Frame(f);
        }
    }

    /// The next frame; panics on close or after STEP.
    async fn next(&mut self) -> Frame {
        match self.read(STEP).await {
            Read::Frame(f) => f,
            Read::Closed => panic!("connection closed; after\n  {}", self.history()),
            Read::Quiet => panic!("no frame in time; after\n  {}", self.history()),
        }
    }

    /// Frames until one matches `want`.
    async fn until(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            match self.read(STEP).await {
                Read::Frame(f) if want(&f) => return f,
                Read::Frame(_) => {}
                Read::Closed => panic!("closed waiting for {what}; after\n  {}", self.history()),
                Read::Quiet => panic!("no {what} in time; after\n  {}", self.history()),
            }
        }
    }

    /// Asserts the server sends no frame (other than PINGs) for a short while.
    /// Asserts the server sends nothing for a short while but control frames that answer
    /// the client (SETTINGS ACK, WINDOW_UPDATE).
    async fn quiet(&mut self, what: &str) {
        loop {
            match self.read(QUIET).await {
                Read::Quiet => return,
                Read::Frame(f) if f.ty == SETTINGS && f.has(ACK) || f.ty == WINDOW_UPDATE => {}
                Read::Frame(f) => panic!("{what}: the server sent {}", f.describe()),
                Read::Closed => panic!("{what}: the server closed; after\n  {}", self.history()),
            }
        }
    }

    /// Reads until the connection closes; the GOAWAY frames seen on the way.
    async fn goaways_until_closed(&mut self) -> Vec<Frame> {
        let mut goaways = Vec::new();
        loop {
            match self.read(STEP).await {
                Read::Frame(f) if f.ty == GOAWAY => goaways.push(f),
                Read::Frame(_) => {}
                Read::Closed => return goaways,
                Read::Quiet => panic!("connection not closed; after\n  {}", self.history()),
            }
        }
    }

    /// Reads until a GOAWAY, then until the connection closes; the first GOAWAY.
    async fn goaway(&mut self) -> Frame {
        let goaways = self.goaways_until_closed().await;
        match goaways.into_iter().next() {
            Some(g) => g,
            None => panic!(
                "connection closed without a GOAWAY; after\n  {}",
                self.history()
            ),
        }
    }

    /// Asserts a connection error: GOAWAY with one of `want`, then the connection closed.
    async fn connection_error(&mut self, want: &[u32]) {
        let g = self.goaway().await;
        assert!(
            want.contains(&g.code()),
            "GOAWAY({}) where {} was due; after\n  {}",
            code_name(g.code()),
            codes(want),
            self.history()
        );
    }

    /// Asserts a stream error on `stream` (RST_STREAM with one of `want`) or a connection error
    /// (GOAWAY with one of `want`, then closed), which RFC 9113 §5.4.1 allows for any stream
    /// error.
    async fn stream_error(&mut self, stream: u32, want: &[u32]) -> Rejected {
        loop {
            let f = self.next().await;
            if f.ty == RST_STREAM && f.stream == stream || f.ty == GOAWAY {
                println!("stream {stream}: {}", f.describe());
                assert!(
                    want.contains(&f.code()),
                    "{} where {} was due; after\n  {}",
                    f.describe(),
                    codes(want),
                    self.history()
                );
                if f.ty == RST_STREAM {
                    return Rejected::Stream;
                }
                self.goaways_until_closed().await;
                return Rejected::Connection;
            }
            if f.stream == stream && f.has(END_STREAM) && (f.ty == HEADERS || f.ty == DATA) {
                panic!(
                    "stream {stream} was answered and ended where {} was due; after\n  {}",
                    codes(want),
                    self.history()
                );
            }
        }
    }

    /// Reads until each of `streams` has ended (END_STREAM or RST_STREAM), giving back flow
    /// control for what arrives. Panics on GOAWAY or close.
    async fn collect(&mut self, streams: &[u32]) -> HashMap<u32, Outcome> {
        let mut open: HashMap<u32, Resp> = streams.iter().map(|s| (*s, Resp::default())).collect();
        let mut done = HashMap::new();
        while !open.is_empty() {
            let f = self.next().await;
            if f.ty == GOAWAY {
                panic!(
                    "GOAWAY with streams {:?} open; after\n  {}",
                    open.keys().collect::<Vec<_>>(),
                    self.history()
                );
            }
            let Some(r) = open.get_mut(&f.stream) else {
                continue;
            };
            match f.ty {
                HEADERS if r.status == 0 => {
                    let status = f.status().unwrap_or_else(|| {
                        panic!(
                            "no :status in {}; after\n  {}",
                            f.describe(),
                            self.history()
                        )
                    });
                    if status >= 200 {
                        r.status = status;
                        r.headers = f.fields.clone();
                    }
                }
                HEADERS => r.trailers = f.fields.clone(),
                DATA => {
                    assert!(r.status >= 200, "DATA before the response head");
                    r.body.extend_from_slice(f.data());
                    if !f.payload.is_empty() {
                        let n = f.payload.len() as u32;
                        let mut wu = window_update(0, n);
                        if !f.has(END_STREAM) {
                            wu.extend(window_update(f.stream, n));
                        }
                        self.try_send(&wu).await;
                    }
                }
                RST_STREAM => {
                    open.remove(&f.stream);
                    done.insert(f.stream, Outcome::Reset(f.code()));
                    continue;
                }
                _ => continue,
            }
            if f.has(END_STREAM) {
                let r = open.remove(&f.stream).unwrap();
                done.insert(f.stream, Outcome::Response(r));
            }
        }
        done
    }

    /// The response on `stream`; panics if it is reset.
    async fn response(&mut self, stream: u32) -> Resp {
        match self.collect(&[stream]).await.remove(&stream).unwrap() {
            Outcome::Response(r) => r,
            Outcome::Reset(code) => panic!(
                "stream {stream} reset ({}); after\n  {}",
                code_name(code),
                self.history()
            ),
        }
    }

    /// Sends a GET for `path` on `stream` and expects a 200 echo of it.
    async fn get_ok(&mut self, stream: u32, path: &str) -> Resp {
        self.send(&headers(stream, &get(path), true)).await;
        let r = self.response(stream).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.seen().field("path"), Some(path), "{r:?}");
        r
    }
}

/// A new connection serves a GET.
async fn serves(addr: SocketAddr, path: &str) {
    H2c::open(addr).await.get_ok(1, path).await;
}

/// Sends `frames` on a fresh connection and expects a connection error with one of `want`.
async fn expect_connection_error(addr: SocketAddr, frames: &[u8], want: &[u32]) {
    let mut c = H2c::open(addr).await;
    c.send(frames).await;
    c.connection_error(want).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Connection preface and SETTINGS (RFC 9113 §3.4, §6.5).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_sends_settings_first_and_acknowledges_the_clients() {
    let (_app, addr, _up) = setup("h2d_preface", "").await;
    let mut c = H2c::tcp(addr).await;
    c.send(PREFACE).await;
    c.send(&settings(&[(HEADER_TABLE_SIZE, 4096), (ENABLE_PUSH, 0)]))
        .await;
    let first = c.next().await;
    assert_eq!((first.ty, first.flags, first.stream), (SETTINGS, 0, 0));
    assert_eq!(first.payload.len() % 6, 0, "{}", first.describe());
    let params = settings_params(&first.payload);
    // A server never asks for push (§6.5.2: only 0 or 1, and clients may not push anyway), and
    // what it announces is within the RFC's ranges.
    assert!(
        params.get(&ENABLE_PUSH).is_none_or(|v| *v <= 1),
        "{params:?}"
    );
    if let Some(v) = params.get(&INITIAL_WINDOW_SIZE) {
        assert!(*v <= MAX_WINDOW, "{params:?}");
    }
    if let Some(v) = params.get(&MAX_FRAME_SIZE) {
        assert!((16_384..=16_777_215).contains(v), "{params:?}");
    }
    // The client's SETTINGS are acknowledged, with an empty ACK.
    let ack = c.until("SETTINGS ACK", |f| f.ty == SETTINGS).await;
    assert!(ack.has(ACK) && ack.payload.is_empty(), "{}", ack.describe());
    // A second SETTINGS gets its own ACK.
    c.send(&cat(&[
        settings_ack(),
        settings(&[(MAX_FRAME_SIZE, 32_768)]),
    ]))
    .await;
    let ack = c.until("SETTINGS ACK", |f| f.ty == SETTINGS).await;
    assert!(ack.has(ACK) && ack.payload.is_empty(), "{}", ack.describe());
    // An empty SETTINGS, too.
    c.send(&settings(&[])).await;
    let ack = c.until("SETTINGS ACK", |f| f.ty == SETTINGS).await;
    assert!(ack.has(ACK) && ack.payload.is_empty(), "{}", ack.describe());
    c.get_ok(1, "/after-settings").await;
}

#[tokio::test]
async fn invalid_preface_closes_the_connection() {
    // On a listener that only speaks HTTP/2 the server must treat a bad preface as a connection
    // error (§3.4); it may omit the GOAWAY, since the peer may not speak HTTP/2.
    let (_app, addr, up) = setup("h2d_badpreface", "          codec_type: HTTP2\n").await;
    for bad in [
        &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"[..],
        b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: h\r\n\r\n",
    ] {
        let mut c = H2c::tcp(addr).await;
        c.send(bad).await;
        c.try_send(&settings(&[])).await;
        let goaways = c.goaways_until_closed().await;
        for g in goaways {
            assert_eq!(g.code(), PROTOCOL_ERROR, "{}", g.describe());
        }
    }
    assert_eq!(up.count(), 0);
    // On an auto-detecting listener, a bad preface is not HTTP/2 at all; the connection is not
    // served as HTTP/2 and ends.
    let (_app, addr, up) = setup("h2d_badpreface_auto", "").await;
    let mut c = H2c::tcp(addr).await;
    c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await;
    c.try_send(&settings(&[])).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, c.wire.s.read_to_end(&mut got))
        .await
        .expect("connection closed");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn settings_with_a_length_not_a_multiple_of_6_is_a_frame_size_error() {
    // §6.5: "a SETTINGS frame with a length other than a multiple of 6 octets MUST be treated
    // as a connection error of type FRAME_SIZE_ERROR".
    let (_app, addr, _up) = setup("h2d_settings_len", "").await;
    expect_connection_error(
        addr,
        &frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100, 0]),
        &[FRAME_SIZE_ERROR],
    )
    .await;
}

#[tokio::test]
async fn settings_enable_push_other_than_0_or_1_is_a_protocol_error() {
    let (_app, addr, _up) = setup("h2d_enable_push", "").await;
    expect_connection_error(addr, &settings(&[(ENABLE_PUSH, 2)]), &[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn settings_initial_window_size_over_the_maximum_is_a_flow_control_error() {
    // §6.5.2: "Values above the maximum flow-control window size of 2^31-1 MUST be treated as
    // a connection error of type FLOW_CONTROL_ERROR".
    let (_app, addr, _up) = setup("h2d_iws_max", "").await;
    expect_connection_error(
        addr,
        &settings(&[(INITIAL_WINDOW_SIZE, 1 << 31)]),
        &[FLOW_CONTROL_ERROR],
    )
    .await;
}

#[tokio::test]
async fn settings_max_frame_size_out_of_range_is_a_protocol_error() {
    // §6.5.2: between 2^14 and 2^24-1; outside, a connection error of type PROTOCOL_ERROR.
    let (_app, addr, _up) = setup("h2d_mfs_range", "").await;
    for v in [16_383, 16_777_216] {
        expect_connection_error(addr, &settings(&[(MAX_FRAME_SIZE, v)]), &[PROTOCOL_ERROR]).await;
    }
    // The bounds themselves are fine.
    let mut c = H2c::open_with(addr, &[(MAX_FRAME_SIZE, 16_777_215)]).await;
    c.get_ok(1, "/max").await;
}

#[tokio::test]
async fn settings_ack_with_a_payload_is_a_frame_size_error() {
    // §6.5: "Receipt of a SETTINGS frame with the ACK flag set and a length field value other
    // than 0 MUST be treated as a connection error of type FRAME_SIZE_ERROR".
    let (_app, addr, _up) = setup("h2d_settings_ack_len", "").await;
    expect_connection_error(
        addr,
        &frame(SETTINGS, ACK, 0, &[0, 4, 0, 0, 0, 100]),
        &[FRAME_SIZE_ERROR],
    )
    .await;
}

#[tokio::test]
async fn settings_on_a_stream_is_a_protocol_error() {
    let (_app, addr, _up) = setup("h2d_settings_stream", "").await;
    expect_connection_error(addr, &frame(SETTINGS, 0, 1, &[]), &[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn unknown_settings_are_ignored() {
    // §6.5.2: "An endpoint that receives a SETTINGS frame with any unknown or unsupported
    // identifier MUST ignore that setting."
    let (_app, addr, _up) = setup("h2d_unknown_setting", "").await;
    let mut c = H2c::open_with(addr, &[(0x99, 1), (0xff00, 0xffff_ffff)]).await;
    let ack = c.until("SETTINGS ACK", |f| f.ty == SETTINGS).await;
    assert!(ack.has(ACK));
    c.get_ok(1, "/unknown-setting").await;
}

#[tokio::test]
async fn errors_end_the_connection_or_stream_whatever_their_code() {
    // The inputs of the ignored tests whose error codes differ from the RFC's on the `h2`
    // crate's server: each still ends the connection (DATA on a half-closed stream may end only the
    // stream), whatever the code.
    let (_app, addr, _up) = setup("h2d_conn_errors", "").await;
    let stream1 = headers(1, &get("/x"), true);
    let half_closed = cat(&[headers(1, &get("/delay/300"), true), data(1, b"x", false)]);
    let mut c = H2c::open(addr).await;
    c.send(&half_closed).await;
    let f = c
        .until("RST_STREAM or GOAWAY", |f| {
            f.ty == GOAWAY || f.ty == RST_STREAM && f.stream == 1
        })
        .await;
    assert!(
        ![NO_ERROR, CANCEL].contains(&f.code()),
        "DATA on a half-closed stream: {}",
        f.describe()
    );
    println!("DATA on a half-closed stream: {}", f.describe());
    for (what, bytes) in [
        (
            "SETTINGS length 7",
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100, 0]),
        ),
        (
            "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
            settings(&[(INITIAL_WINDOW_SIZE, 1 << 31)]),
        ),
        (
            "SETTINGS ACK with a payload",
            frame(SETTINGS, ACK, 0, &[0; 6]),
        ),
        ("PING of 7 bytes", frame(PING, 0, 0, &[0; 7])),
        ("PING of 9 bytes", frame(PING, 0, 0, &[0; 9])),
        (
            "HPACK table size update to 8192",
            headers(1, &cat(&[hpack_int(0x20, 5, 8192), get("/x")]), true),
        ),
    ]
    .into_iter()
    .chain(
        hpack_decoding_errors()
            .into_iter()
            .map(|(what, block)| (what, headers(1, &block, true))),
    ) {
        let mut c = H2c::open(addr).await;
        c.send(&bytes).await;
        let g = c.goaway().await;
        assert_ne!(g.code(), NO_ERROR, "{what}: {}", g.describe());
        println!("{what}: {}", g.describe());
    }
    // And the server serves on.
    let mut c = H2c::open(addr).await;
    c.send(&stream1).await;
    assert_eq!(c.response(1).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 2. PING (RFC 9113 §6.7).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ping_is_answered_with_an_ack_carrying_the_same_payload() {
    let (_app, addr, _up) = setup("h2d_ping", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&ping(*b"sluice01")).await;
    let pong = c.until("PING ACK", |f| f.ty == PING).await;
    assert!(pong.has(ACK) && pong.stream == 0, "{}", pong.describe());
    assert_eq!(pong.payload, b"sluice01");
    // A PING ACK is not answered (§6.7: "An endpoint MUST NOT respond to PING frames
    // containing this flag"); the next PING is, with its own payload.
    c.send(&cat(&[
        frame(PING, ACK, 0, b"unasked!"),
        ping(*b"second!!"),
    ]))
    .await;
    let pong = c.until("PING ACK", |f| f.ty == PING).await;
    assert_eq!(pong.payload, b"second!!", "{}", pong.describe());
    c.quiet("after the PING ACK").await;
    // Several in a row, answered in order.
    c.send(&cat(&[ping([1; 8]), ping([2; 8]), ping([3; 8])]))
        .await;
    for n in 1..=3u8 {
        let pong = c.until("PING ACK", |f| f.ty == PING).await;
        assert_eq!(pong.payload, [n; 8]);
    }
    c.get_ok(1, "/after-ping").await;
}

#[tokio::test]
async fn ping_with_a_length_other_than_8_is_a_frame_size_error() {
    // §6.7: "Receipt of a PING frame with a length field value other than 8 MUST be treated as
    // a connection error of type FRAME_SIZE_ERROR."
    let (_app, addr, _up) = setup("h2d_ping_len", "").await;
    for len in [0, 7, 9] {
        expect_connection_error(addr, &frame(PING, 0, 0, &vec![0; len]), &[FRAME_SIZE_ERROR]).await;
    }
}

#[tokio::test]
async fn ping_on_a_stream_is_a_protocol_error() {
    let (_app, addr, _up) = setup("h2d_ping_stream", "").await;
    expect_connection_error(addr, &frame(PING, 0, 1, &[0; 8]), &[PROTOCOL_ERROR]).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Frame sizes, stream identifiers, frame-level errors (RFC 9113 §4, §5, §6).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn headers_frame_over_max_frame_size_is_a_frame_size_error() {
    // §4.2: a frame over SETTINGS_MAX_FRAME_SIZE (16,384 unless the server says more) that
    // carries a field block MUST be a connection error of type FRAME_SIZE_ERROR.
    let (_app, addr, up) = setup("h2d_big_headers", "").await;
    let mut c = H2c::open(addr).await;
    let max = c.max_frame_size();
    let block = request("GET", "/big", &[("x-big", &"a".repeat(max))]);
    c.send(&headers(1, &block, true)).await;
    c.connection_error(&[FRAME_SIZE_ERROR]).await;
    assert!(!up.saw("/big"));
    // A smaller one is served.
    let block = request("GET", "/big", &[("x-big", &"a".repeat(1000))]);
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &block, true)).await;
    assert_eq!(c.response(1).await.status, 200);
}

#[tokio::test]
async fn data_frame_over_max_frame_size_is_a_frame_size_error() {
    // On a stream, a stream error will do (§4.2).
    let (_app, addr, _up) = setup("h2d_big_data", "").await;
    let mut c = H2c::open(addr).await;
    let max = c.max_frame_size();
    c.send(&cat(&[
        headers(1, &request("POST", "/big-data", &[]), false),
        data(1, &vec![b'x'; max + 1], true),
    ]))
    .await;
    c.stream_error(1, &[FRAME_SIZE_ERROR]).await;
    // Exactly the maximum is within the limit.
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        headers(1, &request("POST", "/max-data", &[]), false),
        data(1, &pattern(max), true),
    ]))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().body, pattern(max));
}

#[tokio::test]
async fn data_on_stream_0_is_a_protocol_error() {
    let (_app, addr, _up) = setup("h2d_data0", "").await;
    expect_connection_error(addr, &data(0, b"x", false), &[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn headers_on_stream_0_or_an_even_stream_is_a_protocol_error() {
    // §5.1.1: streams initiated by a client use odd identifiers; §6.2: HEADERS on stream 0 is a
    // connection error of type PROTOCOL_ERROR.
    let (_app, addr, up) = setup("h2d_headers_ids", "").await;
    expect_connection_error(addr, &headers(0, &get("/zero"), true), &[PROTOCOL_ERROR]).await;
    expect_connection_error(addr, &headers(2, &get("/even"), true), &[PROTOCOL_ERROR]).await;
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn push_promise_from_a_client_is_a_protocol_error() {
    // §8.4: "A client cannot push"; a server receiving PUSH_PROMISE treats it as a connection
    // error of type PROTOCOL_ERROR.
    let (_app, addr, _up) = setup("h2d_client_push", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &get("/delay/300"), true)).await;
    let promise = cat(&[2u32.to_be_bytes().to_vec(), get("/pushed")]);
    c.send(&frame(PUSH_PROMISE, END_HEADERS, 1, &promise)).await;
    c.connection_error(&[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn unknown_frame_types_are_ignored() {
    // §4.1 / §5.5: "Implementations MUST ignore and discard frames of unknown types."
    let (_app, addr, _up) = setup("h2d_unknown_frame", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        frame(0x20, 0xff, 0, b"on the connection"),
        frame(0xfa, 0x00, 1, b"on an idle stream"),
    ]))
    .await;
    c.get_ok(1, "/after-unknown").await;
    // In the middle of a request, too (but not inside a header block).
    c.send(&cat(&[
        headers(3, &request("POST", "/unknown-mid", &[]), false),
        data(3, b"one ", false),
        frame(0x21, 0, 3, b"ignore me"),
        data(3, b"two", true),
    ]))
    .await;
    let r = c.response(3).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().body, b"one two");
}

#[tokio::test]
async fn window_update_of_0_on_the_connection_is_a_protocol_error() {
    // §6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a flow-control
    // window increment of 0 as a connection error of type PROTOCOL_ERROR" (on stream 0).
    let (_app, addr, _up) = setup("h2d_wu0_conn", "").await;
    expect_connection_error(addr, &window_update(0, 0), &[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn window_update_of_0_on_a_stream_is_a_protocol_error() {
    // ...and on a stream, a stream error of type PROTOCOL_ERROR (or a connection error).
    let (_app, addr, _up) = setup("h2d_wu0_stream", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &get("/delay/300"), true)).await;
    c.send(&window_update(1, 0)).await;
    if c.stream_error(1, &[PROTOCOL_ERROR]).await == Rejected::Stream {
        c.get_ok(3, "/after").await;
    }
}

#[tokio::test]
async fn window_update_overflowing_the_connection_window_is_a_flow_control_error() {
    // §6.9.1: a sender MUST NOT allow a window to exceed 2^31-1; if one does, a connection
    // error of type FLOW_CONTROL_ERROR for the connection window.
    let (_app, addr, _up) = setup("h2d_wu_overflow_conn", "").await;
    let mut c = H2c::open(addr).await;
    // The window is 65,535: one more than 2^31 - 1 - 65,535 overflows it.
    c.send(&window_update(0, MAX_WINDOW - 65_535)).await;
    c.quiet("a window of exactly 2^31-1 is fine").await;
    c.send(&window_update(0, 1)).await;
    c.connection_error(&[FLOW_CONTROL_ERROR]).await;
}

#[tokio::test]
async fn window_update_overflowing_a_stream_window_is_a_flow_control_error() {
    // ...and a stream error (RST_STREAM FLOW_CONTROL_ERROR) for a stream's window.
    let (_app, addr, _up) = setup("h2d_wu_overflow_stream", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &get("/delay/300"), true)).await;
    c.send(&window_update(1, MAX_WINDOW)).await;
    if c.stream_error(1, &[FLOW_CONTROL_ERROR]).await == Rejected::Stream {
        c.get_ok(3, "/after").await;
    }
}

#[tokio::test]
async fn rst_stream_on_an_idle_stream_is_a_protocol_error() {
    // §6.4: "If a RST_STREAM frame identifying an idle stream is received, the recipient MUST
    // treat this as a connection error of type PROTOCOL_ERROR."
    let (_app, addr, _up) = setup("h2d_rst_idle", "").await;
    expect_connection_error(addr, &rst(1, CANCEL), &[PROTOCOL_ERROR]).await;
    // Also past a stream in use.
    let mut c = H2c::open(addr).await;
    c.get_ok(1, "/first").await;
    c.send(&rst(5, CANCEL)).await;
    c.connection_error(&[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn rst_stream_on_stream_0_is_a_protocol_error() {
    let (_app, addr, _up) = setup("h2d_rst_zero", "").await;
    expect_connection_error(addr, &rst(0, CANCEL), &[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn continuation_without_headers_is_a_protocol_error() {
    // §6.10: a CONTINUATION not preceded by HEADERS, PUSH_PROMISE or CONTINUATION without
    // END_HEADERS is a connection error of type PROTOCOL_ERROR.
    let (_app, addr, _up) = setup("h2d_lone_continuation", "").await;
    expect_connection_error(
        addr,
        &frame(CONTINUATION, END_HEADERS, 1, &get("/x")),
        &[PROTOCOL_ERROR],
    )
    .await;
    // Nor after a complete header block.
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &get("/delay/200"), true)).await;
    c.send(&frame(CONTINUATION, END_HEADERS, 1, &lit("x-late", "1")))
        .await;
    c.connection_error(&[PROTOCOL_ERROR]).await;
}

#[tokio::test]
async fn an_unfinished_header_block_followed_by_another_frame_is_a_protocol_error() {
    // §6.2 / §6.10: a header block must be followed by its CONTINUATIONs only, on the same
    // stream; anything else is a connection error of type PROTOCOL_ERROR.
    let (_app, addr, up) = setup("h2d_interleaved", "").await;
    let open = frame(HEADERS, END_STREAM, 1, &get("/interleaved"));
    for (what, next) in [
        ("PING", ping([0; 8])),
        ("DATA", data(1, b"x", true)),
        ("PRIORITY", frame(PRIORITY, 0, 3, &[0, 0, 0, 0, 16])),
        ("HEADERS", headers(3, &get("/other"), true)),
        (
            "CONTINUATION on another stream",
            frame(CONTINUATION, END_HEADERS, 3, &lit("x-a", "b")),
        ),
    ] {
        let mut c = H2c::open(addr).await;
        c.send(&cat(&[open.clone(), next])).await;
        let g = c.goaway().await;
        assert_eq!(g.code(), PROTOCOL_ERROR, "{what}: {}", g.describe());
    }
    assert!(!up.saw("/interleaved") && !up.saw("/other"));
}

#[tokio::test]
async fn header_blocks_split_over_continuations_are_one_request() {
    let (_app, addr, _up) = setup("h2d_continuation", "").await;
    let whole = request("GET", "/continued", &[("x-split", "across three frames")]);
    let (a, rest) = whole.split_at(7);
    let (b, c_part) = rest.split_at(20);
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        frame(HEADERS, END_STREAM, 1, a),
        frame(CONTINUATION, 0, 1, b),
        frame(CONTINUATION, END_HEADERS, 1, c_part),
    ]))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    let seen = r.seen();
    assert_eq!(seen.field("path"), Some("/continued"));
    assert_eq!(seen.header("x-split"), Some("across three frames"));
    // An empty CONTINUATION is allowed too.
    let whole = get("/empty-continuation");
    c.send(&cat(&[
        frame(HEADERS, END_STREAM, 3, &whole),
        frame(CONTINUATION, 0, 3, &[]),
        frame(CONTINUATION, END_HEADERS, 3, &[]),
    ]))
    .await;
    assert_eq!(c.response(3).await.status, 200);
}

#[tokio::test]
async fn padded_and_prioritised_frames_are_accepted() {
    // §6.1, §6.2: padding and the (deprecated) priority fields are stripped; PRIORITY frames
    // are accepted in any stream state (§6.3).
    let (_app, addr, _up) = setup("h2d_padding", "").await;
    let mut c = H2c::open(addr).await;
    let block = request("POST", "/padded", &[]);
    // HEADERS: pad length 3, exclusive dependency on stream 0 with weight 16, then padding.
    let mut payload = vec![3, 0x80, 0, 0, 0, 15];
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 3]);
    let mut data1 = vec![5];
    data1.extend_from_slice(b"padded ");
    data1.extend_from_slice(&[0; 5]);
    c.send(&cat(&[
        frame(PRIORITY, 0, 7, &[0, 0, 0, 0, 16]),
        frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, &payload),
        frame(DATA, PADDED, 1, &data1),
        frame(DATA, PADDED | END_STREAM, 1, &[0]),
        frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 200]),
    ]))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().body, b"padded ");
    // Stream 7 was only prioritised (idle); 9 may still be opened.
    c.get_ok(9, "/after-priority").await;
}

#[tokio::test]
async fn a_stream_depending_on_itself_is_a_protocol_error() {
    // §5.3.1: "A stream cannot depend on itself. An endpoint MUST treat this as a stream error
    // of type PROTOCOL_ERROR."
    let (_app, addr, _up) = setup("h2d_self_dependency", "").await;
    let mut c = H2c::open(addr).await;
    let mut payload = vec![0, 0, 0, 1, 16];
    payload.extend_from_slice(&get("/self"));
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM | PRIORITY_FLAG,
        1,
        &payload,
    ))
    .await;
    if c.stream_error(1, &[PROTOCOL_ERROR]).await == Rejected::Stream {
        c.send(&frame(PRIORITY, 0, 3, &[0, 0, 0, 3, 16])).await;
        if c.stream_error(3, &[PROTOCOL_ERROR]).await == Rejected::Stream {
            c.get_ok(5, "/after").await;
        }
    }
}

#[tokio::test]
async fn stream_ids_must_increase() {
    // §5.1.1: "The identifier of a newly established stream MUST be numerically greater than
    // all streams that the initiating endpoint has opened or reserved"; a lower one is a
    // connection error of type PROTOCOL_ERROR (h2spec also accepts STREAM_CLOSED: the lower
    // stream is implicitly closed).
    let (_app, addr, up) = setup("h2d_stream_order", "").await;
    let mut c = H2c::open(addr).await;
    c.get_ok(5, "/five").await;
    c.send(&headers(3, &get("/three"), true)).await;
    c.connection_error(&[PROTOCOL_ERROR, STREAM_CLOSED]).await;
    // Reusing a closed stream's id.
    let mut c = H2c::open(addr).await;
    c.get_ok(1, "/one").await;
    c.send(&headers(1, &get("/one-again"), true)).await;
    c.stream_error(1, &[PROTOCOL_ERROR, STREAM_CLOSED]).await;
    assert!(!up.saw("/three") && !up.saw("/one-again"));
}

// ---------------------------------------------------------------------------------------------
// 4. Streams and requests (RFC 9113 §5.1, §8.1).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_via_raw_frames_returns_200_and_the_upstream_body() {
    let (_app, addr, up) = setup("h2d_get", "").await;
    let mut c = H2c::open(addr).await;
    // :method GET, :scheme http, :path / from the static table.
    c.send(&headers(
        1,
        &cat(&[vec![0x82, 0x86, 0x84], lit_name(1, AUTHORITY)]),
        true,
    ))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("echo"));
    // Response header names are lowercase, with no connection-specific fields (§8.2.2).
    for (n, _) in &r.headers {
        assert_eq!(*n, n.to_ascii_lowercase(), "{:?}", r.headers);
        assert!(
            !["connection", "keep-alive", "transfer-encoding", "upgrade"].contains(&n.as_str()),
            "{:?}",
            r.headers
        );
    }
    let seen = r.seen();
    assert_eq!(seen.field("method"), Some("GET"));
    assert_eq!(seen.field("path"), Some("/"));
    assert_eq!(seen.header("host"), Some(AUTHORITY), "{}", seen.desc);
    assert_eq!(
        r.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(r.body.len()),
        "{:?}",
        r.headers
    );
    assert_eq!(up.count(), 1);
    // `te: trailers` is the one `te` allowed (§8.2.2), and more requests follow on the same
    // connection.
    c.send(&headers(
        3,
        &request("GET", "/te?q=1", &[("te", "trailers")]),
        true,
    ))
    .await;
    let r = c.response(3).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().field("path"), Some("/te?q=1"));
    for i in 0..10 {
        c.get_ok(5 + 2 * i, &format!("/n/{i}")).await;
    }
}

#[tokio::test]
async fn a_request_body_in_several_data_frames_reaches_the_upstream_intact() {
    let (_app, addr, _up) = setup("h2d_body", "").await;
    let mut c = H2c::open(addr).await;
    let body = pattern(40_000);
    let mut frames = vec![headers(
        1,
        &request("POST", "/upload", &[("content-length", "40000")]),
        false,
    )];
    // Uneven pieces, an empty DATA frame in the middle, END_STREAM on the last.
    let mut at = 0;
    for (i, n) in [1, 16_384, 0, 999, 10_000, 12_616].iter().enumerate() {
        frames.push(data(1, &body[at..at + n], i == 5));
        at += n;
    }
    assert_eq!(at, body.len());
    c.send(&frames.concat()).await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    let seen = r.seen();
    assert_eq!(seen.field("method"), Some("POST"));
    assert_eq!(seen.line("body-len="), Some("40000"));
    assert_eq!(seen.body, body, "the body differs");
    // Without a content-length, and with END_STREAM on an empty DATA frame.
    c.send(&cat(&[
        headers(3, &request("POST", "/no-length", &[]), false),
        data(3, b"abc", false),
        data(3, b"def", false),
        data(3, b"", true),
    ]))
    .await;
    let r = c.response(3).await;
    assert_eq!(r.seen().body, b"abcdef");
}

#[tokio::test]
async fn request_trailers_are_accepted_and_passed_on() {
    // §8.1: a request is HEADERS, DATA, then optionally a trailer section in HEADERS with
    // END_STREAM. Over an h2c upstream the trailers are passed on.
    let (_app, addr, _up) = setup_with("h2d_trailers", "", "", H2_UPSTREAM).await;
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        headers(
            1,
            &request("POST", "/trailers", &[("te", "trailers")]),
            false,
        ),
        data(1, b"body with trailers", false),
        headers(
            1,
            &block(&[("x-checksum", "abc123"), ("x-other", "t2")]),
            true,
        ),
    ]))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    let seen = r.seen();
    assert_eq!(seen.body, b"body with trailers");
    assert_eq!(seen.trailer("x-checksum"), Some("abc123"), "{}", seen.desc);
    assert_eq!(seen.trailer("x-other"), Some("t2"), "{}", seen.desc);
    // Trailers straight after the request head (no DATA at all).
    c.send(&cat(&[
        headers(3, &request("POST", "/trailers-only", &[]), false),
        headers(3, &block(&[("x-t", "1")]), true),
    ]))
    .await;
    let r = c.response(3).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().trailer("x-t"), Some("1"));
}

/// Sends a POST with one byte of body and then `trailers` (with END_STREAM if `end`) and
/// expects the stream (or the connection) reset with PROTOCOL_ERROR.
async fn bad_trailers(addr: SocketAddr, what: &str, trailers: &[u8], end: bool) {
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        headers(1, &request("POST", "/bad-trailers", &[]), false),
        data(1, b"x", false),
        headers(1, trailers, end),
    ]))
    .await;
    let how = c.stream_error(1, &[PROTOCOL_ERROR]).await;
    println!("{what}: {how:?}");
    if how == Rejected::Stream {
        c.get_ok(3, "/after").await;
    }
}

#[tokio::test]
async fn trailers_with_a_pseudo_header_are_malformed() {
    // §8.1: "Trailers MUST NOT include pseudo-header fields"; such a request is malformed.
    let (_app, addr, _up) = setup("h2d_pseudo_trailers", "").await;
    let trailers = block(&[(":path", "/x")]);
    bad_trailers(addr, "pseudo-header in trailers", &trailers, true).await;
}

#[tokio::test]
async fn trailers_without_end_stream_are_malformed() {
    // §8.1: a HEADERS frame after the request head that does not end the stream is malformed.
    let (_app, addr, _up) = setup("h2d_trailers_no_end", "").await;
    let trailers = block(&[("x-t", "1")]);
    bad_trailers(addr, "trailers without END_STREAM", &trailers, false).await;
}

#[tokio::test]
async fn data_on_a_half_closed_stream_is_a_stream_closed_error() {
    // §5.1: a stream in "half-closed (remote)" receiving DATA responds with a stream error of
    // type STREAM_CLOSED (a connection error is allowed too, of that type).
    let (_app, addr, _up) = setup("h2d_data_half_closed", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &get("/delay/300"), true)).await;
    c.send(&data(1, b"too late", false)).await;
    if c.stream_error(1, &[STREAM_CLOSED]).await == Rejected::Stream {
        c.get_ok(3, "/after").await;
    }
}

#[tokio::test]
async fn data_on_a_closed_stream_is_a_stream_closed_error() {
    // Once the stream is closed (the response sent): §5.1 "closed" makes DATA a connection
    // error of type STREAM_CLOSED, or a stream error of that type.
    let (_app, addr, _up) = setup("h2d_data_closed", "").await;
    let mut c = H2c::open(addr).await;
    c.get_ok(1, "/done").await;
    c.send(&data(1, b"too late", true)).await;
    if c.stream_error(1, &[STREAM_CLOSED]).await == Rejected::Stream {
        c.get_ok(3, "/after").await;
    }
}

#[tokio::test]
async fn streams_over_max_concurrent_streams_are_refused() {
    // §5.1.2: a stream over the announced SETTINGS_MAX_CONCURRENT_STREAMS is a stream error of
    // type PROTOCOL_ERROR or REFUSED_STREAM; the others are served.
    let (_app, addr, up) = setup(
        "h2d_max_streams",
        "          http2_protocol_options: {max_concurrent_streams: 2}\n",
    )
    .await;
    let mut c = H2c::open(addr).await;
    assert_eq!(
        c.server_settings.get(&MAX_CONCURRENT_STREAMS),
        Some(&2),
        "{:?}",
        c.server_settings
    );
    c.send(&cat(&[
        headers(1, &get("/delay/300/a"), true),
        headers(3, &get("/delay/300/b"), true),
        headers(5, &get("/delay/300/c"), true),
    ]))
    .await;
    let mut got = c.collect(&[1, 3, 5]).await;
    for s in [1, 3] {
        match got.remove(&s).unwrap() {
            Outcome::Response(r) => assert_eq!(r.status, 200, "stream {s}: {r:?}"),
            Outcome::Reset(code) => panic!("stream {s} reset: {}", code_name(code)),
        }
    }
    match got.remove(&5).unwrap() {
        Outcome::Reset(code) => assert!(
            [REFUSED_STREAM, PROTOCOL_ERROR].contains(&code),
            "{}",
            code_name(code)
        ),
        Outcome::Response(r) => panic!("the third stream was served: {r:?}"),
    }
    assert!(!up.saw("/delay/300/c"));
    // Once the others are done, a new stream is fine.
    c.get_ok(7, "/after").await;
}

#[tokio::test]
async fn a_client_reset_of_one_stream_leaves_the_others_alone() {
    let (app, addr, up) = setup("h2d_one_reset", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        headers(1, &get("/delay/300/a"), true),
        headers(3, &get("/delay/300/b"), true),
        headers(5, &get("/delay/300/c"), true),
    ]))
    .await;
    // Once the three reached the upstream, stream 3 is cancelled.
    let deadline = tokio::time::Instant::now() + STEP;
    while up.count() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "{}", up.count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.send(&rst(3, CANCEL)).await;
    let mut got = c.collect(&[1, 5]).await;
    for s in [1, 5] {
        match got.remove(&s).unwrap() {
            Outcome::Response(r) => assert_eq!(r.status, 200),
            Outcome::Reset(code) => panic!("stream {s} reset: {}", code_name(code)),
        }
    }
    c.get_ok(7, "/after").await;
    // Nothing was sent on stream 3 after the reset (its response was not due yet), not even a
    // RST_STREAM (§5.4.2: "an endpoint MUST NOT send a RST_STREAM in response to a RST_STREAM
    // frame").
    let on3: Vec<&String> = c.log.iter().filter(|l| l.contains("(stream 3,")).collect();
    assert!(on3.is_empty(), "{on3:?}");
    assert_eq!(
        stat(&app, "http.h2d_one_reset.downstream_rq_rx_reset").await,
        Some(1)
    );
}

#[tokio::test]
async fn many_concurrent_streams_on_one_connection() {
    // The `h2` crate's client: 100 requests in flight at once, all answered.
    let (_app, addr, up) = setup("h2d_many", "").await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    let mut tx = tx.ready().await.unwrap();
    let mut pending = Vec::new();
    for i in 0..100 {
        let req = Request::post(format!("http://{AUTHORITY}/delay/50/{i}"))
            .body(())
            .unwrap();
        let (resp, mut send) = tx.send_request(req, false).unwrap();
        send.send_data(Bytes::from(format!("body {i}")), true)
            .unwrap();
        pending.push(resp);
        tx = tx.ready().await.unwrap();
    }
    for (i, resp) in pending.into_iter().enumerate() {
        let resp = tokio::time::timeout(STEP, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = tokio::time::timeout(STEP, body.data()).await.unwrap() {
            let d = d.unwrap();
            body.flow_control().release_capacity(d.len()).unwrap();
            got.extend_from_slice(&d);
        }
        let seen = Seen::parse(&got);
        assert_eq!(seen.field("path"), Some(format!("/delay/50/{i}").as_str()));
        assert_eq!(seen.body, format!("body {i}").as_bytes());
    }
    assert_eq!(up.count(), 100);
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed requests (RFC 9113 §8.1.1, §8.2, §8.3).
// ---------------------------------------------------------------------------------------------

/// How a malformed request may be answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allow {
    /// RST_STREAM(PROTOCOL_ERROR) or a 400, and the connection serves on.
    StreamError,
    /// Also GOAWAY(PROTOCOL_ERROR): a stream error the server may treat as a connection error
    /// (§5.4.1). The `h2` crate's server does this where the field block itself fails to
    /// decode into a request (its HPACK decoder rejects the field).
    StreamOrConnectionError,
}

/// Sends `frames` (a malformed request on stream 1) on a fresh connection; the server must not
/// pass the request on, and must treat it as malformed (§8.1.1: a stream error of type
/// PROTOCOL_ERROR; a 400 response is accepted too). After a stream error the same connection
/// serves a good request; after an allowed connection error a new one does.
async fn malformed(addr: SocketAddr, up: &Upstream, what: &str, frames: &[u8], allow: Allow) {
    let before = up.count();
    let mut c = H2c::open(addr).await;
    c.send(frames).await;
    let how = loop {
        let f = c.next().await;
        match f.ty {
            RST_STREAM if f.stream == 1 => {
                assert_eq!(
                    f.code(),
                    PROTOCOL_ERROR,
                    "{what}: {}; after\n  {}",
                    f.describe(),
                    c.history()
                );
                break "RST_STREAM(PROTOCOL_ERROR)";
            }
            HEADERS if f.stream == 1 => {
                if f.status() != Some(400) {
                    // Served: read the response, for the message.
                    let mut body = Vec::new();
                    let mut end = f.has(END_STREAM);
                    while !end {
                        let g = c.next().await;
                        if g.stream == 1 {
                            body.extend_from_slice(g.data());
                            end = g.has(END_STREAM) || g.ty == RST_STREAM;
                        }
                    }
                    panic!(
                        "{what}: answered {} with body {:?}; after\n  {}",
                        f.describe(),
                        String::from_utf8_lossy(&body),
                        c.history()
                    );
                }
                if !f.has(END_STREAM) {
                    c.until("the end of the 400", |g| {
                        g.stream == 1 && (g.has(END_STREAM) || g.ty == RST_STREAM)
                    })
                    .await;
                }
                break "400";
            }
            GOAWAY => {
                assert!(
                    allow == Allow::StreamOrConnectionError,
                    "{what}: a connection error where a stream error was due: {}; after\n  {}",
                    f.describe(),
                    c.history()
                );
                assert_eq!(f.code(), PROTOCOL_ERROR, "{what}: {}", f.describe());
                c.goaways_until_closed().await;
                break "GOAWAY(PROTOCOL_ERROR)";
            }
            _ => {}
        }
    };
    println!("{what}: {how}");
    assert_eq!(up.count(), before, "{what}: the request was passed on");
    if how == "GOAWAY(PROTOCOL_ERROR)" {
        serves(addr, "/after-malformed").await;
    } else {
        c.get_ok(3, "/after-malformed").await;
    }
}

#[tokio::test]
async fn uppercase_header_names_are_malformed() {
    // §8.2.1: "A field name MUST NOT contain characters in the ranges 0x41 to 0x5a"; a request
    // with one is malformed.
    let (_app, addr, up) = setup("h2d_uppercase", "").await;
    let req = cat(&[get("/upper"), lit("X-Upper", "1")]);
    malformed(
        addr,
        &up,
        "uppercase name",
        &headers(1, &req, true),
        Allow::StreamOrConnectionError,
    )
    .await;
}

#[tokio::test]
async fn a_bad_field_named_again_by_index_is_still_malformed() {
    // The decoder keeps the regular fields of its dynamic table parsed, so that a field sent
    // again by index is not parsed again. An entry whose name or value was refused the first
    // time must be refused just the same when a later request names it by index.
    let (_app, addr, up) = setup("h2d_bad_indexed", "").await;
    let before = up.count();
    let mut c = H2c::open(addr).await;
    for (first, field) in [(1, ("X-Upper", "1")), (5, ("x-bad", "a\rb"))] {
        let insert = cat(&[get("/bad"), lit_indexed(field.0, field.1)]);
        c.send(&headers(first, &insert, true)).await;
        // Newest entry first: index 62.
        let again = cat(&[get("/bad-again"), indexed(62)]);
        c.send(&headers(first + 2, &again, true)).await;
        for stream in [first, first + 2] {
            let f = c
                .until("the stream's answer", |g| {
                    g.stream == stream && (g.ty == RST_STREAM || g.ty == HEADERS)
                })
                .await;
            assert_eq!(
                f.ty,
                RST_STREAM,
                "{field:?} on stream {stream}: {}",
                f.describe()
            );
            assert_eq!(f.code(), PROTOCOL_ERROR, "{}", f.describe());
        }
    }
    assert_eq!(up.count(), before, "a malformed request was passed on");
    c.get_ok(9, "/after-malformed").await;
}

#[tokio::test]
async fn invalid_field_names_and_values_are_malformed() {
    // §8.2.1: no control characters, space, colon (outside pseudo-headers) in names; no NUL,
    // CR, LF, nor leading or trailing whitespace in values.
    let (_app, addr, up) = setup("h2d_bad_fields", "").await;
    for (what, field) in [
        ("space in a name", lit("x bad", "1")),
        ("colon in a name", lit("x:bad", "1")),
        ("empty name", lit("", "1")),
        ("NUL in a value", lit("x-bad", "a\0b")),
        ("LF in a value", lit("x-bad", "a\nb")),
        ("CR in a value", lit("x-bad", "a\rb")),
    ] {
        let req = cat(&[get("/bad-field"), field]);
        malformed(
            addr,
            &up,
            what,
            &headers(1, &req, true),
            Allow::StreamOrConnectionError,
        )
        .await;
    }
}

#[tokio::test]
async fn a_pseudo_header_after_a_regular_header_is_malformed() {
    // §8.3: "All pseudo-header fields MUST appear in a field block before all regular field
    // lines."
    let (_app, addr, up) = setup("h2d_pseudo_after", "").await;
    let req = block(&[
        (":method", "GET"),
        (":scheme", "http"),
        ("x-regular", "1"),
        (":path", "/late-pseudo"),
        (":authority", AUTHORITY),
    ]);
    malformed(
        addr,
        &up,
        "pseudo after regular",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

#[tokio::test]
async fn an_unknown_pseudo_header_is_malformed() {
    // §8.3: "Endpoints MUST treat a request or response that contains undefined or invalid
    // pseudo-header fields as malformed."
    let (_app, addr, up) = setup("h2d_unknown_pseudo", "").await;
    let req = cat(&[get("/unknown-pseudo"), lit(":foo", "bar")]);
    malformed(
        addr,
        &up,
        "unknown pseudo-header",
        &headers(1, &req, true),
        Allow::StreamOrConnectionError,
    )
    .await;
}

#[tokio::test]
async fn duplicated_pseudo_headers_are_malformed() {
    // §8.3: each pseudo-header appears once.
    let (_app, addr, up) = setup("h2d_dup_pseudo", "").await;
    for (what, req) in [
        ("two :path", cat(&[get("/dup"), lit(":path", "/dup")])),
        (
            "two :method",
            block(&[
                (":method", "GET"),
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/dup"),
                (":authority", AUTHORITY),
            ]),
        ),
    ] {
        malformed(addr, &up, what, &headers(1, &req, true), Allow::StreamError).await;
    }
}

#[tokio::test]
async fn a_request_without_method_is_malformed() {
    // §8.3.1: ":method", ":scheme" and ":path" MUST be included (except CONNECT).
    let (_app, addr, up) = setup("h2d_no_method", "").await;
    let req = block(&[
        (":scheme", "http"),
        (":path", "/no-method"),
        (":authority", AUTHORITY),
    ]);
    malformed(
        addr,
        &up,
        "no :method",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

#[tokio::test]
async fn a_request_without_scheme_is_malformed() {
    let (_app, addr, up) = setup("h2d_no_scheme", "").await;
    let req = block(&[
        (":method", "GET"),
        (":path", "/no-scheme"),
        (":authority", AUTHORITY),
    ]);
    malformed(
        addr,
        &up,
        "no :scheme",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

#[tokio::test]
async fn a_request_without_path_is_malformed() {
    let (_app, addr, up) = setup("h2d_no_path", "").await;
    let req = block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", AUTHORITY),
    ]);
    malformed(
        addr,
        &up,
        "no :path",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

#[tokio::test]
async fn a_request_without_path_or_authority_is_malformed() {
    // The same without :authority (a `host` header instead).
    let (_app, addr, up) = setup("h2d_no_path_host", "").await;
    let req = block(&[(":method", "GET"), (":scheme", "http"), ("host", AUTHORITY)]);
    malformed(
        addr,
        &up,
        "no :path, no :authority",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

#[tokio::test]
async fn an_empty_path_is_malformed() {
    // §8.3.1: ":path" MUST NOT be empty for "http" or "https" URIs.
    let (_app, addr, up) = setup("h2d_empty_path", "").await;
    let req = request("GET", "", &[]);
    malformed(
        addr,
        &up,
        "empty :path",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

#[tokio::test]
async fn connection_specific_headers_are_malformed() {
    // §8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing connection-specific
    // header fields ... Any message containing connection-specific header fields MUST be
    // treated as malformed."
    let (_app, addr, up) = setup("h2d_conn_headers", "").await;
    for (name, value) in [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("upgrade", "websocket"),
    ] {
        let req = request("GET", "/conn-header", &[(name, value)]);
        malformed(
            addr,
            &up,
            &format!("{name}: {value}"),
            &headers(1, &req, true),
            Allow::StreamError,
        )
        .await;
    }
}

#[tokio::test]
async fn te_other_than_trailers_is_malformed() {
    // §8.2.2: "The only exception to this is the TE header field, which MAY be present in an
    // HTTP/2 request; when it is, it MUST NOT contain any value other than 'trailers'."
    let (_app, addr, up) = setup("h2d_te", "").await;
    for value in ["gzip", "trailers, gzip"] {
        let req = request("GET", "/te", &[("te", value)]);
        malformed(
            addr,
            &up,
            &format!("te: {value}"),
            &headers(1, &req, true),
            Allow::StreamError,
        )
        .await;
    }
}

#[tokio::test]
async fn a_content_length_not_matching_the_data_is_malformed() {
    // §8.1.1: "A request or response is also malformed if the value of a content-length
    // header field does not equal the sum of the DATA frame payload lengths". The head was
    // valid, so the request may have been passed on before the body showed the mismatch; the
    // stream must still be reset.
    let (_app, addr, _up) = setup("h2d_content_length", "").await;
    for (what, declared, sent) in [
        ("fewer bytes than content-length", "10", &b"abc"[..]),
        ("more bytes than content-length", "2", b"abc"),
        ("body with content-length 0", "0", b"x"),
    ] {
        let mut c = H2c::open(addr).await;
        c.send(&cat(&[
            headers(
                1,
                &request("POST", "/content-length", &[("content-length", declared)]),
                false,
            ),
            data(1, sent, true),
        ]))
        .await;
        let how = c.stream_error(1, &[PROTOCOL_ERROR]).await;
        println!("{what}: {how:?}");
        if how == Rejected::Stream {
            c.get_ok(3, "/after").await;
        }
    }
    // No body at all with a content-length.
    let mut c = H2c::open(addr).await;
    c.send(&headers(
        1,
        &request("POST", "/content-length", &[("content-length", "5")]),
        true,
    ))
    .await;
    if c.stream_error(1, &[PROTOCOL_ERROR]).await == Rejected::Stream {
        c.get_ok(3, "/after").await;
    }
}

#[tokio::test]
async fn a_status_pseudo_header_in_a_request_is_malformed() {
    // §8.3.2: ":status" is a response pseudo-header; §8.3: "Pseudo-header fields defined for
    // responses MUST NOT appear in requests."
    let (_app, addr, up) = setup("h2d_status_in_request", "").await;
    let req = cat(&[get("/status"), lit(":status", "200")]);
    malformed(
        addr,
        &up,
        ":status in request",
        &headers(1, &req, true),
        Allow::StreamError,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. HPACK (RFC 7541).
// ---------------------------------------------------------------------------------------------

#[test]
fn hpack_helpers_decode_rfc7541_examples() {
    // The test's own HPACK code against RFC 7541 Appendix C.4 (requests with Huffman coding,
    // sharing one dynamic table).
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut d = Hpack::new();
    let got = d
        .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
        .unwrap();
    assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
    let got = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
    assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
    assert_eq!(got[4], ("cache-control".into(), "no-cache".into()));
    let got = d
        .decode(&hex(
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ))
        .unwrap();
    assert_eq!(got[1], (":scheme".into(), "https".into()));
    assert_eq!(got[2], (":path".into(), "/index.html".into()));
    assert_eq!(got[4], ("custom-key".into(), "custom-value".into()));
    assert_eq!(d.size, 164);
    assert_eq!(
        huffman_encode(b"www.example.com"),
        hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
    );
    // The code is complete (Kraft's equality) and every byte survives a round trip.
    let kraft: u128 = HUFFMAN_LENGTHS.iter().map(|l| 1u128 << (30 - l)).sum();
    assert_eq!(kraft, 1 << 30);
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
    assert_eq!(hpack_int(0, 5, 1337), vec![31, 154, 10]);
    assert_eq!(hpack_read_int(&mut &[31u8, 154, 10][..], 5).unwrap(), 1337);
}

#[tokio::test]
async fn hpack_decoding_errors_are_compression_errors() {
    // RFC 7541 §2.3.3: "Indices strictly greater than the sum of the lengths of both tables
    // MUST be treated as a decoding error"; §6.1: index 0 is one too; §5.2: padding longer
    // than 7 bits, padding other than the EOS code's most significant bits and a string with
    // EOS MUST be treated as decoding errors. RFC 9113 §4.3: "A decoding error in a field
    // block MUST be treated as a connection error of type COMPRESSION_ERROR."
    let (_app, addr, _up) = setup("h2d_hpack_errors", "").await;
    for (what, block) in hpack_decoding_errors() {
        println!("{what}");
        expect_connection_error(addr, &headers(1, &block, true), &[COMPRESSION_ERROR]).await;
    }
}

#[tokio::test]
async fn hpack_table_size_update_over_the_setting_is_a_compression_error() {
    // RFC 7541 §6.3: "The new maximum size MUST be lower than or equal to the limit determined
    // by the protocol using HPACK" (SETTINGS_HEADER_TABLE_SIZE, 4,096 here); §4.2: a value
    // over it MUST be treated as a decoding error.
    let (_app, addr, _up) = setup("h2d_hpack_size_update", "").await;
    expect_connection_error(
        addr,
        &headers(1, &cat(&[hpack_int(0x20, 5, 8192), get("/x")]), true),
        &[COMPRESSION_ERROR],
    )
    .await;
}

#[tokio::test]
async fn hpack_table_size_updates_within_the_setting_are_accepted() {
    let (_app, addr, _up) = setup("h2d_hpack_size_ok", "").await;
    let mut c = H2c::open(addr).await;
    // Shrink to 0 (evicting everything) and grow back to 4,096 at the start of a block.
    c.send(&headers(
        1,
        &cat(&[
            hpack_int(0x20, 5, 0),
            hpack_int(0x20, 5, 4096),
            get("/size-update"),
            lit_indexed("x-kept", "yes"),
        ]),
        true,
    ))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().header("x-kept"), Some("yes"));
    c.send(&headers(
        3,
        &cat(&[get("/size-update-2"), indexed(62)]),
        true,
    ))
    .await;
    assert_eq!(c.response(3).await.seen().header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn hpack_dynamic_table_entries_carry_over_between_requests() {
    let (_app, addr, _up) = setup("h2d_hpack_dynamic", "").await;
    let mut c = H2c::open(addr).await;
    // Request 1 adds `:authority: h2.test` (literal with incremental indexing, indexed name 1)
    // and `x-dyn: one` (literal name) to the table: x-dyn at 62, :authority at 63.
    c.send(&headers(
        1,
        &cat(&[
            vec![0x82, 0x86, 0x84],
            cat(&[hpack_int(0x40, 6, 1), hpack_str(AUTHORITY.as_bytes())]),
            lit_indexed("x-dyn", "one"),
        ]),
        true,
    ))
    .await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().header("x-dyn"), Some("one"));
    // Request 2 refers to both by index only.
    c.send(&headers(3, &[0x82, 0x86, 0x84, 0xbf, 0xbe], true))
        .await;
    let r = c.response(3).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.header("x-dyn"), Some("one"), "{}", seen.desc);
    assert_eq!(seen.header("host"), Some(AUTHORITY), "{}", seen.desc);
    // Entries shift as more are added: a third adds `x-dyn: two` at 62 (one moves to 63).
    c.send(&headers(
        5,
        &cat(&[vec![0x82, 0x86, 0x84, 0xbf], lit_indexed("x-dyn", "two")]),
        true,
    ))
    .await;
    assert_eq!(c.response(5).await.status, 200);
    c.send(&headers(7, &[0x82, 0x86, 0x84, 0xc0, 0xbe, 0xbf], true))
        .await;
    let r = c.response(7).await;
    let seen = r.seen();
    assert_eq!(
        seen.desc.matches("h:x-dyn=").count(),
        2,
        "both x-dyn values: {}",
        seen.desc
    );
    // The never-indexed form (§6.2.3) is accepted as well.
    c.send(&headers(
        9,
        &cat(&[
            get("/never"),
            vec![0x10],
            hpack_str(b"x-secret"),
            hpack_str(b"s"),
        ]),
        true,
    ))
    .await;
    assert_eq!(c.response(9).await.seen().header("x-secret"), Some("s"));
}

#[tokio::test]
async fn hpack_huffman_coded_request_fields_are_decoded() {
    let (_app, addr, _up) = setup("h2d_hpack_huffman", "").await;
    let mut c = H2c::open(addr).await;
    let block = cat(&[
        vec![0x82, 0x86, 0x04],
        hpack_huffman_str(b"/huffman?q=%20x"),
        vec![0x01],
        hpack_huffman_str(AUTHORITY.as_bytes()),
        vec![0x00],
        hpack_huffman_str(b"x-huff"),
        hpack_huffman_str(b"Mixed Case; value=\"1\""),
    ]);
    c.send(&headers(1, &block, true)).await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.field("path"), Some("/huffman?q=%20x"));
    assert_eq!(seen.header("x-huff"), Some("Mixed Case; value=\"1\""));
    // An empty Huffman string, too.
    let block = cat(&[
        get("/empty-huffman"),
        vec![0x00],
        hpack_str(b"x-empty"),
        vec![0x80],
    ]);
    c.send(&headers(3, &block, true)).await;
    let r = c.response(3).await;
    assert_eq!(r.seen().header("x-empty"), Some(""));
}

/// Header blocks for stream 1 that fail to decode (RFC 7541).
fn hpack_decoding_errors() -> Vec<(&'static str, Vec<u8>)> {
    // `x-bad: <value>` with a raw (Huffman-flagged) value.
    let bad_value = |coded: &[u8]| {
        let mut v = hpack_int(0x80, 7, coded.len());
        v.extend_from_slice(coded);
        cat(&[get("/x"), vec![0x00], hpack_str(b"x-bad"), v])
    };
    // "a" is 00011: one byte with 111 as padding is 0x1f.
    vec![
        ("index 70, past both tables", cat(&[get("/x"), indexed(70)])),
        ("index 0", cat(&[vec![0x80], get("/x")])),
        ("name index 70", cat(&[get("/x"), lit_name(70, "v")])),
        ("Huffman padding not all ones", bad_value(&[0x1e])),
        (
            "Huffman padding longer than 7 bits",
            bad_value(&[0x1f, 0xff]),
        ),
        ("Huffman EOS", bad_value(&[0xff, 0xff, 0xff, 0xff])),
        ("truncated integer", cat(&[get("/x"), vec![0xff]])),
        (
            "string longer than the block",
            cat(&[get("/x"), vec![0x00, 0x05, b'a']]),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// 7. Flow control (RFC 9113 §5.2, §6.9).
// ---------------------------------------------------------------------------------------------

/// Checks DATA frames against the client's windows.
struct Windows {
    stream: i64,
    conn: i64,
}

impl Windows {
    fn take(&mut self, f: &Frame) {
        let n = f.payload.len() as i64;
        assert!(
            n <= self.stream && n <= self.conn,
            "DATA of {n} bytes with a stream window of {} and a connection window of {}",
            self.stream,
            self.conn
        );
        self.stream -= n;
        self.conn -= n;
    }
}

#[tokio::test]
async fn a_large_response_to_a_small_window_respects_flow_control() {
    // The client announces SETTINGS_INITIAL_WINDOW_SIZE = 1,000; the response is 100,000
    // bytes. The server sends no more than the stream and connection windows allow (the
    // connection's stays at 65,535 until the client opens it), waits when they are empty, and
    // goes on after each WINDOW_UPDATE until the body is complete.
    let (_app, addr, _up) = setup("h2d_small_window", "").await;
    let mut c = H2c::open_with(addr, &[(INITIAL_WINDOW_SIZE, 1000)]).await;
    c.send(&headers(1, &get("/size/100000"), true)).await;
    let mut w = Windows {
        stream: 1000,
        conn: 65_535,
    };
    let (mut body, mut status, mut pauses) = (Vec::new(), None, 0);
    loop {
        let f = c.next().await;
        match f.ty {
            HEADERS if f.stream == 1 => status = f.status(),
            DATA if f.stream == 1 => {
                w.take(&f);
                body.extend_from_slice(f.data());
                if f.has(END_STREAM) {
                    break;
                }
                if w.stream == 0 || w.conn == 0 {
                    // Out of window: the server must wait (checked on the first few).
                    if pauses < 3 {
                        c.quiet("with the window used up").await;
                    }
                    pauses += 1;
                    let mut more = Vec::new();
                    if w.stream == 0 {
                        more.extend(window_update(1, 7000));
                        w.stream += 7000;
                    }
                    if w.conn < 20_000 {
                        more.extend(window_update(0, 30_000));
                        w.conn += 30_000;
                    }
                    c.send(&more).await;
                }
            }
            _ => {}
        }
    }
    assert_eq!(status, Some(200));
    assert_eq!(body.len(), 100_000);
    assert_eq!(body, pattern(100_000));
    assert!(pauses >= 14, "{pauses}");
}

#[tokio::test]
async fn a_connection_window_update_alone_does_not_open_a_stream_window() {
    let (_app, addr, _up) = setup("h2d_conn_window_only", "").await;
    let mut c = H2c::open_with(addr, &[(INITIAL_WINDOW_SIZE, 100)]).await;
    c.send(&cat(&[
        window_update(0, 1_000_000),
        headers(1, &get("/size/5000"), true),
    ]))
    .await;
    let mut w = Windows {
        stream: 100,
        conn: 1_065_535,
    };
    let mut got = 0;
    while got < 100 {
        let f = c.until("DATA", |f| f.ty == DATA).await;
        w.take(&f);
        got += f.payload.len();
    }
    c.quiet("stream window used up").await;
    c.send(&window_update(1, 4900)).await;
    w.stream += 4900;
    while got < 5000 {
        let f = c.until("DATA", |f| f.ty == DATA).await;
        w.take(&f);
        got += f.payload.len();
        if got == 5000 {
            assert!(f.has(END_STREAM));
        }
    }
}

#[tokio::test]
async fn initial_window_size_changes_apply_to_open_streams() {
    // §6.9.2: a change of SETTINGS_INITIAL_WINDOW_SIZE adjusts the windows of all open streams
    // by the difference, which can make a window negative; the server then sends nothing until
    // WINDOW_UPDATEs make it positive.
    let (_app, addr, _up) = setup("h2d_iws_change", "").await;
    let mut c = H2c::open_with(addr, &[(INITIAL_WINDOW_SIZE, 1000)]).await;
    c.send(&cat(&[
        window_update(0, 10_000_000),
        headers(1, &get("/size/50000"), true),
    ]))
    .await;
    let mut w = Windows {
        stream: 1000,
        conn: 10_065_535,
    };
    let mut body = Vec::new();
    async fn read_until_window_empty(c: &mut H2c, w: &mut Windows, body: &mut Vec<u8>) {
        while w.stream > 0 {
            let f = c.next().await;
            if f.ty == DATA && f.stream == 1 {
                w.take(&f);
                body.extend_from_slice(f.data());
                assert!(!f.has(END_STREAM));
            }
        }
        c.quiet("with the stream window used up").await;
    }
    read_until_window_empty(&mut c, &mut w, &mut body).await;
    assert_eq!(body.len(), 1000);
    // Raise the initial window by 5,000: the open stream may take 5,000 more bytes.
    c.send(&settings(&[(INITIAL_WINDOW_SIZE, 6000)])).await;
    w.stream += 5000;
    read_until_window_empty(&mut c, &mut w, &mut body).await;
    assert_eq!(body.len(), 6000);
    assert!(
        c.log
            .iter()
            .any(|l| l.starts_with("SETTINGS(stream 0, flags 0x1")),
        "no SETTINGS ACK: {}",
        c.history()
    );
    // Lower it by 5,000: the window goes to -5,000; 4,000 more still leaves it negative.
    c.send(&settings(&[(INITIAL_WINDOW_SIZE, 1000)])).await;
    c.send(&window_update(1, 4000)).await;
    c.quiet("with a negative stream window").await;
    // 2,000 more make it 1,000.
    c.send(&window_update(1, 2000)).await;
    w.stream = 1000;
    read_until_window_empty(&mut c, &mut w, &mut body).await;
    assert_eq!(body.len(), 7000);
    // Open it wide: the rest follows.
    c.send(&window_update(1, 1_000_000)).await;
    w.stream += 1_000_000;
    loop {
        let f = c.next().await;
        if f.ty == DATA && f.stream == 1 {
            w.take(&f);
            body.extend_from_slice(f.data());
            if f.has(END_STREAM) {
                break;
            }
        }
    }
    assert_eq!(body, pattern(50_000));
}

#[tokio::test]
async fn data_beyond_the_servers_window_is_a_flow_control_error() {
    // §6.9.1: "A receiver MAY respond with a stream error or connection error of type
    // FLOW_CONTROL_ERROR if it is unable to accept a frame." The server announces 65,535 for
    // streams and the connection; a fault-filter delay keeps the body unread, so no window
    // comes back before the client sends 81,920 bytes.
    let (_app, addr, up) = setup_with(
        "h2d_client_overflow",
        r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              delay: {fixed_delay: 3s, percentage: {numerator: 100}}
"#,
        "          http2_protocol_options: {initial_stream_window_size: 65535, initial_connection_window_size: 65535}\n",
        "",
    )
    .await;
    let mut c = H2c::open(addr).await;
    let mut frames = vec![headers(1, &request("POST", "/overflow", &[]), false)];
    for i in 0..5 {
        frames.push(data(1, &[b'x'; 16_384], i == 4));
    }
    c.send(&frames.concat()).await;
    let how = c.stream_error(1, &[FLOW_CONTROL_ERROR]).await;
    println!("{how:?}");
    assert!(!up.saw("/overflow"));
}

// ---------------------------------------------------------------------------------------------
// 8. GOAWAY, idle timeout and drain (RFC 9113 §6.8).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_goaway_lets_the_server_finish_and_close() {
    let (_app, addr, _up) = setup("h2d_client_goaway", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &get("/delay/300"), true)).await;
    // The client will accept no pushed streams and is going away.
    c.send(&goaway(0, NO_ERROR)).await;
    let r = c.response(1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().field("path"), Some("/delay/300"));
    // With nothing left in flight the server closes the connection (possibly after a GOAWAY of
    // its own).
    for g in c.goaways_until_closed().await {
        assert_eq!(g.code(), NO_ERROR, "{}", g.describe());
    }
}

#[tokio::test]
async fn idle_timeout_sends_goaway_and_closes() {
    let (_app, addr, _up) = setup(
        "h2d_idle",
        "          common_http_protocol_options: {idle_timeout: 0.3s}\n",
    )
    .await;
    let mut c = H2c::open(addr).await;
    c.get_ok(1, "/before-idle").await;
    let t = std::time::Instant::now();
    let goaways = c.goaways_until_closed().await;
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(
        !goaways.is_empty(),
        "closed without GOAWAY: {}",
        c.history()
    );
    for g in &goaways {
        assert_eq!(g.code(), NO_ERROR, "{}", g.describe());
    }
    // The last GOAWAY names the last stream processed.
    assert_eq!(goaways.last().unwrap().last_stream(), 1, "{}", c.history());
}

#[tokio::test]
async fn drain_sends_goaway_and_completes_streams_in_flight() {
    let (app, addr, up) = setup("h2d_drain", "").await;
    let mut c = H2c::open(addr).await;
    c.send(&cat(&[
        headers(1, &get("/delay/600/a"), true),
        headers(3, &get("/delay/600/b"), true),
    ]))
    .await;
    let deadline = tokio::time::Instant::now() + STEP;
    while up.count() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let app = Arc::new(app);
    let draining = app.clone();
    tokio::spawn(async move { draining.drain().await });
    // A GOAWAY(NO_ERROR) comes first, while the streams are in flight...
    let g = c.until("GOAWAY", |f| f.ty == GOAWAY).await;
    assert_eq!(g.code(), NO_ERROR, "{}", g.describe());
    assert!(g.last_stream() >= 3, "{}", g.describe());
    // ...then both responses, complete...
    let mut got = c.collect_after_goaway(&[1, 3]).await;
    for s in [1, 3] {
        let r = got.remove(&s).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.seen().field("path").unwrap().starts_with("/delay/600/"));
    }
    // ...then the connection closes, any further GOAWAY naming stream 3 as the last.
    for g in c.goaways_until_closed().await {
        assert_eq!(g.code(), NO_ERROR, "{}", g.describe());
        assert_eq!(g.last_stream(), 3, "{}", g.describe());
    }
}

impl H2c {
    /// As `collect`, for a connection already sent GOAWAY: more GOAWAYs are fine, resets are
    /// not.
    async fn collect_after_goaway(&mut self, streams: &[u32]) -> HashMap<u32, Resp> {
        let mut open: HashMap<u32, Resp> = streams.iter().map(|s| (*s, Resp::default())).collect();
        let mut done = HashMap::new();
        while !open.is_empty() {
            let f = self.next().await;
            if f.ty == GOAWAY {
                assert_eq!(f.code(), NO_ERROR, "{}", f.describe());
                continue;
            }
            let Some(r) = open.get_mut(&f.stream) else {
                continue;
            };
            match f.ty {
                HEADERS if r.status == 0 => {
                    r.status = f.status().unwrap();
                    r.headers = f.fields.clone();
                }
                DATA => {
                    r.body.extend_from_slice(f.data());
                    if !f.payload.is_empty() {
                        let n = f.payload.len() as u32;
                        self.try_send(&cat(&[window_update(0, n), window_update(f.stream, n)]))
                            .await;
                    }
                }
                RST_STREAM => panic!("{}; after\n  {}", f.describe(), self.history()),
                _ => continue,
            }
            if f.has(END_STREAM) {
                done.insert(f.stream, open.remove(&f.stream).unwrap());
            }
        }
        done
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Rapid reset (CVE-2023-44487).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rapid_reset_closes_the_connection() {
    // A client opening streams and resetting them straight away, 2,000 times, has its
    // connection closed with an error (ENHANCE_YOUR_CALM, typically) instead of being served
    // forever, and most of those requests never reach the upstream.
    let (_app, addr, up) = setup("h2d_rapid_reset", "").await;
    let mut c = H2c::open(addr).await;
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(headers(id, &get("/rapid"), true));
        burst.extend(rst(id, CANCEL));
    }
    c.try_send(&burst).await;
    let goaways = c.goaways_until_closed().await;
    let g = goaways
        .first()
        .unwrap_or_else(|| panic!("closed without GOAWAY; after\n  {}", c.history()));
    assert_ne!(g.code(), NO_ERROR, "{}", g.describe());
    println!(
        "rapid reset: {}; {} requests reached the upstream",
        g.describe(),
        up.count()
    );
    if g.code() != ENHANCE_YOUR_CALM {
        println!(
            "note: GOAWAY({}) rather than ENHANCE_YOUR_CALM",
            code_name(g.code())
        );
    }
    assert!(
        up.count() < 1000,
        "{} requests reached the upstream",
        up.count()
    );
}

#[tokio::test]
async fn rapid_reset_spread_over_many_writes_closes_the_connection() {
    // The same with each HEADERS + RST_STREAM pair in its own write, a little apart, so that
    // the server may accept each stream before its reset arrives.
    let (_app, addr, up) = setup("h2d_rapid_reset_slow", "").await;
    let mut c = H2c::open(addr).await;
    let mut closed = false;
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        let pair = cat(&[headers(id, &get("/rapid"), true), rst(id, CANCEL)]);
        if !c.try_send(&pair).await {
            closed = true;
            break;
        }
        if i % 10 == 9 {
            // Let the server run, and see whether it has had enough.
            match c.read(Duration::from_millis(1)).await {
                Read::Frame(f) if f.ty == GOAWAY => {
                    closed = true;
                    break;
                }
                Read::Closed => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
    }
    if !closed {
        // Maybe the verdict is on its way.
        loop {
            match c.read(Duration::from_millis(500)).await {
                Read::Frame(f) if f.ty == GOAWAY => {
                    closed = true;
                    break;
                }
                Read::Frame(_) => {}
                Read::Closed => {
                    closed = true;
                    break;
                }
                Read::Quiet => break,
            }
        }
    }
    println!("{} requests reached the upstream", up.count());
    assert!(
        closed,
        "2,000 streams opened and reset one after another, and the connection is still open \
         ({} requests reached the upstream)",
        up.count()
    );
}

#[tokio::test]
async fn a_few_client_resets_are_fine() {
    let (_app, addr, _up) = setup("h2d_few_resets", "").await;
    let mut c = H2c::open(addr).await;
    for round in 0..5u32 {
        let base = 1 + round * 12;
        let ids: Vec<u32> = (0..6).map(|i| base + 2 * i).collect();
        let mut frames = Vec::new();
        for id in &ids {
            frames.extend(headers(*id, &get(&format!("/delay/100/{id}")), true));
        }
        // Two of six are cancelled at once.
        frames.extend(rst(ids[1], CANCEL));
        frames.extend(rst(ids[4], CANCEL));
        c.send(&frames).await;
        let want: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| *id != ids[1] && *id != ids[4])
            .collect();
        let mut got = c.collect(&want).await;
        for id in want {
            match got.remove(&id).unwrap() {
                Outcome::Response(r) => assert_eq!(r.status, 200),
                Outcome::Reset(code) => panic!("stream {id} reset: {}", code_name(code)),
            }
        }
    }
    c.get_ok(61, "/still-fine").await;
    assert!(
        !c.log.iter().any(|l| l.starts_with("GOAWAY")),
        "{}",
        c.history()
    );
}

// ---------------------------------------------------------------------------------------------
// 10. nghttp2's clients.
// ---------------------------------------------------------------------------------------------

/// Runs `program` with `args`, killed after `limit`; its exit success and stdout + stderr.
/// `None` when the program is not installed.
async fn run_tool(program: &str, args: Vec<String>, limit: Duration) -> Option<(bool, String)> {
    if !std::path::Path::new(program).exists() {
        println!("{program} is not installed; skipping");
        return None;
    }
    let program = program.to_string();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut child = std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
        match status {
            Some(s) => (s.success(), text),
            None => (false, format!("{program} timed out:\n{text}")),
        }
    })
    .await
    .unwrap();
    Some(out)
}

#[tokio::test]
async fn nghttp_gets_a_200() {
    let (_app, addr, up) = setup("h2d_nghttp", "").await;
    let url = format!("http://127.0.0.1:{}/nghttp", addr.port());
    let Some((ok, out)) = run_tool(
        "/usr/bin/nghttp",
        vec!["-nv".into(), "-t".into(), "5".into(), url],
        Duration::from_secs(10),
    )
    .await
    else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains(":status: 200"), "{out}");
    assert!(
        out.contains("recv GOAWAY") || out.contains("send GOAWAY"),
        "{out}"
    );
    assert!(up.saw("/nghttp"));
}

#[tokio::test]
async fn h2load_completes_without_failures() {
    let (_app, addr, up) = setup("h2d_h2load", "").await;
    let url = format!("http://127.0.0.1:{}/h2load", addr.port());
    let Some((ok, out)) = run_tool(
        "/usr/bin/h2load",
        ["-n", "2000", "-c", "4", "-m", "10", &url]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Duration::from_secs(30),
    )
    .await
    else {
        return;
    };
    assert!(ok, "{out}");
    assert!(
        out.contains("2000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{out}"
    );
    assert!(out.contains("status codes: 2000 2xx"), "{out}");
    assert_eq!(up.count(), 2000);
}

// 11. Robustness: random frames.

/// Sequences of random frames (random types, flags, small stream ids, payloads of random bytes,
/// some header blocks of random HPACK) after a valid preface and SETTINGS: whatever the server
/// answers, no task of the proxy panics, and the listener serves a good request afterwards.
/// Bounded: 1,500 connections of up to 12 frames, seeded, so a failure reproduces.
#[tokio::test]
async fn random_frames_never_panic_the_server() {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
    let (_app, addr, _up) = setup("h2d_fuzz", "").await;
    let mut rng = fastrand::Rng::with_seed(0x5eed_0d2d);
    for _ in 0..1500 {
        let mut bytes = frame(4, 0, 0, &[]);
        for _ in 0..rng.usize(1..12) {
            let ty = rng.u8(0..11);
            let flags = *rng.choice(&[0u8, 1, 4, 5, 8, 0x20, 0x25, 0xff]).unwrap();
            let stream = *rng.choice(&[0u32, 1, 2, 3, 5, 7, 0x7fff_ffff]).unwrap();
            let len = rng.usize(0..48);
            let mut payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if ty == 1 && rng.bool() {
                // A header block that starts well: static :method/:scheme/:path.
                payload = cat(&[vec![0x82, 0x86, 0x84], payload]);
            }
            bytes.extend(frame(ty, flags, stream, &payload));
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut all = PREFACE.to_vec();
        all.extend(bytes);
        let _ = s.write_all(&all).await;
        let mut buf = vec![0u8; 4096];
        // Read what comes back until the server closes or goes quiet.
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(30), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
        }
    }
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
    let mut c = H2c::open(addr).await;
    c.send(&headers(1, &request("GET", "/after-fuzz", &[]), true))
        .await;
    assert_eq!(c.response(1).await.status, 200);
}
