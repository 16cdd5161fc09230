//! `sluice`: the service-mesh data plane binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// With the `mimalloc` feature: allocation is a large share of the per-request cost under glibc
/// malloc (large read buffers take `malloc_consolidate`, task cells take `memalign`; see
/// docs/bench/profile.md), but mimalloc keeps more memory when idle, so glibc is the default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Otherwise glibc's malloc, with a per-thread cache of the mid-sized blocks every request
/// allocates (`proxy/src/alloc.rs`).
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static GLOBAL: sluice::alloc::Cached = sluice::alloc::Cached;
use clap::{Parser, Subcommand};
use tracing_subscriber::{reload, EnvFilter};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a service-mesh data plane speaking Envoy's xDS v3"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at startup; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run(RunArgs),
    /// Check a route table against test cases, like Envoy's router_check_tool.
    RouteCheck(RouteCheckArgs),
    /// Print the Envoy resources generated from a directory of Istio/Kubernetes YAML, as JSON.
    Translate(TranslateArgs),
    /// Serve a directory of Istio/Kubernetes YAML over ADS (SotW and delta) to Sluice proxies,
    /// each getting the translation for its node identity; edits are pushed live.
    Discovery(DiscoveryArgs),
}

#[derive(clap::Args)]
struct DiscoveryArgs {
    /// Directory (or file) of Istio/Kubernetes YAML.
    #[arg(long)]
    config_dir: PathBuf,
    /// gRPC address to serve ADS on.
    #[arg(long, default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// How often the directory is checked for changes, e.g. 1s, 200ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Log level (trace, debug, info, warning, error, critical, off) or TARGET=LEVEL,... directives.
    #[arg(long, default_value = "info", env = "SLUICE_LOG")]
    log_level: String,
}

#[derive(clap::Args)]
struct RouteCheckArgs {
    /// RouteConfiguration (YAML or JSON).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Test file (router_check_tool format, JSON or YAML).
    #[arg(long, short = 't')]
    tests: PathBuf,
    /// Print every test and its failures.
    #[arg(long, short = 'd')]
    details: bool,
    /// Print only failing tests.
    #[arg(long)]
    only_show_failures: bool,
}

/// Which proxy the Istio config is translated for.
#[derive(clap::Args, Clone)]
struct NodeArgs {
    /// Proxy role: sidecar, or router (a gateway).
    #[arg(long, default_value = "sidecar", value_parser = ["sidecar", "router"])]
    role: String,
    /// The proxy's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's labels, k=v,k2=v2.
    #[arg(long, default_value = "")]
    labels: String,
    /// The workload's IP.
    #[arg(long)]
    pod_ip: Option<String>,
    /// Traffic capture: redirect (iptables to 15001/15006) or none (bind 127.0.0.1:PORT per
    /// outbound port, as Istio's NONE interception mode).
    #[arg(long, default_value = "redirect", value_parser = ["redirect", "none"])]
    interception: String,
    /// Access log file for every listener (MeshConfig accessLogFile), e.g. /dev/stdout;
    /// overrides the `istio` ConfigMap's setting.
    #[arg(long)]
    access_log_file: Option<String>,
    /// Accept HTTP/1.0 requests (Istio's `ISTIO_META_HTTP10=1`); otherwise they get 426.
    #[arg(long)]
    http10: bool,
}

impl NodeArgs {
    fn node(&self) -> anyhow::Result<sluice::istio::Node> {
        let mut labels = std::collections::BTreeMap::new();
        for kv in self.labels.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--labels: {kv:?} is not k=v"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(sluice::istio::Node {
            role: if self.role == "router" {
                sluice::istio::Role::Router
            } else {
                sluice::istio::Role::Sidecar
            },
            namespace: self.namespace.clone(),
            labels,
            ip: self.pod_ip.clone(),
            interception: if self.interception == "none" {
                sluice::istio::Interception::None
            } else {
                sluice::istio::Interception::Redirect
            },
            access_log_file: self.access_log_file.clone(),
            http10: self.http10,
        })
    }
}

