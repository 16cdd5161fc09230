//! The HTTP/2 upstream client (`cluster/h2.rs`) against an h2c upstream written with the h2
//! crate, for what hyper's server does not do on demand: refusing a stream, GOAWAY after a
//! request, a small `max_concurrent_streams`; and bodies larger than the flow-control windows,
//! with trailers both ways.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpStream};

const H2_OPTS: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Echo every request.
    Echo,
    /// Reset the first stream of the server with `REFUSED_STREAM`, echo the others.
    RefuseFirst,
    /// Echo the first request of each connection, then GOAWAY and close.
    GoAwayAfterFirst,
}

struct H2Up {
    addr: std::net::SocketAddr,
    streams: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    /// Highest number of streams answered at once.
    max_active: Arc<AtomicUsize>,
}

/// An h2c upstream: answers each stream with the request body echoed back, headers
/// `x-body-len` and `x-req-trailer` (the request's `x-t` trailer, if any) and trailers
/// `grpc-status: 0`, `x-len`. `delay` holds each response back.
async fn h2_upstream(mode: Mode, max_streams: Option<u32>, delay: Duration) -> H2Up {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let up = H2Up {
        addr,
        streams: Arc::new(AtomicUsize::new(0)),
        connections: Arc::new(AtomicUsize::new(0)),
        max_active: Arc::new(AtomicUsize::new(0)),
    };
    let (streams, connections, max_active) = (
        up.streams.clone(),
        up.connections.clone(),
        up.max_active.clone(),
    );
    let active = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            connections.fetch_add(1, Ordering::SeqCst);
            let (streams, max_active, active) =
                (streams.clone(), max_active.clone(), active.clone());
            tokio::spawn(async move {
                let mut b = h2::server::Builder::new();
                if let Some(m) = max_streams {
                    b.max_concurrent_streams(m);
                }
                let Ok(mut conn) = b.handshake::<_, Bytes>(s).await else {
                    return;
                };
                let mut answered = 0;
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let n = streams.fetch_add(1, Ordering::SeqCst) + 1;
                    if mode == Mode::RefuseFirst && n == 1 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let (active, max_active) = (active.clone(), max_active.clone());
                    tokio::spawn(async move {
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        max_active.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        active.fetch_sub(1, Ordering::SeqCst);
                        echo(req, respond).await;
                    });
                    answered += 1;
                    if mode == Mode::GoAwayAfterFirst && answered == 1 {
                        conn.graceful_shutdown();
                    }
                }
            });
        }
    });
    up
}

async fn echo(req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut body = req.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let req_trailer = body
        .trailers()
        .await
        .unwrap()
        .and_then(|t| t.get("x-t").cloned());
    let mut resp = Response::builder()
        .status(200)
        .header("x-body-len", data.len());
    if let Some(t) = req_trailer {
        resp = resp.header("x-req-trailer", t);
    }
    let mut send = respond
        .send_response(resp.body(()).unwrap(), false)
        .unwrap();
    let mut data = Bytes::from(data);
    let len = data.len();
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        send.send_data(data.split_to(n.min(data.len())), false)
            .unwrap();
    }
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("x-len", len.into());
    send.send_trailers(t).unwrap();
}

