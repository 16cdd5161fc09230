//! Raw-socket conformance tests for the downstream HTTP/1.1 server: what a client speaking
//! HTTP/1.1 (and 1.0) to a Sluice listener sees, compared with Envoy's behaviour. Requests are
//! written to the socket as bytes and responses parsed by hand; a local upstream echoes what
//! it received (headers and the exact body bytes). Covers keep-alive, pipelining, request body
//! framing, request smuggling defences, malformed input, header limits,
//! `Expect: 100-continue`, HEAD, response framing, client disconnects, HTTP/1.0 and
//! absolute-form targets.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single step (connect, read, write) may take before the test fails.
const STEP: Duration = Duration::from_secs(5);

fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

// ---------------------------------------------------------------------------------------------
// A body-echoing upstream.
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 upstream that answers with a description of the request it received, a blank
/// line, then the exact request body bytes:
///
/// ```text
/// method=POST path=/x version=HTTP/1.1
/// h:<name>=<value>      (one per header)
/// t:<name>=<value>      (one per request trailer)
/// body-len=<n>
///
/// <body bytes>
/// ```
///
/// Special paths: `/chunked` answers with a streamed body and no content-length (chunked on
/// the wire); a path with `/delay/<ms>` waits before answering.
struct EchoBody {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn echo_body_upstream() -> EchoBody {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let rq = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let rq = rq.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let rq = rq.clone();
                    async move {
                        rq.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(echo_body_answer(req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    EchoBody { addr, requests }
}

type EchoRespBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo_body_answer(req: Request<Incoming>) -> Response<EchoRespBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if let Some((_, ms)) = path.split_once("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path == "/chunked" {
        // Written piece by piece with pauses, with no length known up front.
        let chunks =
            futures_util::stream::iter(["first;", "second;", "third"]).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes())))
            });
        return Response::builder()
            .status(200)
            .body(BodyExt::boxed(StreamBody::new(chunks)))
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
    let is_head = req.method() == http::Method::HEAD;
    let collected = req.into_body().collect().await;
    let (body, trailers) = match collected {
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
    let len = out.len();
    let mut b = Response::builder()
        .status(200)
        .header("x-upstream", "echo-body");
    if is_head {
        // What a GET would have carried.
        b = b.header("content-length", len);
    }
    b.body(Full::new(Bytes::from(out)).boxed()).unwrap()
}

/// A parsed echo description.
struct Seen {
    desc: String,
    body: Vec<u8>,
}

impl Seen {
    fn parse(resp_body: &[u8]) -> Seen {
        let split = resp_body
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or_else(|| panic!("no echo description: {:?}", lossy(resp_body)));
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
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("h:{name}=");
        self.desc
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1 client.
// ---------------------------------------------------------------------------------------------

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// For messages: at most 300 bytes of `b`.
fn short(b: &[u8]) -> String {
    if b.len() <= 300 {
        lossy(b)
    } else {
        format!("{}...({} bytes)", lossy(&b[..300]), b.len())
    }
}

/// One response as read off the wire.
#[derive(Debug)]
struct Resp {
    /// `HTTP/1.1` or `HTTP/1.0`.
    version: String,
    status: u16,
    /// Names lowercased, in wire order.
    headers: Vec<(String, String)>,
    /// Names as sent.
    raw_names: Vec<String>,
    body: Vec<u8>,
    /// The body was chunked on the wire.
    chunked: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn body_str(&self) -> String {
        lossy(&self.body)
    }
    fn seen(&self) -> Seen {
        Seen::parse(&self.body)
    }
    fn connection_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A raw client connection with a read buffer (bytes read past one response stay for the
/// next).
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Client { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        tokio::time::timeout(STEP, self.s.write_all(bytes.as_ref()))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Reads more bytes into the buffer; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut tmp = vec![0u8; 65536];
        let n = tokio::time::timeout(STEP, self.s.read(&mut tmp))
            .await
            .unwrap_or_else(|_| panic!("read timed out; buffered: {:?}", short(&self.buf)))
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    async fn fill_or_panic(&mut self, what: &str) {
        if !self.fill().await {
            panic!(
                "connection closed while reading {what}; buffered: {:?}",
                short(&self.buf)
            );
        }
    }

    /// Reads one line (without CRLF) from the buffer.
    async fn line(&mut self, what: &str) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return line;
            }
            self.fill_or_panic(what).await;
        }
    }

    async fn exact(&mut self, n: usize, what: &str) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill_or_panic(what).await;
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response (a 1xx counts as one). `head` is true when it answers a HEAD
    /// request (no body whatever the headers say).
    async fn response_to(&mut self, head: bool) -> Resp {
        let status_line = lossy(&self.line("the status line").await);
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!(
            version.starts_with("HTTP/1."),
            "bad status line {status_line:?}"
        );
        let mut headers = Vec::new();
        let mut raw_names = Vec::new();
        loop {
            let l = lossy(&self.line("the response headers").await);
            if l.is_empty() {
                break;
            }
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad response header line {l:?}"));
            raw_names.push(k.to_string());
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut r = Resp {
            version,
            status,
            headers,
            raw_names,
            body: Vec::new(),
            chunked: false,
        };
        if head || (100..200).contains(&status) || status == 204 || status == 304 {
            return r;
        }
        let te = r.header("transfer-encoding").map(str::to_ascii_lowercase);
        if te.as_deref().is_some_and(|t| t.ends_with("chunked")) {
            r.chunked = true;
            loop {
                let size_line = lossy(&self.line("a chunk size").await);
                let size = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // Trailers, then the blank line.
                    while !self.line("the trailers").await.is_empty() {}
                    break;
                }
                let data = self.exact(size, "chunk data").await;
                r.body.extend_from_slice(&data);
                let crlf = self.exact(2, "the chunk's CRLF").await;
                assert_eq!(crlf, b"\r\n", "chunk not followed by CRLF");
            }
        } else if let Some(cl) = r.header("content-length") {
            let n: usize = cl.parse().expect("numeric content-length");
            r.body = self.exact(n, "the body").await;
        } else {
            // Delimited by close.
            while self.fill().await {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }

    async fn response(&mut self) -> Resp {
        self.response_to(false).await
    }

    /// The next final (non-1xx) response.
    async fn final_response(&mut self) -> Resp {
        loop {
            let r = self.response().await;
            if r.status >= 200 {
                return r;
            }
        }
    }

    /// True if the server closes the connection (EOF or reset) within the step timeout, with
    /// nothing more sent.
    async fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 1024];
        match tokio::time::timeout(STEP, self.s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buf.is_empty(),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Err(_) => false,
        }
    }

    /// True if the connection is still open after a short while (no EOF, nothing sent).
    async fn still_open(&mut self) -> bool {
        let mut tmp = [0u8; 64];
        tokio::time::timeout(Duration::from_millis(300), self.s.read(&mut tmp))
            .await
            .is_err()
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n")
}

/// Sluice with one HTTP listener `name` (stat prefix `name`) and one cluster `name` pointing at
/// a fresh body-echoing upstream.
async fn setup(name: &str, hcm_extra: &str) -> (sluice::app::App, SocketAddr, EchoBody) {
    let up = echo_body_upstream().await;
    let app = sluice(&bootstrap(
        &listener_with(name, &all_to(name), hcm_extra),
        &cluster(name, &[up.addr], ""),
    ))
    .await;
    let addr = app.listener_address(name).unwrap();
    (app, addr, up)
}

/// Sends `req` on a fresh connection and expects `status`; returns the response and the
/// connection.
async fn answered(addr: SocketAddr, req: &[u8], status: u16) -> (Resp, Client) {
    let mut c = Client::connect(addr).await;
    c.send(req).await;
    let r = c.response().await;
    assert_eq!(
        r.status,
        status,
        "request {:?} got {r:?} body {:?}",
        short(req),
        r.body_str()
    );
    (r, c)
}

/// Sends `req` on a fresh connection and expects `status`, then the connection closed.
async fn rejected(addr: SocketAddr, req: &[u8], status: u16) -> Resp {
    let mut c = Client::connect(addr).await;
    c.send(req).await;
    let r = c.response().await;
    assert_eq!(
        r.status,
        status,
        "request {:?} got {r:?} body {:?}",
        short(req),
        r.body_str()
    );
    assert!(
        c.closed().await,
        "connection not closed after {status} for {:?}",
        short(req)
    );
    r
}

// ---------------------------------------------------------------------------------------------
// 1. Keep-alive and Connection: close.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let (_app, addr, up) = setup("h1_keepalive", "").await;
    let mut c = Client::connect(addr).await;
    for i in 0..5 {
        c.send(get(&format!("/ka/{i}"))).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.version, "HTTP/1.1");
        assert!(!r.connection_close(), "{r:?}");
        assert_eq!(r.seen().field("path"), Some(format!("/ka/{i}").as_str()));
    }
    assert!(c.still_open().await);
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
}

