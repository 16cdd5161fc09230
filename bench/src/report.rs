//! The report: a JSON record of every run, a markdown summary (medians with spread, ratios
//! against the direct connection and each peer) and a hand-written SVG latency plot.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::hist::{Latency, CURVE};
use crate::stats::{ratio, Spread};
use crate::sys::Mem;
use crate::targets::Kind;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub target: Kind,
    pub scenario: String,
    pub rep: usize,
    pub requests: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub rps: f64,
    /// Payload throughput, GB/s (10^9 bytes), for the TCP bulk scenario.
    pub gbps: Option<f64>,
    pub latency: Latency,
    /// CPU time the proxy process used during the timed window.
    pub proxy_cpu_s: Option<f64>,
    pub cpu_s_per_1k: Option<f64>,
    /// The proxy's CPU time as a share of the window, in percent (100 = one core).
    #[serde(default)]
    pub proxy_cpu_pct: Option<f64>,
    /// How busy the proxy's core was in total (the proxy plus anything else), in percent.
    #[serde(default)]
    pub core_busy_pct: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TargetRecord {
    pub target: Kind,
    pub version: String,
    /// Memory right after start-up, one per repetition.
    pub idle: Vec<Mem>,
    /// Memory after all scenarios of a repetition (hwm = peak RSS).
    pub after: Vec<Mem>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Crosscheck {
    pub target: Kind,
    pub tool: String,
    pub scenario: String,
    pub rps: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScaleRecord {
    pub services: usize,
    pub bootstrap_bytes: u64,
    pub ready_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Whether a request for the last service's host was routed (200 from the upstream).
    pub routed: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub machine: String,
    pub settings: String,
    pub targets: Vec<TargetRecord>,
    pub runs: Vec<RunRecord>,
    pub crosschecks: Vec<Crosscheck>,
    pub scale: Vec<ScaleRecord>,
    pub notes: Vec<String>,
}

/// Which figure of a run a row shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Rps,
    P50,
    P90,
    P99,
    P999,
    Cpu1k,
    Gbps,
    ProxyPct,
    CorePct,
}

impl Metric {
    fn of(self, r: &RunRecord) -> Option<f64> {
        match self {
            Metric::Rps => Some(r.rps),
            Metric::P50 => (r.latency.count > 0).then_some(r.latency.p50_us),
            Metric::P90 => (r.latency.count > 0).then_some(r.latency.p90_us),
            Metric::P99 => (r.latency.count > 0).then_some(r.latency.p99_us),
            Metric::P999 => (r.latency.count > 0).then_some(r.latency.p999_us),
            Metric::Cpu1k => r.cpu_s_per_1k,
            Metric::Gbps => r.gbps,
            Metric::ProxyPct => r.proxy_cpu_pct,
            Metric::CorePct => r.core_busy_pct,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::Rps => "req/s",
            Metric::P50 | Metric::P90 | Metric::P99 | Metric::P999 => "µs",
            Metric::Cpu1k => "CPU s / 1k req",
            Metric::Gbps => "GB/s",
            Metric::ProxyPct | Metric::CorePct => "%",
        }
    }
}

impl Report {
    pub fn kinds(&self) -> Vec<Kind> {
        let mut v: Vec<Kind> = self.targets.iter().map(|t| t.target).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn scenarios(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in &self.runs {
            if !v.contains(&r.scenario) {
                v.push(r.scenario.clone());
            }
        }
        v
    }

    /// Median and spread of `m` over the repetitions of (target, scenario).
    pub fn spread(&self, k: Kind, scenario: &str, m: Metric) -> Option<Spread> {
        let vals: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.target == k && r.scenario == scenario)
            .filter_map(|r| m.of(r))
            .collect();
        Spread::of(&vals)
    }

    pub fn median(&self, k: Kind, scenario: &str, m: Metric) -> Option<f64> {
        self.spread(k, scenario, m).map(|s| s.median)
    }

    fn mem_spread(&self, k: Kind, f: impl Fn(&TargetRecord) -> Vec<f64>) -> Option<Spread> {
        self.targets
            .iter()
            .find(|t| t.target == k)
            .and_then(|t| Spread::of(&f(t)))
    }

    pub fn idle_rss_mib(&self, k: Kind) -> Option<Spread> {
        self.mem_spread(k, |t| {
            t.idle.iter().map(|m| m.rss_kib as f64 / 1024.0).collect()
        })
    }

    pub fn peak_rss_mib(&self, k: Kind) -> Option<Spread> {
        self.mem_spread(k, |t| {
            t.after.iter().map(|m| m.hwm_kib as f64 / 1024.0).collect()
        })
    }

    /// Median latency curve (percentile, µs) of (target, scenario), point by point.
    pub fn curve(&self, k: Kind, scenario: &str) -> Vec<(f64, f64)> {
        let runs: Vec<&RunRecord> = self
            .runs
            .iter()
            .filter(|r| r.target == k && r.scenario == scenario && r.latency.count > 0)
            .collect();
        CURVE
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| {
                let vals: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.latency.curve.get(i).map(|c| c.1))
                    .collect();
                Spread::of(&vals).map(|s| (p, s.median))
            })
            .collect()
    }
}

