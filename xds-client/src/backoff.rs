//! Reconnect back-off: exponential with jitter, reset once a stream delivers a response.
//!
//! Each delay is drawn uniformly from `[cap / 2, cap]`, where `cap = min(initial * 2^n, max)`:
//! half-jitter keeps many proxies from reconnecting in lock-step after a control-plane restart
//! while never retrying immediately.

use std::time::Duration;

/// Back-off settings. Defaults: 500 ms doubling up to 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Back-off state for one client.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// A back-off with a seeded random source, for deterministic tests.
    pub fn with_rng(config: BackoffConfig, rng: fastrand::Rng) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the next delay, before jitter.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// The delay before the next attempt; grows the cap for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let cap_ms = cap.as_millis().min(u64::MAX as u128) as u64;
        let low = cap_ms / 2;
        Duration::from_millis(self.rng.u64(low..=cap_ms))
    }

    /// Forget past failures (a stream worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_jitter_and_resets() {
        let mut b = Backoff::with_rng(BackoffConfig::default(), fastrand::Rng::with_seed(7));
        let mut caps = Vec::new();
        for _ in 0..10 {
            let cap = b.cap();
            let d = b.next_delay();
            assert!(
                d <= cap && d >= cap / 2,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
            caps.push(cap.as_millis());
        }
        assert_eq!(
            caps,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.cap(), Duration::from_millis(500));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.cap(), Duration::from_secs(30));
    }
}
