//! The admin endpoint (127.0.0.1:15000 by default), with Envoy's paths and output formats:
//! see [`HELP`] for the list.

pub mod config_dump;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
use crate::stats::{registry, Select};

/// Sets the log level (a level or directives, as [`log_directives`] reads them).
pub type LogLevelFn = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the admin endpoint reads and controls.
pub struct Admin {
    pub state: Arc<State>,
    pub listeners: Arc<Manager>,
    /// The bootstrap as loaded, protobuf-encoded: a decoded `Bootstrap` with static resources
    /// takes many times its encoding (12 MiB for 1,000 services), and only `/config_dump` and
    /// `/server_info` read it, decoding it on demand.
    pub bootstrap: Option<Box<[u8]>>,
    pub boot_time: SystemTime,
    /// Whether the initial configuration is complete (static: warm; xDS: initialized, see
    /// `xds.rs`). Once xDS initialization is done, later cold clusters do not unready it.
    pub initialized: Arc<dyn Fn() -> bool + Send + Sync>,
    pub set_log_level: Option<LogLevelFn>,
    /// Asks the process to drain and exit.
    pub shutdown: watch::Sender<bool>,
    /// Set by POST `/healthcheck/fail`, cleared by `/healthcheck/ok`: as in Envoy, the server
    /// then reports `DRAINING` (`/ready` answers 503) while it keeps serving traffic.
    pub health_check_failed: AtomicBool,
}

/// Every admin path, as `/help` lists it.
pub const HELP: &[(&str, &str)] = &[
    ("/", "this list"),
    (
        "/certs",
        "certificates in use (none: Sluice has no TLS yet)",
    ),
    ("/clusters", "upstream clusters and hosts (?format=json)"),
    (
        "/config_dump",
        "Envoy's ConfigDump JSON (?resource=, ?include_eds)",
    ),
    (
        "/drain_listeners",
        "(POST) stop accepting on every listener",
    ),
    (
        "/healthcheck/fail",
        "(POST) report DRAINING: /ready answers 503",
    ),
    ("/healthcheck/ok", "(POST) undo /healthcheck/fail"),
    ("/help", "this list"),
    (
        "/hot_restart_version",
        "hot restart compatibility (disabled)",
    ),
    (
        "/listeners",
        "listeners and their bound addresses (?format=json)",
    ),
    (
        "/logging",
        "active log levels; POST ?level=LEVEL changes them",
    ),
    ("/memory", "heap and resident memory (JSON)"),
    ("/quitquitquit", "(POST) drain and exit"),
    ("/ready", "LIVE (200) or PRE_INITIALIZING/DRAINING (503)"),
    ("/reset_counters", "(POST) set every counter to zero"),
    ("/runtime", "runtime values (none)"),
    ("/server_info", "version, state, uptime, node"),
    (
        "/stats",
        "stats as text (?format=json|prometheus, ?filter=REGEX, ?usedonly)",
    ),
    (
        "/stats/prometheus",
        "stats in Prometheus exposition format (?filter=REGEX, ?usedonly)",
    ),
];

/// The log filter last applied (process-wide, as the subscriber is), for GET `/logging`.
static LOG_LEVEL: Mutex<Option<String>> = Mutex::new(None);

/// Records the log filter the process started with (`--log-level`).
pub fn note_log_level(level: &str) {
    *LOG_LEVEL.lock().unwrap() = Some(level.to_string());
}

/// Envoy's level names, and the `tracing` level each is.
const LEVELS: [(&str, &str); 8] = [
    ("trace", "trace"),
    ("debug", "debug"),
    ("info", "info"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("error", "error"),
    ("critical", "error"),
    ("off", "off"),
];

/// A `tracing` filter (directive syntax) from a log level as Envoy and Istio write it
/// (`warning` is what pilot-agent passes as `--log-level`; `critical`), or from directives
/// `TARGET=LEVEL,...` whose levels are written either way. A bare word that names no level is
/// refused: `tracing` would take it for a target to trace and silence everything else, so a
/// typo would quietly turn the logs off.
pub fn log_directives(spec: &str) -> Result<String, String> {
    let level = |l: &str| {
        LEVELS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(l.trim()))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                format!(
                    "unknown log level {l:?}: use trace, debug, info, warning, error, critical or off, or TARGET=LEVEL,..."
                )
            })
    };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('[') {
            out.push(part.to_string()); // a span filter: passed on as written
            continue;
        }
        match part.rsplit_once('=') {
            Some((target, l)) => out.push(format!("{}={}", target.trim(), level(l)?)),
            None => out.push(level(part)?.to_string()),
        }
    }
    if out.is_empty() {
        return Err("no log level given".into());
    }
    Ok(out.join(","))
}

