//! Envoy-style counters and gauges. Components register their metrics once, when their
//! configuration is built, and keep `Arc` handles, so the per-request cost is one relaxed atomic
//! add and no lookup. The registry renders `/stats` (Envoy's `name: value` text) and
//! `/stats/prometheus`. Stats that come and go with a resource (Envoy's per-cluster stats) are
//! not registered: their owner keeps them as plain atomics and hands them to the renderer as a
//! [`StatSource`], so a cluster costs no named entries.

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

/// A metric's value, as a [`StatSource`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatValue {
    Counter(u64),
    Gauge(i64),
}

/// Metrics not in the registry (per-cluster stats owned by the cluster runtimes), rendered
/// with it: `visit` calls `f` with each full stat name and its value.
pub trait StatSource {
    fn visit(&self, f: &mut dyn FnMut(String, StatValue));
}

/// No extra metrics.
impl StatSource for () {
    fn visit(&self, _: &mut dyn FnMut(String, StatValue)) {}
}

enum Rendered {
    Num(i64, &'static str),
    Text(String),
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
        self.render_text_with(filter, &())
    }

    /// `/stats` text including `extra`'s metrics, all sorted by name.
    pub fn render_text_with(&self, filter: Option<&str>, extra: &dyn StatSource) -> String {
        let mut out = String::new();
        for (name, v) in self.collect(extra, |n| filter.is_none_or(|f| n.contains(f))) {
            out.push_str(&name);
            out.push_str(": ");
            match v {
                Rendered::Num(n, _) => out.push_str(&n.to_string()),
                Rendered::Text(t) => {
                    out.push('"');
                    out.push_str(&t);
                    out.push('"');
                }
            }
            out.push('\n');
        }
        out
    }

    /// Prometheus exposition: `envoy_` prefix, dots to underscores, as Envoy does (without tag
    /// extraction: names stay whole).
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_with(&())
    }

    /// Prometheus exposition including `extra`'s metrics.
    pub fn render_prometheus_with(&self, extra: &dyn StatSource) -> String {
        let mut out = String::new();
        for (name, v) in self.collect(extra, |_| true) {
            let Rendered::Num(v, kind) = v else { continue };
            let pname = prometheus_name(&name);
            out.push_str(&format!("# TYPE {pname} {kind}\n{pname} {v}\n"));
        }
        out
    }

    /// The registry's metrics and `extra`'s whose name passes `keep`, sorted by name.
    fn collect(
        &self,
        extra: &dyn StatSource,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(String, Rendered)> {
        let mut all: Vec<(String, Rendered)> = {
            let m = self.metrics.lock().unwrap();
            m.iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, metric)| {
                    let v = match metric {
                        Metric::Counter(c) => Rendered::Num(c.get() as i64, "counter"),
                        Metric::Gauge(g) => Rendered::Num(g.get(), "gauge"),
                        Metric::Text(t) => Rendered::Text(t.get()),
                    };
                    (n.clone(), v)
                })
                .collect()
        };
        extra.visit(&mut |n, v| {
            if keep(&n) {
                let v = match v {
                    StatValue::Counter(c) => Rendered::Num(c as i64, "counter"),
                    StatValue::Gauge(g) => Rendered::Num(g, "gauge"),
                };
                all.push((n, v));
            }
        });
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
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

    struct Two;
    impl StatSource for Two {
        fn visit(&self, f: &mut dyn FnMut(String, StatValue)) {
            f("cluster.b.upstream_rq_total".into(), StatValue::Counter(2));
            f("cluster.a.membership_total".into(), StatValue::Gauge(1));
        }
    }

    #[test]
    fn sources_render_sorted_with_the_registry() {
        let r = Registry::default();
        r.counter("cluster.a.upstream_rq_total").add(3);
        r.counter("server.x").inc();
        let t = r.render_text_with(None, &Two);
        assert_eq!(
            t,
            "cluster.a.membership_total: 1\ncluster.a.upstream_rq_total: 3\ncluster.b.upstream_rq_total: 2\nserver.x: 1\n"
        );
        assert_eq!(
            r.render_text_with(Some("b."), &Two),
            "cluster.b.upstream_rq_total: 2\n"
        );
        let p = r.render_prometheus_with(&Two);
        assert!(
            p.starts_with("# TYPE envoy_cluster_a_membership_total gauge\nenvoy_cluster_a_membership_total 1\n"),
            "{p}"
        );
        assert!(p.contains("# TYPE envoy_cluster_b_upstream_rq_total counter\nenvoy_cluster_b_upstream_rq_total 2\n"));
    }
}
