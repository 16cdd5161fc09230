//! Gateway rules: the name, and each server's port, hosts, bind address and TLS settings.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use super::names::{self, check_port, check_wildcard_domain, is_ip};
use super::Findings;
use crate::istio::model::{GatewaySpec, Server};

pub(super) fn check(f: &mut Findings, g: &GatewaySpec) {
    let name = f.o.meta.name.clone();
    if !names::is_label(&name) {
        f.error(
            "metadata.name",
            format!("{name:?} is not a valid Gateway name (a DNS-1123 label: no dots)"),
        );
    }
    if g.servers.is_empty() {
        f.error("spec.servers", "at least one server is required");
    }
    let mut port_names = BTreeSet::new();
    for (i, s) in g.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        if !s.port.name.is_empty() && !port_names.insert(&s.port.name) {
            f.error(
                format!("{p}.port.name"),
                format!("port name {:?} is used by another server", s.port.name),
            );
        }
        server(f, &p, s);
    }
}

fn server(f: &mut Findings, p: &str, s: &Server) {
    if s.hosts.is_empty() {
        f.error(format!("{p}.hosts"), "at least one host is required");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        let hp = format!("{p}.hosts[{i}]");
        let host = match h.split_once('/') {
            Some((ns, host)) => {
                if ns.is_empty() || host.is_empty() {
                    f.error(&hp, "`namespace/host` needs both parts");
                    continue;
                }
                if !(ns == "*" || ns == "." || names::is_label(ns)) {
                    f.error(&hp, format!("{ns:?} is neither `*`, `.` nor a namespace"));
                }
                host
            }
            None => h.as_str(),
        };
        if host != "*" && !host.contains('.') {
            f.error(
                &hp,
                format!("{host:?} is a short name; gateway hosts must be fully qualified"),
            );
        } else if let Err(e) = check_wildcard_domain(host) {
            if !is_ip(host) {
                f.error(&hp, e);
            }
        } else if names::is_partial_wildcard(host) {
            f.error(
                &hp,
                format!("{host:?} is a partial wildcard; use `*.domain`"),
            );
        }
    }
    let port = &s.port;
    let proto = port.protocol.as_str();
    let unix = s.bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
    let proto_ok = !proto.is_empty() && names::is_protocol(proto);
    if !proto_ok {
        f.error(
            format!("{p}.port.protocol"),
            format!("unknown protocol {proto:?} (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, ...)"),
        );
    }
    if !(unix && port.number == 0) {
        f.check(format!("{p}.port.number"), check_port(port.number));
    }
    if port.target_port.is_some_and(|t| t > 0) {
        f.error(
            format!("{p}.port.targetPort"),
            "targetPort has no effect on a Gateway",
        );
    }
    if port.name.is_empty() {
        f.error(format!("{p}.port.name"), "a port name is required");
    }
    if let Some(b) = &s.bind {
        match b.strip_prefix("unix://") {
            Some(path) => {
                if path.is_empty() || !(path.starts_with('/') || path.starts_with('@')) {
                    f.error(
                        format!("{p}.bind"),
                        format!("{path:?} is not an absolute socket path"),
                    );
                }
                if port.number != 0 {
                    f.error(
                        format!("{p}.port.number"),
                        "a unix socket server takes port 0",
                    );
                }
            }
            None if !is_ip(b) => {
                f.error(format!("{p}.bind"), format!("{b:?} is not an IP address"))
            }
            None => {}
        }
    }
    let tls = s.tls.as_ref().filter(|t| !t.is_null());
    let text = |k: &str| {
        tls.and_then(|t| t.get(k))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let list = |k: &str| {
        tls.and_then(|t| t.get(k))
            .and_then(Value::as_sequence)
            .map_or(0, |v| v.len())
    };
    let mode = text("mode").unwrap_or("PASSTHROUGH");
    if proto_ok {
        let http = names::is_http_protocol(proto);
        match tls {
            None if names::is_tls_protocol(proto) => f.error(
                format!("{p}.tls"),
                format!("a {proto} server needs TLS settings"),
            ),
            Some(_) if http => {
                let certs = ["caCertificates", "privateKey", "serverCertificate"]
                    .iter()
                    .any(|k| text(k).is_some());
                if !matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH") || certs {
                    f.error(
                        format!("{p}.tls"),
                        "a plain-text HTTP server cannot terminate TLS (httpsRedirect is its only TLS setting)",
                    );
                }
            }
            Some(_) if !names::is_tls_protocol(proto) => f.error(
                format!("{p}.tls"),
                format!("a {proto} server cannot have TLS settings"),
            ),
            _ => {}
        }
        if !http
            && tls
                .and_then(|t| t.get("httpsRedirect"))
                .and_then(Value::as_bool)
                == Some(true)
        {
            f.warn(
                format!("{p}.tls.httpsRedirect"),
                "httpsRedirect applies to HTTP servers only",
            );
        }
    }
    if tls.is_none() {
        return;
    }
    let tp = format!("{p}.tls");
    let sources = [
        text("serverCertificate").is_some() && text("privateKey").is_some(),
        text("credentialName").is_some(),
        list("credentialNames") > 0,
        list("tlsCertificates") > 0,
    ];
    match mode {
        "ISTIO_MUTUAL" => {
            for k in [
                "serverCertificate",
                "privateKey",
                "caCertificates",
                "credentialName",
            ] {
                if text(k).is_some() {
                    f.error(
                        format!("{tp}.{k}"),
                        "ISTIO_MUTUAL uses the mesh's certificates; remove this",
                    );
                }
            }
            for k in ["tlsCertificates", "credentialNames"] {
                if list(k) > 0 {
                    f.error(
                        format!("{tp}.{k}"),
                        "ISTIO_MUTUAL uses the mesh's certificates; remove this",
                    );
                }
            }
            return;
        }
        "PASSTHROUGH" | "AUTO_PASSTHROUGH" => {
            let any = [
                "caCrl",
                "serverCertificate",
                "privateKey",
                "caCertificates",
                "credentialName",
            ]
            .iter()
            .any(|k| text(k).is_some())
                || list("tlsCertificates") > 0
                || list("credentialNames") > 0;
            if any {
                f.warn(
                    &tp,
                    format!("{mode} does not use certificates; they are ignored"),
                );
            }
        }
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {}
        other => {
            f.error(format!("{tp}.mode"), format!("unknown TLS mode {other:?}"));
            return;
        }
    }
    if sources.iter().filter(|x| **x).count() > 1 {
        f.error(
            &tp,
            "use one of credentialName, credentialNames, serverCertificate/privateKey and tlsCertificates",
        );
    }
    if matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")
        && text("credentialName").is_none()
        && list("credentialNames") == 0
    {
        if mode != "SIMPLE" && text("caCertificates").is_none() {
            f.error(
                format!("{tp}.caCertificates"),
                format!("{mode} needs a client CA bundle"),
            );
        }
        if list("tlsCertificates") == 0 {
            if text("serverCertificate").is_none() {
                f.error(
                    format!("{tp}.serverCertificate"),
                    format!("{mode} needs a server certificate"),
                );
            }
            if text("privateKey").is_none() {
                f.error(
                    format!("{tp}.privateKey"),
                    format!("{mode} needs a private key"),
                );
            }
        }
    }
    if text("caCrl").is_some() {
        if text("credentialName").is_some() {
            f.error(
                format!("{tp}.caCrl"),
                "with credentialName, the CRL comes from the credential",
            );
        } else if mode == "SIMPLE" {
            f.error(
                format!("{tp}.caCrl"),
                "SIMPLE TLS does not check client certificates, so takes no CRL",
            );
        }
    }
}
