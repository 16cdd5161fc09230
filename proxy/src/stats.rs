//! Envoy-style counters and gauges. Components register their metrics once, when their
//! configuration is built, and keep `Arc` handles, so the per-request cost is one relaxed atomic
//! add and no lookup. The registry renders `/stats` (Envoy's `name: value` text) and
//! `/stats/prometheus`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (open connections, active requests).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A text metric (xDS versions): shown in `/stats`, skipped in Prometheus output.
#[derive(Debug, Default)]
pub struct TextStat(Mutex<String>);

impl TextStat {
    pub fn set(&self, v: &str) {
        *self.0.lock().unwrap() = v.to_string();
    }
    pub fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Text(Arc<TextStat>),
}

/// The process-wide registry of named metrics.
#[derive(Debug, Default)]
pub struct Registry {
    metrics: Mutex<BTreeMap<String, Metric>>,
}

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

impl Registry {
    /// The counter with this name, created on first use.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let mut m = self.metrics.lock().unwrap();
        match m.get(name) {
            Some(Metric::Counter(c)) => c.clone(),
            _ => {
                let c = Arc::new(Counter::default());
                m.insert(name.to_string(), Metric::Counter(c.clone()));
                c
            }
        }
    }

    /// The gauge with this name, created on first use.
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        let mut m = self.metrics.lock().unwrap();
        match m.get(name) {
            Some(Metric::Gauge(g)) => g.clone(),
            _ => {
                let g = Arc::new(Gauge::default());
                m.insert(name.to_string(), Metric::Gauge(g.clone()));
                g
            }
        }
    }

    /// The text stat with this name, created on first use.
    pub fn text(&self, name: &str) -> Arc<TextStat> {
        let mut m = self.metrics.lock().unwrap();
        match m.get(name) {
            Some(Metric::Text(t)) => t.clone(),
            _ => {
                let t = Arc::new(TextStat::default());
                m.insert(name.to_string(), Metric::Text(t.clone()));
                t
            }
        }
    }

    /// Current value of a counter or gauge (tests and admin).
    pub fn value(&self, name: &str) -> Option<i64> {
        match self.metrics.lock().unwrap().get(name)? {
            Metric::Counter(c) => Some(c.get() as i64),
            Metric::Gauge(g) => Some(g.get()),
            Metric::Text(_) => None,
        }
    }

    /// Envoy's `/stats` text: `name: value` lines, sorted; `filter` keeps names containing it.
    pub fn render_text(&self, filter: Option<&str>) -> String {
        let m = self.metrics.lock().unwrap();
        let mut out = String::new();
        for (name, metric) in m.iter() {
            if filter.is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let v = match metric {
                Metric::Counter(c) => c.get().to_string(),
                Metric::Gauge(g) => g.get().to_string(),
                Metric::Text(t) => format!("\"{}\"", t.get()),
            };
            out.push_str(name);
            out.push_str(": ");
            out.push_str(&v);
            out.push('\n');
        }
        out
    }

    /// Prometheus exposition: `envoy_` prefix, dots to underscores, as Envoy does (without tag
    /// extraction: names stay whole).
    pub fn render_prometheus(&self) -> String {
        let m = self.metrics.lock().unwrap();
        let mut out = String::new();
        for (name, metric) in m.iter() {
            let (kind, v) = match metric {
                Metric::Counter(c) => ("counter", c.get() as i64),
                Metric::Gauge(g) => ("gauge", g.get()),
                Metric::Text(_) => continue,
            };
            let pname = prometheus_name(name);
            out.push_str(&format!("# TYPE {pname} {kind}\n{pname} {v}\n"));
        }
        out
    }
}

fn prometheus_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 6);
    s.push_str("envoy_");
    for c in name.chars() {
        s.push(if c.is_ascii_alphanumeric() { c } else { '_' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_both_formats() {
        let r = Registry::default();
        r.counter("cluster.a.upstream_rq_total").add(3);
        r.gauge("server.live").set(1);
        r.text("cluster_manager.cds.version_text").set("v1");
        let t = r.render_text(None);
        assert!(t.contains("cluster.a.upstream_rq_total: 3\n"), "{t}");
        assert!(
            t.contains("cluster_manager.cds.version_text: \"v1\""),
            "{t}"
        );
        let p = r.render_prometheus();
        assert!(p.contains("envoy_cluster_a_upstream_rq_total 3\n"), "{p}");
        assert!(!p.contains("version_text"));
        assert_eq!(r.value("server.live"), Some(1));
    }
}
