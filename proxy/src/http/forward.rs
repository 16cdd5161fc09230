//! Sending a routed request upstream: host selection (with the route's hash policy), protocol
//! conversion (HTTP/1.1 or h2c upstream), the route timeout and per-try timeout, and Envoy's
//! retry policy (`retry_on`, retriable status codes, back-off, previous-hosts predicate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use super::Conn;
use crate::body::{self, Body};
use crate::clock;
use crate::cluster::lb::request_hash as hash_parts;
use crate::cluster::pool::UpstreamError;
use crate::cluster::ClusterRt;
use crate::model::cluster::UpstreamProtocol;
use crate::route::{HashPolicy, RetryPolicy, RouteEntry};

/// A reply the proxy makes itself, with Envoy's status and body text.
#[derive(Debug, Clone, Copy)]
pub struct LocalReply {
    pub status: u16,
    pub body: &'static str,
}

/// Envoy's reply text for a request that failed before the upstream's response head, by
/// reset reason.
macro_rules! reset_before_headers {
    ($reason:literal) => {
        concat!(
            "upstream connect error or disconnect/reset before headers. reset reason: ",
            $reason
        )
    };
}

const NO_HEALTHY: LocalReply = LocalReply {
    status: 503,
    body: "no healthy upstream",
};
const CONNECT_FAILURE: LocalReply = LocalReply {
    status: 503,
    body: reset_before_headers!("connection failure"),
};
const RESET: LocalReply = LocalReply {
    status: 503,
    body: reset_before_headers!("connection termination"),
};
/// The upstream reset the stream (`UR`).
const REMOTE_RESET: LocalReply = LocalReply {
    status: 503,
    body: reset_before_headers!("remote reset"),
};
/// The upstream refused the stream and no retry took it elsewhere (`UR`).
const REFUSED: LocalReply = LocalReply {
    status: 503,
    body: reset_before_headers!("remote refused stream reset"),
};
/// Envoy's reply when the upstream broke the protocol (`UPE`).
pub(crate) const PROTOCOL_ERROR: LocalReply = LocalReply {
    status: 502,
    body: reset_before_headers!("protocol error"),
};
const TIMEOUT: LocalReply = LocalReply {
    status: 504,
    body: "upstream request timeout",
};
const OVERFLOW: LocalReply = LocalReply {
    status: 503,
    body: reset_before_headers!("overflow"),
};

/// The request hash from the route's hash policies (first that yields a value; all non-terminal
/// values are combined as Envoy does).
pub fn request_hash(
    policies: &[HashPolicy],
    parts: &http::request::Parts,
    remote: Option<SocketAddr>,
) -> Option<u64> {
    let mut acc: Option<u64> = None;
    for p in policies {
        let (v, terminal): (Option<u64>, bool) = match p {
            HashPolicy::Header { name, terminal } => (
                parts
                    .headers
                    .get(name.as_str())
                    .map(|v| hash_parts(&[v.as_bytes()])),
                *terminal,
            ),
            HashPolicy::Cookie { name, terminal, .. } => (
                parts
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| hash_parts(&[v.as_bytes()])),
                *terminal,
            ),
            HashPolicy::SourceIp { terminal } => (
                remote.map(|r| hash_parts(&[r.ip().to_string().as_bytes()])),
                *terminal,
            ),
            HashPolicy::QueryParameter { name, terminal } => (
                parts.uri.query().and_then(|q| {
                    q.split('&')
                        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| hash_parts(&[v.as_bytes()]))
                }),
                *terminal,
            ),
            HashPolicy::FilterState { .. } => (None, false),
        };
        if let Some(v) = v {
            acc = Some(match acc {
                Some(a) => a.rotate_left(1) ^ v,
                None => v,
            });
            if terminal {
                break;
            }
        }
    }
    acc
}

/// What an attempt's outcome means for retries.
enum Outcome {
    Response(Response<Body>),
    Failed(UpstreamError),
    NoHost,
    TimedOut,
}

fn retriable_response(p: &RetryPolicy, r: &Response<Body>) -> bool {
    let s = r.status().as_u16();
    let grpc = r
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    p.retry_on.iter().any(|c| match c.as_str() {
        "5xx" => s >= 500,
        "gateway-error" => matches!(s, 502..=504),
        "retriable-4xx" => s == 409,
        "retriable-status-codes" => p.retriable_status_codes.contains(&(s as u32)),
        "cancelled" => grpc == Some(1),
        "deadline-exceeded" => grpc == Some(4),
        "resource-exhausted" => grpc == Some(8),
        "unavailable" => grpc == Some(14),
        "internal" => grpc == Some(13),
        _ => false,
    })
}

