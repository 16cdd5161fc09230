//! The admin endpoint (127.0.0.1:15000 by default): `/config_dump`, `/clusters`, `/listeners`,
//! `/stats`, `/stats/prometheus`, `/ready`, `/server_info`, and the POST actions `/logging`,
//! `/drain_listeners` and `/quitquitquit`, with Envoy's paths and output formats.

pub mod config_dump;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::listener::Manager;
use crate::state::State;
use crate::stats::registry;

/// Sets the log level (`trace`..`off`, or an `EnvFilter` directive).
pub type LogLevelFn = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the admin endpoint reads and controls.
pub struct Admin {
    pub state: Arc<State>,
    pub listeners: Arc<Manager>,
    pub bootstrap: Option<Bootstrap>,
    pub boot_time: SystemTime,
    /// Whether the initial configuration is complete (static: warm; xDS: initialized, see
    /// `xds.rs`). Once xDS initialization is done, later cold clusters do not unready it.
    pub initialized: Arc<dyn Fn() -> bool + Send + Sync>,
    pub set_log_level: Option<LogLevelFn>,
    /// Asks the process to drain and exit.
    pub shutdown: watch::Sender<bool>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=UTF-8")
        .body(Full::new(body.into()))
        .unwrap()
}

fn json(v: &serde_json::Value) -> Resp {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_string_pretty(v).unwrap_or_default(),
        )))
        .unwrap()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

