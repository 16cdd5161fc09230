//! Outlier detection (Envoy's `outlier_detection`, Istio's DestinationRule
//! `outlierDetection`): each host counts consecutive 5xx responses and consecutive gateway
//! failures (502/503/504); local failures (connect failure, reset, timeout) count as 503/504
//! unless `split_external_local_origin_errors`, which gives them their own counter. A host that
//! reaches a threshold is ejected (if the enforcing percentage says so and fewer than
//! `max_ejection_percent` of the hosts are out) for `base_ejection_time` × its ejection count
//! (at most `max_ejection_time`). Ejections rebuild the cluster's balancer, so the request path
//! never checks ejection state; an interval task brings hosts back, as Envoy's timer does.
//! Not implemented: success-rate and failure-percentage detection.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3 as cpb;

use crate::stats::{registry, Counter, Gauge};

/// The validated `outlier_detection` settings, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub split_local_origin: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierConfig {
    pub fn from_proto(o: &cpb::OutlierDetection) -> Result<OutlierConfig, (String, String)> {
        let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
            v.as_ref().map_or(d, |v| v.value)
        };
        let d = |v: &Option<envoy_types::pb::google::protobuf::Duration>, def: Duration| {
            crate::model::network::duration(v).unwrap_or(def)
        };
        let cfg = OutlierConfig {
            consecutive_5xx: u(&o.consecutive_5xx, 5),
            enforcing_consecutive_5xx: u(&o.enforcing_consecutive_5xx, 100),
            consecutive_gateway_failure: u(&o.consecutive_gateway_failure, 5),
            enforcing_consecutive_gateway_failure: u(&o.enforcing_consecutive_gateway_failure, 0),
            split_local_origin: o.split_external_local_origin_errors,
            consecutive_local_origin_failure: u(&o.consecutive_local_origin_failure, 5),
            enforcing_consecutive_local_origin_failure: u(
                &o.enforcing_consecutive_local_origin_failure,
                100,
            ),
            interval: d(&o.interval, Duration::from_secs(10)),
            base_ejection_time: d(&o.base_ejection_time, Duration::from_secs(30)),
            max_ejection_time: d(&o.max_ejection_time, Duration::from_secs(300)),
            max_ejection_percent: u(&o.max_ejection_percent, 10).min(100),
        };
        for (f, v) in [
            ("enforcing_consecutive_5xx", cfg.enforcing_consecutive_5xx),
            (
                "enforcing_consecutive_gateway_failure",
                cfg.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                cfg.enforcing_consecutive_local_origin_failure,
            ),
        ] {
            if v > 100 {
                return Err((f.into(), format!("{v} is over 100 percent")));
            }
        }
        if cfg.interval.is_zero() {
            return Err(("interval".into(), "must be greater than zero".into()));
        }
        Ok(cfg)
    }
}

/// A request's outcome as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// The connection could not be made.
    ConnectFailed,
    /// The request timed out.
    Timeout,
    /// The connection was reset before the response.
    Reset,
}

/// Per-host detector state (atomics: written on the request path without locks).
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    pub(crate) ejected: AtomicBool,
    /// Milliseconds since the detector's epoch at the last ejection.
    ejected_at_ms: AtomicU64,
    num_ejections: AtomicU32,
}

impl HostOutlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    fn reset_counters(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

/// Which detector fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
}

/// Envoy's `cluster.NAME.outlier_detection.*` stats.
#[derive(Debug)]
pub struct OutlierStats {
    pub ejections_active: Arc<Gauge>,
    pub ejections_overflow: Arc<Counter>,
    pub ejections_enforced_total: Arc<Counter>,
    pub ejections_total: Arc<Counter>,
    pub enforced_5xx: Arc<Counter>,
    pub detected_5xx: Arc<Counter>,
    pub enforced_gateway: Arc<Counter>,
    pub detected_gateway: Arc<Counter>,
    pub enforced_local: Arc<Counter>,
    pub detected_local: Arc<Counter>,
}

/// A cluster's detector.
#[derive(Debug)]
pub struct Detector {
    pub cfg: OutlierConfig,
    epoch: Instant,
    pub stats: OutlierStats,
}

