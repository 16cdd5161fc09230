//! State-of-the-world ADS against the fake control plane: real tonic server, real client.

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use xds_client::testing::{any, FakeAds};
use xds_client::{type_url, ConnectionState, Protocol};

#[tokio::test]
async fn first_requests_ack_versions_nonces_and_full_state_removal() {
    let ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);

    // CDS then LDS, wildcard (empty names), node only on the very first request.
    let cds = ads.next_request().await.request.sotw();
    assert_eq!(cds.type_url, type_url::CLUSTER);
    let lds = ads.next_sotw(type_url::LISTENER).await;
    assert!(cds
        .node
        .as_ref()
        .unwrap()
        .id
        .starts_with("sidecar~10.0.0.1~app-1.default~"));
    assert!(lds.node.is_none());
    assert!(cds.resource_names.is_empty() && lds.resource_names.is_empty());
    assert_eq!(
        (cds.version_info.as_str(), cds.response_nonce.as_str()),
        ("", "")
    );
    // Named types with no names ask for nothing.
    ads.expect_silence(type_url::ROUTE, Duration::from_millis(100))
        .await;
    assert!(!client.is_ready(type_url::CLUSTER));

    ads.respond(type_url::CLUSTER, "c1", "n1", [cluster("a"), cluster("b")]);
    let ack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("c1", "n1")
    );
    assert!(ack.error_detail.is_none());
    assert_eq!(stores.clusters.names(), ["a", "b"]);
    assert!(client.is_ready(type_url::CLUSTER));

    // Full state: "a" is gone from the set, so it is removed.
    ads.respond(type_url::CLUSTER, "c2", "n2", [cluster("b"), cluster("c")]);
    let ack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("c2", "n2")
    );
    let update = stores.clusters.last_update();
    assert!(update.full_state);
    assert_eq!(update.removed, ["a"]);
    assert_eq!(update.version_info, "c2");
    assert_eq!(
        stores.clusters.snapshot(),
        [("b".into(), "c2".into()), ("c".into(), "c2".into())].into()
    );

    ads.respond(type_url::LISTENER, "l1", "n3", [listener("l")]);
    ads.next_sotw(type_url::LISTENER).await;
    tokio::time::timeout(
        Duration::from_secs(2),
        client.wait_ready(&[type_url::CLUSTER, type_url::LISTENER]),
    )
    .await
    .expect("ready");
    let stats = client.stats();
    let cds = &stats.types[type_url::CLUSTER];
    assert_eq!(
        (cds.update_attempt, cds.update_success, cds.update_rejected),
        (2, 2, 0)
    );
    assert_eq!(cds.version, "c2");
    assert_eq!(stats.streams, 1);
    assert_eq!(*client.connection().borrow(), ConnectionState::Connected);
}

#[tokio::test]
async fn nack_names_the_bad_resource_keeps_last_version_then_recovers() {
    let ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::LISTENER).await;
    ads.respond(type_url::LISTENER, "v1", "n1", [listener("good")]);
    ads.next_sotw(type_url::LISTENER).await;

    ads.respond(
        type_url::LISTENER,
        "v2",
        "n2",
        [listener("good"), listener("bad-1"), listener("other")],
    );
    let nack = ads.next_sotw(type_url::LISTENER).await;
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last ACKed version"
    );
    assert_eq!(
        nack.response_nonce, "n2",
        "and the nonce of the rejected response"
    );
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(
        detail.message,
        "bad-1: names starting with `bad` are refused"
    );
    // The rest of the batch applied.
    assert_eq!(stores.listeners.names(), ["good", "other"]);

    ads.respond(
        type_url::LISTENER,
        "v3",
        "n3",
        [listener("good"), listener("fixed")],
    );
    let ack = ads.next_sotw(type_url::LISTENER).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v3", "n3")
    );
    assert!(ack.error_detail.is_none());
    assert_eq!(stores.listeners.names(), ["fixed", "good"]);
    let s = &client.stats().types[type_url::LISTENER];
    assert_eq!(
        (s.update_attempt, s.update_success, s.update_rejected),
        (3, 2, 1)
    );
    assert_eq!(s.version, "v3");
    assert!(s.last_error.as_deref().unwrap().contains("bad-1"));
}

