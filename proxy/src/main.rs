//! `sluice`: the service-mesh data plane binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run(RunArgs),
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
    /// Log level or filter (trace, debug, info, warn, error; or EnvFilter directives).
    #[arg(long, default_value = "info", env = "SLUICE_LOG")]
    log_level: String,
    #[command(flatten)]
    xds: XdsArgs,
}

/// Control plane and node identity. Without `--xds-address`, a bootstrap's
/// `dynamic_resources.ads_config` (pointing at a static cluster) is used if present.
/// `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP` and `ISTIO_META_*` are read as istio-agent does;
/// flags win.
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
    /// sidecar or router (gateways).
    #[arg(long, value_parser = ["sidecar", "router"])]
    role: Option<String>,
    #[arg(long)]
    pod_ip: Option<String>,
    #[arg(long)]
    pod_name: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
}

/// Where to get dynamic configuration, if anywhere.
fn xds_options(
    a: &XdsArgs,
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
    if let Some(r) = &a.role {
        s.proxy_type = if r == "router" {
            xds_client::ProxyType::Router
        } else {
            xds_client::ProxyType::Sidecar
        };
    }
    if let Some(v) = &a.pod_ip {
        s.ip = v.clone();
    }
    if let Some(v) = &a.pod_name {
        s.pod_name = v.clone();
    }
    if let Some(v) = &a.namespace {
        s.namespace = v.clone();
    }
    if let Some(v) = &a.node_cluster {
        s.cluster = Some(v.clone());
    }
    let mut node = s.build();
    if let Some(id) = &a.node_id {
        node.id = id.clone();
    } else if let Some(bn) = bootstrap.and_then(|b| b.node.as_ref()) {
        // An Envoy bootstrap's node, when flags and environment say nothing.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level).context("--log-level")?;
    let (filter, handle) = reload::Layer::new(filter);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .init();
    let set_level: sluice::admin::LogLevelFn = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
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
    let xds = xds_options(&args.xds, bootstrap.as_ref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let app = sluice::app::App::start(sluice::app::Options {
            bootstrap,
            admin_address: args.admin_address,
            drain_time: args.drain_time,
            set_log_level: Some(set_level),
        })
        .await?;
        let _xds = xds.map(|o| app.start_xds(o));
        app.run().await;
        Ok(())
    })
}