/// Both connections keep the header map of a message that went out for the next message
/// they parse (downstream: the response's map holds the next request; upstream: the
/// request's map holds the next response). Nothing of one exchange may show in the next.
#[tokio::test]
async fn header_maps_reused_across_requests_carry_nothing_over() {
    let (_app, addr, up) = setup("h1_reuse", "").await;
    let mut c = Client::connect(addr).await;
    let mut first = String::from("GET /one HTTP/1.1\r\nHost: h\r\n");
    for i in 0..40 {
        first.push_str(&format!("x-first-{i}: v{i}\r\n"));
    }
    first.push_str("x-both: from-first\r\n\r\n");
    c.send(first).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.header("x-first-39"), Some("v39"));
    assert_eq!(seen.header("x-both"), Some("from-first"));
    for path in ["/two", "/three"] {
        c.send(format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nx-both: from-{path}\r\n\r\n"
        ))
        .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = r.seen();
        assert_eq!(seen.field("path"), Some(path));
        // The request carries its own headers only: none of the first request's, none of
        // the previous response's.
        assert_eq!(seen.header("x-first-0"), None, "{}", seen.desc);
        assert_eq!(seen.header("x-upstream"), None, "{}", seen.desc);
        assert_eq!(seen.desc.matches("h:x-both=").count(), 1, "{}", seen.desc);
        assert_eq!(seen.header("x-both"), Some(format!("from-{path}").as_str()));
        // The response carries the upstream's headers only.
        assert_eq!(r.header("x-first-0"), None, "{r:?}");
        assert_eq!(r.header("x-both"), None, "{r:?}");
        assert_eq!(r.header("x-upstream"), Some("echo-body"));
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connection_close_request_gets_connection_close_and_the_server_closes() {
    let (_app, addr, _up) = setup("h1_connclose", "").await;
    let mut c = Client::connect(addr).await;
    c.send(get("/first")).await;
    assert_eq!(c.response().await.status, 200);
    c.send("GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/last"));
    assert!(r.connection_close(), "{r:?}");
    assert!(c.closed().await, "the server keeps the connection open");
}

// ---------------------------------------------------------------------------------------------
// 2. Pipelining.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_app, addr, up) = setup("h1_pipeline", "").await;
    let mut c = Client::connect(addr).await;
    // The first one is the slowest: order must follow the requests, not completion.
    let mut batch = String::new();
    batch.push_str(&get("/delay/200"));
    batch.push_str("POST /p2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    batch.push_str(&get("/p3"));
    c.send(batch).await;
    let r1 = c.response().await;
    let r2 = c.response().await;
    let r3 = c.response().await;
    assert_eq!(
        (r1.status, r2.status, r3.status),
        (200, 200, 200),
        "{r1:?} {r2:?} {r3:?}"
    );
    assert_eq!(r1.seen().field("path"), Some("/delay/200"));
    assert_eq!(r2.seen().field("path"), Some("/p2"));
    assert_eq!(r2.seen().body, b"hello");
    assert_eq!(r3.seen().field("path"), Some("/p3"));
    assert_eq!(up.requests.load(Ordering::SeqCst), 3);
    // Still usable afterwards.
    c.send(get("/p4")).await;
    assert_eq!(c.response().await.seen().field("path"), Some("/p4"));
}