#[tokio::test]
async fn duplicate_names_and_undecodable_resources_are_rejected_by_the_client() {
    let ads = FakeAds::start().await;
    let (_client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::CLUSTER).await;
    ads.respond(type_url::CLUSTER, "v1", "n1", [cluster("keep")]);
    ads.next_sotw(type_url::CLUSTER).await;

    ads.respond(
        type_url::CLUSTER,
        "v2",
        "n2",
        [cluster("dup"), cluster("keep"), cluster("dup")],
    );
    let nack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n2")
    );
    assert_eq!(
        nack.error_detail.unwrap().message,
        "dup: duplicate resource name: appears 2 times in one response"
    );
    assert_eq!(stores.clusters.names(), ["keep"]);

    // Undecodable bytes and a wrong inner type URL: the whole response is refused (the
    // names are unknown, so removals could not be computed) and the handler is not called.
    let calls = stores.clusters.update_count();
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0x0a, 0xff, 0x01],
    };
    ads.respond(
        type_url::CLUSTER,
        "v3",
        "n3",
        [cluster("x"), garbage, listener("l")],
    );
    let nack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n3")
    );
    let message = nack.error_detail.unwrap().message;
    assert!(
        message.starts_with("resources[1]: cannot decode envoy.config.cluster.v3.Cluster:"),
        "{message}"
    );
    assert!(message.contains(&format!(
        "resources[2]: resource has type URL {:?}, expected {:?}",
        type_url::LISTENER,
        type_url::CLUSTER
    )));
    assert_eq!(stores.clusters.update_count(), calls);
    assert_eq!(stores.clusters.names(), ["keep"]);
}

#[tokio::test]
async fn unknown_type_url_is_nacked_and_the_stream_goes_on() {
    let ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::CLUSTER).await;
    let unknown = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    ads.respond(unknown, "u1", "n1", [any(Listener::default())]);
    let nack = ads.next_sotw(unknown).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("", "n1")
    );
    assert_eq!(
        nack.error_detail.unwrap().message,
        format!("no handler registered for type URL {unknown}")
    );
    ads.respond(type_url::CLUSTER, "v1", "n2", [cluster("a")]);
    let ack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(ack.version_info, "v1");
    assert_eq!(stores.clusters.names(), ["a"]);
    assert_eq!(client.stats().streams, 1);
    assert!(!client.stats().types.contains_key(unknown));
}

#[tokio::test]
async fn named_subscriptions_for_routes_and_endpoints() {
    let ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::CLUSTER).await;
    let subs = client.subscriptions();

    subs.set(type_url::ROUTE, names(["r1", "r2"])).unwrap();
    let req = ads.next_sotw(type_url::ROUTE).await;
    assert_eq!(req.resource_names, ["r1", "r2"]);
    assert_eq!(
        (req.version_info.as_str(), req.response_nonce.as_str()),
        ("", "")
    );

    ads.respond(type_url::ROUTE, "r-v1", "n1", [route("r1"), route("r2")]);
    let ack = ads.next_sotw(type_url::ROUTE).await;
    assert_eq!(ack.resource_names, ["r1", "r2"]);
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("r-v1", "n1")
    );
    let update = stores.routes.last_update();
    assert!(!update.full_state);

    // A changed set goes out with the last version and nonce; the same set again does not.
    subs.set(type_url::ROUTE, names(["r2", "r3"])).unwrap();
    let req = ads.next_sotw(type_url::ROUTE).await;
    assert_eq!(req.resource_names, ["r2", "r3"]);
    assert_eq!(
        (req.version_info.as_str(), req.response_nonce.as_str()),
        ("r-v1", "n1")
    );
    subs.set(type_url::ROUTE, names(["r2", "r3"])).unwrap();
    ads.expect_silence(type_url::ROUTE, Duration::from_millis(100))
        .await;

    // A response naming only some routes removes nothing (RDS is not full state).
    ads.respond(type_url::ROUTE, "r-v2", "n2", [route("r3")]);
    ads.next_sotw(type_url::ROUTE).await;
    assert_eq!(stores.routes.names(), ["r1", "r2", "r3"]);
    assert!(stores.routes.last_update().removed.is_empty());

    subs.set(
        type_url::ENDPOINT,
        names(["outbound|80||a.default.svc.cluster.local"]),
    )
    .unwrap();
    let req = ads.next_sotw(type_url::ENDPOINT).await;
    assert_eq!(
        req.resource_names,
        ["outbound|80||a.default.svc.cluster.local"]
    );

    // Unsubscribing everything sends an empty list (not a wildcard: this type was named).
    subs.set(type_url::ENDPOINT, names([])).unwrap();
    let req = ads.next_sotw(type_url::ENDPOINT).await;
    assert!(req.resource_names.is_empty());

    assert!(matches!(
        subs.set(type_url::CLUSTER, names(["x"])),
        Err(xds_client::Error::Wildcard(_))
    ));
    assert!(matches!(
        subs.set(type_url::SECRET, names(["x"])),
        Err(xds_client::Error::UnknownType(_))
    ));
}

