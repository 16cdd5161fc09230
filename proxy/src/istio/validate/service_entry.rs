//! ServiceEntry rules: hosts, addresses, ports, and the endpoints each resolution allows.

use std::collections::BTreeSet;

use super::names::{self, check_port, check_wildcard_domain, is_ip};
use super::Findings;
use crate::istio::model::ServiceEntrySpec;

pub(super) fn check(f: &mut Findings, se: &ServiceEntrySpec) {
    let res = se.resolution.as_deref().unwrap_or("NONE");
    if let Some(sel) = &se.workload_selector {
        // istiod stops at a bad selector: nothing else is reported.
        if !f.selector(
            "spec.workloadSelector.labels",
            "spec.workloadSelector",
            &sel.labels,
        ) {
            return;
        }
        if !se.endpoints.is_empty() {
            f.error(
                "spec.workloadSelector",
                "workloadSelector and endpoints cannot be used together",
            );
        }
        if res == "NONE" {
            f.warn(
                "spec.workloadSelector",
                "a workloadSelector has no effect with resolution NONE",
            );
        }
    }
    if se.hosts.is_empty() {
        f.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" {
            f.error(&p, "`*` is not a ServiceEntry host");
        } else if f.check(&p, check_wildcard_domain(h)).is_some() && names::is_partial_wildcard(h) {
            f.warn(
                &p,
                format!("{h:?} is a partial wildcard; only `*.domain` is matched"),
            );
        }
    }
    for (i, a) in se.addresses.iter().enumerate() {
        let p = format!("spec.addresses[{i}]");
        if f.check(&p, names::check_ip_or_cidr(a)).is_some()
            && a.contains('/')
            && !matches!(res, "NONE" | "STATIC")
        {
            f.error(&p, "CIDR addresses need resolution NONE or STATIC");
        }
    }
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if !names::is_label(&port.name) {
            f.error(
                format!("{p}.name"),
                format!(
                    "{:?} is not a valid port name (a DNS-1123 label)",
                    port.name
                ),
            );
        } else if !port_names.insert(&port.name) {
            f.error(
                format!("{p}.name"),
                format!("port name {:?} is used twice", port.name),
            );
        }
        if !port_numbers.insert(port.number) {
            f.error(
                format!("{p}.number"),
                format!("port {} is listed twice", port.number),
            );
        }
        f.check(format!("{p}.number"), check_port(port.number));
        if let Some(t) = port.target_port.filter(|t| *t != 0) {
            f.check(format!("{p}.targetPort"), check_port(t));
        }
        if let Some(proto) = &port.protocol {
            if !names::is_protocol(proto) {
                f.error(
                    format!("{p}.protocol"),
                    format!("unknown protocol {proto:?}"),
                );
            }
        }
    }
    if se.ports.is_empty() {
        f.info(
            "spec.ports",
            "no ports: the ServiceEntry makes no listeners or clusters",
        );
    }
    match res {
        "NONE" => {
            if !se.endpoints.is_empty() {
                f.error("spec.endpoints", "resolution NONE takes no endpoints");
            }
        }
        "STATIC" => {
            for (i, e) in se.endpoints.iter().enumerate() {
                let p = format!("spec.endpoints[{i}]");
                if e.address.is_empty() {
                    if e.network.is_some() {
                        f.warn(
                            format!("{p}.address"),
                            "no address (reached through its network's gateway)",
                        );
                    } else {
                        f.error(format!("{p}.address"), "an address is required");
                    }
                } else if let Some(path) = e.address.strip_prefix("unix://") {
                    if path.is_empty() {
                        f.error(format!("{p}.address"), "the socket path is empty");
                    } else if !(path.starts_with('/') && !path.ends_with('/')
                        || path.starts_with('@'))
                    {
                        f.error(
                            format!("{p}.address"),
                            format!("{path:?} is not an absolute path to a socket"),
                        );
                    }
                    if !e.ports.is_empty() {
                        f.error(
                            format!("{p}.ports"),
                            "a unix socket endpoint takes no ports",
                        );
                    }
                    if se.ports.len() != 1 {
                        f.error(
                            "spec.ports",
                            "unix socket endpoints need exactly one service port",
                        );
                    }
                } else if !is_ip(&e.address) {
                    f.error(
                        format!("{p}.address"),
                        format!("{:?} is not an IP address (resolution STATIC)", e.address),
                    );
                }
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            if se.endpoints.is_empty() {
                if let Some((i, h)) = se
                    .hosts
                    .iter()
                    .enumerate()
                    .find(|(_, h)| names::check_fqdn(h).is_err())
                {
                    f.error(
                        format!("spec.hosts[{i}]"),
                        format!("{h:?}: with resolution {res} and no endpoints, every host must be a name to resolve (no wildcard)"),
                    );
                }
            }
            if res == "DNS_ROUND_ROBIN" && se.endpoints.len() > 1 {
                f.error(
                    "spec.endpoints",
                    "resolution DNS_ROUND_ROBIN takes at most one endpoint",
                );
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                if !is_ip(&e.address) && names::check_fqdn(&e.address).is_err() {
                    f.error(
                        format!("spec.endpoints[{i}].address"),
                        format!("{:?} is neither a host name nor an IP address", e.address),
                    );
                }
            }
        }
        _ => f.error(
            "spec.resolution",
            format!("resolution {res:?} is not supported (NONE, STATIC, DNS, DNS_ROUND_ROBIN)"),
        ),
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        let p = format!("spec.endpoints[{i}]");
        for (name, number) in &e.ports {
            let pp = format!("{p}.ports.{name}");
            if !se.ports.iter().any(|sp| &sp.name == name) {
                f.error(&pp, "names no port of the ServiceEntry");
            }
            f.check(&pp, check_port(*number));
        }
        f.labels(&format!("{p}.labels"), &e.labels);
    }
    if res != "NONE" && se.hosts.len() > 1 {
        if let Some(port) = se.ports.iter().find(|p| {
            let proto = p.protocol.as_deref().unwrap_or("");
            !names::is_http_protocol(proto) && !names::is_tls_protocol(proto)
        }) {
            f.error(
                "spec.hosts",
                format!(
                    "several hosts with resolution {res} need HTTP or TLS ports; port {} is not",
                    port.number
                ),
            );
        }
    }
    f.export_to("spec.exportTo", &se.export_to, true);
}
