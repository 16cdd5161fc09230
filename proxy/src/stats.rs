//! Envoy-style counters, gauges and histograms. Components register their metrics once, when
//! their configuration is built, and keep `Arc` handles, so the per-request cost is one add
//! and no lookup. The registry renders `/stats` (Envoy's `name: value` text, or JSON)
//! and `/stats/prometheus` (with Envoy's default tag extraction, see [`extract_tags`]). Stats
//! that come and go with a resource (Envoy's per-cluster stats) are not registered: their owner
//! keeps them as plain fields and hands them to the renderer as a [`StatSource`], so a cluster
//! costs no named entries.
//!
//! Every stat is split into cells: one for each of the first [`OWNED`] runtime threads that
//! [`claim_cell`] (tokio's workers, which claim theirs when they start), written by that thread
//! alone with a plain load and store, and one shared cell that every other thread adds to
//! atomically. A locked read-modify-write costs about 20 cycles and orders the core's stores,
//! and a request updates a dozen stats; a worker's own cell costs a load and a store. Reading
//! a stat sums its cells.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How many threads own a cell in every stat (Istio runs sidecars with two workers).
pub const OWNED: usize = 2;

thread_local! {
    /// This thread's cell: below [`OWNED`] if it owns one, else the shared cell's index.
    static CELL: Cell<usize> = const { Cell::new(OWNED) };
}

/// The owned cells no thread holds, one bit each.
static FREE_CELLS: AtomicU8 = AtomicU8::new((1 << OWNED) - 1);

/// Gives this thread a cell of its own in every stat, if one is free (a runtime thread calls
/// it when it starts). Without one, the thread adds to the shared cell.
pub fn claim_cell() {
    if CELL.with(Cell::get) < OWNED {
        return;
    }
    // Acquire: the cell's last owner's writes (see `release_cell`) are seen before ours.
    let taken = FREE_CELLS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
        (free != 0).then(|| free & (free - 1))
    });
    if let Ok(free) = taken {
        CELL.with(|c| c.set(free.trailing_zeros() as usize));
    }
}

/// Gives this thread's cell back (a runtime thread calls it when it stops); the next thread
/// to claim it goes on from the values it holds.
pub fn release_cell() {
    let i = CELL.with(|c| c.replace(OWNED));
    if i < OWNED {
        FREE_CELLS.fetch_or(1 << i, Ordering::Release);
    }
}

/// `n` added to `cells`, in this thread's cell.
#[inline]
fn add_to(cells: &[AtomicU64; OWNED + 1], n: u64) {
    let i = CELL.with(Cell::get);
    if i < OWNED {
        // This thread is the cell's only writer: no read-modify-write needed.
        let c = &cells[i];
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    } else {
        cells[OWNED].fetch_add(n, Ordering::Relaxed);
    }
}

/// The cells' sum (wrapping: a gauge's cells hold signed deltas).
fn sum(cells: &[AtomicU64; OWNED + 1]) -> u64 {
    cells
        .iter()
        .fold(0u64, |a, c| a.wrapping_add(c.load(Ordering::Relaxed)))
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter([AtomicU64; OWNED + 1]);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        add_to(&self.0, 1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        add_to(&self.0, n);
    }
    pub fn get(&self) -> u64 {
        sum(&self.0)
    }
    /// Back to zero (`/reset_counters`): the shared cell takes away the sum, so that no
    /// owner's cell is written by another thread and an add made meanwhile is kept.
    pub fn reset(&self) {
        self.0[OWNED].fetch_sub(self.get(), Ordering::Relaxed);
    }
}

