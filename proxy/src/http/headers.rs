//! Envoy's default request and response header handling in the connection manager:
//! hop-by-hop headers removed, `x-forwarded-for` / `x-forwarded-proto` / `x-request-id`
//! maintained, `server` and `x-envoy-upstream-service-time` set on responses.

use std::net::SocketAddr;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

use crate::model::network::HttpConnectionManager;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Control headers removed from external requests at an edge (`use_remote_address`).
const EXTERNAL_STRIPPED: [&str; 12] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-internal",
    "x-envoy-max-retries",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Hop-by-hop headers, as `HeaderName` constants so removal does not re-parse names.
const HOP_BY_HOP: [HeaderName; 4] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (and those named in `Connection`). `keep_upgrade` keeps
/// `connection: upgrade` + `upgrade` for WebSocket-style upgrades. `te: trailers` is kept (gRPC).
/// The common case — none of them present — costs a few hash lookups and no allocation.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Usually none is present: one pass over the (few) names, comparing standard names by
    // their tag, is cheaper than hashing each hop-by-hop name.
    if !keep_upgrade
        && !h.keys().any(|k| {
            k == http::header::CONNECTION
                || k == http::header::TRANSFER_ENCODING
                || k == http::header::UPGRADE
                || k == http::header::TE
                || k == HOP_BY_HOP[1]
                || k == HOP_BY_HOP[2]
        })
    {
        return;
    }
    if let Some(conn) = h.get(http::header::CONNECTION) {
        if let Ok(v) = conn.to_str() {
            let named: Vec<HeaderName> = v
                .split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == http::header::UPGRADE))
                .collect();
            for n in named {
                h.remove(n);
            }
        }
    }
    for n in &HOP_BY_HOP {
        if !(keep_upgrade && n == http::header::CONNECTION) {
            h.remove(n);
        }
    }
    if !keep_upgrade {
        h.remove(http::header::UPGRADE);
    }
    if let Some(te) = h.get(http::header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            h.remove(http::header::TE);
        }
    }
    if keep_upgrade {
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
}

/// `x-envoy-upstream-service-time` for `ms` milliseconds: small values (the common case on
/// a mesh) are static, so no allocation.
pub fn service_time(ms: u64) -> HeaderValue {
    const SMALL: [&str; 32] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
    ];
    match SMALL.get(ms as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(ms),
    }
}

/// A random UUID v4, as Envoy generates for `x-request-id`, formatted without allocating
/// intermediate strings.
pub fn uuid4() -> String {
    String::from_utf8(uuid4_bytes().to_vec()).expect("ascii")
}

fn uuid4_bytes() -> [u8; 36] {
    uuid4_from(fastrand::u64(..), fastrand::u64(..))
}

/// The UUID v4 with these 128 random bits (6 of which become the version and variant).
fn uuid4_from(hi: u64, lo: u64) -> [u8; 36] {
    let hi = (hi & !0xf000) | 0x4000;
    let lo = (lo & !(0xc0 << 56)) | (0x80 << 56);
    let mut hex = [0u8; 32];
    for (i, part) in [hi >> 32, hi, lo >> 32, lo].into_iter().enumerate() {
        hex[i * 8..i * 8 + 8].copy_from_slice(&hex8(part as u32));
    }
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

/// Eight lowercase hex digits, all at once: each nibble spread into a byte of its own, then
/// '0' added to each, and 39 more to those of 10 or more (to reach 'a').
fn hex8(x: u32) -> [u8; 8] {
    let mut v = x as u64;
    v = (v | v << 16) & 0x0000_ffff_0000_ffff;
    v = (v | v << 8) & 0x00ff_00ff_00ff_00ff;
    v = (v | v << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (v + 0x3030_3030_3030_3030 + letters * 0x27).to_be_bytes()
}

/// Request ids made per batch.
const ID_BATCH: usize = 64;

thread_local! {
    /// Request ids made ahead, back to back in one buffer: each request's id is a slice of
    /// it, so a request id costs no allocation of its own.
    static REQUEST_IDS: std::cell::RefCell<bytes::Bytes> =
        const { std::cell::RefCell::new(bytes::Bytes::new()) };
}

/// The next request id (a UUID v4) from this thread's batch.
fn next_request_id() -> bytes::Bytes {
    REQUEST_IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.is_empty() {
            let mut batch = bytes::BytesMut::with_capacity(ID_BATCH * 36);
            for _ in 0..ID_BATCH {
                batch.extend_from_slice(&uuid4_bytes());
            }
            *ids = batch.freeze();
        }
        ids.split_to(36)
    })
}

