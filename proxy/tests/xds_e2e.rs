//! End-to-end xDS: Sluice in-process on the scripted fake ADS server (a real tonic server),
//! traffic through real sockets. Versions and nonces, warming and `/ready`, following RDS/EDS
//! references, delta add/remove, listener removal (its connections drained), a control-plane restart under load, and a
//! route table swapped 20 times a second under load.

mod support;
mod xds_support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{admin_get, upstream, Behaviour};
use xds_client::testing::delta_resource;
use xds_support::*;

const NO_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test]
async fn sotw_acks_follow_references_and_serve() {
    let up = upstream("a", Behaviour::Echo).await;
    let env = start(false, NO_TIMEOUT).await;
    let r = admin_get(&env.app, "/ready").await;
    assert_eq!(r.status, 503, "ready before any xDS response");
    let addr = bring_up(&env, up.addr).await;
    assert_eq!(admin_get(&env.app, "/ready").await.status, 200);

    let got = Client::new(addr).get("/x").await.unwrap();
    assert_eq!(
        (got.status, got.upstream.as_str(), got.version.as_str()),
        (200, "a", "v1")
    );

    // Versions per resource in /config_dump.
    let dump = admin_get(&env.app, "/config_dump?include_eds").await.body;
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let configs = v["configs"].as_array().unwrap();
    let find = |t: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().unwrap().ends_with(t))
            .unwrap()
    };
    assert_eq!(
        find("ClustersConfigDump")["dynamic_active_clusters"][0]["version_info"],
        "c1"
    );
    assert_eq!(
        find("ListenersConfigDump")["dynamic_listeners"][0]["active_state"]["version_info"],
        "l1"
    );
    assert_eq!(
        find("RoutesConfigDump")["dynamic_route_configs"][0]["version_info"],
        "r1v1"
    );
    assert_eq!(
        find("EndpointsConfigDump")["dynamic_endpoint_configs"][0]["version_info"],
        "e1"
    );

    // Envoy's update counters.
    let ok = |s: &str| {
        s.contains("cluster_manager.cds.update_success: ")
            && s.contains("cluster_manager.cds.version_text: \"c1\"")
            && s.contains("listener_manager.lds.version_text: \"l1\"")
            && s.contains("rds.version_text: \"r1v1\"")
            && s.contains("eds.version_text: \"e1\"")
    };
    for _ in 0..100 {
        if ok(&admin_get(&env.app, "/stats").await.body) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = admin_get(&env.app, "/stats").await.body;
    assert!(ok(&stats), "{stats}");
    assert!(
        stats.contains("listener_manager.lds.update_rejected: "),
        "{stats}"
    );

    // A second cluster, and the listener now pointing at a second route config: subscriptions
    // follow (and the first route name is dropped).
    let ack = respond(
        &env.ads,
        CDS,
        "c2",
        "n5",
        anys([eds_cluster("a"), eds_cluster("b")]),
    )
    .await;
    assert_eq!(ack.version_info, "c2");
    let eds = env.ads.next_sotw(EDS).await;
    assert_eq!(eds.resource_names, ["a", "b"]);
    assert_eq!(eds.version_info, "e1");
    let ack = respond(
        &env.ads,
        LDS,
        "l2",
        "n6",
        anys([rds_listener("web", 0, "r2")]),
    )
    .await;
    assert_eq!(ack.version_info, "l2");
    let rds = env.ads.next_sotw(RDS).await;
    assert_eq!(rds.resource_names, ["r2"]);
    assert_eq!(
        env.app.listener_address("web"),
        Some(addr),
        "listener not rebound"
    );
}

