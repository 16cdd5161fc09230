//! `bench cost`: what one request costs a proxy, in figures that other work on the machine does
//! not move much: system calls, context switches and CPU time per request counted with
//! `perf stat` software events and syscall tracepoints on the proxy process, and (with
//! `--callgrind`) user-space instructions per request counted by valgrind's callgrind between a
//! zero and a dump of its counters. The VM this was written on has no PMU, so `perf stat -e
//! instructions` is not available; callgrind counts instructions exactly (user space only).
//!
//! Each target is started as the bench starts it (pinned to CPU 0; client and upstream on
//! CPU 1), connections are opened and warmed, then the counters cover a closed-loop window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::load::{self, Mode, Proto, Scenario};
use crate::targets::{self, Bins, Kind};
use crate::upstream::Upstream;

/// The syscall tracepoints counted one by one (the total is `raw_syscalls:sys_enter`).
const SYSCALLS: &[&str] = &[
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "sched_yield",
];

/// What one (target, scenario) window measured.
#[derive(Debug, Default)]
pub struct Cost {
    pub requests: u64,
    /// Per request.
    pub per_req: BTreeMap<String, f64>,
}

/// The request shapes the cost table covers, with `inflight` requests in flight (closed
/// loop), or at `rate` requests/s in total over `inflight` connections (open loop).
pub fn scenarios(inflight: usize, rate: Option<u64>) -> Vec<Scenario> {
    let mode = rate.map_or(Mode::Max, Mode::Rate);
    let h1 = |name: &str, path: &str| Scenario {
        name: name.into(),
        proto: Proto::H1,
        path: path.into(),
        mode,
        conns: inflight,
        depth: 1,
    };
    let (conns, depth) = if rate.is_some() {
        (inflight, 1)
    } else if inflight >= 4 {
        (inflight / 4, 4)
    } else {
        (1, inflight)
    };
    vec![
        h1("h1-small", "/small"),
        h1("h1-16k", "/16k"),
        Scenario {
            name: "h2-small".into(),
            proto: Proto::H2,
            path: "/small".into(),
            mode,
            conns,
            depth,
        },
        // A message round trip on long-lived bidirectional gRPC streams.
        Scenario {
            name: "grpc-stream".into(),
            proto: Proto::GrpcStream,
            path: "/grpc-stream".into(),
            mode,
            conns,
            depth,
        },
        // A TCP proxy's small-message cost: one 64-byte echo round trip per "request".
        Scenario {
            name: "tcp-echo".into(),
            proto: Proto::TcpEcho,
            path: String::new(),
            mode,
            conns: inflight,
            depth: 1,
        },
    ]
}

fn perf_events() -> String {
    let mut ev = vec![
        "task-clock".to_string(),
        "context-switches".to_string(),
        "raw_syscalls:sys_enter".to_string(),
    ];
    ev.extend(SYSCALLS.iter().map(|s| format!("syscalls:sys_enter_{s}")));
    ev.join(",")
}

/// Parses `perf stat -x,` output: `value,unit,event,...` per line.
pub fn parse_perf_csv(out: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(v) = f[0].trim().parse::<f64>() else {
            continue;
        };
        let name = f[2]
            .trim()
            .trim_start_matches("syscalls:sys_enter_")
            .trim_start_matches("raw_syscalls:sys_enter")
            .to_string();
        let name = if name.is_empty() {
            "syscalls".to_string()
        } else {
            name
        };
        m.insert(name, v);
    }
    m
}

/// The `summary:` (or `totals:`) line of a callgrind output file.
pub fn parse_callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn interrupt(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
}

