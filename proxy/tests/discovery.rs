//! `sluice discovery`: the ADS server serves each proxy the translation for its node identity,
//! over state of the world and delta, and pushes directory edits.
//!
//! - xds-client connections (SotW and delta, wildcard and named) receive exactly what
//!   `istio::translate` generates for their node; NACKs are not answered until the config
//!   changes; a reconnecting delta client is sent only what it does not have.
//! - An in-process Sluice fed by an xds-client (the proxy side of xDS is not on this branch:
//!   the test's handlers apply updates to `State` as the xDS wiring would, rebinding listeners
//!   on port 0) routes requests to local test upstreams per the VirtualServices of a temp
//!   config dir, and an edit of a VirtualService changes routing without a reconnect.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use sluice::config::proto;
use sluice::istio::discovery::Discovery;
use sluice::istio::{self, Interception, Node, Role};
use support::{upstream, Behaviour, H1};
use xds_client::{
    type_url, BackoffConfig, Config, Handler, Interest, NodeSettings, Protocol, ProxyType,
    Rejected, Update, XdsClient, XdsResource,
};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/bookinfo")
}

/// A fresh temp dir holding the docs example's files.
fn config_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-discovery-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in istio::load::config_files(&example()).unwrap() {
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// A discovery server on 127.0.0.1:0 watching `dir` every 50 ms.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(dir, l).await
    }

    async fn start_on(dir: &Path, l: tokio::net::TcpListener) -> Server {
        let addr = l.local_addr().unwrap();
        let d = Discovery::new(dir).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = tokio::spawn(d.clone().watch(Duration::from_millis(50)));
        let serve = tokio::spawn(async move {
            d.serve(l, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(stop),
            tasks: vec![watch, serve],
        }
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Open streams end with UNAVAILABLE; the server returns once connections close.
        let serve = self.tasks.pop().unwrap();
        tokio::time::timeout(Duration::from_secs(10), serve)
            .await
            .expect("server did not shut down")
            .unwrap();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// productpage-v1's sidecar in NONE interception mode, as xds-client presents it.
fn node_settings() -> NodeSettings {
    NodeSettings {
        proxy_type: ProxyType::Sidecar,
        ip: "10.0.0.5".into(),
        pod_name: "productpage-v1-abc".into(),
        namespace: "default".into(),
        labels: [("app", "productpage"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        interception_mode: "NONE".into(),
        ..Default::default()
    }
}

/// The same identity as the translation sees it.
fn node() -> Node {
    Node {
        role: Role::Sidecar,
        namespace: "default".into(),
        labels: node_settings().labels,
        ip: Some("10.0.0.5".into()),
        interception: Interception::None,
        access_log_file: None,
        http10: false,
    }
}

fn client_config(uri: String, protocol: Protocol) -> Config {
    Config::new(uri, node_settings().build())
        .protocol(protocol)
        .backoff(BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        })
}

/// What a client holds of one type, by name; and every update it received.
struct Store<T> {
    held: Mutex<BTreeMap<String, T>>,
    updates: Mutex<Vec<Update<T>>>,
    /// Names the handler refuses.
    refuse: Mutex<BTreeSet<String>>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            held: Default::default(),
            updates: Default::default(),
            refuse: Default::default(),
        }
    }
}

impl<T: Clone> Store<T> {
    fn held(&self) -> BTreeMap<String, T> {
        self.held.lock().unwrap().clone()
    }
    fn update_count(&self) -> usize {
        self.updates.lock().unwrap().len()
    }
    fn last_update(&self) -> Update<T> {
        self.updates.lock().unwrap().last().cloned().unwrap()
    }
}

struct Keep<T>(Arc<Store<T>>);

impl<T: XdsResource + Clone + Sync> Handler<T> for Keep<T> {
    fn handle(&self, u: Update<T>) -> Result<(), Vec<Rejected>> {
        self.0.updates.lock().unwrap().push(u.clone());
        let refuse = self.0.refuse.lock().unwrap().clone();
        let mut held = self.0.held.lock().unwrap();
        if u.full_state {
            held.clear();
        }
        for n in &u.removed {
            held.remove(n);
        }
        let mut rejected = Vec::new();
        for r in u.updated {
            if refuse.contains(&r.name) {
                rejected.push(Rejected::new(&r.name, "refused by the test"));
            } else {
                held.insert(r.name, r.message);
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}

#[derive(Default)]
struct Stores {
    listeners: Arc<Store<Listener>>,
    routes: Arc<Store<RouteConfiguration>>,
    clusters: Arc<Store<Cluster>>,
    endpoints: Arc<Store<ClusterLoadAssignment>>,
}

/// A client storing what it receives; Route/Endpoint interests as given.
fn collecting_client(
    uri: String,
    protocol: Protocol,
    routes: Interest,
    endpoints: Interest,
) -> (XdsClient, Stores, tokio::task::JoinHandle<()>) {
    let s = Stores::default();
    let (client, task) = XdsClient::builder(client_config(uri, protocol))
        .handler(Keep(s.listeners.clone()))
        .handler(Keep(s.clusters.clone()))
        .handler_with_interest(routes, Keep(s.routes.clone()))
        .handler_with_interest(endpoints, Keep(s.endpoints.clone()))
        .build();
    let task = tokio::spawn(async move {
        let _ = task.run().await;
    });
    (client, s, task)
}

async fn ready(client: &XdsClient) {
    tokio::time::timeout(
        Duration::from_secs(20),
        client.wait_ready(&[
            type_url::LISTENER,
            type_url::CLUSTER,
            type_url::ROUTE,
            type_url::ENDPOINT,
        ]),
    )
    .await
    .expect("client never received all four types");
}

fn by_name<T: Clone>(items: &[T], name: fn(&T) -> &String) -> BTreeMap<String, T> {
    items.iter().map(|t| (name(t).clone(), t.clone())).collect()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn receives_the_translation(protocol: Protocol) {
    let dir = config_dir(&format!("{protocol:?}-all"));
    let server = Server::start(&dir).await;
    let want = istio::translate_dir(&dir, &node()).unwrap();
    assert!(!want.routes.is_empty() && !want.endpoints.is_empty());

    let (client, got, task) = collecting_client(
        server.uri(),
        protocol,
        Interest::Wildcard,
        Interest::Wildcard,
    );
    ready(&client).await;
    let all = |s: &Stores| {
        s.listeners.held() == by_name(&want.listeners, |l| &l.name)
            && s.clusters.held() == by_name(&want.clusters, |c| &c.name)
            && s.routes.held() == by_name(&want.routes, |r| &r.name)
            && s.endpoints.held() == by_name(&want.endpoints, |e| &e.cluster_name)
    };
    eventually("the whole translation", || all(&got)).await;
    assert_eq!(
        got.listeners.held().keys().collect::<Vec<_>>(),
        want.listeners
            .iter()
            .map(|l| &l.name)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    task.abort();

    // Named subscriptions get only what they name.
    let eds: BTreeSet<String> = want
        .endpoints
        .iter()
        .map(|e| e.cluster_name.clone())
        .filter(|n| n.contains("reviews"))
        .collect();
    assert!(eds.len() >= 2, "{eds:?}");
    let (client, got, task) = collecting_client(
        server.uri(),
        protocol,
        Interest::Names(["9080".to_string()].into()),
        Interest::Names(eds.clone()),
    );
    ready(&client).await;
    eventually("named routes and endpoints", || {
        got.routes.held()
            == by_name(&want.routes, |r| &r.name)
                .into_iter()
                .filter(|(n, _)| n == "9080")
                .collect()
            && got.endpoints.held()
                == by_name(&want.endpoints, |e| &e.cluster_name)
                    .into_iter()
                    .filter(|(n, _)| eds.contains(n))
                    .collect()
            && got.clusters.held().len() == want.clusters.len()
    })
    .await;
    // Narrowing a subscription: the client drops the rest itself; the server sends no more.
    let one: BTreeSet<String> = eds.iter().take(1).cloned().collect();
    client
        .subscriptions()
        .set(type_url::ENDPOINT, one.clone())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    if protocol == Protocol::StateOfTheWorld {
        // SotW answers a changed name list with exactly the named resources.
        let u = got.endpoints.last_update();
        let names: BTreeSet<String> = u.updated.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, one);
    }
    assert_eq!(client.stats().streams, 1);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_client_receives_the_translation_for_its_node() {
    receives_the_translation(Protocol::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_client_receives_the_translation_for_its_node() {
    receives_the_translation(Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_get_their_own_translation() {
    let dir = config_dir("identities");
    let server = Server::start(&dir).await;
    // A gateway in istio-system gets the gateway's listeners.
    let gw = NodeSettings {
        proxy_type: ProxyType::Router,
        ip: "10.0.0.9".into(),
        pod_name: "istio-ingressgateway-1".into(),
        namespace: "istio-system".into(),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..Default::default()
    };
    let want = istio::translate_dir(
        &dir,
        &Node {
            role: Role::Router,
            namespace: "istio-system".into(),
            labels: gw.labels.clone(),
            ip: Some("10.0.0.9".into()),
            interception: Interception::Redirect,
            access_log_file: None,
            http10: false,
        },
    )
    .unwrap();
    let sidecar = istio::translate_dir(&dir, &node()).unwrap();
    assert_ne!(
        by_name(&want.listeners, |l| &l.name)
            .keys()
            .collect::<Vec<_>>(),
        by_name(&sidecar.listeners, |l| &l.name)
            .keys()
            .collect::<Vec<_>>()
    );
    let s = Stores::default();
    let (client, task) =
        XdsClient::builder(Config::new(server.uri(), gw.build()).protocol(Protocol::Delta))
            .handler(Keep(s.listeners.clone()))
            .handler_with_interest(Interest::Wildcard, Keep(s.routes.clone()))
            .build();
    let task = tokio::spawn(async move {
        let _ = task.run().await;
    });
    tokio::time::timeout(
        Duration::from_secs(20),
        client.wait_ready(&[type_url::LISTENER, type_url::ROUTE]),
    )
    .await
    .unwrap();
    eventually("gateway listeners and routes", || {
        s.listeners.held() == by_name(&want.listeners, |l| &l.name)
            && s.routes.held() == by_name(&want.routes, |r| &r.name)
    })
    .await;
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replaces reviews' default subset (v1) with `to` in the VirtualService file.
fn edit_reviews_default(dir: &Path, from: &str, to: &str) {
    let vs = dir.join("virtual-services.yaml");
    let text = std::fs::read_to_string(&vs).unwrap();
    let edited = text.replacen(
        &format!("        subset: {from}\n---"),
        &format!("        subset: {to}\n---"),
        1,
    );
    assert_ne!(text, edited);
    std::fs::write(&vs, edited).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_not_answered_until_the_config_changes() {
    let dir = config_dir("nack");
    let server = Server::start(&dir).await;
    let (client, got, task) = collecting_client(
        server.uri(),
        Protocol::StateOfTheWorld,
        Interest::Names(["9080".to_string()].into()),
        Interest::Names(BTreeSet::new()),
    );
    got.routes.refuse.lock().unwrap().insert("9080".into());
    tokio::time::timeout(
        Duration::from_secs(20),
        client.wait_ready(&[type_url::ROUTE]),
    )
    .await
    .unwrap();
    let stats = client.stats();
    let rds = &stats.types[type_url::ROUTE];
    assert_eq!((rds.update_attempt, rds.update_rejected), (1, 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(got.routes.update_count(), 1, "NACKed version was resent");

    got.routes.refuse.lock().unwrap().clear();
    edit_reviews_default(&dir, "v1", "v3");
    eventually("the new version after the edit", || {
        got.routes.update_count() == 2
    })
    .await;
    let stats = client.stats();
    let rds = &stats.types[type_url::ROUTE];
    assert_eq!((rds.update_success, rds.update_rejected), (1, 1));
    assert!(got.routes.held().contains_key("9080"));
    // Clusters did not change: not pushed again.
    assert_eq!(got.clusters.update_count(), 1);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reconnect_sends_only_what_the_client_lacks() {
    let dir = config_dir("delta-reconnect");
    let mut server = Server::start(&dir).await;
    let addr = server.addr;
    let (client, got, task) = collecting_client(
        server.uri(),
        Protocol::Delta,
        Interest::Wildcard,
        Interest::Wildcard,
    );
    ready(&client).await;
    let clusters = got.clusters.held();
    assert!(!clusters.is_empty());
    // A push changes one route configuration only.
    edit_reviews_default(&dir, "v1", "v3");
    eventually("the route push", || got.routes.update_count() == 2).await;
    let u = got.routes.last_update();
    assert_eq!(
        u.updated
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["9080"]
    );
    assert_eq!(got.clusters.update_count(), 1);

    // Restart the server on the same port with one more edit: the reconnecting client sends
    // its versions and gets only the changed route (and empty answers for the rest).
    server.stop().await;
    edit_reviews_default(&dir, "v3", "v2");
    let mut listener = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _server = Server::start_on(&dir, listener.expect("rebind")).await;
    eventually("a second stream", || client.stats().streams >= 2).await;
    eventually("the changed route after reconnect", || {
        got.routes.update_count() == 3
    })
    .await;
    let u = got.routes.last_update();
    assert_eq!(
        u.updated
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["9080"]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for u in got.clusters.updates.lock().unwrap().iter().skip(1) {
        assert!(u.updated.is_empty() && u.removed.is_empty(), "{u:?}");
    }
    assert_eq!(got.clusters.held(), clusters);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

// --- An in-process Sluice fed over ADS -----------------------------------------------------

const VERSIONS: &[(&str, &[&str])] = &[
    ("productpage", &["v1"]),
    ("details", &["v1", "v2"]),
    ("ratings", &["v1", "v2"]),
    ("reviews", &["v1", "v2", "v3"]),
];

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Replaces the example's workloads with test upstreams on 127.0.0.1.
async fn local_workloads(dir: &Path) {
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
    std::fs::write(dir.join("workloads.yaml"), yaml).unwrap();
}

fn state_rejections(r: Vec<sluice::state::Rejected>) -> Result<(), Vec<Rejected>> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(r
            .into_iter()
            .map(|x| Rejected::new(x.name, x.reason))
            .collect())
    }
}

/// A client whose handlers apply updates to `state`, the way the proxy's xDS wiring does
/// (listeners rebound on 127.0.0.1:0: tests never take fixed ports).
fn applying_client(
    uri: String,
    protocol: Protocol,
    state: Arc<sluice::state::State>,
) -> (XdsClient, tokio::task::JoinHandle<()>) {
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state);
    let (client, task) = XdsClient::builder(client_config(uri, protocol))
        .handler(move |u: Update<Cluster>| {
            let msgs: Vec<Cluster> = u.updated.into_iter().map(|r| r.message).collect();
            state_rejections(s1.apply_clusters(
                &msgs,
                &u.removed,
                u.full_state,
                &u.version_info,
                false,
            ))
        })
        .handler_with_interest(
            Interest::Wildcard,
            move |u: Update<ClusterLoadAssignment>| {
                let msgs: Vec<_> = u.updated.into_iter().map(|r| r.message).collect();
                state_rejections(s2.apply_endpoints(&msgs, &u.version_info))
            },
        )
        .handler(move |u: Update<Listener>| {
            let msgs: Vec<Listener> = u
                .updated
                .into_iter()
                .map(|r| {
                    let mut v = proto::to_json(&r.message);
                    v["address"]["socket_address"]["address"] = "127.0.0.1".into();
                    v["address"]["socket_address"]["port_value"] = 0.into();
                    proto::decode_json_value(v).unwrap()
                })
                .collect();
            state_rejections(s3.apply_listeners(
                &msgs,
                &u.removed,
                u.full_state,
                &u.version_info,
                false,
            ))
        })
        .handler_with_interest(Interest::Wildcard, move |u: Update<RouteConfiguration>| {
            let msgs: Vec<_> = u.updated.into_iter().map(|r| r.message).collect();
            state_rejections(s4.apply_routes(&msgs, &u.removed, &u.version_info, false))
        })
        .build();
    let task = tokio::spawn(async move {
        let _ = task.run().await;
    });
    (client, task)
}

async fn upstream_of(c: &mut H1, host: &str, user: Option<&str>) -> String {
    let mut b = http::Request::get("/").header("host", host);
    if let Some(u) = user {
        b = b.header("end-user", u);
    }
    let g = c.send(b.body(Default::default()).unwrap()).await;
    assert_eq!(g.status, 200, "{host}: {}", g.body);
    g.field("name").unwrap().to_string()
}

async fn sluice_routes_and_follows_edits(protocol: Protocol) {
    let dir = config_dir(&format!("{protocol:?}-sluice"));
    local_workloads(&dir).await;
    let server = Server::start(&dir).await;
    let app = sluice::app::App::start(sluice::app::Options {
        bootstrap: None,
        admin_address: "127.0.0.1:0".parse().unwrap(),
        drain_time: Duration::from_secs(1),
        set_log_level: None,
    })
    .await
    .unwrap();
    let (client, task) = applying_client(server.uri(), protocol, app.state.clone());
    ready(&client).await;
    for t in [
        type_url::LISTENER,
        type_url::CLUSTER,
        type_url::ROUTE,
        type_url::ENDPOINT,
    ] {
        let s = &client.stats().types[t];
        assert_eq!(s.update_rejected, 0, "{t}: {:?}", s.last_error);
    }
    eventually("listener 127.0.0.1_9080", || {
        app.listener_address("127.0.0.1_9080").is_some()
    })
    .await;
    let mut c = H1::connect(app.listener_address("127.0.0.1_9080").unwrap()).await;
    for _ in 0..20 {
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", None).await,
            "reviews-v1"
        );
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", Some("jason")).await,
            "reviews-v2"
        );
        assert_eq!(
            upstream_of(&mut c, "ratings:9080", None).await,
            "ratings-v1"
        );
    }

    // Edit the VirtualService: everyone but jason now goes to v3, on the same connection,
    // over the same ADS stream.
    edit_reviews_default(&dir, "v1", "v3");
    let mut moved = false;
    for _ in 0..200 {
        if upstream_of(&mut c, "reviews:9080", None).await == "reviews-v3" {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(moved, "the edit never reached routing");
    for _ in 0..20 {
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", None).await,
            "reviews-v3"
        );
        assert_eq!(
            upstream_of(&mut c, "reviews:9080", Some("jason")).await,
            "reviews-v2"
        );
    }
    let stats = client.stats();
    assert_eq!(stats.streams, 1, "the client reconnected");
    assert_eq!(stats.types[type_url::ROUTE].update_success, 2);
    assert_eq!(
        stats.types[type_url::CLUSTER].update_success,
        1,
        "clusters did not change and were not pushed again"
    );
    task.abort();
    app.drain().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_over_sotw_routes_per_virtual_service_and_follows_edits() {
    sluice_routes_and_follows_edits(Protocol::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_over_delta_routes_per_virtual_service_and_follows_edits() {
    sluice_routes_and_follows_edits(Protocol::Delta).await;
}

/// `sluice discovery --config-dir DIR --listen ADDR` as a process, with a SotW client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_discovery_command_serves_the_directory() {
    let dir = config_dir("cli");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("discovery")
        .arg("--config-dir")
        .arg(&dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll-interval",
            "100ms",
        ])
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let want = istio::translate_dir(&dir, &node()).unwrap();
    let (client, got, task) = collecting_client(
        format!("http://127.0.0.1:{port}"),
        Protocol::StateOfTheWorld,
        Interest::Wildcard,
        Interest::Wildcard,
    );
    ready(&client).await;
    eventually("the translation from the sluice process", || {
        got.listeners.held() == by_name(&want.listeners, |l| &l.name)
            && got.routes.held() == by_name(&want.routes, |r| &r.name)
    })
    .await;
    edit_reviews_default(&dir, "v1", "v3");
    let want = istio::translate_dir(&dir, &node()).unwrap();
    eventually("the pushed edit", || {
        got.routes.held() == by_name(&want.routes, |r| &r.name)
    })
    .await;
    // SIGTERM ends the streams (the client sees the server go) and the process exits 0.
    let mut conn = client.connection();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(
        Duration::from_secs(10),
        conn.wait_for(|c| matches!(c, xds_client::ConnectionState::Disconnected { .. })),
    )
    .await
    .expect("the client never saw the server go")
    .unwrap();
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.0.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.expect("still running after SIGTERM").success());
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the child process (the one this test started) if the test fails early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// --- The wire protocol, request by request -------------------------------------------------

mod raw {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    type Sotw = (
        mpsc::UnboundedSender<DiscoveryRequest>,
        tonic::Streaming<DiscoveryResponse>,
    );

    async fn sotw(uri: String) -> Sotw {
        let mut c = AggregatedDiscoveryServiceClient::connect(uri)
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let s = c
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, s)
    }

    async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("no response")
            .unwrap()
            .expect("stream ended")
    }

    async fn silent<T: std::fmt::Debug>(s: &mut tonic::Streaming<T>) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), s.message()).await {
            panic!("unexpected: {m:?}");
        }
    }

    fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sotw_acks_nacks_stale_nonces_and_pushes() {
        let dir = config_dir("raw-sotw");
        let server = Server::start(&dir).await;
        let want = istio::translate_dir(&dir, &node()).unwrap();

        // No node on the first request: refused.
        let (tx, mut s) = sotw(server.uri()).await;
        tx.send(req(type_url::CLUSTER, &[], "", "")).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

        let (tx, mut s) = sotw(server.uri()).await;
        tx.send(DiscoveryRequest {
            node: Some(node_settings().build()),
            ..req(type_url::CLUSTER, &[], "", "")
        })
        .unwrap();
        let cds = next(&mut s).await;
        assert_eq!(cds.type_url, type_url::CLUSTER);
        assert_eq!(cds.resources.len(), want.clusters.len());
        // ACK: nothing comes back. The route request is answered with the one route named.
        tx.send(req(type_url::CLUSTER, &[], &cds.version_info, &cds.nonce))
            .unwrap();
        tx.send(req(type_url::ROUTE, &["9080"], "", "")).unwrap();
        let rds = next(&mut s).await;
        assert_eq!(rds.type_url, type_url::ROUTE);
        assert_eq!(rds.resources.len(), 1);
        assert_ne!(rds.nonce, cds.nonce);
        // A stale nonce and an unknown type are ignored; a NACK is not answered.
        tx.send(req(type_url::CLUSTER, &["x"], "", "stale"))
            .unwrap();
        tx.send(req("type.googleapis.com/example.Unknown", &[], "", ""))
            .unwrap();
        tx.send(DiscoveryRequest {
            error_detail: Some(RpcStatus {
                code: 13,
                message: "9080: refused by the test".into(),
                details: vec![],
            }),
            ..req(type_url::ROUTE, &["9080"], "", &rds.nonce)
        })
        .unwrap();
        silent(&mut s).await;
        // A change of config: only the route configuration changed, so only RDS is pushed.
        edit_reviews_default(&dir, "v1", "v3");
        let pushed = next(&mut s).await;
        assert_eq!(pushed.type_url, type_url::ROUTE);
        assert_ne!(pushed.version_info, rds.version_info);
        assert_eq!(pushed.resources.len(), 1);
        tx.send(req(
            type_url::ROUTE,
            &["9080"],
            &pushed.version_info,
            &pushed.nonce,
        ))
        .unwrap();
        silent(&mut s).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delta_initial_versions_subscriptions_and_removals() {
        let dir = config_dir("raw-delta");
        let server = Server::start(&dir).await;
        // Versions are canonical: another Discovery over the same files computes the same.
        let t = Discovery::new(&dir).unwrap().translation(&node()).await;
        let clusters = &t.sets[type_url::CLUSTER];
        let names: Vec<&String> = clusters.keys().collect();
        let (omitted, stale) = (names[0].clone(), names[1].clone());
        let mut initial: std::collections::HashMap<String, String> = clusters
            .iter()
            .map(|(n, i)| (n.clone(), i.version.clone()))
            .collect();
        initial.remove(&omitted);
        initial.insert(stale.clone(), "old".into());
        initial.insert(
            "outbound|1||gone.default.svc.cluster.local".into(),
            "1".into(),
        );

        let mut c = AggregatedDiscoveryServiceClient::connect(server.uri())
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        let mut s = c
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(DeltaDiscoveryRequest {
            node: Some(node_settings().build()),
            type_url: type_url::CLUSTER.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .unwrap();
        let r: DeltaDiscoveryResponse = next(&mut s).await;
        let mut got: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
        got.sort();
        let mut expected = vec![omitted.as_str(), stale.as_str()];
        expected.sort();
        assert_eq!(got, expected);
        assert_eq!(
            r.removed_resources,
            ["outbound|1||gone.default.svc.cluster.local"]
        );
        for x in &r.resources {
            assert_eq!(x.version, clusters[&x.name].version);
        }
        let ack = |t: &str, nonce: &str| DeltaDiscoveryRequest {
            type_url: t.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(ack(type_url::CLUSTER, &r.nonce)).unwrap();
        silent(&mut s).await;

        // Named EDS: subscribe two, then unsubscribe one (nothing to send), then a wildcard.
        let eds: Vec<String> = t.sets[type_url::ENDPOINT].keys().take(2).cloned().collect();
        tx.send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: eds.clone(),
            ..Default::default()
        })
        .unwrap();
        let r = next(&mut s).await;
        let got: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
        assert_eq!(got, eds);
        tx.send(DeltaDiscoveryRequest {
            resource_names_unsubscribe: vec![eds[1].clone()],
            ..ack(type_url::ENDPOINT, &r.nonce)
        })
        .unwrap();
        silent(&mut s).await;
        // Subscribing again resends; a name that does not exist is reported removed.
        tx.send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: vec![eds[0].clone(), "outbound|1||nope".into()],
            ..Default::default()
        })
        .unwrap();
        let r = next(&mut s).await;
        let got: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(got, [eds[0].as_str()]);
        assert_eq!(r.removed_resources, ["outbound|1||nope"]);
        tx.send(ack(type_url::ENDPOINT, &r.nonce)).unwrap();
        silent(&mut s).await;
        tx.send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .unwrap();
        let r = next(&mut s).await;
        assert_eq!(
            r.resources.len(),
            t.sets[type_url::ENDPOINT].len() - 1,
            "everything but the one already held"
        );
        assert!(r.resources.iter().all(|x| x.name != eds[0]));
        tx.send(ack(type_url::ENDPOINT, &r.nonce)).unwrap();
        silent(&mut s).await;

        // Deleting a DestinationRule removes its subset clusters and their endpoints.
        std::fs::remove_file(dir.join("destination-rules.yaml")).unwrap();
        let r = next(&mut s).await;
        assert_eq!(r.type_url, type_url::CLUSTER);
        assert!(!r.removed_resources.is_empty());
        assert!(
            r.removed_resources.iter().all(|n| n.contains("|v")),
            "{r:?}"
        );
        let r = next(&mut s).await;
        assert_eq!(r.type_url, type_url::ENDPOINT);
        assert!(!r.removed_resources.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
