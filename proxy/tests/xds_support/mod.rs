//! xDS test support: an in-process Sluice fed by the scripted fake ADS server, resource
//! builders (YAML → typed protos), and a steady HTTP load generator that counts failures.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;
use sluice::config::proto::{decode, Format};
use xds_client::testing::{any, FakeAds};
use xds_client::{type_url, BackoffConfig, NodeSettings};

pub const CDS: &str = type_url::CLUSTER;
pub const LDS: &str = type_url::LISTENER;
pub const RDS: &str = type_url::ROUTE;
pub const EDS: &str = type_url::ENDPOINT;

/// A proxy on a fake control plane.
pub struct Env {
    pub ads: FakeAds,
    pub app: sluice::app::App,
    pub xds: sluice::xds::Xds,
}

pub async fn start(delta: bool, initial_fetch_timeout: Duration) -> Env {
    let ads = FakeAds::start().await;
    let app = sluice::app::App::start(sluice::app::Options {
        bootstrap: None,
        admin_address: "127.0.0.1:0".parse().unwrap(),
        drain_time: Duration::from_secs(2),
        set_log_level: None,
    })
    .await
    .expect("sluice starts");
    let node = NodeSettings {
        ip: "10.0.0.1".into(),
        pod_name: "test-pod".into(),
        namespace: "default".into(),
        ..Default::default()
    }
    .build();
    let mut o = sluice::xds::XdsOptions::new(ads.uri(), node);
    o.delta = delta;
    o.initial_fetch_timeout = initial_fetch_timeout;
    o.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    let xds = app.start_xds(o);
    Env { ads, app, xds }
}

pub fn yaml<T: prost::Message + prost::Name + Default>(y: &str) -> T {
    decode(y, Format::Yaml).unwrap_or_else(|e| panic!("test resource does not decode: {e}\n{y}"))
}

/// An EDS cluster.
pub fn eds_cluster(name: &str) -> Cluster {
    yaml(&format!(
        "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{eds_config: {{ads: {{}}}}}}\n"
    ))
}

/// A STATIC cluster with one endpoint.
pub fn static_cluster(name: &str, addr: SocketAddr) -> Cluster {
    yaml(&format!(
        "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
        addr.ip(),
        addr.port()
    ))
}

pub fn cla(name: &str, addrs: &[SocketAddr]) -> ClusterLoadAssignment {
    let mut y = format!("cluster_name: {name}\nendpoints:\n- lb_endpoints:\n");
    for a in addrs {
        y.push_str(&format!(
            "  - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
            a.ip(),
            a.port()
        ));
    }
    if addrs.is_empty() {
        y = format!("cluster_name: {name}\n");
    }
    yaml(&y)
}

/// An HTTP listener on 127.0.0.1:`port` (0: any) whose routes come from RDS `route`.
pub fn rds_listener(name: &str, port: u16, route: &str) -> Listener {
    yaml(&format!(
        r#"name: {name}
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      rds: {{route_config_name: {route}, config_source: {{ads: {{}}}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    ))
}

/// A route configuration sending everything to `cluster`, tagging responses with
/// `x-route-version: <tag>`.
pub fn route_to(name: &str, cluster: &str, tag: &str) -> RouteConfiguration {
    yaml(&format!(
        r#"name: {name}
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: {cluster}}}
response_headers_to_add:
- header: {{key: x-route-version, value: {tag}}}
"#
    ))
}

pub fn anys<T: prost::Name + prost::Message>(items: impl IntoIterator<Item = T>) -> Vec<Any> {
    items.into_iter().map(any).collect()
}

/// Responds (SotW) and returns the client's answer to that response (ACK or NACK).
pub async fn respond(
    ads: &FakeAds,
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) -> DiscoveryRequest {
    ads.respond(type_url, version, nonce, resources);
    loop {
        let r = ads.next_sotw(type_url).await;
        if r.response_nonce == nonce {
            return r;
        }
    }
}

/// Waits (up to 5 s) for `f`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Plain HTTP/1.1 GET on a fresh keep-alive client; `Err` on any transport failure.
pub struct Client {
    inner: Option<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>>,
    addr: SocketAddr,
}

/// One response: status, `x-route-version`, upstream name (first body field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub version: String,
    pub upstream: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { inner: None, addr }
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, String> {
        use http_body_util::BodyExt;
        if self.inner.as_ref().is_none_or(|s| s.is_closed()) {
            let s = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.inner = Some(tx);
        }
        let tx = self.inner.as_mut().unwrap();
        tx.ready().await.map_err(|e| format!("ready: {e}"))?;
        let req = http::Request::get(path)
            .header("host", "test")
            .body(http_body_util::Empty::new())
            .unwrap();
        let r = match tx.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.inner = None;
                return Err(format!("send: {e}"));
            }
        };
        let status = r.status().as_u16();
        let version = r
            .headers()
            .get("x-route-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        let upstream = body
            .split_whitespace()
            .next()
            .and_then(|w| w.strip_prefix("name="))
            .unwrap_or("")
            .to_string();
        Ok(Answer {
            status,
            version,
            upstream,
        })
    }
}

/// `workers` clients sending requests back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub failures: Arc<Mutex<Vec<String>>>,
    pub answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures, answers) =
                    (stop.clone(), ok.clone(), failures.clone(), answers.clone());
                tokio::spawn(async move {
                    let mut c = Client::new(addr);
                    while !stop.load(Ordering::Relaxed) {
                        match c.get("/load").await {
                            Ok(a) if a.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                answers.lock().unwrap().push(a);
                            }
                            Ok(a) => failures.lock().unwrap().push(format!("{a:?}")),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            answers,
            tasks,
        }
    }

    /// Stops and returns (successes, failures).
    pub async fn finish(self) -> (usize, Vec<String>, Vec<Answer>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
            self.answers.lock().unwrap().clone(),
        )
    }
}

/// CDS (one EDS cluster), LDS (one RDS listener), then EDS and RDS; checks every ACK.
pub async fn bring_up(env: &Env, cluster_addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let ads = &env.ads;
    let first = ads.next_sotw(CDS).await;
    assert!(first
        .node
        .as_ref()
        .unwrap()
        .id
        .starts_with("sidecar~10.0.0.1~test-pod.default"));
    assert_eq!(
        (first.version_info.as_str(), first.response_nonce.as_str()),
        ("", "")
    );
    let ack = respond(ads, CDS, "c1", "n1", anys([eds_cluster("a")])).await;
    assert_eq!(ack.version_info, "c1");
    assert!(ack.error_detail.is_none());
    // The accepted cluster is asked for by name.
    let eds = ads.next_sotw(EDS).await;
    assert_eq!(eds.resource_names, ["a"]);

    let ack = respond(ads, LDS, "l1", "n2", anys([rds_listener("web", 0, "r1")])).await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("l1", None));
    let rds = ads.next_sotw(RDS).await;
    assert_eq!(rds.resource_names, ["r1"]);
    assert!(!env.xds.is_ready(), "ready before EDS and RDS arrived");

    let ack = respond(ads, EDS, "e1", "n3", anys([cla("a", &[cluster_addr])])).await;
    assert_eq!(ack.version_info, "e1");
    assert!(!env.xds.is_ready(), "ready before RDS arrived");
    let ack = respond(ads, RDS, "r1v1", "n4", anys([route_to("r1", "a", "v1")])).await;
    assert_eq!(ack.version_info, "r1v1");
    eventually("ready", || env.xds.is_ready()).await;
    env.app.listener_address("web").expect("listener bound")
}