#[derive(clap::Args)]
struct TranslateArgs {
    /// Directory (or file) of Istio/Kubernetes YAML.
    #[arg(long)]
    config_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Envoy bootstrap file (YAML or JSON) with static_resources.
    #[arg(long, short = 'c')]
    bootstrap: Option<PathBuf>,
    /// Admin endpoint address. Non-loopback addresses need --admin-allow-remote.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: SocketAddr,
    /// Allow a non-loopback admin address.
    #[arg(long)]
    admin_allow_remote: bool,
    /// How long a drain (SIGTERM, /quitquitquit) waits for open connections, e.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_time: Duration,
    /// Worker threads (Envoy's --concurrency); default: the CPUs this process may run on.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Serve the mesh DNS proxy on this address (UDP and TCP), e.g. 127.0.0.1:15053.
    #[arg(long)]
    dns_address: Option<SocketAddr>,
    /// Mesh hosts the DNS proxy answers for (hosts-file format: `ip name…`). With
    /// --config-dir, the Istio registry's hosts are added (and refreshed on changes).
    #[arg(long)]
    dns_hosts: Option<PathBuf>,
    /// resolv.conf whose nameservers the DNS proxy forwards to and whose search domains it
    /// answers locally.
    #[arg(long, default_value = "/etc/resolv.conf")]
    dns_resolv_conf: PathBuf,
    /// Log level (trace, debug, info, warning, error, critical, off) or TARGET=LEVEL,... directives.
    #[arg(long, default_value = "info", env = "SLUICE_LOG")]
    log_level: String,
    /// Run on a directory of Istio/Kubernetes YAML (no control plane); edits apply live.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    xds: XdsArgs,
}

/// Control plane and node identity. Without `--xds-address`, a bootstrap's
/// `dynamic_resources.ads_config` (pointing at a static cluster) is used if present. The node
/// sent to the control plane reads `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP` and
/// `ISTIO_META_*` as istio-agent does; `--role`, `--pod-ip`, `--labels`, `--interception` and a
/// non-default `--namespace` (see NodeArgs) and the flags below win.
#[derive(clap::Args)]
struct XdsArgs {
    /// ADS server, grpc://HOST:PORT (plaintext).
    #[arg(long)]
    xds_address: Option<String>,
    /// Use incremental (delta) xDS instead of state of the world.
    #[arg(long)]
    xds_delta: bool,
    /// How long warming waits for EDS/RDS before /ready turns true anyway.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    initial_fetch_timeout: Duration,
    /// Node id; default sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local.
    #[arg(long)]
    node_id: Option<String>,
    /// Node cluster; default <app label>.<namespace>, else istio-proxy.
    #[arg(long)]
    node_cluster: Option<String>,
    /// The pod's name (for the node id).
    #[arg(long)]
    pod_name: Option<String>,
}