fn retriable_failure(p: &RetryPolicy, e: &UpstreamError) -> bool {
    let connect = e.is_connect_failure();
    p.retry_on.iter().any(|c| match c.as_str() {
        "5xx" | "gateway-error" | "reset" => true,
        "connect-failure" => connect,
        "refused-stream" => matches!(e, UpstreamError::Refused(_)),
        _ => false,
    })
}

/// Keeps a small request body so a retry can send it again; big or streaming bodies go once.
async fn replayable(req: Request<Body>) -> (Request<Body>, Option<(http::request::Parts, Bytes)>) {
    const MAX: u64 = 64 * 1024;
    let (parts, b) = req.into_parts();
    let small = http_body::Body::is_end_stream(&b)
        || http_body::Body::size_hint(&b)
            .upper()
            .is_some_and(|u| u <= MAX);
    if !small {
        return (Request::from_parts(parts, b), None);
    }
    match b.collect().await {
        Ok(c) => {
            let bytes = c.to_bytes();
            let copy = (clone_parts(&parts), bytes.clone());
            (Request::from_parts(parts, body::full(bytes)), Some(copy))
        }
        Err(_) => (Request::from_parts(parts, body::empty()), None),
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::builder()
        .method(p.method.clone())
        .uri(p.uri.clone())
        .version(p.version)
        .body(())
        .unwrap();
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// Forwards a request to `cluster` under the route's timeout and retry policy; the route's
/// timeout uses the connection's kept `timer` when it has one.
pub async fn forward(
    conn: &Conn,
    cluster: &Arc<ClusterRt>,
    req: Request<Body>,
    entry: &RouteEntry,
    timeouts: &super::timeout::Timeouts,
    hash: Option<u64>,
    timer: Option<&mut super::timeout::Deadline>,
) -> Result<Response<Body>, LocalReply> {
    // An ORIGINAL_DST cluster's host: where the connection was going.
    let orig_dst = conn.info.local;
    let per_try = Some(timeouts.per_try).filter(|t| !t.is_zero());
    let policy = entry.retry_policy.clone().filter(|p| p.num_retries > 0);
    let max_retries = policy
        .as_ref()
        .map(|p| p.num_retries.min(cluster.cfg.max_retries.max(1)))
        .unwrap_or(0);
    let (mut req, mut copy) = if max_retries > 0 {
        Box::pin(replayable(req)).await
    } else {
        (req, None)
    };
    // Pinned in place, as each attempt's future is below.
    let overall = std::pin::pin!(async {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let avoid_prev = policy.as_ref().is_some_and(|p| p.previous_hosts_predicate);
            let host = cluster.pick(hash, orig_dst, &|h| avoid_prev && tried.contains(&h.addr));
            let outcome = match host {
                None => Outcome::NoHost,
                Some(host) => {
                    if max_retries > 0 {
                        tried.push(host.addr);
                    }
                    // auto_host_rewrite: Host becomes the chosen endpoint's hostname.
                    if matches!(entry.host_rewrite, crate::route::HostRewrite::Auto)
                        && !host.hostname.is_empty()
                    {
                        let (mut p, b) = req.into_parts();
                        crate::route::headers::set_authority(&mut p, &host.hostname);
                        req = Request::from_parts(p, b);
                    }
                    // Pinned in place: the timeout (or the await) holds a reference, so the
                    // attempt's future (several KB) is stored once and never moved.
                    let send = std::pin::pin!(send_once(conn, cluster, &host, req));
                    let mut outcome = match per_try {
                        Some(t) => {
                            match tokio::time::timeout_at(clock::tokio_now() + t, send).await {
                                Ok(Ok(r)) => Outcome::Response(r),
                                Ok(Err(e)) => Outcome::Failed(e),
                                Err(_) => Outcome::TimedOut,
                            }
                        }
                        None => match send.await {
                            Ok(r) => Outcome::Response(r),
                            Err(e) => Outcome::Failed(e),
                        },
                    };
                    if !conn.hcm.access_logs.is_empty() {
                        if let Outcome::Response(r) = &mut outcome {
                            r.extensions_mut()
                                .insert(super::access::UpstreamHost(host.addr));
                        }
                    }
                    if cluster.outlier.is_some() {
                        use crate::cluster::outlier::Outcome as O;
                        let seen = match &outcome {
                            Outcome::Response(r) => Some(O::Status(r.status().as_u16())),
                            Outcome::TimedOut => Some(O::Timeout),
                            Outcome::Failed(UpstreamError::Overflow(_)) => None,
                            Outcome::Failed(e) if e.is_connect_failure() => Some(O::ConnectFailed),
                            Outcome::Failed(_) => Some(O::Reset),
                            Outcome::NoHost => None,
                        };
                        if let Some(o) = seen {
                            cluster.report(&host, o);
                        }
                    }
                    outcome
                }
            };
            let retry = match (&policy, &outcome) {
                _ if attempt >= max_retries || copy.is_none() => false,
                (Some(p), Outcome::Response(r)) => retriable_response(p, r),
                (Some(p), Outcome::Failed(e)) => retriable_failure(p, e),
                (Some(p), Outcome::TimedOut) => p
                    .retry_on
                    .iter()
                    .any(|c| c == "5xx" || c == "gateway-error" || c == "reset"),
                _ => false,
            };
            if !retry {
                return match outcome {
                    Outcome::Response(r) => Ok(r),
                    Outcome::NoHost => Err(NO_HEALTHY),
                    Outcome::TimedOut => {
                        cluster.stats.upstream_rq_timeout.inc();
                        Err(TIMEOUT)
                    }
                    Outcome::Failed(e) => {
                        tracing::debug!(cluster = %cluster.cfg.name, %e, "upstream request failed");
                        Err(match e {
                            UpstreamError::Overflow(_) => OVERFLOW,
                            UpstreamError::Protocol(_) => PROTOCOL_ERROR,
                            UpstreamError::RemoteReset(_) => REMOTE_RESET,
                            UpstreamError::Refused(_) => REFUSED,
                            e if e.is_connect_failure() => CONNECT_FAILURE,
                            _ => RESET,
                        })
                    }
                };
            }
            attempt += 1;
            cluster.stats.upstream_rq_retry.inc();
            // Exponential back-off with full jitter (Envoy: base 25ms, max 10x base).
            let (base, max) = policy
                .as_ref()
                .and_then(|p| p.back_off)
                .map(|b| (b.base_interval, b.max_interval))
                .unwrap_or((Duration::from_millis(25), Duration::from_millis(250)));
            let ceiling = (base * 2u32.saturating_pow(attempt)).min(max);
            let wait = Duration::from_micros(fastrand::u64(..=ceiling.as_micros() as u64));
            Box::pin(tokio::time::sleep(wait)).await;
            let (p, b) = copy.take().expect("retry needs a copy");
            req = Request::from_parts(clone_parts(&p), body::full(b.clone()));
            copy = Some((p, b));
        }
    });
    if timeouts.global.is_zero() {
        return overall.await;
    }
    let at = clock::tokio_now() + timeouts.global;
    let r = match timer {
        Some(timer) => timer.run(at, overall).await,
        None => tokio::time::timeout_at(at, overall).await.ok(),
    };
    r.unwrap_or_else(|| {
        cluster.stats.upstream_rq_timeout.inc();
        conn.stats.rq_timeout.inc();
        Err(TIMEOUT)
    })
}

/// A request in flight to one host: counted in the cluster's `upstream_rq_active` and the
/// host's active requests (least-request balancing) until it is answered, or dropped because
/// the downstream went away (then counted in `upstream_rq_tx_reset`).
struct UpstreamInFlight<'a> {
    stats: &'a crate::cluster::ClusterStats,
    host: &'a crate::cluster::Host,
    answered: bool,
}

