//! `bench`: Sluice against a direct connection, nginx and haproxy, in one run on loopback.
//! See bench/README.md.

mod atomics;
mod conns;
mod cost;
mod hist;
mod hpack;
mod load;
mod report;
mod routes;
mod scale;
mod stats;
mod sys;
mod targets;
mod upstream;
mod xds_scale;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use report::{Crosscheck, Report, RunRecord, TargetRecord};
use targets::{Bins, Kind};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Sluice vs direct vs nginx vs haproxy, on loopback"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario against every target and write the report (the default).
    Run(RunArgs),
    /// Only the configuration-scale measurement.
    ConfigScale(ScaleArgs),
    /// Time and memory for a Sluice process to apply N clusters with endpoints and a
    /// V-virtual-host route table pushed over xDS; writes xds-scale.md.
    XdsScale(XdsScaleArgs),
    /// Route-selection time on a 10-route table against a 10,000-route table (no network).
    RouteSelect {
        #[arg(long, default_value_os_t = default_out())]
        out: PathBuf,
    },
    /// HPACK time per proxied h2c exchange with Sluice's own codec (no network): two header
    /// blocks decoded and two encoded, as the proxy does per request.
    Hpack {
        #[arg(long, default_value_t = 200_000)]
        exchanges: usize,
    },
    /// Cost per request (CPU, syscalls, context switches; with --callgrind, user-space
    /// instructions and atomics) for h1 small, h1 16 KiB, h2c small, a gRPC stream message and
    /// a TCP echo, through each target.
    Cost(CostArgs),
    /// Resident memory per open idle connection (HTTP/1.1, h2c, TCP), through each target.
    ConnMemory(ConnMemoryArgs),
    /// Rewrite report.md and latency.svg from an existing results.json.
    Report {
        #[arg(long, default_value_os_t = default_out())]
        out: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The Sluice binary (default: `sluice` next to this binary, i.e. the same target dir).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Output directory for results.json, report.md, latency.svg.
    #[arg(long, default_value_os_t = default_out())]
    out: PathBuf,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
}

/// The peer proxies' binaries.
#[derive(Args, Clone)]
struct Peers {
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
}

impl Peers {
    /// Every target's binary: Sluice from `common`, the peers from here.
    fn bins(&self, common: &Common) -> Bins {
        Bins {
            sluice: common.sluice.clone().unwrap_or_else(default_sluice),
            nginx: self.nginx.clone(),
            haproxy: self.haproxy.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    peers: Peers,
    /// Targets, comma-separated (missing peer binaries are skipped with a note).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,sluice,sluice-l4,nginx,haproxy"
    )]
    targets: Vec<String>,
    /// Only scenarios whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Seconds per scenario run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Repetitions (targets are interleaved within each repetition).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Client connections for the open-loop (fixed-rate) scenarios.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Requests in flight for the closed-loop (max) scenarios: HTTP/1.1 connections, or
    /// HTTP/2 connections × 4 streams.
    #[arg(long, default_value_t = 64)]
    max_conns: usize,
    /// Open-loop rates, requests/s in total.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u64>,
    /// Config-scale service counts (0 to skip).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    scale: Vec<usize>,
    /// Skip the wrk/h2load cross-check.
    #[arg(long)]
    no_crosscheck: bool,
}

#[derive(Args, Clone)]
struct CostArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    peers: Peers,
    #[arg(long, value_delimiter = ',', default_value = "sluice,nginx")]
    targets: Vec<String>,
    /// Requests in flight (HTTP/1.1 connections; h2c: a quarter as many connections × 4).
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Open loop at this many requests/s in total, over `--inflight` connections (one request
    /// or stream at a time each), instead of the closed loop: the cost at a sidecar's usual load.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds per measured window.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Count user-space instructions, and the atomic (locked) ones among them, under
    /// valgrind's callgrind instead of perf counters.
    #[arg(long)]
    callgrind: bool,
    /// Measure every target this many times, interleaved, and report medians.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Only these scenarios (h1-small, h1-16k, h2-small, grpc-stream, tcp-echo).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// A second Sluice binary, measured as `sluice-base` interleaved with the others: an A/B of
    /// two builds on the same machine state.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ConnMemoryArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    peers: Peers,
    #[arg(long, value_delimiter = ',', default_value = "sluice,nginx,haproxy")]
    targets: Vec<String>,
    /// Client connections opened per kind.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
}

