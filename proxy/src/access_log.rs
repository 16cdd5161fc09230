//! Access logs: the `access_log` entries of the HTTP connection manager and of `tcp_proxy`.
//! Envoy's file logger (`envoy.access_loggers.file`, any path including `/dev/stdout`) and the
//! stdout/stderr loggers, with text formats (`%COMMAND%` operators, Envoy's default format when
//! none is given) and JSON formats (one object per line, numbers for numeric operators, `null`
//! for missing values), and the status-code, duration, response-flag, not-health-check and
//! and/or filters. Lines are formatted where the request ends and written by one thread per
//! file, so a slow disk never blocks a request.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use http::HeaderMap;
use prost::Message;

/// Envoy's default text format.
const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The request as it was routed.
#[derive(Debug, Clone)]
pub struct ReqHead {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
}

impl ReqHead {
    pub fn of_request<B>(r: &http::Request<B>) -> ReqHead {
        ReqHead {
            method: r.method().clone(),
            uri: r.uri().clone(),
            headers: r.headers().clone(),
        }
    }

    pub fn of(parts: &http::request::Parts) -> ReqHead {
        ReqHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        }
    }
}

/// Everything a log line may print about one request or connection.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub start: Option<SystemTime>,
    pub duration: Duration,
    pub request: Option<&'a ReqHead>,
    pub status: Option<u16>,
    pub response_headers: Option<&'a HeaderMap>,
    pub protocol: Option<&'a str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_local: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    pub server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// Envoy's short response flags (`UH`, `UF`, `NR`, ...), comma-separated; empty for none.
    pub flags: &'a str,
    pub details: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    StartTime(Option<String>),
    Header {
        response: bool,
        name: String,
        alt: Option<String>,
        max: Option<usize>,
    },
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocal {
        port: bool,
    },
    DownstreamRemote {
        port: bool,
    },
    RequestedServerName,
    RouteName,
    Hostname,
    /// An operator Envoy knows that Sluice does not produce: always missing.
    Unavailable,
}

impl Cmd {
    fn numeric(&self) -> bool {
        matches!(
            self,
            Cmd::ResponseCode | Cmd::BytesReceived | Cmd::BytesSent | Cmd::Duration
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    Cmd(Cmd),
}

fn parse_cmd(cmd: &str) -> Result<Cmd, String> {
    let (name, arg, max) = crate::route::headers::split_command(cmd)?;
    Ok(match (name, arg) {
        ("START_TIME", a) => Cmd::StartTime(a.filter(|a| !a.is_empty()).map(str::to_string)),
        ("REQ" | "RESP", Some(arg)) => {
            let (header, alt) = crate::route::headers::header_arg(arg, cmd)?;
            Cmd::Header {
                response: name == "RESP",
                name: header,
                alt,
                max,
            }
        }
        ("PROTOCOL", None) => Cmd::Protocol,
        ("RESPONSE_CODE", None) => Cmd::ResponseCode,
        ("RESPONSE_FLAGS", None) => Cmd::ResponseFlags,
        ("RESPONSE_CODE_DETAILS", None) => Cmd::ResponseCodeDetails,
        ("BYTES_RECEIVED", None) => Cmd::BytesReceived,
        ("BYTES_SENT", None) => Cmd::BytesSent,
        ("DURATION", None) => Cmd::Duration,
        ("UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS", None) => Cmd::UpstreamHost,
        ("UPSTREAM_CLUSTER", None) => Cmd::UpstreamCluster,
        ("UPSTREAM_LOCAL_ADDRESS", None) => Cmd::UpstreamLocalAddress,
        ("DOWNSTREAM_LOCAL_ADDRESS", None) => Cmd::DownstreamLocal { port: true },
        ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", None) => Cmd::DownstreamLocal { port: false },
        ("DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", None) => {
            Cmd::DownstreamRemote { port: true }
        }
        (
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
            None,
        ) => Cmd::DownstreamRemote { port: false },
        ("REQUESTED_SERVER_NAME", None) => Cmd::RequestedServerName,
        ("ROUTE_NAME", None) => Cmd::RouteName,
        ("HOSTNAME", None) => Cmd::Hostname,
        _ => {
            crate::model::warn_once(
                &format!("access_log %{name}%"),
                "access log operator is not produced by Sluice; it prints as missing",
            );
            Cmd::Unavailable
        }
    })
}

fn parse_format(f: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = f;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = crate::route::headers::command_end(after)
            .ok_or_else(|| format!("unterminated operator in {f:?}"))?;
        if end == 0 {
            // `%%` is a literal percent sign.
            lit.push('%');
        } else {
            if !lit.is_empty() {
                out.push(Seg::Lit(std::mem::take(&mut lit)));
            }
            out.push(Seg::Cmd(parse_cmd(&after[..end])?));
        }
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Seg::Lit(lit));
    }
    Ok(out)
}