#[tokio::test]
async fn control_plane_restart_reconnects_with_backoff_and_resubscribes() {
    let mut ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::CLUSTER).await;
    ads.next_sotw(type_url::LISTENER).await;
    ads.respond(type_url::CLUSTER, "c1", "n1", [cluster("a")]);
    ads.respond(type_url::LISTENER, "l1", "n2", [listener("l")]);
    client
        .subscriptions()
        .set(type_url::ROUTE, names(["r"]))
        .unwrap();
    ads.next_sotw(type_url::CLUSTER).await;
    ads.next_sotw(type_url::LISTENER).await;
    ads.next_sotw(type_url::ROUTE).await;
    ads.respond(type_url::ROUTE, "r1", "n3", [route("r")]);
    ads.next_sotw(type_url::ROUTE).await;
    let before = (
        stores.clusters.snapshot(),
        stores.listeners.snapshot(),
        stores.routes.snapshot(),
    );
    let calls = stores.clusters.update_count() + stores.listeners.update_count();

    ads.stop().await;
    let mut conn = client.connection();
    tokio::time::timeout(
        Duration::from_secs(2),
        conn.wait_for(|c| matches!(c, ConnectionState::Disconnected { .. })),
    )
    .await
    .expect("disconnect noticed")
    .unwrap();
    // Away for a while: the client retries with back-off (50 ms doubling to 400 ms, so a
    // handful of attempts in 1 s, not hundreds) and leaves the handlers alone.
    let attempts_before = client.stats().connect_attempts;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = client.stats().connect_attempts - attempts_before;
    assert!(
        (2..=12).contains(&attempts),
        "{attempts} connect attempts in 1 s"
    );
    assert_eq!(
        (
            stores.clusters.snapshot(),
            stores.listeners.snapshot(),
            stores.routes.snapshot()
        ),
        before
    );
    assert_eq!(
        stores.clusters.update_count() + stores.listeners.update_count(),
        calls
    );

    ads.restart().await;
    ads.wait_for_streams(2).await;
    let first = ads.next_request().await;
    assert_eq!(first.stream, 2);
    let cds = first.request.sotw();
    assert_eq!(cds.type_url, type_url::CLUSTER);
    let lds = ads.next_sotw(type_url::LISTENER).await;
    let rds = ads.next_sotw(type_url::ROUTE).await;
    assert!(cds.node.is_some(), "node again on the new stream");
    // Envoy resends the last ACKed versions, with no nonce, on a new stream.
    assert_eq!(
        (cds.version_info.as_str(), cds.response_nonce.as_str()),
        ("c1", "")
    );
    assert_eq!(
        (lds.version_info.as_str(), lds.response_nonce.as_str()),
        ("l1", "")
    );
    assert_eq!(
        (rds.version_info.as_str(), rds.resource_names.as_slice()),
        ("r1", &["r".to_string()][..])
    );
    tokio::time::timeout(
        Duration::from_secs(2),
        conn.wait_for(|c| *c == ConnectionState::Connected),
    )
    .await
    .expect("reconnected")
    .unwrap();

    ads.respond(type_url::CLUSTER, "c2", "m1", [cluster("a"), cluster("b")]);
    let ack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("c2", "m1")
    );
    assert_eq!(stores.clusters.names(), ["a", "b"]);
    let stats = client.stats();
    assert_eq!(stats.streams, 2);
    assert!(stats.disconnects >= 2);
}