#[derive(Args, Clone)]
struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
}

#[derive(Args, Clone)]
struct XdsScaleArgs {
    #[command(flatten)]
    common: Common,
    /// Cluster counts, one Sluice process each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    clusters: Vec<usize>,
    /// Virtual hosts in the route table.
    #[arg(long, default_value_t = 10_000)]
    vhosts: usize,
}

/// The binaries and the proxy targets named on the command line (`direct` has no process to
/// measure, so it is refused).
fn proxy_targets(
    common: &Common,
    peers: &Peers,
    targets: &[String],
    what: &str,
) -> anyhow::Result<(Bins, Vec<Kind>)> {
    let bins = peers.bins(common);
    let kinds = targets
        .iter()
        .map(|t| Kind::parse(t).with_context(|| format!("unknown target {t}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        !kinds.contains(&Kind::Direct),
        "{what} measures a proxy process; direct has none"
    );
    Ok((bins, kinds))
}

fn default_out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench")
}

fn default_sluice() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sluice")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/release/sluice"))
}

/// The command that reproduces this run.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut s = "cargo run -p bench --release --".to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a);
    }
    s
}

/// (proxy CPU, client+upstream CPU) or None when pinning is off or impossible.
/// What the config-scale commands share: this process pinned to the client CPU, the upstream
/// started there, the Sluice binary, a temp dir, and the CPU for Sluice.
struct Scaling {
    proxy_cpu: Option<usize>,
    up: upstream::Upstream,
    sluice: PathBuf,
    dir: PathBuf,
}

impl Scaling {
    fn start(common: &Common) -> anyhow::Result<Scaling> {
        let (proxy_cpu, client_cpu) = cpus(common.no_pin);
        if let Some(c) = client_cpu {
            sys::pin_current(c)?;
        }
        Ok(Scaling {
            proxy_cpu,
            up: upstream::start(client_cpu)?,
            sluice: common.sluice.clone().unwrap_or_else(default_sluice),
            dir: std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id())),
        })
    }
}