impl<'a> UpstreamInFlight<'a> {
    fn new(
        stats: &'a crate::cluster::ClusterStats,
        host: &'a crate::cluster::Host,
    ) -> UpstreamInFlight<'a> {
        stats.upstream_rq_active.inc();
        host.active.inc();
        UpstreamInFlight {
            stats,
            host,
            answered: false,
        }
    }

    fn done(mut self) {
        self.answered = true;
    }
}

impl Drop for UpstreamInFlight<'_> {
    fn drop(&mut self) {
        self.host.active.dec();
        self.stats.upstream_rq_active.dec();
        if !self.answered {
            self.stats.upstream_rq_tx_reset.inc();
        }
    }
}

async fn send_once(
    conn: &Conn,
    cluster: &Arc<ClusterRt>,
    host: &Arc<crate::cluster::Host>,
    mut req: Request<Body>,
) -> Result<Response<Body>, UpstreamError> {
    let stats = &cluster.stats;
    // Circuit breaker: Envoy's `max_requests` (Istio's http2MaxRequests) caps requests in
    // flight to the cluster; over it the request fails fast with an overflow.
    if stats.upstream_rq_active.get() >= cluster.cfg.max_requests as i64 {
        stats.upstream_rq_pending_overflow.inc();
        return Err(UpstreamError::Overflow("max_requests"));
    }
    stats.upstream_rq_total.inc();
    let in_flight = UpstreamInFlight::new(stats, host);
    let h2 = match cluster.cfg.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::UseDownstream => conn.http2,
    };
    let new_cx = |connect: Duration| {
        stats.upstream_cx_total.inc();
        stats.hists().upstream_cx_connect_ms.record(connect);
    };
    let t0 = clock::now();
    let r = if h2 {
        host.pool
            .send_http2(host.addr, &cluster.settings, &cluster.limits, req, new_cx)
            .await
    } else {
        to_http1(&mut req);
        host.pool
            .send_http1(host.addr, &cluster.settings, &cluster.limits, req, new_cx)
            .await
    };
    in_flight.done();
    match &r {
        Ok(resp) => stats.response(resp.status().as_u16(), clock::now() - t0),
        Err(e) => {
            if matches!(e, UpstreamError::Overflow("max_pending_requests")) {
                stats.upstream_rq_pending_overflow.inc();
                stats.upstream_cx_overflow.inc();
            }
            if e.is_connect_failure() {
                stats.upstream_cx_connect_fail.inc();
            }
            if matches!(e, UpstreamError::ConnectTimeout) {
                stats.upstream_cx_connect_timeout.inc();
            }
        }
    }
    r
}