/// `12345.6` → `12,346`; small values keep significant digits.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.4}")
    }
}

fn cell(s: Option<Spread>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n > 1 => format!("{} ±{:.0}%", fmt_num(s.median), s.spread_pct()),
        Some(s) => fmt_num(s.median),
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

/// The headline rows: (label, scenario, metric).
fn headline_rows(rep: &Report) -> Vec<(String, String, Metric)> {
    let mut rows = Vec::new();
    for sc in rep.scenarios() {
        let metrics: &[Metric] = if sc.ends_with("-max") {
            &[Metric::Rps, Metric::Cpu1k]
        } else if sc.starts_with("tcp-bulk") {
            &[Metric::Gbps, Metric::Cpu1k]
        } else {
            &[
                Metric::P50,
                Metric::P90,
                Metric::P99,
                Metric::P999,
                Metric::Cpu1k,
            ]
        };
        for &m in metrics {
            let label = match m {
                Metric::Cpu1k if sc.starts_with("tcp-bulk") => {
                    format!("{sc}: CPU s / 1k transfers (1 MiB)")
                }
                // A gRPC stream scenario counts message round trips, not calls.
                Metric::Rps if sc.starts_with("grpc-stream") => format!("{sc}: messages/s"),
                Metric::Cpu1k if sc.starts_with("grpc-stream") => {
                    format!("{sc}: CPU s / 1k messages")
                }
                _ => format!("{sc}: {}", metric_name(m)),
            };
            rows.push((label, sc.clone(), m));
        }
    }
    rows
}

fn metric_name(m: Metric) -> String {
    match m {
        Metric::P50 => "p50 µs".into(),
        Metric::P90 => "p90 µs".into(),
        Metric::P99 => "p99 µs".into(),
        Metric::P999 => "p99.9 µs".into(),
        _ => m.unit().into(),
    }
}

/// What must be built before `command` runs: the Sluice binary it names with `--sluice`.
fn built(command: &str) -> String {
    let mut args = command.split_whitespace();
    let sluice = args.by_ref().find(|a| *a == "--sluice").and(args.next());
    match sluice {
        Some(p) if p.contains("target/pgo/") => format!(
            "`bench/pgo.sh` has built `{p}` (Sluice with profile-guided optimisation) and `cargo build --release -p bench` the bench"
        ),
        Some(p) => format!("`{p}` exists and `cargo build --release -p bench` has built the bench"),
        None => {
            "`cargo build --release -p proxy -p bench` has built `target/release/sluice`".into()
        }
    }
}

/// The markdown report. Its first line is the command that reproduces it.
pub fn markdown(rep: &Report) -> String {
    let kinds = rep.kinds();
    let mut s = String::new();
    let _ = writeln!(s, "`{}`\n", rep.command);
    let _ = writeln!(s, "# Sluice benchmark report\n");
    let _ = writeln!(
        s,
        "The command above reproduces this report once {} and the peers are installed (see [bench/README.md](../../bench/README.md)). What the profiler showed: [profile.md](profile.md).\n",
        built(&rep.command)
    );
    let _ = writeln!(
        s,
        "Generated {} on {}. {}\n",
        rep.date, rep.machine, rep.settings
    );
    s.push_str("Versions: ");
    let v: Vec<String> = rep
        .targets
        .iter()
        .map(|t| format!("{} = `{}`", t.target.name(), t.version))
        .collect();
    s.push_str(&v.join(", "));
    s.push_str(".\n\nCells are medians over the repetitions with ±half the range in percent. Ratios are Sluice's median divided by the other's; for req/s and GB/s higher is better, for latency, CPU and memory lower is better. The direct connection has no proxy, so its CPU column is empty. `sluice-l4` is Sluice forwarding the same connections as opaque TCP, with no HTTP work: the floor of a proxy that reads and writes these sockets, so `sluice / sluice-l4` is what Sluice's HTTP handling costs.\n\n");

    if let Some(w) = contention_warning(rep) {
        let _ = writeln!(s, "**{w}**\n");
    }
    let peers: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Sluice)
        .collect();
    let _ = write!(
        s,
        "## Sluice against the direct connection and the peers\n\n| figure |"
    );
    for k in &kinds {
        let _ = write!(s, " {} |", k.name());
    }
    for p in &peers {
        let _ = write!(s, " sluice / {} |", p.name());
    }
    s.push_str("\n|---|");
    for _ in 0..kinds.len() + peers.len() {
        s.push_str("---:|");
    }
    s.push('\n');
    let has_sluice = kinds.contains(&Kind::Sluice);
    for (label, sc, m) in headline_rows(rep) {
        if kinds.iter().all(|k| rep.spread(*k, &sc, m).is_none()) {
            continue;
        }
        let _ = write!(s, "| {label} |");
        for k in &kinds {
            let _ = write!(s, " {} |", cell(rep.spread(*k, &sc, m)));
        }
        for p in &peers {
            let r = if has_sluice {
                ratio(rep.median(Kind::Sluice, &sc, m), rep.median(*p, &sc, m))
            } else {
                None
            };
            let _ = write!(s, " {} |", ratio_cell(r));
        }
        s.push('\n');
    }
    // Added latency over the direct connection.
    for sc in rep
        .scenarios()
        .iter()
        .filter(|sc| !sc.ends_with("-max") && !sc.starts_with("tcp-bulk"))
    {
        let direct = rep.median(Kind::Direct, sc, Metric::P50);
        if direct.is_none() {
            continue;
        }
        let _ = write!(s, "| {sc}: added p50 µs (minus direct) |");
        for k in &kinds {
            let v = rep
                .median(*k, sc, Metric::P50)
                .zip(direct)
                .map(|(a, b)| a - b);
            let _ = write!(s, " {} |", v.map(fmt_num).unwrap_or_else(|| "-".into()));
        }
        for p in &peers {
            let ours = rep
                .median(Kind::Sluice, sc, Metric::P50)
                .zip(direct)
                .map(|(a, b)| a - b);
            let theirs = rep
                .median(*p, sc, Metric::P50)
                .zip(direct)
                .map(|(a, b)| a - b);
            let r = if *p == Kind::Direct {
                None
            } else {
                ratio(ours, theirs)
            };
            let _ = write!(s, " {} |", ratio_cell(r));
        }
        s.push('\n');
    }
    for (label, f) in [
        (
            "idle RSS MiB",
            Report::idle_rss_mib as fn(&Report, Kind) -> Option<Spread>,
        ),
        ("peak RSS MiB (VmHWM)", Report::peak_rss_mib),
    ] {
        let _ = write!(s, "| {label} |");
        for k in &kinds {
            let v = if *k == Kind::Direct { None } else { f(rep, *k) };
            let _ = write!(s, " {} |", cell(v));
        }
        for p in &peers {
            let r = ratio(
                f(rep, Kind::Sluice).map(|x| x.median),
                f(rep, *p).map(|x| x.median),
            );
            let _ = write!(
                s,
                " {} |",
                ratio_cell(if *p == Kind::Direct { None } else { r })
            );
        }
        s.push('\n');
    }

    s.push_str("\n![latency percentiles](latency.svg)\n\n## Every scenario\n\n");
    s.push_str("The last column is how busy the proxy's core was: the proxy's own share / the core's total. A total well above the proxy's share means other work on the machine took that core too.\n\n");
    s.push_str("| scenario | target | req/s | errors | p50 µs | p90 µs | p99 µs | p99.9 µs | CPU s / 1k | GB/s | req/s ÷ direct | proxy core % (proxy / all) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for sc in rep.scenarios() {
        for k in &kinds {
            let errors: u64 = rep
                .runs
                .iter()
                .filter(|r| r.target == *k && r.scenario == sc)
                .map(|r| r.errors)
                .sum();
            if rep.spread(*k, &sc, Metric::Rps).is_none() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {sc} | {} | {} | {errors} | {} | {} | {} | {} | {} | {} | {} | {} |",
                k.name(),
                cell(rep.spread(*k, &sc, Metric::Rps)),
                cell(rep.spread(*k, &sc, Metric::P50)),
                cell(rep.spread(*k, &sc, Metric::P90)),
                cell(rep.spread(*k, &sc, Metric::P99)),
                cell(rep.spread(*k, &sc, Metric::P999)),
                cell(rep.spread(*k, &sc, Metric::Cpu1k)),
                cell(rep.spread(*k, &sc, Metric::Gbps)),
                ratio_cell(ratio(
                    rep.median(*k, &sc, Metric::Rps),
                    rep.median(Kind::Direct, &sc, Metric::Rps)
                )),
                match (
                    rep.median(*k, &sc, Metric::ProxyPct),
                    rep.median(*k, &sc, Metric::CorePct)
                ) {
                    (Some(p), Some(c)) => format!("{p:.0} / {c:.0}"),
                    (None, Some(c)) => format!("- / {c:.0}"),
                    _ => "-".into(),
                },
            );
        }
    }

    if !rep.crosschecks.is_empty() {
        s.push_str("\n## Cross-check with external load generators (one run each)\n\n| tool | scenario | target | req/s |\n|---|---|---|---:|\n");
        for c in &rep.crosschecks {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                c.tool,
                c.scenario,
                c.target.name(),
                fmt_num(c.rps)
            );
        }
    }
    if !rep.scale.is_empty() {
        s.push_str("\n## Configuration scale (Sluice start-up to /ready)\n\nN services = N clusters, N virtual hosts in one bound HTTP listener's route, and N `bind_to_port: false` TCP listeners (the shape of an Istio sidecar's outbound config).\n\n| services | bootstrap size | start to /ready s | RSS MiB | peak RSS MiB | routed |\n|---:|---:|---:|---:|---:|---|\n");
        for r in &rep.scale {
            let _ = writeln!(
                s,
                "| {} | {} KiB | {} | {} | {} | {} |",
                fmt_num(r.services as f64),
                fmt_num(r.bootstrap_bytes as f64 / 1024.0),
                fmt_num(r.ready_s),
                fmt_num(r.rss_kib as f64 / 1024.0),
                fmt_num(r.hwm_kib as f64 / 1024.0),
                if r.routed { "yes" } else { "NO" }
            );
        }
    }
    if !rep.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &rep.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// A warning when, during the closed-loop runs, the proxies' core was mostly busy with other
