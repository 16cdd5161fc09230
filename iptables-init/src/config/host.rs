//! What istio-iptables reads from the pod rather than from flags: the proxy UID from
//! `/etc/passwd` (`ENVOY_USER`, default `istio-proxy`), DNS servers from `/etc/resolv.conf`,
//! and whether the pod is IPv6 from its addresses (`/proc/net/fib_trie`, `/proc/net/if_inet6`).
//!
//! Parsers take text so they are tested without a host; [`fill_from_host`] does the reading
//! and only fills values the user left unset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ConfigError, Settings, DEFAULT_PROXY_UID};

/// The UID of `user` in passwd-format text.
pub fn lookup_uid(passwd: &str, user: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == user).then_some(())?;
        let uid = f.nth(1)?;
        uid.parse::<u32>().ok().map(|_| uid.to_string())
    })
}

/// `nameserver` entries of a resolv.conf, split into IPv4 and IPv6 (zoned addresses skipped).
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        match words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
            Some(IpAddr::V4(a)) => v4.push(a.to_string()),
            Some(IpAddr::V6(a)) => v6.push(a.to_string()),
            None => {}
        }
    }
    (v4, v6)
}

/// Local IPv4 addresses listed as `host LOCAL` in `/proc/net/fib_trie`.
pub fn parse_fib_trie_locals(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last.take() {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Addresses in `/proc/net/if_inet6`.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
        })
        .collect()
}

fn usable_v6(a: &Ipv6Addr) -> bool {
    !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 && (a.segments()[0] & 0xff0f) != 0xff02
}

/// Istio's rule: the pod is IPv6 if its first usable (non-loopback, non-link-local) address is
/// IPv6, or, with dual-stack, if it has any usable IPv6 address. `None`: no usable address.
pub fn detect_ipv6(dual_stack: bool, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Option<bool> {
    let has_v4 = v4.iter().any(|a| !a.is_loopback() && !a.is_link_local());
    let has_v6 = v6.iter().any(usable_v6);
    match (has_v4, has_v6) {
        (false, false) => None,
        _ if dual_stack => Some(has_v6),
        (true, _) => Some(false),
        (false, true) => Some(true),
    }
}

/// Fill unset values from the host, as Istio's `FillConfigFromEnvironment` does.
pub fn fill_from_host(
    s: &mut Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let read = |p: &str| std::fs::read_to_string(p);
    if s.proxy_uid.trim().is_empty() {
        let user = env("ENVOY_USER").unwrap_or_else(|| "istio-proxy".into());
        s.proxy_uid = read("/etc/passwd")
            .ok()
            .and_then(|p| lookup_uid(&p, &user))
            .unwrap_or_else(|| DEFAULT_PROXY_UID.to_string());
    }
    if s.proxy_gid.trim().is_empty() {
        s.proxy_gid = s.proxy_uid.clone();
    }
    if s.enable_inbound_ipv6.is_none() {
        let v4 = read("/proc/net/fib_trie")
            .map(|t| parse_fib_trie_locals(&t))
            .unwrap_or_default();
        let v6 = read("/proc/net/if_inet6")
            .map(|t| parse_if_inet6(&t))
            .unwrap_or_default();
        let detected = detect_ipv6(s.dual_stack, &v4, &v6).ok_or_else(|| {
            ConfigError::Host(
                "no valid local IP address found to decide IPv4/IPv6; set ENABLE_INBOUND_IPV6=true|false"
                    .into(),
            )
        })?;
        s.enable_inbound_ipv6 = Some(detected);
    }
    if s.redirect_dns
        && !s.capture_all_dns
        && s.dns_servers_v4.is_empty()
        && s.dns_servers_v6.is_empty()
    {
        let text = read("/etc/resolv.conf")
            .map_err(|e| ConfigError::Host(format!("failed to load /etc/resolv.conf: {e}")))?;
        (s.dns_servers_v4, s.dns_servers_v6) = parse_resolv_conf(&text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:1337:1337::/home:/bin/sh\n";
        assert_eq!(lookup_uid(p, "istio-proxy").as_deref(), Some("1337"));
        assert_eq!(lookup_uid(p, "nobody"), None);
    }

    #[test]
    fn resolv_conf() {
        let t = "# c\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::10\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            parse_resolv_conf(t),
            (vec!["10.96.0.10".to_string()], vec!["fd00::10".to_string()])
        );
    }

    #[test]
    fn address_detection() {
        let trie = "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 10.1.2.255\n        /32 link BROADCAST\n";
        let v4 = parse_fib_trie_locals(trie);
        assert_eq!(
            v4,
            vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(10, 1, 2, 3)]
        );
        let v6 = parse_if_inet6(
            "fd000000000000000000000000000002 04 40 00 82     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n",
        );
        assert_eq!(v6.len(), 2);
        assert_eq!(detect_ipv6(false, &v4, &v6), Some(false));
        assert_eq!(detect_ipv6(true, &v4, &v6), Some(true));
        assert_eq!(detect_ipv6(false, &v4[..1], &v6), Some(true));
        assert_eq!(detect_ipv6(false, &v4[..1], &v6[1..]), None);
    }
}