/// HTTP/1.1 upstream requests use origin-form URIs and carry the authority in `Host`.
fn to_http1(req: &mut Request<Body>) {
    if let Some(auth) = req.uri().authority().map(|a| a.as_str().to_string()) {
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(&auth) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        if let Ok(u) = pq.parse() {
            *req.uri_mut() = u;
        }
    }
    *req.version_mut() = http::Version::HTTP_11;
}

/// CONNECT: opens a TCP connection to a host of `cluster` and, once the downstream side has
/// upgraded (after the 200), copies bytes both ways.
pub async fn connect_tunnel(
    cluster: &Arc<ClusterRt>,
    hash: Option<u64>,
    down: Option<super::upgrade::OnUpgrade>,
    mut phase: tokio::sync::watch::Receiver<crate::listener::Phase>,
) -> Result<(), LocalReply> {
    let down = down.ok_or(LocalReply {
        status: 400,
        body: "CONNECT without an upgradable connection",
    })?;
    let host = cluster.pick(hash, None, &|_| false).ok_or(NO_HEALTHY)?;
    cluster.stats.upstream_cx_total.inc();
    let t0 = std::time::Instant::now();
    let mut up = crate::cluster::pool::connect_from(
        host.addr,
        cluster.cfg.connect_timeout,
        cluster.settings.src(),
    )
    .await
    .inspect(|_| {
        let h = &cluster.stats.hists().upstream_cx_connect_ms;
        h.record(t0.elapsed());
    })
    .map_err(|_| {
        cluster.stats.upstream_cx_connect_fail.inc();
        CONNECT_FAILURE
    })?;
    tokio::spawn(async move {
        if let Some(mut d) = down.wait().await {
            // The tunnel is closed at the end of a drain.
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut d, &mut up) => {}
                _ = crate::listener::reached(&mut phase, crate::listener::Phase::Close) => {}
            }
        }
    });
    Ok(())
}

/// Request mirroring (`request_mirror_policies`): a copy of the request goes to each mirror
/// cluster whose fraction hits, with `-shadow` appended to the host, and its response is
/// discarded. Requests with large or streaming bodies are not mirrored (their body cannot be
/// copied without buffering it).
pub async fn mirror(
    conn: &Conn,
    mirrors: &[crate::route::action::RequestMirror],
    req: Request<Body>,
    random: u64,
) -> Request<Body> {
    let hits: Vec<String> = mirrors
        .iter()
        .filter(|m| m.fraction.as_ref().is_none_or(|(_, f)| f.enabled(random)))
        .filter_map(|m| match &m.cluster_header {
            Some(h) => req
                .headers()
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            None => Some(m.cluster.clone()),
        })
        .collect();
    if hits.is_empty() {
        return req;
    }
    let (req, copy) = replayable(req).await;
    let Some((parts, bytes)) = copy else {
        return req;
    };
    let snap = conn.state.load_full();
    for name in hits {
        let Some(cluster) = snap.cluster(&name).cloned() else {
            continue;
        };
        let mut p = clone_parts(&parts);
        shadow_host(&mut p);
        let r = Request::from_parts(p, body::full(bytes.clone()));
        let state = conn.state.clone();
        let hcm = conn.hcm.clone();
        let info = conn.info.clone();
        let stats = conn.stats.clone();
        let http2 = conn.http2;
        let phase = conn.phase.clone();
        tokio::spawn(async move {
            let shadow = Conn {
                state,
                hcm,
                info,
                stats,
                http2,
                phase,
                activity: super::Activity::new(),
            };
            if let Some(host) = cluster.pick(None, None, &|_| false) {
                if let Ok(resp) = send_once(&shadow, &cluster, &host, r).await {
                    let _ = resp.into_body().collect().await;
                }
            }
        });
    }
    req
}

fn shadow_host(p: &mut http::request::Parts) {
    let host = p
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            p.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let shadowed = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            format!("{h}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    };
    crate::route::headers::set_authority(p, &shadowed);
}