// ---------------------------------------------------------------------------------------------
// 3. Request bodies.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn content_length_body_reaches_the_upstream_intact() {
    let (_app, addr, _up) = setup("h1_clbody", "").await;
    let mut c = Client::connect(addr).await;
    let body = b"a=1&b=\x00\xff binary \r\n\r\n bytes";
    let mut req = format!(
        "POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.field("method"), Some("POST"));
    assert_eq!(seen.body, body);
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    // The next request on the connection is not confused by the body.
    c.send(get("/after")).await;
    assert_eq!(c.response().await.seen().field("path"), Some("/after"));
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers_reaches_the_upstream_intact() {
    let (_app, addr, _up) = setup("h1_chunkbody", "").await;
    let mut c = Client::connect(addr).await;
    c.send(
        "POST /chunks HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n\
         1;name=\"quoted value\"\r\n \r\n\
         A\r\n0123456789\r\n\
         0\r\nX-Trailer: t1\r\nX-Other: t2\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(lossy(&seen.body), "hello 0123456789", "{}", seen.desc);
    assert_eq!(seen.field("method"), Some("POST"));
    // Streamed on as chunked, not buffered into a content-length. (Trailers are not checked:
    // Envoy drops them on HTTP/1 unless `enable_trailers` is set.)
    assert_eq!(
        seen.header("transfer-encoding"),
        Some("chunked"),
        "{}",
        seen.desc
    );
    // The connection is in sync after the trailers.
    c.send(get("/after")).await;
    assert_eq!(c.response().await.seen().field("path"), Some("/after"));
}

#[tokio::test]
async fn large_content_length_body_streams_through() {
    let (_app, addr, _up) = setup("h1_bigbody", "").await;
    let mut c = Client::connect(addr).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.send(format!(
        "PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ))
    .await;
    // In pieces, the way a real client trickles it.
    for piece in body.chunks(100_000) {
        c.send(piece).await;
    }
    let r = c.response().await;
    assert_eq!(r.status, 200);
    let seen = r.seen();
    assert_eq!(seen.field("method"), Some("PUT"));
    assert_eq!(seen.body.len(), body.len(), "{}", seen.desc);
    assert!(seen.body == body, "body bytes differ");
}

// ---------------------------------------------------------------------------------------------
// 4. Request smuggling defences.
// ---------------------------------------------------------------------------------------------

const CL_TE: [&[u8]; 2] = [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
];

#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_request() {
    // Whatever the status, the bytes after the chunked body must not become a second request,
    // and the connection must not be reused.
    let (_app, addr, up) = setup("h1_clte_nosmuggle", "").await;
    for req in CL_TE {
        let mut c = Client::connect(addr).await;
        c.send(req).await;
        let r = c.response().await;
        assert!(r.status == 400 || r.status == 200, "{r:?}");
        if r.status == 200 {
            let seen = r.seen();
            assert_eq!(seen.field("path"), Some("/"), "{}", seen.desc);
            assert_eq!(seen.header("content-length"), None, "{}", seen.desc);
        }
        assert!(c.closed().await, "connection reused after CL+TE: {r:?}");
    }
    assert!(up.requests.load(Ordering::SeqCst) <= CL_TE.len());
}

#[tokio::test]
async fn content_length_with_transfer_encoding_chunked_is_400() {
    // Envoy (allow_chunked_length false, the default) rejects the message outright. hyper
    // drops Content-Length, forwards the chunked body and closes after the response.
    let (_app, addr, up) = setup("h1_clte", "").await;
    for req in CL_TE {
        rejected(addr, req, 400).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn differing_content_lengths_are_400() {
    let (_app, addr, up) = setup("h1_clcl", "").await;
    rejected(
        addr,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
        400,
    )
    .await;
    rejected(
        addr,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 5\r\n\r\nhello",
        400,
    )
    .await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn non_numeric_content_length_is_400() {
    let (_app, addr, up) = setup("h1_clnan", "").await;
    for cl in ["abc", "-1", "+5", "0x5", "5 5", "99999999999999999999999"] {
        rejected(
            addr,
            format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\nhello").as_bytes(),
            400,
        )
        .await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unsupported_transfer_encoding_is_rejected() {
    let (_app, addr, up) = setup("h1_tegzip", "").await;
    // Envoy answers 501; either way the request never reaches the upstream and the
    // connection is closed. The exact status is checked by
    // `unsupported_transfer_encoding_is_501`.
    for te in ["gzip", "chunked, gzip", "identity"] {
        let mut c = Client::connect(addr).await;
        c.send(format!(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n"
        ))
        .await;
        let r = c.response().await;
        assert!(r.status == 400 || r.status == 501, "TE {te}: {r:?}");
        assert!(c.closed().await, "TE {te}: connection stays open");
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unsupported_transfer_encoding_is_501() {
    // Envoy's codec: a transfer-encoding other than `chunked` → 501 Not Implemented, close.
    let (_app, addr, up) = setup("h1_te501", "").await;
    for te in ["gzip", "chunked, gzip", "identity"] {
        rejected(
            addr,
            format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n")
                .as_bytes(),
            501,
        )
        .await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed requests and the header size limit.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_request_lines_are_400_and_close() {
    let (_app, addr, up) = setup("h1_badline", "").await;
    for req in [
        &b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n"[..],
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTX/1.1\r\nHost: h\r\n\r\n",
        b"G<T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET\r\nHost: h\r\n\r\n",
    ] {
        rejected(addr, req, 400).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_header_lines_are_400_and_close() {
    let (_app, addr, up) = setup("h1_badheader", "").await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: h\r\nBad Header Line\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nNo-Colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Value: a\x00b\r\n\r\n",
    ] {
        rejected(addr, req, 400).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

/// Requests whose header section exceeds 60 KiB (Envoy's default `max_request_headers_kb`).
fn oversized_heads() -> Vec<Vec<u8>> {
    // One 64 KiB header.
    let one = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // Many headers of ordinary size.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(2000)));
    }
    many.push_str("\r\n");
    vec![one.into_bytes(), many.into_bytes()]
}

#[tokio::test]
async fn header_section_over_max_request_headers_kb_is_431() {
    let (_app, addr, up) = setup("h1_bighead", "").await;
    for req in oversized_heads() {
        answered(addr, &req, 431).await;
    }
    // Just under the limit passes.
    let mut c = Client::connect(addr).await;
    let ok = "c".repeat(50 * 1024);
    c.send(format!("GET /ok HTTP/1.1\r\nHost: h\r\nX-Ok: {ok}\r\n\r\n"))
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().header("x-ok").map(str::len), Some(ok.len()));
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn header_section_over_max_request_headers_kb_is_431_and_close() {
    // Envoy closes the connection after the 431. hyper, when its read buffer overflows,
    // writes the 431 and then leaves the connection open (until the idle timeout).
    let (app, addr, _up) = setup("h1_bighead_close", "").await;
    for req in oversized_heads() {
        rejected(addr, &req, 431).await;
    }
    let cx = stat(&app, "http.h1_bighead_close.downstream_cx_active").await;
    assert_eq!(cx, Some(0));
}

#[tokio::test]
async fn max_request_headers_kb_is_configurable() {
    let (_app, addr, _up) = setup("h1_headkb", "          max_request_headers_kb: 8\n").await;
    let mut c = Client::connect(addr).await;
    c.send(format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Small: {}\r\n\r\n",
        "s".repeat(4000)
    ))
    .await;
    assert_eq!(c.response().await.status, 200);
    answered(
        addr,
        format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "b".repeat(12 * 1024)
        )
        .as_bytes(),
        431,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Expect: 100-continue.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body() {
    let (_app, addr, _up) = setup("h1_expect", "").await;
    let mut c = Client::connect(addr).await;
    c.send(
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // Nothing of the body sent yet: the interim response must come first.
    let interim = c.response().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send("hello world").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.body, b"hello world");
    // The connection stays usable.
    c.send(get("/next")).await;
    assert_eq!(c.final_response().await.seen().field("path"), Some("/next"));
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_proxy_and_not_forwarded() {
    // Envoy (proxy_100_continue false, the default) answers `100 Continue` itself and strips
    // `Expect` from the request it forwards.
    let (_app, addr, _up) = setup("h1_expect_strip", "").await;
    let mut c = Client::connect(addr).await;
    c.send("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 100);
    c.send("ok").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.header("expect"), None, "{}", seen.desc);
    assert_eq!(seen.body, b"ok");
}

// ---------------------------------------------------------------------------------------------
// 7. HEAD.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn head_response_has_headers_but_no_body() {
    let (_app, addr, _up) = setup("h1_head", "").await;
    let mut c = Client::connect(addr).await;
    c.send("HEAD /thing HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response_to(true).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cl: usize = r
        .header("content-length")
        .unwrap_or_else(|| panic!("no content-length: {r:?}"))
        .parse()
        .unwrap();
    assert!(cl > 0, "{r:?}");
    // No body bytes follow: the next response starts right away.
    c.send(get("/after-head")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/after-head"));
    assert!(c.buf.is_empty(), "stray bytes: {:?}", lossy(&c.buf));
}

// ---------------------------------------------------------------------------------------------
// 8. Response framing.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_chunked_response_reaches_the_client_chunked_and_complete() {
    let (_app, addr, _up) = setup("h1_respchunk", "").await;
    let mut c = Client::connect(addr).await;
    c.send(get("/chunked")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.chunked, "not chunked: {r:?}");
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.body_str(), "first;second;third");
    // Framing kept the connection in sync.
    c.send(get("/after")).await;
    assert_eq!(c.response().await.seen().field("path"), Some("/after"));
}

#[tokio::test]
async fn upstream_content_length_response_keeps_its_content_length() {
    let (_app, addr, _up) = setup("h1_respcl", "").await;
    let mut c = Client::connect(addr).await;
    c.send(get("/cl")).await;
    let r = c.response().await;
    assert!(!r.chunked, "{r:?}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Client disconnects.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_disconnect_during_a_slow_upstream_is_harmless() {
    let (app, addr, _up) = setup("h1_disconnect", "").await;
    for _ in 0..3 {
        let mut c = Client::connect(addr).await;
        c.send(get("/delay/1500")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
    }
    // Half-sent request, then gone.
    let mut c = Client::connect(addr).await;
    c.send("POST /delay/0 HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\npartial")
        .await;
    drop(c);
    // Others are served meanwhile.
    let mut c = Client::connect(addr).await;
    c.send(get("/fine")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/fine"));
    drop(c);
    // The abandoned connections are cleaned up.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let cx = stat(&app, "http.h1_disconnect.downstream_cx_active").await;
        if cx == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still active: cx {cx:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn client_disconnect_during_a_slow_upstream_ends_the_stream() {
    // Envoy resets the stream when the downstream goes away: `downstream_rq_active` drops back
    // to 0 (and `downstream_cx_destroy_remote_active_rq` counts it). Current code: hyper drops
    // the request future, and `router::handle` never reaches its `downstream_rq_active.dec()`,
    // so the gauge stays up for good.
    let (app, addr, _up) = setup("h1_disconnect_rq", "").await;
    for _ in 0..3 {
        let mut c = Client::connect(addr).await;
        c.send(get("/delay/1000")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
    }
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let rq = stat(&app, "http.h1_disconnect_rq.downstream_rq_active").await;
        if rq == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still active: rq {rq:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 10. HTTP/1.0.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http10_is_426_by_default() {
    // `http_protocol_options.accept_http_10` defaults to false: Envoy answers 426 Upgrade
    // Required and closes.
    let (_app, addr, up) = setup("h1_http10_default", "").await;
    rejected(addr, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", 426).await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn http10_is_proxied_when_accepted_and_closes_after_the_response() {
    let (_app, addr, _up) = setup(
        "h1_http10",
        "          http_protocol_options: {accept_http_10: true}\n",
    )
    .await;
    let mut c = Client::connect(addr).await;
    c.send("GET /old HTTP/1.0\r\nHost: h\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/old"));
    assert!(!r.chunked, "chunked to an HTTP/1.0 client: {r:?}");
    assert!(c.closed().await, "HTTP/1.0 connection kept open");
}

#[tokio::test]
async fn http10_keep_alive_keeps_the_connection() {
    let (_app, addr, _up) = setup(
        "h1_http10_ka",
        "          http_protocol_options: {accept_http_10: true}\n",
    )
    .await;
    let mut c = Client::connect(addr).await;
    for i in 0..2 {
        c.send(format!(
            "GET /ka{i} HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
        ))
        .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "{r:?}"
        );
        assert_eq!(r.seen().field("path"), Some(format!("/ka{i}").as_str()));
    }
    assert!(c.still_open().await);
}

#[tokio::test]
async fn http10_chunked_upstream_response_is_delimited_by_close() {
    let (_app, addr, _up) = setup(
        "h1_http10_chunk",
        "          http_protocol_options: {accept_http_10: true}\n",
    )
    .await;
    let mut c = Client::connect(addr).await;
    c.send("GET /chunked HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.chunked, "chunked to an HTTP/1.0 client: {r:?}");
    assert_eq!(r.body_str(), "first;second;third");
    // No length known up front: the close ends the body, whatever keep-alive asked for.
    assert_eq!(r.header("content-length"), None, "{r:?}");
    assert!(c.closed().await);
}

// ---------------------------------------------------------------------------------------------
// 11. Absolute-form request targets.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn absolute_form_target_routes_by_its_authority() {
    // RFC 9112 3.2.2 / Envoy's codec: with an absolute-form target the Host header is ignored
    // and replaced by the target's authority. Current code routes (and forwards) by Host.
    let abs = echo_body_upstream().await;
    let other = echo_body_upstream().await;
    let vh = "            - name: abs\n              domains: [\"abs.example\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: h1_abs_a}\n            - name: other\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: h1_abs_b}\n";
    let app = sluice(&bootstrap(
        &listener_with(
            "h1_abs",
            vh,
            "          http_protocol_options: {allow_absolute_url: true}\n",
        ),
        &format!(
            "{}{}",
            cluster("h1_abs_a", &[abs.addr], ""),
            cluster("h1_abs_b", &[other.addr], "")
        ),
    ))
    .await;
    let addr = app.listener_address("h1_abs").unwrap();
    let mut c = Client::connect(addr).await;
    // The authority in the target wins over the Host header.
    c.send("GET http://abs.example/some/path?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.field("path"), Some("/some/path?q=1"), "{}", seen.desc);
    assert_eq!(seen.header("host"), Some("abs.example"), "{}", seen.desc);
    assert_eq!(abs.requests.load(Ordering::SeqCst), 1);
    assert_eq!(other.requests.load(Ordering::SeqCst), 0);
    // And with a matching Host.
    c.send("GET http://abs.example/two HTTP/1.1\r\nHost: abs.example\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.seen().field("path"), Some("/two"));
    assert_eq!(abs.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn absolute_form_target_with_matching_host_routes_by_authority() {
    let up = echo_body_upstream().await;
    let vh = "            - name: abs\n              domains: [\"abs2.example\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: h1_abs2}\n";
    let app = sluice(&bootstrap(
        &listener_with("h1_abs2", vh, ""),
        &cluster("h1_abs2", &[up.addr], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_abs2").unwrap()).await;
    c.send("GET http://abs2.example/x HTTP/1.1\r\nHost: abs2.example\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.field("path"), Some("/x"), "{}", seen.desc);
    assert_eq!(seen.header("host"), Some("abs2.example"));
}

// ---------------------------------------------------------------------------------------------
// 12. Date and Server.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn responses_carry_date_and_server_envoy() {
    let (_app, addr, _up) = setup("h1_dateserver", "").await;
    let mut c = Client::connect(addr).await;
    c.send(get("/")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let date = r.header("date").unwrap_or_else(|| panic!("no date: {r:?}"));
    assert!(date.ends_with(" GMT"), "{date}");
    assert_eq!(r.header("server"), Some("envoy"), "{r:?}");
    // Envoy writes header names in lower case.
    for n in &r.raw_names {
        assert_eq!(*n, n.to_ascii_lowercase(), "{r:?}");
    }
    // Local replies too.
    c.send("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.header("server"), Some("envoy"));
}

#[tokio::test]
async fn server_name_is_configurable() {
    let (_app, addr, _up) = setup("h1_servername", "          server_name: sluice-test\n").await;
    let mut c = Client::connect(addr).await;
    c.send(get("/")).await;
    let r = c.response().await;
    assert_eq!(r.header("server"), Some("sluice-test"), "{r:?}");
    assert!(r.header("date").is_some(), "{r:?}");
}

#[tokio::test]
async fn protocol_error_replies_look_like_envoys() {
    // Envoy's protocol-error local reply: `connection: close`, `server`, `date`, a
    // content-length, and the body `Bad Request`.
    let (_app, addr, _up) = setup("h1_errshape", "").await;
    let r = rejected(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
        400,
    )
    .await;
    assert!(r.connection_close(), "{r:?}");
    assert_eq!(r.header("server"), Some("envoy"), "{r:?}");
    assert!(r.header("date").is_some(), "{r:?}");
    assert_eq!(r.body_str(), "Bad Request", "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 13. Header count limit.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn too_many_headers_is_431() {
    let (_app, addr, up) = setup("h1_manyheaders", "").await;
    let with = |n: usize| {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..n {
            req.push_str(&format!("X-H{i}: v\r\n"));
        }
        req.push_str("\r\n");
        req
    };
    // Envoy's default max_headers_count is 100.
    rejected(addr, with(120).as_bytes(), 431).await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    let mut c = Client::connect(addr).await;
    c.send(with(80)).await;
    assert_eq!(c.response().await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 14. Invalid header names and obs-fold.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_header_name_characters_are_400() {
    let (_app, addr, up) = setup("h1_badname", "").await;
    for name in ["X Bad", "X(Bad)", "X\"Bad", "X@Bad", "X{Bad}", "X\x01Bad"] {
        rejected(
            addr,
            format!("GET / HTTP/1.1\r\nHost: h\r\n{name}: v\r\n\r\n").as_bytes(),
            400,
        )
        .await;
    }
    // Whitespace between the name and the colon.
    rejected(addr, b"GET / HTTP/1.1\r\nHost: h\r\nX-Bad : v\r\n\r\n", 400).await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn obs_fold_header_continuation_is_400() {
    let (_app, addr, up) = setup("h1_obsfold", "").await;
    rejected(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n  continued\r\n\r\n",
        400,
    )
    .await;
    rejected(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n\tcontinued\r\n\r\n",
        400,
    )
    .await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// More framing and connection-management cases.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_pipelined_after_connection_close_are_not_served() {
    let (_app, addr, up) = setup("h1_closepipe", "").await;
    let mut c = Client::connect(addr).await;
    c.send(format!(
        "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n{}",
        get("/b")
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.seen().field("path"), Some("/a"));
    assert!(r.connection_close(), "{r:?}");
    assert!(c.closed().await, "served past Connection: close");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn local_replies_keep_the_connection() {
    // A 404 (no route) is an ordinary response: the connection stays usable.
    let up = echo_body_upstream().await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /only}\n                route: {cluster: h1_local}\n";
    let app = sluice(&bootstrap(
        &listener_with("h1_local", vh, ""),
        &cluster("h1_local", &[up.addr], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_local").unwrap()).await;
    c.send(get("/nowhere")).await;
    let r = c.response().await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(!r.connection_close(), "{r:?}");
    // With a request body that was never read.
    c.send("POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response().await.status, 404);
    c.send(get("/only/x")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/only/x"));
}

#[tokio::test]
async fn invalid_chunk_framing_is_rejected_and_closes() {
    let (_app, addr, _up) = setup("h1_badchunk", "").await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut c = Client::connect(addr).await;
        c.send(format!(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        ))
        .await;
        // The head may already be on its way upstream when the body turns bad: Envoy answers
        // 400 if nothing was sent back yet; either way no 2xx and the connection goes.
        let mut tmp = Vec::new();
        let got = tokio::time::timeout(STEP, c.s.read_to_end(&mut tmp))
            .await
            .expect("the connection is closed");
        let text = lossy(&tmp);
        assert!(
            got.is_err()
                || text.is_empty()
                || text.starts_with("HTTP/1.1 4")
                || text.starts_with("HTTP/1.1 5"),
            "body {body:?}: {text:?}"
        );
    }
}

#[tokio::test]
async fn invalid_chunk_framing_is_400() {
    // Envoy's codec error before any response → local reply 400 and close.
    let (_app, addr, _up) = setup("h1_badchunk400", "").await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
    ] {
        rejected(
            addr,
            format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
                .as_bytes(),
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let (_app, addr, _up) = setup("h1_hopbyhop", "").await;
    let mut c = Client::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-End: e2e\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    for h in ["connection", "keep-alive", "proxy-connection"] {
        assert_eq!(seen.header(h), None, "{h} forwarded: {}", seen.desc);
    }
    assert_eq!(seen.header("x-end"), Some("e2e"));
}

#[tokio::test]
async fn header_values_lose_surrounding_whitespace() {
    let (_app, addr, _up) = setup("h1_ows", "").await;
    let mut c = Client::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHost: h\r\nX-Pad: \t  padded value \t \r\nX-Empty:\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.header("x-pad"), Some("padded value"), "{}", seen.desc);
    assert_eq!(seen.header("x-empty"), Some(""), "{}", seen.desc);
}

#[tokio::test]
async fn header_names_are_case_insensitive_and_forwarded_lowercase() {
    let (_app, addr, _up) = setup("h1_case", "").await;
    let mut c = Client::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHOST: h\r\nX-MiXeD-CaSe: v\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().header("x-mixed-case"), Some("v"));
    assert_eq!(r.seen().header("host"), Some("h"));
}

#[tokio::test]
async fn http11_request_without_host_is_400() {
    // Envoy's connection manager: an HTTP/1.1 request with no Host → 400 (missing host).
    let (_app, addr, up) = setup("h1_nohost", "").await;
    let (r, _c) = answered(addr, b"GET / HTTP/1.1\r\n\r\n", 400).await;
    assert_eq!(r.status, 400);
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn request_headers_timeout_answers_408_to_a_slow_head() {
    // Envoy's `request_headers_timeout`: from a head's first byte to its last; 408 and close.
    let (app, addr, up) = setup("h1_hdrtimeout", "          request_headers_timeout: 0.3s\n").await;
    // A head that is complete in time is served, and the keep-alive wait before the next one
    // is not part of the timeout.
    let mut c = Client::connect(addr).await;
    c.send(get("/fast")).await;
    assert_eq!(c.response().await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send(get("/again")).await;
    assert_eq!(c.response().await.status, 200);
    // A head that stalls halfway is not.
    c.send("GET /slow HTTP/1.1\r\nHost: h\r\nX-Partial: ").await;
    let r = c.response().await;
    assert_eq!(r.status, 408, "{r:?}");
    assert!(c.closed().await, "connection not closed after 408");
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        stat(&app, "http.h1_hdrtimeout.downstream_rq_header_timeout").await,
        Some(1)
    );
}

#[tokio::test]
async fn stream_idle_timeout_of_the_connection_manager_applies_without_a_route_idle_timeout() {
    // Envoy: the route's `idle_timeout` overrides the HCM's `stream_idle_timeout` (default
    // 5 min); when it fires before the response head: 408 "stream timeout".
    let up = echo_body_upstream().await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /off}\n                route: {cluster: h1_sidle, idle_timeout: 0s}\n              - match: {prefix: /}\n                route: {cluster: h1_sidle}\n";
    let app = sluice(&bootstrap(
        &listener_with("h1_sidle", vh, "          stream_idle_timeout: 0.2s\n"),
        &cluster("h1_sidle", &[up.addr], ""),
    ))
    .await;
    let addr = app.listener_address("h1_sidle").unwrap();
    let mut c = Client::connect(addr).await;
    let t = std::time::Instant::now();
    c.send(get("/delay/1000")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.body_str().as_str()), (408, "stream timeout"));
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        stat(&app, "http.h1_sidle.downstream_rq_idle_timeout").await,
        Some(1)
    );
    // A route's `idle_timeout: 0s` turns it off for that route.
    let mut c = Client::connect(addr).await;
    c.send(get("/off/delay/400")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn request_timeout_answers_408_when_the_request_body_stalls() {
    // Envoy's `request_timeout`: the whole request must be received (or the response begun)
    // within it; 408 "request timeout".
    let (app, addr, up) = setup("h1_rqtimeout", "          request_timeout: 0.3s\n").await;
    let mut c = Client::connect(addr).await;
    c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf-")
        .await;
    let t = std::time::Instant::now();
    let r = c.response().await;
    assert_eq!((r.status, r.body_str().as_str()), (408, "request timeout"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        stat(&app, "http.h1_rqtimeout.downstream_rq_timeout").await,
        Some(1)
    );
    // A request that arrived whole is not cut off by a slow response.
    let mut c = Client::connect(addr).await;
    c.send("POST /delay/600 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(up.requests.load(Ordering::SeqCst) >= 1);
}

// ---------------------------------------------------------------------------------------------
// 13. Upgrades that do not happen, streaming responses, pinned edge cases.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bytes_after_a_refused_upgrade_are_never_parsed_as_a_request() {
    // A client (or a front proxy that believes the upgrade will succeed) may send tunnel bytes
    // right behind an upgrade request. When the answer is not a 101 (or a 2xx to CONNECT),
    // those bytes are not HTTP: Envoy's codec takes everything after an upgrade head as
    // payload, so a refused upgrade ends the connection. Parsing them as the next request
    // would let a second request through unseen by whatever sits in front ("WebSocket
    // smuggling").
    let (_app, addr, up) = setup("h1_upgrade_refused", "").await;
    // The echo upstream does not upgrade: it answers 200.
    let mut c = Client::connect(addr).await;
    c.send(
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/ws"));
    assert!(r.connection_close(), "{r:?}");
    assert!(c.closed().await, "the connection went on after the upgrade");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
    // CONNECT is not enabled on this listener: 403, and the same.
    let mut c = Client::connect(addr).await;
    c.send(
        "CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 403, "{r:?}");
    // A local reply like any other: Envoy's server header is on it.
    assert_eq!(r.header("server"), Some("envoy"), "{r:?}");
    assert!(c.closed().await, "the connection went on after the CONNECT");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn websocket_frames_sent_with_the_request_head_reach_the_upstream() {
    // The client's first frame arrives in the same packet as the request head: the bytes read
    // past the head go into the tunnel ahead of the socket.
    let a = upstream("a", Behaviour::Echo).await;
    let app = sluice(&bootstrap(
        &listener_with("h1_ws_early", &all_to("h1_ws_early"), ""),
        &cluster("h1_ws_early", &[a.addr], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_ws_early").unwrap()).await;
    c.send(
        "GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
         early frame;",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 101, "{r:?}");
    c.send("late frame").await;
    let echoed = c.exact(22, "the echoed frames").await;
    assert_eq!(lossy(&echoed), "early frame;late frame");
}

#[tokio::test]
async fn pipelined_bodies_and_a_get_in_one_write_stay_in_sync() {
    let (_app, addr, up) = setup("h1_pipe_bodies", "").await;
    let mut c = Client::connect(addr).await;
    c.send(
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nfirst\
         POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
         6\r\nsecond\r\n0\r\nX-T: 1\r\n\r\n\
         POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n\
         GET /d HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = c.response().await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = r.seen();
        got.push((
            seen.field("path").unwrap_or("").to_string(),
            lossy(&seen.body),
        ));
    }
    let want = [("/a", "first"), ("/b", "second"), ("/c", ""), ("/d", "")];
    let want: Vec<_> = want
        .iter()
        .map(|(p, b)| (p.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
    assert!(c.still_open().await);
}

#[tokio::test]
async fn head_to_a_chunked_upstream_response_keeps_the_connection_in_sync() {
    let (_app, addr, _up) = setup("h1_head_chunked", "").await;
    let mut c = Client::connect(addr).await;
    c.send("HEAD /chunked HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response_to(true).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.send(get("/after")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.seen().field("path"), Some("/after"));
}

#[tokio::test]
async fn a_16_mib_chunked_request_body_streams_through() {
    let (_app, addr, _up) = setup("h1_big_chunked", "").await;
    let mut c = Client::connect(addr).await;
    let body: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    c.send("POST /big HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    // Uneven chunks, several per write.
    let mut wire = Vec::new();
    for piece in body.chunks(77_777) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
        if wire.len() > 256 * 1024 {
            c.send(std::mem::take(&mut wire)).await;
        }
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    c.send(wire).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.seen();
    assert_eq!(seen.body.len(), body.len(), "{}", seen.desc);
    assert!(seen.body == body, "body bytes differ");
    c.send(get("/after")).await;
    assert_eq!(c.response().await.seen().field("path"), Some("/after"));
}

#[tokio::test]
async fn http10_connection_close_is_not_undone_by_a_later_keep_alive() {
    let (_app, addr, _up) = setup(
        "h1_http10_close_ka",
        "          http_protocol_options: {accept_http_10: true}\n",
    )
    .await;
    let mut c = Client::connect(addr).await;
    c.send("GET / HTTP/1.0\r\nHost: h\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.connection_close(), "{r:?}");
    assert!(c.closed().await, "HTTP/1.0 connection kept open");
}

/// A raw upstream for one connection: reads a request head, answers with `head` (bytes as
/// given), then holds the connection without writing, reading whatever else comes. The
/// receiver resolves when the proxy closes the upstream connection.
async fn raw_upstream(head: &'static str) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut got = Vec::new();
        let mut tmp = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
            }
        }
        let _ = s.write_all(head.as_bytes()).await;
        // Until the proxy goes away.
        while let Ok(n) = s.read(&mut tmp).await {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    (addr, rx)
}

#[tokio::test]
async fn client_disconnect_while_the_response_body_waits_ends_the_upstream_stream() {
    // A long poll or event stream: the response head went out, the upstream is quiet. Envoy
    // sees the client's close at once and resets the upstream stream; the proxy must not keep
    // the upstream connection until the stream idle timeout (5 minutes by default).
    let (up, upstream_closed) =
        raw_upstream("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nevent1\r\n").await;
    let app = sluice(&bootstrap(
        &listener_with("h1_resp_disconnect", &all_to("h1_resp_disconnect"), ""),
        &cluster("h1_resp_disconnect", &[up], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_resp_disconnect").unwrap()).await;
    c.send(get("/events")).await;
    let status = lossy(&c.line("the status line").await);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    while !c.buf.windows(6).any(|w| w == b"event1") {
        c.fill_or_panic("the first event").await;
    }
    drop(c);
    tokio::time::timeout(STEP, upstream_closed)
        .await
        .expect("the upstream connection is still open after the client left")
        .ok();
    assert_eq!(
        stat(&app, "http.h1_resp_disconnect.downstream_rq_active").await,
        Some(0)
    );
    assert_eq!(
        stat(
            &app,
            "http.h1_resp_disconnect.downstream_cx_destroy_remote_active_rq"
        )
        .await,
        Some(1)
    );
}

#[tokio::test]
async fn a_response_before_the_request_body_ended_closes_the_connection() {
    // The upstream answers while the request body is still coming. Envoy then closes the
    // HTTP/1 connection after the response (`connection: close` on it) rather than wait for
    // the rest of the body; the client must be told, not just see the close.
    let (up, _upstream_closed) =
        raw_upstream("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly").await;
    let app = sluice(&bootstrap(
        &listener_with("h1_early_resp", &all_to("h1_early_resp"), ""),
        &cluster("h1_early_resp", &[up], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_early_resp").unwrap()).await;
    c.send("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nthe first part")
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.body_str().as_str()), (200, "early"), "{r:?}");
    assert!(r.connection_close(), "{r:?}");
    assert!(c.closed().await, "the connection stayed open");
}

#[tokio::test]
async fn an_upstream_100_continue_is_not_passed_on() {
    // The proxy answers `Expect: 100-continue` itself; the upstream's own 100 is skipped, so
    // the client sees exactly one 100 and then the final response.
    let (up, _upstream_closed) =
        raw_upstream("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    let app = sluice(&bootstrap(
        &listener_with("h1_up_100", &all_to("h1_up_100"), ""),
        &cluster("h1_up_100", &[up], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_up_100").unwrap()).await;
    c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(c.response().await.status, 100);
    c.send("body").await;
    let r = c.response().await;
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok"), "{r:?}");
    assert!(!r.connection_close(), "{r:?}");
    assert!(
        c.still_open().await,
        "more bytes or a close after the response"
    );
    assert!(c.buf.is_empty(), "stray bytes: {:?}", lossy(&c.buf));
}

#[tokio::test]
async fn an_h2c_upgrade_request_is_served_as_plain_http1() {
    // `curl --http2` on a cleartext URL asks for `Upgrade: h2c`. Envoy's codec ignores h2c
    // upgrades (it removes the upgrade headers) and serves the request as HTTP/1.1: not a
    // 403 for an upgrade type nobody enabled, and the connection stays usable.
    let (_app, addr, up) = setup("h1_h2c", "").await;
    let mut c = Client::connect(addr).await;
    c.send(
        "GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?} {:?}", r.body_str());
    let seen = r.seen();
    assert_eq!(seen.field("path"), Some("/h2c"));
    for h in ["upgrade", "connection", "http2-settings"] {
        assert_eq!(seen.header(h), None, "{h} forwarded: {}", seen.desc);
    }
    assert!(!r.connection_close(), "{r:?}");
    c.send(get("/after")).await;
    assert_eq!(c.response().await.seen().field("path"), Some("/after"));
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_configured_stream_idle_timeout_resets_a_stalled_response_body() {
    // A response body that stops for longer than a configured stream idle timeout is reset:
    // the client sees the connection end before the chunked body's last chunk, and the
    // upstream connection is closed.
    let (up, upstream_closed) =
        raw_upstream("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nevent1\r\n").await;
    let app = sluice(&bootstrap(
        &listener_with(
            "h1_body_idle",
            &all_to("h1_body_idle"),
            "          stream_idle_timeout: 0.3s\n",
        ),
        &cluster("h1_body_idle", &[up], ""),
    ))
    .await;
    let mut c = Client::connect(app.listener_address("h1_body_idle").unwrap()).await;
    c.send(get("/events")).await;
    let status = lossy(&c.line("the status line").await);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // Reads until the proxy closes; the last chunk never comes.
    while c.fill().await {}
    assert!(
        c.buf.windows(6).any(|w| w == b"event1"),
        "{:?}",
        lossy(&c.buf)
    );
    assert!(
        !c.buf.windows(5).any(|w| w == b"0\r\n\r\n"),
        "the stream was ended as if complete: {:?}",
        lossy(&c.buf)
    );
    tokio::time::timeout(STEP, upstream_closed)
        .await
        .expect("the upstream connection is still open")
        .ok();
}
