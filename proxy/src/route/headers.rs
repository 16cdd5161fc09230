//! Header mutations from route config (`*_headers_to_add` / `*_headers_to_remove` at route,
//! virtual-host and route-config level) and the `%COMMAND%` formatters their values may use.
//!
//! Values are parsed at load into literal and command pieces. Within one level, removals run
//! first, then every value is formatted against the headers as they were, then overwrites, then
//! appends (Envoy's `HeaderParser::evaluateHeaders`).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3 as core;
use http::{HeaderName, HeaderValue};

use super::FieldError;
use super::HeaderSource;

/// Facts the formatters may print. Everything is optional; a missing fact formats as "".
#[derive(Debug, Clone, Default)]
pub struct FormatCtx<'a> {
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: Option<&'a str>,
    /// The request's start on the monotonic clock: `%START_TIME%` is worked out from it when
    /// printed, so no request pays a wall-clock read it does not use.
    pub started: Option<std::time::Instant>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub hostname: Option<&'a str>,
    /// The request, for `%REQ(..)%` in response headers.
    pub request: Option<&'a http::request::Parts>,
    /// Set `x-envoy-original-path` when the path is rewritten (Envoy does unless
    /// `suppress_envoy_headers`).
    pub insert_original_path: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    RemoteAddr {
        port: bool,
    },
    LocalAddr {
        port: bool,
    },
    UpstreamHost,
    UpstreamCluster,
    Protocol,
    StartTime,
    Hostname,
    /// `%REQ(name?alt):max%` / `%RESP(..)%`.
    Header {
        response: bool,
        name: String,
        alt: Option<String>,
        max: Option<usize>,
    },
}

/// A header value with `%COMMAND%` substitutions, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Formatter(Vec<Piece>);

