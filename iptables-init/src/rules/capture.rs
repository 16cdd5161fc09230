//! Istio's capture rules in order: the `Config` → `RuleSet` generator.
//!
//! Steps follow istio-iptables' `capture/run.go` (`Run`, `handleInboundPortsInclude`,
//! `SetupDNSRedir`, ...) one for one: order is semantics in iptables, and the goldens compare
//! text. Facts (chains, matches, marks, ports) are Istio's; the code is ours.

use super::*;
use crate::config::{
    Config, InboundPorts, InterceptionMode, OwnerGroups, DNS_LISTENER_PORT, OUTBOUND_MARK,
};

macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($a.to_string()),*] };
}

/// Collects rules per family like istio-iptables' builder; IPv6 rules are dropped when IPv6
/// is disabled.
struct Builder {
    v4: Vec<Rule>,
    v6: Vec<Rule>,
    ipv6: bool,
}

impl Builder {
    fn push(
        &mut self,
        fam: Family,
        table: Table,
        chain: &str,
        insert_at: Option<u32>,
        spec: Vec<String>,
    ) {
        let rule = Rule {
            table,
            chain: chain.to_string(),
            insert_at,
            spec,
        };
        match fam {
            Family::V4 => self.v4.push(rule),
            Family::V6 if self.ipv6 => self.v6.push(rule),
            Family::V6 => {}
        }
    }

    fn append_v(&mut self, fam: Family, table: Table, chain: &str, spec: Vec<String>) {
        self.push(fam, table, chain, None, spec);
    }

    /// Append to both families.
    fn append(&mut self, table: Table, chain: &str, spec: Vec<String>) {
        self.append_v(Family::V4, table, chain, spec.clone());
        self.append_v(Family::V6, table, chain, spec);
    }

    /// Append to both families with a per-family value (Istio's `AppendVersionedRule`).
    fn append_each(&mut self, table: Table, chain: &str, spec: impl Fn(Family) -> Vec<String>) {
        self.append_v(Family::V4, table, chain, spec(Family::V4));
        self.append_v(Family::V6, table, chain, spec(Family::V6));
    }

    fn insert_v(&mut self, fam: Family, table: Table, chain: &str, pos: u32, spec: Vec<String>) {
        self.push(fam, table, chain, Some(pos), spec);
    }

    fn insert(&mut self, table: Table, chain: &str, pos: u32, spec: Vec<String>) {
        self.insert_v(Family::V4, table, chain, pos, spec.clone());
        self.insert_v(Family::V6, table, chain, pos, spec);
    }
}

/// Generate the rules for `cfg`. Pure and deterministic.
pub fn generate(cfg: &Config) -> RuleSet {
    Generator::new(cfg).run()
}

/// The app-loopback range: `HOST_IPV4_LOOPBACK_CIDR` or `::1/128`.
fn loopback(cfg: &Config, fam: Family) -> String {
    match fam {
        Family::V4 => cfg.host_ipv4_loopback.to_string(),
        Family::V6 => "::1/128".into(),
    }
}

struct Generator<'a> {
    cfg: &'a Config,
    b: Builder,
    warnings: Vec<String>,
}

impl<'a> Generator<'a> {
    fn new(cfg: &'a Config) -> Self {
        Generator {
            cfg,
            b: Builder {
                v4: Vec::new(),
                v6: Vec::new(),
                ipv6: cfg.enable_ipv6,
            },
            warnings: Vec::new(),
        }
    }

    fn tproxy(&self) -> bool {
        self.cfg.mode == InterceptionMode::Tproxy
    }

