//! One request through the connection manager: Envoy's header handling, route selection, the
//! fault and CORS filters, then the router filter (redirects, direct responses, forwarding with
//! rewrites, response header changes). Every failure becomes a local reply with Envoy's status.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};

use super::forward::{self, LocalReply};
use super::timeout::Deadline;
use super::{cors, fault, headers, Conn};
use crate::body::{self, Body};
use crate::clock;
use crate::listener::{reached, Phase};
use crate::model::network::{HttpFilter, RouteSource};
use crate::route::{self, FormatCtx, RequestView, RouteTable, Selected};

/// The stream idle timeout fired before the response head (Envoy's `onIdleTimeout`).
const STREAM_TIMEOUT: LocalReply = LocalReply {
    status: 408,
    body: "stream timeout",
};
/// The request body had not fully arrived within the HCM's `request_timeout`.
const REQUEST_TIMEOUT: LocalReply = LocalReply {
    status: 408,
    body: "request timeout",
};

/// Handles one downstream request; never fails (errors are local replies).
pub async fn handle<B>(conn: Arc<Conn>, req: Request<B>, timer: &mut Deadline) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let t0 = clock::now();
    conn.stats.downstream_rq_total.inc();
    let in_flight = InFlight::new(&conn);
    let grpc = super::timeout::is_grpc(req.headers());
    let mut resp = if conn.hcm.access_logs.is_empty() {
        // A body that already ended is not boxed (an empty body's box does not allocate).
        let req = req.map(|b| {
            if http_body::Body::is_end_stream(&b) {
                body::empty()
            } else {
                body::boxed(b)
            }
        });
        route_request(&conn, req, grpc, t0, None, timer).await
    } else {
        let log = super::access::Pending::start(t0);
        let counted = log.count_request(req);
        let mut head = crate::access_log::ReqHead::of_request(&counted);
        let resp = route_request(&conn, counted, grpc, t0, Some(&mut head), timer).await;
        log.finish(&conn, head, resp)
    };
    if grpc {
        resp = grpc_local_reply(resp);
    }
    conn.stats.status(resp.status().as_u16());
    // One clock read for the request's time and the connection's activity.
    let end = clock::now();
    conn.stats.downstream_rq_time.record(end - t0);
    in_flight.end(end);
    resp
}

/// A request in flight: counted in `downstream_rq_active` and the connection's activity
/// until it is answered or cancelled (the client went away and the future was dropped).
struct InFlight<'a>(&'a Conn);

impl<'a> InFlight<'a> {
    fn new(conn: &'a Conn) -> InFlight<'a> {
        conn.activity.begin();
        conn.stats.downstream_rq_active.inc();
        InFlight(conn)
    }
}

impl InFlight<'_> {
    /// Answered at `at`.
    fn end(self, at: Instant) {
        self.0.stats.downstream_rq_active.dec();
        self.0.activity.end(at);
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.stats.downstream_rq_active.dec();
        self.0.activity.end(clock::now());
    }
}

/// A local reply: status and plain-text body, as Envoy sends them.
pub fn local_reply(status: u16, text: &str) -> Response<Body> {
    local_reply_with(status, text, None)
}

/// Marks a response the proxy made itself, so that a gRPC request gets it as a gRPC error.
#[derive(Clone)]
pub(crate) struct Local {
    pub(crate) message: String,
    grpc_status: Option<u32>,
}

impl Local {
    /// Envoy's response flag for this reply (empty for none).
    pub(crate) fn flags(&self, status: u16) -> &'static str {
        match self.message.as_str() {
            "no healthy upstream" => "UH",
            "upstream request timeout" => "UT",
            "stream timeout" => "SI",
            "downstream duration timeout" => "UMSDR",
            "fault filter abort" => "FI",
            m if m.ends_with("connection failure") => "UF",
            m if m.ends_with("connection termination") => "UC",
            m if m.ends_with("overflow") => "UO",
            m if m.ends_with("protocol error") => "UPE",
            m if m.ends_with("remote reset") || m.ends_with("remote refused stream reset") => "UR",
            "" if status == 404 => "NR",
            "" if status == 503 => "NC",
            _ => "",
        }
    }
}

