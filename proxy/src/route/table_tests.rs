use super::*;
use crate::config::proto::{decode, Format};
use crate::route::RouteError;

fn table(yaml: &str) -> RouteTable {
    RouteTable::from_proto(&decode(yaml, Format::Yaml).unwrap()).unwrap()
}

fn table_err(yaml: &str) -> RouteError {
    RouteTable::from_proto(&decode(yaml, Format::Yaml).unwrap()).unwrap_err()
}

struct Req {
    parts: http::request::Parts,
}

impl Req {
    fn new(authority: &str, path: &str) -> Req {
        let mut parts = http::Request::builder()
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        parts
            .headers
            .insert(http::header::HOST, authority.parse().unwrap());
        Req { parts }
    }
    fn header(mut self, k: &'static str, v: &str) -> Req {
        self.parts.headers.append(k, v.parse().unwrap());
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView::from_parts(&self.parts)
    }
}

fn cluster(t: &RouteTable, authority: &str, path: &str) -> String {
    let r = Req::new(authority, path);
    match t.select(&r.view(), 0) {
        Selected::Route { cluster, .. } => cluster.into_owned(),
        Selected::NoRoute => "<none>".into(),
        other => format!("<{other:?}>"),
    }
}

const HOSTS: &str = r#"
virtual_hosts:
- {name: exact, domains: [foo.example.com, "foo.example.com:8080"], routes: [{match: {prefix: /}, route: {cluster: exact}}]}
- {name: suffix-short, domains: ["*.example.com"], routes: [{match: {prefix: /}, route: {cluster: suffix-short}}]}
- {name: suffix-long, domains: ["*-bar.example.com"], routes: [{match: {prefix: /}, route: {cluster: suffix-long}}]}
- {name: prefix-short, domains: ["api.*"], routes: [{match: {prefix: /}, route: {cluster: prefix-short}}]}
- {name: prefix-long, domains: ["api.internal.*"], routes: [{match: {prefix: /}, route: {cluster: prefix-long}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: default}}]}
"#;

#[test]
fn virtual_host_selection_order() {
    let t = table(HOSTS);
    assert_eq!(cluster(&t, "foo.example.com", "/"), "exact");
    assert_eq!(cluster(&t, "FOO.Example.COM", "/"), "exact");
    assert_eq!(cluster(&t, "foo.example.com:8080", "/"), "exact");
    // Ports are part of the host unless ignore_port_in_host_matching.
    assert_eq!(cluster(&t, "foo.example.com:9090", "/"), "default");
    assert_eq!(cluster(&t, "x-bar.example.com", "/"), "suffix-long");
    assert_eq!(cluster(&t, "x.example.com", "/"), "suffix-short");
    // A wildcard needs at least one character.
    assert_eq!(cluster(&t, ".example.com", "/"), "default");
    assert_eq!(cluster(&t, "api.internal.x", "/"), "prefix-long");
    assert_eq!(cluster(&t, "api.x", "/"), "prefix-short");
    // Suffix wildcards win over prefix wildcards.
    assert_eq!(cluster(&t, "api.example.com", "/"), "suffix-short");
    assert_eq!(cluster(&t, "other", "/"), "default");
}

#[test]
fn ignore_port_and_no_default() {
    let t = table(&format!("ignore_port_in_host_matching: true\n{}", HOSTS.replace("- {name: default, domains: [\"*\"], routes: [{match: {prefix: /}, route: {cluster: default}}]}\n", "")));
    assert_eq!(cluster(&t, "foo.example.com:9090", "/"), "exact");
    assert_eq!(cluster(&t, "[::1]:80", "/"), "<none>");
    assert_eq!(cluster(&t, "nothing", "/"), "<none>");
}

