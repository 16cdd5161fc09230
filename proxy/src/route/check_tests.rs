use super::*;

const ROUTES: &str = r#"
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: /a}
    route: {cluster: ca, timeout: 5s}
  - match: {prefix: /}
    direct_response: {status: 200, body: {inline_string: hi}}
"#;

#[test]
fn pass_and_fail_lines() {
    let tests = r#"{"tests": [
          {"test_name": "ok", "input": {"authority": "x", "path": "/a", "method": "GET"},
           "validate": {"cluster_name": "ca", "timeout": "5s", "virtual_host_name": "vh",}},
          {"test_name": "bad", "input": {"authority": "x", "path": "/b", "method": "GET"},
           "validate": {"cluster_name": "ca", "code_redirect": 200, "path_redirect": "http://x/b",
             "response_header_matches": [{"name": "content-length", "string_match": {"exact": "3"}}]}}
        ]}"#;
    let r = run_str(ROUTES, Format::Yaml, tests).unwrap();
    assert!(!r.passed());
    assert!(r.tests[0].passed(), "{:?}", r.tests[0]);
    assert_eq!(
            r.tests[1].failures,
            vec![
                "expected: [ca], actual: [], test type: cluster_name".to_string(),
                "expected: [content-length: 3], actual: [content-length: 2], test type: response_header_matches.string_match.exact".to_string(),
            ]
        );
    let out = r.render(&CheckOptions {
        details: false,
        only_show_failures: true,
    });
    assert!(out.starts_with("bad\nexpected: [ca]"), "{out}");
    assert!(!out.contains("ok\n"));
}

#[test]
fn schema_errors() {
    let bad = |t: &str| run_str(ROUTES, Format::Yaml, t).unwrap_err().to_string();
    assert!(bad(r#"{"tests": []}"#).contains("at least one test"));
    assert!(
        bad(r#"{"tests": [{"test_name": "", "input": {}, "validate": {}}]}"#).contains("test_name")
    );
    assert!(bad(r#"{"tests": [{"test_name": "a", "input": {"authority": "x", "path": "/", "method": "GET", "additional_headers": []}, "validate": {}}]}"#).contains("reserved"));
    assert!(bad(r#"{"tests": [{"test_name": "a", "input": {"authority": "x", "path": "/", "method": "GET"}, "validate": {"bogus": 1}}]}"#).contains("bogus"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration_ms(&Json::from("120s")), Some(120_000));
    assert_eq!(parse_duration_ms(&Json::from("0.25s")), Some(250));
    assert_eq!(
        parse_duration_ms(&serde_json::json!({"seconds": 2})),
        Some(2000)
    );
    assert_eq!(parse_duration_ms(&Json::from("5m")), None);
}
