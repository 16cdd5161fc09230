//! The `--native-nftables` backend: the same [`RuleSet`] as native nftables, applied with
//! `nft -f -` in one transaction.
//!
//! Layout follows Istio's native nftables mode: `inet` tables `istio-proxy-nat`,
//! `istio-proxy-mangle` and `istio-proxy-raw`; built-in chains become base chains
//! (`prerouting`/`output`, hooked at nat -100, mangle -150, raw -300); `ISTIO_FOO` becomes
//! `istio-foo`. Each iptables rule is translated match by match. The IPv4 and IPv6 rule lists
//! are merged per chain (a longest-common-subsequence merge): a rule both families share
//! becomes one `inet` rule; a rule only one family has and that names no address is pinned
//! with `meta nfproto`.
//!
//! Every run deletes and recreates its tables inside the same transaction, so the result is
//! idempotent and a failure changes nothing. Unlike the iptables backend there are no
//! goldens for this output; it is tested by translation unit tests and in network namespaces.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::apply::{Output, Runner};
use crate::rules::{Family, FamilyRules, Rule, RuleSet, Table};

/// Our tables, in the order scripts list them.
pub const TABLES: [(Table, &str); 3] = [
    (Table::Nat, "istio-proxy-nat"),
    (Table::Mangle, "istio-proxy-mangle"),
    (Table::Raw, "istio-proxy-raw"),
];

#[derive(Debug, Error)]
pub enum NftError {
    #[error("cannot express `{rule}` in nftables: {reason}")]
    Translate { rule: String, reason: String },
    #[error("cannot run nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft -f failed{}: {stderr}", at.as_ref().map(|a| format!(" at {a}")).unwrap_or_default())]
    Apply { at: Option<String>, stderr: String },
    #[error("verification failed after applying: {}", .0.join("; "))]
    Verify(Vec<String>),
}

/// `ISTIO_OUTPUT_DNS` → `istio-output-dns`, `PREROUTING` → `prerouting`.
pub fn chain_name(c: &str) -> String {
    c.to_ascii_lowercase().replace('_', "-")
}

/// The base-chain declaration for a built-in chain.
fn hook(table: Table, chain: &str) -> Option<&'static str> {
    Some(match (table, chain) {
        (Table::Nat, "PREROUTING") => "{ type nat hook prerouting priority -100 ; }",
        (Table::Nat, "OUTPUT") => "{ type nat hook output priority -100 ; }",
        (Table::Mangle, "PREROUTING") => "{ type filter hook prerouting priority -150 ; }",
        (Table::Mangle, "OUTPUT") => "{ type route hook output priority -150 ; }",
        (Table::Raw, "PREROUTING") => "{ type filter hook prerouting priority -300 ; }",
        (Table::Raw, "OUTPUT") => "{ type filter hook output priority -300 ; }",
        _ => return None,
    })
}

/// One translated rule; `addressed` when it matches an IP address (and so a family).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NftRule {
    text: String,
    addressed: bool,
}

