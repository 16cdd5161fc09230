//! The syntax rules istiod's validation applies to names, hosts, ports, addresses, labels,
//! header names and values, durations and percentages. Each check returns the problem as text;
//! the caller decides the field and whether it is an error or a warning.

use std::net::IpAddr;
use std::time::Duration;

use super::parse_duration;

/// A DNS-1123 label as Istio checks it: 1–63 of `[A-Za-z0-9-]`, alphanumeric at both ends
/// (Istio's check does not insist on lowercase).
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A lowercase DNS-1123 label, as Kubernetes requires of namespace names.
pub fn is_lowercase_label(s: &str) -> bool {
    is_label(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// Why Kubernetes would refuse `name` for an object of `kind`: Services need a DNS-1035 label
/// (lowercase, starting with a letter), Namespaces a DNS-1123 label, everything else a DNS-1123
/// subdomain (lowercase labels joined by dots, at most 253 characters).
pub fn object_name_problem(kind: &str, name: &str) -> Option<String> {
    let ok = match kind {
        "Service" => is_lowercase_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
        "Namespace" => is_lowercase_label(name),
        _ => name.len() <= 253 && name.split('.').all(is_lowercase_label),
    };
    (!ok).then(|| {
        let rule = match kind {
            "Service" => "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter, at most 63",
            "Namespace" => "a DNS-1123 label: lowercase letters, digits and '-', at most 63",
            _ => "a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253",
        };
        format!("{name:?} is not a valid {kind} name ({rule})")
    })
}

/// A first host label that may carry a wildcard: `*`, `*foo`, `*-foo` or a plain label.
fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    if s.len() > 63 {
        return false;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_label(rest)
}

fn preconditions(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty host name is not allowed".into());
    }
    if name.len() > 255 {
        return Err(format!("host name {name:?} is longer than 255 characters"));
    }
    Ok(())
}

/// Dot-separated DNS-1123 labels; a trailing dot is allowed, an all-numeric last label is not.
fn check_labels(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let last = labels[labels.len() - 1];
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "host name {domain:?} is invalid: its top-level label {last:?} is all digits"
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if i == labels.len() - 1 && l.is_empty() && i > 0 {
            break;
        }
        if !is_label(l) {
            return Err(format!("host name {domain:?} is invalid: bad label {l:?}"));
        }
    }
    Ok(())
}

/// A host without wildcards (short names such as `reviews` pass).
pub fn check_fqdn(name: &str) -> Result<(), String> {
    preconditions(name)?;
    check_labels(name)
}

/// A host whose first label may be a wildcard (`*`, `*.example.com`, `reviews`).
pub fn check_wildcard_domain(name: &str) -> Result<(), String> {
    preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "host name {name:?} is invalid: bad label {first:?}"
        ));
    }
    match rest {
        Some(r) => check_labels(r),
        None => Ok(()),
    }
}

/// `*foo.com`: a wildcard that is neither `*` nor a whole first label (`*.foo.com`).
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host != "*" && !host.starts_with("*.")
}

pub fn check_port(p: u32) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port {p} is outside 1-65535"))
    }
}

pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// An IP address or a CIDR block.
pub fn check_ip_or_cidr(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((ip, bits)) => {
            let ok = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => bits.parse::<u8>().is_ok_and(|b| b <= 32),
                Ok(IpAddr::V6(_)) => bits.parse::<u8>().is_ok_and(|b| b <= 128),
                Err(_) => false,
            };
            if ok && !bits.starts_with('+') && !(bits.len() > 1 && bits.starts_with('0')) {
                Ok(())
            } else {
                Err(format!("{s:?} is not a valid CIDR block"))
            }
        }
        None if is_ip(s) => Ok(()),
        None => Err(format!("{s:?} is not a valid IP address")),
    }
}

/// A Kubernetes label name part: 1–63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Label keys (`[prefix/]name`) and values, as Kubernetes and istiod accept them.
pub fn check_label_map<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, v) in labels {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if let Some(p) = prefix {
            if p.len() > 253 || check_fqdn(p).is_err() {
                bad.push(format!("label key {k:?} has an invalid prefix"));
                continue;
            }
        }
        if !is_label_name(name) {
            bad.push(format!("label key {k:?} is invalid"));
        } else if !v.is_empty() && !is_label_name(v) {
            bad.push(format!("label value {v:?} (key {k:?}) is invalid"));
        }
    }
    bad
}