impl Admin {
    /// Serves the admin endpoint on an already-bound socket.
    pub async fn serve(self: Arc<Self>, sock: TcpListener) {
        loop {
            let Ok((stream, _)) = sock.accept().await else {
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn ready(&self) -> bool {
        (self.initialized)() && !*self.shutdown.borrow()
    }

    fn handle(&self, req: Request<Incoming>) -> Resp {
        let q = query(&req);
        let post = req.method() == Method::POST;
        match req.uri().path() {
            "/" | "/help" => text(
                StatusCode::OK,
                "admin commands are:\n  /clusters\n  /config_dump\n  /drain_listeners (POST)\n  /listeners\n  /logging (POST)\n  /quitquitquit (POST)\n  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n",
            ),
            "/config_dump" => {
                let snap = self.state.load();
                let full = config_dump::dump(
                    &snap,
                    self.bootstrap.as_ref(),
                    self.boot_time,
                    q.contains_key("include_eds"),
                );
                match q.get("resource") {
                    Some(r) => match config_dump::select_resource(&full, r) {
                        Some(v) => json(&v),
                        None => text(
                            StatusCode::NOT_FOUND,
                            format!("{r} not found in config dump"),
                        ),
                    },
                    None => json(&full),
                }
            }
            "/clusters" => self.clusters(q.get("format").map(String::as_str) == Some("json")),
            "/listeners" => self.listeners(q.get("format").map(String::as_str) == Some("json")),
            "/stats" => {
                if q.get("format").map(String::as_str) == Some("prometheus") {
                    text(
                        StatusCode::OK,
                        registry().render_prometheus_with(&**self.state.load()),
                    )
                } else {
                    text(
                        StatusCode::OK,
                        registry().render_text_with(
                            q.get("filter").map(String::as_str),
                            &**self.state.load(),
                        ),
                    )
                }
            }
            "/stats/prometheus" => text(
                StatusCode::OK,
                registry().render_prometheus_with(&**self.state.load()),
            ),
            "/ready" => {
                if self.ready() {
                    text(StatusCode::OK, "LIVE\n")
                } else if *self.shutdown.borrow() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
                }
            }
            "/server_info" => {
                let state = if *self.shutdown.borrow() {
                    "DRAINING"
                } else if self.ready() {
                    "LIVE"
                } else {
                    "PRE_INITIALIZING"
                };
                let uptime = self.boot_time.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                json(&serde_json::json!({
                    "version": format!("sluice/{}", env!("CARGO_PKG_VERSION")),
                    "state": state,
                    "uptime_current_epoch": format!("{uptime}s"),
                    "uptime_all_epochs": format!("{uptime}s"),
                    "node": self.bootstrap.as_ref().and_then(|b| b.node.as_ref()).map(crate::config::proto::to_json),
                }))
            }
            "/logging" if post => {
                let Some(level) = q.get("level") else {
                    return text(StatusCode::BAD_REQUEST, "usage: /logging?level=<level>\n");
                };
                match &self.set_log_level {
                    Some(f) => match f(level) {
                        Ok(()) => text(StatusCode::OK, format!("active loggers:\n  all: {level}\n")),
                        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                    None => text(StatusCode::NOT_IMPLEMENTED, "log level is fixed\n"),
                }
            }
            "/drain_listeners" if post => {
                self.listeners.drain();
                text(StatusCode::OK, "OK\n")
            }
            "/quitquitquit" if post => {
                let _ = self.shutdown.send(true);
                text(StatusCode::OK, "OK\n")
            }
            "/logging" | "/drain_listeners" | "/quitquitquit" => {
                text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n")
            }
            _ => text(StatusCode::NOT_FOUND, "invalid path; see /help\n"),
        }
    }

    fn clusters(&self, as_json: bool) -> Resp {
        let snap = self.state.load();
        if as_json {
            let statuses: Vec<_> = snap
                .clusters
                .values()
                .map(|(c, _)| {
                    let set = c.endpoints.load();
                    serde_json::json!({
                        "name": c.cfg.name,
                        "host_statuses": set.hosts.iter().map(|h| serde_json::json!({
                            "address": {"socket_address": {"address": h.addr.ip().to_string(), "port_value": h.addr.port()}},
                            "health_status": {"eds_health_status": if h.healthy {"HEALTHY"} else {"UNHEALTHY"}},
                            "weight": h.weight,
                            "locality": &*h.locality,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            return json(&serde_json::json!({ "cluster_statuses": statuses }));
        }
        let mut out = String::new();
        for (c, _) in snap.clusters.values() {
            let n = &c.cfg.name;
            out.push_str(&format!("{n}::observability_name::{n}\n"));
            for h in &c.endpoints.load().hosts {
                let a = h.addr;
                let health = match (h.healthy, h.outlier.is_ejected()) {
                    (true, false) => "healthy",
                    (false, false) => "/failed_eds_health",
                    (true, true) => "/failed_outlier_check",
                    (false, true) => "/failed_outlier_check/failed_eds_health",
                };
                out.push_str(&format!(
                    "{n}::{a}::rq_active::{}\n{n}::{a}::idle_connections::{}\n{n}::{a}::weight::{}\n{n}::{a}::health_flags::{health}\n{n}::{a}::region::{}\n",
                    h.active.load(std::sync::atomic::Ordering::Relaxed),
                    h.pool.idle_count(),
                    h.weight,
                    h.locality,
                ));
            }
        }
        text(StatusCode::OK, out)
    }

    fn listeners(&self, as_json: bool) -> Resp {
        let snap = self.state.load();
        if as_json {
            let v: Vec<_> = snap
                .listeners
                .values()
                .map(|(l, _)| {
                    let addr = self.listeners.bound_address(&l.name).or(l.address);
                    serde_json::json!({
                        "name": l.name,
                        "local_address": addr.map(|a| serde_json::json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})),
                    })
                })
                .collect();
            return json(&serde_json::json!({ "listener_statuses": v }));
        }
        let mut out = String::new();
        for (l, _) in snap.listeners.values() {
            let addr = self.listeners.bound_address(&l.name).or(l.address);
            out.push_str(&format!(
                "{}::{}\n",
                l.name,
                addr.map(|a| a.to_string()).unwrap_or_default()
            ));
        }
        text(StatusCode::OK, out)
    }
}

/// Binds the admin address (refusing nothing: the caller decides loopback-only policy).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::listener::bind(addr)
}