/// Translate one iptables rule spec (matches and target) for `fam`.
fn translate(fam: Family, rule: &Rule) -> Result<NftRule, NftError> {
    let err = |reason: &str| NftError::Translate {
        rule: rule.restore_line(),
        reason: reason.to_string(),
    };
    let ip = if fam == Family::V4 { "ip" } else { "ip6" };
    let spec = &rule.spec;
    let mut out: Vec<String> = Vec::new();
    let (mut neg, mut proto, mut module, mut addressed) = (false, None::<&str>, "", false);
    let mut i = 0;
    let next = |i: &mut usize| -> Result<&str, NftError> {
        *i += 1;
        spec.get(*i)
            .map(String::as_str)
            .ok_or_else(|| err("missing value"))
    };
    while i < spec.len() {
        let op = if neg { "!= " } else { "" };
        let tok = spec[i].as_str();
        match tok {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-p" => {
                let p = next(&mut i)?;
                proto = Some(p);
                out.push(format!("meta l4proto {op}{p}"));
            }
            "-d" | "-s" => {
                let dir = if tok == "-d" { "daddr" } else { "saddr" };
                out.push(format!("{ip} {dir} {op}{}", next(&mut i)?));
                addressed = true;
            }
            "-o" => out.push(format!("oifname {op}\"{}\"", next(&mut i)?)),
            "-i" => out.push(format!("iifname {op}\"{}\"", next(&mut i)?)),
            "-m" => module = next(&mut i)?,
            "--dport" | "--sport" | "--dports" => {
                let p = proto.ok_or_else(|| err("port match without -p"))?;
                let dir = if tok == "--sport" { "sport" } else { "dport" };
                let v = next(&mut i)?;
                let v = if tok == "--dports" {
                    format!("{{ {} }}", v.split(',').collect::<Vec<_>>().join(", "))
                } else {
                    v.to_string()
                };
                out.push(format!("{p} {dir} {op}{v}"));
            }
            "--uid-owner" => out.push(format!("meta skuid {op}{}", next(&mut i)?)),
            "--gid-owner" => out.push(format!("meta skgid {op}{}", next(&mut i)?)),
            "--ctstate" => out.push(format!(
                "ct state {op}{}",
                next(&mut i)?.to_ascii_lowercase()
            )),
            "--mark" if module == "mark" => out.push(format!("meta mark {op}{}", next(&mut i)?)),
            "--mark" if module == "connmark" => out.push(format!("ct mark {op}{}", next(&mut i)?)),
            "-j" => {
                let target = next(&mut i)?;
                let rest: Vec<&str> = spec[i + 1..].iter().map(String::as_str).collect();
                let verdict = match (target, rest.as_slice()) {
                    ("RETURN", []) => "return".to_string(),
                    ("ACCEPT", []) => "accept".to_string(),
                    ("DROP", []) => "drop".to_string(),
                    ("REDIRECT", ["--to-ports" | "--to-port", p]) => format!("redirect to :{p}"),
                    ("MARK", ["--set-mark", m]) => format!("meta mark set {m}"),
                    ("CONNMARK", ["--save-mark"]) => "ct mark set meta mark".to_string(),
                    ("CONNMARK", ["--restore-mark"]) => "meta mark set ct mark".to_string(),
                    ("CT", ["--zone", z]) => format!("ct zone set {z}"),
                    ("TPROXY", ["--tproxy-mark", m, "--on-port", p]) => {
                        let mark = m
                            .strip_suffix("/0xffffffff")
                            .ok_or_else(|| err("masked TPROXY mark"))?;
                        format!("tproxy {ip} to :{p} meta mark set {mark} accept")
                    }
                    (chain, []) if chain.starts_with("ISTIO_") => {
                        format!("jump {}", chain_name(chain))
                    }
                    _ => return Err(err("unsupported target")),
                };
                out.push("counter".into());
                out.push(verdict);
                return Ok(NftRule {
                    text: out.join(" "),
                    addressed,
                });
            }
            _ => return Err(err(&format!("unsupported option {tok}"))),
        }
        neg = false;
        i += 1;
    }
    Err(err("no target"))
}

/// Final rule order per (table, chain) for one family, applying `-I` positions.
fn chain_contents(
    fam: Family,
    rules: &FamilyRules,
) -> Result<BTreeMap<(Table, String), Vec<NftRule>>, NftError> {
    let mut out: BTreeMap<(Table, String), Vec<NftRule>> = BTreeMap::new();
    for r in &rules.rules {
        let t = translate(fam, r)?;
        let list = out.entry((r.table, r.chain.clone())).or_default();
        match r.insert_at {
            None => list.push(t),
            Some(p) => list.insert((p as usize).saturating_sub(1).min(list.len()), t),
        }
    }
    Ok(out)
}

/// Merge two sequences keeping both orders; shared items (by LCS) appear once.
fn merge<'a>(a: &'a [NftRule], b: &'a [NftRule]) -> Vec<(&'a NftRule, bool, bool)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((&a[i], true, true));
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push((&a[i], true, false));
            i += 1;
        } else {
            out.push((&b[j], false, true));
            j += 1;
        }
    }
    out
}