/// Where to get dynamic configuration, if anywhere.
fn xds_options(
    a: &XdsArgs,
    n: &NodeArgs,
    bootstrap: Option<&envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap>,
) -> anyhow::Result<Option<sluice::xds::XdsOptions>> {
    let (address, delta) = match (&a.xds_address, bootstrap) {
        (Some(addr), _) => (sluice::xds::normalize_address(addr)?, a.xds_delta),
        (None, Some(b)) => match sluice::xds::ads_from_bootstrap(b)? {
            Some((addr, delta)) => (addr, delta || a.xds_delta),
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let mut s = xds_client::NodeSettings::from_env().context("node metadata from environment")?;
    if n.role == "router" {
        s.proxy_type = xds_client::ProxyType::Router;
    }
    if let Some(v) = &n.pod_ip {
        s.ip = v.clone();
    }
    if let Some(v) = &a.pod_name {
        s.pod_name = v.clone();
    }
    if n.namespace != "default" || s.namespace.is_empty() {
        s.namespace = n.namespace.clone();
    }
    for kv in n.labels.split(',').filter(|kv| !kv.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--labels: {kv:?} is not k=v"))?;
        s.labels.insert(k.trim().into(), v.trim().into());
    }
    if n.interception == "none" {
        s.interception_mode = "NONE".into();
    }
    if let Some(v) = &a.node_cluster {
        s.cluster = Some(v.clone());
    }
    let mut node = s.build();
    if let Some(id) = &a.node_id {
        node.id = id.clone();
    } else if let Some(bn) = bootstrap.and_then(|b| b.node.as_ref()) {
        // An Envoy bootstrap's node, when flags and environment name no pod.
        if s.pod_name.is_empty() && !bn.id.is_empty() {
            node.id = bn.id.clone();
            if a.node_cluster.is_none() && !bn.cluster.is_empty() {
                node.cluster = bn.cluster.clone();
            }
            if bn.metadata.is_some() {
                node.metadata = bn.metadata.clone();
            }
        }
    }
    let mut o = sluice::xds::XdsOptions::new(address, node);
    o.delta = delta;
    o.initial_fetch_timeout = a.initial_fetch_timeout;
    Ok(Some(o))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn translate(args: TranslateArgs) -> anyhow::Result<()> {
    let node = args.node.node()?;
    let r = sluice::istio::translate_dir(&args.config_dir, &node)?;
    for m in &r.messages {
        eprintln!("{m}");
    }
    println!("{}", serde_json::to_string_pretty(&r.to_json())?);
    Ok(())
}

/// The log filter for a `--log-level` or admin `/logging?level=` value.
fn log_filter(spec: &str) -> anyhow::Result<EnvFilter> {
    let directives = sluice::admin::log_directives(spec).map_err(anyhow::Error::msg)?;
    Ok(EnvFilter::try_new(directives)?)
}

/// The error and its causes joined by ": ", as `{:#}` prints them, but without a cause whose
/// text is already in the message before it: the library errors write their source into their
/// own message (so that a plain `{}` is complete), and `{:#}` would print it twice.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if last.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::RouteCheck(a) => {
            let opts = sluice::route::check::CheckOptions {
                details: a.details,
                only_show_failures: a.only_show_failures,
            };
            match sluice::route::check::run(&a.config, &a.tests, &opts) {
                Ok(report) => {
                    print!("{}", report.render(&opts));
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("sluice route-check: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Translate(args) => match translate(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {}", causes(&e));
                ExitCode::FAILURE
            }
        },
        Cmd::Discovery(args) => match discovery(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {}", causes(&e));
                ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {}", causes(&e));
                ExitCode::FAILURE
            }
        },
    }
}

