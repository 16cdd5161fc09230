//! Installing a [`RuleSet`] in the current network namespace, and removing it.
//!
//! This module owns every call to iptables binaries. Per family it:
//! 1. snapshots the state with `iptables-save`;
//! 2. builds one `iptables-restore --noflush` payload whose tables first remove earlier Istio
//!    state (jumps to `ISTIO_*` chains, our own rules in built-in chains, then `-F`/`-X` of every
//!    `ISTIO_*` chain) and then add the new chains and rules, so each table changes in one commit
//!    and a second run gives the same state;
//! 3. verifies with `iptables-save` and `iptables -C` that every chain holds exactly the planned
//!    rules.
//!
//! On a clean namespace the payload is exactly [`FamilyRules::restore_payload`], which is what
//! `--dry-run` prints. iptables-restore commits table by table (legacy and nft alike), so a
//! failure in a later table or family is undone by restoring the snapshots of every table
//! touched; the error names the failing payload line.
//!
//! Commands go through [`Runner`] so the sequencing is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::config::Backend;
use crate::rules::{is_builtin, Family, FamilyRules, Rule, RuleSet, Table};

/// Result of running one command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs external commands; [`SystemRunner`] for real, fakes in tests.
pub trait Runner {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> std::io::Result<Output>;
}

/// Runs commands with `std::process`.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> std::io::Result<Output> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            // Dropping the handle closes stdin so the tool sees EOF.
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Why installing or removing rules failed.
#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} ({family}) failed: {stderr}")]
    Save {
        program: String,
        family: &'static str,
        stderr: String,
    },
    #[error("{program} ({family}) failed{}: {stderr}", at.as_ref().map(|a| format!(" at {a}")).unwrap_or_default())]
    Restore {
        program: String,
        family: &'static str,
        /// `line N (table T): <rule>` when the tool said which line.
        at: Option<String>,
        stderr: String,
    },
    #[error("verification ({family}) failed after applying: {}", problems.join("; "))]
    Verify {
        family: &'static str,
        problems: Vec<String>,
    },
    #[error("{cause}; rolling back ALSO failed, state may be partial: {rollback}")]
    RollbackFailed {
        cause: Box<ApplyError>,
        rollback: Box<ApplyError>,
    },
}

/// The binaries for one family and backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub family: Family,
    pub iptables: String,
    pub save: String,
    pub restore: String,
}

impl Tools {
    pub fn new(backend: Backend, family: Family) -> Tools {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match backend {
            Backend::Default => String::new(),
            Backend::Legacy => "-legacy".into(),
            Backend::Nft => "-nft".into(),
        };
        Tools {
            family,
            iptables: format!("{base}{variant}"),
            save: format!("{base}{variant}-save"),
            restore: format!("{base}{variant}-restore"),
        }
    }
}

/// One table as `iptables-save` printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// The section from `*table` to `COMMIT`, for rollback.
    pub section: String,
    /// Every chain declared (`:NAME ...`), in order.
    pub chains: Vec<String>,
    /// `(chain, line)` for each `-A` line.
    pub rules: Vec<(String, String)>,
}

impl SavedTable {
    pub fn istio_chains(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with("ISTIO_"))
    }

    /// Rules outside `ISTIO_*` chains that jump to one (Istio's "jump" leftovers).
    pub fn istio_jumps(&self) -> impl Iterator<Item = &(String, String)> {
        self.rules.iter().filter(|(chain, line)| {
            !chain.starts_with("ISTIO_")
                && line
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with("ISTIO_"))
        })
    }

    pub fn rule_count(&self, chain: &str) -> usize {
        self.rules.iter().filter(|(c, _)| c == chain).count()
    }
}

/// Parse `iptables-save` output into tables (unknown tables such as `security` are kept too,
/// under no [`Table`] and so ignored).
pub fn parse_save(text: &str) -> BTreeMap<Table, SavedTable> {
    let mut out = BTreeMap::new();
    let mut current: Option<(Option<Table>, SavedTable)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some((Table::from_name(name.trim()), SavedTable::default()));
        }
        let Some((_, st)) = current.as_mut() else {
            continue;
        };
        if !line.starts_with('#') {
            st.section.push_str(line);
            st.section.push('\n');
        }
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                st.chains.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            st.rules.push((chain, line.to_string()));
        } else if line == "COMMIT" {
            let (table, st) = current.take().expect("inside a table");
            if let Some(t) = table {
                out.insert(t, st);
            }
        }
    }
    out
}

