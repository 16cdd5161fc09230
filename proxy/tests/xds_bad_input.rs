//! Bad xDS input: each bad resource is NACKed with its name and the field at fault (or, for
//! routes to missing clusters, accepted and answered with 503 at request time, as Envoy does);
//! nothing crashes, the rest of the response applies, and traffic keeps flowing on the previous
//! version until a good one arrives.

mod support;
mod xds_support;

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use support::{upstream, Behaviour, Upstream};
use xds_support::*;

const NO_TIMEOUT: Duration = Duration::from_secs(600);

/// A proxy serving cluster `a` through listener `web` with route config `r1` at `v1`.
async fn serving() -> (Env, Upstream, std::net::SocketAddr) {
    let up = upstream("a", Behaviour::Echo).await;
    let env = start(false, NO_TIMEOUT).await;
    let addr = bring_up(&env, up.addr).await;
    (env, up, addr)
}

/// Traffic still reaches `a` with route version `v1`.
async fn still_serving(addr: std::net::SocketAddr) {
    let got = Client::new(addr).get("/still").await.unwrap();
    assert_eq!(
        (got.status, got.upstream.as_str(), got.version.as_str()),
        (200, "a", "v1")
    );
}

/// The NACK's error_detail, checking the version stays at `kept`.
fn nack(
    req: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest,
    kept: &str,
) -> String {
    assert_eq!(
        req.version_info, kept,
        "NACK must repeat the last good version"
    );
    let detail = req.error_detail.as_ref().expect("a NACK").message.clone();
    println!("NACK: {detail}");
    detail
}

#[tokio::test]
async fn malformed_any_is_nacked_and_recovered_from() {
    let (env, _up, addr) = serving().await;
    let garbage = Any {
        type_url: CDS.into(),
        value: vec![0xff, 0xff, 0xff, 0x0f],
    };
    let r = respond(
        &env.ads,
        CDS,
        "c2",
        "bad",
        vec![garbage, xds_client::testing::any(eds_cluster("a"))],
    )
    .await;
    let d = nack(&r, "c1");
    assert!(
        d.contains("resources[0]: cannot decode envoy.config.cluster.v3.Cluster"),
        "{d}"
    );
    assert!(env.app.state.load().cluster("a").is_some());
    still_serving(addr).await;
    // Recovery: the next good response is ACKed.
    let r = respond(&env.ads, CDS, "c3", "good", anys([eds_cluster("a")])).await;
    assert_eq!((r.version_info.as_str(), r.error_detail), ("c3", None));
    still_serving(addr).await;
}

#[tokio::test]
async fn unknown_type_url_is_nacked() {
    let (env, _up, addr) = serving().await;
    let t = "type.googleapis.com/envoy.config.example.v3.Unknown";
    env.ads.push(DiscoveryResponse {
        version_info: "u1".into(),
        type_url: t.into(),
        nonce: "u".into(),
        ..Default::default()
    });
    let r = env.ads.next_sotw(t).await;
    let d = r.error_detail.expect("NACK").message;
    assert!(
        d.contains("no handler registered for type URL") && d.contains(t),
        "{d}"
    );
    still_serving(addr).await;
}

#[tokio::test]
async fn duplicate_names_reject_every_copy_and_the_rest_applies() {
    let (env, _up, addr) = serving().await;
    let r = respond(
        &env.ads,
        CDS,
        "c2",
        "dup",
        anys([
            eds_cluster("a"),
            eds_cluster("b"),
            eds_cluster("b"),
            eds_cluster("c"),
        ]),
    )
    .await;
    let d = nack(&r, "c1");
    assert!(
        d.contains("b: duplicate resource name: appears 2 times"),
        "{d}"
    );
    let snap = env.app.state.load();
    assert!(snap.cluster("b").is_none(), "duplicate applied");
    assert!(
        snap.cluster("c").is_some(),
        "the rest of the response applies"
    );
    drop(snap);
    still_serving(addr).await;
}

