//! Envoy's router_check conformance data (`shared/conformance/envoy-router-check/`) run through
//! `sluice::route::check`: every normal pair passes, the designed failures fail as Envoy's
//! route_tests.sh expects.

use std::path::{Path, PathBuf};

use sluice::route::check::{run, CheckOptions, CheckReport};

fn dir() -> PathBuf {
    let d =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/envoy-router-check");
    assert!(
        d.is_dir(),
        "conformance data missing: {} (the repo checkout must sit beside shared/)",
        d.display()
    );
    d
}

fn check(config: &str, tests: &str) -> CheckReport {
    let d = dir();
    let r = run(
        &d.join(format!("{config}.yaml")),
        &d.join(format!("{tests}.golden.proto.json")),
        &CheckOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{config} / {tests}: {e}"));
    println!(
        "{tests} (against {config}.yaml): {}/{} passed",
        r.passed_count(),
        r.tests.len()
    );
    r
}

fn failures(r: &CheckReport) -> Vec<String> {
    r.tests
        .iter()
        .flat_map(|t| t.failures.iter().cloned())
        .collect()
}

#[test]
fn every_normal_pair_passes() {
    let mut pairs = Vec::new();
    for e in std::fs::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".golden.proto.json") {
            if dir().join(format!("{stem}.yaml")).exists() {
                pairs.push(stem.to_string());
            }
        }
    }
    pairs.sort();
    assert_eq!(pairs.len(), 17, "expected the 17 pairs, found {pairs:?}");
    let mut total = (0, 0);
    let mut bad = Vec::new();
    for p in &pairs {
        let r = check(p, p);
        total.0 += r.passed_count();
        total.1 += r.tests.len();
        if p == "RouteMetadata" {
            continue;
        }
        bad.extend(
            r.tests
                .into_iter()
                .filter(|t| !t.passed())
                .map(|t| (p.clone(), t)),
        );
    }
    println!("all pairs: {}/{} passed", total.0, total.1);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn test_routes_failures_fail_as_envoy_reports() {
    let r = check("TestRoutes", "TestRoutesFailures");
    assert_eq!(r.tests.len(), 1);
    assert!(!r.passed());
    let want = [
        "expected: [content-type: text/plain], actual: NOT [content-type: text/plain], test type: response_header_matches.string_match.exact",
        "actual: [content-length: 25], test type: response_header_matches.range_match",
        "expected: [x-ping-response: pong], actual: [x-ping-response: yes], test type: response_header_matches.string_match.exact",
        "expected: [has(x-ping-response):false], actual: [has(x-ping-response):true], test type: response_header_matches.present_match",
        "expected: [has(x-pong-response):true], actual: [has(x-pong-response):false], test type: response_header_matches.present_match",
    ];
    assert_eq!(failures(&r), want);
    let out = r.render(&CheckOptions {
        details: false,
        only_show_failures: true,
    });
    for w in want {
        assert!(out.lines().any(|l| l == w), "{w} not a line of:\n{out}");
    }
}

#[test]
fn timeout_failures_fail() {
    let r = check("Timeout", "TimeoutFailures");
    assert_eq!(r.tests.len(), 1);
    assert_eq!(
        failures(&r),
        ["expected: [120000], actual: [30000], test type: timeout"]
    );
}

#[test]
fn route_metadata_mixed() {
    let r = check("RouteMetadata", "RouteMetadata");
    let by_name = |n: &str| r.tests.iter().find(|t| t.name == n).unwrap();
    assert!(by_name("MetadataMatches").passed());
    assert!(!by_name("MetadataValueMismatch").passed());
    assert!(!by_name("MetadataNamespaceMissing").passed());
}

#[test]
fn weighted_against_test_routes_fails() {
    let r = check("TestRoutes", "Weighted");
    assert!(!r.passed());
    let t2 = r.tests.iter().find(|t| t.name == "Test_2").unwrap();
    assert_eq!(
        t2.failures,
        [
            "expected: [cluster1], actual: [instant-server], test type: cluster_name",
            "expected: [test_virtual_cluster], actual: [other], test type: virtual_cluster_name",
        ]
    );
    let out = r.render(&CheckOptions {
        details: true,
        only_show_failures: false,
    });
    let (i1, i2, i3) = (
        out.find("Test_1").unwrap(),
        out.find("Test_2").unwrap(),
        out.find("Test_3").unwrap(),
    );
    assert!(i1 < i2 && i2 < i3);
    let only = r.render(&CheckOptions {
        details: true,
        only_show_failures: true,
    });
    assert!(!only.contains("Test_1\n") && only.contains("Test_2\n"));
}

/// Every `RouteConfiguration` in `value` (objects whose `@type` names it).
fn route_configs(value: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match value {
        serde_json::Value::Object(o) => {
            if o.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("/envoy.config.route.v3.RouteConfiguration"))
            {
                let mut rc = o.clone();
                rc.remove("@type");
                out.push(serde_json::Value::Object(rc));
            }
            o.values().for_each(|v| route_configs(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| route_configs(v, out)),
        _ => {}
    }
}

#[test]
fn istio_config_dump_routes_compile_and_select() {
    use sluice::config::proto;
    use sluice::route::{RequestView, RouteTable, Selected};
    let d = dir().join("../istio-configdump");
    assert!(d.is_dir(), "missing {}", d.display());
    let mut compiled = 0;
    for e in std::fs::read_dir(&d).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut rcs = Vec::new();
        route_configs(&doc, &mut rcs);
        for rc in rcs {
            let rc: envoy_types::pb::envoy::config::route::v3::RouteConfiguration =
                proto::decode_json_value(rc).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let t = RouteTable::from_proto(&rc)
                .unwrap_or_else(|e| panic!("{} route {:?}: {e}", p.display(), rc.name));
            compiled += 1;
            // Every domain of every virtual host selects that host.
            for vh in &rc.virtual_hosts {
                for dom in vh.domains.iter().filter(|d| !d.contains('*')) {
                    let h = http::HeaderMap::new();
                    let view = RequestView {
                        authority: dom,
                        path: "/",
                        method: "GET",
                        headers: &h,
                        scheme: "http",
                        internal: false,
                        remote_addr: None,
                        tls: None,
                        dynamic_metadata: None,
                    };
                    assert_eq!(t.find_vhost(&view).unwrap().name, vh.name, "{dom}");
                    let _ = matches!(t.select(&view, 0), Selected::NoRoute);
                }
            }
        }
    }
    println!("istio config dumps: {compiled} route configurations compiled");
    assert!(compiled >= 5, "{compiled}");
}