/// An RFC 9110 token (header field name).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header name a route may match on: a token, an HTTP/2 pseudo-header, or a JWT claim
/// (`@request.auth.claims.a.b` / `@request.auth.claims[a][b]`).
pub fn check_match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a header name may not be empty".into());
    }
    if matches!(
        name,
        ":method" | ":scheme" | ":authority" | ":path" | ":status"
    ) || is_token(name)
    {
        return Ok(());
    }
    if let Some(c) = name.strip_prefix("@request.auth.claims") {
        let dotted = c
            .strip_prefix('.')
            .is_some_and(|r| r.split('.').all(|p| !p.is_empty()));
        let bracketed = c.starts_with('[')
            && c.ends_with(']')
            && c[1..c.len() - 1]
                .split("][")
                .all(|p| !p.is_empty() && !p.contains(['[', ']']));
        if dotted || bracketed {
            return Ok(());
        }
    }
    Err(format!("{name:?} is not a valid header name"))
}

/// A header a route adds or sets on requests: `:authority` and `host` may be set, other
/// pseudo-headers may not.
pub fn check_request_header_set(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a header name may not be empty".into());
    }
    let lower = name.to_ascii_lowercase();
    if lower == ":authority" || lower == "host" {
        return Ok(());
    }
    if name.starts_with(':') {
        return Err(format!("header {name:?}: pseudo-headers cannot be set"));
    }
    Ok(())
}

/// A header removed from requests, or changed on responses: neither `host` nor a
/// pseudo-header.
pub fn check_header_op(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a header name may not be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!(
            "header {name:?}: the Host header cannot be changed here"
        ));
    }
    if name.starts_with(':') {
        return Err(format!("header {name:?}: pseudo-headers cannot be changed"));
    }
    Ok(())
}

/// A header value: no control characters, and `%` only as `%%` or around a command
/// (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x-id)%`), as Envoy's substitution format reads it.
pub fn check_header_value(v: &str) -> Result<(), String> {
    if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("header value {v:?} contains control characters"));
    }
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        if j == start {
            return Err(format!(
                "header value {v:?}: a lone '%' (write '%%' for a literal percent sign)"
            ));
        }
        if b.get(j) == Some(&b'(') {
            match v[j..].find(')') {
                Some(k) => j += k + 1,
                None => return Err(format!("header value {v:?}: '(' without ')'")),
            }
        }
        if b.get(j) != Some(&b'%') {
            return Err(format!(
                "header value {v:?}: the command {:?} is not closed by '%'",
                &v[start..j]
            ));
        }
        i = j + 1;
    }
    Ok(())
}

/// Port protocols Istio knows (case-insensitive); empty means "detect".
pub fn is_protocol(p: &str) -> bool {
    p.is_empty()
        || matches!(
            p.to_ascii_lowercase().as_str(),
            "tcp"
                | "udp"
                | "grpc"
                | "grpc-web"
                | "http"
                | "http_proxy"
                | "http2"
                | "https"
                | "tls"
                | "mongo"
                | "redis"
                | "mysql"
        )
}

/// HTTP, HTTP2, gRPC, gRPC-Web, HTTP_PROXY.
pub fn is_http_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http" | "http2" | "grpc" | "grpc-web" | "http_proxy"
    )
}

/// HTTPS or TLS.
pub fn is_tls_protocol(p: &str) -> bool {
    matches!(p.to_ascii_lowercase().as_str(), "https" | "tls")
}

