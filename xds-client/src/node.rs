//! Node identity, shaped the way Istio sidecars and gateways present themselves to istiod.
//!
//! istiod reads the proxy type, IP, pod and namespace from `Node.id`
//! (`sidecar~10.0.0.1~reviews-v1-abc.default~default.svc.cluster.local`) and everything
//! else (labels, cluster ID, interception mode, ports...) from `Node.metadata`.
//! [`NodeSettings`] holds those facts; [`NodeSettings::from_env`] reads them the way
//! istio-agent does: `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`, and every
//! `ISTIO_META_<KEY>` / `ISTIO_METAJSON_<KEY>` variable as metadata key `<KEY>`.
//!
//! Values of `ISTIO_METAJSON_*` are JSON. Values of `ISTIO_META_*` stay strings unless they
//! are a JSON object (`{...}`, e.g. `LABELS`): istiod decodes fields such as `POD_PORTS` from
//! a string holding JSON, so arrays and scalars must not be expanded.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};

/// `ISTIO_META_<KEY>=value`: string metadata (or a JSON object).
pub const META_PREFIX: &str = "ISTIO_META_";
/// `ISTIO_METAJSON_<KEY>=json`: JSON metadata.
pub const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";

/// Errors building a node from the environment.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("environment variable {var}: invalid JSON: {source}")]
    Json {
        var: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("metadata LABELS must be a JSON object of strings, got {0}")]
    Labels(String),
}

/// The first segment of the node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyType {
    #[default]
    Sidecar,
    /// Ingress/egress gateways.
    Router,
}

impl ProxyType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyType::Sidecar => "sidecar",
            ProxyType::Router => "router",
        }
    }
}

/// Everything that goes into the [`Node`] sent on the first request of each stream.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    pub proxy_type: ProxyType,
    /// The pod IP (istio-agent's `INSTANCE_IP`).
    pub ip: String,
    pub pod_name: String,
    pub namespace: String,
    /// Cluster DNS domain, `cluster.local` by default.
    pub dns_domain: String,
    /// `Node.cluster`; default `<app label>.<namespace>`, else `istio-proxy`.
    pub cluster: Option<String>,
    /// Pod labels, sent as the `LABELS` struct.
    pub labels: BTreeMap<String, String>,
    pub istio_version: String,
    /// `CLUSTER_ID`, `Kubernetes` by default.
    pub cluster_id: String,
    /// `INTERCEPTION_MODE`, `REDIRECT` by default.
    pub interception_mode: String,
    /// Any other metadata (`POD_PORTS`, `MESH_ID`, `SERVICE_ACCOUNT`...). Typed fields above
    /// win over entries of the same key here.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// `Node.user_agent_version`; the proxy sets its own version.
    pub user_agent_version: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            proxy_type: ProxyType::Sidecar,
            ip: String::new(),
            pod_name: String::new(),
            namespace: String::new(),
            dns_domain: "cluster.local".into(),
            cluster: None,
            labels: BTreeMap::new(),
            istio_version: String::new(),
            cluster_id: "Kubernetes".into(),
            interception_mode: "REDIRECT".into(),
            metadata: BTreeMap::new(),
            user_agent_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

impl NodeSettings {
    /// Reads the process environment (see the module docs).
    pub fn from_env() -> Result<Self, NodeError> {
        Self::from_vars(std::env::vars())
    }

