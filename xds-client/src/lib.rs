//! Envoy xDS v3 client: Aggregated Discovery Service over gRPC, state of the world and delta.
//!
//! The crate knows nothing of the proxy. The proxy registers one typed [`Handler`] per
//! resource type; the client decodes resources, ACKs and NACKs per the xDS protocol,
//! subscribes (wildcard for Listener/Cluster, named for the rest via [`Subscriptions`]),
//! and reconnects with back-off, keeping versions so the control plane can resume.
//!
//! ```no_run
//! use std::collections::BTreeSet;
//! use envoy_types::pb::envoy::config::listener::v3::Listener;
//! use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
//! use xds_client::{type_url, Config, NodeSettings, Rejected, Update, XdsClient};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let node = NodeSettings::from_env()?.build();
//! let (client, task) = XdsClient::builder(Config::new("http://istiod.istio-system.svc:15010", node))
//!     .handler(|update: Update<Listener>| {
//!         let mut rejected = Vec::new();
//!         for listener in &update.updated {
//!             if listener.message.address.is_none() {
//!                 rejected.push(Rejected::new(&listener.name, "listener has no address"));
//!             }
//!         }
//!         if rejected.is_empty() { Ok(()) } else { Err(rejected) }
//!     })
//!     .handler(|_update: Update<RouteConfiguration>| Ok(()))
//!     .build();
//! tokio::spawn(task.run());
//!
//! // Listeners name their routes: ask for them (sent at once, replayed on reconnect).
//! client
//!     .subscriptions()
//!     .set(type_url::ROUTE, BTreeSet::from(["http.8080".to_string()]))?;
//! // Warming: wait for the first Listener response, then serve.
//! client.wait_ready(&[type_url::LISTENER]).await;
//! println!("{:?}", client.stats().types[type_url::LISTENER]);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
mod delta;
pub mod handler;
pub mod node;
mod sotw;
#[cfg(feature = "testing")]
pub mod testing;

pub use backoff::BackoffConfig;
pub use client::{
    AdsTask, Config, ConnectionState, Error, Interest, Protocol, Stats, Subscriptions, TypeStats,
    XdsClient, XdsClientBuilder,
};
pub use handler::{Handler, Rejected, Resource, Update, XdsResource};
pub use node::{NodeSettings, ProxyType};

/// The largest xDS response accepted (tonic's default is 4 MiB; a CDS or RDS response for a
/// 10,000-service mesh is larger). Envoy's own gRPC client has no limit by default.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Type URLs of the resource types the client subscribes to.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}
