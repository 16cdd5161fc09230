//! End-to-end: TCP proxying (echo, half-close, weighted clusters), a real gRPC bidirectional
//! stream (tonic client → Sluice → tonic server) with trailers, the admin endpoint's Envoy
//! shapes, and draining on `/quitquitquit`.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_client::testing::{any, FakeAds};

#[tokio::test]
async fn tcp_echo_with_half_close() {
    let echo = tcp_echo().await;
    let cfg = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        tcp_listener("tcp_basic", &[("echo_c", 1)]),
        cluster("echo_c", &[echo], "")
    );
    let app = sluice(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("tcp_basic").unwrap())
        .await
        .unwrap();
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        // Half-close: the echo server sees EOF, answers the rest and closes its side.
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(send, recv);
    n.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload);
}

#[tokio::test]
async fn tcp_weighted_clusters() {
    // Two "echo" servers that prefix their name, so we can tell them apart.
    async fn named(name: &'static [u8]) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(name).await;
                });
            }
        });
        a
    }
    let a = named(b"A").await;
    let b = named(b"B").await;
    let cfg = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}{}",
        tcp_listener("tcp_w", &[("tw_a", 25), ("tw_b", 75)]),
        cluster("tw_a", &[a], ""),
        cluster("tw_b", &[b], "")
    );
    let app = sluice(&cfg).await;
    let addr = app.listener_address("tcp_w").unwrap();
    let mut n_a = 0;
    let n = 800;
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).await.unwrap();
        n_a += (buf[0] == b'A') as usize;
    }
    let share = n_a as f64 / n as f64;
    assert!((0.18..=0.32).contains(&share), "A got {share}");
}

