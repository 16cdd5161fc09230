//! The load generator: open-loop constant-rate and closed-loop maximum-throughput clients for
//! HTTP/1.1, HTTP/2 (h2c), gRPC-shaped unary calls and bidirectional streams over h2c, and TCP
//! (echo ping-pong, bulk).
//!
//! A gRPC stream scenario keeps one long-lived call per worker and counts message round trips:
//! a message goes out on the request stream and its echo comes back on the response stream.
//! Each stream is closed at the end of the window and must end with `grpc-status: 0`.
//!
//! Open loop: request `i` of the run is scheduled at `start + i / rate`, spread round-robin over
//! the connections. Latency counts from the scheduled time whenever the connection was still
//! busy with an earlier request at that time (so a stall is charged to every request it
//! delayed: no coordinated omission). When the connection was idle, latency counts from the
//! moment the timer fired, which keeps tokio's 1 ms timer granularity out of the figures.
//! HTTP/2 requests are spawned as their own tasks, so a connection is never "busy".

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::upstream::{is_grpc_ok, OnceBody, BULK_CHUNK};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    H1,
    H2,
    Grpc,
    /// Message round trips on long-lived bidirectional gRPC streams.
    GrpcStream,
    TcpEcho,
    TcpBulk,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Closed loop: every worker sends its next request as soon as the last one completes.
    Max,
    /// Open loop at this many requests per second in total.
    Rate(u64),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub proto: Proto,
    /// HTTP path (`/small`, `/16k`, `/grpc`, `/grpc-stream`); empty for TCP.
    pub path: String,
    pub mode: Mode,
    pub conns: usize,
    /// Concurrent requests per connection in closed-loop mode (HTTP/2 only; 1 otherwise).
    pub depth: usize,
}

impl Scenario {
    fn new(name: &str, proto: Proto, path: &str, mode: Mode, conns: usize, depth: usize) -> Self {
        Scenario {
            name: name.into(),
            proto,
            path: path.into(),
            mode,
            conns,
            depth,
        }
    }
}

/// The default scenario list, in run order. Open-loop scenarios use `conns` connections;
/// closed-loop ones keep `max_conns` requests in flight (HTTP/1.1: that many connections;
/// HTTP/2: a quarter as many connections with 4 streams each).
pub fn scenarios(conns: usize, max_conns: usize, rates: &[u64]) -> Vec<Scenario> {
    use Mode::*;
    use Proto::*;
    let h2c = (max_conns / 4).max(1);
    // An open-loop scenario at rate `r`, named after it (`h1-small-5k`).
    let at = |prefix: &str, proto: Proto, path: &str, r: u64| {
        Scenario::new(
            &format!("{prefix}-{}", rate_label(r)),
            proto,
            path,
            Rate(r),
            conns,
            1,
        )
    };
    let last = rates.last().copied();
    let mut v = vec![
        Scenario::new("h1-small-max", H1, "/small", Max, max_conns, 1),
        Scenario::new("h1-16k-max", H1, "/16k", Max, max_conns, 1),
    ];
    v.extend(rates.iter().map(|&r| at("h1-small", H1, "/small", r)));
    v.push(Scenario::new("h2-small-max", H2, "/small", Max, h2c, 4));
    v.push(Scenario::new("h2-16k-max", H2, "/16k", Max, h2c, 4));
    v.extend(last.map(|r| at("h2-small", H2, "/small", r)));
    v.push(Scenario::new("grpc-unary-max", Grpc, "/grpc", Max, h2c, 4));
    let stream = "/grpc-stream";
    v.push(Scenario::new(
        "grpc-stream-max",
        GrpcStream,
        stream,
        Max,
        h2c,
        4,
    ));
    v.extend(last.map(|r| at("grpc-stream", GrpcStream, stream, r)));
    v.extend(last.map(|r| at("tcp-echo", TcpEcho, "", r)));
    v.push(Scenario::new("tcp-bulk-1mib", TcpBulk, "", Max, 1, 1));
    v
}

/// `1000` → `1k`, `2500` → `2500rps`.
pub fn rate_label(r: u64) -> String {
    if r.is_multiple_of(1000) {
        format!("{}k", r / 1000)
    } else {
        format!("{r}rps")
    }
}

/// What one run of one scenario measured.
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

struct Agg {
    requests: u64,
    errors: u64,
    bytes: u64,
    hist: Histogram<u64>,
}

type Shared = Arc<Mutex<Agg>>;

