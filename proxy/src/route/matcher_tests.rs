use super::*;
use crate::route::DefaultRuntime;
use envoy_types::pb::google::protobuf as pbg;

fn sm(yaml: &str) -> StringMatch {
    let m: mpb::StringMatcher = serde_yaml_ng::from_str::<serde_json::Value>(yaml)
        .map(|v| crate::config::proto::decode_json_value(v).unwrap())
        .unwrap();
    StringMatch::compile(&m).unwrap()
}

fn hm(yaml: &str) -> HeaderMatcher {
    let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
    HeaderMatcher::compile(&crate::config::proto::decode_json_value(v).unwrap()).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn view<'a>(h: &'a http::HeaderMap, path: &'a str) -> RequestView<'a> {
    RequestView {
        authority: "host.example",
        path,
        method: "GET",
        headers: h,
        scheme: "http",
        internal: false,
        remote_addr: None,
        tls: None,
        dynamic_metadata: None,
    }
}

#[test]
fn string_matchers() {
    assert!(sm("{exact: abc}").matches("abc"));
    assert!(!sm("{exact: abc}").matches("ABC"));
    assert!(sm("{exact: abc, ignore_case: true}").matches("aBc"));
    assert!(sm("{prefix: /api}").matches("/api/x"));
    assert!(sm("{prefix: /API, ignore_case: true}").matches("/api/x"));
    assert!(sm("{suffix: .js}").matches("a.js"));
    assert!(sm("{suffix: .JS, ignore_case: true}").matches("a.js"));
    assert!(sm("{contains: mid}").matches("amidb"));
    assert!(!sm("{contains: MID}").matches("amidb"));
    assert!(sm("{contains: MID, ignore_case: true}").matches("amidb"));
    // safe_regex is a full match, as RE2::FullMatch.
    assert!(sm("{safe_regex: {regex: 'a+b'}}").matches("aab"));
    assert!(!sm("{safe_regex: {regex: 'a+b'}}").matches("xaab"));
    assert!(!sm("{safe_regex: {regex: 'a|b'}}").matches("ab"));
}

#[test]
fn bad_regex_is_an_error_with_field() {
    let m = mpb::StringMatcher {
        match_pattern: Some(mpb::string_matcher::MatchPattern::SafeRegex(
            mpb::RegexMatcher {
                regex: "(".into(),
                engine_type: None,
            },
        )),
        ignore_case: false,
    };
    let e = StringMatch::compile(&m).unwrap_err();
    assert_eq!(e.field, "safe_regex.regex");
}

#[test]
fn header_matchers() {
    let h = map(&[("x-a", "1"), ("x-a", "2"), ("x-n", "42"), ("x-e", "")]);
    let v = view(&h, "/p");
    // Several values are joined with ','.
    assert!(hm("{name: x-a, string_match: {exact: '1,2'}}").matches(&v));
    assert!(hm("{name: X-A}").matches(&v));
    assert!(!hm("{name: x-missing}").matches(&v));
    assert!(hm("{name: x-missing, invert_match: true}").matches(&v));
    assert!(hm("{name: x-missing, present_match: false}").matches(&v));
    assert!(!hm("{name: x-a, present_match: false}").matches(&v));
    assert!(!hm("{name: x-missing, string_match: {exact: ''}}").matches(&v));
    assert!(hm(
        "{name: x-missing, string_match: {exact: ''}, treat_missing_header_as_empty: true}"
    )
    .matches(&v));
    // An inverted value test still fails on an absent header.
    assert!(!hm("{name: x-missing, string_match: {exact: a}, invert_match: true}").matches(&v));
    assert!(hm("{name: x-n, range_match: {start: 40, end: 43}}").matches(&v));
    assert!(!hm("{name: x-n, range_match: {start: 40, end: 42}}").matches(&v));
    assert!(!hm("{name: x-a, range_match: {start: 0, end: 100}}").matches(&v));
    assert!(hm("{name: x-e, string_match: {exact: ''}}").matches(&v));
    assert!(hm("{name: ':path', string_match: {prefix: /p}}").matches(&v));
    assert!(hm("{name: ':authority', string_match: {suffix: .example}}").matches(&v));
    assert!(hm("{name: ':method', exact_match: GET}").matches(&v));
    assert!(hm("{name: x-a, exact_match: ''}").matches(&v));
    assert!(!hm("{name: x-missing, exact_match: ''}").matches(&v));
    assert!(hm("{name: x-n, safe_regex_match: {regex: '\\d+'}}").matches(&v));
    assert!(hm("{name: x-n, prefix_match: '4'}").matches(&v));
    assert!(hm("{name: x-n, suffix_match: '2'}").matches(&v));
    assert!(hm("{name: x-n, contains_match: '42'}").matches(&v));
    assert!(!hm("{name: x-n, string_match: {exact: '42'}, invert_match: true}").matches(&v));
}

#[test]
fn query_parameters() {
    let q = |name: &str, m: Option<StringMatch>| QueryParamMatcher {
        name: name.into(),
        value: m,
    };
    let p = "/p?a=1&b&c=x%20y#frag";
    assert!(q("a", None).matches(p));
    assert!(q("b", None).matches(p));
    assert!(!q("d", None).matches(p));
    assert!(q("a", Some(sm("{exact: '1'}"))).matches(p));
    assert!(q("c", Some(sm("{exact: 'x%20y'}"))).matches(p));
    assert!(!q("a", Some(sm("{exact: '2'}"))).matches(p));
    assert!(!q("a", None).matches("/p"));
}

fn sv(s: &str) -> pbg::Value {
    pbg::Value {
        kind: Some(pbg::value::Kind::StringValue(s.into())),
    }
}

#[test]
fn metadata_matchers() {
    let inner = pbg::Struct {
        fields: [("level2".to_string(), sv("value"))].into(),
    };
    let ns = pbg::Struct {
        fields: [
            ("foo".to_string(), sv("bar")),
            (
                "n".to_string(),
                pbg::Value {
                    kind: Some(pbg::value::Kind::NumberValue(3.0)),
                },
            ),
            (
                "b".to_string(),
                pbg::Value {
                    kind: Some(pbg::value::Kind::BoolValue(true)),
                },
            ),
            (
                "l".to_string(),
                pbg::Value {
                    kind: Some(pbg::value::Kind::ListValue(pbg::ListValue {
                        values: vec![sv("x"), sv("y")],
                    })),
                },
            ),
            (
                "level1".to_string(),
                pbg::Value {
                    kind: Some(pbg::value::Kind::StructValue(inner)),
                },
            ),
        ]
        .into(),
    };
    let md: DynamicMetadata = [("m".to_string(), ns)].into();
    let mm = |path: &[&str], value: ValueMatch, invert: bool| MetadataMatcher {
        filter: "m".into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        value,
        invert,
    };
    assert!(mm(&["foo"], ValueMatch::String(sm("{exact: bar}")), false).matches(Some(&md)));
    assert!(!mm(&["foo"], ValueMatch::String(sm("{exact: baz}")), false).matches(Some(&md)));
    assert!(mm(&["foo"], ValueMatch::String(sm("{exact: baz}")), true).matches(Some(&md)));
    assert!(mm(&["foo"], ValueMatch::String(sm("{exact: baz}")), true).matches(None));
    assert!(mm(
        &["level1", "level2"],
        ValueMatch::String(sm("{exact: value}")),
        false
    )
    .matches(Some(&md)));
    assert!(mm(
        &["n"],
        ValueMatch::Double(DoubleMatch::Range(2.0, 4.0)),
        false
    )
    .matches(Some(&md)));
    assert!(mm(&["n"], ValueMatch::Double(DoubleMatch::Exact(3.0)), false).matches(Some(&md)));
    assert!(mm(&["b"], ValueMatch::Bool(true), false).matches(Some(&md)));
    assert!(mm(&["missing"], ValueMatch::Null, false).matches(Some(&md)));
    assert!(mm(&["missing"], ValueMatch::Present(false), false).matches(Some(&md)));
    assert!(mm(&["foo"], ValueMatch::Present(true), false).matches(Some(&md)));
    assert!(mm(
        &["l"],
        ValueMatch::ListOneOf(Box::new(ValueMatch::String(sm("{exact: y}")))),
        false
    )
    .matches(Some(&md)));
    assert!(mm(
        &["foo"],
        ValueMatch::Or(vec![
            ValueMatch::Bool(true),
            ValueMatch::String(sm("{prefix: b}"))
        ]),
        false
    )
    .matches(Some(&md)));
}

#[test]
fn path_matches() {
    let p = PathMatch::Prefix("/api".into());
    assert!(p.matches("/api/x", "GET", true));
    assert!(p.matches("/apix", "GET", true));
    assert!(!p.matches("/API/x", "GET", true));
    assert!(p.matches("/API/x", "GET", false));
    let e = PathMatch::Exact("/FOOD".into());
    assert!(e.matches("/fooD", "GET", false));
    assert!(!e.matches("/fooD", "GET", true));
    let s = PathMatch::Separated("/api".into());
    assert!(s.matches("/api", "GET", true));
    assert!(s.matches("/api/x", "GET", true));
    assert!(!s.matches("/apix", "GET", true));
    let r = PathMatch::Regex(full_regex("/api/v[0-9]/.*").unwrap());
    assert!(r.matches("/api/v1/resource", "GET", true));
    assert!(!r.matches("/api/v10/resource", "GET", true));
    assert!(PathMatch::Connect.matches("", "CONNECT", true));
    assert!(!PathMatch::Connect.matches("/", "GET", true));
}

#[test]
fn re2_substitutions() {
    let rw = RegexRewrite::compile(&mpb::RegexMatchAndSubstitute {
        pattern: Some(mpb::RegexMatcher {
            regex: "^/service/([^/]+)(/.*)$".into(),
            engine_type: None,
        }),
        substitution: "\\2/instance/\\1$".into(),
    })
    .unwrap();
    assert_eq!(
        rw.replace_all("/service/foo/v1/api"),
        "/v1/api/instance/foo$"
    );
}

fn route_match(yaml: &str) -> RouteMatch {
    let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
    RouteMatch::compile(&crate::config::proto::decode_json_value(v).unwrap()).unwrap()
}

#[test]
fn route_match_conditions() {
    let grpc = route_match("{prefix: /, grpc: {}}");
    let h = map(&[("content-type", "application/grpc+proto")]);
    assert!(grpc.matches(&view(&h, "/"), 0, &DefaultRuntime));
    let h2 = map(&[("content-type", "application/grpcx")]);
    assert!(!grpc.matches(&view(&h2, "/"), 0, &DefaultRuntime));

    let rt = route_match("{prefix: /, runtime_fraction: {runtime_key: k, default_value: {numerator: 30, denominator: HUNDRED}}}");
    let h = map(&[]);
    assert!(rt.matches(&view(&h, "/"), 129, &DefaultRuntime));
    assert!(!rt.matches(&view(&h, "/"), 130, &DefaultRuntime));

    let tls = route_match("{prefix: /, tls_context: {presented: true}}");
    let mut v = view(&h, "/");
    assert!(!tls.matches(&v, 0, &DefaultRuntime));
    v.tls = Some(crate::route::TlsInfo {
        peer_certificate_presented: true,
        peer_certificate_validated: false,
    });
    assert!(tls.matches(&v, 0, &DefaultRuntime));
    let validated = route_match("{prefix: /, tls_context: {validated: true}}");
    assert!(!validated.matches(&v, 0, &DefaultRuntime));

    let q = route_match("{path: /p, query_parameters: [{name: debug, present_match: true}]}");
    assert!(q.matches(&view(&h, "/p?debug"), 0, &DefaultRuntime));
    assert!(!q.matches(&view(&h, "/p?x=1"), 0, &DefaultRuntime));

    let c = route_match("{prefix: /, cookies: [{name: user, string_match: {exact: bob}}]}");
    let hc = map(&[("cookie", "a=1; user=bob")]);
    assert!(c.matches(&view(&hc, "/"), 0, &DefaultRuntime));
    assert!(!c.matches(&view(&h, "/"), 0, &DefaultRuntime));

    let md = route_match("{prefix: /, dynamic_metadata: [{filter: f, path: [{key: k}], value: {string_match: {exact: v}}}]}");
    assert!(!md.matches(&view(&h, "/"), 0, &DefaultRuntime));
}
