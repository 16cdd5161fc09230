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