fn note(agg: &Shared, origin: Instant, res: anyhow::Result<u64>) {
    let d = origin.elapsed();
    let mut a = agg.lock().unwrap();
    match res {
        Ok(b) => {
            a.requests += 1;
            a.bytes += b;
            crate::hist::record(&mut a.hist, d);
        }
        Err(_) => a.errors += 1,
    }
}

/// Runs `sc` against `addr` for `dur` on a fresh current-thread runtime (dropping it cancels
/// anything still in flight, so the run always ends). `window` is called at the start and the
/// end of the timed window (after connections are open and warmed).
pub fn run(
    addr: SocketAddr,
    sc: &Scenario,
    dur: Duration,
    window: &mut dyn FnMut(bool),
) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let agg: Shared = Arc::new(Mutex::new(Agg {
            requests: 0,
            errors: 0,
            bytes: 0,
            hist: crate::hist::new(),
        }));
        let conns = open(addr, sc).await?;
        window(true);
        let start = Instant::now() + Duration::from_millis(5);
        let deadline = start + dur;
        let mut tasks = tokio::task::JoinSet::new();
        for (k, c) in conns.into_iter().enumerate() {
            spawn_worker(&mut tasks, c, k, sc, start, deadline, agg.clone());
        }
        // Everything stops by itself: requests time out, and this bounds the wait.
        let hard = deadline + Duration::from_secs(10);
        while let Ok(Some(_)) = tokio::time::timeout_at(hard.into(), tasks.join_next()).await {}
        let end = Instant::now().min(hard);
        window(false);
        tasks.abort_all();
        let a = Arc::try_unwrap(agg)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|arc| {
                let g = arc.lock().unwrap();
                Agg {
                    requests: g.requests,
                    errors: g.errors,
                    bytes: g.bytes,
                    hist: g.hist.clone(),
                }
            });
        anyhow::Ok(Outcome {
            requests: a.requests,
            errors: a.errors,
            bytes: a.bytes,
            elapsed: end.saturating_duration_since(start),
            hist: a.hist,
        })
    })?;
    drop(rt);
    Ok(out)
}

pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
    Tcp(TcpStream),
}

/// A request body: whole (unary calls, plain requests), or the messages of a gRPC stream as
/// the client sends them.
pub type ReqBody = Either<OnceBody, MsgBody>;

/// The request side of a gRPC stream: each message the client sends is a data frame.
pub struct MsgBody(mpsc::Receiver<Bytes>);

impl Body for MsgBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|d| Ok(Frame::data(d))))
    }
}

/// One gRPC-shaped request message (5-byte prefix and a 5-byte payload); the echo sends the
/// same bytes back.
const GRPC_MSG: &[u8] = &[0, 0, 0, 0, 5, 1, 2, 3, 4, 5];

/// A bidirectional gRPC stream through the target to the upstream's echo.
struct MsgStream {
    out: mpsc::Sender<Bytes>,
    body: hyper::body::Incoming,
    /// Echoed bytes received and not yet counted as a whole message.
    got: usize,
}

impl MsgStream {
    /// Opens a stream and makes its first round trip (the response head comes after it).
    async fn open(
        tx: &mut hyper::client::conn::http2::SendRequest<ReqBody>,
    ) -> anyhow::Result<Self> {
        let (out, rx) = mpsc::channel(1);
        let req = Request::builder()
            .method("POST")
            .uri("http://bench/grpc-stream")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Either::Right(MsgBody(rx)))?;
        let fut = async {
            out.send(Bytes::from_static(GRPC_MSG)).await?;
            tx.ready().await?;
            let resp = tx.send_request(req).await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            let mut s = MsgStream {
                out,
                body: resp.into_body(),
                got: 0,
            };
            s.echo().await?;
            anyhow::Ok(s)
        };
        tokio::time::timeout(REQ_TIMEOUT, fut).await?
    }

    /// Reads until one whole echoed message has arrived.
    async fn echo(&mut self) -> anyhow::Result<u64> {
        while self.got < GRPC_MSG.len() {
            let f = self
                .body
                .frame()
                .await
                .ok_or_else(|| anyhow::anyhow!("stream ended before the echo"))??;
            if let Ok(d) = f.into_data() {
                self.got += d.len();
            }
        }
        self.got -= GRPC_MSG.len();
        Ok(GRPC_MSG.len() as u64)
    }

    /// One message round trip.
    async fn round_trip(&mut self) -> anyhow::Result<u64> {
        let fut = async {
            self.out.send(Bytes::from_static(GRPC_MSG)).await?;
            self.echo().await
        };
        tokio::time::timeout(REQ_TIMEOUT, fut).await?
    }

    /// Ends the request stream; the call must end with `grpc-status: 0`.
    async fn finish(self) -> anyhow::Result<()> {
        let MsgStream { out, body, .. } = self;
        drop(out);
        let rest = tokio::time::timeout(REQ_TIMEOUT, body.collect()).await??;
        anyhow::ensure!(
            is_grpc_ok(rest.trailers()),
            "grpc-status missing or not 0 at the stream's end"
        );
        Ok(())
    }
}

