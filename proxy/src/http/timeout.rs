//! Per-request timeouts, decided once when a request is routed: the router's global and per-try
//! timeouts (route `timeout`, `retry_policy.per_try_timeout`, the deprecated
//! `max_grpc_timeout`/`grpc_timeout_offset` applied to the `grpc-timeout` header, and the
//! `x-envoy-upstream-rq-timeout-ms` / `x-envoy-upstream-rq-per-try-timeout-ms` request headers),
//! and the stream's maximum duration (`max_stream_duration`, optionally from `grpc-timeout`).
//! The rules follow Envoy's router and connection manager; a zero duration means "none".
//! [`Deadline`] is the timer a connection keeps for its requests.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::route::RouteEntry;

// `HeaderName`s, not `&str`: a `&str` name is parsed and hashed again on every lookup.
static UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// What one request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// The whole upstream exchange, retries included, until the response head (zero: none).
    pub global: Duration,
    /// Each attempt (zero: none).
    pub per_try: Duration,
    /// The stream's maximum duration, response body included (`None`: unlimited).
    pub stream: Option<Duration>,
}

/// The timer a connection keeps for its requests, one request at a time (an HTTP/1.1
/// connection's, or an HTTP/2 stream's, handed on to the next stream when it ends).
///
/// A new tokio timer takes the timer driver's lock twice: when it is first polled (to insert
/// it) and when it is dropped (to remove it). Moving a kept timer to a later deadline is one
/// atomic operation; the driver files it again when the earlier deadline comes. A kept timer
/// costs one spurious wake-up of its last task when its old deadline passes, and is inserted
/// again (the lock) only for an earlier deadline than its last one, or after it fired.
#[derive(Default)]
pub struct Deadline(Option<Pin<Box<tokio::time::Sleep>>>);

impl Deadline {
    /// `fut`'s output, or `None` when `at` comes first (then `fut` is dropped).
    pub async fn run<F: Future>(&mut self, at: tokio::time::Instant, fut: F) -> Option<F::Output> {
        let sleep = match &mut self.0 {
            Some(s) => {
                s.as_mut().reset(at);
                s
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

/// Whether the request is gRPC (Envoy: `content-type` is `application/grpc`, optionally with a
/// `+format` or `;parameters` suffix).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|v| {
            v.strip_prefix(b"application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
        })
}

/// A `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a timeout for `grpc-timeout` in milliseconds, moving to coarser units while the
/// value has more than 8 digits.
pub fn format_grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let mut v = d.as_millis();
    for (unit, next) in [('m', 1000), ('S', 60), ('M', 60)] {
        if v <= MAX {
            return format!("{v}{unit}");
        }
        v /= next;
    }
    format!("{}H", v.min(MAX))
}

fn header_ms(headers: &mut HeaderMap, name: &HeaderName) -> Option<Option<Duration>> {
    let v = headers.remove(name)?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis),
    )
}

/// Decides the timeouts for a routed request and adjusts its headers as Envoy does: the
/// `x-envoy-upstream-rq-*timeout-ms` headers are consumed, and `grpc-timeout` is rewritten to
/// the time the upstream actually gets when a gRPC timeout policy applies.
pub fn resolve(entry: &RouteEntry, headers: &mut HeaderMap, grpc: bool) -> Timeouts {
    let msd = entry.max_stream_duration.as_ref();
    let grpc_header = if grpc {
        headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
    } else {
        None
    };
    let mut t = Timeouts::default();
    // With `max_stream_duration` on the route ("new timeouts"), the route timeout is not used.
    if msd.is_none() {
        t.global = match entry.max_grpc_timeout {
            Some(max) if grpc => {
                let mut g = grpc_header.unwrap_or(Duration::ZERO);
                if let Some(off) = entry.grpc_timeout_offset {
                    if off < g {
                        g -= off;
                    }
                }
                if !max.is_zero() && (g.is_zero() || g > max) {
                    g = max;
                }
                g
            }
            _ => entry.timeout,
        };
    }
    t.per_try = entry
        .retry_policy
        .as_ref()
        .and_then(|p| p.per_try_timeout)
        .unwrap_or_default();
    // Usually neither header is there: one pass over the names is cheaper than hashing
    // both long names.
    if headers
        .keys()
        .any(|k| k.as_str().starts_with("x-envoy-upstream-rq-"))
    {
        if let Some(Some(g)) = header_ms(headers, &UPSTREAM_RQ_TIMEOUT_MS) {
            t.global = g;
        }
        if let Some(Some(p)) = header_ms(headers, &UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
            t.per_try = p;
        }
    }
    if !t.global.is_zero() && t.per_try >= t.global {
        t.per_try = Duration::ZERO;
    }
    if let Some(m) = msd {
        // The connection manager's stream duration: the grpc-timeout header (capped and
        // offset) when the route says so, else the route's max_stream_duration.
        let d = match (grpc_header, m.grpc_timeout_header_max) {
            (Some(h), Some(cap)) => {
                let mut d = if !cap.is_zero() && h > cap { cap } else { h };
                if !d.is_zero() {
                    if let Some(off) = m.grpc_timeout_header_offset {
                        d = d.saturating_sub(off);
                    }
                }
                Some(d)
            }
            _ => m.max_stream_duration.filter(|d| !d.is_zero()),
        };
        match d {
            Some(d) => {
                if grpc {
                    set_grpc_timeout(headers, d);
                }
                t.stream = Some(d);
            }
            None => {
                if grpc {
                    headers.remove(GRPC_TIMEOUT);
                }
            }
        }
    } else if grpc && entry.max_grpc_timeout.is_some() {
        // The upstream learns the time it really has: the per-try timeout, else the global one.
        let expected = if t.per_try.is_zero() {
            t.global
        } else {
            t.per_try
        };
        if !expected.is_zero() {
            set_grpc_timeout(headers, expected);
        }
    }
    t
}

