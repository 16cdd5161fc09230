use super::*;
use crate::route::DefaultRuntime;

fn view<'a>(
    h: &'a http::HeaderMap,
    authority: &'a str,
    path: &'a str,
    scheme: &'a str,
) -> RequestView<'a> {
    RequestView {
        authority,
        path,
        method: "GET",
        headers: h,
        scheme,
        internal: false,
        remote_addr: None,
        tls: None,
        dynamic_metadata: None,
    }
}

fn wc(weights: &[u64]) -> WeightedClusters {
    WeightedClusters {
        clusters: weights
            .iter()
            .enumerate()
            .map(|(i, w)| WeightedCluster {
                name: format!("c{i}"),
                cluster_header: None,
                weight: *w,
                request_headers: Default::default(),
                response_headers: Default::default(),
                host_rewrite_literal: None,
                per_filter: Default::default(),
            })
            .collect(),
        total_weight: None,
        runtime_key_prefix: None,
        header_name: None,
    }
}

#[test]
fn weighted_pick_intervals() {
    let h = http::HeaderMap::new();
    let v = view(&h, "a", "/", "http");
    let w = wc(&[30, 30, 40]);
    for (r, want) in [
        (115, 0),
        (445, 1),
        (560, 2),
        (0, 0),
        (29, 0),
        (30, 1),
        (59, 1),
        (60, 2),
        (99, 2),
    ] {
        assert_eq!(w.pick(r, &DefaultRuntime, &v), Some(want), "random {r}");
    }
}

#[test]
fn weighted_pick_distribution_seeded() {
    let h = http::HeaderMap::new();
    let v = view(&h, "a", "/", "http");
    let w = wc(&[10, 20, 70]);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut counts = [0u32; 3];
    for _ in 0..100_000 {
        counts[w.pick(rng.u64(..), &DefaultRuntime, &v).unwrap()] += 1;
    }
    for (c, want) in counts.iter().zip([10_000f64, 20_000.0, 70_000.0]) {
        assert!((f64::from(*c) - want).abs() < want * 0.05, "{counts:?}");
    }
}

#[test]
fn weighted_pick_header_and_runtime() {
    struct Rt;
    impl Runtime for Rt {
        fn feature_enabled(&self, _: &str, _: crate::route::Fraction, _: u64) -> bool {
            false
        }
        fn get_integer(&self, key: &str, default: u64) -> u64 {
            if key == "p.c0" {
                0
            } else {
                default
            }
        }
    }
    let mut h = http::HeaderMap::new();
    h.insert("x-rand", "45".parse().unwrap());
    let v = view(&h, "a", "/", "http");
    let mut w = wc(&[30, 30, 40]);
    w.header_name = Some("x-rand".into());
    assert_eq!(w.pick(0, &DefaultRuntime, &v), Some(1));
    w.header_name = None;
    w.runtime_key_prefix = Some("p".into());
    // c0 weighs 0 now: total 70, 10 → c1.
    assert_eq!(w.pick(10, &Rt, &v), Some(1));
}

#[test]
fn new_uri_forms() {
    let h = http::HeaderMap::new();
    let v = view(&h, "example.com:80", "/a/b?x=1", "http");
    let r = |scheme: Option<&str>, host: Option<&str>, port, path, strip| RedirectAction {
        scheme: scheme.map(String::from),
        host: host.map(String::from),
        port,
        path,
        strip_query: strip,
        status: 301,
    };
    assert_eq!(new_uri(None, &v, v.path), "http://example.com:80/a/b?x=1");
    assert_eq!(
        new_uri(
            Some(&r(Some("https"), None, None, RedirectPath::Keep, false)),
            &v,
            v.path
        ),
        "https://example.com/a/b?x=1"
    );
    assert_eq!(
        new_uri(
            Some(&r(
                None,
                Some("new.com"),
                Some(8080),
                RedirectPath::Path("/n".into()),
                false
            )),
            &v,
            v.path
        ),
        "http://new.com:8080/n?x=1"
    );
    assert_eq!(
        new_uri(
            Some(&r(
                None,
                None,
                None,
                RedirectPath::Path("/n?y=2".into()),
                true
            )),
            &v,
            v.path
        ),
        "http://example.com:80/n?y=2"
    );
    assert_eq!(
        new_uri(
            Some(&r(None, None, None, RedirectPath::Keep, true)),
            &v,
            v.path
        ),
        "http://example.com:80/a/b"
    );
    assert_eq!(port_start("[::1]"), None);
    assert_eq!(strip_port("[::1]:80"), "[::1]");
}
