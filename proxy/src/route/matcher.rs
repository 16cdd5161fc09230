//! Request matchers compiled from Envoy's config: string matchers (exact/prefix/suffix/contains/
//! safe_regex, `ignore_case`), header matchers (every `HeaderMatcher` form, `invert_match`,
//! `treat_missing_header_as_empty`), query parameters, dynamic metadata, and the route's path
//! match (`prefix`, `path`, `safe_regex`, `path_separated_prefix`, CONNECT) with `case_sensitive`.
//! Regexes are compiled here, at load, with RE2's full-match semantics.

use std::borrow::Cow;

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::google::protobuf::value::Kind;
use regex::Regex;

use super::{DynamicMetadata, FieldError, Fraction, RequestView, Runtime};

/// Largest compiled regex program accepted (bytes); generous, RE2's program-size checks differ.
const REGEX_SIZE_LIMIT: usize = 32 << 20;

/// Header lookup by lower-case name; several values are joined with `,` as Envoy does.
pub trait HeaderSource {
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// All values of `name` in `map`, joined with `,`.
pub(crate) fn joined<'a>(map: &'a http::HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut it = map.get_all(name).iter();
    let first = it.next()?;
    let first = String::from_utf8_lossy(first.as_bytes());
    match it.next() {
        None => Some(first),
        Some(second) => {
            let mut s = first.into_owned();
            s.push(',');
            s.push_str(&String::from_utf8_lossy(second.as_bytes()));
            for v in it {
                s.push(',');
                s.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            Some(Cow::Owned(s))
        }
    }
}

impl HeaderSource for http::request::Parts {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            ":authority" => super::headers::authority_of(self).map(Cow::Borrowed),
            ":path" => Some(Cow::Borrowed(
                self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            )),
            ":method" => Some(Cow::Borrowed(self.method.as_str())),
            ":scheme" => self.uri.scheme_str().map(Cow::Borrowed),
            n if n.starts_with(':') => None,
            n => joined(&self.headers, n),
        }
    }
}

impl HeaderSource for http::response::Parts {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            ":status" => Some(Cow::Owned(self.status.as_u16().to_string())),
            n if n.starts_with(':') => None,
            n => joined(&self.headers, n),
        }
    }
}

/// Compiles `re` for RE2-style full matching.
pub(crate) fn full_regex(re: &str) -> Result<Regex, FieldError> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| FieldError::new("regex", format!("invalid regex {re:?}: {e}")))
}

/// Compiles `re` for searching (rewrites, which replace every match).
pub(crate) fn search_regex(re: &str) -> Result<Regex, FieldError> {
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| FieldError::new("regex", format!("invalid regex {re:?}: {e}")))
}

/// A `RegexMatchAndSubstitute`: pattern plus RE2 substitution (`\1` → capture group 1).
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    pub regex: Regex,
    /// The substitution translated to the `regex` crate's `${1}` syntax.
    replacement: String,
}

impl RegexRewrite {
    pub(crate) fn compile(p: &mpb::RegexMatchAndSubstitute) -> Result<Self, FieldError> {
        let pattern = p
            .pattern
            .as_ref()
            .ok_or_else(|| FieldError::new("pattern", "missing"))?;
        let regex = search_regex(&pattern.regex).map_err(|e| e.under("pattern"))?;
        Ok(RegexRewrite {
            regex,
            replacement: re2_substitution(&p.substitution),
        })
    }

    /// Replaces every match in `input`.
    pub fn replace_all(&self, input: &str) -> String {
        self.regex
            .replace_all(input, self.replacement.as_str())
            .into_owned()
    }
}

/// RE2 substitution (`\0`..`\9`, `\\`) → regex crate replacement (`${0}`, `$$` for a literal `$`).
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// A compiled `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact { value: String, ignore_case: bool },
    Prefix { value: String, ignore_case: bool },
    Suffix { value: String, ignore_case: bool },
    Contains { value: String, ignore_case: bool },
    Regex(Regex, String),
}