/// A JSON format: keys to text templates (a single numeric operator prints a number) or
/// nested objects.
#[derive(Debug, Clone, PartialEq)]
enum JsonTpl {
    Text(Vec<Seg>),
    Object(Vec<(String, JsonTpl)>),
}

fn parse_json(s: &Struct) -> Result<Vec<(String, JsonTpl)>, String> {
    let mut fields: Vec<_> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields
        .into_iter()
        .map(|(k, v)| {
            let t = match &v.kind {
                Some(Kind::StringValue(t)) => JsonTpl::Text(parse_format(t)?),
                Some(Kind::StructValue(s)) => JsonTpl::Object(parse_json(s)?),
                Some(Kind::NumberValue(n)) => JsonTpl::Text(vec![Seg::Lit(n.to_string())]),
                Some(Kind::BoolValue(b)) => JsonTpl::Text(vec![Seg::Lit(b.to_string())]),
                _ => return Err(format!("json format field {k:?}: only strings and objects")),
            };
            Ok((k.clone(), t))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Format {
    Text(Vec<Seg>),
    Json(Vec<(String, JsonTpl)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ge,
    Le,
}

/// `AccessLogFilter`.
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Status(Op, u32),
    Duration(Op, u32),
    /// Any of these flags (empty: any flag at all).
    Flags(Vec<String>),
    All,
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    fn from_proto(f: &alpb::AccessLogFilter) -> Result<Filter, String> {
        use alpb::access_log_filter::FilterSpecifier as F;
        let cmp = |c: &Option<alpb::ComparisonFilter>| -> Result<(Op, u32), String> {
            let c = c.as_ref().ok_or("comparison is missing")?;
            let op = match c.op {
                0 => Op::Eq,
                1 => Op::Ge,
                2 => Op::Le,
                o => return Err(format!("unknown comparison op {o}")),
            };
            Ok((op, c.value.as_ref().map_or(0, |v| v.default_value)))
        };
        Ok(match &f.filter_specifier {
            Some(F::StatusCodeFilter(s)) => {
                let (op, v) = cmp(&s.comparison)?;
                Filter::Status(op, v)
            }
            Some(F::DurationFilter(d)) => {
                let (op, v) = cmp(&d.comparison)?;
                Filter::Duration(op, v)
            }
            Some(F::ResponseFlagFilter(r)) => Filter::Flags(r.flags.clone()),
            Some(F::NotHealthCheckFilter(_)) => Filter::All,
            Some(F::AndFilter(a)) => Filter::And(
                a.filters
                    .iter()
                    .map(Filter::from_proto)
                    .collect::<Result<_, _>>()?,
            ),
            Some(F::OrFilter(o)) => Filter::Or(
                o.filters
                    .iter()
                    .map(Filter::from_proto)
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => {
                let name = format!("{other:?}");
                let name = name.split('(').next().unwrap_or("filter").to_string();
                return Err(format!("access log filter {name} is not supported"));
            }
            None => Filter::All,
        })
    }

    fn accepts(&self, e: &Entry) -> bool {
        let test = |op: Op, have: u64, want: u32| match op {
            Op::Eq => have == want as u64,
            Op::Ge => have >= want as u64,
            Op::Le => have <= want as u64,
        };
        match self {
            Filter::Status(op, v) => test(*op, e.status.unwrap_or(0) as u64, *v),
            Filter::Duration(op, v) => test(*op, e.duration.as_millis() as u64, *v),
            Filter::Flags(want) if want.is_empty() => !e.flags.is_empty(),
            Filter::Flags(want) => e.flags.split(',').any(|f| want.iter().any(|w| w == f)),
            Filter::All => true,
            Filter::And(fs) => fs.iter().all(|f| f.accepts(e)),
            Filter::Or(fs) => fs.iter().any(|f| f.accepts(e)),
        }
    }
}

/// Where lines go: a writer thread per path, shared by every logger naming it.
#[derive(Debug, Clone)]
struct Sink {
    tx: mpsc::Sender<Vec<u8>>,
}

fn sink(path: &str) -> Result<Sink, String> {
    static SINKS: OnceLock<Mutex<HashMap<String, Sink>>> = OnceLock::new();
    let mut m = SINKS.get_or_init(Default::default).lock().unwrap();
    if let Some(s) = m.get(path) {
        return Ok(s.clone());
    }
    let mut out: Box<dyn Write + Send> = match path {
        "/dev/stdout" => Box::new(std::io::stdout()),
        "/dev/stderr" => Box::new(std::io::stderr()),
        p => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open {p}: {e}"))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(&line);
                // Batch whatever else is queued, then flush once.
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(&more);
                }
                let _ = out.flush();
            }
        })
        .map_err(|e| format!("cannot start the access log writer: {e}"))?;
    let s = Sink { tx };
    m.insert(path.to_string(), s.clone());
    Ok(s)
}

/// One configured access logger.
#[derive(Debug, Clone)]
pub struct AccessLog {
    filter: Filter,
    format: Format,
    sink: Sink,
}

impl PartialEq for AccessLog {
    fn eq(&self, o: &Self) -> bool {
        self.filter == o.filter && self.format == o.format
    }
}

fn substitution_format(f: &core::SubstitutionFormatString) -> Result<Format, String> {
    use core::substitution_format_string::Format as F;
    Ok(match &f.format {
        #[allow(deprecated)]
        Some(F::TextFormat(t)) => Format::Text(parse_format(t)?),
        Some(F::TextFormatSource(ds)) => {
            use core::data_source::Specifier as S;
            let text = match &ds.specifier {
                Some(S::InlineString(s)) => s.clone(),
                Some(S::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(S::Filename(p)) => {
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?
                }
                _ => return Err("text_format_source: unsupported data source".into()),
            };
            Format::Text(parse_format(&text)?)
        }
        Some(F::JsonFormat(s)) => Format::Json(parse_json(s)?),
        None => Format::Text(parse_format(DEFAULT_FORMAT)?),
    })
}

impl AccessLog {
    /// Builds the loggers of an `access_log` list. Loggers Sluice does not have (gRPC, OTel)
    /// are skipped with one warning each, as optional telemetry.
    pub fn from_protos(list: &[alpb::AccessLog]) -> Result<Vec<Arc<AccessLog>>, (String, String)> {
        let mut out = Vec::new();
        for (i, l) in list.iter().enumerate() {
            let at = |f: &str| format!("access_log[{i}]{f}");
            let Some(alpb::access_log::ConfigType::TypedConfig(any)) = &l.config_type else {
                return Err((at(".typed_config"), "missing".into()));
            };
            let tname = any.type_url.rsplit('/').next().unwrap_or("");
            let (path, format) = match tname {
                "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
                        file_access_log::AccessLogFormat as A, FileAccessLog,
                    };
                    let f = FileAccessLog::decode(any.value.as_slice())
                        .map_err(|e| (at(".typed_config"), e.to_string()))?;
                    if f.path.is_empty() {
                        return Err((at(".typed_config.path"), "empty".into()));
                    }
                    #[allow(deprecated)]
                    let fmt = match &f.access_log_format {
                        Some(A::Format(t)) => parse_format(t).map(Format::Text),
                        Some(A::JsonFormat(s)) | Some(A::TypedJsonFormat(s)) => {
                            parse_json(s).map(Format::Json)
                        }
                        Some(A::LogFormat(sf)) => substitution_format(sf),
                        None => parse_format(DEFAULT_FORMAT).map(Format::Text),
                    }
                    .map_err(|e| (at(".typed_config.log_format"), e))?;
                    (f.path, fmt)
                }
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
                | "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
                    // Both messages have the same single field.
                    let f = StdoutAccessLog::decode(any.value.as_slice())
                        .map_err(|e| (at(".typed_config"), e.to_string()))?;
                    let fmt = match &f.access_log_format {
                        Some(envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat::LogFormat(sf)) => {
                            substitution_format(sf)
                        }
                        None => parse_format(DEFAULT_FORMAT).map(Format::Text),
                    }
                    .map_err(|e| (at(".typed_config.log_format"), e))?;
                    let path = if tname.ends_with("StdoutAccessLog") {
                        "/dev/stdout"
                    } else {
                        "/dev/stderr"
                    };
                    (path.to_string(), fmt)
                }
                other => {
                    crate::model::warn_once(
                        &format!("access logger {other}"),
                        "access logger type is not supported; skipped",
                    );
                    continue;
                }
            };
            let filter = match &l.filter {
                Some(f) => Filter::from_proto(f).map_err(|e| (at(".filter"), e))?,
                None => Filter::All,
            };
            let sink = sink(&path).map_err(|e| (at(".typed_config.path"), e))?;
            out.push(Arc::new(AccessLog {
                filter,
                format,
                sink,
            }));
        }
        Ok(out)
    }

    /// Formats and queues one line if the filter accepts the entry.
    pub fn log(&self, e: &Entry) {
        if !self.filter.accepts(e) {
            return;
        }
        let mut line = match &self.format {
            Format::Text(segs) => {
                let mut s = String::with_capacity(256);
                for seg in segs {
                    match seg {
                        Seg::Lit(l) => s.push_str(l),
                        Seg::Cmd(c) => match value(c, e) {
                            Some(v) => s.push_str(&v),
                            None => s.push('-'),
                        },
                    }
                }
                s
            }
            Format::Json(fields) => {
                let mut s = json_object(fields, e).to_string();
                s.push('\n');
                s
            }
        };
        if matches!(self.format, Format::Text(_)) && !line.ends_with('\n') {
            line.push('\n');
        }
        let _ = self.sink.tx.send(line.into_bytes());
    }
}