/// A value that goes up and down (open connections, active requests).
#[derive(Debug, Default)]
pub struct Gauge([AtomicU64; OWNED + 1]);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        add_to(&self.0, 1);
    }
    #[inline]
    pub fn dec(&self) {
        add_to(&self.0, u64::MAX);
    }
    /// Sets the value, for a gauge that is only ever set (a change made by another thread
    /// at the same moment may be lost).
    pub fn set(&self, v: i64) {
        let others = sum(&self.0).wrapping_sub(self.0[OWNED].load(Ordering::Relaxed));
        self.0[OWNED].store((v as u64).wrapping_sub(others), Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        sum(&self.0) as i64
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

/// Envoy's default histogram bucket bounds, in milliseconds.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The same bounds in microseconds (what [`Histogram::record`] compares against).
const BUCKETS_US: [u64; 19] = [
    500,
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// The quantiles Envoy prints for a histogram (in percent).
pub const QUANTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// A latency histogram in milliseconds with Envoy's default buckets: a count per bucket (the
/// last one is above 3 600 000 ms) and the sum, in cells like the counters'. 504 bytes.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [[AtomicU64; OWNED + 1]; 20],
    sum_us: [AtomicU64; OWNED + 1],
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistSnapshot {
    /// Samples per bucket (not cumulative); index 19 is above the last bound.
    pub counts: [u64; 20],
    /// The sum of the samples, in milliseconds.
    pub sum_ms: f64,
}

impl Histogram {
    /// Records a duration (two adds, a binary search over 19 bounds).
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        add_to(&self.counts[i], 1);
        add_to(&self.sum_us, us);
    }

    pub fn snapshot(&self) -> HistSnapshot {
        let mut counts = [0; 20];
        for (c, a) in counts.iter_mut().zip(&self.counts) {
            *c = sum(a);
        }
        HistSnapshot {
            counts,
            sum_ms: sum(&self.sum_us) as f64 / 1000.0,
        }
    }
}

impl HistSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-th percentile, estimated from the buckets: the rank's position is interpolated
    /// linearly inside its bucket (between the previous bound, or 0, and the bucket's bound;
    /// samples above the last bound count as the last bound). `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q / 100.0).clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let lo = if i == 0 { 0.0 } else { BUCKETS_MS[i - 1] };
            if i == BUCKETS_MS.len() {
                return Some(lo);
            }
            let hi = BUCKETS_MS[i];
            if rank <= (below + n) as f64 {
                let frac = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                // P0 is the lowest bucket's lower edge only when that is all we know.
                return Some(lo + (hi - lo) * frac);
            }
            below += n;
        }
        Some(BUCKETS_MS[BUCKETS_MS.len() - 1])
    }

    /// Envoy's `/stats` text for a histogram: `P0(interval,cumulative) … P100(…)`, or
    /// `No recorded values`. Sluice keeps no flush intervals, so the interval value is `nan`.
    pub fn summary(&self) -> String {
        if self.count() == 0 {
            return "No recorded values".into();
        }
        let mut out = String::new();
        for q in QUANTILES {
            if !out.is_empty() {
                out.push(' ');
            }
            let v = self.quantile(q).unwrap_or(f64::NAN);
            let _ = write!(out, "P{}(nan,{})", q, fmt_g(v));
        }
        out
    }
}

/// A number as `%g` would print it, with up to 6 significant digits.
fn fmt_g(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let digits = (6 - v.abs().log10().floor() as i32 - 1).clamp(0, 12) as usize;
    let s = format!("{v:.digits$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Text(Arc<TextStat>),
    Histogram(Arc<Histogram>),
}

/// A metric's value, as a [`StatSource`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatValue {
    Counter(u64),
    Gauge(i64),
    Histogram(HistSnapshot),
}

/// Metrics not in the registry (per-cluster stats owned by the cluster runtimes), rendered
/// with it: `visit` calls `f` with each full stat name and its value.
pub trait StatSource {
    fn visit(&self, f: &mut dyn FnMut(String, StatValue));
    /// Sets this source's counters to zero (`/reset_counters`).
    fn reset_counters(&self) {}
}

/// No extra metrics.
impl StatSource for () {
    fn visit(&self, _: &mut dyn FnMut(String, StatValue)) {}
}

