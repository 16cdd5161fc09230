//! Incremental (delta) ADS against the fake control plane: real tonic server, real client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use envoy_types::pb::google::protobuf::Any;
use xds_client::testing::{delta_resource, FakeAds};
use xds_client::{type_url, ConnectionState, Protocol};

fn versions<const N: usize>(pairs: [(&str, &str); N]) -> HashMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn add_update_remove_ack_and_nack() {
    let ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::Delta);

    // Wildcard: the first request for CDS subscribes to nothing explicitly; node once.
    let cds = ads.next_request().await.request.delta();
    assert_eq!(cds.type_url, type_url::CLUSTER);
    assert!(cds.node.is_some());
    assert!(cds.resource_names_subscribe.is_empty());
    assert!(cds.initial_resource_versions.is_empty());
    let lds = ads.next_delta(type_url::LISTENER).await;
    assert!(lds.node.is_none());

    ads.respond_delta(
        type_url::CLUSTER,
        "sys1",
        "n1",
        [
            delta_resource("a", "1", cluster("a")),
            delta_resource("b", "1", cluster("b")),
        ],
        &[],
    );
    let ack = ads.next_delta(type_url::CLUSTER).await;
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    assert!(ack.resource_names_subscribe.is_empty() && ack.initial_resource_versions.is_empty());
    assert_eq!(
        stores.clusters.snapshot(),
        [("a".into(), "1".into()), ("b".into(), "1".into())].into()
    );
    assert!(!stores.clusters.last_update().full_state);

    // Update b, remove a.
    ads.respond_delta(
        type_url::CLUSTER,
        "sys2",
        "n2",
        [delta_resource("b", "2", cluster("b"))],
        &["a"],
    );
    let ack = ads.next_delta(type_url::CLUSTER).await;
    assert_eq!(ack.response_nonce, "n2");
    let update = stores.clusters.last_update();
    assert_eq!(update.removed, ["a"]);
    assert_eq!(update.version_info, "sys2");
    assert_eq!(
        stores.clusters.snapshot(),
        [("b".into(), "2".into())].into()
    );

    // A refused resource and an undecodable one: NACK naming both; the good one applies.
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0x0a, 0xff],
    };
    ads.respond_delta(
        type_url::CLUSTER,
        "sys3",
        "n3",
        [
            delta_resource("bad-c", "1", cluster("bad-c")),
            delta_resource("junk", "1", garbage),
            delta_resource("d", "1", cluster("d")),
        ],
        &[],
    );
    let nack = ads.next_delta(type_url::CLUSTER).await;
    assert_eq!(nack.response_nonce, "n3");
    let message = nack.error_detail.expect("error_detail").message;
    assert!(
        message.contains("junk: cannot decode envoy.config.cluster.v3.Cluster"),
        "{message}"
    );
    assert!(
        message.contains("bad-c: names starting with `bad` are refused"),
        "{message}"
    );
    assert_eq!(stores.clusters.names(), ["b", "d"]);

    // Duplicates in one response.
    ads.respond_delta(
        type_url::CLUSTER,
        "sys4",
        "n4",
        [
            delta_resource("e", "1", cluster("e")),
            delta_resource("e", "2", cluster("e")),
        ],
        &[],
    );
    let nack = ads.next_delta(type_url::CLUSTER).await;
    assert_eq!(
        nack.error_detail.unwrap().message,
        "e: duplicate resource name: appears 2 times in one response"
    );
    assert_eq!(stores.clusters.names(), ["b", "d"]);

    let s = &client.stats().types[type_url::CLUSTER];
    assert_eq!(
        (s.update_attempt, s.update_success, s.update_rejected),
        (4, 2, 2)
    );
    assert_eq!(s.version, "sys2");
    assert!(client.is_ready(type_url::CLUSTER));
}

#[tokio::test]
async fn unknown_type_url_is_nacked() {
    let ads = FakeAds::start().await;
    let (_client, stores, _task) = start_client(&ads, Protocol::Delta);
    ads.next_delta(type_url::CLUSTER).await;
    let unknown = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    ads.respond_delta(
        unknown,
        "",
        "n1",
        [delta_resource("x", "1", listener("x"))],
        &[],
    );
    let nack = ads.next_delta(unknown).await;
    assert_eq!(nack.response_nonce, "n1");
    assert_eq!(
        nack.error_detail.unwrap().message,
        format!("no handler registered for type URL {unknown}")
    );
    ads.respond_delta(
        type_url::CLUSTER,
        "",
        "n2",
        [delta_resource("a", "1", cluster("a"))],
        &[],
    );
    assert!(ads
        .next_delta(type_url::CLUSTER)
        .await
        .error_detail
        .is_none());
    assert_eq!(stores.clusters.names(), ["a"]);
}

