//! Envoy's `router_check_tool`: runs a test file (`*.golden.proto.json` / YAML) against a
//! `RouteConfiguration` and reports, per test, Envoy's failure lines
//! (`expected: [..], actual: [..], test type: ..`).
//!
//! The test schema (`validation.proto`) is not in our descriptor pool, so the file is read as
//! plain JSON/YAML (which also accepts the trailing commas some goldens have) and its fields are
//! checked here. Runtime is Envoy's mock: a `runtime_fraction` is enabled only when its key is
//! the test's `input.runtime` and `random_value % denominator < numerator`; fractions whose
//! default numerator is 0 are raised to 1 before the table is compiled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::route::v3 as rpb;
use serde_json::Value as Json;

use super::action::new_uri;
use super::headers::{FormatCtx, HeaderTarget};
use super::matcher::HeaderMatcher;
use super::table::{local_reply_head, RouteTable, Selected};
use super::{DynamicMetadata, Fraction, HeaderSource, RequestView, RouteError, Runtime};
use crate::config::proto::{self, DecodeError, Format};

/// Output options, as the tool's flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// `--details`: print every test's name (and its failures).
    pub details: bool,
    /// `--only-show-failures`: print only failing tests.
    pub only_show_failures: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("route configuration: {0}")]
    Decode(#[from] DecodeError),
    #[error("route configuration: {0}")]
    Compile(#[from] RouteError),
    #[error("test file: {0}")]
    Tests(String),
}

/// One test's outcome: no failures means it passed.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub name: String,
    pub failures: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub tests: Vec<TestResult>,
    /// The options given to [`run`]; [`CheckReport::output`] follows them.
    pub options: CheckOptions,
}

impl CheckReport {
    /// Whether every test passed (the tool's exit status).
    pub fn passed(&self) -> bool {
        self.tests.iter().all(TestResult::passed)
    }

    pub fn passed_count(&self) -> usize {
        self.tests.iter().filter(|t| t.passed()).count()
    }

    /// The tool's output under the options given to [`run`].
    pub fn output(&self) -> String {
        self.render(&self.options)
    }

    /// `passed/total` summary, e.g. `33/33 tests passed`.
    pub fn summary(&self) -> String {
        format!("{}/{} tests passed", self.passed_count(), self.tests.len())
    }

    /// The tool's output: test names and failure lines as `opts` asks.
    pub fn render(&self, opts: &CheckOptions) -> String {
        let mut out = String::new();
        for t in &self.tests {
            if (opts.details && !opts.only_show_failures)
                || (opts.only_show_failures && !t.passed())
            {
                out.push_str(&t.name);
                out.push('\n');
                for f in &t.failures {
                    out.push_str(f);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Reads both files and runs every test.
pub fn run(
    routes_path: &Path,
    tests_path: &Path,
    opts: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CheckError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut report = run_str(
        &read(routes_path)?,
        Format::from_path(routes_path),
        &read(tests_path)?,
    )?;
    report.options = *opts;
    Ok(report)
}

/// Runs the tests in `tests` (JSON or YAML) against the route configuration `routes`.
pub fn run_str(routes: &str, format: Format, tests: &str) -> Result<CheckReport, CheckError> {
    // `proto::decode` also takes Durations written as `{seconds, nanos}`, as TestRoutes has.
    let mut rc: rpb::RouteConfiguration = proto::decode(routes, format)?;
    raise_zero_fractions(&mut rc);
    let table = RouteTable::from_proto(&rc)?;
    let doc: Json = serde_yaml_ng::from_str(tests).map_err(|e| CheckError::Tests(e.to_string()))?;
    let file = TestFile::parse(&doc).map_err(CheckError::Tests)?;
    let tests = file
        .tests
        .iter()
        .map(|t| run_one(&table, t, &file.runtime))
        .collect();
    Ok(CheckReport {
        tests,
        options: CheckOptions::default(),
    })
}

/// The tool turns every `runtime_fraction` default of 0 into 1 before loading.
fn raise_zero_fractions(rc: &mut rpb::RouteConfiguration) {
    for vh in &mut rc.virtual_hosts {
        for r in &mut vh.routes {
            if let Some(rf) = r.r#match.as_mut().and_then(|m| m.runtime_fraction.as_mut()) {
                if let Some(d) = rf.default_value.as_mut() {
                    if d.numerator == 0 {
                        d.numerator = 1;
                    }
                }
            }
        }
    }
}

/// Envoy's runtime mock for one test.
struct ToolRuntime<'a> {
    active: &'a str,
    values: &'a serde_json::Map<String, Json>,
}

impl Runtime for ToolRuntime<'_> {
    fn feature_enabled(&self, key: &str, default: Fraction, random: u64) -> bool {
        !self.active.is_empty() && key == self.active && default.enabled(random)
    }
    fn get_integer(&self, key: &str, default: u64) -> u64 {
        self.values
            .get(key)
            .and_then(Json::as_u64)
            .unwrap_or(default)
    }
}

struct TestFile {
    runtime: serde_json::Map<String, Json>,
    tests: Vec<TestCase>,
}

struct TestCase {
    name: String,
    input: serde_json::Map<String, Json>,
    validate: serde_json::Map<String, Json>,
}

const INPUT_FIELDS: &[&str] = &[
    "authority",
    "path",
    "method",
    "ssl",
    "internal",
    "random_value",
    "runtime",
    "additional_request_headers",
    "additional_response_headers",
    "dynamic_metadata",
];
const VALIDATE_FIELDS: &[&str] = &[
    "cluster_name",
    "virtual_cluster_name",
    "virtual_host_name",
    "path_rewrite",
    "host_rewrite",
    "path_redirect",
    "code_redirect",
    "request_header_fields",
    "response_header_fields",
    "request_header_matches",
    "response_header_matches",
    "timeout",
    "route_metadata",
];

fn object<'a>(v: &'a Json, what: &str) -> Result<&'a serde_json::Map<String, Json>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what}: expected an object"))
}

