//! Pure rule generation: [`Config`] → [`RuleSet`] → iptables-restore payloads.
//!
//! This module owns *which* rules Istio's sidecar capture needs and in what order; it does no
//! I/O. The order of `generate` follows istio-iptables' `capture/run.go` step by step, because
//! order is semantics in iptables and because the conformance goldens compare text.
//!
//! Rendering follows istio-iptables' restore builder: per family, tables in alphabetical order
//! (filter, mangle, nat, raw; empty tables omitted), each opening with `-N` for every non-built-in
//! chain in first-use order (chains only jumped to come after chains with rules), then the
//! rules in the order they were added, then `COMMIT`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

mod capture;
pub use capture::generate;

pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
pub const ISTIO_DROP: &str = "ISTIO_DROP";

/// Chains and targets iptables provides; never created with `-N`.
pub const BUILTIN_CHAINS_AND_TARGETS: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "RETURN",
    "DROP",
];

/// Whether `chain` is an iptables built-in (and so must not be created or deleted).
pub fn is_builtin(chain: &str) -> bool {
    BUILTIN_CHAINS_AND_TARGETS.contains(&chain)
}

/// Address family; selects `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// iptables table; `Ord` is alphabetical, the order payloads list them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Mangle,
    Nat,
    Raw,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Filter, Table::Mangle, Table::Nat, Table::Raw];

    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    pub fn from_name(s: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule: appended (`-A`) or inserted at a 1-based position (`-I`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub insert_at: Option<u32>,
    /// Match and target arguments, e.g. `["-p", "tcp", "-j", "ISTIO_INBOUND"]`.
    pub spec: Vec<String>,
}

impl Rule {
    /// The payload line: `-A CHAIN spec…` or `-I CHAIN N spec…`.
    pub fn restore_line(&self) -> String {
        let head = match self.insert_at {
            None => format!("-A {}", self.chain),
            Some(n) => format!("-I {} {}", self.chain, n),
        };
        std::iter::once(head)
            .chain(self.spec.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The chain this rule jumps to, when `-j X` ends the rule.
    pub fn jump_target(&self) -> Option<&str> {
        match self.spec.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }
}

/// The rules of one family, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyRules {
    pub rules: Vec<Rule>,
}

impl FamilyRules {
    /// Per table, the payload lines (`-N …` then rules), tables with no lines omitted.
    pub fn tables(&self) -> BTreeMap<Table, Vec<String>> {
        let mut out: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        for (table, chains) in self.chains() {
            out.entry(table)
                .or_default()
                .extend(chains.into_iter().map(|c| format!("-N {c}")));
        }
        for r in &self.rules {
            out.entry(r.table).or_default().push(r.restore_line());
        }
        out
    }

    /// Per table, the non-built-in chains to create, in istio-iptables' order: chains holding
    /// rules in first-use order, then chains that are only jumped to.
    pub fn chains(&self) -> BTreeMap<Table, Vec<String>> {
        let mut seen: BTreeSet<(Table, &str)> = BTreeSet::new();
        let mut out: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        let candidates = self
            .rules
            .iter()
            .map(|r| (r.table, r.chain.as_str()))
            .chain(
                self.rules
                    .iter()
                    .filter_map(|r| r.jump_target().map(|t| (r.table, t))),
            );
        for (table, chain) in candidates {
            if seen.insert((table, chain)) && !is_builtin(chain) {
                out.entry(table).or_default().push(chain.to_string());
            }
        }
        out
    }

    /// The iptables-restore payload (for `--noflush`), exactly as istio-iptables writes it.
    pub fn restore_payload(&self) -> String {
        let mut b = String::new();
        for (table, lines) in self.tables() {
            b.push_str(&format!("* {table}\n"));
            for l in lines {
                b.push_str(&l);
                b.push('\n');
            }
            b.push_str("COMMIT\n");
        }
        b
    }
}

/// Everything to install: IPv4 always, IPv6 when enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub v4: FamilyRules,
    pub v6: Option<FamilyRules>,
    /// Settings that were ignored, for the operator (e.g. DNS capture with no DNS servers).
    pub warnings: Vec<String>,
}

impl RuleSet {
    pub fn families(&self) -> impl Iterator<Item = (Family, &FamilyRules)> {
        std::iter::once((Family::V4, &self.v4)).chain(self.v6.iter().map(|r| (Family::V6, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_lines() {
        let r = Rule {
            table: Table::Nat,
            chain: "PREROUTING".into(),
            insert_at: Some(1),
            spec: ["-i", "eth0", "-j", "RETURN"].map(String::from).to_vec(),
        };
        assert_eq!(r.restore_line(), "-I PREROUTING 1 -i eth0 -j RETURN");
        assert_eq!(r.jump_target(), Some("RETURN"));
    }
}