#[tokio::test]
async fn subscription_changes_send_diffs() {
    let ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::Delta);
    ads.next_delta(type_url::CLUSTER).await;
    ads.expect_silence(type_url::ENDPOINT, Duration::from_millis(100))
        .await;
    let subs = client.subscriptions();

    subs.set(type_url::ENDPOINT, names(["x", "y"])).unwrap();
    let req = ads.next_delta(type_url::ENDPOINT).await;
    assert_eq!(req.resource_names_subscribe, ["x", "y"]);
    assert!(req.resource_names_unsubscribe.is_empty());
    assert_eq!(req.response_nonce, "");

    ads.respond_delta(
        type_url::ENDPOINT,
        "",
        "n1",
        [
            delta_resource("x", "1", endpoints("x")),
            delta_resource("y", "1", endpoints("y")),
        ],
        &[],
    );
    ads.next_delta(type_url::ENDPOINT).await;

    subs.set(type_url::ENDPOINT, names(["y", "z"])).unwrap();
    let req = ads.next_delta(type_url::ENDPOINT).await;
    assert_eq!(req.resource_names_subscribe, ["z"]);
    assert_eq!(req.resource_names_unsubscribe, ["x"]);
    assert!(req.initial_resource_versions.is_empty());

    subs.set(type_url::ENDPOINT, names(["y", "z"])).unwrap();
    ads.expect_silence(type_url::ENDPOINT, Duration::from_millis(100))
        .await;

    subs.set(type_url::ENDPOINT, names([])).unwrap();
    let req = ads.next_delta(type_url::ENDPOINT).await;
    assert!(req.resource_names_subscribe.is_empty());
    assert_eq!(req.resource_names_unsubscribe, ["y", "z"]);
    // The client does not delete on unsubscribe: the proxy asked, the proxy knows.
    assert_eq!(stores.endpoints.names(), ["x", "y"]);
}

#[tokio::test]
async fn reconnect_sends_initial_resource_versions_and_resubscribes() {
    let mut ads = FakeAds::start().await;
    let (client, stores, _task) = start_client(&ads, Protocol::Delta);
    ads.next_delta(type_url::CLUSTER).await;
    ads.next_delta(type_url::LISTENER).await;
    client
        .subscriptions()
        .set(type_url::ENDPOINT, names(["e1", "e2"]))
        .unwrap();
    ads.next_delta(type_url::ENDPOINT).await;

    ads.respond_delta(
        type_url::CLUSTER,
        "s1",
        "n1",
        [
            delta_resource("a", "3", cluster("a")),
            delta_resource("b", "5", cluster("b")),
            delta_resource("bad-x", "1", cluster("bad-x")),
        ],
        &[],
    );
    ads.next_delta(type_url::CLUSTER).await;
    ads.respond_delta(type_url::CLUSTER, "s2", "n2", [], &["b"]);
    ads.next_delta(type_url::CLUSTER).await;
    ads.respond_delta(
        type_url::ENDPOINT,
        "",
        "n3",
        [delta_resource("e1", "7", endpoints("e1"))],
        &[],
    );
    ads.next_delta(type_url::ENDPOINT).await;
    let before = (stores.clusters.snapshot(), stores.endpoints.snapshot());

    ads.stop().await;
    let mut conn = client.connection();
    tokio::time::timeout(
        Duration::from_secs(2),
        conn.wait_for(|c| matches!(c, ConnectionState::Disconnected { .. })),
    )
    .await
    .expect("disconnect noticed")
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (stores.clusters.snapshot(), stores.endpoints.snapshot()),
        before
    );

    ads.restart().await;
    ads.wait_for_streams(2).await;
    let cds = ads.next_request().await;
    assert_eq!(cds.stream, 2);
    let cds = cds.request.delta();
    assert_eq!(cds.type_url, type_url::CLUSTER);
    assert!(cds.node.is_some());
    assert!(cds.resource_names_subscribe.is_empty(), "still a wildcard");
    // Accepted versions only: "b" was removed, "bad-x" was refused.
    assert_eq!(cds.initial_resource_versions, versions([("a", "3")]));
    let eds = ads.next_delta(type_url::ENDPOINT).await;
    assert_eq!(eds.resource_names_subscribe, ["e1", "e2"]);
    assert_eq!(eds.initial_resource_versions, versions([("e1", "7")]));
    assert_eq!(eds.response_nonce, "");

    ads.respond_delta(
        type_url::CLUSTER,
        "s3",
        "m1",
        [delta_resource("c", "1", cluster("c"))],
        &[],
    );
    assert_eq!(ads.next_delta(type_url::CLUSTER).await.response_nonce, "m1");
    assert_eq!(stores.clusters.names(), ["a", "c"]);
    assert_eq!(client.stats().streams, 2);
}