fn discovery(args: DiscoveryArgs) -> anyhow::Result<()> {
    let filter = log_filter(&args.log_level).context("--log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    anyhow::ensure!(
        args.config_dir.exists(),
        "--config-dir {} does not exist",
        args.config_dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(sluice::istio::discovery::run(
        args.config_dir,
        args.listen,
        args.poll_interval,
    ))?;
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = log_filter(&args.log_level).context("--log-level")?;
    let (filter, handle) = reload::Layer::new(filter);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .init();
    sluice::admin::note_log_level(&args.log_level);
    let set_level: sluice::admin::LogLevelFn = Arc::new(move |level: &str| {
        let f = log_filter(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    if !args.admin_address.ip().is_loopback() && !args.admin_allow_remote {
        anyhow::bail!(
            "admin address {} is not loopback; pass --admin-allow-remote to expose it",
            args.admin_address
        );
    }
    let bootstrap = match &args.bootstrap {
        Some(p) => Some(sluice::config::bootstrap::load(p)?),
        None => None,
    };
    let xds = xds_options(&args.xds, &args.node, bootstrap.as_ref())?;
    anyhow::ensure!(
        xds.is_none() || args.config_dir.is_none(),
        "--config-dir and an xDS control plane are exclusive"
    );
    let istio = match &args.config_dir {
        Some(dir) => {
            anyhow::ensure!(
                dir.exists(),
                "--config-dir {} does not exist",
                dir.display()
            );
            Some((dir.clone(), args.node.node()?))
        }
        None => None,
    };
    // One worker (`--concurrency 1`, or a process pinned to one CPU as sidecars often are): a
    // single-threaded runtime, no cross-thread wake-ups. More: a work-stealing runtime.
    let workers = args.concurrency.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut rt = match Some(workers) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // A runtime thread writes its own cell of every stat (`stats.rs`). One that ends (the
    // blocking pool's do when idle) gives its cell back, and the freed blocks it kept for
    // reuse (`alloc.rs`).
    rt.on_thread_start(sluice::stats::claim_cell);
    rt.on_thread_stop(|| {
        sluice::stats::release_cell();
        sluice::alloc::flush_this_thread();
    });
    if workers == 1 {
        // The single-threaded runtime runs on this thread.
        sluice::stats::claim_cell();
    }
    let rt = rt.enable_all().build().context("tokio runtime")?;
    let dns = match args.dns_address {
        Some(addr) => {
            let proxy = sluice::dns::Proxy::from_files(
                args.dns_hosts.as_deref().and_then(|p| p.to_str()),
                args.dns_resolv_conf.to_str().unwrap_or("/etc/resolv.conf"),
            )?;
            // With --config-dir the mesh hosts come from the Istio registry (plus --dns-hosts),
            // rebuilt when the directory changes.
            let mesh = istio.as_ref().map(|(dir, node)| {
                let base = (*proxy.table.get()).clone();
                match sluice::dns::mesh::load_table(&base, dir, &node.namespace) {
                    Ok(t) => proxy.table.set(t),
                    Err(e) => tracing::error!(error = %e, "DNS table from Istio config"),
                }
                (base, dir.clone(), node.namespace.clone())
            });
            Some((addr, proxy, mesh))
        }
        None => None,
    };
    rt.block_on(async move {
        if let Some((addr, proxy, mesh)) = dns {
            let table = proxy.table.clone();
            proxy.bind_and_serve(addr).await?;
            if let Some((base, dir, ns)) = mesh {
                tokio::spawn(sluice::dns::mesh::watch(
                    table,
                    base,
                    dir,
                    ns,
                    Duration::from_secs(1),
                ));
            }
        }
        let app = sluice::app::App::start(sluice::app::Options {
            bootstrap,
            admin_address: args.admin_address,
            drain_time: args.drain_time,
            set_log_level: Some(set_level),
        })
        .await?;
        let _xds = xds.map(|o| app.start_xds(o));
        if let Some((dir, node)) = istio {
            // Ready once the directory's translation is applied and its clusters are warm.
            let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (a, st) = (applied.clone(), app.state.clone());
            app.set_readiness(Arc::new(move || {
                a.load(std::sync::atomic::Ordering::SeqCst) && st.load().is_warm()
            }));
            tokio::spawn(sluice::istio::run::watch_with_ready(
                app.state.clone(),
                dir,
                node,
                Duration::from_secs(1),
                applied,
            ));
        }
        app.run().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[test]
    fn causes_are_shown_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading {file}: {source}")]
        struct Outer {
            file: String,
            source: std::io::Error,
        }
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // A library error that writes its source into its message: the source once.
        let e = anyhow::Error::new(Outer {
            file: "b.yaml".into(),
            source: io(),
        });
        assert_eq!(causes(&e), "reading b.yaml: no such file");
        // A context over an error: both, as `{:#}` shows them.
        let e = anyhow::Error::new(io()).context("--bootstrap");
        assert_eq!(causes(&e), "--bootstrap: no such file");
    }
}