fn bootstrap(up: std::net::SocketAddr, route_extra: &str) -> String {
    let vh = format!(
        r#"            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: up{route_extra}}}
"#
    );
    format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("h2up", &vh, ""),
        cluster("up", &[up], H2_OPTS)
    )
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// An h2c client to Sluice (hyper's) that keeps response trailers.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn body_with_trailer(data: Bytes, trailer: &'static str) -> TestBody {
    let mut t = HeaderMap::new();
    t.insert("x-t", trailer.parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
        vec![Ok(Frame::data(data)), Ok(Frame::trailers(t))];
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn bodies_larger_than_the_windows_and_trailers_both_ways() {
    let up = h2_upstream(Mode::Echo, None, Duration::ZERO).await;
    let app = sluice(&bootstrap(up.addr, "")).await;
    let addr = app.listener_address("h2up").unwrap();

    // h2 downstream: 3 MiB request body (over the upstream's 64 KiB initial window, and over
    // Sluice's own 2 MiB receive window for the echo), with a trailer.
    let mut tx = h2_client(addr).await;
    let big = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    let req = Request::post("http://example.com/echo")
        .header("te", "trailers")
        .body(body_with_trailer(big.clone(), "t1"))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-body-len"], "3145728");
    assert_eq!(resp.headers()["x-req-trailer"], "t1");
    let got = resp.into_body().collect().await.unwrap();
    let trailers = got.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-len"], "3145728");
    assert_eq!(got.to_bytes(), big);

    // HTTP/1.1 downstream, body-less and with a body: one upstream connection for all.
    let mut h1 = H1::connect(addr).await;
    let r = h1.get("example.com", "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-body-len"], "0");
    let r = h1
        .send(
            Request::post("/y")
                .header("host", "example.com")
                .body(Full::new(Bytes::from(vec![b'y'; 200_000])))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-body-len"], "200000");
    assert_eq!(r.body.len(), 200_000);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_stream_is_retried_with_retry_on_refused_stream() {
    let up = h2_upstream(Mode::RefuseFirst, None, Duration::ZERO).await;
    let app = sluice(&bootstrap(
        up.addr,
        ", retry_policy: {retry_on: refused-stream, num_retries: 1}",
    ))
    .await;
    let addr = app.listener_address("h2up").unwrap();
    let mut h1 = H1::connect(addr).await;
    let r = h1.get("example.com", "/refused-once").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.streams.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_stream_without_retry_fails_the_request() {
    let up = h2_upstream(Mode::RefuseFirst, None, Duration::ZERO).await;
    let app = sluice(&bootstrap(up.addr, "")).await;
    let addr = app.listener_address("h2up").unwrap();
    let mut h1 = H1::connect(addr).await;
    let r = h1.get("example.com", "/refused").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body
            .ends_with("reset reason: remote refused stream reset"),
        "{}",
        r.body
    );
    // The connection stays usable.
    let r = h1.get("example.com", "/again").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn after_goaway_requests_go_to_a_fresh_connection() {
    let up = h2_upstream(Mode::GoAwayAfterFirst, None, Duration::ZERO).await;
    let app = sluice(&bootstrap(up.addr, "")).await;
    let addr = app.listener_address("h2up").unwrap();
    let mut h1 = H1::connect(addr).await;
    for i in 0..3 {
        let r = h1.get("example.com", &format!("/n{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        // Let the GOAWAY arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_upstreams_max_concurrent_streams_is_respected() {
    let up = h2_upstream(Mode::Echo, Some(1), Duration::from_millis(30)).await;
    let app = sluice(&bootstrap(up.addr, "")).await;
    let addr = app.listener_address("h2up").unwrap();
    let mut tx = h2_client(addr).await;
    // One request first: the connection is up and the upstream's SETTINGS are known.
    let req = Request::get("http://example.com/first")
        .body(BodyExt::boxed(Full::new(Bytes::new())))
        .unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), 200);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://example.com/c{i}"))
                .body(BodyExt::boxed(Full::new(Bytes::new())))
                .unwrap();
            tx.send_request(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    assert_eq!(up.max_active.load(Ordering::SeqCst), 1);
}

/// An upstream that answers nothing: it reads the client's preface and frames, records each
/// frame's type, and notes when the client closes the connection.
async fn silent_h2() -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<u8>>>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let types: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
    let closed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let (t, c) = (types.clone(), closed.clone());
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut preface = [0u8; 24];
        if s.read_exact(&mut preface).await.is_err() {
            return;
        }
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                c.store(true, Ordering::SeqCst);
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                c.store(true, Ordering::SeqCst);
                return;
            }
            t.lock().unwrap().push(head[3]);
        }
    });
    (addr, types, closed)
}

const PING: u8 = 0x6;

#[tokio::test]
async fn connection_keepalive_pings_and_closes_a_silent_upstream() {
    // With connection_keepalive: a PING after the interval, and the connection closed when
    // no PONG comes in time; the request in flight fails as a reset (503), long before the
    // route timeout (which would be a 504).
    let (addr, types, closed) = silent_h2().await;
    let opts = H2_OPTS.replace(
        "explicit_http_config: {http2_protocol_options: {}}",
        "explicit_http_config: {http2_protocol_options: {connection_keepalive: {interval: 0.1s, timeout: 0.2s}}}",
    );
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: up, timeout: 10s}\n";
    let app = sluice(&format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("ka", vh, ""),
        cluster("up", &[addr], &opts)
    ))
    .await;
    let mut c = H1::connect(app.listener_address("ka").unwrap()).await;
    let r = c.get("h", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        types.lock().unwrap().contains(&PING),
        "{:?}",
        types.lock().unwrap()
    );
    for _ in 0..50 {
        if closed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed.load(Ordering::SeqCst),
        "the silent connection was closed"
    );

    // Without it (Envoy's default): no PINGs at all; the request waits for the route timeout.
    let (addr, types, _) = silent_h2().await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: up, timeout: 0.6s}\n";
    let app = sluice(&format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("noka", vh, ""),
        cluster("up", &[addr], H2_OPTS)
    ))
    .await;
    let mut c = H1::connect(app.listener_address("noka").unwrap()).await;
    assert_eq!(c.get("h", "/").await.status, 504);
    let seen = types.lock().unwrap().clone();
    assert!(!seen.is_empty() && !seen.contains(&PING), "{seen:?}");
}