    /// Like [`from_env`](Self::from_env) over explicit `(name, value)` pairs.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, NodeError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut s = NodeSettings::default();
        for (k, v) in vars {
            let (name, value) = (k.as_ref(), v.as_ref());
            match name {
                "POD_NAME" => s.pod_name = value.into(),
                "POD_NAMESPACE" => s.namespace = value.into(),
                "INSTANCE_IP" => s.ip = value.into(),
                _ => {}
            }
            let parsed = if let Some(key) = name.strip_prefix(META_JSON_PREFIX) {
                let json = serde_json::from_str(value).map_err(|source| NodeError::Json {
                    var: name.into(),
                    source,
                })?;
                Some((key, json))
            } else if let Some(key) = name.strip_prefix(META_PREFIX) {
                let json = if value.trim_start().starts_with('{') {
                    serde_json::from_str(value).map_err(|source| NodeError::Json {
                        var: name.into(),
                        source,
                    })?
                } else {
                    serde_json::Value::String(value.into())
                };
                Some((key, json))
            } else {
                None
            };
            let Some((key, json)) = parsed else { continue };
            match (key, json) {
                ("LABELS", serde_json::Value::Object(map)) => {
                    for (k, v) in map {
                        let serde_json::Value::String(v) = v else {
                            return Err(NodeError::Labels(format!("{k}={v}")));
                        };
                        s.labels.insert(k, v);
                    }
                }
                ("LABELS", other) => return Err(NodeError::Labels(other.to_string())),
                ("ISTIO_VERSION", serde_json::Value::String(v)) => s.istio_version = v,
                ("CLUSTER_ID", serde_json::Value::String(v)) => s.cluster_id = v,
                ("INTERCEPTION_MODE", serde_json::Value::String(v)) => s.interception_mode = v,
                ("NAME", serde_json::Value::String(v)) if s.pod_name.is_empty() => s.pod_name = v,
                ("NAMESPACE", serde_json::Value::String(v)) if s.namespace.is_empty() => {
                    s.namespace = v
                }
                (key, json) => {
                    s.metadata.insert(key.to_owned(), json);
                }
            }
        }
        Ok(s)
    }

    /// `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`.
    pub fn node_id(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}.svc.{}",
            self.proxy_type.as_str(),
            self.ip,
            self.pod_name,
            self.namespace,
            self.namespace,
            self.dns_domain
        )
    }

    /// `Node.cluster` as istio-agent derives it when not set explicitly.
    pub fn service_cluster(&self) -> String {
        if let Some(c) = &self.cluster {
            return c.clone();
        }
        match self.labels.get("app") {
            Some(app) if !self.namespace.is_empty() => format!("{app}.{}", self.namespace),
            _ => "istio-proxy".into(),
        }
    }

    /// The metadata map, typed fields included.
    pub fn metadata_json(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = self.metadata.clone();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.into(), serde_json::Value::String(v.into()));
            }
        };
        put("NAME", &self.pod_name);
        put("NAMESPACE", &self.namespace);
        put("ISTIO_VERSION", &self.istio_version);
        put("CLUSTER_ID", &self.cluster_id);
        put("INTERCEPTION_MODE", &self.interception_mode);
        put("INSTANCE_IPS", &self.ip);
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        m.insert("LABELS".into(), serde_json::Value::Object(labels));
        m
    }

    /// The [`Node`] to send.
    pub fn build(&self) -> Node {
        Node {
            id: self.node_id(),
            cluster: self.service_cluster(),
            metadata: Some(Struct {
                fields: self
                    .metadata_json()
                    .iter()
                    .map(|(k, v)| (k.clone(), json_to_value(v)))
                    .collect(),
            }),
            user_agent_name: "sluice".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                self.user_agent_version.clone(),
            )),
            ..Default::default()
        }
    }
}

/// JSON to `google.protobuf.Value` (numbers become doubles, as in proto3 JSON).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(v: &Value) -> &str {
        match &v.kind {
            Some(Kind::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn node_from_istio_agent_environment() {
        let pod_ports = r#"[{"name":"http","containerPort":9080,"protocol":"TCP"}]"#;
        let s = NodeSettings::from_vars([
            ("POD_NAME", "reviews-v1-abc"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "10.1.2.3"),
            ("ISTIO_META_ISTIO_VERSION", "1.24.0"),
            ("ISTIO_META_CLUSTER_ID", "east"),
            ("ISTIO_META_POD_PORTS", pod_ports),
            ("ISTIO_META_MESH_ID", "mesh1"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
            ("ISTIO_METAJSON_EXTRA", r#"{"a":[1,true]}"#),
            ("PATH", "/usr/bin"),
        ])
        .unwrap();
        let node = s.build();
        assert_eq!(
            node.id,
            "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.bookinfo");
        assert_eq!(node.user_agent_name, "sluice");
        let md = node.metadata.unwrap().fields;
        assert_eq!(string(&md["NAMESPACE"]), "bookinfo");
        assert_eq!(string(&md["NAME"]), "reviews-v1-abc");
        assert_eq!(string(&md["ISTIO_VERSION"]), "1.24.0");
        assert_eq!(string(&md["CLUSTER_ID"]), "east");
        assert_eq!(string(&md["INTERCEPTION_MODE"]), "REDIRECT");
        assert_eq!(string(&md["MESH_ID"]), "mesh1");
        // istiod decodes POD_PORTS from a JSON string: it must stay one.
        assert_eq!(string(&md["POD_PORTS"]), pod_ports);
        let Some(Kind::StructValue(labels)) = &md["LABELS"].kind else {
            panic!("LABELS not a struct")
        };
        assert_eq!(string(&labels.fields["app"]), "reviews");
        let Some(Kind::StructValue(extra)) = &md["EXTRA"].kind else {
            panic!("EXTRA not a struct")
        };
        let Some(Kind::ListValue(list)) = &extra.fields["a"].kind else {
            panic!("EXTRA.a not a list")
        };
        assert_eq!(list.values[0].kind, Some(Kind::NumberValue(1.0)));
        assert_eq!(list.values[1].kind, Some(Kind::BoolValue(true)));
    }

    #[test]
    fn router_id_and_errors() {
        let s = NodeSettings {
            proxy_type: ProxyType::Router,
            ip: "10.0.0.9".into(),
            pod_name: "istio-ingressgateway-1".into(),
            namespace: "istio-system".into(),
            ..Default::default()
        };
        assert_eq!(
            s.node_id(),
            "router~10.0.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(s.service_cluster(), "istio-proxy");
        let err = NodeSettings::from_vars([("ISTIO_METAJSON_X", "{nope")]).unwrap_err();
        assert!(err.to_string().contains("ISTIO_METAJSON_X"), "{err}");
        let err = NodeSettings::from_vars([("ISTIO_META_LABELS", r#"{"a":1}"#)]).unwrap_err();
        assert!(matches!(err, NodeError::Labels(_)), "{err}");
    }
}