#[tokio::test]
async fn conflicting_filter_chains_reject_the_listener() {
    let (env, _up, addr) = serving().await;
    let mut bad: Listener = rds_listener("clash", 0, "r1");
    let chain = bad.filter_chains[0].clone();
    bad.filter_chains.push(chain);
    let r = respond(
        &env.ads,
        LDS,
        "l2",
        "clash",
        anys([rds_listener("web", 0, "r1"), bad]),
    )
    .await;
    let d = nack(&r, "l1");
    assert!(
        d.starts_with("clash: listener clash: filter_chains: "),
        "{d}"
    );
    assert!(env.app.listener_address("clash").is_none());
    still_serving(addr).await;
}

#[tokio::test]
async fn listener_on_a_taken_address_is_rejected() {
    let (env, _up, addr) = serving().await;
    let taken = rds_listener("again", addr.port(), "r1");
    let r = respond(
        &env.ads,
        LDS,
        "l2",
        "taken",
        anys([rds_listener("web", 0, "r1"), taken]),
    )
    .await;
    let d = nack(&r, "l1");
    assert!(d.starts_with("again: cannot bind 127.0.0.1:"), "{d}");
    still_serving(addr).await;
}

#[tokio::test]
async fn unsupported_transport_socket_rejects_the_cluster() {
    let (env, _up, addr) = serving().await;
    let tls: Cluster = yaml(
        r#"name: tls
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: x}
"#,
    );
    let r = respond(&env.ads, CDS, "c2", "tls", anys([eds_cluster("a"), tls])).await;
    let d = nack(&r, "c1");
    assert!(
        d.contains("tls: cluster tls: transport_socket: transport socket envoy.transport_sockets.tls is not supported"),
        "{d}"
    );
    assert!(env.app.state.load().cluster("tls").is_none());
    still_serving(addr).await;
}

#[tokio::test]
async fn invalid_regex_keeps_the_previous_route_table() {
    let (env, _up, addr) = serving().await;
    let bad = yaml(
        r#"name: r1
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {safe_regex: {regex: "/(unclosed"}}
    route: {cluster: a}
"#,
    );
    let r = respond(
        &env.ads,
        RDS,
        "r1v2",
        "re",
        vec![xds_client::testing::any::<
            envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
        >(bad)],
    )
    .await;
    let d = nack(&r, "r1v1");
    assert!(d.starts_with("r1: "), "{d}");
    assert!(d.contains("regex"), "{d}");
    still_serving(addr).await;
    let r = respond(
        &env.ads,
        RDS,
        "r1v3",
        "ok",
        anys([route_to("r1", "a", "v3")]),
    )
    .await;
    assert!(r.error_detail.is_none());
    let got = Client::new(addr).get("/").await.unwrap();
    assert_eq!(got.version, "v3");
}

#[tokio::test]
async fn route_to_missing_cluster_is_accepted_and_answers_503() {
    let (env, _up, addr) = serving().await;
    let r = respond(
        &env.ads,
        RDS,
        "r1v2",
        "miss",
        anys([route_to("r1", "nope", "v2")]),
    )
    .await;
    assert!(
        r.error_detail.is_none(),
        "Envoy accepts routes to unknown clusters"
    );
    let got = Client::new(addr).get("/").await.unwrap();
    assert_eq!(got.status, 503);
    // The cluster arrives later: the same route now works.
    let r = respond(
        &env.ads,
        CDS,
        "c2",
        "add",
        anys([eds_cluster("a"), static_cluster("nope", _up.addr)]),
    )
    .await;
    assert!(r.error_detail.is_none());
    let got = Client::new(addr).get("/").await.unwrap();
    assert_eq!((got.status, got.version.as_str()), (200, "v2"));
}

#[tokio::test]
async fn bad_endpoints_are_nacked_and_old_endpoints_stay() {
    let (env, up, addr) = serving().await;
    let bad = yaml(
        r#"cluster_name: a
endpoints:
- lb_endpoints:
  - endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}
"#,
    );
    let r = respond(
        &env.ads,
        EDS,
        "e2",
        "badep",
        vec![xds_client::testing::any::<
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
        >(bad)],
    )
    .await;
    let d = nack(&r, "e1");
    assert!(d.starts_with("a: "), "{d}");
    still_serving(addr).await;
    let _ = up;
}