/// Applies the connection manager's request header rules.
pub fn on_request(
    h: &mut HeaderMap,
    hcm: &HttpConnectionManager,
    remote: Option<SocketAddr>,
    scheme: &str,
) {
    // One growth of the map for the headers added below, not one per insert.
    h.reserve(4);
    let proto = HeaderValue::from_static(if scheme == "https" { "https" } else { "http" });
    if hcm.use_remote_address {
        if let Some(r) = remote {
            let ip = r.ip().to_string();
            if !hcm.skip_xff_append {
                let v = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                    Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
                    _ => ip.clone(),
                };
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(X_FORWARDED_FOR.clone(), v);
                }
            }
            if !r.ip().is_loopback() {
                // An external client does not get to steer the proxy: Envoy drops its
                // x-envoy-* control headers (timeouts, retries, ...).
                for n in EXTERNAL_STRIPPED {
                    h.remove(n);
                }
                if let Ok(v) = HeaderValue::from_str(&ip) {
                    h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
                }
            }
        }
        // An edge proxy sets the scheme it saw.
        h.insert(X_FORWARDED_PROTO.clone(), proto);
    } else if let Entry::Vacant(e) = h.entry(X_FORWARDED_PROTO.clone()) {
        // (An entry looks the name up once, for the check and the insert.)
        e.insert(proto);
    }
    if hcm.generate_request_id {
        let keep = hcm.preserve_external_request_id || !hcm.use_remote_address;
        // Not marked sensitive: Sluice's HPACK encoder keeps request ids out of the dynamic
        // table by their name, and a never-indexed literal would oblige every later hop to keep
        // it out too.
        let id = || HeaderValue::from_maybe_shared(next_request_id()).ok();
        match h.entry(X_REQUEST_ID.clone()) {
            Entry::Occupied(_) if keep => {}
            // Replaces every value the name had, as `insert` does.
            Entry::Occupied(mut o) => {
                if let Some(v) = id() {
                    o.insert(v);
                }
            }
            Entry::Vacant(o) => {
                if let Some(v) = id() {
                    o.insert(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn service_time_values() {
        for ms in [0u64, 1, 9, 31, 32, 1234] {
            assert_eq!(service_time(ms).to_str().unwrap(), ms.to_string());
        }
    }

    #[test]
    fn hop_by_hop_fast_path_keeps_others() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn uuid_digits_are_the_bits() {
        let mut rng = fastrand::Rng::with_seed(5);
        for (hi, lo) in [
            (0, 0),
            (u64::MAX, u64::MAX),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
        ]
        .into_iter()
        .chain((0..1000).map(|_| (rng.u64(..), rng.u64(..))))
        {
            let hi4 = (hi & !0xf000) | 0x4000;
            let lo4 = (lo & !(0xc0 << 56)) | (0x80 << 56);
            let all = format!("{hi4:016x}{lo4:016x}");
            let want = format!(
                "{}-{}-{}-{}-{}",
                &all[..8],
                &all[8..12],
                &all[12..16],
                &all[16..20],
                &all[20..]
            );
            assert_eq!(std::str::from_utf8(&uuid4_from(hi, lo)).unwrap(), want);
        }
    }

    #[test]
    fn uuid_shape() {
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(u.matches('-').count(), 4);
        assert!([8, 13, 18, 23].iter().all(|i| &u[*i..*i + 1] == "-"), "{u}");
        assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(uuid4(), u);
        // Batched ids are UUIDs too, and differ.
        let ids: Vec<_> = (0..ID_BATCH * 2 + 1).map(|_| next_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36);
            assert_eq!(id[14], b'4');
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    #[test]
    fn an_edge_drops_external_control_headers() {
        use crate::config::proto::{decode, Format};
        let h: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
            decode(
                "stat_prefix: e\nuse_remote_address: true\nrds: {route_config_name: r}\nhttp_filters: [{name: envoy.filters.http.router, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]",
                Format::Yaml,
            )
                .unwrap();
        let hcm = crate::model::network::http_connection_manager(&h).unwrap();
        let control = |h: &mut HeaderMap| {
            h.insert(
                "x-envoy-upstream-rq-timeout-ms",
                HeaderValue::from_static("1"),
            );
            h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
            h.insert("x-envoy-max-retries", HeaderValue::from_static("9"));
        };
        let mut ext = HeaderMap::new();
        control(&mut ext);
        on_request(
            &mut ext,
            &hcm,
            Some("198.18.0.9:4000".parse().unwrap()),
            "http",
        );
        assert!(ext.get("x-envoy-upstream-rq-timeout-ms").is_none());
        assert!(ext.get("x-envoy-retry-on").is_none());
        assert!(ext.get("x-envoy-max-retries").is_none());
        assert_eq!(ext["x-envoy-external-address"], "198.18.0.9");
        // A local client keeps them.
        let mut local = HeaderMap::new();
        control(&mut local);
        on_request(
            &mut local,
            &hcm,
            Some("127.0.0.1:4000".parse().unwrap()),
            "http",
        );
        assert_eq!(local["x-envoy-upstream-rq-timeout-ms"], "1");
    }
}