const REQ_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = tokio::time::timeout(REQ_TIMEOUT, TcpStream::connect(addr)).await??;
    s.set_nodelay(true)?;
    Ok(s)
}

pub async fn open(addr: SocketAddr, sc: &Scenario) -> anyhow::Result<Vec<Conn>> {
    let mut v = Vec::with_capacity(sc.conns);
    for _ in 0..sc.conns {
        // A proxy just started can refuse or reset its very first connections (nginx did, once
        // in a full run): a connection is tried three times before the run gives up.
        let mut attempt = 0;
        let c = loop {
            match open_one(addr, sc).await {
                Ok(c) => break c,
                Err(e) if attempt == 2 => return Err(e),
                Err(e) => {
                    eprintln!(
                        "opening a connection to {addr} (attempt {}): {e:#}",
                        attempt + 1
                    );
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        v.push(c);
    }
    Ok(v)
}

/// One warmed connection for `sc`.
async fn open_one(addr: SocketAddr, sc: &Scenario) -> anyhow::Result<Conn> {
    let s = connect(addr).await?;
    let mut c = match sc.proto {
        Proto::H1 => {
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            Conn::H1(tx)
        }
        Proto::H2 | Proto::Grpc | Proto::GrpcStream => {
            let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(s))
                .await?;
            tokio::spawn(conn);
            Conn::H2(tx)
        }
        Proto::TcpEcho | Proto::TcpBulk => {
            let mut s = s;
            let mode = if sc.proto == Proto::TcpEcho {
                b"E"
            } else {
                b"S"
            };
            s.write_all(mode).await?;
            Conn::Tcp(s)
        }
    };
    // Warm up: one exchange per connection (opens the proxy's upstream connection too).
    match &mut c {
        Conn::H2(tx) if sc.proto == Proto::GrpcStream => {
            MsgStream::open(tx).await?.finish().await?;
        }
        Conn::H1(_) | Conn::H2(_) => {
            http_once(&mut c, &sc.path).await?;
        }
        Conn::Tcp(s) if sc.proto == Proto::TcpEcho => {
            echo_once(s).await?;
        }
        Conn::Tcp(_) => {}
    }
    Ok(c)
}

/// HTTP/1.1 requests use origin-form and a Host header; HTTP/2 ones carry the authority.
fn request(path: &str, h1: bool) -> Request<ReqBody> {
    let b = if h1 {
        Request::builder().uri(path).header("host", "bench")
    } else {
        Request::builder().uri(format!("http://bench{path}"))
    };
    if path == "/grpc" {
        b.method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Either::Left(OnceBody::data(Some(Bytes::from_static(
                GRPC_MSG,
            )))))
            .unwrap()
    } else {
        b.body(Either::Left(OnceBody::data(None))).unwrap()
    }
}

/// One HTTP exchange; returns the body bytes received.
async fn http_once(c: &mut Conn, path: &str) -> anyhow::Result<u64> {
    let req = request(path, matches!(c, Conn::H1(_)));
    let fut = async {
        let resp = match c {
            Conn::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
            Conn::H2(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
            Conn::Tcp(_) => unreachable!(),
        };
        check_response(resp).await
    };
    tokio::time::timeout(REQ_TIMEOUT, fut).await?
}

async fn check_response(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<u64> {
    let status = resp.status();
    let grpc = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = resp.into_body().collect().await?;
    anyhow::ensure!(status == 200, "status {status}");
    if grpc {
        anyhow::ensure!(is_grpc_ok(body.trailers()), "grpc-status missing or not 0");
    }
    Ok(body.to_bytes().len() as u64)
}

async fn echo_once(s: &mut TcpStream) -> anyhow::Result<u64> {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let fut = async {
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        anyhow::Ok(64)
    };
    tokio::time::timeout(REQ_TIMEOUT, fut).await?
}

fn spawn_worker(
    tasks: &mut tokio::task::JoinSet<()>,
    mut c: Conn,
    k: usize,
    sc: &Scenario,
    start: Instant,
    deadline: Instant,
    agg: Shared,
) {
    let sc = sc.clone();
    match sc.mode {
        Mode::Max => {
            let workers = if matches!(c, Conn::H2(_)) {
                sc.depth.max(1)
            } else {
                1
            };
            for _ in 1..workers {
                if let Conn::H2(tx) = &c {
                    let c2 = Conn::H2(tx.clone());
                    tasks.spawn(closed_loop(c2, sc.clone(), start, deadline, agg.clone()));
                }
            }
            tasks.spawn(closed_loop(c, sc, start, deadline, agg));
        }
        Mode::Rate(rate) if sc.proto == Proto::GrpcStream => {
            let Conn::H2(mut tx) = c else { return };
            tasks.spawn(async move {
                // One stream per connection; a message waits for the echo of the one before.
                let mut stream: Option<MsgStream> = None;
                for at in schedule(rate, k, sc.conns, start, deadline) {
                    let origin = turn(at).await;
                    let r = next_message(&mut stream, &mut tx).await;
                    note(&agg, origin, r);
                }
                finish_stream(stream, &agg).await;
            });
        }
        Mode::Rate(rate) => {
            tasks.spawn(async move {
                let mut inflight = tokio::task::JoinSet::new();
                for at in schedule(rate, k, sc.conns, start, deadline) {
                    let origin = turn(at).await;
                    match &mut c {
                        Conn::H2(tx) => {
                            let mut c2 = Conn::H2(tx.clone());
                            let (agg, path) = (agg.clone(), sc.path.clone());
                            inflight.spawn(async move {
                                let r = http_once(&mut c2, &path).await;
                                note(&agg, origin, r);
                            });
                        }
                        Conn::H1(_) => {
                            let r = http_once(&mut c, &sc.path).await;
                            note(&agg, origin, r);
                        }
                        Conn::Tcp(s) => {
                            let r = echo_once(s).await;
                            let failed = r.is_err();
                            note(&agg, origin, r);
                            if failed {
                                break;
                            }
                        }
                    }
                }
                while inflight.join_next().await.is_some() {}
            });
        }
    }
}

/// Streams 1 MiB writes back to back while a second task reads the sink's one-byte
/// acknowledgements; a transfer counts when its acknowledgement arrives. Nothing waits for an
/// acknowledgement before writing on, so the figure is throughput, not a round trip per MiB.
async fn bulk_stream(s: TcpStream, start: Instant, deadline: Instant, agg: Shared) {
    tokio::time::sleep_until(start.into()).await;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let buf = vec![0x5au8; BULK_CHUNK];
        let _ = tokio::time::timeout_at(deadline.into(), async {
            while w.write_all(&buf).await.is_ok() {}
        })
        .await;
    });
    let mut last = Instant::now();
    let mut acks = [0u8; 64];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), r.read(&mut acks)).await {
        if n == 0 {
            break;
        }
        for _ in 0..n {
            // Latency here is the interval between acknowledgements (time per MiB).
            note(&agg, last, Ok(BULK_CHUNK as u64));
            last = Instant::now();
        }
    }
    writer.abort();
}