/// Lines that remove our tables (if present) inside a transaction.
fn delete_tables() -> String {
    TABLES
        .iter()
        .map(|(_, n)| format!("add table inet {n}\ndelete table inet {n}\n"))
        .collect()
}

/// The full `nft -f` script installing `rules` (replacing earlier Istio tables).
pub fn script(rules: &RuleSet) -> Result<String, NftError> {
    let empty = FamilyRules::default();
    let v4 = chain_contents(Family::V4, &rules.v4)?;
    let v6 = chain_contents(Family::V6, rules.v6.as_ref().unwrap_or(&empty))?;
    if rules
        .families()
        .any(|(_, f)| f.rules.iter().any(|r| r.table == Table::Filter))
    {
        return Err(NftError::Translate {
            rule: "filter table".into(),
            reason: "no native nftables table for filter".into(),
        });
    }
    let mut s = delete_tables();
    for (table, tname) in TABLES {
        // Chain order: base chains, then user chains in first-use order (either family).
        let mut chains: Vec<String> = Vec::new();
        for fam in rules.families().map(|(_, f)| f) {
            for r in fam.rules.iter().filter(|r| r.table == table) {
                if !chains.contains(&r.chain) {
                    chains.push(r.chain.clone());
                }
            }
            for c in fam.chains().get(&table).into_iter().flatten() {
                if !chains.contains(c) {
                    chains.push(c.clone());
                }
            }
        }
        if chains.is_empty() {
            continue;
        }
        chains.sort_by_key(|c| hook(table, c).is_none());
        s.push_str(&format!("add table inet {tname}\n"));
        for c in &chains {
            let decl = hook(table, c).map(|h| format!(" {h}")).unwrap_or_default();
            s.push_str(&format!("add chain inet {tname} {}{decl}\n", chain_name(c)));
        }
        let none = Vec::new();
        for c in &chains {
            let key = (table, c.clone());
            let (a, b) = (v4.get(&key).unwrap_or(&none), v6.get(&key).unwrap_or(&none));
            for (r, in4, in6) in merge(a, b) {
                let pin = match (in4, in6, r.addressed) {
                    (true, false, false) => "meta nfproto ipv4 ",
                    (false, true, false) => "meta nfproto ipv6 ",
                    _ => "",
                };
                s.push_str(&format!(
                    "add rule inet {tname} {} {pin}{}\n",
                    chain_name(c),
                    r.text
                ));
            }
        }
    }
    Ok(s)
}

/// Rules per chain in `nft list table` output.
pub fn count_rules(listing: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut chain: Option<String> = None;
    for l in listing.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            out.insert(name.clone(), 0);
            chain = Some(name);
        } else if l == "}" {
            chain = None;
        } else if let Some(c) = &chain {
            if !l.is_empty() && !l.starts_with("type ") && !l.starts_with("policy ") {
                *out.get_mut(c).expect("chain") += 1;
            }
        }
    }
    out
}

/// Where nft says the script failed: `/dev/stdin:7:1-20: Error: …` → `line 7: <text>`.
fn describe_failure(script: &str, stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains("Error:"))?;
    let n: usize = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(format!(
        "line {n}: `{}`",
        script.lines().nth(n.checked_sub(1)?)?
    ))
}

/// Applies scripts with `nft -f -` through a [`Runner`].
pub struct NftInstaller<'r, R: Runner> {
    runner: &'r mut R,
    pub log: Vec<String>,
}

impl<'r, R: Runner> NftInstaller<'r, R> {
    pub fn new(runner: &'r mut R) -> Self {
        NftInstaller {
            runner,
            log: Vec::new(),
        }
    }