fn check_keys(
    m: &serde_json::Map<String, Json>,
    allowed: &[&str],
    what: &str,
) -> Result<(), String> {
    for k in m.keys() {
        if k == "additional_headers" {
            return Err(format!(
                "{what}.additional_headers: reserved (v2 field); use additional_request_headers"
            ));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(format!("{what}: unknown field {k:?}"));
        }
    }
    Ok(())
}

impl TestFile {
    fn parse(doc: &Json) -> Result<TestFile, String> {
        let root = object(doc, "(root)")?;
        check_keys(root, &["tests", "runtime"], "(root)")?;
        let runtime = match root.get("runtime") {
            None => Default::default(),
            Some(r) => object(r, "runtime")?.clone(),
        };
        let tests = root
            .get("tests")
            .and_then(Json::as_array)
            .filter(|t| !t.is_empty())
            .ok_or("tests: at least one test is required")?;
        let mut out = Vec::with_capacity(tests.len());
        for (i, t) in tests.iter().enumerate() {
            let at = format!("tests[{i}]");
            let t = object(t, &at)?;
            check_keys(t, &["test_name", "input", "validate"], &at)?;
            let name = t.get("test_name").and_then(Json::as_str).unwrap_or("");
            if name.is_empty() {
                return Err(format!("{at}.test_name: must not be empty"));
            }
            let input = object(
                t.get("input").ok_or(format!("{at}.input: required"))?,
                &format!("{at}.input"),
            )?;
            check_keys(input, INPUT_FIELDS, &format!("{at}.input"))?;
            for f in ["authority", "path", "method"] {
                if input
                    .get(f)
                    .and_then(Json::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(format!("{at}.input.{f}: required"));
                }
            }
            let validate = object(
                t.get("validate")
                    .ok_or(format!("{at}.validate: required"))?,
                &format!("{at}.validate"),
            )?;
            check_keys(validate, VALIDATE_FIELDS, &format!("{at}.validate"))?;
            out.push(TestCase {
                name: name.to_string(),
                input: input.clone(),
                validate: validate.clone(),
            });
        }
        Ok(TestFile {
            runtime,
            tests: out,
        })
    }
}

fn str_field<'a>(m: &'a serde_json::Map<String, Json>, k: &str) -> &'a str {
    m.get(k).and_then(Json::as_str).unwrap_or("")
}