#[test]
fn config_errors_name_the_place() {
    let e = table_err("virtual_hosts: [{name: a, domains: [x]}, {name: b, domains: [X]}]");
    assert!(matches!(e, RouteError::DuplicateDomain { .. }), "{e}");
    let e = table_err("virtual_hosts: [{name: a, domains: [x], routes: [{match: {prefix: /}, route: {cluster: c}}, {name: r2, match: {safe_regex: {regex: '('}}, route: {cluster: c}}]}]");
    assert_eq!(
        e.to_string().split(": invalid").next().unwrap(),
        "virtual host \"a\", route #1 (r2): match.safe_regex.regex"
    );
    let e = table_err("virtual_hosts: [{name: a, domains: [x], routes: [{match: {prefix: /, headers: [{name: h, string_match: {safe_regex: {regex: '['}}}]}, route: {cluster: c}}]}]");
    assert!(
        e.to_string()
            .contains("route #0: match.headers[0].string_match.safe_regex.regex"),
        "{e}"
    );
    let e = table_err("virtual_hosts: [{name: a, domains: [x], routes: [{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}], total_weight: 5}}}]}]");
    assert!(
        e.to_string()
            .contains("route.weighted_clusters.total_weight"),
        "{e}"
    );
    let e = table_err("virtual_hosts: [{name: a, domains: [x], routes: [{match: {prefix: /}, route: {cluster: c}, request_headers_to_add: [{header: {key: k, value: '%NOPE%'}}]}]}]");
    assert!(
        e.to_string()
            .contains("request_headers_to_add[0].header.value"),
        "{e}"
    );
    let e = table_err("virtual_hosts: [{name: a, domains: [x], request_headers_to_add: [{header: {key: ':path', value: x}}]}]");
    assert!(
        e.to_string()
            .contains("request_headers_to_add[0].header.key"),
        "{e}"
    );
    let e =
        table_err("virtual_hosts: [{name: a, domains: [x], response_headers_to_remove: [Host]}]");
    assert!(e.to_string().contains("may not be removed"), "{e}");
    let e = table_err("max_direct_response_body_size_bytes: 3\nvirtual_hosts: [{name: a, domains: [x], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: four}}}]}]");
    assert!(
        e.to_string().contains("route #0: direct_response.body"),
        "{e}"
    );
    let e = table_err("virtual_hosts: [{name: a, domains: [x], routes: [{match: {prefix: /}}]}]");
    assert!(e.to_string().contains("action"), "{e}");
}

#[test]
fn first_match_wins_and_actions() {
    let t = table(
        r#"
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {path: /exact}, route: {cluster: exact}}
  - {match: {prefix: /exact}, route: {cluster: prefix}}
  - {match: {prefix: /hdr}, route: {cluster_header: x-cluster, cluster_not_found_response_code: NOT_FOUND}}
  - {match: {prefix: /redir}, redirect: {https_redirect: true, host_redirect: new.example, port_redirect: 8443, prefix_rewrite: /moved, response_code: TEMPORARY_REDIRECT}}
  - {match: {prefix: /strip}, redirect: {path_redirect: /p, strip_query: true, response_code: PERMANENT_REDIRECT}}
  - {match: {prefix: /see}, redirect: {scheme_redirect: HTTP, response_code: SEE_OTHER}}
  - {match: {prefix: /direct}, direct_response: {status: 503, body: {inline_string: down}}}
  - {match: {prefix: /nf}, non_forwarding_action: {}}
"#,
    );
    assert_eq!(cluster(&t, "h", "/exact"), "exact");
    assert_eq!(cluster(&t, "h", "/exact/x"), "prefix");
    let r = Req::new("h", "/hdr").header("x-cluster", "dyn");
    assert!(
        matches!(t.select(&r.view(), 0), Selected::Route { ref cluster, .. } if cluster == "dyn")
    );
    let r = Req::new("h", "/hdr");
    assert!(matches!(
        t.select(&r.view(), 0),
        Selected::ClusterNotFound { status: 404, .. }
    ));
    let r = Req::new("h:80", "/redir/a?q=1");
    match t.select(&r.view(), 0) {
        Selected::Redirect {
            location, status, ..
        } => {
            assert_eq!(location, "https://new.example:8443/moved/a?q=1");
            assert_eq!(status, 307);
        }
        s => panic!("{s:?}"),
    }
    let r = Req::new("h", "/strip?q=1");
    assert!(
        matches!(t.select(&r.view(), 0), Selected::Redirect { ref location, status: 308, .. } if location == "http://h/p")
    );
    let r = Req::new("h", "/see");
    assert!(
        matches!(t.select(&r.view(), 0), Selected::Redirect { ref location, status: 303, .. } if location == "http://h/see")
    );
    let r = Req::new("h", "/direct");
    assert!(matches!(
        t.select(&r.view(), 0),
        Selected::Direct {
            status: 503,
            body: Some("down"),
            ..
        }
    ));
    let r = Req::new("h", "/nf");
    assert!(matches!(
        t.select(&r.view(), 0),
        Selected::NonForwarding { .. }
    ));
    assert_eq!(cluster(&t, "h", "/other"), "<none>");
}

