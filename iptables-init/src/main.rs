//! `sluice-iptables`: the command line, with istio-iptables' flag names and short letters.
//!
//! Settings layer as in Istio: defaults, then environment variables, then flags; then values
//! left unset are read from the host (proxy UID, IPv6, resolv.conf). `-n` prints the
//! iptables-restore payloads (stdout; one per family, IPv4 first), or the `nft -f` script with
//! `--native-nftables`, and changes nothing.
//! Errors go to stderr and the exit status is non-zero.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use thiserror::Error;

use iptables_init::apply::{ApplyError, Installer, SystemRunner};
use iptables_init::config::{host, parse_bool, Config, ConfigError, Settings};
use iptables_init::nft::{self, NftError, NftInstaller};
use iptables_init::routes::{self, RouteError};
use iptables_init::rules::generate;

fn go_bool(s: &str) -> Result<bool, String> {
    parse_bool("flag", s).map_err(|e| e.to_string())
}

/// Set up iptables rules that capture a pod's traffic for the Sluice sidecar (Istio-compatible).
#[derive(Debug, Parser)]
#[command(name = "sluice-iptables", version)]
struct Cli {
    /// Envoy port to which all outbound TCP traffic is redirected.
    #[arg(short = 'p', long = "envoy-port")]
    envoy_port: Option<String>,
    /// Port to which all inbound TCP traffic is redirected [env INBOUND_CAPTURE_PORT].
    #[arg(short = 'z', long = "inbound-capture-port")]
    inbound_capture_port: Option<String>,
    /// Istio tunnel (HBONE) port, never captured inbound [env INBOUND_TUNNEL_PORT].
    #[arg(short = 'e', long = "inbound-tunnel-port")]
    inbound_tunnel_port: Option<String>,
    /// Comma-separated UIDs whose traffic is not captured (the proxy) [env PROXY_UID].
    #[arg(short = 'u', long = "proxy-uid")]
    proxy_uid: Option<String>,
    /// Comma-separated GIDs whose traffic is not captured (default: the UIDs) [env PROXY_GID].
    #[arg(short = 'g', long = "proxy-gid")]
    proxy_gid: Option<String>,
    /// REDIRECT or TPROXY [env ISTIO_INBOUND_INTERCEPTION_MODE].
    #[arg(short = 'm', long = "istio-inbound-interception-mode")]
    inbound_interception_mode: Option<String>,
    /// Inbound ports to capture: list, "*" for all, empty for none [env ISTIO_INBOUND_PORTS].
    #[arg(short = 'b', long = "istio-inbound-ports")]
    inbound_ports: Option<String>,
    /// Inbound ports to leave alone when capturing "*" [env ISTIO_LOCAL_EXCLUDE_PORTS].
    #[arg(short = 'd', long = "istio-local-exclude-ports")]
    local_exclude_ports: Option<String>,
    /// Interfaces whose traffic is never captured [env ISTIO_EXCLUDE_INTERFACES].
    #[arg(short = 'c', long = "istio-exclude-interfaces")]
    exclude_interfaces: Option<String>,
    /// Outbound CIDRs to capture, "*" for all [env ISTIO_SERVICE_CIDR].
    #[arg(short = 'i', long = "istio-service-cidr")]
    service_cidr: Option<String>,
    /// Outbound CIDRs never captured [env ISTIO_SERVICE_EXCLUDE_CIDR].
    #[arg(short = 'x', long = "istio-service-exclude-cidr")]
    service_exclude_cidr: Option<String>,
    /// Outbound ports always captured [env ISTIO_OUTBOUND_PORTS].
    #[arg(short = 'q', long = "istio-outbound-ports")]
    outbound_ports: Option<String>,
    /// Outbound ports never captured [env ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE].
    #[arg(short = 'o', long = "istio-local-outbound-ports-exclude")]
    local_outbound_ports_exclude: Option<String>,
    /// Virtual interfaces whose inbound traffic is treated as outbound [env KUBE_VIRT_INTERFACES].
    #[arg(short = 'k', long = "kube-virt-interfaces")]
    kube_virt_interfaces: Option<String>,
    /// TPROXY mark [env ISTIO_INBOUND_TPROXY_MARK].
    #[arg(short = 't', long = "istio-inbound-tproxy-mark")]
    tproxy_mark: Option<String>,
    /// TPROXY routing table [env ISTIO_INBOUND_TPROXY_ROUTE_TABLE].
    #[arg(short = 'r', long = "istio-inbound-tproxy-route-table")]
    tproxy_route_table: Option<String>,
    /// Print the iptables-restore payloads instead of applying them [env DRY_RUN].
    #[arg(short = 'n', long = "dry-run", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    dry_run: Option<bool>,
    /// Capture DNS to the agent on 15053 [env REDIRECT_DNS, ISTIO_META_DNS_CAPTURE].
    #[arg(long = "redirect-dns", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    redirect_dns: Option<bool>,
    /// Capture all port-53 traffic, not just to resolv.conf servers [env CAPTURE_ALL_DNS].
    #[arg(long = "capture-all-dns", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    capture_all_dns: Option<bool>,
    /// Drop conntrack-INVALID packets [env DROP_INVALID, INVALID_DROP].
    #[arg(long = "drop-invalid", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    drop_invalid: Option<bool>,
    /// TPROXY mode only (Sluice extension, not in Istio): first in nat ISTIO_OUTPUT, return TCP
    /// leaving on lo with the TPROXY mark, so the sidecar's original_src connection to its app
    /// is not captured again (istio/istio#23369) [env SLUICE_TPROXY_MARK_RETURN].
    #[arg(long = "tproxy-mark-return", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    tproxy_mark_return: Option<bool>,
    /// Program IPv6 when the pod has any IPv6 address [env DUAL_STACK, ISTIO_DUAL_STACK].
    #[arg(long = "dual-stack", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    dual_stack: Option<bool>,
    /// Only remove Istio chains and jumps [env CLEANUP_ONLY].
    #[arg(long = "cleanup-only", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    cleanup_only: Option<bool>,
    /// Use native nftables (`nft`) instead of iptables [env NATIVE_NFTABLES].
    #[arg(long = "native-nftables", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    native_nftables: Option<bool>,
    /// Use iptables-legacy or iptables-nft instead of `iptables` on PATH [env FORCE_IPTABLES_BINARY].
    #[arg(long = "force-iptables-binary")]
    force_iptables_binary: Option<String>,
    /// Accepted for compatibility: sluice-iptables always reconciles (cleans up first).
    #[arg(long = "reconcile", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, hide = true)]
    _reconcile: Option<bool>,
    /// Accepted for compatibility with Istio's injected init container; ignored.
    #[arg(long = "log_output_level", hide = true)]
    _log_output_level: Option<String>,
}

