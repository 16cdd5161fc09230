//! Istio and Kubernetes YAML in, Envoy v3 resources out, named and shaped as istiod generates
//! them, so Sluice can run on a directory of Istio config with no control plane.
//!
//! - [`load`] reads files (multi-document, `kind: List`, API versions) into [`model`] objects,
//!   with [`validate`] messages naming file, resource and field;
//! - [`registry`] builds services, instances, hosts and VIPs;
//! - [`clusters`], [`routes`], [`listeners`] (sidecar) and [`gateway`] (router) generate the
//!   resources for one proxy [`Node`];
//! - [`run`] applies them in-process (`sluice run --config-dir`) and [`discovery`] serves them
//!   to other proxies over ADS (`sluice discovery`).

pub mod access_log;
pub mod clusters;
pub mod discovery;
pub mod gateway;
pub mod listeners;
pub mod load;
pub mod model;
pub mod registry;
pub mod routes;
pub mod run;
pub mod validate;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

pub use load::{load_path, LoadError, Loaded};
pub use registry::Registry;
pub use validate::{Level, Message};

/// The kind of proxy being configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Sidecar,
    /// A gateway (istiod's `router` node type).
    Router,
}

/// How traffic reaches a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interception {
    /// iptables redirects to 15001/15006; per-port listeners are not bound.
    #[default]
    Redirect,
    /// No redirection (Istio's `NONE` mode): per-port outbound listeners bind 127.0.0.1:PORT
    /// and applications connect to them directly.
    None,
}

/// The proxy identity the translation is for.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub role: Role,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<String>,
    pub interception: Interception,
    /// MeshConfig `accessLogFile` for this proxy (overrides the `istio` ConfigMap's).
    pub access_log_file: Option<String>,
    /// Node metadata `HTTP10` is `1`: its connection managers accept HTTP/1.0, as istiod
    /// sets `http_protocol_options.accept_http_10` for such proxies.
    pub http10: bool,
}

impl Node {
    /// A sidecar in `ns` with no labels.
    pub fn sidecar(ns: &str) -> Node {
        Node {
            role: Role::Sidecar,
            namespace: ns.to_string(),
            ..Default::default()
        }
    }
}

/// The generated Envoy resources, and what went wrong on the way.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Loader, registry and validation messages.
    pub messages: Vec<Message>,
    /// Resources that could not be generated (internal errors), with the reason.
    pub skipped: Vec<String>,
}

impl Resources {
    /// The resources as one JSON document (Envoy's JSON form), for `sluice translate`.
    pub fn to_json(&self) -> serde_json::Value {
        use crate::config::proto::to_json;
        let typed = |mut v: serde_json::Value, t: &str| {
            if let Some(o) = v.as_object_mut() {
                o.insert("@type".into(), format!("type.googleapis.com/{t}").into());
            }
            v
        };
        serde_json::json!({
            "listeners": self.listeners.iter().map(|l| typed(to_json(l), "envoy.config.listener.v3.Listener")).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(|r| typed(to_json(r), "envoy.config.route.v3.RouteConfiguration")).collect::<Vec<_>>(),
            "clusters": self.clusters.iter().map(|c| typed(to_json(c), "envoy.config.cluster.v3.Cluster")).collect::<Vec<_>>(),
            "endpoints": self.endpoints.iter().map(|e| typed(to_json(e), "envoy.config.endpoint.v3.ClusterLoadAssignment")).collect::<Vec<_>>(),
            "messages": self.messages.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|c| c.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfiguration> {
        self.routes.iter().find(|c| c.name == name)
    }
}

/// Loaded configuration: objects and load messages.
pub type Config = Loaded;

/// Decodes Envoy JSON into a typed proto; errors name the resource (a bug in translation).
pub(crate) fn pb<T: prost::Message + prost::Name + Default>(
    name: &str,
    v: serde_json::Value,
) -> Result<T, String> {
    crate::config::proto::decode_json_value::<T>(v).map_err(|e| {
        tracing::warn!(resource = name, error = %e, "generated resource does not decode");
        format!("{name}: {e}")
    })
}

/// Translates loaded configuration into the resources for `node`.
pub fn translate(cfg: &Config, node: &Node) -> Resources {
    let mut reg = Registry::build(&cfg.objects);
    reg.assign_auto_vips();
    if node.role == Role::Sidecar {
        reg.select_sidecar(&node.namespace, &node.labels);
    }
    let mut out = Resources {
        messages: cfg.messages.clone(),
        ..Default::default()
    };
    out.messages.extend(reg.messages.iter().cloned());
    out.messages
        .extend(validate::check_references(&reg, &reg.objects));
    clusters::build_outbound(&reg, node, &mut out);
    match node.role {
        Role::Sidecar => {
            let inbound = if node.interception == Interception::Redirect {
                clusters::build_inbound(&reg, node, &mut out)
            } else {
                Vec::new()
            };
            routes::build_sidecar(&reg, node, &mut out);
            listeners::build_sidecar(&reg, node, &inbound, &mut out);
        }
        Role::Router => gateway::build(&reg, node, &mut out),
    }
    if let Some(mesh) = access_log::settings(&reg, node) {
        access_log::apply(&mut out.listeners, &mesh);
    }
    if node.http10 {
        listeners::accept_http10(&mut out.listeners);
    }
    for s in &out.skipped {
        tracing::warn!(resource = %s, "skipped generated resource");
    }
    out
}

/// Loads `dir` and translates it for `node`.
pub fn translate_dir(dir: &std::path::Path, node: &Node) -> Result<Resources, LoadError> {
    let cfg = load_path(dir)?;
    Ok(translate(&cfg, node))
}

#[cfg(test)]
mod tests;