impl Formatter {
    /// Parses `s`; `%%` is a literal `%`, an unterminated `%` is an error.
    pub fn parse(s: &str) -> Result<Formatter, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let end = command_end(rest)
                .ok_or_else(|| format!("unterminated or malformed %command% in {s:?}"))?;
            let cmd = &rest[..end];
            rest = &rest[end + 1..];
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(parse_command(cmd)?);
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Formatter(pieces))
    }

    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// Formats against `headers` (for `%REQ%` in request mutations, `%RESP%` in response ones).
    pub fn format(&self, ctx: &FormatCtx<'_>, own: &dyn HeaderSource, response: bool) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::RemoteAddr { port } => push_addr(&mut out, ctx.downstream_remote, *port),
                Piece::LocalAddr { port } => push_addr(&mut out, ctx.downstream_local, *port),
                Piece::UpstreamHost => push_addr(&mut out, ctx.upstream_host, true),
                Piece::UpstreamCluster => out.push_str(ctx.upstream_cluster.unwrap_or("")),
                Piece::Protocol => out.push_str(ctx.protocol.unwrap_or("")),
                Piece::Hostname => out.push_str(ctx.hostname.unwrap_or("")),
                Piece::StartTime => {
                    if let Some(t) = ctx.started.map(|i| SystemTime::now() - i.elapsed()) {
                        out.push_str(&rfc3339_millis(t));
                    }
                }
                Piece::Header {
                    response: want_resp,
                    name,
                    alt,
                    max,
                } => {
                    let src: Option<&dyn HeaderSource> = if *want_resp == response {
                        Some(own)
                    } else if !*want_resp {
                        ctx.request.map(|r| r as &dyn HeaderSource)
                    } else {
                        None
                    };
                    if let Some(src) = src {
                        let v = src
                            .header(name)
                            .or_else(|| alt.as_deref().and_then(|a| src.header(a)));
                        if let Some(v) = v {
                            match max {
                                Some(m) => out.extend(v.chars().take(*m)),
                                None => out.push_str(&v),
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Index of the `%` closing a command starting at `s` (after the opening `%`).
pub(crate) fn command_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// A `%COMMAND(arg):max%` body split into its name, argument and length limit (shared with
/// the access log formatter).
pub(crate) fn split_command(cmd: &str) -> Result<(&str, Option<&str>, Option<usize>), String> {
    let (head, max) = match cmd.rfind(':') {
        Some(i)
            if i + 1 < cmd.len()
                && cmd[i + 1..].chars().all(|c| c.is_ascii_digit())
                && !cmd[..i].ends_with('(') =>
        {
            (&cmd[..i], cmd[i + 1..].parse::<usize>().ok())
        }
        _ => (cmd, None),
    };
    let (name, arg) = match head.find('(') {
        Some(i) if head.ends_with(')') => (&head[..i], Some(&head[i + 1..head.len() - 1])),
        Some(_) => return Err(format!("malformed command %{cmd}%")),
        None => (head, None),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
    {
        return Err(format!("malformed command %{cmd}%"));
    }
    Ok((name, arg, max))
}

/// `%REQ(name?alt)%`'s argument: lower-case header name and alternative.
pub(crate) fn header_arg(arg: &str, cmd: &str) -> Result<(String, Option<String>), String> {
    let (n, alt) = match arg.split_once('?') {
        Some((a, b)) => (a, Some(b.to_ascii_lowercase())),
        None => (arg, None),
    };
    if n.is_empty() {
        return Err(format!("empty header name in %{cmd}%"));
    }
    Ok((n.to_ascii_lowercase(), alt))
}

fn parse_command(cmd: &str) -> Result<Piece, String> {
    let (name, arg, max) = split_command(cmd)?;
    Ok(match (name, arg) {
        ("DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", None) => {
            Piece::RemoteAddr { port: true }
        }
        (
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
            None,
        ) => Piece::RemoteAddr { port: false },
        ("DOWNSTREAM_LOCAL_ADDRESS", None) => Piece::LocalAddr { port: true },
        ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", None) => Piece::LocalAddr { port: false },
        ("UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS", None) => Piece::UpstreamHost,
        ("UPSTREAM_CLUSTER", None) => Piece::UpstreamCluster,
        ("PROTOCOL", None) => Piece::Protocol,
        ("HOSTNAME", None) => Piece::Hostname,
        // A custom strftime format is accepted but printed in the default format.
        ("START_TIME", _) => Piece::StartTime,
        ("REQ" | "RESP", Some(arg)) => {
            let (header, alt) = header_arg(arg, cmd)?;
            Piece::Header {
                response: name == "RESP",
                name: header,
                alt,
                max,
            }
        }
        _ => return Err(format!("unsupported command %{cmd}%")),
    })
}

fn push_addr(out: &mut String, a: Option<SocketAddr>, port: bool) {
    if let Some(a) = a {
        if port {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&a.ip().to_string());
        }
    }
}

/// `2024-01-02T03:04:05.678Z` (Envoy's default `%START_TIME%` format).
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Envoy's `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    /// Lower-case.
    pub name: String,
    pub value: Formatter,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// One level's header mutations (removals then additions).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub add: Vec<HeaderAdd>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

impl HeaderMutations {
    pub(crate) fn compile(
        add: &[core::HeaderValueOption],
        remove: &[String],
    ) -> Result<Self, FieldError> {
        let mut out = HeaderMutations {
            add: Vec::with_capacity(add.len()),
            remove: remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
        };
        // Envoy refuses to let route config touch pseudo-headers or Host.
        let modifiable = |n: &str| !n.starts_with(':') && !n.eq_ignore_ascii_case("host");
        if let Some((i, r)) = out
            .remove
            .iter()
            .enumerate()
            .find(|(_, r)| r.is_empty() || !modifiable(r))
        {
            return Err(FieldError::new(
                format!("_to_remove[{i}]"),
                format!("header {r:?} may not be removed (empty, :-prefixed or host)"),
            ));
        }
        for (i, o) in add.iter().enumerate() {
            let at = |f: &str| format!("_to_add[{i}].{f}");
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| FieldError::new(at("header"), "missing"))?;
            if h.key.is_empty() || !modifiable(&h.key) {
                return Err(FieldError::new(
                    at("header.key"),
                    format!(
                        "{:?} may not be modified (empty, :-prefixed or host)",
                        h.key
                    ),
                ));
            }
            let raw;
            let value = if h.value.is_empty() && !h.raw_value.is_empty() {
                raw = String::from_utf8_lossy(&h.raw_value).into_owned();
                &raw
            } else {
                &h.value
            };
            if value.contains(['\r', '\n', '\0']) {
                return Err(FieldError::new(
                    at("header.value"),
                    "contains CR, LF or NUL",
                ));
            }
            let value =
                Formatter::parse(value).map_err(|m| FieldError::new(at("header.value"), m))?;
            use core::header_value_option::HeaderAppendAction as A;
            #[allow(deprecated)]
            let append = o.append.map(|b| b.value);
            let action = match append {
                Some(true) => AppendAction::AppendIfExistsOrAdd,
                Some(false) => AppendAction::OverwriteIfExistsOrAdd,
                None => match A::try_from(o.append_action) {
                    Ok(A::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
                    Ok(A::AddIfAbsent) => AppendAction::AddIfAbsent,
                    Ok(A::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
                    Ok(A::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                    Err(_) => {
                        return Err(FieldError::new(
                            at("append_action"),
                            format!("unknown value {}", o.append_action),
                        ))
                    }
                },
            };
            out.add.push(HeaderAdd {
                name: h.key.to_ascii_lowercase(),
                value,
                action,
                keep_empty_value: o.keep_empty_value,
            });
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies these mutations to `target`.
    pub fn apply<T: HeaderTarget>(&self, target: &mut T, ctx: &FormatCtx<'_>) {
        for r in &self.remove {
            target.remove_header(r);
        }
        let mut overwrite = Vec::new();
        let mut append = Vec::new();
        for a in &self.add {
            let v = a.value.format(ctx, target.as_source(), T::RESPONSE);
            if v.is_empty() && !a.keep_empty_value {
                continue;
            }
            match a.action {
                AppendAction::AppendIfExistsOrAdd => append.push((&a.name, v)),
                AppendAction::AddIfAbsent => {
                    if target.as_source().header(&a.name).is_none() {
                        append.push((&a.name, v));
                    }
                }
                AppendAction::OverwriteIfExists => {
                    if target.as_source().header(&a.name).is_some() {
                        overwrite.push((&a.name, v));
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => overwrite.push((&a.name, v)),
            }
        }
        for (n, v) in overwrite {
            target.set_header(n, &v);
        }
        for (n, v) in append {
            target.append_header(n, &v);
        }
    }
}

/// A header map that mutations apply to; pseudo-headers (`:authority`, `:path`) included.
pub trait HeaderTarget {
    const RESPONSE: bool;
    fn as_source(&self) -> &dyn HeaderSource;
    fn set_header(&mut self, name: &str, value: &str);
    fn append_header(&mut self, name: &str, value: &str);
    fn remove_header(&mut self, name: &str);
}

fn regular(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}

/// The request's authority: the URI's, else the `Host` header.
pub fn authority_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
}

/// Sets the request's authority: in the URI when it has one, and in `Host` when present or when
/// the URI cannot carry it.
pub fn set_authority(parts: &mut http::request::Parts, value: &str) {
    let mut in_uri = false;
    if parts.uri.authority().is_some() {
        let mut up = std::mem::take(&mut parts.uri).into_parts();
        match value.parse::<http::uri::Authority>() {
            Ok(a) => {
                up.authority = Some(a);
                in_uri = true;
            }
            Err(_) => {
                up.authority = None;
                up.scheme = None;
            }
        }
        parts.uri = http::Uri::from_parts(up).unwrap_or_else(|_| http::Uri::from_static("/"));
    }
    if !in_uri || parts.headers.contains_key(http::header::HOST) {
        if let Ok(v) = HeaderValue::from_str(value) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
}

/// Sets the request's path (with query). Values that are not a valid URI path are ignored.
pub fn set_path(parts: &mut http::request::Parts, value: &str) {
    let Ok(pq) = value.parse::<http::uri::PathAndQuery>() else {
        tracing::debug!(
            path = value,
            "rewritten path is not a valid URI path; kept the original"
        );
        return;
    };
    let mut up = std::mem::take(&mut parts.uri).into_parts();
    up.path_and_query = Some(pq);
    parts.uri = http::Uri::from_parts(up).unwrap_or_else(|_| http::Uri::from_static("/"));
}

impl HeaderTarget for http::request::Parts {
    const RESPONSE: bool = false;
    fn as_source(&self) -> &dyn HeaderSource {
        self
    }
    fn set_header(&mut self, name: &str, value: &str) {
        match name {
            ":authority" | "host" => set_authority(self, value),
            ":path" => set_path(self, value),
            ":method" => {
                if let Ok(m) = http::Method::from_bytes(value.as_bytes()) {
                    self.method = m;
                }
            }
            n if n.starts_with(':') => {}
            n => {
                if let Some((k, v)) = regular(n, value) {
                    self.headers.insert(k, v);
                }
            }
        }
    }
    fn append_header(&mut self, name: &str, value: &str) {
        if name.starts_with(':') || name == "host" {
            return self.set_header(name, value);
        }
        if let Some((k, v)) = regular(name, value) {
            self.headers.append(k, v);
        }
    }
    fn remove_header(&mut self, name: &str) {
        // Envoy refuses to remove pseudo-headers and Host.
        if !name.starts_with(':') && name != "host" {
            self.headers.remove(name);
        }
    }
}

impl HeaderTarget for http::response::Parts {
    const RESPONSE: bool = true;
    fn as_source(&self) -> &dyn HeaderSource {
        self
    }
    fn set_header(&mut self, name: &str, value: &str) {
        if let Some((k, v)) = regular(name, value) {
            self.headers.insert(k, v);
        }
    }
    fn append_header(&mut self, name: &str, value: &str) {
        if let Some((k, v)) = regular(name, value) {
            self.headers.append(k, v);
        }
    }
    fn remove_header(&mut self, name: &str) {
        if !name.starts_with(':') {
            self.headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> http::request::Parts {
        http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn formatter_commands() {
        let f = Formatter::parse("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% full=%DOWNSTREAM_REMOTE_ADDRESS% 100%% %REQ(x-a?x-b):3% %PROTOCOL%").unwrap();
        let mut r = req("http://h/p");
        r.headers.insert("x-b", HeaderValue::from_static("abcdef"));
        let ctx = FormatCtx {
            downstream_remote: Some("127.0.0.1:5000".parse().unwrap()),
            protocol: Some("HTTP/1.1"),
            ..Default::default()
        };
        assert_eq!(
            f.format(&ctx, &r, false),
            "ip=127.0.0.1 full=127.0.0.1:5000 100% abc HTTP/1.1"
        );
        assert!(Formatter::parse("%BOGUS%").is_err());
        assert!(Formatter::parse("50% off").is_err());
        assert!(Formatter::parse("plain").unwrap().is_literal());
    }

    #[test]
    fn start_time_format() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn start_time_from_the_monotonic_start() {
        use std::time::{Duration, Instant, SystemTime};
        let f = Formatter::parse("%START_TIME%").unwrap();
        let r = req("http://h/p");
        let ago = Duration::from_secs(2);
        let lo = rfc3339_millis(SystemTime::now() - ago - Duration::from_millis(1));
        let ctx = FormatCtx {
            started: Some(Instant::now() - ago),
            ..Default::default()
        };
        let got = f.format(&ctx, &r, false);
        let hi = rfc3339_millis(SystemTime::now() - ago + Duration::from_millis(1));
        // Same fixed-width format: the strings sort as the times do.
        assert!(lo <= got && got <= hi, "{lo} <= {got} <= {hi}");
        // No start, no time.
        assert_eq!(f.format(&FormatCtx::default(), &r, false), "");
    }

    #[allow(deprecated)]
    fn opt(k: &str, v: &str, append: Option<bool>, action: i32) -> core::HeaderValueOption {
        core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            append: append.map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    #[test]
    fn append_actions_and_removal() {
        let m = HeaderMutations::compile(
            &[
                opt("a", "1", None, 0),
                opt("b", "2", Some(false), 0),
                opt("c", "3", None, 1),
                opt("d", "4", None, 3),
                opt("e", "", None, 0),
            ],
            &["x".into()],
        )
        .unwrap();
        let mut r = req("/p");
        for (k, v) in [("a", "0"), ("b", "0"), ("c", "0"), ("x", "0")] {
            r.headers.append(k, HeaderValue::from_static(v));
        }
        m.apply(&mut r, &FormatCtx::default());
        let get = |n: &str| r.header(n).map(|c| c.into_owned());
        assert_eq!(get("a").as_deref(), Some("0,1"));
        assert_eq!(get("b").as_deref(), Some("2"));
        assert_eq!(get("c").as_deref(), Some("0"));
        assert_eq!(get("d"), None);
        assert_eq!(get("e"), None);
        assert_eq!(get("x"), None);
    }

    #[test]
    fn authority_in_uri_and_host() {
        let mut r = req("http://old.example/p?q=1");
        set_authority(&mut r, "new.example");
        assert_eq!(authority_of(&r), Some("new.example"));
        let mut r = req("/p");
        r.headers
            .insert(http::header::HOST, HeaderValue::from_static("old"));
        set_authority(&mut r, "new_host");
        assert_eq!(authority_of(&r), Some("new_host"));
        set_path(&mut r, "/x?y=1");
        assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/x?y=1");
    }
}