impl StringMatch {
    pub(crate) fn compile(m: &mpb::StringMatcher) -> Result<Self, FieldError> {
        use mpb::string_matcher::MatchPattern as P;
        let ic = m.ignore_case;
        let lower = |s: &str| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match &m.match_pattern {
            Some(P::Exact(v)) => StringMatch::Exact {
                value: lower(v),
                ignore_case: ic,
            },
            Some(P::Prefix(v)) => StringMatch::Prefix {
                value: lower(v),
                ignore_case: ic,
            },
            Some(P::Suffix(v)) => StringMatch::Suffix {
                value: lower(v),
                ignore_case: ic,
            },
            Some(P::Contains(v)) => StringMatch::Contains {
                value: lower(v),
                ignore_case: ic,
            },
            Some(P::SafeRegex(r)) => {
                if ic {
                    return Err(FieldError::new(
                        "ignore_case",
                        "not supported with safe_regex (use (?i) in the regex)",
                    ));
                }
                StringMatch::Regex(
                    full_regex(&r.regex).map_err(|e| e.under("safe_regex"))?,
                    r.regex.clone(),
                )
            }
            Some(P::Custom(c)) => {
                return Err(FieldError::new(
                    "custom",
                    format!("custom string matcher {:?} is not supported", c.name),
                ))
            }
            None => return Err(FieldError::new("match_pattern", "no pattern set")),
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        let fold = |ic: bool| -> Cow<'_, str> {
            if ic {
                Cow::Owned(v.to_ascii_lowercase())
            } else {
                Cow::Borrowed(v)
            }
        };
        match self {
            StringMatch::Exact { value, ignore_case } => {
                if *ignore_case {
                    v.eq_ignore_ascii_case(value)
                } else {
                    v == value
                }
            }
            StringMatch::Prefix { value, ignore_case } => fold(*ignore_case).starts_with(&**value),
            StringMatch::Suffix { value, ignore_case } => fold(*ignore_case).ends_with(&**value),
            StringMatch::Contains { value, ignore_case } => fold(*ignore_case).contains(&**value),
            StringMatch::Regex(re, _) => re.is_match(v),
        }
    }
}

