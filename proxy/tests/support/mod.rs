//! Test support: upstream servers (HTTP/1.1 + h2c, TCP echo), an in-process Sluice started from
//! a bootstrap YAML, and small HTTP clients. Everything binds 127.0.0.1 port 0. [`h2raw`] holds
//! raw HTTP/2 (frames and HPACK by hand) for the tests that speak it without a library.
#![allow(dead_code)]

pub mod h2raw;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A test upstream: answers every request with a text body describing what it received:
/// `name=<name> method=<m> path=<p> host=<h> version=<v>` and one `h:<name>=<value>` line per
/// header. Counts requests and accepted connections.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 with the description.
    Echo,
    /// Always this status.
    Status(u16),
    /// Close the connection after each response (without `connection: close`), the way an
    /// upstream with a short keep-alive timeout does.
    CloseAfterResponse,
    /// 200 with the description after waiting this many milliseconds.
    Delay(u64),
}

pub async fn upstream(name: &'static str, behaviour: Behaviour) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (rq, cx) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            cx.fetch_add(1, Ordering::SeqCst);
            let rq = rq.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let rq = rq.clone();
                    async move {
                        rq.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(answer(name, behaviour, req).await)
                    }
                });
                let io = TokioIo::new(s);
                if behaviour == Behaviour::CloseAfterResponse {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(io, svc)
                        .await;
                }
            });
        }
    });
    Upstream {
        addr,
        requests,
        connections,
    }
}

async fn answer(
    name: &str,
    behaviour: Behaviour,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // WebSocket-style upgrade: 101, then echo bytes.
    if req.headers().get("upgrade").is_some() {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let mut io = TokioIo::new(u);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if let Behaviour::Delay(ms) = behaviour {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut desc = format!(
        "name={name} method={} path={} host={} version={:?}\n",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or(""),
        req.version()
    );
    for (k, v) in req.headers() {
        desc.push_str(&format!("h:{k}={}\n", v.to_str().unwrap_or("")));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    desc.push_str(&format!("body-len={}\n", body.len()));
    let status = match behaviour {
        Behaviour::Status(s) => s,
        _ => 200,
    };
    Response::builder()
        .status(status)
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(desc)))
        .unwrap()
}

/// A TCP echo server that half-closes after the client does.
pub async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Starts Sluice in-process from bootstrap YAML. `{name}` placeholders must already be filled.
pub async fn sluice(bootstrap_yaml: &str) -> sluice::app::App {
    let b = sluice::config::proto::decode(bootstrap_yaml, sluice::config::proto::Format::Yaml)
        .expect("bootstrap decodes");
    sluice::app::App::start(sluice::app::Options {
        bootstrap: Some(b),
        admin_address: "127.0.0.1:0".parse().unwrap(),
        drain_time: Duration::from_secs(2),
        set_log_level: None,
    })
    .await
    .expect("sluice starts")
}

/// A static cluster YAML block (list item) with the given endpoints.
pub fn cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let mut eps = String::new();
    for e in endpoints {
        eps.push_str(&format!(
            "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
            e.ip(),
            e.port()
        ));
    }
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{eps}"
    )
}

/// An HTTP listener on 127.0.0.1:0 with an inline route config (`virtual_hosts` YAML, indented
/// for its place) and optional extra HTTP filters before the router.
pub fn http_listener(name: &str, virtual_hosts: &str, filters: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          upgrade_configs: [{{upgrade_type: websocket}}]
          route_config:
            name: {name}
            virtual_hosts:
{virtual_hosts}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A TCP proxy listener on 127.0.0.1:0 to one cluster, or weighted clusters `(name, weight)`.
pub fn tcp_listener(name: &str, clusters: &[(&str, u32)]) -> String {
    let spec = if clusters.len() == 1 {
        format!("cluster: {}", clusters[0].0)
    } else {
        let items: Vec<String> = clusters
            .iter()
            .map(|(c, w)| format!("{{name: {c}, weight: {w}}}"))
            .collect();
        format!("weighted_clusters: {{clusters: [{}]}}", items.join(", "))
    };
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          {spec}
"#
    )
}

/// A response: status, headers, body text.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    /// The upstream's `h:<name>=` line value.
    pub fn seen_header(&self, name: &str) -> Option<&str> {
        let prefix = format!("h:{name}=");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }
    pub fn field(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.body
            .lines()
            .next()?
            .split(' ')
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    }
}

/// One HTTP/1.1 keep-alive client connection.
pub struct H1 {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let s = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1 { tx }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Got {
        self.tx.ready().await.unwrap();
        let r = self.tx.send_request(req).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Got {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

/// One HTTP/2 (h2c) client connection.
pub struct H2 {
    tx: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let s = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 { tx }
    }

    /// True once the connection is gone (closed by the server, e.g. after GOAWAY).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub async fn get(&mut self, authority: &str, path: &str) -> Got {
        let req = Request::get(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req).await
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Got {
        self.tx.ready().await.unwrap();
        let r = self.tx.send_request(req).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// GET on the admin endpoint.
pub async fn admin_get(app: &sluice::app::App, path: &str) -> Got {
    H1::connect(app.admin_address)
        .await
        .get("admin", path)
        .await
}

/// One catch-all virtual host routing everything to `cluster`.
pub fn all_to(cluster: &str) -> String {
    format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: /}}\n                route: {{cluster: {cluster}}}\n"
    )
}

/// A stat's value from the admin `/stats` text.
pub async fn stat(app: &sluice::app::App, name: &str) -> Option<i64> {
    let s = admin_get(app, &format!("/stats?filter={name}")).await;
    s.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// An HTTP listener `name` (also its stat prefix) with `vhosts` and extra HCM fields (each
/// line indented by 10 spaces).
pub fn listener_with(name: &str, vhosts: &str, hcm_extra: &str) -> String {
    http_listener(name, vhosts, "").replace(
        &format!("          stat_prefix: {name}\n"),
        &format!("          stat_prefix: {name}\n{hcm_extra}"),
    )
}

/// Waits until the file has `n` lines (the writer thread flushes shortly after each line).
pub async fn log_lines(p: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(p) {
            let l: Vec<String> = s.lines().map(str::to_string).collect();
            if l.len() >= n {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} has fewer than {n} lines: {:?}",
        p.display(),
        std::fs::read_to_string(p)
    );
}