/// Envoy's `active loggers:` listing of a filter directive: a bare level applies to `all`.
fn active_loggers() -> String {
    let level = LOG_LEVEL
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "info".into());
    let mut out = String::from("active loggers:\n");
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.rsplit_once('=') {
            Some((target, lvl)) => out.push_str(&format!("  {target}: {lvl}\n")),
            None => out.push_str(&format!("  all: {part}\n")),
        }
    }
    out
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
    parse_query(req.uri().query().unwrap_or(""))
}

/// `a=b&c` with percent-decoding (`+` stays `+`, as in Envoy's admin: filters are regexes).
fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (pct_decode(k), pct_decode(v)),
            None => (pct_decode(kv), String::new()),
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/stats`' selection from the query: `filter` (a regex, as Envoy's) and `usedonly`.
fn stats_select(q: &HashMap<String, String>) -> Result<Select, String> {
    let filter = match q.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => {
            Some(regex::Regex::new(f).map_err(|e| format!("Invalid regex: \"{f}\": {e}\n"))?)
        }
        None => None,
    };
    Ok(Select {
        filter,
        used_only: q.contains_key("usedonly"),
        kind: match q.get("type") {
            Some(t) => crate::stats::Kind::parse(t)?,
            None => None,
        },
    })
}

impl Admin {
    /// The bootstrap, decoded from its stored encoding.
    fn bootstrap(&self) -> Option<Bootstrap> {
        self.bootstrap
            .as_deref()
            .map(|b| prost::Message::decode(b).expect("the bootstrap's own encoding decodes"))
    }

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

    fn draining(&self) -> bool {
        *self.shutdown.borrow() || self.health_check_failed.load(Ordering::Relaxed)
    }

    fn ready(&self) -> bool {
        (self.initialized)() && !self.draining()
    }

    /// Envoy's server state: `PRE_INITIALIZING` until the initial configuration is complete
    /// (a drain that starts before then is `DRAINING`), then `LIVE` or `DRAINING`.
    fn server_state(&self) -> &'static str {
        if *self.shutdown.borrow() || ((self.initialized)() && self.draining()) {
            "DRAINING"
        } else if self.ready() {
            "LIVE"
        } else {
            "PRE_INITIALIZING"
        }
    }

    fn handle(&self, req: Request<Incoming>) -> Resp {
        let q = query(&req);
        let post = req.method() == Method::POST;
        match req.uri().path() {
            "/" | "/help" => {
                let mut out = String::from("admin commands are:\n");
                for (path, what) in HELP {
                    out.push_str(&format!("  {path}: {what}\n"));
                }
                text(StatusCode::OK, out)
            }
            "/config_dump" => {
                let snap = self.state.load();
                let full = config_dump::dump(
                    &snap,
                    self.bootstrap().as_ref(),
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
            "/stats" | "/stats/prometheus" => {
                let sel = match stats_select(&q) {
                    Ok(s) => s,
                    Err(e) => return text(StatusCode::BAD_REQUEST, e),
                };
                let snap = self.state.load();
                let format = q.get("format").map(String::as_str);
                if req.uri().path() == "/stats/prometheus" || format == Some("prometheus") {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=UTF-8")
                        .body(Full::new(Bytes::from(
                            registry().render_prometheus_with(&sel, &**snap),
                        )))
                        .unwrap()
                } else if format == Some("json") {
                    json(&registry().render_json_with(&sel, &**snap))
                } else {
                    text(StatusCode::OK, registry().render_text_with(&sel, &**snap))
                }
            }
            "/ready" => {
                let state = self.server_state();
                let status = if state == "LIVE" {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, format!("{state}\n"))
            }
            "/server_info" => {
                let uptime = self.boot_time.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                json(&serde_json::json!({
                    "version": format!("sluice/{}", env!("CARGO_PKG_VERSION")),
                    "state": self.server_state(),
                    "hot_restart_version": "disabled",
                    "uptime_current_epoch": format!("{uptime}s"),
                    "uptime_all_epochs": format!("{uptime}s"),
                    "node": self.bootstrap().and_then(|b| b.node).as_ref().map(crate::config::proto::to_json),
                }))
            }
            "/logging" if post && !q.is_empty() => {
                let Some(level) = q.get("level") else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("usage: /logging?level=<level>\n\n{}", active_loggers()),
                    );
                };
                match &self.set_log_level {
                    Some(f) => match f(level) {
                        Ok(()) => {
                            note_log_level(level);
                            text(StatusCode::OK, active_loggers())
                        }
                        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                    None => text(StatusCode::NOT_IMPLEMENTED, "log level is fixed\n"),
                }
            }
            // GET, or POST without parameters (what `istioctl proxy-config log` sends): the list.
            "/logging" => text(StatusCode::OK, active_loggers()),
            "/drain_listeners" if post => {
                self.listeners.drain();
                text(StatusCode::OK, "OK\n")
            }
            "/quitquitquit" if post => {
                let _ = self.shutdown.send(true);
                text(StatusCode::OK, "OK\n")
            }
            "/reset_counters" if post => {
                registry().reset_counters(&**self.state.load());
                text(StatusCode::OK, "OK\n")
            }
            "/healthcheck/fail" if post => {
                self.health_check_failed.store(true, Ordering::Relaxed);
                text(StatusCode::OK, "OK\n")
            }
            "/healthcheck/ok" if post => {
                self.health_check_failed.store(false, Ordering::Relaxed);
                text(StatusCode::OK, "OK\n")
            }
            "/memory" => {
                // Envoy reports tcmalloc's figures (uint64s, JSON strings); these are glibc's
                // (`mallinfo2`) and the kernel's resident size.
                let m = crate::sys::heap_stats();
                json(&serde_json::json!({
                    "allocated": m.allocated.to_string(),
                    "heap_size": m.heap_size.to_string(),
                    "pageheap_unmapped": "0",
                    "pageheap_free": m.free.to_string(),
                    "total_thread_cache": "0",
                    "total_physical_bytes": m.resident.to_string(),
                }))
            }
            "/certs" => json(&serde_json::json!({ "certificates": [] })),
            "/runtime" => json(&serde_json::json!({ "entries": {}, "layers": [] })),
            "/hot_restart_version" => text(StatusCode::OK, "disabled\n"),
            "/drain_listeners" | "/quitquitquit" | "/reset_counters" | "/healthcheck/fail"
            | "/healthcheck/ok" => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "This endpoint requires POST\n",
            ),
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
                    h.active.get(),
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

#[cfg(test)]
mod log_level_tests {
    use super::log_directives;

    #[test]
    fn envoys_level_names_become_tracing_directives() {
        assert_eq!(log_directives("warning").unwrap(), "warn");
        assert_eq!(log_directives("critical").unwrap(), "error");
        assert_eq!(log_directives("Info").unwrap(), "info");
        assert_eq!(log_directives("off").unwrap(), "off");
        assert_eq!(
            log_directives("info, sluice::http=warning,h2=trace").unwrap(),
            "info,sluice::http=warn,h2=trace"
        );
        // Span filters are passed on as written.
        assert_eq!(
            log_directives("info,sluice[conn{id=1}]=debug").unwrap(),
            "info,sluice[conn{id=1}]=debug"
        );
    }

    #[test]
    fn a_word_that_names_no_level_is_refused() {
        for bad in ["bogus", "warnning", "sluice=loud", "", " , "] {
            assert!(log_directives(bad).is_err(), "{bad:?}");
        }
        let e = log_directives("warnning").unwrap_err();
        assert!(e.contains("\"warnning\"") && e.contains("warning"), "{e}");
    }
}