    fn nft(&mut self, args: &[&str], stdin: Option<&str>) -> Result<Output, NftError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.runner
            .run("nft", &args, stdin)
            .map_err(NftError::Spawn)
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let out = self.nft(&["-f", "-"], Some(script))?;
        if out.success {
            return Ok(());
        }
        Err(NftError::Apply {
            at: describe_failure(script, &out.stderr),
            stderr: out.stderr.trim().to_string(),
        })
    }

    /// Install `rules`, then check every chain holds the planned number of rules.
    pub fn install(&mut self, rules: &RuleSet) -> Result<(), NftError> {
        let script = script(rules)?;
        self.apply(&script)?;
        let mut want: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for l in script.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["add", "chain", "inet", t, c, ..] => {
                    want.entry(t).or_default().insert(c.to_string(), 0);
                }
                ["add", "rule", "inet", t, c, ..] => {
                    *want.entry(t).or_default().entry(c.to_string()).or_default() += 1
                }
                _ => {}
            }
        }
        let mut problems = Vec::new();
        for (t, chains) in want {
            let out = self.nft(&["list", "table", "inet", t], None)?;
            if !out.success {
                problems.push(format!("table {t} missing: {}", out.stderr.trim()));
                continue;
            }
            let have = count_rules(&out.stdout);
            if have != chains {
                problems.push(format!(
                    "table {t}: chains/rule counts {have:?}, expected {chains:?}"
                ));
            }
        }
        if !problems.is_empty() {
            // One transaction put it there; one removes it.
            let _ = self.apply(&delete_tables());
            return Err(NftError::Verify(problems));
        }
        self.log.push("nftables: applied and verified".into());
        Ok(())
    }

    /// Remove our tables.
    pub fn cleanup(&mut self) -> Result<(), NftError> {
        self.apply(&delete_tables())?;
        let out = self.nft(&["list", "tables"], None)?;
        if out.stdout.contains("istio-proxy-") {
            return Err(NftError::Verify(vec![format!(
                "tables left: {}",
                out.stdout.trim()
            )]));
        }
        self.log.push("nftables: no Istio tables remain".into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};
    use crate::rules::generate;

    fn rules(pairs: &[(&str, &str)]) -> RuleSet {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set(k, v).unwrap();
        }
        generate(&Config::try_from(&s).unwrap())
    }

    fn rule(spec: &str) -> Rule {
        Rule {
            table: Table::Nat,
            chain: "ISTIO_OUTPUT".into(),
            insert_at: None,
            spec: spec.split_whitespace().map(String::from).collect(),
        }
    }

    #[test]
    fn translates_matches_and_targets() {
        let t = |fam, s: &str| translate(fam, &rule(s)).unwrap().text;
        assert_eq!(
            t(
                Family::V4,
                "-o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
            ),
            "oifname \"lo\" ip daddr != 127.0.0.1/32 meta l4proto tcp tcp dport != { 53, 15008 } meta skuid 1337 counter jump istio-in-redirect"
        );
        assert_eq!(
            t(Family::V6, "! -d ::1/128 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006"),
            "ip6 daddr != ::1/128 meta l4proto tcp counter tproxy ip6 to :15006 meta mark set 1337 accept"
        );
        assert_eq!(
            t(
                Family::V4,
                "-p udp --sport 15053 -m owner --gid-owner 7 -j CT --zone 2"
            ),
            "meta l4proto udp udp sport 15053 meta skgid 7 counter ct zone set 2"
        );
        assert_eq!(
            t(Family::V4, "-p tcp -i lo -m mark ! --mark 1338 -j RETURN"),
            "meta l4proto tcp iifname \"lo\" meta mark != 1338 counter return"
        );
        assert_eq!(
            t(
                Family::V4,
                "-p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark"
            ),
            "meta l4proto tcp ct mark 1337 counter meta mark set ct mark"
        );
        assert!(translate(Family::V4, &rule("-p tcp --dport 1 -j LOG")).is_err());
    }

    #[test]
    fn families_merge_into_inet_rules() {
        let s = script(&rules(&[
            ("ENABLE_INBOUND_IPV6", "true"),
            ("REDIRECT_DNS", "true"),
            ("DNS_SERVERS_V4", "10.0.0.10"),
        ]))
        .unwrap();
        // Shared rule once, family-specific ones per family, v4-only jump pinned to IPv4.
        assert_eq!(
            s.matches("istio-redirect meta l4proto tcp counter redirect to :15001")
                .count(),
            1
        );
        assert!(
            s.contains("istio-output oifname \"lo\" ip saddr 127.0.0.6/32 counter return\n"),
            "{s}"
        );
        assert!(
            s.contains("istio-output oifname \"lo\" ip6 saddr ::6/128 counter return\n"),
            "{s}"
        );
        assert!(
            s.contains("istio-output meta nfproto ipv4 counter jump istio-output-dns\n"),
            "{s}"
        );
        assert!(
            s.starts_with("add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n")
        );
        assert!(s.contains(
            "add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }"
        ));
    }

    #[test]
    fn ipv4_only_pins_unaddressed_rules() {
        let s = script(&rules(&[("ENABLE_INBOUND_IPV6", "false")])).unwrap();
        assert!(
            s.contains(
                "istio-redirect meta nfproto ipv4 meta l4proto tcp counter redirect to :15001"
            ),
            "{s}"
        );
        assert!(!s.contains("ip6 "), "{s}");
    }

    #[test]
    fn inserts_land_in_final_order() {
        let s = script(&rules(&[
            ("ENABLE_INBOUND_IPV6", "false"),
            ("INBOUND_INTERCEPTION_MODE", "TPROXY"),
            ("INBOUND_PORTS_INCLUDE", "*"),
        ]))
        .unwrap();
        let inbound: Vec<&str> = s
            .lines()
            .filter(|l| l.contains("istio-proxy-mangle istio-inbound "))
            .collect();
        assert!(
            inbound[0].contains("meta mark 1337 counter return"),
            "{inbound:?}"
        );
        assert!(inbound[1].contains("ip saddr 127.0.0.6/32"), "{inbound:?}");
        assert!(inbound[2].contains("meta mark != 1338"), "{inbound:?}");
        assert!(
            inbound[3].contains("ct state related,established"),
            "{inbound:?}"
        );
    }

    #[test]
    fn tproxy_mark_return_translates_first_in_istio_output() {
        assert_eq!(
            translate(
                Family::V6,
                &rule("-o lo -p tcp -m mark --mark 1337 -j RETURN")
            )
            .unwrap(),
            NftRule {
                text: "oifname \"lo\" meta l4proto tcp meta mark 1337 counter return".into(),
                addressed: false,
            }
        );
        let tproxy = [
            ("ENABLE_INBOUND_IPV6", "true"),
            ("INBOUND_INTERCEPTION_MODE", "TPROXY"),
            ("INBOUND_PORTS_INCLUDE", "*"),
            ("INBOUND_TPROXY_MARK", "4242"),
        ];
        let s = script(&rules(
            &[&tproxy[..], &[("TPROXY_MARK_RETURN", "true")]].concat(),
        ))
        .unwrap();
        let output: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with("add rule inet istio-proxy-nat istio-output "))
            .collect();
        // Both families share it: one inet rule, not pinned to a family.
        assert_eq!(
            output[0],
            "add rule inet istio-proxy-nat istio-output oifname \"lo\" meta l4proto tcp meta mark 4242 counter return",
            "{s}"
        );
        let default = script(&rules(&tproxy)).unwrap();
        assert!(!default.contains("istio-output oifname \"lo\" meta l4proto tcp meta mark"));
        // Exactly one line more than without the setting.
        let extra: Vec<&str> = s
            .lines()
            .filter(|l| !default.lines().any(|d| d == *l))
            .collect();
        assert_eq!(extra, [output[0]]);
        assert_eq!(s.lines().count(), default.lines().count() + 1);
    }

    #[test]
    fn counts_rules_in_listing() {
        let listing = "table inet istio-proxy-nat {\n\tchain output {\n\t\ttype nat hook output priority dstnat; policy accept;\n\t\tcounter packets 0 bytes 0 jump istio-output\n\t}\n\n\tchain istio-output {\n\t}\n}\n";
        let c = count_rules(listing);
        assert_eq!(c["output"], 1);
        assert_eq!(c["istio-output"], 0);
    }

    #[test]
    fn failure_line_from_nft_stderr() {
        let script = "add table inet x\nadd rule inet x y bogus\n";
        assert_eq!(
            describe_failure(script, "/dev/stdin:2:18-22: Error: syntax error\n").as_deref(),
            Some("line 2: `add rule inet x y bogus`")
        );
    }
}