/// How a header matcher tests the value.
#[derive(Debug, Clone)]
pub enum HeaderTest {
    String(StringMatch),
    /// `[start, end)` on the value parsed as an integer.
    Range {
        start: i64,
        end: i64,
    },
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

/// A compiled `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lower-case header name (`:authority` etc. for pseudo-headers).
    pub name: String,
    pub test: HeaderTest,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    #[allow(deprecated)]
    pub fn compile(h: &rpb::HeaderMatcher) -> Result<Self, FieldError> {
        use rpb::header_matcher::HeaderMatchSpecifier as S;
        if h.name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        let s = |value: &String, pat: fn(String) -> mpb::string_matcher::MatchPattern| {
            StringMatch::compile(&mpb::StringMatcher {
                match_pattern: Some(pat(value.clone())),
                ignore_case: false,
            })
        };
        use mpb::string_matcher::MatchPattern as P;
        let test = match &h.header_match_specifier {
            None => HeaderTest::Present(true),
            Some(S::PresentMatch(p)) => HeaderTest::Present(*p),
            // The deprecated exact_match with an empty value matches any present value.
            Some(S::ExactMatch(v)) if v.is_empty() => HeaderTest::Present(true),
            Some(S::ExactMatch(v)) => HeaderTest::String(s(v, P::Exact)?),
            Some(S::PrefixMatch(v)) => HeaderTest::String(s(v, P::Prefix)?),
            Some(S::SuffixMatch(v)) => HeaderTest::String(s(v, P::Suffix)?),
            Some(S::ContainsMatch(v)) => HeaderTest::String(s(v, P::Contains)?),
            Some(S::SafeRegexMatch(r)) => HeaderTest::String(StringMatch::Regex(
                full_regex(&r.regex).map_err(|e| e.under("safe_regex_match"))?,
                r.regex.clone(),
            )),
            Some(S::RangeMatch(r)) => HeaderTest::Range {
                start: r.start,
                end: r.end,
            },
            Some(S::StringMatch(m)) => {
                HeaderTest::String(StringMatch::compile(m).map_err(|e| e.under("string_match"))?)
            }
        };
        Ok(HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            test,
            invert: h.invert_match,
            treat_missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Envoy's `HeaderUtility::matchHeaders` for one matcher.
    pub fn matches(&self, src: &(impl HeaderSource + ?Sized)) -> bool {
        let value = src.header(&self.name);
        if value.is_none() && !self.treat_missing_as_empty {
            // An absent header only satisfies a presence test that asks for absence.
            return match self.test {
                HeaderTest::Present(p) => p == self.invert,
                _ => false,
            };
        }
        let v = value.as_deref().unwrap_or("");
        let m = match &self.test {
            HeaderTest::String(sm) => sm.matches(v),
            HeaderTest::Range { start, end } => {
                v.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
            HeaderTest::Present(p) => *p,
        };
        m != self.invert
    }
}

/// All matchers must match.
pub fn all_headers_match(ms: &[HeaderMatcher], src: &(impl HeaderSource + ?Sized)) -> bool {
    ms.iter().all(|m| m.matches(src))
}

/// A compiled `QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryParamMatcher {
    pub name: String,
    /// `None`: presence only.
    pub value: Option<StringMatch>,
}

impl QueryParamMatcher {
    pub(crate) fn compile(q: &rpb::QueryParameterMatcher) -> Result<Self, FieldError> {
        use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        let value = match &q.query_parameter_match_specifier {
            Some(S::StringMatch(m)) => {
                Some(StringMatch::compile(m).map_err(|e| e.under("string_match"))?)
            }
            Some(S::PresentMatch(_)) | None => None,
        };
        Ok(QueryParamMatcher {
            name: q.name.clone(),
            value,
        })
    }

    /// Matches against the first value of the parameter in `path`'s query string.
    pub fn matches(&self, path: &str) -> bool {
        match query_param(path, &self.name) {
            None => false,
            Some(v) => self.value.as_ref().is_none_or(|m| m.matches(v)),
        }
    }
}

/// First value of query parameter `name` (no percent-decoding; `?a` gives `a` = "").
pub fn query_param<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let q = path.split_once('?')?.1;
    let q = q.split('#').next().unwrap_or("");
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// A compiled `envoy.type.matcher.v3.ValueMatcher`.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Null,
    Double(DoubleMatch),
    String(StringMatch),
    Bool(bool),
    Present(bool),
    /// Some element of a list value matches.
    ListOneOf(Box<ValueMatch>),
    Or(Vec<ValueMatch>),
}

#[derive(Debug, Clone, Copy)]
pub enum DoubleMatch {
    Exact(f64),
    Range(f64, f64),
}

impl ValueMatch {
    pub(crate) fn compile(v: &mpb::ValueMatcher) -> Result<Self, FieldError> {
        use mpb::value_matcher::MatchPattern as P;
        Ok(match &v.match_pattern {
            Some(P::NullMatch(_)) => ValueMatch::Null,
            Some(P::DoubleMatch(d)) => ValueMatch::Double(match &d.match_pattern {
                Some(mpb::double_matcher::MatchPattern::Exact(x)) => DoubleMatch::Exact(*x),
                Some(mpb::double_matcher::MatchPattern::Range(r)) => {
                    DoubleMatch::Range(r.start, r.end)
                }
                None => return Err(FieldError::new("double_match", "no pattern set")),
            }),
            Some(P::StringMatch(s)) => {
                ValueMatch::String(StringMatch::compile(s).map_err(|e| e.under("string_match"))?)
            }
            Some(P::BoolMatch(b)) => ValueMatch::Bool(*b),
            Some(P::PresentMatch(b)) => ValueMatch::Present(*b),
            Some(P::ListMatch(l)) => match &l.match_pattern {
                Some(mpb::list_matcher::MatchPattern::OneOf(inner)) => ValueMatch::ListOneOf(
                    Box::new(Self::compile(inner).map_err(|e| e.under("list_match.one_of"))?),
                ),
                None => return Err(FieldError::new("list_match", "no pattern set")),
            },
            Some(P::OrMatch(o)) => ValueMatch::Or(
                o.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| Self::compile(m).map_err(|e| e.under(&format!("or_match[{i}]"))))
                    .collect::<Result<_, _>>()?,
            ),
            None => return Err(FieldError::new("value", "no pattern set")),
        })
    }