#[tokio::test]
async fn resource_wrapper_is_unwrapped() {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    let ads = FakeAds::start().await;
    let (_client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::CLUSTER).await;
    let wrapped = any(Resource {
        name: "w".into(),
        version: "rv7".into(),
        resource: Some(cluster("w")),
        ..Default::default()
    });
    ads.respond(type_url::CLUSTER, "v1", "n1", [wrapped]);
    let ack = ads.next_sotw(type_url::CLUSTER).await;
    assert!(ack.error_detail.is_none());
    assert_eq!(
        stores.clusters.snapshot(),
        [("w".into(), "rv7".into())].into()
    );
}

#[tokio::test]
async fn names_set_before_start_go_out_after_cds_and_lds() {
    use xds_client::{Config, Interest, NodeSettings, XdsClient};
    let ads = FakeAds::start().await;
    let routes = Store::<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>::new();
    let eps = Store::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>::new();
    let (r, e) = (routes.clone(), eps.clone());
    let (client, task) = XdsClient::builder(Config::new(
        ads.uri(),
        NodeSettings::default().build(),
    ))
    .handler(move |u| r.handle(u))
    .handler(move |u| e.handle(u))
    .handler(|_: xds_client::Update<Listener>| Ok(()))
    .handler(|_: xds_client::Update<envoy_types::pb::envoy::config::cluster::v3::Cluster>| Ok(()))
    .build();
    client
        .subscriptions()
        .set(type_url::ROUTE, names(["r"]))
        .unwrap();
    client
        .subscriptions()
        .set(type_url::ENDPOINT, names(["e"]))
        .unwrap();
    assert_eq!(
        client.subscriptions().get(type_url::ROUTE),
        Some(Interest::Names(names(["r"])))
    );
    assert_eq!(
        client.subscriptions().get(type_url::CLUSTER),
        Some(Interest::Wildcard)
    );
    assert_eq!(*client.connection().borrow(), ConnectionState::Idle);
    let _task = tokio::spawn(task.run());
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(ads.next_request().await.request.type_url().to_owned());
    }
    assert_eq!(
        order,
        [
            type_url::CLUSTER,
            type_url::LISTENER,
            type_url::ENDPOINT,
            type_url::ROUTE
        ]
    );
}

#[tokio::test]
async fn invalid_address_is_an_error_not_a_retry_loop() {
    use xds_client::{Config, NodeSettings, XdsClient};
    let (_client, task) =
        XdsClient::builder(Config::new("not a uri", NodeSettings::default().build()))
            .handler(|_: xds_client::Update<Listener>| Ok(()))
            .build();
    let err = task.run().await.unwrap_err();
    assert!(
        matches!(err, xds_client::Error::InvalidAddress { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn responses_over_tonics_4_mib_default_are_accepted() {
    let ads = FakeAds::start().await;
    let (_client, stores, _task) = start_client(&ads, Protocol::StateOfTheWorld);
    ads.next_sotw(type_url::CLUSTER).await;
    // 6,000 clusters with 1 KB names: about 6 MB in one response, as a large mesh sends.
    let many: Vec<Any> = (0..6000).map(|i| cluster(&format!("{i:0>1000}"))).collect();
    ads.respond(type_url::CLUSTER, "big", "n1", many);
    let ack = ads.next_sotw(type_url::CLUSTER).await;
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert_eq!(stores.clusters.snapshot().len(), 6000);
}