#[test]
fn require_tls() {
    let t = table("virtual_hosts: [{name: a, domains: [a, 'a:80'], require_tls: ALL, routes: [{match: {prefix: /}, route: {cluster: c}}]}, {name: b, domains: [b], require_tls: EXTERNAL_ONLY, routes: [{match: {prefix: /}, route: {cluster: c}}]}]");
    let r = Req::new("a:80", "/x?y");
    assert!(
        matches!(t.select(&r.view(), 0), Selected::Redirect { ref location, status: 301, route: None, .. } if location == "https://a/x?y")
    );
    let r = Req::new("a", "/x").header("x-forwarded-proto", "https");
    assert!(matches!(t.select(&r.view(), 0), Selected::Route { .. }));
    let r = Req::new("b", "/x").header("x-envoy-internal", "true");
    assert!(matches!(t.select(&r.view(), 0), Selected::Route { .. }));
    let r = Req::new("b", "/x");
    assert!(matches!(t.select(&r.view(), 0), Selected::Redirect { .. }));
}

#[test]
fn weighted_and_virtual_clusters() {
    let t = table(
        r#"
virtual_hosts:
- name: w
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route:
      weighted_clusters:
        clusters:
        - {name: a, weight: 30, request_headers_to_add: [{header: {key: x-w, value: a}}], host_rewrite_literal: a.internal}
        - {name: b, weight: 70}
  virtual_clusters:
  - {name: users, headers: [{name: ":path", string_match: {safe_regex: {regex: "^/users/\\d+$"}}}]}
"#,
    );
    let r = Req::new("h", "/users/12");
    match t.select(&r.view(), 129) {
        Selected::Route {
            cluster,
            weighted,
            virtual_cluster,
            ..
        } => {
            assert_eq!(cluster, "a");
            assert_eq!(weighted.unwrap().name, "a");
            assert_eq!(virtual_cluster, Some("users"));
        }
        s => panic!("{s:?}"),
    }
    let r = Req::new("h", "/users/x");
    match t.select(&r.view(), 130) {
        Selected::Route {
            cluster,
            virtual_cluster,
            ..
        } => {
            assert_eq!(cluster, "b");
            assert_eq!(virtual_cluster, Some("other"));
        }
        s => panic!("{s:?}"),
    }
    // Weighted-cluster header additions and host rewrite apply when finalizing.
    let mut r = Req::new("h", "/users/12");
    let view_parts = r.parts.clone();
    let sel = t.select(&RequestView::from_parts(&view_parts), 0);
    t.finalize_request(&sel, &mut r.parts, &FormatCtx::default());
    assert_eq!(r.parts.headers["x-w"], "a");
    assert_eq!(headers::authority_of(&r.parts), Some("a.internal"));
}

fn finalize(t: &RouteTable, r: &mut Req, ctx: &FormatCtx<'_>) {
    let copy = r.parts.clone();
    let sel = t.select(&RequestView::from_parts(&copy), 0);
    t.finalize_request(&sel, &mut r.parts, ctx);
}