fn u64_field(m: &serde_json::Map<String, Json>, k: &str) -> u64 {
    match m.get(k) {
        Some(Json::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Json::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The value of a validate field as the tool compares it (strings, or numbers as decimal).
fn expected_str(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn headers_list(v: Option<&Json>) -> Vec<(String, String)> {
    v.and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        str_field_v(h, "key").to_ascii_lowercase(),
                        str_field_v(h, "value").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn str_field_v<'a>(v: &'a Json, k: &str) -> &'a str {
    v.get(k).and_then(Json::as_str).unwrap_or("")
}

/// Builds the request head the tool routes: `:authority`, `:path`, `:method`,
/// `x-forwarded-proto`, `x-envoy-internal`, then the additional headers.
fn build_request(input: &serde_json::Map<String, Json>) -> Result<http::request::Parts, String> {
    let ssl = input.get("ssl").and_then(Json::as_bool).unwrap_or(false);
    let scheme = if ssl { "https" } else { "http" };
    let authority = str_field(input, "authority");
    let path = str_field(input, "path");
    let method = http::Method::from_bytes(str_field(input, "method").as_bytes())
        .map_err(|_| format!("invalid method {:?}", str_field(input, "method")))?;
    let pq: http::uri::PathAndQuery = path.parse().map_err(|_| format!("invalid path {path:?}"))?;
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq.clone())
        .build();
    let (uri, host_header) = match uri {
        Ok(u) => (u, false),
        Err(_) => (
            http::Uri::from_parts({
                let mut p = http::uri::Parts::default();
                p.path_and_query = Some(pq);
                p
            })
            .map_err(|e| e.to_string())?,
            true,
        ),
    };
    let mut parts = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .map_err(|e| e.to_string())?
        .into_parts()
        .0;
    if host_header {
        parts.set_header(":authority", authority);
    }
    parts.append_header("x-forwarded-proto", scheme);
    if input
        .get("internal")
        .and_then(Json::as_bool)
        .unwrap_or(false)
    {
        parts.append_header("x-envoy-internal", "true");
    }
    for (k, v) in headers_list(input.get("additional_request_headers")) {
        parts.append_header(&k, &v);
    }
    Ok(parts)
}

fn json_to_proto_value(v: &Json) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: a.iter().map(json_to_proto_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    envoy_types::pb::google::protobuf::Value { kind: Some(kind) }
}

fn json_to_struct(o: &serde_json::Map<String, Json>) -> envoy_types::pb::google::protobuf::Struct {
    envoy_types::pb::google::protobuf::Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_proto_value(v)))
            .collect(),
    }
}

/// Applies the input's `dynamic_metadata` entries as the set_metadata filter would.
fn build_metadata(input: &serde_json::Map<String, Json>) -> Result<DynamicMetadata, String> {
    let mut md: DynamicMetadata = HashMap::new();
    for (i, e) in input
        .get("dynamic_metadata")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ns = str_field_v(e, "metadata_namespace");
        if ns.is_empty() {
            return Err(format!(
                "input.dynamic_metadata[{i}].metadata_namespace: required"
            ));
        }
        if e.get("typed_value").is_some() {
            return Err(format!(
                "input.dynamic_metadata[{i}].typed_value: not supported"
            ));
        }
        let value = json_to_struct(
            e.get("value")
                .and_then(Json::as_object)
                .unwrap_or(&Default::default()),
        );
        let overwrite = e
            .get("allow_overwrite")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        match md.get_mut(ns) {
            None => {
                md.insert(ns.to_string(), value);
            }
            Some(existing) if overwrite => existing.fields.extend(value.fields),
            Some(_) => {}
        }
    }
    Ok(md)
}

fn run_one(
    table: &RouteTable,
    t: &TestCase,
    runtime_values: &serde_json::Map<String, Json>,
) -> TestResult {
    let mut failures = Vec::new();
    let result = check_one(table, t, runtime_values, &mut failures);
    if let Err(e) = result {
        failures.push(format!("invalid test input: {e}"));
    }
    TestResult {
        name: t.name.clone(),
        failures,
    }
}

fn compare(failures: &mut Vec<String>, actual: &str, expected: &str, test_type: &str) {
    if actual != expected {
        failures.push(format!(
            "expected: [{expected}], actual: [{actual}], test type: {test_type}"
        ));
    }
}