/// A duration as istiod accepts one: parseable, at least 1 ms, whole milliseconds.
pub fn check_duration(d: &str) -> Result<Duration, String> {
    let v = parse_duration(d).ok_or_else(|| format!("invalid duration {d:?}"))?;
    if v < Duration::from_millis(1) {
        return Err(format!("duration {d:?} is under 1ms"));
    }
    if v.as_nanos() % 1_000_000 != 0 {
        return Err(format!("duration {d:?} is finer than milliseconds"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "*",
            "reviews",
            "reviews.default.svc.cluster.local",
            "*.example.com",
            "*foo.example.com",
            "istio.io.",
            "a-b.c",
        ] {
            assert!(check_wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1",
            "foo.*.bar.com",
            "-a.com",
            "a..b",
            "under_score.com",
            "example.123",
        ] {
            assert!(check_wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(check_fqdn("*.example.com").is_err());
        assert!(check_fqdn("api.example.com").is_ok());
        assert!(check_wildcard_domain(&"a".repeat(256)).is_err());
        assert!(is_partial_wildcard("*foo.com"));
        assert!(!is_partial_wildcard("*.foo.com"));
        assert!(!is_partial_wildcard("*"));
    }

    #[test]
    fn labels_and_addresses() {
        assert!(is_label("v1"));
        assert!(is_label("Version-2"));
        assert!(!is_label("v1.0"));
        assert!(!is_label("-v1"));
        assert!(!is_label(&"a".repeat(64)));
        let m = [
            ("app".to_string(), "reviews".to_string()),
            ("topology.istio.io/network".to_string(), "n1".to_string()),
            ("bad key".to_string(), "x".to_string()),
            ("k".to_string(), "bad value".to_string()),
            ("k2".to_string(), String::new()),
        ];
        let bad = check_label_map(m.iter().map(|(a, b)| (a, b)));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(check_ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(check_ip_or_cidr("2001:db8::/32").is_ok());
        assert!(check_ip_or_cidr("10.0.0.1").is_ok());
        assert!(check_ip_or_cidr("10.0.0.0/33").is_err());
        assert!(check_ip_or_cidr("example.com").is_err());
        assert!(check_port(0).is_err());
        assert!(check_port(65536).is_err());
        assert!(check_port(8080).is_ok());
    }

    #[test]
    fn headers() {
        assert!(check_match_header_name("X-User").is_ok());
        assert!(check_match_header_name(":authority").is_ok());
        assert!(check_match_header_name("@request.auth.claims.groups").is_ok());
        assert!(check_match_header_name("@request.auth.claims[a][b.c]").is_ok());
        assert!(check_match_header_name("bad name").is_err());
        assert!(check_match_header_name("").is_err());
        assert!(check_request_header_set(":authority").is_ok());
        assert!(check_request_header_set("Host").is_ok());
        assert!(check_request_header_set(":path").is_err());
        assert!(check_header_op("host").is_err());
        assert!(check_header_op(":status").is_err());
        assert!(check_header_op("x-b3").is_ok());
        for ok in [
            "plain",
            "100%%",
            "%DOWNSTREAM_REMOTE_ADDRESS%",
            "%REQ(x-request-id)%-suffix",
            "%START_TIME(%s)%",
        ] {
            assert!(check_header_value(ok).is_ok(), "{ok}");
        }
        for bad in ["abc%123", "%UNCLOSED", "%REQ(x%", "a\nb", "50%"] {
            assert!(check_header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubernetes_object_names() {
        assert!(object_name_problem("DestinationRule", "reviews.v1").is_none());
        assert!(object_name_problem("DestinationRule", "^(").is_some());
        assert!(object_name_problem("VirtualService", "Reviews").is_some());
        assert!(object_name_problem("VirtualService", &"a".repeat(254)).is_some());
        assert!(object_name_problem("Service", "reviews-v1").is_none());
        assert!(object_name_problem("Service", "1reviews").is_some());
        assert!(object_name_problem("Service", "a.b").is_some());
        assert!(object_name_problem("Namespace", "bookinfo").is_none());
        assert!(object_name_problem("Namespace", "book.info").is_some());
    }

    #[test]
    fn durations() {
        assert!(check_duration("1ms").is_ok());
        assert!(check_duration("1.5s").is_ok());
        assert!(check_duration("1m").is_ok());
        assert!(check_duration("0s").is_err());
        assert!(check_duration("0.5ms").is_err());
        assert!(check_duration("1500us").is_err());
        assert!(check_duration("x").is_err());
    }
}