fn local_reply_with(status: u16, text: &str, grpc_status: Option<u32>) -> Response<Body> {
    let parts = route::table::local_reply_head(status, Some(text).filter(|t| !t.is_empty()));
    let mut r = Response::from_parts(parts, body::full(text.to_string()));
    r.extensions_mut().insert(Local {
        message: text.to_string(),
        grpc_status,
    });
    r
}

/// Envoy answers a gRPC request's local reply in gRPC form: HTTP 200, trailers-only, with
/// `grpc-status` from the HTTP status (or the reply's own) and the text as `grpc-message`.
fn grpc_local_reply(mut r: Response<Body>) -> Response<Body> {
    let Some(l) = r.extensions_mut().remove::<Local>() else {
        return r;
    };
    let status = l
        .grpc_status
        .unwrap_or_else(|| super::timeout::grpc_status_of(r.status().as_u16()));
    let (mut parts, _) = r.into_parts();
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(http::header::CONTENT_LENGTH);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(status));
    if !l.message.is_empty() {
        let msg = l.message.replace('%', "%25");
        if let Ok(v) = HeaderValue::from_str(&msg) {
            h.insert("grpc-message", v);
        }
    }
    Response::from_parts(parts, body::empty())
}

fn is_upgrade(req: &http::request::Parts) -> Option<String> {
    if req.method == http::Method::CONNECT {
        return Some("connect".into());
    }
    let conn_upgrade = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !conn_upgrade {
        return None;
    }
    req.headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase())
}

async fn route_request(
    conn: &Arc<Conn>,
    req: Request<Body>,
    grpc: bool,
    started: Instant,
    log_head: Option<&mut crate::access_log::ReqHead>,
    timer: &mut Deadline,
) -> Response<Body> {
    let mut cors_latched = None;
    let mut resp = route_inner(conn, req, grpc, started, log_head, &mut cors_latched, timer).await;
    // Every response carries the server header, as Envoy's do (set here once, after the
    // route's response header changes).
    if let Some(v) = &conn.hcm.server_header {
        resp.headers_mut().insert(http::header::SERVER, v.clone());
    }
    // The CORS filter's response side: whatever answered (upstream or a later local reply).
    if let Some(l) = cors_latched {
        l.apply(resp.headers_mut());
    }
    resp
}