#[tokio::test]
async fn readiness_waits_for_warming_or_initial_fetch_timeout() {
    let env = start(false, Duration::from_millis(700)).await;
    env.ads.next_sotw(CDS).await;
    respond(&env.ads, CDS, "1", "a", anys([eds_cluster("cold")])).await;
    assert!(!env.xds.is_ready(), "ready without LDS");
    respond(&env.ads, LDS, "1", "b", vec![]).await;
    // EDS never answers: not ready until the initial fetch timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin_get(&env.app, "/ready").await.status, 503);
    eventually("ready after initial fetch timeout", || env.xds.is_ready()).await;
    assert_eq!(admin_get(&env.app, "/ready").await.status, 200);
    // Latched: another cold cluster does not unready the proxy.
    respond(
        &env.ads,
        CDS,
        "2",
        "c",
        anys([eds_cluster("cold"), eds_cluster("cold2")]),
    )
    .await;
    assert_eq!(admin_get(&env.app, "/ready").await.status, 200);
}

/// A TCP proxy listener on 127.0.0.1 (any port) to `cluster`.
fn tcp_listener(
    name: &str,
    cluster: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    yaml(&format!(
        r#"name: {name}
address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: {name}
      cluster: {cluster}
"#
    ))
}

/// `rds_listener` (any port) that also allows WebSocket upgrades.
fn websocket_listener(
    name: &str,
    route: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    yaml(&format!(
        r#"name: {name}
address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      upgrade_configs: [{{upgrade_type: websocket}}]
      rds: {{route_config_name: {route}, config_source: {{ads: {{}}}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    ))
}

/// Reads until EOF (or 5 s); the bytes read and whether EOF came.
async fn read_to_eof(s: &mut tokio::net::TcpStream) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let eof = matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await,
        Ok(Ok(_))
    );
    (String::from_utf8_lossy(&buf).into_owned(), eof)
}

#[tokio::test]
async fn listener_removed_stops_accepting_and_drains_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("a", Behaviour::Echo).await;
    let echo = support::tcp_echo().await;
    let env = start(false, NO_TIMEOUT).await;
    let addr = bring_up(&env, up.addr).await;
    let ack = respond(
        &env.ads,
        CDS,
        "c2",
        "x0",
        anys([eds_cluster("a"), static_cluster("echo", echo)]),
    )
    .await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("c2", None));
    let ack = respond(
        &env.ads,
        LDS,
        "l2",
        "x1",
        anys([websocket_listener("web", "r1"), tcp_listener("tcp", "echo")]),
    )
    .await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("l2", None));
    assert_eq!(env.app.listener_address("web"), Some(addr));
    let tcp_addr = env.app.listener_address("tcp").expect("tcp listener bound");

    // A TCP proxy connection, an idle keep-alive HTTP/1.1 connection, one with a request in
    // flight (headers and half the body sent), an HTTP/2 connection and an upgraded one.
    let mut tcp = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    let mut buf = [0u8; 16];
    tcp.write_all(b"ping").await.unwrap();
    tcp.read_exact(&mut buf[..4]).await.unwrap();
    assert_eq!(&buf[..4], b"ping");
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = idle.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"POST /busy HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\n12345")
        .await
        .unwrap();
    let mut h2 = support::H2::connect(addr).await;
    assert_eq!(h2.get("test", "/h2").await.status, 200);
    let mut ws = tokio::net::TcpStream::connect(addr).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let n = ws.read(&mut head).await.unwrap();
    let got = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    ws.write_all(b"hi").await.unwrap();
    ws.read_exact(&mut buf[..2]).await.unwrap();
    assert_eq!(&buf[..2], b"hi");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let removed = std::time::Instant::now();
    let ack = respond(&env.ads, LDS, "l3", "x2", vec![]).await;
    assert_eq!(ack.version_info, "l3");
    eventually("listeners gone", || {
        env.app.listener_address("web").is_none() && env.app.listener_address("tcp").is_none()
    })
    .await;
    // New connections are refused...
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "removed listener still accepts");

    // ...the idle HTTP connection is closed...
    let (rest, eof) = read_to_eof(&mut idle).await;
    assert!(
        eof && rest.is_empty(),
        "idle connection not closed: {rest:?}"
    );
    // ...the request in flight completes, marked `connection: close`, then the connection
    // closes...
    busy.write_all(b"67890").await.unwrap();
    let (resp, eof) = read_to_eof(&mut busy).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert!(
        resp.contains("path=/busy") && resp.contains("body-len=10"),
        "{resp}"
    );
    assert!(eof, "draining connection not closed after its response");
    // ...the idle HTTP/2 connection gets GOAWAY and closes...
    eventually("h2 connection closed", || h2.is_closed()).await;
    assert!(
        removed.elapsed() < Duration::from_millis(1500),
        "h2 connection closed only at the end of the drain time"
    );
    // ...and the TCP proxy connection keeps flowing until the drain time (2 s) is over, then
    // is closed.
    tcp.write_all(b"still").await.unwrap();
    tcp.read_exact(&mut buf[..5]).await.unwrap();
    assert_eq!(&buf[..5], b"still");
    let (_, eof) = read_to_eof(&mut tcp).await;
    let after = removed.elapsed();
    assert!(eof, "tcp connection not closed after the drain time");
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(4),
        "tcp connection closed {after:?} after removal (drain time 2 s)"
    );
    // An upgraded (WebSocket) connection is closed at the same time.
    let (_, eof) = read_to_eof(&mut ws).await;
    assert!(
        eof && removed.elapsed() < Duration::from_secs(4),
        "upgraded connection not closed"
    );
}

