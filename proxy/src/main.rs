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
    /// Serve the mesh DNS proxy on this address (UDP and TCP), e.g. 127.0.0.1:15053.
    #[arg(long)]
    dns_address: Option<SocketAddr>,
    /// Mesh hosts the DNS proxy answers for (hosts-file format: `ip name…`).
    #[arg(long)]
    dns_hosts: Option<PathBuf>,
    /// resolv.conf whose nameservers the DNS proxy forwards to and whose search domains it
    /// answers locally.
    #[arg(long, default_value = "/etc/resolv.conf")]
    dns_resolv_conf: PathBuf,
    /// Log level or filter (trace, debug, info, warn, error; or EnvFilter directives).
    #[arg(long, default_value = "info", env = "SLUICE_LOG")]
    log_level: String,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let dns = match args.dns_address {
        Some(addr) => Some((
            addr,
            sluice::dns::Proxy::from_files(
                args.dns_hosts.as_deref().and_then(|p| p.to_str()),
                args.dns_resolv_conf.to_str().unwrap_or("/etc/resolv.conf"),
            )?,
        )),
        None => None,
    };
    rt.block_on(async move {
        if let Some((addr, proxy)) = dns {
            proxy.bind_and_serve(addr).await?;
        }
        let app = sluice::app::App::start(sluice::app::Options {
            bootstrap,
            admin_address: args.admin_address,
            drain_time: args.drain_time,
            set_log_level: Some(set_level),
        })
        .await?;
        app.run().await;
        Ok(())
    })
}
