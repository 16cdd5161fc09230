//! Sidecar rules: egress hosts as `namespace/host`, the selector, and what Sluice leaves out.

use super::names::{self, check_wildcard_domain};
use super::Findings;
use crate::istio::model::SidecarSpec;

pub(super) fn check(f: &mut Findings, sc: &SidecarSpec) {
    if let Some(sel) = &sc.workload_selector {
        f.labels("spec.workloadSelector.labels", &sel.labels);
    }
    for (i, e) in sc.egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        if e.hosts.is_empty() {
            f.error(format!("{p}.hosts"), "at least one host is required");
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let hp = format!("{p}.hosts[{j}]");
            let Some((ns, host)) = h.split_once('/').filter(|_| h.matches('/').count() == 1) else {
                f.error(&hp, format!("{h:?} should have the form namespace/host"));
                continue;
            };
            let ns = ns.strip_prefix('~').unwrap_or(ns);
            if !(ns.is_empty() || ns == "*" || ns == "." || names::is_label(ns)) {
                f.error(
                    &hp,
                    format!("{ns:?} is neither `*`, `.`, `~` nor a namespace"),
                );
            }
            if host != "*" {
                f.check(&hp, check_wildcard_domain(host));
            }
        }
        if e.port.is_some() || e.bind.is_some() || e.capture_mode.is_some() {
            f.warn(
                &p,
                "port, bind and captureMode of egress listeners are not implemented: the hosts apply to every port",
            );
        }
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        f.error(
            "spec",
            "a Sidecar needs egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }
    let portless: Vec<usize> = (0..sc.egress.len())
        .filter(|i| sc.egress[*i].port.is_none())
        .collect();
    if portless.len() > 1 || portless.first().is_some_and(|i| *i + 1 != sc.egress.len()) {
        f.error(
            "spec.egress",
            "only one egress listener may leave out the port, and it must be the last",
        );
    }
    if !sc.ingress.is_empty() || sc.inbound_connection_pool.is_some() {
        f.warn(
            "spec.ingress",
            "ingress listeners and inboundConnectionPool are not implemented; ignored",
        );
    }
    if let Some(p) = &sc.outbound_traffic_policy {
        if !matches!(p.mode.as_str(), "" | "ALLOW_ANY" | "REGISTRY_ONLY") {
            f.error(
                "spec.outboundTrafficPolicy.mode",
                format!("{:?} is not supported (ALLOW_ANY or REGISTRY_ONLY)", p.mode),
            );
        }
        if p.egress_proxy.is_some() {
            f.warn(
                "spec.outboundTrafficPolicy.egressProxy",
                "egressProxy is not implemented; unknown traffic is passed through",
            );
        }
    }
}