async fn route_inner(
    conn: &Arc<Conn>,
    req: Request<Body>,
    grpc: bool,
    started: Instant,
    log_head: Option<&mut crate::access_log::ReqHead>,
    cors_latched: &mut Option<cors::Latched>,
    timer: &mut Deadline,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    // Envoy's `max_request_headers_kb` covers the whole header section.
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > conn.hcm.max_request_headers_kb as usize * 1024 {
        return local_reply(431, "");
    }
    if !conn.hcm.path.is_noop() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        match super::path::normalize(pq, conn.hcm.path) {
            Ok(n) if n != pq => route::headers::set_path(&mut parts, &n),
            Ok(_) => {}
            Err(_) => return local_reply(400, ""),
        }
    }
    let upgrade = is_upgrade(&parts);
    let down_upgrade = upgrade
        .as_ref()
        .and_then(|_| super::upgrade::OnUpgrade::take(&mut parts.extensions));
    let scheme = if conn.info.transport == "tls" {
        "https"
    } else {
        "http"
    };
    // HTTP/1 requests name the host in `Host`; give the URI no authority so that views agree.
    headers::on_request(&mut parts.headers, &conn.hcm, conn.info.remote, scheme);
    // Cloned only when it goes back: cloning a fresh `HeaderValue` allocates.
    let request_id = conn
        .hcm
        .always_set_request_id_in_response
        .then(|| parts.headers.get(&headers::X_REQUEST_ID).cloned())
        .flatten();
    if let Some(h) = log_head {
        // The access log sees the request as the connection manager passed it on.
        *h = crate::access_log::ReqHead::of(&parts);
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());

    // Route table: inline, or the current RDS version.
    let table: Arc<RouteTable> = match &conn.hcm.route {
        RouteSource::Inline(t) => t.clone(),
        RouteSource::Rds(name) => match conn.state.load().routes.get(name) {
            Some(r) => r.table.clone(),
            None => {
                conn.stats.no_route.inc();
                return local_reply(404, "");
            }
        },
    };
    let random = fastrand::u64(..);
    let sel = {
        let mut view = RequestView::from_parts(&parts);
        view.remote_addr = conn.info.remote;
        table.select(&view, random)
    };
    let protocol = if conn.http2 { "HTTP/2" } else { "HTTP/1.1" };
    // Where the upstream service time (`x-envoy-upstream-service-time`) counts from: the
    // request's start, read again only after something that waits (a fault's delay, a
    // mirror's copy of the body).
    let mut sent = started;
    if let Some(entry) = sel.entry() {
        // Upgrades (WebSocket, CONNECT) must be enabled: the route's setting for that
        // type wins over the connection manager's, as in Envoy.
        if let Some(u) = &upgrade {
            let allowed = entry
                .upgrades
                .iter()
                .find(|(t, _)| t == u)
                .map(|(_, on)| *on)
                .unwrap_or_else(|| conn.hcm.upgrades.iter().any(|c| c == u));
            if !allowed {
                return local_reply(403, "");
            }
        }
        // HTTP filters before the router, in configured order.
        for f in &conn.hcm.filters {
            match f {
                HttpFilter::Fault(name, cfg) => {
                    let cfg = sel.fault_config(name).unwrap_or(cfg);
                    let (d, _guard) =
                        fault::decide(cfg, &parts, fastrand::u64(..), fastrand::u64(..));
                    if let Some(delay) = d.delay {
                        conn.stats.fault_delays.inc();
                        Box::pin(tokio::time::sleep(delay)).await;
                        sent = clock::now();
                    }
                    if let Some(a) = d.abort {
                        conn.stats.fault_aborts.inc();
                        return match a {
                            fault::Abort::Http(s) => local_reply(s, "fault filter abort"),
                            fault::Abort::Grpc(s) => grpc_reply(s, "fault filter abort"),
                        };
                    }
                }
                HttpFilter::Cors(name) => {
                    match sel.cors_policies(name).decide(
                        &parts.method,
                        &parts.headers,
                        fastrand::u64(..),
                        fastrand::u64(..),
                        Some(&conn.stats.cors),
                    ) {
                        cors::Decision::Pass => {}
                        cors::Decision::Respond(l) => *cors_latched = Some(l),
                        cors::Decision::Preflight(h) => {
                            // Answered by the filter: no route header changes, as in Envoy.
                            let mut r = Response::new(body::empty());
                            *r.headers_mut() = h;
                            return r;
                        }
                    }
                }
                HttpFilter::Router => {}
            }
        }
    }
    let mut resp = match &sel {
        Selected::NoRoute | Selected::NonForwarding { .. } => {
            conn.stats.no_route.inc();
            return local_reply(404, "");
        }
        Selected::ClusterNotFound { status, .. } => {
            conn.stats.no_cluster.inc();
            local_reply(*status, "")
        }
        Selected::Redirect {
            location, status, ..
        } => {
            let mut r = local_reply(*status, "");
            if let Ok(v) = HeaderValue::from_str(location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        }
        Selected::Direct { status, body, .. } => local_reply(*status, body.unwrap_or("")),
        Selected::Route { entry, cluster, .. } => {
            // The snapshot only for the lookup: a guard, not a reference count of its own.
            let cluster_rt = conn.state.load().cluster(cluster).cloned();
            let Some(cluster_rt) = cluster_rt else {
                conn.stats.no_cluster.inc();
                return finalize(
                    &table,
                    &sel,
                    local_reply(entry.cluster_not_found_response_code, ""),
                    conn,
                    protocol,
                    started,
                );
            };
            let ctx = FormatCtx {
                downstream_remote: conn.info.remote,
                downstream_local: conn.info.local,
                protocol: Some(protocol),
                started: Some(started),
                upstream_cluster: Some(cluster),
                insert_original_path: true,
                ..Default::default()
            };
            table.finalize_request(&sel, &mut parts, &ctx);
            let timeouts = super::timeout::resolve(entry, &mut parts.headers, grpc);
            let deadline = timeouts.stream.map(|d| clock::tokio_now() + d);
            let hash = forward::request_hash(&entry.hash_policy, &parts, conn.info.remote);
            if parts.method == http::Method::CONNECT {
                return match Box::pin(forward::connect_tunnel(
                    &cluster_rt,
                    hash,
                    down_upgrade,
                    conn.phase.clone(),
                ))
                .await
                {
                    Ok(()) => local_reply(200, ""),
                    Err(LocalReply { status, body }) => local_reply(status, body),
                };
            }
            let mut req = Request::from_parts(parts, body);
            // The connection manager's `request_timeout`: the whole request must have
            // arrived, or the response have begun, within it (408). Only a request with a
            // body still to come can be waiting for that.
            let received = match conn.hcm.request_timeout {
                Some(limit) if !http_body::Body::is_end_stream(req.body()) => {
                    let (r, flag) = body::EndFlag::wrap(req);
                    req = r;
                    Some((limit, flag))
                }
                _ => None,
            };
            if !entry.request_mirrors.is_empty() {
                req = Box::pin(forward::mirror(conn, &entry.request_mirrors, req, random)).await;
                sent = clock::now();
            }
            // The stream idle timeout (the route's `idle_timeout`, else the connection
            // manager's `stream_idle_timeout`, default 5 min; 0 disables): no activity while
            // waiting for the response head (408, as Envoy answers)...
            let idle = match entry.idle_timeout {
                Some(d) => Some(d).filter(|d| !d.is_zero()),
                None => conn.hcm.stream_idle_timeout,
            };
            // A stalled response body is bounded only by a configured timeout: Envoy's
            // 5-minute default would put a timer (and a driver wake-up) on every response
            // body that has to wait for its next read.
            let body_idle =
                idle.filter(|_| entry.idle_timeout.is_some() || conn.hcm.stream_idle_timeout_set);
            // While the response head is awaited, a route timeout that is no longer than
            // the idle timeout always fires first: no second timer for that wait.
            let head_idle = idle.filter(|d| timeouts.global.is_zero() || *d < timeouts.global);
            // The connection's kept timer (see `Deadline`) goes to the one timer most requests
            // have: the idle timeout alone, else the route's timeout.
            let (idle_timer, fwd_timer) = if head_idle.is_some() && received.is_none() {
                (Some(timer), None)
            } else {
                (None, Some(timer))
            };
            // Built in its box: the forwarding future is about 4 KB (16 KB before its attempts
            // were pinned in place), and the timeouts below would otherwise move (copy) all of
            // it more than once per request.
            let fwd = Box::into_pin(Box::write(
                Box::new_uninit(),
                forward::forward(conn, &cluster_rt, req, entry, &timeouts, hash, fwd_timer),
            ));
            let fwd = async {
                match (head_idle, &received, idle_timer) {
                    (None, None, _) => return fwd.await,
                    // The common case with a timer: the kept one, no `select!`.
                    (Some(idle), None, Some(timer)) => {
                        return match timer.run(clock::tokio_now() + idle, fwd).await {
                            Some(r) => r,
                            None => {
                                conn.stats.downstream_rq_idle_timeout.inc();
                                Err(STREAM_TIMEOUT)
                            }
                        };
                    }
                    _ => {}
                }
                let idle_timer = async {
                    match head_idle {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                let request_timer = async {
                    match &received {
                        Some((limit, flag)) => {
                            tokio::time::sleep(*limit).await;
                            if flag.load(std::sync::atomic::Ordering::Acquire) {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = fwd => r,
                    _ = idle_timer => {
                        conn.stats.downstream_rq_idle_timeout.inc();
                        Err(STREAM_TIMEOUT)
                    }
                    _ = request_timer => {
                        conn.stats.rq_timeout.inc();
                        Err(REQUEST_TIMEOUT)
                    }
                }
            };
            // ...and the stream's maximum duration (gRPC: DEADLINE_EXCEEDED).
            let result = match deadline {
                Some(at) => match tokio::time::timeout_at(at, fwd).await {
                    Ok(r) => r,
                    Err(_) => {
                        conn.stats.downstream_rq_max_duration_reached.inc();
                        let r = local_reply_with(504, "downstream duration timeout", Some(4));
                        return finalize(&table, &sel, r, conn, protocol, started);
                    }
                },
                None => fwd.await,
            };
            match result {
                Ok(mut r) => {
                    r.headers_mut().insert(
                        headers::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                        headers::service_time((clock::now() - sent).as_millis() as u64),
                    );
                    // ...nor between frames of the response body.
                    if let Some(idle) = body_idle {
                        r = r.map(|b| crate::body::boxed(crate::body::IdleTimeout::new(b, idle)));
                    }
                    if let Some(at) = deadline {
                        r = r
                            .map(|b| crate::body::boxed(crate::body::IdleTimeout::deadline(b, at)));
                    }
                    if r.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let Some(down) = down_upgrade else {
                            // Switching protocols on a request that cannot switch: the
                            // client would wait for a protocol nobody speaks.
                            let LocalReply { status, body } = forward::PROTOCOL_ERROR;
                            return finalize(
                                &table,
                                &sel,
                                local_reply(status, body),
                                conn,
                                protocol,
                                started,
                            );
                        };
                        let up = hyper::upgrade::on(&mut r);
                        // Upgraded connections are closed at the end of a drain.
                        let mut phase = conn.phase.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = tunnel(down, up) => {}
                                _ = reached(&mut phase, Phase::Close) => {}
                            }
                        });
                    } else {
                        headers::strip_hop_by_hop(r.headers_mut(), false);
                    }
                    r
                }
                Err(LocalReply { status, body }) => local_reply(status, body),
            }
        }
    };
    if let Some(id) = request_id {
        resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), id);
    }
    finalize(&table, &sel, resp, conn, protocol, started)
}

fn finalize(
    table: &RouteTable,
    sel: &Selected<'_>,
    resp: Response<Body>,
    conn: &Conn,
    protocol: &str,
    started: Instant,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let ctx = FormatCtx {
        downstream_remote: conn.info.remote,
        downstream_local: conn.info.local,
        protocol: Some(protocol),
        // `%START_TIME%` in a response header is the request's start, as in Envoy.
        started: Some(started),
        ..Default::default()
    };
    table.finalize_response_headers(sel, &mut parts, &ctx);
    if !conn.hcm.access_logs.is_empty() {
        parts.extensions.insert(super::access::RouteMeta {
            route: sel.route().map(|r| r.name.clone()).unwrap_or_default(),
            cluster: match sel {
                Selected::Route { cluster, .. } => Some(cluster.to_string()),
                _ => None,
            },
        });
    }
    Response::from_parts(parts, body)
}

/// A gRPC trailers-only error response.
pub fn grpc_reply(status: u32, message: &str) -> Response<Body> {
    let mut r = Response::new(body::empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    r
}

async fn tunnel(down: super::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (Some(mut d), Ok(u)) = tokio::join!(down.wait(), up) else {
        return;
    };
    let mut u = hyper_util::rt::TokioIo::new(u);
    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
}