#[tokio::test]
async fn delta_add_update_remove() {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let env = start(true, NO_TIMEOUT).await;
    let ads = &env.ads;
    let first = ads.next_delta(CDS).await;
    assert!(first.node.is_some());
    ads.respond_delta(
        CDS,
        "s1",
        "d1",
        [
            delta_resource("a", "ca1", xds_client::testing::any(eds_cluster("a"))),
            delta_resource(
                "b",
                "cb1",
                xds_client::testing::any(static_cluster("b", b.addr)),
            ),
        ],
        &[],
    );
    let ack = ads.next_delta(CDS).await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail),
        ("d1", None)
    );
    let sub = ads.next_delta(EDS).await;
    assert_eq!(sub.resource_names_subscribe, ["a"]);
    ads.respond_delta(
        EDS,
        "",
        "d2",
        [delta_resource(
            "a",
            "ea1",
            xds_client::testing::any(cla("a", &[a.addr])),
        )],
        &[],
    );
    ads.respond_delta(
        LDS,
        "",
        "d3",
        [delta_resource(
            "web",
            "lw1",
            xds_client::testing::any(rds_listener("web", 0, "r")),
        )],
        &[],
    );
    let sub = ads.next_delta(RDS).await;
    assert_eq!(sub.resource_names_subscribe, ["r"]);
    ads.respond_delta(
        RDS,
        "",
        "d4",
        [delta_resource(
            "r",
            "rv1",
            xds_client::testing::any(route_to("r", "a", "v1")),
        )],
        &[],
    );
    eventually("ready", || env.xds.is_ready()).await;
    let addr = env.app.listener_address("web").unwrap();
    let got = Client::new(addr).get("/").await.unwrap();
    assert_eq!((got.upstream.as_str(), got.version.as_str()), ("a", "v1"));

    // Per-resource versions in /config_dump.
    let dump = admin_get(&env.app, "/config_dump").await.body;
    assert!(
        dump.contains("\"version_info\": \"ca1\"") && dump.contains("\"version_info\": \"cb1\""),
        "{dump}"
    );
    assert!(
        dump.contains("\"version_info\": \"rv1\"") && dump.contains("\"version_info\": \"lw1\""),
        "{dump}"
    );

    // Update one route (to b), then remove cluster a: the route to b keeps working.
    ads.respond_delta(
        RDS,
        "",
        "d5",
        [delta_resource(
            "r",
            "rv2",
            xds_client::testing::any(route_to("r", "b", "v2")),
        )],
        &[],
    );
    eventually("route v2", || {
        env.app.state.load().routes["r"].meta.version == "rv2"
    })
    .await;
    let got = Client::new(addr).get("/").await.unwrap();
    assert_eq!((got.upstream.as_str(), got.version.as_str()), ("b", "v2"));
    // A rejected delta resource keeps its previous version (in config_dump too).
    let mut bad = route_to("r", "b", "v3");
    bad.virtual_hosts[0].domains = vec!["*".into(), "*".into()];
    ads.respond_delta(
        RDS,
        "",
        "bad",
        [delta_resource("r", "rv3", xds_client::testing::any(bad))],
        &[],
    );
    let nack = ads
        .next_matching("RDS nack", |r| {
            matches!(&r.request, xds_client::testing::Received::Delta(q) if q.response_nonce == "bad")
        })
        .await
        .request
        .delta();
    let detail = nack.error_detail.expect("NACK").message;
    assert!(detail.starts_with("r: "), "{detail}");
    assert_eq!(env.app.state.load().routes["r"].meta.version, "rv2");
    ads.respond_delta(CDS, "s2", "d6", [], &["a"]);
    let ack = ads.next_matching("CDS ack d6", |r| matches!(&r.request, xds_client::testing::Received::Delta(q) if q.response_nonce == "d6")).await;
    assert!(ack.request.delta().error_detail.is_none());
    assert!(env.app.state.load().cluster("a").is_none());
    let unsub = ads
        .next_matching("EDS unsubscribe", |r| {
            matches!(&r.request, xds_client::testing::Received::Delta(q)
                if q.type_url == EDS && !q.resource_names_unsubscribe.is_empty())
        })
        .await
        .request
        .delta();
    assert_eq!(unsub.resource_names_unsubscribe, ["a"]);

    // Remove the listener: it stops accepting.
    ads.respond_delta(LDS, "", "d7", [], &["web"]);
    eventually("listener removed", || {
        env.app.listener_address("web").is_none()
    })
    .await;
    eventually("RDS unsubscribed", || {
        env.xds.client.subscriptions().get(RDS)
            == Some(xds_client::Interest::Names(BTreeSet::new()))
    })
    .await;
}