/// The number in "line N failed" / "Error occurred at line: N" / "line N: ..." from
/// iptables-restore's stderr.
pub fn failing_line(stderr: &str) -> Option<usize> {
    let mut rest = stderr;
    while let Some(i) = rest.find("line") {
        rest = &rest[i + 4..];
        let digits: String = rest
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            return Some(n);
        }
    }
    None
}

/// Describe payload line `n` (1-based): `line N (table T): <text>`.
fn describe_line(payload: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = payload.lines().collect();
    let text = lines.get(n.checked_sub(1)?)?;
    let table = lines[..n]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("* ").or_else(|| l.strip_prefix('*')))
        .unwrap_or("?");
    Some(format!("line {n} (table {table}): `{text}`"))
}

/// Rules to remove before installing (or when cleaning up), per table, in a safe order:
/// deletions of rules in built-in chains, then flush of every `ISTIO_*` chain, then delete.
pub fn cleanup_lines(
    state: &BTreeMap<Table, SavedTable>,
    existing_own_rules: &[&Rule],
) -> BTreeMap<Table, Vec<String>> {
    let mut out: BTreeMap<Table, Vec<String>> = BTreeMap::new();
    for (table, st) in state {
        let lines = out.entry(*table).or_default();
        for (_, line) in st.istio_jumps() {
            lines.push(format!("-D {}", &line[3..]));
        }
    }
    let mut seen = BTreeSet::new();
    for r in existing_own_rules {
        let line = format!("-D {} {}", r.chain, r.spec.join(" "));
        if seen.insert((r.table, line.clone())) {
            out.entry(r.table).or_default().push(line);
        }
    }
    for (table, st) in state {
        let lines = out.entry(*table).or_default();
        lines.extend(st.istio_chains().map(|c| format!("-F {c}")));
        lines.extend(st.istio_chains().map(|c| format!("-X {c}")));
    }
    out.retain(|_, l| !l.is_empty());
    out
}

/// One payload: per table (alphabetical), cleanup lines then the new chains and rules.
pub fn combined_payload(
    cleanup: &BTreeMap<Table, Vec<String>>,
    rules: Option<&FamilyRules>,
) -> String {
    let new = rules.map(FamilyRules::tables).unwrap_or_default();
    let tables: BTreeSet<Table> = cleanup.keys().chain(new.keys()).copied().collect();
    let mut b = String::new();
    for t in tables {
        b.push_str(&format!("* {t}\n"));
        for l in cleanup
            .get(&t)
            .into_iter()
            .flatten()
            .chain(new.get(&t).into_iter().flatten())
        {
            b.push_str(l);
            b.push('\n');
        }
        b.push_str("COMMIT\n");
    }
    b
}

/// Arguments for `iptables -t T -C CHAIN spec…`.
fn check_args(r: &Rule) -> Vec<String> {
    let mut a = vec![
        "-t".into(),
        r.table.name().into(),
        "-C".into(),
        r.chain.clone(),
    ];
    a.extend(r.spec.iter().cloned());
    a
}

/// Our own rules in built-in chains that do not jump to an `ISTIO_*` chain; these are not
/// found by looking for Istio chains, so cleanup removes them by their exact spec.
fn own_builtin_rules(rules: &FamilyRules) -> Vec<&Rule> {
    rules
        .rules
        .iter()
        .filter(|r| {
            is_builtin(&r.chain) && !r.jump_target().is_some_and(|t| t.starts_with("ISTIO_"))
        })
        .collect()
}

/// What was changed in one family, for rollback and reporting.
struct Applied {
    tools: Tools,
    snapshot: BTreeMap<Table, SavedTable>,
    touched: BTreeSet<Table>,
}

/// Drives the iptables tools through a [`Runner`].
pub struct Installer<'r, R: Runner> {
    runner: &'r mut R,
    backend: Backend,
    /// Human-readable progress lines (what was removed, applied, verified).
    pub log: Vec<String>,
}

