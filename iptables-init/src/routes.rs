//! Routing setup istio-iptables does besides iptables (its `tproxy.ConfigureRoutes`):
//! the `::6/128` address on `lo` when IPv6 is enabled (the inbound passthrough source), and,
//! for TPROXY inbound capture, a policy rule `fwmark MARK lookup TABLE` with a `local default`
//! route via `lo` in that table, so marked packets are delivered locally to the proxy.
//!
//! All changes go through `ip` (iproute2) and are idempotent: addresses and routes use
//! `replace`, the rule is deleted (all copies) before it is added once.

use thiserror::Error;

use crate::apply::Runner;
use crate::config::{Config, InboundPorts, InterceptionMode};

#[derive(Debug, Error)]
#[error("`ip {}` failed: {detail}", args.join(" "))]
pub struct RouteError {
    pub args: Vec<String>,
    pub detail: String,
}

/// One step: arguments to `ip`, and whether failure is expected and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub args: Vec<String>,
    /// `Some(n)`: repeat up to n times until it fails (used to delete every copy of a rule).
    pub repeat_until_failure: Option<u32>,
}

fn step(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        repeat_until_failure: None,
    }
}

/// The `ip` steps `cfg` needs, in order (pure).
pub fn plan(cfg: &Config) -> Vec<Step> {
    let mut steps = Vec::new();
    if cfg.enable_ipv6 {
        steps.push(step(&["-6", "addr", "replace", "::6/128", "dev", "lo"]));
    }
    if cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None {
        let (mark, table) = (
            cfg.tproxy_mark.to_string(),
            cfg.tproxy_route_table.to_string(),
        );
        let mut families = vec![("-4", "0.0.0.0/0")];
        if cfg.enable_ipv6 {
            families.push(("-6", "::/0"));
        }
        for (f, all) in families {
            let mut del = step(&[f, "rule", "del", "fwmark", &mark, "lookup", &table]);
            del.repeat_until_failure = Some(64);
            steps.push(del);
            steps.push(step(&[f, "rule", "add", "fwmark", &mark, "lookup", &table]));
            steps.push(step(&[
                f, "route", "replace", "local", all, "dev", "lo", "table", &table,
            ]));
        }
    }
    steps
}

/// Run the steps with `ip`.
pub fn configure(runner: &mut impl Runner, steps: &[Step]) -> Result<(), RouteError> {
    for s in steps {
        let fail = |detail: String| RouteError {
            args: s.args.clone(),
            detail,
        };
        match s.repeat_until_failure {
            Some(n) => {
                for _ in 0..n {
                    match runner.run("ip", &s.args, None) {
                        Ok(out) if out.success => continue,
                        _ => break,
                    }
                }
            }
            None => {
                let out = runner
                    .run("ip", &s.args, None)
                    .map_err(|e| fail(e.to_string()))?;
                if !out.success {
                    return Err(fail(out.stderr.trim().to_string()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set(k, v).unwrap();
        }
        Config::try_from(&s).unwrap()
    }

    #[test]
    fn redirect_ipv4_needs_nothing() {
        assert!(plan(&cfg(&[("ENABLE_INBOUND_IPV6", "false")])).is_empty());
    }

    #[test]
    fn tproxy_dual_stack_plan() {
        let p = plan(&cfg(&[
            ("ENABLE_INBOUND_IPV6", "true"),
            ("INBOUND_INTERCEPTION_MODE", "TPROXY"),
            ("INBOUND_PORTS_INCLUDE", "*"),
        ]));
        let lines: Vec<String> = p.iter().map(|s| s.args.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "-6 addr replace ::6/128 dev lo",
                "-4 rule del fwmark 1337 lookup 133",
                "-4 rule add fwmark 1337 lookup 133",
                "-4 route replace local 0.0.0.0/0 dev lo table 133",
                "-6 rule del fwmark 1337 lookup 133",
                "-6 rule add fwmark 1337 lookup 133",
                "-6 route replace local ::/0 dev lo table 133",
            ]
        );
        assert_eq!(p[1].repeat_until_failure, Some(64));
    }
}