    pub fn matches(&self, v: Option<&envoy_types::pb::google::protobuf::Value>) -> bool {
        let kind = v.and_then(|v| v.kind.as_ref());
        match (self, kind) {
            (ValueMatch::Null, None | Some(Kind::NullValue(_))) => true,
            (ValueMatch::Double(DoubleMatch::Exact(x)), Some(Kind::NumberValue(n))) => n == x,
            (ValueMatch::Double(DoubleMatch::Range(a, b)), Some(Kind::NumberValue(n))) => {
                n >= a && n < b
            }
            (ValueMatch::String(m), Some(Kind::StringValue(s))) => m.matches(s),
            (ValueMatch::Bool(b), Some(Kind::BoolValue(x))) => b == x,
            (ValueMatch::Present(p), k) => *p == !matches!(k, None | Some(Kind::NullValue(_))),
            (ValueMatch::ListOneOf(m), Some(Kind::ListValue(l))) => {
                l.values.iter().any(|x| m.matches(Some(x)))
            }
            (ValueMatch::Or(ms), _) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

/// A compiled `MetadataMatcher` over dynamic metadata.
#[derive(Debug, Clone)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatch,
    pub invert: bool,
}

impl MetadataMatcher {
    pub(crate) fn compile(m: &mpb::MetadataMatcher) -> Result<Self, FieldError> {
        let mut path = Vec::with_capacity(m.path.len());
        for (i, seg) in m.path.iter().enumerate() {
            match &seg.segment {
                Some(mpb::metadata_matcher::path_segment::Segment::Key(k)) => path.push(k.clone()),
                None => return Err(FieldError::new(format!("path[{i}]"), "empty segment")),
            }
        }
        if path.is_empty() {
            return Err(FieldError::new("path", "must not be empty"));
        }
        let value = m
            .value
            .as_ref()
            .ok_or_else(|| FieldError::new("value", "missing"))?;
        Ok(MetadataMatcher {
            filter: m.filter.clone(),
            path,
            value: ValueMatch::compile(value).map_err(|e| e.under("value"))?,
            invert: m.invert,
        })
    }

    pub fn matches(&self, md: Option<&DynamicMetadata>) -> bool {
        let v = md
            .and_then(|md| md.get(&self.filter))
            .and_then(|s| lookup(s, &self.path));
        self.value.matches(v) != self.invert
    }
}

/// Walks `path` through nested structs.
pub(crate) fn lookup<'a>(
    s: &'a envoy_types::pb::google::protobuf::Struct,
    path: &[String],
) -> Option<&'a envoy_types::pb::google::protobuf::Value> {
    let (first, rest) = path.split_first()?;
    let v = s.fields.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match &v.kind {
        Some(Kind::StructValue(inner)) => lookup(inner, rest),
        _ => None,
    }
}

/// The path part of a route match.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `path_separated_prefix`: equal to the prefix, or the prefix followed by `/`.
    Separated(String),
    Regex(Regex),
    /// `connect_matcher`: any CONNECT request.
    Connect,
}

/// Case-insensitive or sensitive `starts_with`.
fn starts_with(s: &str, p: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(p)
    } else {
        s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    }
}

impl PathMatch {
    /// Matches `path` (already stripped of query and fragment).
    pub fn matches(&self, path: &str, method: &str, case_sensitive: bool) -> bool {
        match self {
            PathMatch::Prefix(p) => starts_with(path, p, case_sensitive),
            PathMatch::Exact(p) => {
                if case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Separated(p) => {
                starts_with(path, p, case_sensitive)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::Connect => method == "CONNECT",
        }
    }

    /// The literal a prefix rewrite replaces: the prefix or path string (`None` for regex and
    /// CONNECT, where the whole path is replaced).
    pub fn literal(&self) -> Option<&str> {
        match self {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::Separated(p) => Some(p),
            PathMatch::Regex(_) | PathMatch::Connect => None,
        }
    }
}

/// The match conditions of one route (all must hold).
#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryParamMatcher>,
    pub cookies: Vec<(String, StringMatch, bool)>,
    pub grpc: bool,
    pub runtime: Option<(String, Fraction)>,
    /// `(presented, validated)` requirements.
    pub tls: Option<(Option<bool>, Option<bool>)>,
    pub dynamic_metadata: Vec<MetadataMatcher>,
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>, random: u64, runtime: &dyn Runtime) -> bool {
        if !self
            .path
            .matches(req.path_only(), req.method, self.case_sensitive)
        {
            return false;
        }
        if let Some((key, frac)) = &self.runtime {
            if !runtime.feature_enabled(key, *frac, random) {
                return false;
            }
        }
        if let Some((presented, validated)) = self.tls {
            let t = req.tls.unwrap_or_default();
            if presented.is_some_and(|p| p != t.peer_certificate_presented)
                || validated.is_some_and(|v| v != t.peer_certificate_validated)
            {
                return false;
            }
        }
        if self.grpc && !is_grpc(req) {
            return false;
        }
        all_headers_match(&self.headers, req)
            && self.query.iter().all(|q| q.matches(req.path))
            && self
                .cookies
                .iter()
                .all(|(n, m, inv)| cookie(req.headers, n).is_some_and(|v| m.matches(v)) != *inv)
            && self
                .dynamic_metadata
                .iter()
                .all(|m| m.matches(req.dynamic_metadata))
    }
}