fn cpus(no_pin: bool) -> (Option<usize>, Option<usize>) {
    if no_pin || sys::cpus() < 2 {
        (None, None)
    } else {
        (Some(0), Some(1))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cmd = cli
        .cmd
        .unwrap_or_else(|| Cmd::Run(RunArgs::parse_from(["run"]).clone()));
    match cmd {
        Cmd::Run(a) => run(a),
        Cmd::ConfigScale(a) => {
            let Scaling {
                proxy_cpu,
                up,
                sluice,
                dir,
            } = Scaling::start(&a.common)?;
            for n in &a.services {
                let r = scale::measure(&sluice, *n, up.http, &dir, proxy_cpu)?;
                println!("{}", serde_json::to_string(&r)?);
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Cmd::XdsScale(a) => {
            let Scaling {
                proxy_cpu,
                up,
                sluice,
                dir,
            } = Scaling::start(&a.common)?;
            let mut records = Vec::new();
            for n in &a.clusters {
                let r = xds_scale::measure(&sluice, *n, a.vhosts, up.http, &dir, proxy_cpu)?;
                println!("{}", serde_json::to_string(&r)?);
                records.push(r);
            }
            let _ = std::fs::remove_dir_all(&dir);
            let md = xds_scale::markdown(
                &records,
                &command_line(),
                &format!("{}, {}", date(), machine()),
            );
            print!("{md}");
            std::fs::create_dir_all(&a.common.out)?;
            std::fs::write(a.common.out.join("xds-scale.md"), md)?;
            Ok(())
        }
        Cmd::Hpack { exchanges } => {
            let m = hpack::measure(exchanges);
            println!(
                "{} exchanges: {:.0} ns per exchange (decode + encode of the request and of the response); steady-state blocks: request in {} B, out {} B; response in {} B, out {} B",
                m.exchanges,
                m.per_exchange.as_nanos(),
                m.block_bytes[0],
                m.block_bytes[1],
                m.block_bytes[2],
                m.block_bytes[3]
            );
            Ok(())
        }
        Cmd::RouteSelect { out } => {
            let per = std::time::Duration::from_millis(500);
            let small = routes::measure(10, 5, per);
            let large = routes::measure(10_000, 5, per);
            let md = routes::markdown(
                &small,
                &large,
                "cargo run -p bench --release -- route-select",
            );
            print!("{md}");
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("route-select.md"), md)?;
            Ok(())
        }
        Cmd::Cost(a) => {
            let (proxy_cpu, client_cpu) = cpus(a.common.no_pin);
            let (bins, kinds) = proxy_targets(&a.common, &a.peers, &a.targets, "cost")?;
            let up = upstream::start(client_cpu)?;
            if let Some(c) = client_cpu {
                sys::pin_current(c)?;
            }
            let dir = std::env::temp_dir().join(format!("sluice-cost-{}", std::process::id()));
            let mut targets: Vec<cost::Target> = kinds
                .iter()
                .map(|k| cost::Target {
                    name: k.name().to_string(),
                    kind: *k,
                    bins: bins.clone(),
                })
                .collect();
            if let Some(base) = &a.baseline {
                anyhow::ensure!(base.exists(), "no baseline binary at {}", base.display());
                targets.push(cost::Target {
                    name: "sluice-base".into(),
                    kind: Kind::Sluice,
                    bins: targets::Bins {
                        sluice: base.clone(),
                        ..bins.clone()
                    },
                });
            }
            let plan = cost::Plan {
                scenarios: a.scenarios.clone(),
                reps: a.reps,
                inflight: a.inflight,
                rate: a.rate,
                dur: Duration::from_secs_f64(a.duration),
                callgrind: a.callgrind,
            };
            let table = cost::run(&targets, &up, &dir, proxy_cpu, &plan)?;
            println!("{table}");
            if !a.callgrind {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        Cmd::ConnMemory(a) => {
            let (proxy_cpu, client_cpu) = cpus(a.common.no_pin);
            let (bins, kinds) = proxy_targets(&a.common, &a.peers, &a.targets, "conn-memory")?;
            let up = upstream::start(client_cpu)?;
            let dir = std::env::temp_dir().join(format!("sluice-conns-{}", std::process::id()));
            let table = conns::run(&kinds, &bins, &up, &dir, proxy_cpu, a.conns)?;
            let _ = std::fs::remove_dir_all(&dir);
            println!("{table}");
            let md = format!(
                "`cargo run -p bench --release -- conn-memory`\n\n# Memory per open connection\n\n\
                 Generated {} on {}. Each kind of connection is measured in a fresh proxy \
                 process: one connection first (one-time allocations), then {} more, each \
                 making one exchange; the figure is the growth of the proxy's RSS divided by \
                 their number, read once they sit idle. RSS is what the allocator has taken \
                 from the kernel, so it also counts memory freed but kept for reuse.\n\n{table}",
                date(),
                machine(),
                a.conns
            );
            std::fs::create_dir_all(&a.common.out)?;
            std::fs::write(a.common.out.join("conn-memory.md"), md)?;
            Ok(())
        }
        Cmd::Report { out } => {
            let rep: Report =
                serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
            write_outputs(&rep, &out)
        }
    }
}

impl RunArgs {
    fn parse_from<I: IntoIterator<Item = &'static str>>(it: I) -> RunArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            a: RunArgs,
        }
        Only::parse_from(it).a
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let (proxy_cpu, client_cpu) = cpus(a.common.no_pin);
    let bins = a.peers.bins(&a.common);
    let mut notes = Vec::new();
    let mut kinds = Vec::new();
    for t in &a.targets {
        let k = Kind::parse(t).with_context(|| format!("unknown target {t}"))?;
        if bins.available(k) {
            kinds.push(k);
        } else {
            let msg = format!(
                "{} skipped: {} not found (see bench/README.md to install it)",
                k.name(),
                bins.path(k).unwrap().display()
            );
            eprintln!("bench: {msg}");
            notes.push(msg);
        }
    }
    let scenarios: Vec<load::Scenario> = load::scenarios(a.conns, a.max_conns, &a.rates)
        .into_iter()
        .filter(|s| a.scenarios.is_empty() || a.scenarios.iter().any(|f| s.name.contains(f)))
        .collect();
    anyhow::ensure!(
        !scenarios.is_empty(),
        "no scenario matches {:?}",
        a.scenarios
    );

    // Upstream first (its thread pins itself), then the client (this thread).
    let up = upstream::start(client_cpu)?;
    if let Some(c) = client_cpu {
        sys::pin_current(c)?;
    }
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dur = Duration::from_secs_f64(a.duration);
    let load_before = sys::loadavg();
    let steal_before = sys::steal_ticks();

    let mut rep = Report {
        command: command_line(),
        date: date(),
        machine: machine(),
        settings: format!(
            "{} s per scenario run, {} repetitions; open-loop rates {:?} req/s over {} connections; closed-loop (max) with {} requests in flight; {}.",
            a.duration,
            a.reps,
            a.rates,
            a.conns,
            a.max_conns,
            match proxy_cpu {
                Some(_) => "proxy pinned to CPU 0, client and upstream to CPU 1",
                None => "no CPU pinning",
            }
        ),
        ..Default::default()
    };
    for k in &kinds {
        rep.targets.push(TargetRecord {
            target: *k,
            version: bins.version(*k),
            idle: vec![],
            after: vec![],
        });
    }
    for r in 0..a.reps {
        for k in &kinds {
            let running = match targets::start(*k, &bins, &up, &dir, proxy_cpu) {
                Ok(x) => x,
                Err(e) => {
                    let msg = format!(
                        "{} failed to start in repetition {}: {e:#}",
                        k.name(),
                        r + 1
                    );
                    eprintln!("bench: {msg}");
                    notes.push(msg);
                    continue;
                }
            };
            let pid = running.pid();
            std::thread::sleep(Duration::from_millis(300));
            let t = rep.targets.iter_mut().find(|t| t.target == *k).unwrap();
            if let Some(m) = pid.and_then(sys::mem) {
                t.idle.push(m);
            }
            for sc in &scenarios {
                let rec = one(&running, sc, r, dur, proxy_cpu)?;
                eprintln!(
                    "[{}/{}] {:8} {:16} {:>9} req/s  p50 {:>7} µs  p99 {:>7} µs  cpu/1k {}{}{}",
                    r + 1,
                    a.reps,
                    k.name(),
                    sc.name,
                    report::fmt_num(rec.rps),
                    report::fmt_num(rec.latency.p50_us),
                    report::fmt_num(rec.latency.p99_us),
                    rec.cpu_s_per_1k
                        .map(report::fmt_num)
                        .unwrap_or_else(|| "-".into()),
                    rec.gbps
                        .map(|g| format!("  {g:.2} GB/s"))
                        .unwrap_or_default(),
                    if rec.errors > 0 {
                        format!("  ERRORS {}", rec.errors)
                    } else {
                        String::new()
                    },
                );
                rep.runs.push(rec);
            }
            let t = rep.targets.iter_mut().find(|t| t.target == *k).unwrap();
            if let Some(m) = pid.and_then(sys::mem) {
                t.after.push(m);
            }
        }
    }
    if !a.no_crosscheck {
        crosscheck(
            &kinds,
            &bins,
            &up,
            &dir,
            proxy_cpu,
            client_cpu,
            dur,
            a.max_conns,
            &mut rep,
        );
    }
    if kinds.contains(&Kind::Sluice) {
        for n in a.scale.iter().filter(|n| **n > 0) {
            match scale::measure(&bins.sluice, *n, up.http, &dir, proxy_cpu) {
                Ok(s) => {
                    eprintln!(
                        "scale {n}: ready in {:.3} s, RSS {:.1} MiB, routed {}",
                        s.ready_s,
                        s.rss_kib as f64 / 1024.0,
                        s.routed
                    );
                    rep.scale.push(s)
                }
                Err(e) => notes.push(format!("config scale {n} failed: {e:#}")),
            }
        }
    }
    notes.push(format!(
        "1-minute load average {load_before} before the run and {} after, on {} CPUs: other work shared the machine when it is near or above the CPU count (see the last column of the scenario table).",
        sys::loadavg(),
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
    ));
    if let (Some((s0, t0)), Some((s1, t1))) = (steal_before, sys::steal_ticks()) {
        if t1 > t0 {
            notes.push(format!(
                "Steal time was {:.1}% of the CPUs' time during the run: the hypervisor running other guests on these vCPUs. Above a few percent, every figure of the run moves with it.",
                (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64
            ));
        }
    }
    notes.push("CPU is the proxy process's CPU-time clock (user+system, all threads; clock_getcpuclockid, the precise form of /proc/PID/stat utime+stime) over the timed window, divided by completed requests. Client and upstream share the other CPU, so the direct path caps max req/s.".into());
    notes.push("Open-loop latency counts from each request's scheduled send time when the connection was still busy (no coordinated omission), from the timer firing otherwise (tokio's 1 ms timer granularity is not charged to the target).".into());
    notes.push("nginx proxies h2c and gRPC to the h2c upstream with grpc_pass (its proxy_pass speaks HTTP/1.1 only); haproxy and Sluice use h2 to the upstream.".into());
    rep.notes = notes;
    let _ = std::fs::remove_dir_all(&dir);
    write_outputs(&rep, &a.common.out)
}

fn one(
    running: &targets::Running,
    sc: &load::Scenario,
    r: usize,
    dur: Duration,
    core: Option<usize>,
) -> anyhow::Result<RunRecord> {
    let pid = running.pid();
    let (mut c0, mut c1) = (None, None);
    let (mut k0, mut k1) = (None, None);
    let out = load::run(running.addr(sc.proto), sc, dur, &mut |start| {
        let t = pid.and_then(sys::cpu_time);
        let k = core.and_then(sys::cpu_ticks);
        if start {
            (c0, k0) = (t, k)
        } else {
            (c1, k1) = (t, k)
        }
    })
    .with_context(|| format!("{} {}", running.kind.name(), sc.name))?;
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    let cpu = c0.zip(c1).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    let per1k = cpu
        .filter(|_| out.requests > 0)
        .map(|c| c / out.requests as f64 * 1000.0);
    let core_busy_pct = k0.zip(k1).and_then(|((b0, t0), (b1, t1))| {
        (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
    });
    Ok(RunRecord {
        target: running.kind,
        scenario: sc.name.clone(),
        rep: r,
        requests: out.requests,
        errors: out.errors,
        elapsed_s: secs,
        rps: out.requests as f64 / secs,
        gbps: (sc.proto == load::Proto::TcpBulk).then(|| out.bytes as f64 / secs / 1e9),
        // Bulk transfers stream without a round trip per MiB, so there is no latency to report.
        latency: if sc.proto == load::Proto::TcpBulk {
            hist::Latency::default()
        } else {
            hist::summarize(&out.hist)
        },
        proxy_cpu_s: cpu,
        cpu_s_per_1k: per1k,
        proxy_cpu_pct: cpu.map(|c| c / secs * 100.0),
        core_busy_pct,
    })
}

/// wrk (HTTP/1.1) and h2load (h2c) against each target, once, pinned like our client.
#[allow(clippy::too_many_arguments)]
fn crosscheck(
    kinds: &[Kind],
    bins: &Bins,
    up: &upstream::Upstream,
    dir: &Path,
    proxy_cpu: Option<usize>,
    client_cpu: Option<usize>,
    dur: Duration,
    max_conns: usize,
    rep: &mut Report,
) {
    let wrk = Path::new("/usr/bin/wrk");
    let h2load = Path::new("/usr/bin/h2load");
    if !wrk.exists() && !h2load.exists() {
        rep.notes
            .push("wrk and h2load not installed: no cross-check".into());
        return;
    }
    let secs = dur.as_secs().max(1).to_string();
    for k in kinds {
        let Ok(running) = targets::start(*k, bins, up, dir, proxy_cpu) else {
            continue;
        };
        let mut tools: Vec<(String, String, Command)> = Vec::new();
        if wrk.exists() {
            let mut c = Command::new(wrk);
            c.args(["-t1", &format!("-c{max_conns}"), &format!("-d{secs}s")])
                .arg(format!("http://{}/small", running.h1));
            tools.push((format!("wrk -t1 -c{max_conns}"), "h1-small-max".into(), c));
        }
        if h2load.exists() {
            let mut c = Command::new(h2load);
            c.args([
                "-c",
                &(max_conns / 4).max(1).to_string(),
                "-m4",
                "-t1",
                "-D",
                &secs,
            ])
            .arg(format!("http://{}/small", running.h2));
            tools.push((
                format!("h2load -c{} -m4", (max_conns / 4).max(1)),
                "h2-small-max".into(),
                c,
            ));
        }
        for (tool, sc, mut c) in tools {
            if let Some(cpu) = client_cpu {
                use std::os::unix::process::CommandExt;
                // SAFETY: only sched_setaffinity runs between fork and exec.
                unsafe {
                    c.pre_exec(move || sys::pin_current(cpu));
                }
            }
            let out = match bounded_output(c, dur + Duration::from_secs(15)) {
                Some(o) => o,
                None => continue,
            };
            if let Some(rps) = parse_rps(&out) {
                eprintln!("crosscheck {tool} {} {sc}: {rps:.0} req/s", k.name());
                rep.crosschecks.push(Crosscheck {
                    target: *k,
                    tool: tool.clone(),
                    scenario: sc,
                    rps,
                });
            }
        }
    }
}

/// Runs `c` and kills it if it outlives `limit`; returns stdout.
fn bounded_output(mut c: Command, limit: Duration) -> Option<String> {
    use std::io::Read;
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let t0 = std::time::Instant::now();
    loop {
        if child.try_wait().ok()?.is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = String::new();
    child.stdout.take()?.read_to_string(&mut s).ok()?;
    Some(s)
}

/// `Requests/sec: 12345.67` (wrk) or `finished in 3.00s, 12345.67 req/s, ...` (h2load).
fn parse_rps(out: &str) -> Option<f64> {
    for l in out.lines() {
        if let Some(v) = l.trim().strip_prefix("Requests/sec:") {
            return v.trim().parse().ok();
        }
        if l.starts_with("finished in") {
            let part = l.split(',').nth(1)?;
            return part.trim().strip_suffix("req/s")?.trim().parse().ok();
        }
    }
    None
}

fn write_outputs(rep: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(rep)?)?;
    std::fs::write(out.join("report.md"), report::markdown(rep))?;
    std::fs::write(out.join("latency.svg"), report::svg(rep))?;
    eprintln!(
        "wrote {}/{{results.json,report.md,latency.svg}}",
        out.display()
    );
    Ok(())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions. (available_parallelism would see our pinning.)
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{online} × {model}, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tool_outputs() {
        assert_eq!(
            parse_rps("  Latency 1ms\nRequests/sec:  48512.34\nTransfer/sec: 5MB\n"),
            Some(48512.34)
        );
        assert_eq!(
            parse_rps("finished in 3.00s, 51234.50 req/s, 2.1MB/s\nrequests: 1"),
            Some(51234.5)
        );
        assert_eq!(parse_rps("nothing"), None);
    }

    #[test]
    fn cli_defaults() {
        let a = RunArgs::parse_from(["run"]);
        assert_eq!(a.rates, vec![1000, 5000]);
        assert_eq!(a.reps, 3);
        assert_eq!(
            a.targets,
            ["direct", "sluice", "sluice-l4", "nginx", "haproxy"]
        );
    }
}