fn check_one(
    table: &RouteTable,
    t: &TestCase,
    runtime_values: &serde_json::Map<String, Json>,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let input = &t.input;
    let v = &t.validate;
    let mut req = build_request(input)?;
    let md = build_metadata(input)?;
    let runtime = ToolRuntime {
        active: str_field(input, "runtime"),
        values: runtime_values,
    };
    let original = req.clone();
    let view = RequestView {
        dynamic_metadata: Some(&md),
        remote_addr: Some(LOOPBACK),
        ..RequestView::from_parts(&original)
    };
    let sel = table.select_with(&view, u64_field(input, "random_value"), &runtime);

    let forward = sel.entry().is_some();
    let routed_vhost = if forward {
        sel.vhost().map(|vh| vh.name.as_str())
    } else {
        None
    };
    if let Some(e) = v.get("cluster_name") {
        let actual = match &sel {
            Selected::Route { cluster, .. } => cluster.as_ref(),
            _ => "",
        };
        compare(failures, actual, &expected_str(e), "cluster_name");
    }
    if let Some(e) = v.get("virtual_cluster_name") {
        let actual = match &sel {
            Selected::Route {
                virtual_cluster, ..
            }
            | Selected::ClusterNotFound {
                virtual_cluster, ..
            } => virtual_cluster.unwrap_or(""),
            _ => "",
        };
        compare(failures, actual, &expected_str(e), "virtual_cluster_name");
    }
    if let Some(e) = v.get("virtual_host_name") {
        compare(
            failures,
            routed_vhost.unwrap_or(""),
            &expected_str(e),
            "virtual_host_name",
        );
    }

    // Finalize once: the request for forwarding routes, the response for every response.
    let ctx = FormatCtx {
        downstream_remote: Some(LOOPBACK),
        protocol: Some("HTTP/1.1"),
        insert_original_path: true,
        ..Default::default()
    };
    let mut resp = http::Response::new(()).into_parts().0;
    for (k, val) in headers_list(input.get("additional_response_headers")) {
        resp.append_header(&k, &val);
    }
    match &sel {
        Selected::Route { .. } | Selected::ClusterNotFound { .. } => {
            table.finalize_request(&sel, &mut req, &ctx);
        }
        Selected::Direct { status, body, .. } => resp = local_reply_head(*status, *body),
        Selected::Redirect {
            status, location, ..
        } => {
            resp = local_reply_head(*status, None);
            resp.set_header("location", location);
        }
        _ => {}
    }
    let resp_ctx = FormatCtx {
        request: Some(&req),
        ..ctx.clone()
    };
    if !matches!(sel, Selected::NoRoute) {
        table.finalize_response_headers(&sel, &mut resp, &resp_ctx);
    }

    if let Some(e) = v.get("path_rewrite") {
        let actual = if forward {
            req.header(":path").map(|c| c.into_owned())
        } else {
            None
        };
        compare(
            failures,
            actual.as_deref().unwrap_or(""),
            &expected_str(e),
            "path_rewrite",
        );
    }
    if let Some(e) = v.get("host_rewrite") {
        let actual = if forward {
            req.header(":authority").map(|c| c.into_owned())
        } else {
            None
        };
        compare(
            failures,
            actual.as_deref().unwrap_or(""),
            &expected_str(e),
            "host_rewrite",
        );
    }
    if let Some(e) = v.get("path_redirect") {
        let actual = match &sel {
            Selected::Redirect { location, .. } => location.clone(),
            Selected::Direct { .. } => new_uri(None, &view, view.path),
            _ => String::new(),
        };
        compare(failures, &actual, &expected_str(e), "path_redirect");
    }
    if let Some(e) = v.get("code_redirect") {
        let actual = match &sel {
            Selected::Redirect { status, .. } | Selected::Direct { status, .. } => {
                status.to_string()
            }
            _ => String::new(),
        };
        compare(failures, &actual, &expected_str(e), "code_redirect");
    }
    for (field, src) in [
        ("request_header_fields", &req as &dyn HeaderSource),
        ("response_header_fields", &resp as &dyn HeaderSource),
    ] {
        for (k, val) in headers_list(v.get(field)) {
            let actual = src.header(&k).map(|c| c.into_owned()).unwrap_or_default();
            compare(failures, &actual, &val, field);
        }
    }
    for (field, src) in [
        ("request_header_matches", &req as &dyn HeaderSource),
        ("response_header_matches", &resp as &dyn HeaderSource),
    ] {
        for (i, m) in v
            .get(field)
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let hm: rpb::HeaderMatcher = proto::decode_json_value(m.clone())
                .map_err(|e| format!("validate.{field}[{i}]: {e}"))?;
            let compiled = HeaderMatcher::compile(&hm)
                .map_err(|e| format!("validate.{field}[{i}].{}: {}", e.field, e.message))?;
            if !compiled.matches(src) {
                failures.push(header_failure(&hm, src, field));
            }
        }
    }
    if let Some(e) = v.get("timeout") {
        let expected = parse_duration_ms(e)
            .ok_or_else(|| format!("validate.timeout: invalid duration {e}"))?;
        let actual = sel
            .entry()
            .map(|en| en.timeout.as_millis().to_string())
            .unwrap_or_default();
        compare(failures, &actual, &expected.to_string(), "timeout");
    }
    for m in v
        .get("route_metadata")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let (ns, key) = (str_field_v(m, "namespace"), str_field_v(m, "key"));
        let actual = sel
            .route()
            .and_then(|r| r.metadata.as_deref())
            .and_then(|md| md.filter_metadata.get(ns))
            .and_then(|s| s.fields.get(key))
            .map(proto_value_str)
            .unwrap_or_default();
        let expected = m.get("value").map(expected_str).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "expected: [{ns}.{key}: {expected}], actual: [{ns}.{key}: {actual}], test type: route_metadata"
            ));
        }
    }
    Ok(())
}