#[test]
fn rewrites() {
    let t = table(
        r#"
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {path: /api/locations, case_sensitive: false}, route: {cluster: c, prefix_rewrite: /rewrote}}
  - {match: {prefix: /svc/}, route: {cluster: c, regex_rewrite: {pattern: {regex: "^/svc/([^/]+)/(.*)$"}, substitution: "/\\2/\\1"}}}
  - {match: {prefix: /hdr}, route: {cluster: c, host_rewrite_header: x-host, append_x_forwarded_host: true}}
  - {match: {prefix: /re}, route: {cluster: c, host_rewrite_path_regex: {pattern: {regex: "^/re/([^/]+).*$"}, substitution: "\\1.svc"}}}
  - {match: {safe_regex: {regex: "/rx/.*"}}, route: {cluster: c, prefix_rewrite: /whole}}
  - {match: {prefix: /auto}, route: {cluster: c, auto_host_rewrite: true}}
"#,
    );
    let ctx = FormatCtx {
        insert_original_path: true,
        ..Default::default()
    };
    let mut r = Req::new("h", "/API/locations?works=true");
    finalize(&t, &mut r, &ctx);
    assert_eq!(r.parts.uri.path_and_query().unwrap(), "/rewrote?works=true");
    assert_eq!(
        r.parts.headers["x-envoy-original-path"],
        "/API/locations?works=true"
    );
    let mut r = Req::new("h", "/svc/foo/bar/baz?q");
    finalize(&t, &mut r, &FormatCtx::default());
    assert_eq!(r.parts.uri.path_and_query().unwrap(), "/bar/baz/foo?q");
    assert!(!r.parts.headers.contains_key("x-envoy-original-path"));
    let mut r = Req::new("h", "/hdr").header("x-host", "up.example");
    finalize(&t, &mut r, &ctx);
    assert_eq!(headers::authority_of(&r.parts), Some("up.example"));
    assert_eq!(r.parts.headers["x-forwarded-host"], "h");
    let mut r = Req::new("h", "/hdr");
    finalize(&t, &mut r, &ctx);
    assert_eq!(headers::authority_of(&r.parts), Some("h"));
    let mut r = Req::new("h", "/re/name/x?y");
    finalize(&t, &mut r, &ctx);
    assert_eq!(headers::authority_of(&r.parts), Some("name.svc"));
    let mut r = Req::new("h", "/rx/a?b");
    finalize(&t, &mut r, &ctx);
    assert_eq!(r.parts.uri.path_and_query().unwrap(), "/whole?b");
    let r = Req::new("h", "/auto");
    let sel = t.select(&r.view(), 0);
    assert!(matches!(
        sel.entry().unwrap().host_rewrite,
        HostRewrite::Auto
    ));
}