impl<'r, R: Runner> Installer<'r, R> {
    pub fn new(runner: &'r mut R, backend: Backend) -> Self {
        Installer {
            runner,
            backend,
            log: Vec::new(),
        }
    }

    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<Output, ApplyError> {
        self.runner
            .run(program, args, stdin)
            .map_err(|source| ApplyError::Spawn {
                program: program.to_string(),
                source,
            })
    }

    fn save(&mut self, tools: &Tools) -> Result<BTreeMap<Table, SavedTable>, ApplyError> {
        let out = self.run(&tools.save, &[], None)?;
        if !out.success {
            return Err(ApplyError::Save {
                program: tools.save.clone(),
                family: tools.family.name(),
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(parse_save(&out.stdout))
    }

    fn exists(&mut self, tools: &Tools, r: &Rule) -> Result<bool, ApplyError> {
        Ok(self.run(&tools.iptables, &check_args(r), None)?.success)
    }

    fn restore(&mut self, tools: &Tools, payload: &str, noflush: bool) -> Result<(), ApplyError> {
        let args: Vec<String> = if noflush {
            vec!["--noflush".into()]
        } else {
            vec![]
        };
        let out = self.run(&tools.restore, &args, Some(payload))?;
        if out.success {
            return Ok(());
        }
        Err(ApplyError::Restore {
            program: tools.restore.clone(),
            family: tools.family.name(),
            at: failing_line(&out.stderr).and_then(|n| describe_line(payload, n)),
            stderr: out.stderr.trim().to_string(),
        })
    }

    /// Remove earlier Istio state and install `rules`, all families, verified; on any failure
    /// every touched table is restored from its snapshot.
    pub fn install(&mut self, rules: &RuleSet) -> Result<(), ApplyError> {
        self.change(rules, true)
    }

    /// Remove all `ISTIO_*` chains, jumps to them, and `rules`' own built-in-chain rules.
    /// IPv6 is cleaned when `rules` has IPv6 or when ip6tables-save works.
    pub fn cleanup(&mut self, rules: &RuleSet) -> Result<(), ApplyError> {
        self.change(rules, false)
    }

    fn change(&mut self, rules: &RuleSet, install: bool) -> Result<(), ApplyError> {
        let mut plan: Vec<(Family, Option<&FamilyRules>)> = vec![(Family::V4, Some(&rules.v4))];
        match &rules.v6 {
            Some(v6) => plan.push((Family::V6, Some(v6))),
            None if !install => plan.push((Family::V6, None)),
            None => {}
        }
        let mut applied: Vec<Applied> = Vec::new();
        for (family, fam_rules) in plan {
            let tools = Tools::new(self.backend, family);
            let snapshot = match self.save(&tools) {
                Ok(s) => s,
                // Cleanup of a family we were not asked to program: skip if unavailable.
                Err(e) if !install && family == Family::V6 && rules.v6.is_none() => {
                    self.log.push(format!("skipping IPv6 cleanup: {e}"));
                    continue;
                }
                Err(e) => return Err(self.rollback(applied, e)),
            };
            let result =
                self.change_family(&tools, &snapshot, fam_rules.filter(|_| install), fam_rules);
            match result {
                Ok(touched) => applied.push(Applied {
                    tools,
                    snapshot,
                    touched,
                }),
                Err((touched, e)) => {
                    applied.push(Applied {
                        tools,
                        snapshot,
                        touched,
                    });
                    return Err(self.rollback(applied, e));
                }
            }
        }
        Ok(())
    }

    /// Returns the tables touched, also on error (for rollback).
    fn change_family(
        &mut self,
        tools: &Tools,
        snapshot: &BTreeMap<Table, SavedTable>,
        new: Option<&FamilyRules>,
        own: Option<&FamilyRules>,
    ) -> Result<BTreeSet<Table>, (BTreeSet<Table>, ApplyError)> {
        let fam = tools.family.name();
        let mut existing = Vec::new();
        for r in own.map(own_builtin_rules).unwrap_or_default() {
            // A built-in rule whose table does not exist yet cannot be there.
            if snapshot.contains_key(&r.table)
                && self.exists(tools, r).map_err(|e| (BTreeSet::new(), e))?
            {
                existing.push(r);
            }
        }
        let cleanup = cleanup_lines(snapshot, &existing);
        let payload = combined_payload(&cleanup, new);
        let touched: BTreeSet<Table> = parse_tables(&payload);
        if payload.is_empty() {
            self.log.push(format!("{fam}: nothing to do"));
            return Ok(touched);
        }
        let removed: usize = cleanup.values().map(Vec::len).sum();
        if removed > 0 {
            self.log.push(format!(
                "{fam}: removing earlier Istio state ({removed} lines)"
            ));
        }
        self.restore(tools, &payload, true)
            .map_err(|e| (touched.clone(), e))?;
        let problems = match new {
            Some(rules) => self.verify_installed(tools, rules),
            None => self.verify_clean(tools),
        }
        .map_err(|e| (touched.clone(), e))?;
        if !problems.is_empty() {
            return Err((
                touched,
                ApplyError::Verify {
                    family: fam,
                    problems,
                },
            ));
        }
        match new {
            Some(r) => self.log.push(format!(
                "{fam}: applied and verified {} rules",
                r.rules.len()
            )),
            None => self
                .log
                .push(format!("{fam}: no Istio chains or jumps remain")),
        }
        Ok(touched)
    }

    /// Every planned chain exists with exactly the planned number of rules, no other `ISTIO_*`
    /// chain exists, and `iptables -C` finds every planned rule.
    fn verify_installed(
        &mut self,
        tools: &Tools,
        rules: &FamilyRules,
    ) -> Result<Vec<String>, ApplyError> {
        let state = self.save(tools)?;
        let mut problems = Vec::new();
        let planned = rules.chains();
        for table in Table::ALL {
            let want: BTreeSet<&str> = planned
                .get(&table)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            let have: BTreeSet<&str> = state
                .get(&table)
                .map(|s| s.istio_chains().collect())
                .unwrap_or_default();
            for c in want.difference(&have) {
                problems.push(format!("chain {table}/{c} missing"));
            }
            for c in have.difference(&want) {
                problems.push(format!("unexpected chain {table}/{c}"));
            }
            for c in want.intersection(&have) {
                let expected = rules
                    .rules
                    .iter()
                    .filter(|r| r.table == table && r.chain == *c)
                    .count();
                let got = state[&table].rule_count(c);
                if got != expected {
                    problems.push(format!(
                        "chain {table}/{c} has {got} rules, expected {expected}"
                    ));
                }
            }
        }
        for r in &rules.rules {
            if !self.exists(tools, r)? {
                problems.push(format!(
                    "rule not found: -t {} {}",
                    r.table,
                    r.restore_line()
                ));
            }
        }
        Ok(problems)
    }

    fn verify_clean(&mut self, tools: &Tools) -> Result<Vec<String>, ApplyError> {
        let state = self.save(tools)?;
        let mut problems = Vec::new();
        for (table, st) in &state {
            problems.extend(
                st.istio_chains()
                    .map(|c| format!("chain {table}/{c} still present")),
            );
            problems.extend(
                st.istio_jumps()
                    .map(|(_, l)| format!("jump still present in {table}: {l}")),
            );
        }
        Ok(problems)
    }

    /// Restore every touched table of every family from its snapshot (newest first).
    fn rollback(&mut self, applied: Vec<Applied>, cause: ApplyError) -> ApplyError {
        for a in applied.into_iter().rev() {
            if a.touched.is_empty() {
                continue;
            }
            let mut payload = String::new();
            for t in &a.touched {
                match a.snapshot.get(t) {
                    Some(st) => payload.push_str(&st.section),
                    None => payload.push_str(&format!("*{t}\nCOMMIT\n")),
                }
            }
            if let Err(e) = self.restore(&a.tools, &payload, false) {
                return ApplyError::RollbackFailed {
                    cause: Box::new(cause),
                    rollback: Box::new(e),
                };
            }
            self.log.push(format!(
                "{}: rolled back to the state before this run",
                a.tools.family.name()
            ));
        }
        cause
    }
}

fn parse_tables(payload: &str) -> BTreeSet<Table> {
    payload
        .lines()
        .filter_map(|l| l.strip_prefix("* ").and_then(Table::from_name))
        .collect()
}

#[cfg(test)]
mod tests;