#[tokio::test]
async fn grpc_bidirectional_stream_through_sluice() {
    let ads = FakeAds::start().await;
    let h2 = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;
    let vh = "            - name: grpc\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /, grpc: {}}\n                route: {cluster: grpc_up, timeout: 0s}\n";
    let cfg = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("grpc", vh, ""),
        cluster("grpc_up", &[ads.addr()], h2)
    );
    let app = sluice(&cfg).await;
    let addr = app.listener_address("grpc").unwrap();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        type_url: xds_client::type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The server saw the request that went through Sluice...
    let req = ads.next_sotw(xds_client::type_url::CLUSTER).await;
    assert_eq!(req.type_url, xds_client::type_url::CLUSTER);
    // ...and its streamed answers come back through Sluice, several on one stream.
    for v in ["1", "2", "3"] {
        let c = Cluster {
            name: format!("c{v}"),
            ..Default::default()
        };
        ads.respond(xds_client::type_url::CLUSTER, v, &format!("n{v}"), [any(c)]);
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.version_info, v);
        tx.send(DiscoveryRequest {
            type_url: xds_client::type_url::CLUSTER.into(),
            version_info: v.into(),
            response_nonce: format!("n{v}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let ack = ads.next_sotw(xds_client::type_url::CLUSTER).await;
        assert_eq!(ack.response_nonce, format!("n{v}"));
    }
}

#[tokio::test]
async fn admin_endpoints_have_envoys_shapes() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: admin_up}\n";
    let cfg = format!(
        "node: {{id: test-node, cluster: test}}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("admin_l", vh, ""),
        cluster("admin_up", &[a.addr], "")
    );
    let app = sluice(&cfg).await;
    let mut c = H1::connect(app.listener_address("admin_l").unwrap()).await;
    for _ in 0..3 {
        assert_eq!(c.get("h", "/").await.status, 200);
    }
    let dump = admin_get(&app, "/config_dump?include_eds").await;
    assert_eq!(dump.status, 200);
    let v: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    let configs = v["configs"].as_array().unwrap();
    let types: Vec<&str> = configs
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        ]
    );
    assert_eq!(configs[0]["bootstrap"]["node"]["id"], "test-node");
    let sc = &configs[1]["static_clusters"][0];
    assert_eq!(
        sc["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(sc["cluster"]["name"], "admin_up");
    assert!(sc["last_updated"].as_str().unwrap().ends_with('Z'));
    let sl = &configs[3]["static_listeners"][0]["listener"];
    assert_eq!(sl["name"], "admin_l");
    assert_eq!(
        sl["filter_chains"][0]["filters"][0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let eps = &configs[2]["static_endpoint_configs"][0]["endpoint_config"];
    assert_eq!(eps["cluster_name"], "admin_up");
    assert_eq!(
        eps["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"],
        a.addr.port()
    );
    // Every dumped resource decodes back with the Envoy schema (round trip).
    let back: Cluster = sluice::config::proto::decode_json_value(sc["cluster"].clone())
        .expect("cluster re-decodes");
    assert_eq!(back.name, "admin_up");
    let sel = admin_get(&app, "/config_dump?resource=static_clusters").await;
    let sv: serde_json::Value = serde_json::from_str(&sel.body).unwrap();
    assert_eq!(
        sv["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    );

    let stats = admin_get(&app, "/stats").await.body;
    assert!(
        stats.contains("cluster.admin_up.upstream_rq_total: 3"),
        "{stats}"
    );
    assert!(
        stats.contains("http.admin_l.downstream_rq_total: 3"),
        "{stats}"
    );
    let prom = admin_get(&app, "/stats/prometheus").await.body;
    assert!(prom.contains("# TYPE envoy_cluster_upstream_rq_total counter\n"));
    assert!(prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"admin_up\"} 3\n"));
    let clusters = admin_get(&app, "/clusters").await.body;
    assert!(
        clusters.contains(&format!("admin_up::{}::rq_active::0", a.addr)),
        "{clusters}"
    );
    let listeners = admin_get(&app, "/listeners").await.body;
    assert!(listeners.starts_with("admin_l::127.0.0.1:"), "{listeners}");
    assert_eq!(admin_get(&app, "/ready").await.status, 200);
    let info: serde_json::Value =
        serde_json::from_str(&admin_get(&app, "/server_info").await.body).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(admin_get(&app, "/quitquitquit").await.status, 405);
    assert_eq!(admin_get(&app, "/nope").await.status, 404);
}

#[tokio::test]
async fn quitquitquit_drains_then_stops_accepting() {
    let a = upstream("a", Behaviour::Echo).await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: drain_up}\n";
    let cfg = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        http_listener("drain_l", vh, ""),
        cluster("drain_up", &[a.addr], "")
    );
    let app = sluice(&cfg).await;
    let addr = app.listener_address("drain_l").unwrap();
    let admin = app.admin_address;
    let run = tokio::spawn(app.run());
    let mut c = H1::connect(addr).await;
    assert_eq!(c.get("h", "/").await.status, 200);
    let mut ac = H1::connect(admin).await;
    let r = ac
        .send(
            http::Request::post("/quitquitquit")
                .header("host", "admin")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    // run() returns once drained (the idle keep-alive connection is closed by the drain).
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("drain finishes within the drain time")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn server_first_protocol_skips_detection_wait() {
    // An SMTP-like server speaks first. The listener has both inspectors, but no filter chain
    // for this port depends on what they would find, so Sluice must not wait for client bytes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 mail.test ESMTP\r\n").await;
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await;
            });
        }
    });
    let listener = r#"  - name: server_first
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters_timeout: 5s
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    - name: envoy.filters.listener.http_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: smtp
          cluster: smtp_c
"#;
    let cfg = format!(
        "static_resources:\n  listeners:\n{listener}  clusters:\n{}",
        cluster("smtp_c", &[smtp], "")
    );
    let app = sluice(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(app.listener_address("server_first").unwrap())
        .await
        .unwrap();
    let mut banner = [0u8; 21];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut banner))
        .await
        .expect("banner arrives without waiting for the 5s detection timeout")
        .unwrap();
    assert_eq!(&banner, b"220 mail.test ESMTP\r\n");
}