impl Detector {
    pub fn new(cluster: &str, cfg: OutlierConfig) -> Detector {
        let r = registry();
        let c = |s: &str| r.counter(&format!("cluster.{cluster}.outlier_detection.{s}"));
        Detector {
            cfg,
            epoch: Instant::now(),
            stats: OutlierStats {
                ejections_active: r.gauge(&format!(
                    "cluster.{cluster}.outlier_detection.ejections_active"
                )),
                ejections_overflow: c("ejections_overflow"),
                ejections_enforced_total: c("ejections_enforced_total"),
                ejections_total: c("ejections_total"),
                enforced_5xx: c("ejections_enforced_consecutive_5xx"),
                detected_5xx: c("ejections_detected_consecutive_5xx"),
                enforced_gateway: c("ejections_enforced_consecutive_gateway_failure"),
                detected_gateway: c("ejections_detected_consecutive_gateway_failure"),
                enforced_local: c("ejections_enforced_consecutive_local_origin_failure"),
                detected_local: c("ejections_detected_consecutive_local_origin_failure"),
            },
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records an outcome for a host; returns the detector that fired, if any (the caller
    /// then decides whether to eject, see [`Detector::try_eject`]).
    pub fn record(&self, h: &HostOutlier, outcome: Outcome) -> Option<Ejection> {
        let code = match outcome {
            Outcome::Status(s) => s,
            Outcome::ConnectFailed | Outcome::Timeout | Outcome::Reset
                if self.cfg.split_local_origin =>
            {
                let n = h.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                return (n == self.cfg.consecutive_local_origin_failure)
                    .then_some(Ejection::ConsecutiveLocalOriginFailure);
            }
            Outcome::ConnectFailed | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        };
        if code < 500 {
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            h.consecutive_gateway.store(0, Ordering::Relaxed);
            if matches!(outcome, Outcome::Status(_)) && self.cfg.split_local_origin {
                h.consecutive_local.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let mut fired = None;
        if matches!(code, 502..=504) {
            let n = h.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
            if n == self.cfg.consecutive_gateway_failure {
                fired = Some(Ejection::ConsecutiveGatewayFailure);
            }
        } else {
            h.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        let n = h.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.cfg.consecutive_5xx {
            fired = Some(Ejection::Consecutive5xx);
        }
        fired
    }

    fn enforcing(&self, e: Ejection) -> u32 {
        match e {
            Ejection::Consecutive5xx => self.cfg.enforcing_consecutive_5xx,
            Ejection::ConsecutiveGatewayFailure => self.cfg.enforcing_consecutive_gateway_failure,
            Ejection::ConsecutiveLocalOriginFailure => {
                self.cfg.enforcing_consecutive_local_origin_failure
            }
        }
    }

    /// Ejects `h` if Envoy would: fewer than `max_ejection_percent` of `total` hosts are
    /// ejected (`ejected`), and the enforcing percentage allows it. Returns whether it did.
    pub fn try_eject(&self, h: &HostOutlier, e: Ejection, ejected: usize, total: usize) -> bool {
        self.try_eject_at(h, e, ejected, total, self.now_ms())
    }

    fn try_eject_at(
        &self,
        h: &HostOutlier,
        e: Ejection,
        ejected: usize,
        total: usize,
        now_ms: u64,
    ) -> bool {
        let (detected, enforced) = match e {
            Ejection::Consecutive5xx => (&self.stats.detected_5xx, &self.stats.enforced_5xx),
            Ejection::ConsecutiveGatewayFailure => {
                (&self.stats.detected_gateway, &self.stats.enforced_gateway)
            }
            Ejection::ConsecutiveLocalOriginFailure => {
                (&self.stats.detected_local, &self.stats.enforced_local)
            }
        };
        detected.inc();
        if h.is_ejected() || total == 0 {
            return false;
        }
        if 100 * ejected >= self.cfg.max_ejection_percent as usize * total {
            self.stats.ejections_overflow.inc();
            return false;
        }
        if e == Ejection::Consecutive5xx {
            self.stats.ejections_total.inc();
        }
        if fastrand::u32(0..100) >= self.enforcing(e) {
            return false;
        }
        h.reset_counters();
        h.num_ejections.fetch_add(1, Ordering::Relaxed);
        h.ejected_at_ms.store(now_ms, Ordering::Relaxed);
        h.ejected.store(true, Ordering::Relaxed);
        self.stats.ejections_active.inc();
        self.stats.ejections_enforced_total.inc();
        enforced.inc();
        true
    }

    /// The interval tick for one host: brings an ejected host back once its time is served,
    /// and lowers the ejection count of a host that stayed in. Returns whether it was unejected.
    pub fn tick(&self, h: &HostOutlier) -> bool {
        self.tick_at(h, self.now_ms())
    }

    fn tick_at(&self, h: &HostOutlier, now_ms: u64) -> bool {
        let n = h.num_ejections.load(Ordering::Relaxed);
        if !h.is_ejected() {
            if n > 0 {
                h.num_ejections.store(n - 1, Ordering::Relaxed);
            }
            return false;
        }
        let served =
            Duration::from_millis(now_ms.saturating_sub(h.ejected_at_ms.load(Ordering::Relaxed)));
        let term = (self.cfg.base_ejection_time * n.max(1))
            .min(self.cfg.max_ejection_time.max(self.cfg.base_ejection_time));
        if served >= term {
            h.ejected.store(false, Ordering::Relaxed);
            h.reset_counters();
            self.stats.ejections_active.dec();
            return true;
        }
        false
    }

    /// A host leaves the cluster: it no longer counts as ejected.
    pub fn forget(&self, h: &HostOutlier) {
        if h.ejected.swap(false, Ordering::Relaxed) {
            self.stats.ejections_active.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> OutlierConfig {
        let o: cpb::OutlierDetection =
            crate::config::proto::decode(yaml, crate::config::proto::Format::Yaml).unwrap();
        OutlierConfig::from_proto(&o).unwrap()
    }

    #[test]
    fn defaults_are_envoys() {
        let c = cfg("{}");
        assert_eq!(c.consecutive_5xx, 5);
        assert_eq!(c.enforcing_consecutive_gateway_failure, 0);
        assert_eq!(c.base_ejection_time, Duration::from_secs(30));
        assert_eq!(c.max_ejection_percent, 10);
        let o: cpb::OutlierDetection = crate::config::proto::decode(
            "enforcing_consecutive_5xx: 101",
            crate::config::proto::Format::Yaml,
        )
        .unwrap();
        assert_eq!(
            OutlierConfig::from_proto(&o).unwrap_err().0,
            "enforcing_consecutive_5xx"
        );
    }

    #[test]
    fn consecutive_5xx_fires_once_and_successes_reset() {
        let d = Detector::new("t_outlier_a", cfg("consecutive_5xx: 3"));
        let h = HostOutlier::default();
        assert_eq!(d.record(&h, Outcome::Status(500)), None);
        assert_eq!(d.record(&h, Outcome::Status(500)), None);
        assert_eq!(d.record(&h, Outcome::Status(200)), None);
        assert_eq!(d.record(&h, Outcome::Status(500)), None);
        assert_eq!(d.record(&h, Outcome::ConnectFailed), None);
        assert_eq!(
            d.record(&h, Outcome::Timeout),
            Some(Ejection::Consecutive5xx),
            "local failures count as 5xx unless split"
        );
        // Ejection honours max_ejection_percent: 10% of 2 hosts still allows the first.
        assert!(d.try_eject(&h, Ejection::Consecutive5xx, 0, 2));
        assert!(h.is_ejected());
        let other = HostOutlier::default();
        assert!(!d.try_eject(&other, Ejection::Consecutive5xx, 1, 2));
        assert_eq!(d.stats.ejections_overflow.get(), 1);
        assert_eq!(d.stats.ejections_active.get(), 1);
        // Not back before base_ejection_time (30 s by default).
        assert!(!d.tick(&h));
        assert!(d.tick_at(&h, d.now_ms() + 30_000));
    }

    #[test]
    fn gateway_and_split_local_origin() {
        let d = Detector::new(
            "t_outlier_b",
            cfg("consecutive_gateway_failure: 2\nconsecutive_5xx: 9\nsplit_external_local_origin_errors: true\nconsecutive_local_origin_failure: 2"),
        );
        let h = HostOutlier::default();
        assert_eq!(d.record(&h, Outcome::Status(502)), None);
        assert_eq!(
            d.record(&h, Outcome::Status(504)),
            Some(Ejection::ConsecutiveGatewayFailure)
        );
        // Gateway failures are not enforced by default (enforcing 0%).
        assert!(!d.try_eject(&h, Ejection::ConsecutiveGatewayFailure, 0, 1));
        assert_eq!(d.stats.detected_gateway.get(), 1);
        let h = HostOutlier::default();
        assert_eq!(d.record(&h, Outcome::ConnectFailed), None);
        assert_eq!(
            d.record(&h, Outcome::Reset),
            Some(Ejection::ConsecutiveLocalOriginFailure)
        );
    }

    #[test]
    fn ejection_time_grows_with_each_ejection() {
        let d = Detector::new(
            "t_outlier_c",
            cfg("base_ejection_time: 0.05s\nmax_ejection_percent: 100\nmax_ejection_time: 0.08s"),
        );
        let h = HostOutlier::default();
        assert!(d.try_eject_at(&h, Ejection::Consecutive5xx, 0, 1, 1000));
        assert!(!d.tick_at(&h, 1049));
        assert!(d.tick_at(&h, 1050), "back after base_ejection_time");
        assert!(d.try_eject_at(&h, Ejection::Consecutive5xx, 0, 1, 2000));
        assert!(
            !d.tick_at(&h, 2060),
            "the second ejection lasts longer (2 x base, capped at 80 ms)"
        );
        assert!(d.tick_at(&h, 2080));
        // Staying in lowers the count again.
        d.tick_at(&h, 3000);
        d.tick_at(&h, 4000);
        assert_eq!(h.num_ejections.load(Ordering::Relaxed), 0);
    }
}