/// work: then throughput and latency say more about the machine than about the proxies.
pub fn contention_warning(rep: &Report) -> Option<String> {
    let others: Vec<f64> = rep
        .runs
        .iter()
        .filter(|r| r.target != Kind::Direct && r.scenario.ends_with("-max"))
        .filter_map(|r| Some(r.core_busy_pct? - r.proxy_cpu_pct?))
        .collect();
    let med = Spread::of(&others)?.median;
    (med > 25.0).then(|| {
        format!(
            "Other processes used about {med:.0}% of the proxies' core during the max-throughput runs, so req/s and latency here reflect a shared machine; CPU seconds per request (measured per process) and memory are the comparable figures. Re-run on an idle machine for throughput."
        )
    })
}

/// Each target's line colour in the plot (a new target must pick one).
fn color(k: Kind) -> &'static str {
    match k {
        Kind::Direct => "#777777",
        Kind::Sluice => "#d62728",
        Kind::SluiceL4 => "#ff9896",
        Kind::Nginx => "#2ca02c",
        Kind::Haproxy => "#1f77b4",
    }
}

/// Latency percentile curves, one panel per open-loop scenario, log-scale latency axis.
pub fn svg(rep: &Report) -> String {
    let scen: Vec<String> = rep
        .scenarios()
        .into_iter()
        .filter(|sc| {
            rep.runs
                .iter()
                .any(|r| &r.scenario == sc && r.latency.count > 0)
                && !sc.ends_with("-max")
                && !sc.starts_with("tcp-bulk")
        })
        .collect();
    let (pw, ph) = (480.0, 320.0);
    let cols = 2usize;
    let rows = scen.len().div_ceil(cols).max(1);
    let (w, h) = (pw * cols as f64, ph * rows as f64 + 40.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // Legend.
    let mut lx = 60.0;
    for k in rep.kinds() {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="12" width="14" height="4" fill="{}"/><text x="{}" y="18">{}</text>"#,
            color(k),
            lx + 18.0,
            k.name()
        );
        lx += 90.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18">latency by percentile (median of runs), open-loop</text>"#,
        lx + 10.0
    );
    for (i, sc) in scen.iter().enumerate() {
        let (ox, oy) = ((i % cols) as f64 * pw, (i / cols) as f64 * ph + 40.0);
        let (l, r, t, b) = (ox + 60.0, ox + pw - 20.0, oy + 24.0, oy + ph - 40.0);
        let curves: Vec<(Kind, Vec<(f64, f64)>)> = rep
            .kinds()
            .into_iter()
            .map(|k| (k, rep.curve(k, sc)))
            .collect();
        let all: Vec<f64> = curves
            .iter()
            .flat_map(|c| c.1.iter().map(|p| p.1))
            .collect();
        let lo = all.iter().cloned().fold(f64::INFINITY, f64::min).max(1.0);
        let hi = all.iter().cloned().fold(0.0, f64::max).max(lo * 10.0);
        let (dlo, dhi) = (lo.log10().floor(), hi.log10().ceil());
        let y = |us: f64| b - (us.max(1.0).log10() - dlo) / (dhi - dlo) * (b - t);
        let x = |idx: usize| l + idx as f64 / (CURVE.len() - 1) as f64 * (r - l);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{sc}</text>"#,
            l,
            oy + 14.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            r - l,
            b - t
        );
        let mut d = dlo as i32;
        while d as f64 <= dhi {
            let yy = y(10f64.powi(d));
            let label = match d {
                0 => "1µs".to_string(),
                1 => "10µs".into(),
                2 => "100µs".into(),
                3 => "1ms".into(),
                4 => "10ms".into(),
                5 => "100ms".into(),
                6 => "1s".into(),
                _ => format!("1e{d}µs"),
            };
            let _ = writeln!(
                s,
                r##"<line x1="{l}" x2="{r}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
                l - 4.0,
                yy + 4.0
            );
            d += 1;
        }
        for (idx, p) in CURVE.iter().enumerate() {
            let label = if *p >= 100.0 {
                "max".to_string()
            } else {
                format!("p{p}")
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
                x(idx),
                b + 14.0
            );
        }
        for (k, c) in &curves {
            if c.is_empty() {
                continue;
            }
            let pts: Vec<String> = c
                .iter()
                .enumerate()
                .map(|(idx, (_, us))| format!("{:.1},{:.1}", x(idx), y(*us)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                pts.join(" "),
                color(*k)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(k: Kind, sc: &str, rep: usize, rps: f64, p50: f64, cpu: Option<f64>) -> RunRecord {
        RunRecord {
            target: k,
            scenario: sc.into(),
            rep,
            requests: 1000,
            errors: 0,
            elapsed_s: 1.0,
            rps,
            gbps: None,
            latency: Latency {
                count: 10,
                p50_us: p50,
                p90_us: p50 * 2.0,
                p99_us: p50 * 4.0,
                p999_us: p50 * 8.0,
                max_us: p50 * 9.0,
                mean_us: p50,
                curve: CURVE
                    .iter()
                    .map(|&p| (p, p50 * (1.0 + p / 100.0)))
                    .collect(),
            },
            proxy_cpu_s: cpu,
            cpu_s_per_1k: cpu,
            proxy_cpu_pct: cpu.map(|c| c * 100.0),
            core_busy_pct: Some(90.0),
        }
    }

    fn sample() -> Report {
        let mut rep = Report {
            command: "cargo run -p bench --release -- run".into(),
            ..Default::default()
        };
        for k in [Kind::Direct, Kind::Sluice, Kind::Nginx] {
            rep.targets.push(TargetRecord {
                target: k,
                version: "v".into(),
                idle: vec![Mem {
                    rss_kib: 10240,
                    hwm_kib: 10240,
                    pss_kib: 0,
                }],
                after: vec![Mem {
                    rss_kib: 20480,
                    hwm_kib: 20480,
                    pss_kib: 0,
                }],
            });
        }
        for rep_i in 0..3 {
            let f = 1.0 + rep_i as f64 * 0.1;
            rep.runs.push(run(
                Kind::Direct,
                "h1-small-max",
                rep_i,
                50_000.0 * f,
                100.0,
                None,
            ));
            rep.runs.push(run(
                Kind::Sluice,
                "h1-small-max",
                rep_i,
                40_000.0 * f,
                200.0,
                Some(0.02 * f),
            ));
            rep.runs.push(run(
                Kind::Nginx,
                "h1-small-max",
                rep_i,
                20_000.0 * f,
                400.0,
                Some(0.04 * f),
            ));
            rep.runs
                .push(run(Kind::Direct, "h1-small-1k", rep_i, 1000.0, 50.0, None));
            rep.runs.push(run(
                Kind::Sluice,
                "h1-small-1k",
                rep_i,
                1000.0,
                90.0,
                Some(0.03),
            ));
            rep.runs.push(run(
                Kind::Nginx,
                "h1-small-1k",
                rep_i,
                1000.0,
                130.0,
                Some(0.03),
            ));
        }
        rep
    }

    #[test]
    fn medians_and_ratios_in_the_markdown() {
        let rep = sample();
        assert_eq!(
            rep.median(Kind::Sluice, "h1-small-max", Metric::Rps),
            Some(44_000.0)
        );
        let md = markdown(&rep);
        assert!(md.starts_with("`cargo run -p bench --release -- run`\n"));
        assert!(md.contains("once `cargo build --release -p proxy -p bench` has built"));
        // Sluice 44k vs nginx 22k → 2.00x; vs direct 55k → 0.80x.
        let row = md
            .lines()
            .find(|l| l.starts_with("| h1-small-max: req/s"))
            .unwrap();
        assert!(row.contains("2.00x"), "{row}");
        assert!(row.contains("0.80x"), "{row}");
        assert!(row.contains("44,000 ±9%"), "{row}");
        // Added p50: sluice 40 µs, nginx 80 µs → 0.50x.
        let row = md
            .lines()
            .find(|l| l.contains("h1-small-1k: added p50"))
            .unwrap();
        assert!(row.contains("| 40.0 |") && row.contains("0.50x"), "{row}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| idle RSS MiB"))
            .unwrap();
        assert!(row.contains("| - |") && row.contains("1.00x"), "{row}");
    }

    #[test]
    fn warns_when_the_proxy_core_was_shared() {
        let mut rep = sample();
        assert!(contention_warning(&rep).is_some()); // sample: core 90%, proxy ≤ 5%
        for r in &mut rep.runs {
            r.core_busy_pct = r.proxy_cpu_pct.map(|p| p + 5.0);
        }
        assert!(contention_warning(&rep).is_none());
        assert!(!markdown(&rep).contains("Other processes used"));
    }

    #[test]
    fn json_round_trips() {
        let rep = sample();
        let j = serde_json::to_string(&rep).unwrap();
        let back: Report = serde_json::from_str(&j).unwrap();
        // Floats may differ in the last bit; what is reported must not.
        assert_eq!(back.runs.len(), rep.runs.len());
        assert_eq!(markdown(&back), markdown(&rep));
        assert_eq!(svg(&back), svg(&rep));
    }

    #[test]
    fn svg_has_one_panel_per_open_loop_scenario() {
        let svg = svg(&sample());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">h1-small-1k<"));
        assert!(!svg.contains(">h1-small-max<"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(1234567.8), "1,234,568");
        assert_eq!(fmt_num(999.0), "999");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.0213), "0.0213");
        assert_eq!(fmt_num(0.5), "0.50");
        assert_eq!(fmt_num(f64::NAN), "-");
    }

    #[test]
    fn the_report_says_which_build_its_command_needs() {
        let pgo = built(
            "cargo run -p bench --release -- run --sluice target/pgo/release/sluice --reps 3",
        );
        assert!(
            pgo.starts_with("`bench/pgo.sh` has built `target/pgo/release/sluice`"),
            "{pgo}"
        );
        let other = built("cargo run -p bench --release -- run --sluice /tmp/s");
        assert!(other.starts_with("`/tmp/s` exists"), "{other}");
        assert!(
            built("cargo run -p bench --release -- run --reps 3").contains("target/release/sluice")
        );
        // `--sluice` as the last word names no binary.
        assert!(built("x --sluice").contains("target/release/sluice"));
    }
}
