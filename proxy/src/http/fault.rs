//! The HTTP fault filter (`envoy.extensions.filters.http.fault.v3.HTTPFault`): fixed delays and
//! aborts (HTTP status or gRPC status) at configured percentages, header-controlled faults
//! (`x-envoy-fault-*`), request header matching, and per-route overrides through
//! `typed_per_filter_config`. Istio's fault injection compiles to exactly this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as pb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use http::HeaderMap;

/// What the fault filter decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// An injected abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

fn percent(p: &Option<FractionalPercent>, random: u64) -> bool {
    let Some(p) = p else { return true };
    let denom = match p.denominator {
        0 => 100,
        1 => 10_000,
        _ => 1_000_000,
    };
    random % denom < p.numerator as u64
}

/// Active faults (for `max_active_faults`).
static ACTIVE: AtomicU64 = AtomicU64::new(0);

/// Guard that counts an active fault while held.
#[derive(Debug)]
pub struct ActiveFault(());

impl Drop for ActiveFault {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The fault's `headers` list, with the route engine's header-matching semantics. Unparseable
/// matchers match nothing (the fault does not fire).
fn headers_match(cfg: &pb::HttpFault, req: &http::request::Parts) -> bool {
    cfg.headers
        .iter()
        .all(|m| crate::route::matcher::HeaderMatcher::compile(m).is_ok_and(|hm| hm.matches(req)))
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Decides delay and abort for a request. `rand_delay` and `rand_abort` are independent draws.
pub fn decide(
    cfg: &pb::HttpFault,
    req: &http::request::Parts,
    rand_delay: u64,
    rand_abort: u64,
) -> (Decision, Option<ActiveFault>) {
    let headers = &req.headers;
    if !headers_match(cfg, req) {
        return (Decision::default(), None);
    }
    if let Some(max) = &cfg.max_active_faults {
        if ACTIVE.load(Ordering::Relaxed) >= max.value as u64 {
            return (Decision::default(), None);
        }
    }
    let mut d = Decision::default();
    if let Some(delay) = &cfg.delay {
        // A percentage in the request header overrides the configured one (header faults).
        if percent(&delay.percentage, rand_delay) {
            d.delay = match &delay.fault_delay_secifier {
                Some(common::fault_delay::FaultDelaySecifier::FixedDelay(fd)) => Some(
                    Duration::from_secs(fd.seconds.max(0) as u64)
                        + Duration::from_nanos(fd.nanos.max(0) as u64),
                ),
                Some(common::fault_delay::FaultDelaySecifier::HeaderDelay(_)) => {
                    header_u64(headers, "x-envoy-fault-delay-request").map(Duration::from_millis)
                }
                None => None,
            };
        }
    }
    if let Some(abort) = &cfg.abort {
        if percent(&abort.percentage, rand_abort) {
            use pb::fault_abort::ErrorType;
            d.abort = match &abort.error_type {
                Some(ErrorType::HttpStatus(s)) => Some(Abort::Http(*s as u16)),
                Some(ErrorType::GrpcStatus(s)) => Some(Abort::Grpc(*s)),
                Some(ErrorType::HeaderAbort(_)) => {
                    if let Some(g) = header_u64(headers, "x-envoy-fault-abort-grpc-request") {
                        Some(Abort::Grpc(g as u32))
                    } else {
                        header_u64(headers, "x-envoy-fault-abort-request")
                            .filter(|s| (200..600).contains(s))
                            .map(|s| Abort::Http(s as u16))
                    }
                }
                None => None,
            };
        }
    }
    if d.delay.is_none() && d.abort.is_none() {
        return (d, None);
    }
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    (d, Some(ActiveFault(())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proto::{decode, Format};

    fn fault(y: &str) -> pb::HttpFault {
        decode(y, Format::Yaml).unwrap()
    }

    fn req(h: &HeaderMap) -> http::request::Parts {
        let mut r = http::Request::new(());
        *r.headers_mut() = h.clone();
        r.into_parts().0
    }

    #[test]
    fn percentages_and_kinds() {
        let f = fault(
            "delay: {fixed_delay: 7s, percentage: {numerator: 50}}\nabort: {http_status: 500, percentage: {numerator: 10}}\n",
        );
        let h = HeaderMap::new();
        let (d, _g) = decide(&f, &req(&h), 10, 5);
        assert_eq!(d.delay, Some(Duration::from_secs(7)));
        assert_eq!(d.abort, Some(Abort::Http(500)));
        let (d, g) = decide(&f, &req(&h), 60, 50);
        assert_eq!(d, Decision::default());
        assert!(g.is_none());
        // Over many draws the rates hold.
        let mut delays = 0;
        let mut aborts = 0;
        for _ in 0..10_000 {
            let (d, _) = decide(&f, &req(&h), fastrand::u64(..), fastrand::u64(..));
            delays += d.delay.is_some() as u32;
            aborts += d.abort.is_some() as u32;
        }
        assert!((4500..5500).contains(&delays), "{delays}");
        assert!((800..1200).contains(&aborts), "{aborts}");
    }

    #[test]
    fn header_controlled_and_grpc() {
        let f = fault("abort: {header_abort: {}, percentage: {numerator: 100}}\n");
        let mut h = HeaderMap::new();
        h.insert("x-envoy-fault-abort-request", "503".parse().unwrap());
        assert_eq!(decide(&f, &req(&h), 0, 0).0.abort, Some(Abort::Http(503)));
        let f = fault("abort: {grpc_status: 14, percentage: {numerator: 100}}\n");
        assert_eq!(decide(&f, &req(&h), 0, 0).0.abort, Some(Abort::Grpc(14)));
    }

    #[test]
    fn header_match_restricts() {
        let f = fault(
            "abort: {http_status: 418, percentage: {numerator: 100}}\nheaders: [{name: end-user, string_match: {exact: jason}}]\n",
        );
        let mut h = HeaderMap::new();
        assert_eq!(decide(&f, &req(&h), 0, 0).0.abort, None);
        h.insert("end-user", "jason".parse().unwrap());
        assert_eq!(decide(&f, &req(&h), 0, 0).0.abort, Some(Abort::Http(418)));
    }
}