/// The scheduled times of connection `k`'s requests in an open loop at `rate` requests/s in
/// total over `conns` connections: request `i` of the run at `start + i / rate`, round-robin,
/// until `deadline`.
fn schedule(
    rate: u64,
    k: usize,
    conns: usize,
    start: Instant,
    deadline: Instant,
) -> impl Iterator<Item = Instant> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    (k as u32..)
        .step_by(conns.max(1))
        .map(move |i| start + period * i)
        .take_while(move |at| *at < deadline)
}

/// Waits for a request's scheduled time `at`; returns where its latency counts from: `at`
/// when the connection was still busy then (no coordinated omission), else when the timer
/// fired (tokio's 1 ms timer granularity is not the target's).
async fn turn(at: Instant) -> Instant {
    if Instant::now() < at {
        tokio::time::sleep_until(at.into()).await;
        Instant::now()
    } else {
        at
    }
}

/// One message round trip on `stream`, opening it first if there is none (the opening makes
/// the first round trip); a failed stream is dropped, and the next message opens another.
async fn next_message(
    stream: &mut Option<MsgStream>,
    tx: &mut hyper::client::conn::http2::SendRequest<ReqBody>,
) -> anyhow::Result<u64> {
    let r = match stream.as_mut() {
        Some(s) => s.round_trip().await,
        None => MsgStream::open(tx).await.map(|s| {
            *stream = Some(s);
            GRPC_MSG.len() as u64
        }),
    };
    if r.is_err() {
        *stream = None;
    }
    r
}

