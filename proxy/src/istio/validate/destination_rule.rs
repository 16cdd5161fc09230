//! DestinationRule rules: host, subsets, and each traffic policy (load balancer, connection
//! pool, outlier detection, client TLS, port-level settings).

use serde_yaml_ng::Value;

use super::names::{self, check_wildcard_domain};
use super::Findings;
use crate::istio::model::{
    ConnectionPool, DestinationRuleSpec, LoadBalancer, OutlierDetection, TrafficPolicy,
};

pub(super) fn check(f: &mut Findings, dr: &DestinationRuleSpec) {
    f.check("spec.host", check_wildcard_domain(&dr.host));
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            f.error(format!("{p}.name"), "a subset needs a name");
        } else if !names::is_label(&s.name) {
            f.error(
                format!("{p}.name"),
                format!("{:?} is not a valid subset name (a DNS-1123 label)", s.name),
            );
        }
        if !seen.insert(&s.name) {
            f.error(
                format!("{p}.name"),
                format!("duplicate subset {:?}", s.name),
            );
        }
        f.labels(&format!("{p}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(f, &format!("{p}.trafficPolicy"), tp);
        }
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(f, "spec.trafficPolicy", tp);
    }
    f.export_to("spec.exportTo", &dr.export_to, false);
    if let Some(sel) = &dr.workload_selector {
        let p = "spec.workloadSelector.matchLabels";
        f.selector(p, p, &sel.match_labels);
        let ns = f.o.namespace.clone();
        if dr.export_to.len() > 1 || dr.export_to.iter().any(|e| e != "." && *e != ns) {
            f.error(
                "spec.exportTo",
                "a DestinationRule with a workloadSelector can be exported only to its own namespace",
            );
        }
    }
}

fn traffic_policy(f: &mut Findings, p: &str, tp: &TrafficPolicy) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        f.error(p, "a traffic policy needs at least one setting");
    }
    if tp.retry_budget.is_some() {
        f.warn(
            format!("{p}.retryBudget"),
            "retry budgets are not implemented; ignored",
        );
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        f.error(p, "tunnel and proxyProtocol cannot be used together");
    }
    policy_parts(
        f,
        p,
        &tp.load_balancer,
        &tp.connection_pool,
        &tp.outlier_detection,
        &tp.tls,
    );
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{p}.portLevelSettings[{i}]");
        if pl.port.is_none() {
            f.error(format!("{pp}.port"), "a port is required");
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            f.error(&pp, "a port's traffic policy needs at least one setting");
        }
        policy_parts(
            f,
            &pp,
            &pl.load_balancer,
            &pl.connection_pool,
            &pl.outlier_detection,
            &pl.tls,
        );
    }
}

fn policy_parts(
    f: &mut Findings,
    p: &str,
    lb: &Option<LoadBalancer>,
    cp: &Option<ConnectionPool>,
    od: &Option<OutlierDetection>,
    tls: &Option<Value>,
) {
    if let Some(cp) = cp {
        let cpp = format!("{p}.connectionPool");
        if cp.tcp.is_none() && cp.http.is_none() {
            f.error(&cpp, "a connection pool needs tcp or http settings");
        }
        if let Some(t) = &cp.tcp {
            f.duration(format!("{cpp}.tcp.connectTimeout"), &t.connect_timeout);
            f.duration(
                format!("{cpp}.tcp.maxConnectionDuration"),
                &t.max_connection_duration,
            );
            if t.idle_timeout.as_deref().and_then(super::parse_duration)
                != Some(std::time::Duration::ZERO)
            {
                f.duration(format!("{cpp}.tcp.idleTimeout"), &t.idle_timeout);
            }
            if let Some(k) = &t.tcp_keepalive {
                f.duration(format!("{cpp}.tcp.tcpKeepalive.time"), &k.time);
                f.duration(format!("{cpp}.tcp.tcpKeepalive.interval"), &k.interval);
            }
        }
        if let Some(h) = &cp.http {
            f.duration(format!("{cpp}.http.idleTimeout"), &h.idle_timeout);
            if h.h2_upgrade_policy.as_deref() == Some("UPGRADE")
                && h.use_client_protocol == Some(true)
            {
                f.error(
                    format!("{cpp}.http"),
                    "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE",
                );
            }
        }
    }
    if let Some(od) = od {
        let op = format!("{p}.outlierDetection");
        f.duration(format!("{op}.interval"), &od.interval);
        f.duration(format!("{op}.baseEjectionTime"), &od.base_ejection_time);
        if od.consecutive_errors.is_some_and(|n| n != 0) {
            f.warn(
                format!("{op}.consecutiveErrors"),
                "consecutiveErrors is deprecated; use consecutive5xxErrors or consecutiveGatewayErrors",
            );
        }
        if od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
            && od.split_external_local_origin_errors != Some(true)
        {
            f.error(
                format!("{op}.consecutiveLocalOriginFailures"),
                "needs splitExternalLocalOriginErrors: true",
            );
        }
        for (name, v) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(v) = v.filter(|v| *v > 100) {
                f.error(format!("{op}.{name}"), format!("{v} is outside 0-100"));
            }
        }
    }
    if let Some(lb) = lb {
        load_balancer(f, &format!("{p}.loadBalancer"), lb);
    }
    if let Some(t) = tls {
        client_tls(f, &format!("{p}.tls"), t);
    }
}

