//! Shared test helpers: a recording handler and a client with fast back-off.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use xds_client::testing::{any, FakeAds};
use xds_client::{
    BackoffConfig, Config, NodeSettings, Protocol, Rejected, Update, XdsClient, XdsResource,
};

/// What a handler holds, like a proxy would: name → version, plus every update seen.
/// Resources whose name starts with `bad` are refused.
pub struct Store<T> {
    pub resources: Mutex<BTreeMap<String, String>>,
    pub updates: Mutex<Vec<Update<T>>>,
}

impl<T: XdsResource + Clone> Store<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Store {
            resources: Mutex::default(),
            updates: Mutex::default(),
        })
    }

    pub fn handle(&self, update: Update<T>) -> Result<(), Vec<Rejected>> {
        let mut rejected = Vec::new();
        let mut resources = self.resources.lock().unwrap();
        for name in &update.removed {
            resources.remove(name);
        }
        for r in &update.updated {
            if r.name.starts_with("bad") {
                rejected.push(Rejected::new(
                    &r.name,
                    "names starting with `bad` are refused",
                ));
            } else {
                resources.insert(r.name.clone(), r.version.clone());
            }
        }
        drop(resources);
        self.updates.lock().unwrap().push(update);
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.resources.lock().unwrap().keys().cloned().collect()
    }

    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.resources.lock().unwrap().clone()
    }

    pub fn update_count(&self) -> usize {
        self.updates.lock().unwrap().len()
    }

    pub fn last_update(&self) -> Update<T> {
        self.updates
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no update yet")
    }
}

pub struct Stores {
    pub listeners: Arc<Store<Listener>>,
    pub clusters: Arc<Store<Cluster>>,
    pub routes: Arc<Store<RouteConfiguration>>,
    pub endpoints: Arc<Store<ClusterLoadAssignment>>,
}

/// A client for `ads` with handlers for LDS, CDS, RDS and EDS, already running.
pub fn start_client(
    ads: &FakeAds,
    protocol: Protocol,
) -> (XdsClient, Stores, tokio::task::JoinHandle<()>) {
    let stores = Stores {
        listeners: Store::new(),
        clusters: Store::new(),
        routes: Store::new(),
        endpoints: Store::new(),
    };
    let node = NodeSettings {
        ip: "10.0.0.1".into(),
        pod_name: "app-1".into(),
        namespace: "default".into(),
        ..Default::default()
    }
    .build();
    let config = Config::new(ads.uri(), node)
        .protocol(protocol)
        .backoff(BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        });
    let (l, c, r, e) = (
        stores.listeners.clone(),
        stores.clusters.clone(),
        stores.routes.clone(),
        stores.endpoints.clone(),
    );
    let (client, task) = XdsClient::builder(config)
        .handler(move |u| l.handle(u))
        .handler(move |u| c.handle(u))
        .handler(move |u| r.handle(u))
        .handler(move |u| e.handle(u))
        .build();
    let join = tokio::spawn(async move {
        task.run().await.expect("client task failed");
    });
    (client, stores, join)
}

pub fn listener(name: &str) -> Any {
    any(Listener {
        name: name.into(),
        ..Default::default()
    })
}

pub fn cluster(name: &str) -> Any {
    any(Cluster {
        name: name.into(),
        ..Default::default()
    })
}

pub fn route(name: &str) -> Any {
    any(RouteConfiguration {
        name: name.into(),
        ..Default::default()
    })
}

pub fn endpoints(name: &str) -> Any {
    any(ClusterLoadAssignment {
        cluster_name: name.into(),
        ..Default::default()
    })
}

pub fn names<const N: usize>(names: [&str; N]) -> std::collections::BTreeSet<String> {
    names.into_iter().map(String::from).collect()
}

/// Polls `f` until true (2 s), for state the client changes asynchronously.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