const LOOPBACK: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn proto_value_str(v: &envoy_types::pb::google::protobuf::Value) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// `"120s"`, `"0.5s"` or `{"seconds":..,"nanos":..}` → milliseconds.
fn parse_duration_ms(v: &Json) -> Option<u128> {
    match v {
        Json::String(s) => {
            let n = s.strip_suffix('s')?;
            let (secs, frac) = n.split_once('.').unwrap_or((n, ""));
            let secs: u128 = secs.parse().ok()?;
            let mut nanos = 0u128;
            if !frac.is_empty() {
                if frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                nanos = format!("{frac:0<9}").parse().ok()?;
            }
            Some(secs * 1000 + nanos / 1_000_000)
        }
        Json::Object(o) => {
            let secs = o
                .get("seconds")
                .map(|s| expected_str(s).parse::<u128>().ok())
                .unwrap_or(Some(0))?;
            let nanos = o.get("nanos").and_then(Json::as_u64).unwrap_or(0) as u128;
            Some(secs * 1000 + nanos / 1_000_000)
        }
        _ => None,
    }
}

/// Envoy's failure line for a header matcher that did not match.
#[allow(deprecated)]
fn header_failure(hm: &rpb::HeaderMatcher, src: &dyn HeaderSource, field: &str) -> String {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
    use rpb::header_matcher::HeaderMatchSpecifier as S;
    let name = &hm.name;
    let value = src.header(&name.to_ascii_lowercase());
    let actual_v = value.as_deref().unwrap_or("");
    let not = if hm.invert_match { "NOT " } else { "" };
    let pair = |case: &str, pattern: &str| {
        format!("expected: [{name}: {pattern}], actual: {not}[{name}: {actual_v}], test type: {field}.{case}")
    };
    match &hm.header_match_specifier {
        Some(S::StringMatch(sm)) => {
            let (case, pattern) = match &sm.match_pattern {
                Some(P::Exact(s)) => ("exact", s.as_str()),
                Some(P::Prefix(s)) => ("prefix", s.as_str()),
                Some(P::Suffix(s)) => ("suffix", s.as_str()),
                Some(P::Contains(s)) => ("contains", s.as_str()),
                Some(P::SafeRegex(r)) => ("safe_regex", r.regex.as_str()),
                Some(P::Custom(_)) | None => ("custom", ""),
            };
            pair(&format!("string_match.{case}"), pattern)
        }
        Some(S::ExactMatch(s)) => pair("exact_match", s),
        Some(S::PrefixMatch(s)) => pair("prefix_match", s),
        Some(S::SuffixMatch(s)) => pair("suffix_match", s),
        Some(S::ContainsMatch(s)) => pair("contains_match", s),
        Some(S::SafeRegexMatch(r)) => pair("safe_regex_match", &r.regex),
        Some(S::RangeMatch(_)) => {
            format!("actual: [{name}: {actual_v}], test type: {field}.range_match")
        }
        Some(S::PresentMatch(_)) | None => {
            let want = !matches!(hm.header_match_specifier, Some(S::PresentMatch(false)));
            let expected = want != hm.invert_match;
            format!(
                "expected: [has({name}):{expected}], actual: [has({name}):{}], test type: {field}.present_match",
                value.is_some()
            )
        }
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