/// Measures one scenario against a started target.
pub fn measure(
    running: &targets::Running,
    sc: &Scenario,
    dur: Duration,
    callgrind: Option<&Path>,
) -> anyhow::Result<Cost> {
    let pid = running.pid().expect("a proxy process");
    let mut perf: Option<Child> = None;
    let mut dumps_before = 0usize;
    let mut window = |start: bool| {
        if let Some(dir) = callgrind {
            let arg = if start { "-z" } else { "-d" };
            if start {
                dumps_before = callgrind_files(dir, pid).len();
            }
            let _ = Command::new("callgrind_control")
                .arg(arg)
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        } else if start {
            perf = Command::new("perf")
                .args(["stat", "-x,", "-e", &perf_events(), "-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .ok();
            // perf needs a moment to attach.
            std::thread::sleep(Duration::from_millis(200));
        } else if let Some(p) = perf.as_mut() {
            interrupt(p);
        }
    };
    let out = load::run(running.addr(sc.proto), sc, dur, &mut window)?;
    anyhow::ensure!(out.requests > 0, "no request completed");
    let n = out.requests as f64;
    let mut cost = Cost {
        requests: out.requests,
        ..Default::default()
    };
    if let Some(dir) = callgrind {
        let files = callgrind_files(dir, pid);
        anyhow::ensure!(files.len() > dumps_before, "callgrind wrote no dump");
        let last = files.last().unwrap();
        let ir = parse_callgrind_total(&std::fs::read_to_string(last)?)
            .ok_or_else(|| anyhow::anyhow!("no total in {}", last.display()))?;
        cost.per_req.insert("instructions:u".into(), ir as f64 / n);
        eprintln!("callgrind dump: {}", last.display());
        let atomics = crate::atomics::count(&std::fs::read_to_string(last)?, cached_lock_sites);
        cost.per_req
            .insert("atomics".into(), atomics.total as f64 / n);
        let top: Vec<String> = atomics
            .by_function
            .iter()
            .take(15)
            .map(|(f, c)| format!("  {:6.2}  {f}", *c as f64 / n))
            .collect();
        eprintln!("atomics per request by function:\n{}", top.join("\n"));
    } else if let Some(p) = perf.take() {
        let o = p.wait_with_output()?;
        for (k, v) in parse_perf_csv(&String::from_utf8_lossy(&o.stderr)) {
            // task-clock is in msec: report µs per request.
            let v = if k == "task-clock" { v * 1000.0 } else { v };
            let k = if k == "task-clock" {
                "cpu-µs".to_string()
            } else {
                k
            };
            cost.per_req.insert(k, v / n);
        }
    }
    Ok(cost)
}

/// [`crate::atomics::lock_sites`] of an object, read once per run (`None` when the object
/// cannot be read: valgrind's own, or gone).
fn cached_lock_sites(object: &str) -> Option<std::collections::HashSet<u64>> {
    type Cache = std::collections::HashMap<String, Option<std::collections::HashSet<u64>>>;
    static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    let mut cache = CACHE.lock().unwrap();
    cache
        .get_or_insert_with(Default::default)
        .entry(object.to_string())
        .or_insert_with(|| {
            let path = Path::new(object);
            path.is_file()
                .then(|| crate::atomics::lock_sites(path).ok())
                .flatten()
        })
        .clone()
}

fn callgrind_files(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("callgrind.out.{pid}");
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rest = name.strip_prefix(&prefix)?;
                    let n = rest.strip_prefix('.').map_or(Some(0), |r| r.parse().ok())?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// One proxy measured by [`run`]: a kind, the binaries it runs from, and its name in the
/// table (`sluice-base` for a baseline build of Sluice).
pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub bins: Bins,
}

/// What to measure: which scenarios (all when empty), how many times, how.
pub struct Plan {
    pub scenarios: Vec<String>,
    pub reps: usize,
    pub inflight: usize,
    /// Open loop at this many requests/s instead of the closed loop.
    pub rate: Option<u64>,
    pub dur: Duration,
    pub callgrind: bool,
}

/// Runs every target × scenario `plan.reps` times, the repetitions interleaved (every target
/// once, then again) so that a drift of the machine touches them alike, and prints one table
/// of medians.
pub fn run(
    targets: &[Target],
    up: &Upstream,
    dir: &Path,
    cpu: Option<usize>,
    plan: &Plan,
) -> anyhow::Result<String> {
    let mut rows: Vec<(String, String, Vec<Cost>)> = Vec::new();
    let cg_dir = dir.join("callgrind");
    if plan.callgrind {
        std::fs::create_dir_all(&cg_dir)?;
    }
    let scenarios: Vec<Scenario> = scenarios(plan.inflight, plan.rate)
        .into_iter()
        .filter(|s| plan.scenarios.is_empty() || plan.scenarios.contains(&s.name))
        .collect();
    anyhow::ensure!(!scenarios.is_empty(), "no such scenario");
    for rep in 0..plan.reps.max(1) {
        for t in targets {
            for sc in &scenarios {
                let wrapper: Vec<String> = if plan.callgrind {
                    vec![
                        "valgrind".into(),
                        "--tool=callgrind".into(),
                        // Per-instruction counts, for the atomics count.
                        "--dump-instr=yes".into(),
                        format!("--callgrind-out-file={}/callgrind.out.%p", cg_dir.display()),
                    ]
                } else {
                    vec![]
                };
                // A fresh process per scenario, so one scenario's connections do not linger.
                let running = targets::start_wrapped(t.kind, &t.bins, up, dir, cpu, &wrapper)?;
                let c = measure(
                    &running,
                    sc,
                    plan.dur,
                    plan.callgrind.then_some(cg_dir.as_path()),
                )?;
                eprintln!(
                    "[{}] {} {}: {} requests {:?}",
                    rep + 1,
                    t.name,
                    sc.name,
                    c.requests,
                    c.per_req
                );
                match rows.iter_mut().find(|r| r.0 == t.name && r.1 == sc.name) {
                    Some(r) => r.2.push(c),
                    None => rows.push((t.name.clone(), sc.name.clone(), vec![c])),
                }
            }
        }
    }
    let key = if plan.callgrind {
        "instructions:u"
    } else {
        "cpu-µs"
    };
    let pairs = paired(&rows, key);
    let rows: Vec<(String, String, Cost, f64)> = rows
        .into_iter()
        .map(|(t, sc, runs)| {
            let (c, spread) = median(&runs, key);
            (t, sc, c, spread)
        })
        .collect();
    let mut out = table(&rows, plan, plan.callgrind, plan.reps);
    if !pairs.is_empty() {
        out.push_str(&format!(
            "\n{key} of the first target over each other one, paired by round (the runs \
             measured back to back): median (lowest–highest)\n\n| scenario | ratio | median | range |\n|---|---|---:|---:|\n"
        ));
        for (sc, a, b, m, lo, hi) in pairs {
            out.push_str(&format!(
                "| {sc} | {a} / {b} | {m:.3} | {lo:.3}–{hi:.3} |\n"
            ));
        }
    }
    Ok(out)
}

/// For each scenario, the first target's `key` over each other target's, round by round:
/// pairs measured back to back share the machine's state, so their ratio is steadier than
/// the ratio of two medians. `(scenario, first, other, median, lowest, highest)`; empty with
/// one round.
fn paired(
    rows: &[(String, String, Vec<Cost>)],
    key: &str,
) -> Vec<(String, String, String, f64, f64, f64)> {
    let mut out = Vec::new();
    let mut scenarios: Vec<&String> = Vec::new();
    for (_, sc, _) in rows {
        if !scenarios.contains(&sc) {
            scenarios.push(sc);
        }
    }
    for sc in scenarios {
        let of: Vec<&(String, String, Vec<Cost>)> = rows.iter().filter(|r| &r.1 == sc).collect();
        let Some((first, others)) = of.split_first() else {
            continue;
        };
        for other in others {
            let mut ratios: Vec<f64> = first
                .2
                .iter()
                .zip(&other.2)
                .filter_map(|(a, b)| {
                    let (a, b) = (a.per_req.get(key)?, b.per_req.get(key)?);
                    (*b > 0.0).then(|| a / b)
                })
                .collect();
            if ratios.len() < 2 {
                continue;
            }
            ratios.sort_by(|a, b| a.total_cmp(b));
            let n = ratios.len();
            let m = if n % 2 == 1 {
                ratios[n / 2]
            } else {
                (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
            };
            out.push((
                sc.clone(),
                first.0.clone(),
                other.0.clone(),
                m,
                ratios[0],
                ratios[n - 1],
            ));
        }
    }
    out
}

/// Each figure's median over the runs, and the spread of `key`: half the range, relative to
/// the median.
fn median(runs: &[Cost], key: &str) -> (Cost, f64) {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let mut out = Cost {
        requests: mid(runs.iter().map(|c| c.requests as f64).collect()) as u64,
        ..Default::default()
    };
    let keys: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|c| c.per_req.keys()).collect();
    for k in keys {
        let v: Vec<f64> = runs
            .iter()
            .map(|c| c.per_req.get(k).copied().unwrap_or(0.0))
            .collect();
        out.per_req.insert(k.clone(), mid(v));
    }
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|c| c.per_req.get(key).copied())
        .collect();
    let spread = match (
        v.iter().copied().reduce(f64::min),
        v.iter().copied().reduce(f64::max),
        out.per_req.get(key),
    ) {
        (Some(lo), Some(hi), Some(m)) if *m > 0.0 => (hi - lo) / 2.0 / m,
        _ => 0.0,
    };
    (out, spread)
}

fn table(
    rows: &[(String, String, Cost, f64)],
    plan: &Plan,
    callgrind: bool,
    reps: usize,
) -> String {
    let cols: Vec<&str> = if callgrind {
        vec!["instructions:u", "atomics"]
    } else {
        let mut c = vec!["cpu-µs", "syscalls", "context-switches"];
        c.extend(SYSCALLS.iter().copied());
        c
    };
    // Only the columns some row has a non-zero value for.
    let cols: Vec<&str> = cols
        .into_iter()
        .filter(|c| {
            rows.iter()
                .any(|(_, _, r, _)| r.per_req.get(*c).is_some_and(|v| *v > 0.0))
        })
        .collect();
    let mut s = match plan.rate {
        None => format!("per request, closed loop, {} in flight", plan.inflight),
        Some(r) => format!(
            "per request, open loop at {r} requests/s over {} connections",
            plan.inflight
        ),
    };
    if reps > 1 {
        s.push_str(&format!(
            "; medians of {reps} interleaved runs, ± half their range"
        ));
    }
    s.push_str("\n\n| scenario | target | requests |");
    for c in &cols {
        s.push_str(&format!(" {c} |"));
    }
    s.push_str("\n|---|---|---:|");
    for _ in &cols {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut sorted: Vec<&(String, String, Cost, f64)> = rows.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    for (t, sc, c, spread) in sorted {
        s.push_str(&format!("| {sc} | {t} | {} |", c.requests));
        for (i, col) in cols.iter().enumerate() {
            let v = c.per_req.get(*col).copied().unwrap_or(0.0);
            let mut cell = if v >= 1000.0 {
                format!("{v:.0}")
            } else if v >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            };
            if i == 0 && reps > 1 {
                cell.push_str(&format!(" ±{:.0}%", spread * 100.0));
            }
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_and_callgrind() {
        let m = parse_perf_csv(
            "812.5,msec,task-clock,812500000,100.00,,\n120,,context-switches,1,100.00,,\n\
             4000,,raw_syscalls:sys_enter,1,100.00,,\n2000,,syscalls:sys_enter_writev,1,100.00,,\n",
        );
        assert_eq!(m["task-clock"], 812.5);
        assert_eq!(m["syscalls"], 4000.0);
        assert_eq!(m["writev"], 2000.0);
        assert_eq!(m["context-switches"], 120.0);
        assert_eq!(
            parse_callgrind_total("events: Ir\nsummary: 123456\n"),
            Some(123456)
        );
        assert_eq!(parse_callgrind_total("totals: 99\n"), Some(99));
    }

    #[test]
    fn ratios_are_paired_by_round() {
        let cost = |v: f64| Cost {
            requests: 1,
            per_req: [("cpu-µs".to_string(), v)].into_iter().collect(),
        };
        let rows = vec![
            (
                "a".to_string(),
                "s".to_string(),
                vec![cost(10.0), cost(20.0), cost(9.0)],
            ),
            (
                "b".to_string(),
                "s".to_string(),
                vec![cost(8.0), cost(25.0), cost(10.0)],
            ),
        ];
        let p = paired(&rows, "cpu-µs");
        assert_eq!(p.len(), 1);
        let (sc, a, b, m, lo, hi) = &p[0];
        assert_eq!((sc.as_str(), a.as_str(), b.as_str()), ("s", "a", "b"));
        // Round by round: 1.25, 0.8, 0.9. The ratio of the medians would be 10/10 = 1.
        assert_eq!((*m, *lo, *hi), (0.9, 0.8, 1.25));
        assert!(paired(&rows[..1], "cpu-µs").is_empty());
    }
}
