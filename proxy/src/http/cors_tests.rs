use super::*;
use crate::config::proto::{decode, Format};
use crate::route::{RequestView, RouteTable};

fn policy(yaml: &str) -> CorsPolicy {
    CorsPolicy::compile(&decode::<pb::CorsPolicy>(yaml, Format::Yaml).unwrap()).unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

fn decide(ps: &[&CorsPolicy], method: Method, h: &[(&'static str, &str)]) -> Decision {
    Policies(ps.to_vec()).decide(&method, &headers(h), 0, 0, None)
}

fn preflight(d: Decision) -> HeaderMap {
    match d {
        Decision::Preflight(h) => h,
        other => panic!("expected a preflight answer, got {other:?}"),
    }
}

fn latched(d: Decision) -> Latched {
    match d {
        Decision::Respond(l) => l,
        other => panic!("expected response headers, got {other:?}"),
    }
}

const FULL: &str = r#"
allow_origin_string_match: [{exact: "https://a.example"}, {suffix: ".b.example", ignore_case: true}, {safe_regex: {regex: "https://c[0-9]\\.example"}}]
allow_methods: "GET,POST"
allow_headers: "content-type,x-custom"
expose_headers: "x-exposed"
max_age: "600"
allow_credentials: true
"#;

const PREFLIGHT: &[(&str, &str)] = &[
    ("origin", "https://a.example"),
    ("access-control-request-method", "POST"),
];

#[test]
fn preflight_from_allowed_origin_is_answered() {
    let p = policy(FULL);
    let h = preflight(decide(&[&p], Method::OPTIONS, PREFLIGHT));
    assert_eq!(h[ALLOW_ORIGIN], "https://a.example");
    assert_eq!(h[ALLOW_METHODS], "GET,POST");
    assert_eq!(h[ALLOW_HEADERS], "content-type,x-custom");
    assert_eq!(h[MAX_AGE], "600");
    assert_eq!(h[ALLOW_CREDENTIALS], "true");
    assert!(
        h.get(EXPOSE_HEADERS).is_none(),
        "expose-headers is for actual requests"
    );
}

#[test]
fn origin_matchers() {
    let p = policy(FULL);
    for (origin, ok) in [
        ("https://a.example", true),
        ("https://A.example", false),
        ("https://x.B.EXAMPLE", true),
        ("https://c7.example", true),
        ("https://c77.example", false),
        ("https://evil.example", false),
    ] {
        let d = decide(&[&p], Method::GET, &[("origin", origin)]);
        assert_eq!(matches!(d, Decision::Respond(_)), ok, "{origin}");
    }
    // Prefix and contains, and a matcher that matches "*" allows every origin.
    let p = policy("allow_origin_string_match: [{prefix: 'http://loc'}, {contains: 'internal'}]");
    assert!(matches!(
        decide(&[&p], Method::GET, &[("origin", "http://localhost:3000")]),
        Decision::Respond(_)
    ));
    assert!(matches!(
        decide(&[&p], Method::GET, &[("origin", "https://x.internal.io")]),
        Decision::Respond(_)
    ));
    assert!(matches!(
        decide(&[&p], Method::GET, &[("origin", "https://x.io")]),
        Decision::Pass
    ));
    let star = policy("allow_origin_string_match: [{exact: '*'}]");
    assert!(matches!(
        decide(&[&star], Method::GET, &[("origin", "https://any.io")]),
        Decision::Respond(_)
    ));
}

#[test]
fn actual_request_gets_origin_credentials_and_expose_headers() {
    let p = policy(FULL);
    let l = latched(decide(
        &[&p],
        Method::GET,
        &[("origin", "https://a.example")],
    ));
    let mut h = headers(&[("access-control-allow-origin", "*")]);
    l.apply(&mut h);
    assert_eq!(
        h[ALLOW_ORIGIN], "https://a.example",
        "the filter's value replaces upstream's"
    );
    assert_eq!(h[ALLOW_CREDENTIALS], "true");
    assert_eq!(h[EXPOSE_HEADERS], "x-exposed");
    // No Origin, or an empty one: not a CORS request.
    assert!(matches!(decide(&[&p], Method::GET, &[]), Decision::Pass));
    assert!(matches!(
        decide(&[&p], Method::GET, &[("origin", "")]),
        Decision::Pass
    ));
    // OPTIONS without Access-Control-Request-Method is an actual request.
    assert!(matches!(
        decide(&[&p], Method::OPTIONS, &[("origin", "https://a.example")]),
        Decision::Respond(_)
    ));
}

#[test]
fn non_matching_preflight_is_forwarded_unless_told_otherwise() {
    let p = policy(FULL);
    let evil = &[
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
    ];
    assert!(matches!(
        decide(&[&p], Method::OPTIONS, evil),
        Decision::Pass
    ));
    let mut ignore = p.clone();
    ignore.forward_not_matching_preflights = Some(false);
    let h = preflight(decide(&[&ignore], Method::OPTIONS, evil));
    assert!(h.get(ALLOW_ORIGIN).is_none());
    // Envoy still sends the policy's other headers.
    assert_eq!(h[ALLOW_METHODS], "GET,POST");
    assert_eq!(h[ALLOW_CREDENTIALS], "true");
}

#[test]
fn wildcard_methods_and_headers_echo_the_request() {
    let p = policy(
        "{allow_origin_string_match: [{prefix: ''}], allow_methods: '*', allow_headers: '*'}",
    );
    let h = preflight(decide(
        &[&p],
        Method::OPTIONS,
        &[
            ("origin", "https://x.io"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "x-a,x-b"),
        ],
    ));
    assert_eq!(h[ALLOW_METHODS], "DELETE");
    assert_eq!(h[ALLOW_HEADERS], "x-a,x-b");
    assert!(h.get(ALLOW_CREDENTIALS).is_none());
    assert!(h.get(MAX_AGE).is_none());
}

#[test]
fn private_network_access() {
    let p = policy("{allow_origin_string_match: [{exact: 'https://a.example'}], allow_private_network_access: true}");
    let mut req = PREFLIGHT.to_vec();
    let h = preflight(decide(&[&p], Method::OPTIONS, &req));
    assert!(h.get(ALLOW_PRIVATE_NETWORK).is_none());
    req.push(("access-control-request-private-network", "true"));
    let h = preflight(decide(&[&p], Method::OPTIONS, &req));
    assert_eq!(h[ALLOW_PRIVATE_NETWORK], "true");
}

#[test]
fn filter_enabled_and_shadow() {
    let off = policy("{allow_origin_string_match: [{exact: 'https://a.example'}], filter_enabled: {default_value: {numerator: 0}}}");
    assert!(matches!(
        decide(&[&off], Method::OPTIONS, PREFLIGHT),
        Decision::Pass
    ));
    let half = policy("{allow_origin_string_match: [{exact: 'https://a.example'}], filter_enabled: {default_value: {numerator: 50}, runtime_key: k}}");
    let ps = Policies(vec![&half]);
    let h = headers(PREFLIGHT);
    assert!(matches!(
        ps.decide(&Method::OPTIONS, &h, 10, 0, None),
        Decision::Preflight(_)
    ));
    assert!(matches!(
        ps.decide(&Method::OPTIONS, &h, 60, 0, None),
        Decision::Pass
    ));
    // Shadow only: the origin is checked and counted, nothing changes.
    let shadow = policy("{allow_origin_string_match: [{exact: 'https://a.example'}], filter_enabled: {default_value: {numerator: 0}}, shadow_enabled: {default_value: {numerator: 100}}}");
    let stats = CorsStats {
        origin_valid: Arc::new(Default::default()),
        origin_invalid: Arc::new(Default::default()),
    };
    let d = Policies(vec![&shadow]).decide(&Method::OPTIONS, &h, 0, 0, Some(&stats));
    assert!(matches!(d, Decision::Pass));
    assert_eq!(stats.origin_valid.get(), 1);
}

#[test]
fn most_specific_policy_wins_field_by_field() {
    let vhost = policy(FULL);
    let route = policy("{allow_methods: 'PUT', allow_credentials: false}");
    let h = preflight(decide(&[&route, &vhost], Method::OPTIONS, PREFLIGHT));
    assert_eq!(h[ALLOW_METHODS], "PUT");
    assert!(h.get(ALLOW_CREDENTIALS).is_none(), "route's false wins");
    assert_eq!(
        h[ALLOW_HEADERS], "content-type,x-custom",
        "inherited from the host"
    );
    assert_eq!(
        h[ALLOW_ORIGIN], "https://a.example",
        "origins inherited too"
    );
    // filter_enabled comes from the most specific policy only.
    let route_off = policy("filter_enabled: {default_value: {numerator: 0}}");
    assert!(matches!(
        decide(&[&route_off, &vhost], Method::OPTIONS, PREFLIGHT),
        Decision::Pass
    ));
    // No policy: nothing.
    assert!(matches!(
        decide(&[], Method::OPTIONS, PREFLIGHT),
        Decision::Pass
    ));
}

#[test]
fn bad_regex_is_an_error_naming_the_field() {
    let e = CorsPolicy::compile(
        &decode::<pb::CorsPolicy>(
            "allow_origin_string_match: [{safe_regex: {regex: '('}}]",
            Format::Yaml,
        )
        .unwrap(),
    )
    .unwrap_err();
    assert!(e.field.starts_with("allow_origin_string_match[0]"), "{e}");
}

const TABLE: &str = r#"
name: t
virtual_hosts:
- name: typed
  domains: [typed]
  typed_per_filter_config:
    envoy.filters.http.cors:
      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
      allow_origin_string_match: [{exact: "https://host.example"}]
      allow_methods: GET
  routes:
  - match: {prefix: /own}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{exact: "https://route.example"}]
  - match: {prefix: /wrapped}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
          allow_methods: PATCH
  - match: {prefix: /redirect}
    redirect: {host_redirect: x}
  - match: {prefix: /}
    route: {cluster: c}
- name: legacy
  domains: [legacy]
  cors:
    allow_origin_string_match: [{exact: "https://host.example"}]
    allow_methods: GET
  routes:
  - match: {prefix: /own}
    route:
      cluster: c
      cors: {allow_methods: POST}
  - match: {prefix: /}
    route: {cluster: c}
"#;

fn methods(t: &RouteTable, host: &str, path: &str, origin: &str) -> Option<String> {
    let mut parts = http::Request::builder()
        .method("OPTIONS")
        .uri(path)
        .header("host", host)
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    parts.headers.insert("x", "y".parse().unwrap());
    let view = RequestView::from_parts(&parts);
    let sel = t.select(&view, 0);
    match sel.cors_policies("envoy.filters.http.cors").decide(
        &parts.method,
        &parts.headers,
        0,
        0,
        None,
    ) {
        Decision::Preflight(h) => Some(h[ALLOW_METHODS].to_str().unwrap().to_string()),
        _ => None,
    }
}

#[test]
fn policies_come_from_the_route_table() {
    let t = RouteTable::from_proto(&decode(TABLE, Format::Yaml).unwrap()).unwrap();
    // Host policy alone.
    assert_eq!(
        methods(&t, "typed", "/", "https://host.example").as_deref(),
        Some("GET")
    );
    // Route policy overrides the origin list, inherits methods.
    assert_eq!(
        methods(&t, "typed", "/own", "https://route.example").as_deref(),
        Some("GET")
    );
    assert_eq!(methods(&t, "typed", "/own", "https://host.example"), None);
    // FilterConfig wrapper.
    assert_eq!(
        methods(&t, "typed", "/wrapped", "https://host.example").as_deref(),
        Some("PATCH")
    );
    // Non-forwarding routes never run the filter.
    assert_eq!(
        methods(&t, "typed", "/redirect", "https://host.example"),
        None
    );
    // Legacy fields: route action over virtual host.
    assert_eq!(
        methods(&t, "legacy", "/", "https://host.example").as_deref(),
        Some("GET")
    );
    assert_eq!(
        methods(&t, "legacy", "/own", "https://host.example").as_deref(),
        Some("POST")
    );
}

#[test]
fn per_filter_policy_hides_legacy_fields() {
    // Envoy ignores the legacy fields as soon as any per-filter policy applies.
    let yaml = r#"
name: t
virtual_hosts:
- name: both
  domains: ["*"]
  cors: {allow_origin_string_match: [{exact: "https://legacy.example"}]}
  typed_per_filter_config:
    envoy.filters.http.cors:
      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
      allow_methods: GET
  routes: [{match: {prefix: /}, route: {cluster: c}}]
"#;
    let t = RouteTable::from_proto(&decode(yaml, Format::Yaml).unwrap()).unwrap();
    assert_eq!(methods(&t, "x", "/", "https://legacy.example"), None);
}

#[test]
fn invalid_policy_rejects_the_route_table() {
    let yaml = r#"
name: t
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{safe_regex: {regex: "("}}]
"#;
    let e = RouteTable::from_proto(&decode(yaml, Format::Yaml).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .contains("typed_per_filter_config[envoy.filters.http.cors]"),
        "{e}"
    );
}
