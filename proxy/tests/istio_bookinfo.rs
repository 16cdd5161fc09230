//! End-to-end: Istio's bookinfo app and its traffic-management task samples, translated by
//! `sluice::istio` and served by an in-process Sluice. Every bookinfo service version is a local
//! test server on 127.0.0.1; the Kubernetes Services come unmodified from the shared samples
//! and the Endpoints/Pods written here point at the test servers (no address from the data is
//! ever contacted). Sidecar listeners are translated in Istio's NONE interception mode (bound
//! `127.0.0.1_9080`) and rebound to port 0 for the test, like the gateway's `0.0.0.0_8080`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice::config::proto;
use sluice::istio::{self, Interception, Loaded, Node, Role};
use support::{upstream, Behaviour, H1};

const VERSIONS: &[(&str, &[&str])] = &[
    ("productpage", &["v1"]),
    ("details", &["v1", "v2"]),
    ("ratings", &["v1", "v2"]),
    ("reviews", &["v1", "v2", "v3"]),
];

fn samples() -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/istio-samples");
    assert!(p.is_dir(), "bookinfo samples missing at {}", p.display());
    p
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Starts one test server per service version and returns Endpoints + Pods YAML for them.
async fn workloads() -> String {
    let mut yaml = String::new();
    for (svc, versions) in VERSIONS {
        let mut subsets = String::new();
        for v in *versions {
            let u = upstream(leak(format!("{svc}-{v}")), Behaviour::Echo).await;
            subsets.push_str(&format!(
                "- addresses: [{{ip: 127.0.0.1, targetRef: {{kind: Pod, name: {svc}-{v}}}}}]\n  ports: [{{name: http, port: {}}}]\n",
                u.addr.port()
            ));
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {svc}-{v}, namespace: default, labels: {{app: {svc}, version: {v}}}}}\n"
            ));
        }
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {svc}, namespace: default}}\nsubsets:\n{subsets}"
        ));
    }
    yaml
}

async fn config(files: &[&str]) -> Loaded {
    config_with(files, "").await
}

/// The samples in `files`, then `extra` (inline YAML).
async fn config_with(files: &[&str], extra: &str) -> Loaded {
    let mut cfg = Loaded::default();
    for f in ["bookinfo.yaml", "destination-rule-all.yaml"]
        .iter()
        .chain(files)
    {
        let p = samples().join(f);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        istio::load::load_str(f, &text, &mut cfg);
    }
    istio::load::load_str("test-workloads.yaml", &workloads().await, &mut cfg);
    istio::load::load_str("test-extra.yaml", extra, &mut cfg);
    let errors: Vec<_> = cfg
        .messages
        .iter()
        .filter(|m| m.level == istio::Level::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    cfg
}

/// Sluice running the translation for `node`; returns the app and the bound address of `listener`.
async fn run(cfg: &Loaded, node: &Node, listener: &str) -> (sluice::app::App, SocketAddr) {
    let mut r = istio::translate(cfg, node);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    // Rebind the listener on 127.0.0.1:0 (tests never take fixed ports).
    for l in &mut r.listeners {
        let mut v = proto::to_json(l);
        v["address"]["socket_address"]["address"] = "127.0.0.1".into();
        v["address"]["socket_address"]["port_value"] = 0.into();
        *l = proto::decode_json_value(v).unwrap();
    }
    let app = sluice::app::App::start(sluice::app::Options {
        bootstrap: None,
        admin_address: "127.0.0.1:0".parse().unwrap(),
        drain_time: Duration::from_secs(1),
        set_log_level: None,
    })
    .await
    .unwrap();
    let rej = istio::run::apply(&app.state, &r, &Default::default(), "1");
    assert!(rej.is_empty(), "{rej:?}");
    let addr = app
        .listener_address(listener)
        .unwrap_or_else(|| panic!("listener {listener} not bound"));
    (app, addr)
}

async fn sidecar(files: &[&str]) -> (sluice::app::App, H1) {
    sidecar_with(files, "").await
}

/// A sidecar of namespace `default` on the samples in `files` plus `extra` (inline YAML).
async fn sidecar_with(files: &[&str], extra: &str) -> (sluice::app::App, H1) {
    let cfg = config_with(files, extra).await;
    let node = Node {
        interception: Interception::None,
        ..Node::sidecar("default")
    };
    let (app, addr) = run(&cfg, &node, "127.0.0.1_9080").await;
    (app, H1::connect(addr).await)
}

async fn get(c: &mut H1, host: &str, path: &str, user: Option<&str>) -> support::Got {
    let mut b = http::Request::get(path).header("host", host);
    if let Some(u) = user {
        b = b.header("end-user", u);
    }
    c.send(b.body(Default::default()).unwrap()).await
}

async fn upstream_of(c: &mut H1, host: &str, user: Option<&str>) -> String {
    let g = get(c, host, "/", user).await;
    assert_eq!(g.status, 200, "{host}: {}", g.body);
    g.field("name").unwrap().to_string()
}

async fn split(c: &mut H1, n: usize) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(upstream_of(c, "reviews:9080", None).await)
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| (k, v as f64 * 100.0 / n as f64))
        .collect()
}