fn is_grpc(req: &RequestView<'_>) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

fn cookie<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

impl RouteMatch {
    /// Compiles a `RouteMatch`; field paths are relative to it.
    pub(crate) fn compile(m: &rpb::RouteMatch) -> Result<RouteMatch, FieldError> {
        use rpb::route_match::PathSpecifier as P;
        let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || (p.ends_with('/') && p.len() > 1) {
                return Err(FieldError::new(
                    "path_separated_prefix",
                    "must not contain ?, # or end with /",
                ));
            }
            PathMatch::Separated(p.clone())
        }
        Some(P::SafeRegex(r)) => {
            PathMatch::Regex(full_regex(&r.regex).map_err(|e| e.under("safe_regex"))?)
        }
        Some(P::ConnectMatcher(_)) => PathMatch::Connect,
        Some(P::PathMatchPolicy(p)) => {
            return Err(FieldError::new(
                "path_match_policy",
                format!("extension {:?} is not supported", p.name),
            ))
        }
        None => return Err(FieldError::new(
            "path_specifier",
            "one of prefix, path, safe_regex, path_separated_prefix or connect_matcher is required",
        )),
    };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::compile(h).map_err(|e| e.under(&format!("headers[{i}]"))))
            .collect::<Result<_, _>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                QueryParamMatcher::compile(q)
                    .map_err(|e| e.under(&format!("query_parameters[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let mut cookies = Vec::new();
        for (i, c) in m.cookies.iter().enumerate() {
            let sm = c
                .string_match
                .as_ref()
                .ok_or_else(|| FieldError::new(format!("cookies[{i}].string_match"), "missing"))?;
            cookies.push((
                c.name.clone(),
                StringMatch::compile(sm)
                    .map_err(|e| e.under(&format!("cookies[{i}].string_match")))?,
                c.invert_match,
            ));
        }
        if !m.filter_state.is_empty() {
            return Err(FieldError::new(
                "filter_state",
                "filter state matchers are not supported",
            ));
        }
        let runtime = match &m.runtime_fraction {
            None => None,
            Some(rf) => {
                use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
                let dv = rf.default_value.unwrap_or_default();
                let denominator = match D::try_from(dv.denominator) {
                    Ok(D::Hundred) => 100,
                    Ok(D::TenThousand) => 10_000,
                    Ok(D::Million) => 1_000_000,
                    Err(_) => {
                        return Err(FieldError::new(
                            "runtime_fraction.default_value.denominator",
                            "unknown value",
                        ))
                    }
                };
                Some((
                    rf.runtime_key.clone(),
                    Fraction {
                        numerator: u64::from(dv.numerator),
                        denominator,
                    },
                ))
            }
        };
        let dynamic_metadata = m
            .dynamic_metadata
            .iter()
            .enumerate()
            .map(|(i, d)| {
                MetadataMatcher::compile(d).map_err(|e| e.under(&format!("dynamic_metadata[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(RouteMatch {
            path,
            case_sensitive: m.case_sensitive.is_none_or(|b| b.value),
            headers,
            query,
            cookies,
            grpc: m.grpc.is_some(),
            runtime,
            tls: m
                .tls_context
                .as_ref()
                .map(|t| (t.presented.map(|b| b.value), t.validated.map(|b| b.value))),
            dynamic_metadata,
        })
    }
}

#[cfg(test)]
#[path = "matcher_tests.rs"]
mod tests;
