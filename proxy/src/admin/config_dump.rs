//! `/config_dump` in Envoy's admin JSON shape (`envoy.admin.v3.ConfigDump`): bootstrap,
//! clusters, listeners, routes and (with `?include_eds`) endpoints, each resource with its
//! `version_info` and `last_updated`, static and dynamic apart; `?resource=` selects one field.

use std::time::SystemTime;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::{json, Map, Value};

use crate::config::proto::to_json;
use crate::state::{Meta, Snapshot};

const ADMIN: &str = "type.googleapis.com/envoy.admin.v3.";

/// RFC 3339 UTC timestamp with milliseconds, as Envoy prints `last_updated`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn typed(mut v: Value, type_url: &str) -> Value {
    if let Value::Object(m) = &mut v {
        let mut out = Map::new();
        out.insert("@type".into(), Value::String(type_url.into()));
        out.extend(std::mem::take(m));
        return Value::Object(out);
    }
    v
}

fn entry(key: &str, v: Value, type_url: &str, m: &Meta) -> Value {
    let mut o = Map::new();
    if !m.is_static {
        o.insert("version_info".into(), Value::String(m.version.clone()));
    }
    o.insert(key.into(), typed(v, type_url));
    o.insert(
        "last_updated".into(),
        Value::String(rfc3339(m.last_updated)),
    );
    Value::Object(o)
}

/// Builds the full dump. `include_eds` adds the endpoints dump.
pub fn dump(
    snap: &Snapshot,
    bootstrap: Option<&Bootstrap>,
    boot_time: SystemTime,
    include_eds: bool,
) -> Value {
    let mut configs = Vec::new();
    configs.push(json!({
        "@type": format!("{ADMIN}BootstrapConfigDump"),
        "bootstrap": bootstrap.map(to_json).unwrap_or(json!({})),
        "last_updated": rfc3339(boot_time),
    }));

    let (mut sc, mut dc) = (Vec::new(), Vec::new());
    let mut cds_version = String::new();
    for (c, m) in snap.clusters.values() {
        let v = entry(
            "cluster",
            to_json(&c.cfg.proto()),
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            m,
        );
        if m.is_static {
            sc.push(v);
        } else {
            cds_version = m.version.clone();
            dc.push(v);
        }
    }
    configs.push(json!({
        "@type": format!("{ADMIN}ClustersConfigDump"),
        "version_info": cds_version,
        "static_clusters": sc,
        "dynamic_active_clusters": dc,
    }));

    if include_eds {
        let (mut se, mut de) = (Vec::new(), Vec::new());
        for (c, m) in snap.clusters.values() {
            let la = c.endpoint_assignment();
            let key = &c.cfg.eds_service_name;
            match (c.cfg.discovery, snap.endpoint_meta.get(key)) {
                (crate::model::cluster::Discovery::Eds, Some(em)) => de.push(entry(
                    "endpoint_config",
                    to_json(&la),
                    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                    em,
                )),
                _ => se.push(entry(
                    "endpoint_config",
                    to_json(&la),
                    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                    &Meta {
                        is_static: true,
                        ..m.clone()
                    },
                )),
            }
        }
        configs.push(json!({
            "@type": format!("{ADMIN}EndpointsConfigDump"),
            "static_endpoint_configs": se,
            "dynamic_endpoint_configs": de,
        }));
    }

    let (mut sl, mut dl) = (Vec::new(), Vec::new());
    let mut lds_version = String::new();
    for (l, m) in snap.listeners.values() {
        let lj = to_json(&l.proto());
        if m.is_static {
            sl.push(entry(
                "listener",
                lj,
                "type.googleapis.com/envoy.config.listener.v3.Listener",
                m,
            ));
        } else {
            lds_version = m.version.clone();
            dl.push(json!({
                "name": l.name,
                "active_state": entry("listener", lj, "type.googleapis.com/envoy.config.listener.v3.Listener", m),
            }));
        }
    }
    configs.push(json!({
        "@type": format!("{ADMIN}ListenersConfigDump"),
        "version_info": lds_version,
        "static_listeners": sl,
        "dynamic_listeners": dl,
    }));

    let (mut sr, mut dr) = (Vec::new(), Vec::new());
    for r in snap.routes.values() {
        let v = entry(
            "route_config",
            to_json(&r.proto()),
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            &r.meta,
        );
        if r.meta.is_static {
            sr.push(v);
        } else {
            dr.push(v);
        }
    }
    configs.push(json!({
        "@type": format!("{ADMIN}RoutesConfigDump"),
        "static_route_configs": sr,
        "dynamic_route_configs": dr,
    }));
    json!({ "configs": configs })
}

/// `?resource=FIELD`: the items of that repeated field across the dump, each typed with its
/// admin message type, as Envoy returns them.
pub fn select_resource(full: &Value, field: &str) -> Option<Value> {
    let item_type = match field {
        "static_clusters" => "ClustersConfigDump.StaticCluster",
        "dynamic_active_clusters" | "dynamic_warming_clusters" => {
            "ClustersConfigDump.DynamicCluster"
        }
        "static_listeners" => "ListenersConfigDump.StaticListener",
        "dynamic_listeners" => "ListenersConfigDump.DynamicListener",
        "static_route_configs" => "RoutesConfigDump.StaticRouteConfig",
        "dynamic_route_configs" => "RoutesConfigDump.DynamicRouteConfig",
        "static_endpoint_configs" => "EndpointsConfigDump.StaticEndpointConfig",
        "dynamic_endpoint_configs" => "EndpointsConfigDump.DynamicEndpointConfig",
        _ => return None,
    };
    let mut out = Vec::new();
    for c in full["configs"].as_array()? {
        if let Some(items) = c.get(field).and_then(|v| v.as_array()) {
            for i in items {
                out.push(typed(i.clone(), &format!("{ADMIN}{item_type}")));
            }
        }
    }
    Some(json!({ "configs": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