/// A stream's end must bring `grpc-status: 0`; if it does not, that counts as one error.
async fn finish_stream(stream: Option<MsgStream>, agg: &Shared) {
    if let Some(s) = stream {
        if s.finish().await.is_err() {
            agg.lock().unwrap().errors += 1;
        }
    }
}

/// Message round trips back to back on one gRPC stream (a new one after an error).
async fn stream_loop(
    mut tx: hyper::client::conn::http2::SendRequest<ReqBody>,
    start: Instant,
    deadline: Instant,
    agg: Shared,
) {
    tokio::time::sleep_until(start.into()).await;
    let mut stream: Option<MsgStream> = None;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let r = next_message(&mut stream, &mut tx).await;
        note(&agg, t0, r);
    }
    finish_stream(stream, &agg).await;
}

async fn closed_loop(mut c: Conn, sc: Scenario, start: Instant, deadline: Instant, agg: Shared) {
    if sc.proto == Proto::TcpBulk {
        if let Conn::Tcp(s) = c {
            bulk_stream(s, start, deadline, agg).await;
        }
        return;
    }
    if sc.proto == Proto::GrpcStream {
        if let Conn::H2(tx) = c {
            stream_loop(tx, start, deadline, agg).await;
        }
        return;
    }
    tokio::time::sleep_until(start.into()).await;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let r = match &mut c {
            Conn::Tcp(s) => echo_once(s).await,
            _ => http_once(&mut c, &sc.path).await,
        };
        let failed = r.is_err();
        note(&agg, t0, r);
        if failed && matches!(c, Conn::Tcp(_)) {
            break; // a broken TCP stream cannot be reused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scenarios_are_named_uniquely() {
        let v = scenarios(16, 64, &[1000, 5000]);
        assert_eq!(v[0].conns, 64);
        assert!(v
            .iter()
            .filter(|s| s.name.ends_with("-5k"))
            .all(|s| s.conns == 16));
        let mut names: Vec<&str> = v.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"h1-small-1k") && names.contains(&"h1-small-5k"));
        assert!(names.contains(&"tcp-bulk-1mib"));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(rate_label(2500), "2500rps");
        assert!(names.contains(&"grpc-stream-max") && names.contains(&"grpc-stream-5k"));
    }

    /// Message round trips on gRPC streams against the upstream's echo, over real sockets:
    /// closed loop, then open loop at a fixed rate; every stream ends with `grpc-status: 0`.
    #[test]
    fn grpc_streams_echo_every_message_and_end_ok() {
        let up = crate::upstream::start(None).unwrap();
        let all = scenarios(2, 8, &[400]);
        let max = all.iter().find(|s| s.name == "grpc-stream-max").unwrap();
        let out = run(up.http, max, Duration::from_millis(300), &mut |_| {}).unwrap();
        assert_eq!(out.errors, 0);
        assert!(out.requests > 50, "{} round trips", out.requests);
        assert_eq!(out.bytes, out.requests * GRPC_MSG.len() as u64);

        let rate = all.iter().find(|s| s.name == "grpc-stream-400rps").unwrap();
        let out = run(up.http, rate, Duration::from_millis(500), &mut |_| {}).unwrap();
        assert_eq!(out.errors, 0);
        // 400/s for 0.5 s, scheduled from the window's start: 200 messages, none more.
        assert!((190..=200).contains(&out.requests), "{}", out.requests);
    }

    /// A stream the server ends without the OK trailer is an error, not a silent success.
    #[test]
    fn a_stream_without_the_ok_trailer_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A server that answers the stream's first message and then ends it with no trailer.
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let svc = hyper::service::service_fn(|_req| async {
                    let body = OnceBody::data(Some(Bytes::from_static(GRPC_MSG)));
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
            let s = connect(addr).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(s))
                .await
                .unwrap();
            tokio::spawn(conn);
            let stream = MsgStream::open(&mut tx).await.unwrap();
            let err = stream.finish().await.unwrap_err();
            assert!(err.to_string().contains("grpc-status"), "{err:#}");
        });
    }
}
