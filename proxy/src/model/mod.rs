//! The validated runtime model the data path reads, built from Envoy's v3 resources. Every
//! config source (bootstrap, xDS, Istio translation) ends here. Conversions fail with errors that
//! name the resource and the field.

pub mod cluster;
pub mod listener;
pub mod matcher;
pub mod network;

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3 as core;

/// A model conversion error: which resource, which field, what is wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{resource}: {field}: {reason}")]
pub struct ModelError {
    pub resource: String,
    pub field: String,
    pub reason: String,
}

impl ModelError {
    pub fn new(resource: &str, field: &str, reason: impl Into<String>) -> Self {
        ModelError {
            resource: resource.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// Logs `message` once per `key` for the life of the process (skipped filters, ignored fields),
/// so a config pushed repeatedly does not flood the log. Returns whether it logged.
pub fn warn_once(key: &str, message: &str) -> bool {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let first = SEEN
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(key.to_string());
    if first {
        tracing::warn!(key, "{message}");
    }
    first
}

/// A socket address from an Envoy `Address` (pipes and internal addresses are `None`).
pub fn socket_address(addr: &core::Address) -> Result<Option<SocketAddr>, String> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    match &addr.address {
        Some(A::SocketAddress(sa)) => {
            let ip: IpAddr = if sa.address.is_empty() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                sa.address
                    .parse()
                    .map_err(|_| format!("not an IP address: {:?}", sa.address))?
            };
            let port = match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| format!("port out of range: {p}"))?
                }
                Some(PortSpecifier::NamedPort(ref n)) => {
                    return Err(format!("named ports are not supported: {n}"))
                }
                None => 0,
            };
            Ok(Some(SocketAddr::new(ip, port)))
        }
        Some(A::Pipe(_)) => Err("unix pipe addresses are not supported".into()),
        Some(A::EnvoyInternalAddress(_)) => Ok(None),
        None => Err("address is empty".into()),
    }
}

/// An IP prefix (CIDR range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(prefix: &str, len: Option<u32>) -> Result<Cidr, String> {
        let addr: IpAddr = prefix
            .parse()
            .map_err(|_| format!("not an IP address: {prefix:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(0);
        if len > max {
            return Err(format!("prefix length {len} too long for {prefix}"));
        }
        Ok(Cidr {
            addr,
            len: len as u8,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len as u32)
                };
                (u32::from(a) & mask) == (u32::from(b) & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len as u32)
                };
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            (IpAddr::V4(_), IpAddr::V6(b)) => b
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

/// What the proxy knows about a downstream connection when it picks a filter chain.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// `transport_protocol`: `tls` or `raw_buffer`.
    pub transport: &'static str,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

impl ConnInfo {
    pub fn is_local_source(&self) -> bool {
        match (self.remote, self.local) {
            (Some(r), Some(l)) => r.ip().is_loopback() || r.ip() == l.ip(),
            (Some(r), None) => r.ip().is_loopback(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0", Some(16)).unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0", Some(0)).unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6 = Cidr::parse("fd00::", Some(8)).unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4", Some(33)).is_err());
    }
}