const LEVELS: &str = r#"
request_headers_to_add: [{header: {key: x-level, value: global}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
response_headers_to_add: [{header: {key: x-resp, value: global}}]
response_headers_to_remove: [x-upstream]
virtual_hosts:
- name: vh
  domains: ["*"]
  request_headers_to_add: [{header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
  response_headers_to_add: [{header: {key: x-resp, value: vhost}}]
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    request_headers_to_add:
    - {header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    - {header: {key: x-ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
    - {header: {key: x-orig-path, value: "%REQ(:path)%"}}
    response_headers_to_add: [{header: {key: x-resp, value: route}}]
"#;

#[test]
fn header_mutation_levels() {
    let ctx = FormatCtx {
        downstream_remote: Some("10.0.0.1:1234".parse().unwrap()),
        ..Default::default()
    };
    let t = table(LEVELS);
    let mut r = Req::new("h", "/p");
    finalize(&t, &mut r, &ctx);
    // Default: route, then vhost, then route config; the last evaluated wins.
    assert_eq!(r.parts.headers["x-level"], "global");
    assert_eq!(r.parts.headers["x-ip"], "10.0.0.1");
    assert_eq!(r.parts.headers["x-orig-path"], "/p");
    let t2 = table(&format!(
        "most_specific_header_mutations_wins: true\n{LEVELS}"
    ));
    let mut r = Req::new("h", "/p");
    finalize(&t2, &mut r, &ctx);
    assert_eq!(r.parts.headers["x-level"], "route");

    let r = Req::new("h", "/p");
    let sel = t.select(&r.view(), 0);
    let mut resp = http::Response::builder()
        .header("x-upstream", "1")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    t.finalize_response_headers(&sel, &mut resp, &ctx);
    let vals: Vec<_> = resp
        .headers
        .get_all("x-resp")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vals, ["route", "vhost", "global"]);
    assert!(!resp.headers.contains_key("x-upstream"));
}

#[test]
fn table_is_shareable() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<RouteTable>();
}

#[test]
fn local_reply_heads() {
    let h = local_reply_head(200, Some("Success!"));
    assert_eq!(h.headers["content-type"], "text/plain");
    assert_eq!(h.headers["content-length"], "8");
    let h = local_reply_head(200, Some(""));
    assert!(h.headers.is_empty());
}

#[test]
fn policies_exposed() {
    let t = table(
        r#"
virtual_hosts:
- name: vh
  domains: ["*"]
  retry_policy: {retry_on: "5xx,connect-failure", num_retries: 3}
  typed_per_filter_config:
    envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
  routes:
  - match: {prefix: /own}
    route:
      cluster: c
      timeout: 2.5s
      idle_timeout: 60s
      retry_policy:
        retry_on: retriable-status-codes
        per_try_timeout: 1s
        retry_back_off: {base_interval: 0.1s}
        retriable_status_codes: [503, 504]
        retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]
      upgrade_configs: [{upgrade_type: WebSocket}, {upgrade_type: CONNECT, enabled: false}]
      request_mirror_policies:
      - {cluster: shadow, runtime_fraction: {runtime_key: m, default_value: {numerator: 5, denominator: TEN_THOUSAND}}}
      max_stream_duration: {max_stream_duration: 30s, grpc_timeout_header_max: 5s}
      hash_policy:
      - {header: {header_name: X-User}}
      - {cookie: {name: sess, ttl: 10s, path: /}, terminal: true}
      - {connection_properties: {source_ip: true}}
      - {query_parameter: {name: id}}
  - match: {prefix: /}
    route: {cluster: c, timeout: 0s}
"#,
    );
    let r = Req::new("h", "/own");
    let sel = t.select(&r.view(), 0);
    let e = sel.entry().unwrap();
    assert_eq!(e.timeout, std::time::Duration::from_millis(2500));
    assert_eq!(e.idle_timeout, Some(std::time::Duration::from_secs(60)));
    let rp = e.retry_policy.as_ref().unwrap();
    assert_eq!(rp.retry_on, ["retriable-status-codes"]);
    assert_eq!(rp.num_retries, 1);
    assert_eq!(rp.per_try_timeout, Some(std::time::Duration::from_secs(1)));
    assert_eq!(
        rp.back_off.unwrap().max_interval,
        std::time::Duration::from_secs(1)
    );
    assert_eq!(rp.retriable_status_codes, [503, 504]);
    assert!(rp.previous_hosts_predicate);
    assert_eq!(e.hash_policy.len(), 4);
    assert_eq!(
        e.hash_policy[0],
        HashPolicy::Header {
            name: "x-user".into(),
            terminal: false
        }
    );
    assert!(matches!(
        e.hash_policy[1],
        HashPolicy::Cookie { terminal: true, .. }
    ));
    assert!(sel.fault_config("envoy.filters.http.fault").is_some());
    assert_eq!(
        e.upgrades,
        [
            ("websocket".to_string(), true),
            ("connect".to_string(), false)
        ]
    );
    assert_eq!(e.request_mirrors[0].cluster, "shadow");
    assert_eq!(
        e.request_mirrors[0].fraction.as_ref().unwrap().1,
        crate::route::Fraction {
            numerator: 5,
            denominator: 10_000
        }
    );
    let msd = e.max_stream_duration.unwrap();
    assert_eq!(
        msd.max_stream_duration,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(msd.grpc_timeout_header_offset, None);
    let r = Req::new("h", "/");
    let sel = t.select(&r.view(), 0);
    let e = sel.entry().unwrap();
    assert_eq!(e.timeout, std::time::Duration::ZERO);
    // The virtual host's retry policy applies when the route has none.
    assert_eq!(e.retry_policy.as_ref().unwrap().num_retries, 3);
    assert_eq!(
        e.retry_policy.as_ref().unwrap().retry_on,
        ["5xx", "connect-failure"]
    );
}