    fn run(mut self) -> RuleSet {
        let cfg = self.cfg;
        let mut redirect_dns = cfg.redirect_dns;
        if redirect_dns
            && !cfg.capture_all_dns
            && cfg.dns_servers_v4.is_empty()
            && cfg.dns_servers_v6.is_empty()
        {
            self.warnings.push(
                "REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false and no DNS servers are known: DNS capture disabled"
                    .into(),
            );
            redirect_dns = false;
        }

        self.exclude_interfaces();
        for iface in &cfg.kube_virt_interfaces {
            self.b.insert(
                Table::Nat,
                "PREROUTING",
                1,
                args!["-i", iface, "-j", "RETURN"],
            );
        }
        if cfg.drop_invalid {
            self.b.append(
                Table::Mangle,
                "PREROUTING",
                args!["-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP],
            );
            self.b
                .append(Table::Mangle, ISTIO_DROP, args!["-j", "DROP"]);
        }
        // The tunnel port bypasses capture; the two redirect chains point at the proxy.
        self.b.append(
            Table::Nat,
            ISTIO_INBOUND,
            args![
                "-p",
                "tcp",
                "--dport",
                cfg.inbound_tunnel_port,
                "-j",
                "RETURN"
            ],
        );
        self.b.append(
            Table::Nat,
            ISTIO_REDIRECT,
            args!["-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port],
        );
        self.b.append(
            Table::Nat,
            ISTIO_IN_REDIRECT,
            args![
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                cfg.inbound_capture_port
            ],
        );
        self.inbound();
        self.b
            .append(Table::Nat, "OUTPUT", args!["-j", ISTIO_OUTPUT]);
        self.tproxy_mark_return();
        for p in &cfg.outbound_ports_exclude {
            self.b.append(
                Table::Nat,
                ISTIO_OUTPUT,
                args!["-p", "tcp", "--dport", p, "-j", "RETURN"],
            );
            self.b.append(
                Table::Nat,
                ISTIO_OUTPUT,
                args!["-p", "udp", "--dport", p, "-j", "RETURN"],
            );
        }
        // 127.0.0.6 / ::6 is the inbound passthrough cluster's bind address.
        self.b.append_each(Table::Nat, ISTIO_OUTPUT, |f| {
            let src = if f == Family::V4 {
                "127.0.0.6/32"
            } else {
                "::6/128"
            };
            args!["-o", "lo", "-s", src, "-j", "RETURN"]
        });
        self.proxy_owner_rules(redirect_dns);
        self.owner_groups();
        if redirect_dns {
            self.dns();
        }
        // Apps talking to localhost, then user exclusions, then inclusions.
        self.b.append_each(Table::Nat, ISTIO_OUTPUT, |f| {
            args!["-d", loopback(cfg, f), "-j", "RETURN"]
        });
        for fam in [Family::V4, Family::V6] {
            for c in cfg.outbound_ranges_exclude.family(fam == Family::V6) {
                self.b.append_v(
                    fam,
                    Table::Nat,
                    ISTIO_OUTPUT,
                    args!["-d", c, "-j", "RETURN"],
                );
            }
        }
        for p in &cfg.outbound_ports_include {
            self.b.append(
                Table::Nat,
                ISTIO_OUTPUT,
                args!["-p", "tcp", "--dport", p, "-j", ISTIO_REDIRECT],
            );
        }
        self.outbound_include(Family::V4);
        self.outbound_include(Family::V6);
        if self.tproxy() {
            self.tproxy_marks();
        }
        RuleSet {
            v4: FamilyRules { rules: self.b.v4 },
            v6: cfg.enable_ipv6.then_some(FamilyRules { rules: self.b.v6 }),
            warnings: self.warnings,
        }
    }

    /// Sluice extension (`TPROXY_MARK_RETURN`, off by default): the first rule of nat
    /// `ISTIO_OUTPUT`. In TPROXY mode the sidecar reaches its app with an `original_src`
    /// socket: uid 1337, out on `lo`, from the client's address, carrying the TPROXY mark.
    /// Istio's owner rules below would send it to `ISTIO_IN_REDIRECT`, back to the inbound
    /// port (istio/istio#23369). Only such sockets carry the mark, so returning it is enough.
    fn tproxy_mark_return(&mut self) {
        if !self.cfg.tproxy_mark_return {
            return;
        }
        if !self.tproxy() {
            self.warnings.push(
                "TPROXY_MARK_RETURN is set, but the interception mode is not TPROXY: ignored"
                    .into(),
            );
            return;
        }
        self.b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            args![
                "-o",
                "lo",
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                self.cfg.tproxy_mark,
                "-j",
                "RETURN"
            ],
        );
    }

    fn exclude_interfaces(&mut self) {
        let mut tables = vec![Table::Nat];
        if self.tproxy() {
            tables.push(Table::Mangle);
        }
        for table in tables {
            for iface in &self.cfg.exclude_interfaces {
                self.b
                    .append(table, "PREROUTING", args!["-i", iface, "-j", "RETURN"]);
                self.b
                    .append(table, "OUTPUT", args!["-o", iface, "-j", "RETURN"]);
            }
        }
    }

    fn inbound(&mut self) {
        let cfg = self.cfg;
        if cfg.inbound_ports == InboundPorts::None {
            return;
        }
        let mark = cfg.tproxy_mark;
        let table = if self.tproxy() {
            // Marked packets are routed to loopback (policy routing), where TPROXY hands
            // them to the inbound capture port.
            self.b.append(
                Table::Mangle,
                ISTIO_DIVERT,
                args!["-j", "MARK", "--set-mark", mark],
            );
            self.b
                .append(Table::Mangle, ISTIO_DIVERT, args!["-j", "ACCEPT"]);
            self.b.append_each(Table::Mangle, ISTIO_TPROXY, |f| {
                args![
                    "!",
                    "-d",
                    loopback(cfg, f),
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--tproxy-mark",
                    format!("{mark}/0xffffffff"),
                    "--on-port",
                    cfg.inbound_capture_port
                ]
            });
            Table::Mangle
        } else {
            Table::Nat
        };
        self.b
            .append(table, "PREROUTING", args!["-p", "tcp", "-j", ISTIO_INBOUND]);
        let established = [
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            ISTIO_DIVERT,
        ];
        match &cfg.inbound_ports {
            InboundPorts::None => {}
            InboundPorts::All => {
                for p in &cfg.inbound_ports_exclude {
                    self.b.append(
                        table,
                        ISTIO_INBOUND,
                        args!["-p", "tcp", "--dport", p, "-j", "RETURN"],
                    );
                }
                if self.tproxy() {
                    let mut spec = args!["-p", "tcp"];
                    spec.extend(established.iter().map(|s| s.to_string()));
                    self.b.append(Table::Mangle, ISTIO_INBOUND, spec);
                    self.b.append(
                        Table::Mangle,
                        ISTIO_INBOUND,
                        args!["-p", "tcp", "-j", ISTIO_TPROXY],
                    );
                } else {
                    self.b.append(
                        Table::Nat,
                        ISTIO_INBOUND,
                        args!["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
            InboundPorts::Only(ports) => {
                for p in ports {
                    if self.tproxy() {
                        let mut spec = args!["-p", "tcp", "--dport", p];
                        spec.extend(established.iter().map(|s| s.to_string()));
                        self.b.append(Table::Mangle, ISTIO_INBOUND, spec);
                        self.b.append(
                            Table::Mangle,
                            ISTIO_INBOUND,
                            args!["-p", "tcp", "--dport", p, "-j", ISTIO_TPROXY],
                        );
                    } else {
                        self.b.append(
                            Table::Nat,
                            ISTIO_INBOUND,
                            args!["-p", "tcp", "--dport", p, "-j", ISTIO_IN_REDIRECT],
                        );
                    }
                }
            }
        }
    }

    /// Per proxy UID, then per GID: send the proxy's own loopback calls to a VIP back through
    /// inbound capture, let apps talk to themselves over lo, and never capture the proxy.
    fn proxy_owner_rules(&mut self, redirect_dns: bool) {
        let cfg = self.cfg;
        let tunnel = cfg.inbound_tunnel_port;
        let keep_loopback_return = !cfg.outbound_ranges_include.has_loopback();
        let owners = cfg
            .proxy_uids
            .iter()
            .map(|u| ("--uid-owner", u))
            .chain(cfg.proxy_gids.iter().map(|g| ("--gid-owner", g)));
        for (flag, id) in owners {
            // Only the UID rule skips port 53 (Istio's behaviour; the GID rule does not).
            let skip_dns = redirect_dns && flag == "--uid-owner";
            self.b.append_each(Table::Nat, ISTIO_OUTPUT, |f| {
                let mut spec = args!["-o", "lo", "!", "-d", loopback(cfg, f), "-p", "tcp"];
                if skip_dns {
                    spec.extend(args![
                        "-m",
                        "multiport",
                        "!",
                        "--dports",
                        format!("53,{tunnel}")
                    ]);
                } else {
                    spec.extend(args!["!", "--dport", tunnel]);
                }
                spec.extend(args!["-m", "owner", flag, id, "-j", ISTIO_IN_REDIRECT]);
                spec
            });
            if keep_loopback_return {
                let spec = if redirect_dns {
                    args![
                        "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!", flag,
                        id, "-j", "RETURN"
                    ]
                } else {
                    args!["-o", "lo", "-m", "owner", "!", flag, id, "-j", "RETURN"]
                };
                self.b.append(Table::Nat, ISTIO_OUTPUT, spec);
            }
            self.b.append(
                Table::Nat,
                ISTIO_OUTPUT,
                args!["-m", "owner", flag, id, "-j", "RETURN"],
            );
        }
    }

    fn owner_groups(&mut self) {
        match &self.cfg.owner_groups {
            OwnerGroups::AllExcept(groups) => {
                for g in groups {
                    self.b.append(
                        Table::Nat,
                        ISTIO_OUTPUT,
                        args!["-m", "owner", "--gid-owner", g, "-j", "RETURN"],
                    );
                }
            }
            OwnerGroups::Only(groups) => {
                let mut spec = Vec::new();
                for g in groups {
                    spec.extend(args!["-m", "owner", "!", "--gid-owner", g]);
                }
                spec.extend(args!["-j", "RETURN"]);
                self.b.append(Table::Nat, ISTIO_OUTPUT, spec);
            }
        }
    }

    /// DNS capture to the agent (15053) and conntrack zones that keep the two UDP legs apart.
    fn dns(&mut self) {
        let cfg = self.cfg;
        let all = cfg.capture_all_dns;
        let servers = |f: Family| -> Vec<String> {
            match f {
                Family::V4 => cfg
                    .dns_servers_v4
                    .iter()
                    .map(|s| format!("{s}/32"))
                    .collect(),
                Family::V6 => cfg
                    .dns_servers_v6
                    .iter()
                    .map(|s| format!("{s}/128"))
                    .collect(),
            }
        };
        let fams = [Family::V4, Family::V6];
        let port = DNS_LISTENER_PORT;
        self.b
            .append(Table::Raw, "OUTPUT", args!["-j", ISTIO_OUTPUT_DNS]);
        for f in fams {
            if all || !servers(f).is_empty() {
                self.b
                    .append_v(f, Table::Nat, ISTIO_OUTPUT, args!["-j", ISTIO_OUTPUT_DNS]);
            }
        }
        // Note Istio's spelling: --to-ports for TCP, --to-port for UDP.
        for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
            if all {
                self.b.append(
                    Table::Nat,
                    ISTIO_OUTPUT_DNS,
                    args!["-p", proto, "--dport", "53", "-j", "REDIRECT", to, port],
                );
            } else {
                for f in fams {
                    for s in servers(f) {
                        self.b.append_v(
                            f,
                            Table::Nat,
                            ISTIO_OUTPUT_DNS,
                            args![
                                "-p", proto, "--dport", "53", "-d", s, "-j", "REDIRECT", to, port
                            ],
                        );
                    }
                }
            }
        }
        // Conntrack zones: proxy→upstream resolver in zone 1, proxy→app replies in zone 2.
        let owners = cfg
            .proxy_uids
            .iter()
            .map(|u| ("--uid-owner", u))
            .chain(cfg.proxy_gids.iter().map(|g| ("--gid-owner", g)));
        for (flag, id) in owners {
            self.b.append(
                Table::Raw,
                ISTIO_OUTPUT_DNS,
                args![
                    "-p", "udp", "--dport", "53", "-m", "owner", flag, id, "-j", "CT", "--zone",
                    "1"
                ],
            );
            self.b.append(
                Table::Raw,
                ISTIO_OUTPUT_DNS,
                args![
                    "-p", "udp", "--sport", port, "-m", "owner", flag, id, "-j", "CT", "--zone",
                    "2"
                ],
            );
        }
        if all {
            self.b
                .append(Table::Raw, "PREROUTING", args!["-j", ISTIO_INBOUND]);
            self.b.append(
                Table::Raw,
                ISTIO_OUTPUT_DNS,
                args!["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
            );
            self.b.append(
                Table::Raw,
                ISTIO_INBOUND,
                args!["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
            );
        } else {
            for f in fams {
                let list = servers(f);
                if !list.is_empty() {
                    self.b
                        .append_v(f, Table::Raw, "PREROUTING", args!["-j", ISTIO_INBOUND]);
                }
                for s in list {
                    self.b.append_v(
                        f,
                        Table::Raw,
                        ISTIO_OUTPUT_DNS,
                        args!["-p", "udp", "--dport", "53", "-d", s, "-j", "CT", "--zone", "2"],
                    );
                    self.b.append_v(
                        f,
                        Table::Raw,
                        ISTIO_INBOUND,
                        args!["-p", "udp", "--sport", "53", "-s", s, "-j", "CT", "--zone", "1"],
                    );
                }
            }
        }
    }

    fn outbound_include(&mut self, fam: Family) {
        let cfg = self.cfg;
        match &cfg.outbound_ranges_include {
            crate::config::IpRanges::All => {
                self.b
                    .append_v(fam, Table::Nat, ISTIO_OUTPUT, args!["-j", ISTIO_REDIRECT]);
                for iface in &cfg.kube_virt_interfaces {
                    self.b.insert_v(
                        fam,
                        Table::Nat,
                        "PREROUTING",
                        1,
                        args!["-i", iface, "-j", ISTIO_REDIRECT],
                    );
                }
            }
            ranges @ crate::config::IpRanges::List(_) => {
                for c in ranges.family(fam == Family::V6) {
                    for iface in &cfg.kube_virt_interfaces {
                        self.b.insert_v(
                            fam,
                            Table::Nat,
                            "PREROUTING",
                            1,
                            args!["-i", iface, "-d", c, "-j", ISTIO_REDIRECT],
                        );
                    }
                    self.b.append_v(
                        fam,
                        Table::Nat,
                        ISTIO_OUTPUT,
                        args!["-d", c, "-j", ISTIO_REDIRECT],
                    );
                }
            }
        }
    }

    /// TPROXY bookkeeping: keep the proxy's mark on the connection, and mark proxy→app traffic
    /// over lo (1338) so inbound capture does not take it again.
    fn tproxy_marks(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.tproxy_mark;
        self.b.append(
            Table::Mangle,
            "PREROUTING",
            args![
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--save-mark"
            ],
        );
        self.b.append(
            Table::Mangle,
            "OUTPUT",
            args!["-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN"],
        );
        let owners = self
            .cfg
            .proxy_uids
            .iter()
            .map(|u| ("--uid-owner", u))
            .chain(self.cfg.proxy_gids.iter().map(|g| ("--gid-owner", g)));
        for (flag, id) in owners {
            self.b.append_each(Table::Mangle, "OUTPUT", |f| {
                args![
                    "!",
                    "-d",
                    loopback(cfg, f),
                    "-p",
                    "tcp",
                    "-o",
                    "lo",
                    "-m",
                    "owner",
                    flag,
                    id,
                    "-j",
                    "MARK",
                    "--set-mark",
                    OUTBOUND_MARK
                ]
            });
        }
        self.b.append(
            Table::Mangle,
            "OUTPUT",
            args![
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--restore-mark"
            ],
        );
        self.b.insert(
            Table::Mangle,
            ISTIO_INBOUND,
            1,
            args!["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
        );
        self.b.insert_v(
            Family::V4,
            Table::Mangle,
            ISTIO_INBOUND,
            2,
            args![
                "-p",
                "tcp",
                "-s",
                "127.0.0.6/32",
                "-i",
                "lo",
                "-j",
                "RETURN"
            ],
        );
        self.b.insert_v(
            Family::V6,
            Table::Mangle,
            ISTIO_INBOUND,
            2,
            args!["-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN"],
        );
        self.b.insert(
            Table::Mangle,
            ISTIO_INBOUND,
            3,
            args![
                "-p",
                "tcp",
                "-i",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                OUTBOUND_MARK,
                "-j",
                "RETURN"
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn rules(pairs: &[(&str, &str)]) -> RuleSet {
        let mut s = Settings::default();
        s.set("ENABLE_INBOUND_IPV6", "false").unwrap();
        for (k, v) in pairs {
            s.set(k, v).unwrap();
        }
        generate(&Config::try_from(&s).unwrap())
    }

    #[test]
    fn default_payload_is_nat_only() {
        let r = rules(&[]);
        assert!(r.v6.is_none());
        let p = r.v4.restore_payload();
        assert!(
            p.starts_with("* nat\n-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n"),
            "{p}"
        );
        assert!(
            p.ends_with("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT\n"),
            "{p}"
        );
        assert_eq!(
            r.v4.tables().keys().copied().collect::<Vec<_>>(),
            vec![Table::Nat]
        );
    }

    #[test]
    fn jump_only_chains_are_created_after_chains_with_rules() {
        // ISTIO_OUTPUT has rules but is first seen as a jump target from OUTPUT; ISTIO_IN_REDIRECT
        // is created because rules hold it; with inbound "*" nothing new appears.
        let r = rules(&[("INBOUND_PORTS_INCLUDE", "*")]);
        let chains = r.v4.chains();
        assert_eq!(
            chains[&Table::Nat],
            vec![
                "ISTIO_INBOUND",
                "ISTIO_REDIRECT",
                "ISTIO_IN_REDIRECT",
                "ISTIO_OUTPUT"
            ]
        );
    }

    #[test]
    fn dns_without_servers_is_disabled_with_warning() {
        let r = rules(&[("REDIRECT_DNS", "true")]);
        assert_eq!(r.warnings.len(), 1);
        assert!(!r.v4.restore_payload().contains("ISTIO_OUTPUT_DNS"));
        let r = rules(&[("REDIRECT_DNS", "true"), ("CAPTURE_ALL_DNS", "true")]);
        let p = r.v4.restore_payload();
        assert!(
            p.contains("-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053"),
            "{p}"
        );
        assert!(
            p.contains("-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1"),
            "{p}"
        );
    }

    #[test]
    fn outbound_port_exclusions_come_first() {
        let r = rules(&[("OUTBOUND_PORTS_EXCLUDE", "25")]);
        let t = &r.v4.tables()[&Table::Nat];
        let i = t
            .iter()
            .position(|l| l == "-A OUTPUT -j ISTIO_OUTPUT")
            .unwrap();
        assert_eq!(t[i + 1], "-A ISTIO_OUTPUT -p tcp --dport 25 -j RETURN");
        assert_eq!(t[i + 2], "-A ISTIO_OUTPUT -p udp --dport 25 -j RETURN");
    }

    #[test]
    fn inbound_wildcard_with_exclusions() {
        let r = rules(&[
            ("INBOUND_PORTS_INCLUDE", "*"),
            ("INBOUND_PORTS_EXCLUDE", "22,9090"),
        ]);
        let p = r.v4.restore_payload();
        assert!(p.contains(
            "-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n-A ISTIO_INBOUND -p tcp --dport 9090 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"
        ), "{p}");
    }

    /// The nat ISTIO_OUTPUT rules of one family's payload, in order.
    fn nat_output(f: &FamilyRules) -> Vec<String> {
        f.tables()[&Table::Nat]
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT ") || l.starts_with("-I ISTIO_OUTPUT "))
            .cloned()
            .collect()
    }

    #[test]
    fn tproxy_mark_return_is_off_by_default() {
        let tproxy = [
            ("INBOUND_INTERCEPTION_MODE", "TPROXY"),
            ("INBOUND_PORTS_INCLUDE", "*"),
            ("ENABLE_INBOUND_IPV6", "true"),
        ];
        let off = rules(&tproxy);
        let explicit_off = rules(&[&tproxy[..], &[("TPROXY_MARK_RETURN", "false")]].concat());
        assert_eq!(off, explicit_off);
        for (_, f) in off.families() {
            assert!(!f.restore_payload().contains("-o lo -p tcp -m mark"));
        }
    }

    #[test]
    fn tproxy_mark_return_comes_first_in_nat_istio_output() {
        let base = [
            ("INBOUND_INTERCEPTION_MODE", "TPROXY"),
            ("INBOUND_PORTS_INCLUDE", "*"),
            ("INBOUND_TPROXY_MARK", "4242"),
            ("OUTBOUND_PORTS_EXCLUDE", "25"),
            ("REDIRECT_DNS", "true"),
            ("CAPTURE_ALL_DNS", "true"),
            ("ENABLE_INBOUND_IPV6", "true"),
        ];
        let r = rules(&[&base[..], &[("TPROXY_MARK_RETURN", "true")]].concat());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r.v6.is_some());
        let rule = "-A ISTIO_OUTPUT -o lo -p tcp -m mark --mark 4242 -j RETURN";
        for (_, f) in r.families() {
            let p = f.restore_payload();
            assert!(
                p.contains(&format!(
                    "-A OUTPUT -j ISTIO_OUTPUT\n{rule}\n-A ISTIO_OUTPUT -p tcp --dport 25 -j RETURN\n"
                )),
                "{p}"
            );
            assert_eq!(nat_output(f)[0], rule);
            assert_eq!(p.matches(rule).count(), 1, "{p}");
        }
        // Apart from that one rule per family, the output is the default one.
        let mut without = r.clone();
        for f in [&mut without.v4, without.v6.as_mut().unwrap()] {
            f.rules.retain(|r| r.restore_line() != rule);
        }
        assert_eq!(without, rules(&base));
    }

    #[test]
    fn tproxy_mark_return_without_tproxy_is_ignored_with_a_warning() {
        let r = rules(&[
            ("INBOUND_PORTS_INCLUDE", "*"),
            ("TPROXY_MARK_RETURN", "true"),
        ]);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("TPROXY_MARK_RETURN"));
        let mut plain = rules(&[("INBOUND_PORTS_INCLUDE", "*")]);
        plain.warnings = r.warnings.clone();
        assert_eq!(r, plain, "REDIRECT output unchanged");
    }

    #[test]
    fn owner_groups_only_with_empty_list_returns_everything() {
        let r = rules(&[("OUTBOUND_OWNER_GROUPS_INCLUDE", "")]);
        assert!(r
            .v4
            .restore_payload()
            .contains("-A ISTIO_OUTPUT -j RETURN\n"));
    }
}