fn set_grpc_timeout(headers: &mut HeaderMap, d: Duration) {
    if let Ok(v) = HeaderValue::from_str(&format_grpc_timeout(d)) {
        headers.insert(GRPC_TIMEOUT, v);
    }
}

/// The gRPC status Envoy gives a local reply with this HTTP status.
pub fn grpc_status_of(http: u16) -> u32 {
    match http {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::action::StreamDuration;

    fn entry(yaml: &str) -> RouteEntry {
        use crate::config::proto::{decode, Format};
        let rc: envoy_types::pb::envoy::config::route::v3::RouteConfiguration = decode(
            &format!(
                "virtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: c, {yaml}}}}}]}}]"
            ),
            Format::Yaml,
        )
        .unwrap();
        let t = crate::route::RouteTable::from_proto(&rc).unwrap();
        let parts = http::Request::get("http://h/")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let sel = t.select(&crate::route::RequestView::from_parts(&parts), 0);
        sel.entry().unwrap().clone()
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"123456789m"), None);
        assert_eq!(parse_grpc_timeout(b"m"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
        assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert!(is_grpc(&hdrs(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&hdrs(&[("content-type", "application/grpcx")])));
    }

    #[test]
    fn route_timeout_and_headers() {
        let e = entry("timeout: 3s, retry_policy: {retry_on: 5xx, per_try_timeout: 1s}");
        let mut h = hdrs(&[]);
        let t = resolve(&e, &mut h, false);
        assert_eq!(t.global, Duration::from_secs(3));
        assert_eq!(t.per_try, Duration::from_secs(1));
        assert_eq!(t.stream, None);
        let mut h = hdrs(&[
            ("x-envoy-upstream-rq-timeout-ms", "500"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "800"),
        ]);
        let t = resolve(&e, &mut h, false);
        // A per-try timeout at or over the global one is dropped.
        assert_eq!(
            (t.global, t.per_try),
            (Duration::from_millis(500), Duration::ZERO)
        );
        assert!(h.is_empty(), "the timeout headers are consumed: {h:?}");
        // A malformed header is consumed and ignored.
        let mut h = hdrs(&[("x-envoy-upstream-rq-timeout-ms", "soon")]);
        assert_eq!(resolve(&e, &mut h, false).global, Duration::from_secs(3));
        assert!(h.is_empty());
    }

    #[test]
    fn max_grpc_timeout_uses_the_grpc_timeout_header() {
        // Istio's shape: max_grpc_timeout 0s (no cap) with timeout 0s.
        let e = entry("timeout: 0s, max_grpc_timeout: 0s");
        let mut h = hdrs(&[("grpc-timeout", "250m")]);
        let t = resolve(&e, &mut h, true);
        assert_eq!(t.global, Duration::from_millis(250));
        assert_eq!(h["grpc-timeout"], "250m");
        // No header: unlimited; the same route for a non-gRPC request keeps the route timeout.
        assert_eq!(resolve(&e, &mut hdrs(&[]), true).global, Duration::ZERO);
        let e = entry("timeout: 5s, max_grpc_timeout: 2s, grpc_timeout_offset: 0.1s");
        let mut h = hdrs(&[("grpc-timeout", "10S")]);
        let t = resolve(&e, &mut h, true);
        assert_eq!(t.global, Duration::from_secs(2), "capped");
        assert_eq!(
            h["grpc-timeout"], "2000m",
            "the upstream is told the capped value"
        );
        let mut h = hdrs(&[("grpc-timeout", "1S")]);
        assert_eq!(resolve(&e, &mut h, true).global, Duration::from_millis(900));
        assert_eq!(
            resolve(&e, &mut hdrs(&[]), false).global,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn max_stream_duration_replaces_the_route_timeout() {
        let e = entry("timeout: 5s, max_stream_duration: {max_stream_duration: 2s}");
        let t = resolve(&e, &mut hdrs(&[]), false);
        assert_eq!(t.global, Duration::ZERO);
        assert_eq!(t.stream, Some(Duration::from_secs(2)));
        // Istio's sidecar shape: both zero, the grpc-timeout header is used as it is.
        let e =
            entry("max_stream_duration: {max_stream_duration: 0s, grpc_timeout_header_max: 0s}");
        assert_eq!(
            e.max_stream_duration,
            Some(StreamDuration {
                max_stream_duration: Some(Duration::ZERO),
                grpc_timeout_header_max: Some(Duration::ZERO),
                grpc_timeout_header_offset: None
            })
        );
        let mut h = hdrs(&[("grpc-timeout", "3S")]);
        assert_eq!(
            resolve(&e, &mut h, true).stream,
            Some(Duration::from_secs(3))
        );
        assert_eq!(h["grpc-timeout"], "3000m");
        let mut h = hdrs(&[("grpc-timeout", "3S")]);
        assert_eq!(resolve(&e, &mut h, false).stream, None, "not gRPC");
        assert_eq!(resolve(&e, &mut hdrs(&[]), true).stream, None);
        let e = entry(
            "max_stream_duration: {grpc_timeout_header_max: 1s, grpc_timeout_header_offset: 0.2s}",
        );
        let mut h = hdrs(&[("grpc-timeout", "3S")]);
        assert_eq!(
            resolve(&e, &mut h, true).stream,
            Some(Duration::from_millis(800))
        );
    }
}