/// A Prometheus family: its type and its series (labels, value).
type Family = (&'static str, Vec<(String, Rendered)>);

#[derive(Debug, Clone)]
enum Rendered {
    Num(i64, &'static str),
    Text(String),
    Hist(HistSnapshot),
}

impl Rendered {
    /// Whether the stat has ever been written, as far as a value can tell: Sluice keeps no
    /// "used" flag, so a counter or gauge is used when it is not zero (`?usedonly`).
    fn used(&self) -> bool {
        match self {
            Rendered::Num(v, _) => *v != 0,
            Rendered::Text(t) => !t.is_empty(),
            Rendered::Hist(h) => h.count() > 0,
        }
    }
}

/// Which stats a rendering includes (`/stats?filter=&usedonly`).
#[derive(Debug, Default, Clone)]
pub struct Select {
    /// Envoy's `filter`: a regular expression searched for in the stat's name.
    pub filter: Option<regex::Regex>,
    pub used_only: bool,
    /// Envoy's `type`: only this kind (`None`: all).
    pub kind: Option<Kind>,
}

/// A kind of stat, for Envoy's `/stats?type=` (`Counters`, `Gauges`, `Histograms`,
/// `TextReadouts`, `All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counters,
    Gauges,
    Histograms,
    TextReadouts,
}

impl Kind {
    /// Parses Envoy's `type` values; `All` is `None`.
    pub fn parse(s: &str) -> Result<Option<Kind>, String> {
        Ok(Some(match s {
            "Counters" => Kind::Counters,
            "Gauges" => Kind::Gauges,
            "Histograms" => Kind::Histograms,
            "TextReadouts" => Kind::TextReadouts,
            "All" => return Ok(None),
            _ => {
                return Err(format!(
                    "invalid type {s}: expected Counters, Gauges, Histograms, TextReadouts or All"
                ))
            }
        }))
    }
}

impl Select {
    fn keep_name(&self, n: &str) -> bool {
        self.filter.as_ref().is_none_or(|re| re.is_match(n))
    }

    fn keep(&self, v: &Rendered) -> bool {
        if self.used_only && !v.used() {
            return false;
        }
        match (self.kind, v) {
            (None, _) => true,
            (Some(Kind::Counters), Rendered::Num(_, k)) => *k == "counter",
            (Some(Kind::Gauges), Rendered::Num(_, k)) => *k == "gauge",
            (Some(Kind::Histograms), Rendered::Hist(_)) => true,
            (Some(Kind::TextReadouts), Rendered::Text(_)) => true,
            _ => false,
        }
    }
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
    /// The metric with this name, of the kind `get` recognizes, created with `make` on first
    /// use (a name registered as another kind is replaced).
    fn get_or_make<T: Default>(
        &self,
        name: &str,
        get: fn(&Metric) -> Option<&Arc<T>>,
        make: fn(Arc<T>) -> Metric,
    ) -> Arc<T> {
        let mut m = self.metrics.lock().unwrap();
        if let Some(v) = m.get(name).and_then(get) {
            return v.clone();
        }
        let v = Arc::new(T::default());
        m.insert(name.to_string(), make(v.clone()));
        v
    }

    /// The counter with this name, created on first use.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        self.get_or_make(
            name,
            |m| match m {
                Metric::Counter(c) => Some(c),
                _ => None,
            },
            Metric::Counter,
        )
    }

    /// The gauge with this name, created on first use.
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        self.get_or_make(
            name,
            |m| match m {
                Metric::Gauge(g) => Some(g),
                _ => None,
            },
            Metric::Gauge,
        )
    }

    /// The text stat with this name, created on first use.
    pub fn text(&self, name: &str) -> Arc<TextStat> {
        self.get_or_make(
            name,
            |m| match m {
                Metric::Text(t) => Some(t),
                _ => None,
            },
            Metric::Text,
        )
    }

    /// The histogram with this name, created on first use.
    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        self.get_or_make(
            name,
            |m| match m {
                Metric::Histogram(h) => Some(h),
                _ => None,
            },
            Metric::Histogram,
        )
    }

    /// Current value of a counter or gauge (tests and admin).
    pub fn value(&self, name: &str) -> Option<i64> {
        match self.metrics.lock().unwrap().get(name)? {
            Metric::Counter(c) => Some(c.get() as i64),
            Metric::Gauge(g) => Some(g.get()),
            Metric::Text(_) | Metric::Histogram(_) => None,
        }
    }

    /// Envoy's `/reset_counters`: every counter (registry and `extra`) back to zero; gauges,
    /// text stats and histograms keep their values.
    pub fn reset_counters(&self, extra: &dyn StatSource) {
        for m in self.metrics.lock().unwrap().values() {
            if let Metric::Counter(c) = m {
                c.reset();
            }
        }
        extra.reset_counters();
    }

    /// Envoy's `/stats` text: `name: value` lines, sorted; `filter` keeps names containing it.
    pub fn render_text(&self, filter: Option<&str>) -> String {
        let sel = Select {
            filter: filter.and_then(|f| regex::Regex::new(&regex::escape(f)).ok()),
            ..Select::default()
        };
        self.render_text_with(&sel, &())
    }

    /// `/stats` text including `extra`'s metrics: counters, gauges and text stats sorted by
    /// name, then histograms (Envoy's quantile summary line) sorted by name.
    pub fn render_text_with(&self, sel: &Select, extra: &dyn StatSource) -> String {
        let mut out = String::new();
        let all = self.collect(extra, sel);
        for (name, v) in all.iter().filter(|(_, v)| !matches!(v, Rendered::Hist(_))) {
            out.push_str(name);
            out.push_str(": ");
            match v {
                Rendered::Num(n, _) => {
                    let _ = write!(out, "{n}");
                }
                Rendered::Text(t) => {
                    out.push('"');
                    out.push_str(t);
                    out.push('"');
                }
                Rendered::Hist(_) => {}
            }
            out.push('\n');
        }
        for (name, v) in &all {
            if let Rendered::Hist(h) = v {
                let _ = writeln!(out, "{name}: {}", h.summary());
            }
        }
        out
    }

    /// Envoy's `/stats?format=json`: `{"stats": [{"name", "value"}…, {"histograms": …}]}`,
    /// histograms as Envoy's `supported_quantiles` / `computed_quantiles` (interval values are
    /// null: Sluice keeps no flush intervals).
    pub fn render_json_with(&self, sel: &Select, extra: &dyn StatSource) -> serde_json::Value {
        use serde_json::{json, Value};
        let all = self.collect(extra, sel);
        let mut stats: Vec<Value> = Vec::with_capacity(all.len() + 1);
        let mut computed = Vec::new();
        for (name, v) in all {
            match v {
                Rendered::Num(n, _) => stats.push(json!({"name": name, "value": n})),
                Rendered::Text(t) => stats.push(json!({"name": name, "value": t})),
                Rendered::Hist(h) => computed.push(json!({
                    "name": name,
                    "values": QUANTILES.iter().map(|q| json!({
                        "interval": null,
                        "cumulative": h.quantile(*q),
                    })).collect::<Vec<_>>(),
                })),
            }
        }
        if !computed.is_empty() {
            stats.push(json!({"histograms": {
                "supported_quantiles": QUANTILES,
                "computed_quantiles": computed,
            }}));
        }
        json!({ "stats": stats })
    }

    /// Prometheus exposition of every counter, gauge and histogram.
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_with(&Select::default(), &())
    }

    /// Prometheus exposition including `extra`'s metrics, as Envoy's `/stats/prometheus`: names
    /// go through [`extract_tags`], get the `envoy_` prefix and have every character outside
    /// `[a-zA-Z0-9_]` replaced by `_`; the extracted tags become labels. Metrics of one family
    /// are grouped under one `# TYPE` line; families are sorted by name. Text stats are left out.
    pub fn render_prometheus_with(&self, sel: &Select, extra: &dyn StatSource) -> String {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for (name, v) in self.collect(extra, sel) {
            let kind = match &v {
                Rendered::Num(_, k) => *k,
                Rendered::Hist(_) => "histogram",
                Rendered::Text(_) => continue,
            };
            let (base, tags) = extract_tags(&name);
            let mut labels = String::new();
            for (k, val) in &tags {
                if !labels.is_empty() {
                    labels.push(',');
                }
                labels.push_str(&sanitize(k));
                labels.push_str("=\"");
                escape_label(val, &mut labels);
                labels.push('"');
            }
            let fam = format!("envoy_{}", sanitize(&base));
            let entry = families.entry(fam).or_insert((kind, Vec::new()));
            entry.1.push((labels, v));
        }
        let mut out = String::new();
        for (fam, (kind, mut series)) in families {
            series.sort_by(|a, b| a.0.cmp(&b.0));
            let _ = writeln!(out, "# TYPE {fam} {kind}");
            for (labels, v) in series {
                match v {
                    Rendered::Num(n, _) if labels.is_empty() => {
                        let _ = writeln!(out, "{fam} {n}");
                    }
                    Rendered::Num(n, _) => {
                        let _ = writeln!(out, "{fam}{{{labels}}} {n}");
                    }
                    Rendered::Hist(h) => {
                        let sep = if labels.is_empty() { "" } else { "," };
                        let mut cum = 0;
                        for (i, b) in BUCKETS_MS.iter().enumerate() {
                            cum += h.counts[i];
                            let _ = writeln!(out, "{fam}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
                        }
                        let total = h.count();
                        let _ = writeln!(out, "{fam}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
                        let braces = |l: &str| {
                            if l.is_empty() {
                                String::new()
                            } else {
                                format!("{{{l}}}")
                            }
                        };
                        let _ = writeln!(out, "{fam}_sum{} {}", braces(&labels), h.sum_ms);
                        let _ = writeln!(out, "{fam}_count{} {total}", braces(&labels));
                    }
                    Rendered::Text(_) => {}
                }
            }
        }
        out
    }

    /// The registry's metrics and `extra`'s that `sel` keeps, sorted by name.
    fn collect(&self, extra: &dyn StatSource, sel: &Select) -> Vec<(String, Rendered)> {
        let mut all: Vec<(String, Rendered)> = {
            let m = self.metrics.lock().unwrap();
            m.iter()
                .filter(|(n, _)| sel.keep_name(n))
                .map(|(n, metric)| {
                    let v = match metric {
                        Metric::Counter(c) => Rendered::Num(c.get() as i64, "counter"),
                        Metric::Gauge(g) => Rendered::Num(g.get(), "gauge"),
                        Metric::Text(t) => Rendered::Text(t.get()),
                        Metric::Histogram(h) => Rendered::Hist(h.snapshot()),
                    };
                    (n.clone(), v)
                })
                .collect()
        };
        extra.visit(&mut |n, v| {
            if sel.keep_name(&n) {
                let v = match v {
                    StatValue::Counter(c) => Rendered::Num(c as i64, "counter"),
                    StatValue::Gauge(g) => Rendered::Num(g, "gauge"),
                    StatValue::Histogram(h) => Rendered::Hist(h),
                };
                all.push((n, v));
            }
        });
        all.retain(|(_, v)| sel.keep(v));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Prometheus label value escaping: backslash, double quote and newline.
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Sub-scopes whose stat names take two tokens after the resource's name
/// (`cluster.NAME.outlier_detection.ejections_active`, `http.PREFIX.fault.aborts_injected`).
const SUB_SCOPES: [&str; 4] = ["outlier_detection", "fault", "cors", "circuit_breakers"];

/// Envoy's default tag extraction (`source/common/config/well_known_names.cc`) for the stats
/// Sluice emits. Returns the tag-extracted name and the tags (Envoy's tag names), in the order
/// Envoy's default specifiers apply:
///
/// - `envoy.response_code`: `…_rq_NNN` → `…_rq`;
/// - `envoy.response_code_class`: `…_rq_Nxx` → `…_rq_xx`;
/// - `envoy.tcp_prefix`: `tcp.PREFIX.…`;
/// - `envoy.cluster_name`: `cluster.NAME.…`;
/// - `envoy.http_conn_manager_prefix`: `http.PREFIX.…`;
/// - `envoy.listener_address`: `listener.ADDRESS.…` (not `listener.admin.…`).
///
/// One difference: Envoy's default specifiers take a single dot-separated token as the value,
/// which cuts Istio's cluster names (`outbound|9080||reviews.default.svc.cluster.local`) apart
/// (Istio's bootstrap replaces the cluster rule for that reason). Sluice knows the shape of its
/// stat names, so the value is everything between the namespace and the stat (the last token,
/// or the last two in a sub-scope such as `outlier_detection`); names without dots in the
/// value extract exactly as Envoy's.
pub fn extract_tags(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut tags = Vec::new();
    let mut base = name.to_string();
    if let Some(code) = rq_suffix(&base, false) {
        tags.push(("envoy.response_code", code.to_string()));
        base.truncate(base.len() - 4);
    } else if let Some(class) = rq_suffix(&base, true) {
        tags.push(("envoy.response_code_class", class.to_string()));
        base.replace_range(base.len() - 3..base.len() - 2, "");
    }
    let scoped: [(&str, &'static str); 4] = [
        ("tcp", "envoy.tcp_prefix"),
        ("cluster", "envoy.cluster_name"),
        ("http", "envoy.http_conn_manager_prefix"),
        ("listener", "envoy.listener_address"),
    ];
    for (ns, tag) in scoped {
        let Some(rest) = base.strip_prefix(ns).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        // The stat: the last token, or the last two when the one before is a sub-scope.
        let Some(last_dot) = rest.rfind('.') else {
            break;
        };
        let mut split = last_dot;
        if let Some(prev) = rest[..last_dot].rfind('.') {
            if SUB_SCOPES.contains(&&rest[prev + 1..last_dot]) {
                split = prev;
            }
        }
        let value = &rest[..split];
        if value.is_empty() || (ns == "listener" && value == "admin") {
            break;
        }
        tags.push((tag, value.to_string()));
        base = format!("{ns}.{}", &rest[split + 1..]);
        break;
    }
    (base, tags)
}

/// `…_rq_NNN` (three digits) or, with `class`, `…_rq_Nxx`: the code or class digit.
fn rq_suffix(name: &str, class: bool) -> Option<&str> {
    let b = name.as_bytes();
    if b.len() < 7 || &name[b.len() - 7..b.len() - 3] != "_rq_" {
        return None;
    }
    let tail = &name[b.len() - 3..];
    let t = tail.as_bytes();
    if class {
        (t[0].is_ascii_digit() && &tail[1..] == "xx").then(|| &tail[..1])
    } else {
        t.iter().all(u8::is_ascii_digit).then_some(tail)
    }
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
        assert!(
            p.contains(
                "# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 3\n"
            ),
            "{p}"
        );
        assert!(p.contains("# TYPE envoy_server_live gauge\nenvoy_server_live 1\n"));
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
        let t = r.render_text_with(&Select::default(), &Two);
        assert_eq!(
            t,
            "cluster.a.membership_total: 1\ncluster.a.upstream_rq_total: 3\ncluster.b.upstream_rq_total: 2\nserver.x: 1\n"
        );
        assert_eq!(r.render_text(Some("b.")), "");
        let sel = Select {
            filter: Some(regex::Regex::new(r"^cluster\.b\.").unwrap()),
            ..Select::default()
        };
        assert_eq!(
            r.render_text_with(&sel, &Two),
            "cluster.b.upstream_rq_total: 2\n"
        );
        let p = r.render_prometheus_with(&Select::default(), &Two);
        assert!(
            p.starts_with("# TYPE envoy_cluster_membership_total gauge\nenvoy_cluster_membership_total{envoy_cluster_name=\"a\"} 1\n"),
            "{p}"
        );
        assert!(p.contains("# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 3\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"b\"} 2\n# TYPE envoy_server_x counter\n"), "{p}");
    }

    #[test]
    fn default_tag_extraction() {
        let t = |n: &str| extract_tags(n);
        assert_eq!(
            t("cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total"),
            (
                "cluster.upstream_rq_total".into(),
                vec![(
                    "envoy.cluster_name",
                    "outbound|9080||reviews.default.svc.cluster.local".into()
                )]
            )
        );
        assert_eq!(
            t("http.ingress_http.downstream_rq_2xx"),
            (
                "http.downstream_rq_xx".into(),
                vec![
                    ("envoy.response_code_class", "2".into()),
                    ("envoy.http_conn_manager_prefix", "ingress_http".into())
                ]
            )
        );
        assert_eq!(
            t("cluster.c.upstream_rq_503").0,
            "cluster.upstream_rq".to_string()
        );
        assert_eq!(
            t("cluster.c.upstream_rq_503").1[0],
            ("envoy.response_code", "503".into())
        );
        assert_eq!(
            t("cluster.x.y.outlier_detection.ejections_active"),
            (
                "cluster.outlier_detection.ejections_active".into(),
                vec![("envoy.cluster_name", "x.y".into())]
            )
        );
        assert_eq!(
            t("http.inbound_0.0.0.0_9080.fault.aborts_injected"),
            (
                "http.fault.aborts_injected".into(),
                vec![(
                    "envoy.http_conn_manager_prefix",
                    "inbound_0.0.0.0_9080".into()
                )]
            )
        );
        assert_eq!(
            t("listener.127.0.0.1_15001.downstream_cx_total"),
            (
                "listener.downstream_cx_total".into(),
                vec![("envoy.listener_address", "127.0.0.1_15001".into())]
            )
        );
        assert_eq!(
            t("listener.admin.downstream_cx_total").1,
            Vec::<(&str, String)>::new()
        );
        assert_eq!(
            t("tcp.outbound|3306||db.downstream_cx_total"),
            (
                "tcp.downstream_cx_total".into(),
                vec![("envoy.tcp_prefix", "outbound|3306||db".into())]
            )
        );
        for plain in [
            "cluster_manager.cds.update_attempt",
            "listener_manager.lds.update_success",
            "server.config_fields_ignored",
            "control_plane.connected_state",
            "dns.requests_total",
        ] {
            assert_eq!(t(plain), (plain.to_string(), vec![]));
        }
    }

    #[test]
    fn prometheus_groups_families_and_escapes_labels() {
        let r = Registry::default();
        r.counter("http.in.downstream_rq_2xx").add(5);
        r.counter("http.in.downstream_rq_5xx").add(1);
        r.counter("http.out.downstream_rq_2xx").add(7);
        r.counter("cluster.we\"ird\\name.upstream_rq_total").inc();
        let p = r.render_prometheus();
        assert!(p.contains(concat!(
            "# TYPE envoy_http_downstream_rq_xx counter\n",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"in\"} 5\n",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"out\"} 7\n",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\",envoy_http_conn_manager_prefix=\"in\"} 1\n",
        )), "{p}");
        assert_eq!(p.matches("# TYPE envoy_http_downstream_rq_xx").count(), 1);
        assert!(
            p.contains(
                "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"we\\\"ird\\\\name\"} 1\n"
            ),
            "{p}"
        );
    }

    #[test]
    fn histograms_in_every_format() {
        let r = Registry::default();
        let h = r.histogram("http.in.downstream_rq_time");
        assert_eq!(
            r.render_text(None),
            "http.in.downstream_rq_time: No recorded values\n"
        );
        for us in [200, 3_000, 3_000, 7_000, 20_000_000] {
            h.record(Duration::from_micros(us));
        }
        r.counter("http.in.downstream_rq_total").add(5);
        let p = r.render_prometheus();
        assert!(p.contains(concat!(
            "# TYPE envoy_http_downstream_rq_time histogram\n",
            "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"0.5\"} 1\n",
            "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"1\"} 1\n",
            "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"5\"} 3\n",
            "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"10\"} 4\n",
        )), "{p}");
        assert!(p.contains("envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"30000\"} 5\n"), "{p}");
        assert!(p.contains("envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"3600000\"} 5\n"), "{p}");
        assert!(p.contains(concat!(
            "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"+Inf\"} 5\n",
            "envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix=\"in\"} 20013.2\n",
            "envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"in\"} 5\n",
        )), "{p}");
        let t = r.render_text(None);
        // Counters first, then histograms.
        assert!(
            t.starts_with("http.in.downstream_rq_total: 5\nhttp.in.downstream_rq_time: P0(nan,0) P25(nan,1.5) P50(nan,4) "),
            "{t}"
        );
        assert!(t.contains("P100(nan,30000)\n"), "{t}");
        let j = r.render_json_with(&Select::default(), &());
        assert_eq!(
            j["stats"][0],
            serde_json::json!({"name": "http.in.downstream_rq_total", "value": 5})
        );
        let hs = &j["stats"][1]["histograms"];
        assert_eq!(hs["supported_quantiles"][7], 99.5);
        assert_eq!(
            hs["computed_quantiles"][0]["name"],
            "http.in.downstream_rq_time"
        );
        assert_eq!(
            hs["computed_quantiles"][0]["values"][2],
            serde_json::json!({"interval": null, "cumulative": 4.0})
        );
    }

    #[test]
    fn usedonly_and_reset() {
        let r = Registry::default();
        r.counter("a.used").inc();
        r.counter("a.unused");
        r.gauge("a.g").set(2);
        r.histogram("a.h");
        let sel = Select {
            used_only: true,
            ..Select::default()
        };
        assert_eq!(r.render_text_with(&sel, &()), "a.g: 2\na.used: 1\n");
        let gauges = Select {
            kind: Kind::parse("Gauges").unwrap(),
            ..Select::default()
        };
        assert_eq!(r.render_text_with(&gauges, &()), "a.g: 2\n");
        let hists = Select {
            kind: Kind::parse("Histograms").unwrap(),
            ..Select::default()
        };
        assert_eq!(r.render_text_with(&hists, &()), "a.h: No recorded values\n");
        assert!(Kind::parse("All").unwrap().is_none());
        assert!(Kind::parse("Nope").is_err());
        r.reset_counters(&());
        assert_eq!(r.value("a.used"), Some(0));
        assert_eq!(r.value("a.g"), Some(2));
    }

    /// The only test that claims cells (they are process-wide).
    #[test]
    fn threads_with_a_cell_of_their_own_and_without_add_up() {
        let c = Arc::new(Counter::default());
        let g = Arc::new(Gauge::default());
        let h = Arc::new(Histogram::default());
        // A thread with a cell of its own, and this one without.
        std::thread::scope(|s| {
            s.spawn(|| {
                claim_cell();
                assert!(CELL.with(Cell::get) < OWNED);
                c.add(5);
                g.inc();
                g.inc();
                h.record(Duration::from_millis(1));
                release_cell();
            });
        });
        assert_eq!(CELL.with(Cell::get), OWNED);
        c.add(2);
        g.dec();
        h.record(Duration::from_millis(2));
        assert_eq!(c.get(), 7);
        assert_eq!(g.get(), 1);
        let snap = h.snapshot();
        assert_eq!((snap.count(), snap.sum_ms), (2, 3.0));
        assert_eq!(
            c.0[OWNED].load(Ordering::Relaxed),
            2,
            "the owner wrote its own cell"
        );

        // The next owner of the cell goes on from it; a reset keeps the owners' cells.
        std::thread::scope(|s| {
            s.spawn(|| {
                claim_cell();
                c.inc();
                assert_eq!(c.get(), 8);
                c.reset();
                assert_eq!(c.get(), 0);
                c.inc();
                g.set(10);
                g.dec();
                release_cell();
            });
        });
        assert_eq!(c.get(), 1);
        assert_eq!(g.get(), 9);

        // More threads than cells: the extra ones share one, and nothing is lost.
        let c = Counter::default();
        let all = std::sync::Barrier::new(OWNED + 2);
        let owned = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..OWNED + 2 {
                s.spawn(|| {
                    claim_cell();
                    all.wait();
                    if CELL.with(Cell::get) < OWNED {
                        owned.fetch_add(1, Ordering::Relaxed);
                    }
                    for _ in 0..100_000 {
                        c.inc();
                    }
                    all.wait();
                    release_cell();
                });
            }
        });
        assert_eq!(owned.load(Ordering::Relaxed), OWNED);
        assert_eq!(c.get(), (OWNED as u64 + 2) * 100_000);
    }
}