fn json_object(fields: &[(String, JsonTpl)], e: &Entry) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, t) in fields {
        let v = match t {
            JsonTpl::Object(inner) => json_object(inner, e),
            JsonTpl::Text(segs) => match segs.as_slice() {
                [Seg::Cmd(c)] => match value(c, e) {
                    None => serde_json::Value::Null,
                    Some(v) if c.numeric() => v
                        .parse::<u64>()
                        .map(serde_json::Value::from)
                        .unwrap_or(serde_json::Value::String(v)),
                    Some(v) => serde_json::Value::String(v),
                },
                _ => {
                    let mut s = String::new();
                    for seg in segs {
                        match seg {
                            Seg::Lit(l) => s.push_str(l),
                            Seg::Cmd(c) => s.push_str(value(c, e).as_deref().unwrap_or("-")),
                        }
                    }
                    serde_json::Value::String(s)
                }
            },
        };
        m.insert(k.clone(), v);
    }
    serde_json::Value::Object(m)
}

fn hostname() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

fn value(c: &Cmd, e: &Entry) -> Option<String> {
    let addr = |a: Option<SocketAddr>, port: bool| {
        a.map(|a| {
            if port {
                a.to_string()
            } else {
                a.ip().to_string()
            }
        })
    };
    match c {
        Cmd::StartTime(fmt) => e.start.map(|t| match fmt {
            None => crate::route::headers::rfc3339_millis(t),
            Some(f) => strftime(t, f),
        }),
        Cmd::Header {
            response,
            name,
            alt,
            max,
        } => {
            let get = |n: &str| -> Option<String> {
                if *response {
                    return e
                        .response_headers?
                        .get(n)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
                let r = e.request?;
                match n {
                    ":method" => Some(r.method.to_string()),
                    ":path" => r.uri.path_and_query().map(|p| p.as_str().to_string()),
                    ":authority" => r
                        .headers
                        .get(http::header::HOST)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .or_else(|| r.uri.authority().map(|a| a.to_string())),
                    ":scheme" => r.uri.scheme_str().map(str::to_string),
                    n => r
                        .headers
                        .get(n)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                }
            };
            let mut v = get(name).or_else(|| alt.as_deref().and_then(get))?;
            if let Some(m) = max {
                if v.len() > *m {
                    let mut cut = *m;
                    while !v.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    v.truncate(cut);
                }
            }
            Some(v)
        }
        Cmd::Protocol => e.protocol.map(str::to_string),
        Cmd::ResponseCode => Some(e.status.unwrap_or(0).to_string()),
        Cmd::ResponseFlags => Some(if e.flags.is_empty() {
            "-".to_string()
        } else {
            e.flags.to_string()
        }),
        Cmd::ResponseCodeDetails => e.details.map(|d| d.replace(' ', "_")),
        Cmd::BytesReceived => Some(e.bytes_received.to_string()),
        Cmd::BytesSent => Some(e.bytes_sent.to_string()),
        Cmd::Duration => Some(e.duration.as_millis().to_string()),
        Cmd::UpstreamHost => addr(e.upstream_host, true),
        Cmd::UpstreamCluster => e.upstream_cluster.map(str::to_string),
        Cmd::UpstreamLocalAddress => addr(e.upstream_local, true),
        Cmd::DownstreamLocal { port } => addr(e.downstream_local, *port),
        Cmd::DownstreamRemote { port } => addr(e.downstream_remote, *port),
        Cmd::RequestedServerName => e.server_name.map(str::to_string),
        Cmd::RouteName => e.route_name.filter(|n| !n.is_empty()).map(str::to_string),
        Cmd::Hostname => Some(hostname().to_string()),
        Cmd::Unavailable => None,
    }
}

/// The strftime subset Envoy configs use: `%Y %m %d %H %M %S %s %z %Z %%` and `%E<n>S`/`%<n>f`
/// (seconds with n fractional digits / fractional digits alone).
fn strftime(t: SystemTime, f: &str) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let base = crate::route::headers::rfc3339_millis(t); // YYYY-MM-DDTHH:MM:SS.mmmZ
    let nanos = format!("{:09}", d.subsec_nanos());
    let mut out = String::new();
    let mut it = f.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        let mut e = false;
        if it.peek() == Some(&'E') {
            e = true;
            it.next();
        }
        while let Some(d) = it.peek().filter(|c| c.is_ascii_digit()) {
            digits.push(*d);
            it.next();
        }
        let n: usize = digits.parse().unwrap_or(9).min(9);
        match it.next() {
            Some('Y') => out.push_str(&base[0..4]),
            Some('m') => out.push_str(&base[5..7]),
            Some('d') => out.push_str(&base[8..10]),
            Some('H') => out.push_str(&base[11..13]),
            Some('M') => out.push_str(&base[14..16]),
            Some('S') if e || !digits.is_empty() => {
                out.push_str(&base[17..19]);
                if n > 0 {
                    out.push('.');
                    out.push_str(&nanos[..n]);
                }
            }
            Some('S') => out.push_str(&base[17..19]),
            Some('f') => out.push_str(&nanos[..n]),
            Some('s') => out.push_str(&d.as_secs().to_string()),
            Some('z') => out.push_str("+0000"),
            Some('Z') => out.push_str("UTC"),
            Some('F') => out.push_str(&base[0..10]),
            Some('T') => out.push_str(&base[11..19]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_with<'a>(req: &'a ReqHead, resp: &'a HeaderMap) -> Entry<'a> {
        Entry {
            start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            duration: Duration::from_millis(12),
            request: Some(req),
            status: Some(503),
            response_headers: Some(resp),
            protocol: Some("HTTP/1.1"),
            bytes_received: 5,
            bytes_sent: 19,
            upstream_host: Some("127.0.0.1:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local"),
            downstream_remote: Some("10.0.0.1:5000".parse().unwrap()),
            route_name: Some("default"),
            flags: "UF",
            details: Some("upstream reset"),
            ..Default::default()
        }
    }

    fn render(fmt: &str, e: &Entry) -> String {
        let segs = parse_format(fmt).unwrap();
        segs.iter()
            .map(|s| match s {
                Seg::Lit(l) => l.clone(),
                Seg::Cmd(c) => value(c, e).unwrap_or_else(|| "-".into()),
            })
            .collect()
    }

    #[test]
    fn istio_format_renders_like_envoy() {
        let req = ReqHead {
            method: http::Method::GET,
            uri: "/reviews/0".parse().unwrap(),
            headers: [
                (http::header::HOST, "reviews:9080".parse().unwrap()),
                (
                    http::HeaderName::from_static("x-request-id"),
                    "abc".parse().unwrap(),
                ),
            ]
            .into_iter()
            .collect(),
        };
        let resp: HeaderMap = [(
            http::HeaderName::from_static("x-envoy-upstream-service-time"),
            "7".parse().unwrap(),
        )]
        .into_iter()
        .collect();
        let e = entry_with(&req, &resp);
        let line = render("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n", &e);
        assert_eq!(
            line,
            "[2023-11-14T22:13:20.123Z] \"GET /reviews/0 HTTP/1.1\" 503 UF upstream_reset - \"-\" 5 19 12 7 \"-\" \"-\" \"abc\" \"reviews:9080\" \"127.0.0.1:9080\" outbound|9080||reviews.default.svc.cluster.local - - 10.0.0.1:5000 - default\n"
        );
        assert_eq!(
            render("%REQ(:PATH):4%|%%|%START_TIME(%s.%3f)%", &e),
            "/rev|%|1700000000.123"
        );
        assert!(parse_format("%REQ(").is_err());
        assert!(parse_format("%bad%").is_err());
    }

    #[test]
    fn json_and_filters() {
        let req = ReqHead {
            method: http::Method::POST,
            uri: "/x".parse().unwrap(),
            headers: HeaderMap::new(),
        };
        let resp = HeaderMap::new();
        let e = entry_with(&req, &resp);
        let json: serde_json::Value = serde_json::from_str(
            r#"{"code": "%RESPONSE_CODE%", "m": "%REQ(:METHOD)% %REQ(:PATH)%", "ua": "%REQ(USER-AGENT)%", "up": {"cluster": "%UPSTREAM_CLUSTER%"}}"#,
        )
        .unwrap();
        let st = json_to_struct(&json);
        let fields = parse_json(&st).unwrap();
        let v = json_object(&fields, &e);
        assert_eq!(v["code"], 503);
        assert_eq!(v["m"], "POST /x");
        assert!(v["ua"].is_null());
        assert_eq!(
            v["up"]["cluster"],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        let f = |yaml: &str| {
            let p: alpb::AccessLogFilter =
                crate::config::proto::decode(yaml, crate::config::proto::Format::Yaml).unwrap();
            Filter::from_proto(&p).unwrap()
        };
        assert!(f("status_code_filter: {comparison: {op: GE, value: {default_value: 500, runtime_key: k}}}").accepts(&e));
        assert!(!f("status_code_filter: {comparison: {op: LE, value: {default_value: 499, runtime_key: k}}}").accepts(&e));
        assert!(f("response_flag_filter: {flags: [UH, UF]}").accepts(&e));
        assert!(!f("response_flag_filter: {flags: [NR]}").accepts(&e));
        assert!(f("or_filter: {filters: [{response_flag_filter: {flags: [NR]}}, {duration_filter: {comparison: {op: GE, value: {default_value: 10, runtime_key: d}}}}]}").accepts(&e));
    }

    fn json_to_struct(v: &serde_json::Value) -> Struct {
        use envoy_types::pb::google::protobuf::Value as PV;
        fn conv(v: &serde_json::Value) -> PV {
            PV {
                kind: Some(match v {
                    serde_json::Value::String(s) => Kind::StringValue(s.clone()),
                    serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
                    serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                    serde_json::Value::Bool(b) => Kind::BoolValue(*b),
                    _ => Kind::NullValue(0),
                }),
            }
        }
        Struct {
            fields: v
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), conv(v)))
                .collect(),
        }
    }
}