fn within(got: &BTreeMap<String, f64>, want: &[(&str, f64)]) {
    for (name, pct) in want {
        let g = got.get(*name).copied().unwrap_or(0.0);
        assert!(
            (g - pct).abs() <= 3.0,
            "{name}: {g:.1}% (want {pct}% ±3): {got:?}"
        );
    }
    assert_eq!(got.len(), want.len(), "unexpected versions: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_v1() {
    let (_app, mut c) = sidecar(&["virtual-service-all-v1.yaml"]).await;
    for _ in 0..50 {
        for (svc, _) in VERSIONS {
            for host in [
                svc.to_string(),
                format!("{svc}:9080"),
                format!("{svc}.default.svc.cluster.local:9080"),
            ] {
                assert_eq!(upstream_of(&mut c, &host, None).await, format!("{svc}-v1"));
            }
        }
        assert_eq!(
            upstream_of(&mut c, "reviews", Some("jason")).await,
            "reviews-v1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_virtual_services_all_versions_serve() {
    let (_app, mut c) = sidecar(&[]).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(upstream_of(&mut c, "reviews:9080", None).await);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_test_v2_sends_jason_to_v2() {
    let (_app, mut c) = sidecar(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
    ])
    .await;
    for _ in 0..50 {
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", Some("jason")).await,
            "reviews-v2"
        );
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", None).await,
            "reviews-v1"
        );
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", Some("alice")).await,
            "reviews-v1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_splits_over_5000_requests() {
    for (file, want) in [
        (
            "virtual-service-reviews-80-20.yaml",
            [("reviews-v1", 80.0), ("reviews-v2", 20.0)],
        ),
        (
            "virtual-service-reviews-90-10.yaml",
            [("reviews-v1", 90.0), ("reviews-v2", 10.0)],
        ),
        (
            "virtual-service-reviews-50-v3.yaml",
            [("reviews-v1", 50.0), ("reviews-v3", 50.0)],
        ),
    ] {
        let (_app, mut c) = sidecar(&[file]).await;
        let got = split(&mut c, 5000).await;
        within(&got, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_test_delay_delays_jason_7s() {
    let (_app, mut c) = sidecar(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-ratings-test-delay.yaml",
    ])
    .await;
    let t = Instant::now();
    assert_eq!(
        upstream_of(&mut c, "ratings:9080", None).await,
        "ratings-v1"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(
        upstream_of(&mut c, "ratings:9080", Some("jason")).await,
        "ratings-v1"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(9),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_test_abort_answers_jason_500() {
    let (_app, mut c) = sidecar(&[
        "virtual-service-all-v1.yaml",
        "virtual-service-ratings-test-abort.yaml",
    ])
    .await;
    for _ in 0..20 {
        let g = get(&mut c, "ratings:9080", "/ratings/0", Some("jason")).await;
        assert_eq!(g.status, 500, "{}", g.body);
        assert!(g.field("name").is_none(), "reached upstream: {}", g.body);
        assert_eq!(
            upstream_of(&mut c, "ratings:9080", None).await,
            "ratings-v1"
        );
    }
}

/// Istio fields beyond the samples: a redirect's `prefixRewrite`, a gRPC abort
/// (`grpcStatus`), retries with `backoff` and `retryIgnorePreviousHosts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_redirects_and_grpc_aborts() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /old-ratings}}]
    redirect: {prefixRewrite: /ratings, redirectCode: 308}
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: ratings, subset: v1}}]
  - retries: {attempts: 2, backoff: 40ms, retryIgnorePreviousHosts: false}
    route: [{destination: {host: ratings, subset: v2}}]
"#;
    let (_app, mut c) = sidecar_with(&[], vs).await;
    let g = get(&mut c, "ratings:9080", "/old-ratings/7?x=1", None).await;
    assert_eq!(g.status, 308, "{}", g.body);
    assert_eq!(
        g.headers["location"], "http://ratings:9080/ratings/7?x=1",
        "the matched prefix is replaced"
    );
    let g = get(&mut c, "ratings:9080", "/grpc.Service/Call", None).await;
    assert_eq!(g.status, 200, "gRPC errors ride on 200: {}", g.body);
    assert_eq!(g.headers["grpc-status"], "14", "UNAVAILABLE");
    assert!(g.field("name").is_none(), "reached upstream: {}", g.body);
    assert_eq!(
        upstream_of(&mut c, "ratings:9080", None).await,
        "ratings-v2"
    );
}

/// MeshConfig `outboundTrafficPolicy: REGISTRY_ONLY`: hosts the mesh knows still route, any
/// other host gets istiod's `block_all` 502 instead of being passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_refuses_unknown_hosts() {
    let mesh = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"#;
    let (_app, mut c) = sidecar_with(&["virtual-service-all-v1.yaml"], mesh).await;
    assert_eq!(
        upstream_of(&mut c, "reviews:9080", None).await,
        "reviews-v1"
    );
    for host in ["unknown.example.com", "10.9.9.9:9080", "reviews.other:9080"] {
        let g = get(&mut c, host, "/", None).await;
        assert_eq!(g.status, 502, "{host}: {}", g.body);
        assert!(g.field("name").is_none(), "{host} reached an upstream");
    }
    assert_eq!(
        upstream_of(&mut c, "ratings:9080", None).await,
        "ratings-v1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_exposes_only_documented_paths() {
    let cfg = config(&["bookinfo-gateway.yaml"]).await;
    let mut node = Node {
        role: Role::Router,
        namespace: "istio-system".into(),
        ..Default::default()
    };
    node.labels.insert("istio".into(), "ingressgateway".into());
    let (_app, addr) = run(&cfg, &node, "0.0.0.0_8080").await;
    let mut c = H1::connect(addr).await;
    for path in [
        "/productpage",
        "/static/css/x.css",
        "/static",
        "/login",
        "/logout",
        "/api/v1/products",
        "/api/v1/products/0/reviews",
    ] {
        let g = c.get("bookinfo.example.com", path).await;
        assert_eq!(g.status, 200, "{path}: {}", g.body);
        assert_eq!(g.field("name"), Some("productpage-v1"), "{path}");
        assert_eq!(g.field("path"), Some(path));
    }
    for path in [
        "/",
        "/productpage/x",
        "/login/x",
        "/logout2",
        "/admin",
        "/api/v1",
        "/reviews/0",
    ] {
        let g = c.get("bookinfo.example.com", path).await;
        assert_eq!(g.status, 404, "{path}: {}", g.body);
    }
}

const CORS_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /strict}}]
    corsPolicy:
      allowOrigins: [{exact: "https://bookinfo.example"}]
      allowMethods: [GET]
      unmatchedPreflights: IGNORE
    route: [{destination: {host: reviews, subset: v1}}]
  - corsPolicy:
      allowOrigins: [{exact: "https://bookinfo.example"}, {regex: "https://[a-z]+\\.shop\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-upstream]
      maxAge: 1h
      allowCredentials: true
    route: [{destination: {host: reviews, subset: v2}}]
"#;

/// VirtualService `corsPolicy` through a live sidecar: preflights answered by the proxy, actual
/// requests get the CORS response headers, other origins get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_policy_is_enforced() {
    let mut cfg = config(&[]).await;
    istio::load::load_str("cors.yaml", CORS_VS, &mut cfg);
    assert!(
        cfg.messages.iter().all(|m| m.level != istio::Level::Error),
        "{:?}",
        cfg.messages
    );
    let node = Node {
        interception: Interception::None,
        ..Node::sidecar("default")
    };
    let (_app, addr) = run(&cfg, &node, "127.0.0.1_9080").await;
    let mut c = H1::connect(addr).await;
    let send = |method: &str, path: &str, h: &[(&str, &str)]| {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "reviews:9080");
        for (k, v) in h {
            b = b.header(*k, *v);
        }
        b.body(Default::default()).unwrap()
    };
    let r = c
        .send(send(
            "OPTIONS",
            "/reviews/1",
            &[
                ("origin", "https://web.shop.example"),
                ("access-control-request-method", "POST"),
            ],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "answered by the sidecar: {}", r.body);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://web.shop.example"
    );
    assert_eq!(r.headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(r.headers["access-control-allow-headers"], "x-token");
    assert_eq!(r.headers["access-control-max-age"], "3600");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");

    let r = c
        .send(send(
            "GET",
            "/reviews/1",
            &[("origin", "https://bookinfo.example")],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.field("name"), Some("reviews-v2"));
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://bookinfo.example"
    );
    assert_eq!(r.headers["access-control-expose-headers"], "x-upstream");

    let r = c
        .send(send(
            "GET",
            "/reviews/1",
            &[("origin", "https://evil.example")],
        ))
        .await;
    assert_eq!(r.field("name"), Some("reviews-v2"));
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // FORWARD (the default): a preflight from another origin reaches the app.
    let evil = [
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
    ];
    let r = c.send(send("OPTIONS", "/reviews/1", &evil)).await;
    assert_eq!(r.field("method"), Some("OPTIONS"));
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // IGNORE: answered by the sidecar without CORS permission.
    let r = c.send(send("OPTIONS", "/strict", &evil)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

/// `sourceLabels` and `sourceNamespace` are decided per proxy when its configuration is
/// generated: two sidecars with different labels/namespaces route the same request differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_labels_and_namespace_route_per_proxy() {
    let mut cfg = config(&[]).await;
    istio::load::load_str(
        "source.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{sourceNamespace: batch}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
        &mut cfg,
    );
    assert!(
        cfg.messages.iter().all(|m| m.level != istio::Level::Error),
        "{:?}",
        cfg.messages
    );
    let mut productpage = Node {
        interception: Interception::None,
        ..Node::sidecar("default")
    };
    productpage
        .labels
        .insert("app".into(), "productpage".into());
    let other = Node {
        interception: Interception::None,
        ..Node::sidecar("default")
    };
    let batch = Node {
        interception: Interception::None,
        ..Node::sidecar("batch")
    };
    for (node, want) in [
        (productpage, "reviews-v2"),
        (other, "reviews-v1"),
        (batch, "reviews-v3"),
    ] {
        let (_app, addr) = run(&cfg, &node, "127.0.0.1_9080").await;
        let mut c = H1::connect(addr).await;
        for _ in 0..20 {
            assert_eq!(
                upstream_of(&mut c, "reviews.default.svc.cluster.local:9080", None).await,
                want,
                "{node:?}"
            );
        }
    }
}
