//! Latency histograms (HDR, microsecond resolution) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles drawn in the latency plot and stored in every summary's curve.
pub const CURVE: [f64; 8] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

/// A histogram for latencies from 1 µs to 60 s with 3 significant digits.
pub fn new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).max(1);
    h.saturating_record(us);
}

/// What a run's latency histogram says, in microseconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (percentile, µs) at each of [`CURVE`].
    pub curve: Vec<(f64, f64)>,
}

pub fn summarize(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let q = |p: f64| h.value_at_quantile(p / 100.0) as f64;
    Latency {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: q(50.0),
        p90_us: q(90.0),
        p99_us: q(99.0),
        p999_us: q(99.9),
        max_us: h.max() as f64,
        curve: CURVE
            .iter()
            .map(|&p| (p, if p >= 100.0 { h.max() as f64 } else { q(p) }))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new();
        for us in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = summarize(&h);
        assert_eq!(l.count, 10_000);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.002;
        assert!(close(l.p50_us, 5_000.0), "{}", l.p50_us);
        assert!(close(l.p90_us, 9_000.0), "{}", l.p90_us);
        assert!(close(l.p99_us, 9_900.0), "{}", l.p99_us);
        assert!(close(l.p999_us, 9_990.0), "{}", l.p999_us);
        assert!(close(l.max_us, 10_000.0));
        assert_eq!(l.curve.len(), CURVE.len());
        assert!(l.curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn clamps_and_handles_empty() {
        let mut h = new();
        assert_eq!(summarize(&h), Latency::default());
        record(&mut h, Duration::from_nanos(10)); // below 1 µs
        record(&mut h, Duration::from_secs(3600)); // beyond the range
        let l = summarize(&h);
        assert_eq!(l.count, 2);
        assert!(l.p50_us >= 1.0);
        assert!(l.max_us >= 59_000_000.0);
    }

    #[test]
    fn merging_histograms_adds_counts() {
        let mut a = new();
        let mut b = new();
        record(&mut a, Duration::from_micros(100));
        record(&mut b, Duration::from_micros(300));
        a.add(&b).unwrap();
        assert_eq!(summarize(&a).count, 2);
    }
}