fn load_balancer(f: &mut Findings, p: &str, lb: &LoadBalancer) {
    if let Some(s) = &lb.simple {
        if !matches!(
            s.as_str(),
            "UNSPECIFIED"
                | "ROUND_ROBIN"
                | "LEAST_CONN"
                | "LEAST_REQUEST"
                | "RANDOM"
                | "PASSTHROUGH"
        ) {
            f.error(
                format!("{p}.simple"),
                format!("unknown load balancer {s:?}"),
            );
        }
    }
    if let Some(ch) = &lb.consistent_hash {
        let hp = format!("{p}.consistentHash");
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                f.error(format!("{hp}.httpCookie.name"), "a cookie name is required");
            }
        }
        if ch.minimum_ring_size.is_some_and(|n| n != 0) {
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                f.error(
                    format!("{hp}.minimumRingSize"),
                    "minimumRingSize cannot be combined with ringHash or maglev",
                );
            } else {
                f.warn(
                    format!("{hp}.minimumRingSize"),
                    "minimumRingSize is deprecated; use ringHash.minimumRingSize",
                );
            }
        }
        if let Some(m) = &ch.maglev {
            let n = m.table_size.unwrap_or(0);
            if n == 0 || n >= 5_000_011 || !is_prime(n) {
                f.error(
                    format!("{hp}.maglev.tableSize"),
                    format!("{n} is not a prime below 5000011"),
                );
            }
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality(f, &format!("{p}.localityLbSetting"), l);
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// `localityLbSetting`: distribute or failover, weights that sum to 100, well-formed
/// localities.
fn locality(f: &mut Findings, p: &str, l: &Value) {
    let distribute = l.get("distribute").and_then(Value::as_sequence);
    let failover = l.get("failover").and_then(Value::as_sequence);
    if distribute.is_some_and(|d| !d.is_empty()) && failover.is_some_and(|d| !d.is_empty()) {
        f.error(p, "distribute and failover cannot be used together");
        return;
    }
    for (i, d) in distribute.into_iter().flatten().enumerate() {
        let dp = format!("{p}.distribute[{i}]");
        if let Some(from) = d.get("from").and_then(Value::as_str) {
            locality_name(f, &format!("{dp}.from"), from);
        }
        let mut sum = 0u64;
        if let Some(to) = d.get("to").and_then(Value::as_mapping) {
            for (k, w) in to {
                let w = w.as_u64().unwrap_or(0);
                if !(1..=100).contains(&w) {
                    f.error(format!("{dp}.to"), format!("weight {w} is outside 1-100"));
                }
                sum += w;
                if let Some(k) = k.as_str() {
                    locality_name(f, &format!("{dp}.to"), k);
                }
            }
        }
        if sum != 100 {
            f.error(
                format!("{dp}.to"),
                format!("the weights sum to {sum}, not 100"),
            );
        }
    }
    for (i, fo) in failover.into_iter().flatten().enumerate() {
        let fp = format!("{p}.failover[{i}]");
        let from = fo.get("from").and_then(Value::as_str).unwrap_or("");
        let to = fo.get("to").and_then(Value::as_str).unwrap_or("");
        if from == to {
            f.error(&fp, "failover must go to a different region");
        }
        if from.contains('/') || to.contains('/') {
            f.error(&fp, "failover names regions only (no `/`)");
        }
        if from.contains('*') || to.contains('*') {
            f.error(&fp, "failover regions cannot contain `*`");
        }
    }
}

fn locality_name(f: &mut Findings, field: &str, l: &str) {
    let stars = l.matches('*').count();
    if stars > 1 || (stars == 1 && !l.ends_with('*')) {
        f.error(
            field,
            format!("locality {l:?}: one `*` at most, and only at the end"),
        );
    }
    if l.split('/').any(str::is_empty) {
        f.error(
            field,
            format!("locality {l:?} has an empty region, zone or subzone"),
        );
    }
}

/// Client TLS settings (`ClientTLSSettings`).
fn client_tls(f: &mut Findings, p: &str, t: &Value) {
    let s = |k: &str| t.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let mode = s("mode").unwrap_or("DISABLE");
    let credential = s("credentialName");
    if let Some(c) = credential.and_then(|c| c.strip_prefix("configmap://")) {
        let ns = f.o.namespace.clone();
        if c.split_once('/').is_none_or(|(n, _)| n != ns) {
            f.error(
                format!("{p}.credentialName"),
                format!("a configmap:// credential must name this namespace ({ns:?})"),
            );
        }
    }
    let has_sans = t
        .get("subjectAltNames")
        .and_then(Value::as_sequence)
        .is_some_and(|v| !v.is_empty());
    if t.get("insecureSkipVerify").and_then(Value::as_bool) == Some(true) {
        let conflict = match mode {
            "SIMPLE" => s("caCertificates").is_some() || credential.is_some() || has_sans,
            "MUTUAL" => s("caCertificates").is_some() || has_sans,
            _ => false,
        };
        if conflict {
            f.error(
                p,
                "insecureSkipVerify cannot be combined with caCertificates, subjectAltNames or (SIMPLE) credentialName",
            );
        }
    }
    if matches!(mode, "SIMPLE" | "MUTUAL") {
        let files = ["clientCertificate", "privateKey", "caCertificates", "caCrl"];
        if credential.is_some() {
            if files.iter().any(|k| s(k).is_some()) {
                f.error(
                    p,
                    "with credentialName, certificates, keys and CRLs come from the credential",
                );
            }
        } else if mode == "MUTUAL" {
            if s("clientCertificate").is_none() {
                f.error(
                    format!("{p}.clientCertificate"),
                    "MUTUAL needs a client certificate",
                );
            }
            if s("privateKey").is_none() {
                f.error(format!("{p}.privateKey"), "MUTUAL needs a private key");
            }
        }
    }
    if !matches!(mode, "DISABLE" | "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL") {
        f.error(format!("{p}.mode"), format!("unknown TLS mode {mode:?}"));
    } else {
        f.info(
            p,
            "TLS settings are recorded; Sluice connects in plaintext for now",
        );
    }
}