impl Cli {
    /// Flags override env and defaults.
    fn apply(&self, s: &mut Settings) -> Result<(), ConfigError> {
        let strings = [
            ("PROXY_PORT", &self.envoy_port),
            ("INBOUND_CAPTURE_PORT", &self.inbound_capture_port),
            ("INBOUND_TUNNEL_PORT", &self.inbound_tunnel_port),
            ("PROXY_UID", &self.proxy_uid),
            ("PROXY_GID", &self.proxy_gid),
            ("INBOUND_INTERCEPTION_MODE", &self.inbound_interception_mode),
            ("INBOUND_PORTS_INCLUDE", &self.inbound_ports),
            ("INBOUND_PORTS_EXCLUDE", &self.local_exclude_ports),
            ("EXCLUDE_INTERFACES", &self.exclude_interfaces),
            ("OUTBOUND_IPRANGES_INCLUDE", &self.service_cidr),
            ("OUTBOUND_IPRANGES_EXCLUDE", &self.service_exclude_cidr),
            ("OUTBOUND_PORTS_INCLUDE", &self.outbound_ports),
            ("OUTBOUND_PORTS_EXCLUDE", &self.local_outbound_ports_exclude),
            ("KUBE_VIRT_INTERFACES", &self.kube_virt_interfaces),
            ("INBOUND_TPROXY_MARK", &self.tproxy_mark),
            ("INBOUND_TPROXY_ROUTE_TABLE", &self.tproxy_route_table),
            ("FORCE_IPTABLES_BINARY", &self.force_iptables_binary),
        ];
        for (key, v) in strings {
            if let Some(v) = v {
                s.set(key, v)?;
            }
        }
        let bools = [
            ("DRY_RUN", self.dry_run),
            ("REDIRECT_DNS", self.redirect_dns),
            ("CAPTURE_ALL_DNS", self.capture_all_dns),
            ("DROP_INVALID", self.drop_invalid),
            ("TPROXY_MARK_RETURN", self.tproxy_mark_return),
            ("DUAL_STACK", self.dual_stack),
            ("CLEANUP_ONLY", self.cleanup_only),
            ("NATIVE_NFTABLES", self.native_nftables),
        ];
        for (key, v) in bools {
            if let Some(v) = v {
                s.set(key, &v.to_string())?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
enum MainError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("{0}")]
    Nft(#[from] NftError),
}

fn run(cli: Cli) -> Result<(), MainError> {
    let mut settings = Settings::default();
    let env = |k: &str| std::env::var(k).ok();
    settings.apply_env(env)?;
    cli.apply(&mut settings)?;
    host::fill_from_host(&mut settings, env)?;
    let cfg = Config::try_from(&settings)?;
    let rules = generate(&cfg);
    for w in &rules.warnings {
        eprintln!("sluice-iptables: warning: {w}");
    }

    if cfg.dry_run {
        if cfg.cleanup_only {
            eprintln!("sluice-iptables: dry run: would remove all ISTIO_* chains and jumps; nothing changed");
            return Ok(());
        }
        if cfg.native_nftables {
            eprintln!("sluice-iptables: dry run: nft -f payload:");
            print!("{}", nft::script(&rules)?);
            return Ok(());
        }
        for (family, fam) in rules.families() {
            eprintln!(
                "sluice-iptables: dry run: {} iptables-restore --noflush payload:",
                family.name()
            );
            print!("{}", fam.restore_payload());
        }
        return Ok(());
    }

    let mut runner = SystemRunner;
    if !cfg.cleanup_only {
        // Routes first: they are inert until the iptables marks exist, so a routing failure
        // leaves the namespace without capture rather than half-configured.
        routes::configure(&mut runner, &routes::plan(&cfg))?;
    }
    if cfg.native_nftables {
        let mut installer = NftInstaller::new(&mut runner);
        let result = if cfg.cleanup_only {
            installer.cleanup()
        } else {
            installer.install(&rules)
        };
        for line in &installer.log {
            eprintln!("sluice-iptables: {line}");
        }
        return Ok(result?);
    }
    let mut installer = Installer::new(&mut runner, cfg.backend);
    let result = if cfg.cleanup_only {
        installer.cleanup(&rules)
    } else {
        installer.install(&rules)
    };
    for line in &installer.log {
        eprintln!("sluice-iptables: {line}");
    }
    result?;
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-iptables: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let cli =
            Cli::try_parse_from(std::iter::once("sluice-iptables").chain(args.iter().copied()))
                .unwrap();
        let mut s = Settings::default();
        s.apply_env(|k| (k == "ISTIO_INBOUND_PORTS").then(|| "1,2".to_string()))
            .unwrap();
        cli.apply(&mut s).unwrap();
        s
    }

    #[test]
    fn istio_injector_command_line_parses() {
        let s = settings(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--log_output_level=default:info",
        ]);
        assert_eq!(s.inbound_ports_include, "*", "flag overrides env");
        assert_eq!(s.outbound_ipranges_include, "*");
        assert_eq!(s.inbound_ports_exclude, "15090,15021,15020");
    }

    #[test]
    fn bool_flags_accept_bare_and_valued_forms() {
        let s = settings(&[
            "--redirect-dns",
            "-n",
            "--drop-invalid=false",
            "--cleanup-only=1",
        ]);
        assert!(s.redirect_dns && s.dry_run && !s.drop_invalid && s.cleanup_only);
        assert!(!s.tproxy_mark_return);
        assert!(settings(&["--tproxy-mark-return"]).tproxy_mark_return);
        assert!(!settings(&["--tproxy-mark-return=false"]).tproxy_mark_return);
        assert_eq!(
            settings(&[]).inbound_ports_include,
            "1,2",
            "env applies without flag"
        );
    }
}