#[tokio::test]
async fn control_plane_restart_under_load_drops_nothing() {
    let up = upstream("a", Behaviour::Echo).await;
    let mut env = start(false, NO_TIMEOUT).await;
    let addr = bring_up(&env, up.addr).await;
    let load = Load::start(addr, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.ads.restart().await;
    env.ads.wait_for_streams(2).await;
    // The new stream resumes from the versions the proxy holds.
    let cds = env
        .ads
        .next_matching("CDS on stream 2", |r| {
            r.stream == 2 && r.request.type_url() == CDS
        })
        .await
        .request
        .sotw();
    assert_eq!(cds.version_info, "c1");
    let rds = env
        .ads
        .next_matching("RDS on stream 2", |r| {
            r.stream == 2 && r.request.type_url() == RDS
        })
        .await
        .request
        .sotw();
    assert_eq!(
        (rds.version_info.as_str(), rds.resource_names.as_slice()),
        ("r1v1", &["r1".to_string()][..])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The restarted control plane serves the same config again; nothing changes.
    respond(&env.ads, CDS, "c1", "m1", anys([eds_cluster("a")])).await;
    respond(
        &env.ads,
        LDS,
        "l1",
        "m2",
        anys([rds_listener("web", 0, "r1")]),
    )
    .await;
    respond(&env.ads, EDS, "e1", "m3", anys([cla("a", &[up.addr])])).await;
    respond(
        &env.ads,
        RDS,
        "r1v1",
        "m4",
        anys([route_to("r1", "a", "v1")]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures, _) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests");
    println!("control plane restart: {ok} requests, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_swapped_20_times_a_second_under_load() {
    let a = upstream("a", Behaviour::Echo).await;
    let b = upstream("b", Behaviour::Echo).await;
    let env = start(false, NO_TIMEOUT).await;
    let ads = &env.ads;
    ads.next_sotw(CDS).await;
    respond(
        ads,
        CDS,
        "1",
        "c",
        anys([static_cluster("a", a.addr), static_cluster("b", b.addr)]),
    )
    .await;
    respond(ads, LDS, "1", "l", anys([rds_listener("web", 0, "r")])).await;
    ads.next_sotw(RDS).await;
    respond(ads, RDS, "0", "r0", anys([route_to("r", "a", "va")])).await;
    eventually("ready", || env.xds.is_ready()).await;
    let load = Load::start(env.app.listener_address("web").unwrap(), 4);
    let swaps = 60;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 1..=swaps {
        tick.tick().await;
        let rc = if i % 2 == 0 {
            route_to("r", "a", "va")
        } else {
            route_to("r", "b", "vb")
        };
        let ack = respond(ads, RDS, &i.to_string(), &format!("r{i}"), anys([rc])).await;
        assert!(ack.error_detail.is_none());
    }
    let (ok, failures, answers) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let kinds: BTreeSet<(String, String)> = answers
        .iter()
        .map(|a| (a.upstream.clone(), a.version.clone()))
        .collect();
    let valid: BTreeSet<(String, String)> = [("a", "va"), ("b", "vb")]
        .iter()
        .map(|(u, v)| (u.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        kinds, valid,
        "every response from one of the two versions, both seen"
    );
    println!("route swap: {swaps} swaps in ~3 s, {ok} requests, 0 failed");
}

/// Kills the child process it holds (one we started) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn meta_str(node: &envoy_types::pb::envoy::config::core::v3::Node, key: &str) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("metadata {key}: {other:?}"),
    }
}

#[tokio::test]
async fn cli_flags_and_istio_environment_reach_the_control_plane() {
    let ads = xds_client::testing::FakeAds::start().await;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--admin-address", "127.0.0.1:0", "--xds-delta"])
        .args(["--xds-address", &format!("grpc://{}", ads.addr())])
        .args([
            "--role",
            "router",
            "--pod-ip",
            "10.1.2.3",
            "--pod-name",
            "gw-1",
            "--namespace",
            "istio-system",
        ])
        .env("ISTIO_META_CLUSTER_ID", "east")
        .env("ISTIO_META_MESH_ID", "mesh1")
        .env_remove("POD_NAME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sluice binary starts");
    let _child = Child(child);
    let first = ads.next_delta(CDS).await;
    let node = first.node.expect("node on the first request");
    assert_eq!(
        node.id,
        "router~10.1.2.3~gw-1.istio-system~istio-system.svc.cluster.local"
    );
    assert_eq!(meta_str(&node, "CLUSTER_ID"), "east");
    assert_eq!(meta_str(&node, "MESH_ID"), "mesh1");
    assert_eq!(meta_str(&node, "NAMESPACE"), "istio-system");
}

#[tokio::test]
async fn bootstrap_ads_config_points_at_a_static_cluster() {
    let ads = xds_client::testing::FakeAds::start().await;
    let dir = std::env::temp_dir().join(format!("sluice-xds-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.yaml");
    std::fs::write(
        &file,
        format!(
            r#"node: {{id: "sidecar~10.9.9.9~boot.ns~ns.svc.cluster.local", cluster: boot.ns}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
"#,
            ads.addr().port()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--admin-address", "127.0.0.1:0", "-c"])
        .arg(&file)
        .env_remove("POD_NAME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sluice binary starts");
    let _child = Child(child);
    let first = ads.next_sotw(CDS).await;
    let node = first.node.expect("node");
    assert_eq!(node.id, "sidecar~10.9.9.9~boot.ns~ns.svc.cluster.local");
    assert_eq!(node.cluster, "boot.ns");
    let _ = std::fs::remove_dir_all(&dir);
}
