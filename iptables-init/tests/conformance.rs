//! Conformance with istio-iptables: for every case in the shared `cases.tsv`, the rules we
//! generate must equal Istio's golden output table by table and family by family, and the
//! whole dry-run transcript (save/restore commands Istio ran) must match too.
//!
//! The data lives beside the checkout (`../shared/conformance/istio-iptables/`); it is not
//! copied into the repo. A missing directory is a failure, not a skip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use iptables_init::config::{Config, Settings};
use iptables_init::rules::{generate, RuleSet};

fn data_dir() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/istio-iptables");
    assert!(
        dir.join("cases.tsv").is_file(),
        "conformance data missing: expected {}/cases.tsv (the shared/ folder must sit beside the checkout)",
        dir.display()
    );
    dir
}

fn apply_settings(s: &mut Settings, text: &str, case: &str) {
    for pair in text.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("{case}: setting without '=': {pair:?}"));
        s.set(k, v).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

/// One family's payload: table name → lines between `* table` and `COMMIT`.
type Payload = BTreeMap<String, Vec<String>>;

/// Split a golden into its leading commands, payloads (a new family starts when the table
/// order restarts, since each payload lists tables alphabetically) and trailing commands.
fn parse_golden(text: &str) -> (Vec<String>, Vec<Payload>, Vec<String>) {
    let mut lead = Vec::new();
    let mut trail = Vec::new();
    let mut payloads: Vec<Payload> = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut last_table = String::new();
    for line in text.lines() {
        if let Some((table, lines)) = current.as_mut() {
            if line == "COMMIT" {
                let (t, l) = (table.clone(), std::mem::take(lines));
                payloads.last_mut().unwrap().insert(t, l);
                current = None;
            } else {
                lines.push(line.to_string());
            }
        } else if let Some(table) = line.strip_prefix("* ") {
            if payloads.is_empty() || table <= last_table.as_str() {
                payloads.push(Payload::new());
            }
            last_table = table.to_string();
            current = Some((table.to_string(), Vec::new()));
        } else if payloads.is_empty() {
            lead.push(line.to_string());
        } else {
            trail.push(line.to_string());
        }
    }
    assert!(current.is_none(), "golden ends inside a table");
    (lead, payloads, trail)
}

fn ours(rules: &RuleSet) -> Vec<Payload> {
    rules
        .families()
        .map(|(_, fam)| {
            fam.tables()
                .into_iter()
                .map(|(t, lines)| (t.name().to_string(), lines))
                .collect()
        })
        .collect()
}

/// What istio-iptables' dry-run stub records: both saves (state check), the restore payloads,
/// then the final saves.
fn transcript(rules: &RuleSet) -> String {
    let mut out = String::from("iptables-save\nip6tables-save\n");
    for (_, fam) in rules.families() {
        out.push_str(&fam.restore_payload());
    }
    out.push_str("iptables-save");
    if rules.v6.is_some() {
        out.push_str("\nip6tables-save");
    }
    out
}

fn diff(want: &[String], got: &[String]) -> String {
    let mut out = String::new();
    for i in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(i), got.get(i));
        if w != g {
            out.push_str(&format!(
                "      line {}: want {:?}\n               got  {:?}\n",
                i + 1,
                w.map(String::as_str).unwrap_or("<none>"),
                g.map(String::as_str).unwrap_or("<none>")
            ));
        }
    }
    out
}

#[test]
fn istio_iptables_goldens() {
    let dir = data_dir();
    let cases = std::fs::read_to_string(dir.join("cases.tsv")).unwrap();
    let mut defaults = None;
    let mut results: Vec<(String, Result<(), String>)> = Vec::new();
    for line in cases.lines() {
        if let Some(d) = line.strip_prefix("# defaults\t") {
            defaults = Some(d.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, settings) = line.split_once('\t').unwrap_or((line, ""));
        let defaults = defaults
            .as_deref()
            .expect("cases.tsv: '# defaults' line must come first");
        let mut s = Settings::default();
        apply_settings(&mut s, defaults, name);
        apply_settings(&mut s, settings, name);
        // A case that leaves ENABLE_INBOUND_IPV6 unset is IPv4-only, as Istio's test config is.
        s.enable_inbound_ipv6.get_or_insert(false);
        let cfg = Config::try_from(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rules = generate(&cfg);

        let golden = std::fs::read_to_string(dir.join(format!("{name}.golden")))
            .unwrap_or_else(|e| panic!("{name}: cannot read golden: {e}"));
        let (lead, want, trail) = parse_golden(&golden);
        let got = ours(&rules);
        let mut problems = String::new();
        if want.len() != got.len() {
            problems.push_str(&format!(
                "  families: want {}, got {}\n",
                want.len(),
                got.len()
            ));
        }
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let fam = if i == 0 { "IPv4" } else { "IPv6" };
            let tables: std::collections::BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            for t in tables {
                let empty = Vec::new();
                let (wl, gl) = (w.get(t).unwrap_or(&empty), g.get(t).unwrap_or(&empty));
                if wl != gl {
                    problems.push_str(&format!("  {fam} table {t}:\n{}", diff(wl, gl)));
                }
            }
        }
        if lead != ["iptables-save", "ip6tables-save"] {
            problems.push_str(&format!("  unexpected leading commands {lead:?}\n"));
        }
        let want_trail: Vec<&str> = if rules.v6.is_some() {
            vec!["iptables-save", "ip6tables-save"]
        } else {
            vec!["iptables-save"]
        };
        if trail != want_trail {
            problems.push_str(&format!(
                "  trailing commands: want {want_trail:?}, got {trail:?}\n"
            ));
        }
        if problems.is_empty() && transcript(&rules) != golden.trim_end_matches('\n') {
            problems.push_str("  full transcript differs (whitespace or line endings?)\n");
        }
        results.push((
            name.to_string(),
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            },
        ));
    }

    let goldens = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "golden")
        })
        .count();
    // Written to stdout directly (not println!) so the per-case lines show under plain
    // `cargo test`, which captures println! of passing tests.
    let mut report = String::new();
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(()) => report.push_str(&format!("istio-iptables golden {name}: PASS\n")),
            Err(p) => {
                failed += 1;
                report.push_str(&format!("istio-iptables golden {name}: FAIL\n{p}"));
            }
        }
    }
    report.push_str(&format!(
        "istio-iptables goldens: {}/{} passed ({goldens} golden files)\n",
        results.len() - failed,
        results.len()
    ));
    let _ = std::io::stdout().write_all(report.as_bytes());
    assert_eq!(
        results.len(),
        goldens,
        "every golden file needs a case in cases.tsv"
    );
    assert_eq!(
        failed, 0,
        "{failed} istio-iptables golden case(s) failed; see output above"
    );
}

#[test]
fn golden_parser_splits_families() {
    let g = "iptables-save\nip6tables-save\n* nat\n-N A\nCOMMIT\n* raw\nCOMMIT\n* mangle\n-N B\nCOMMIT\niptables-save\nip6tables-save";
    let (lead, p, trail) = parse_golden(g);
    assert_eq!(lead.len(), 2);
    assert_eq!(trail.len(), 2);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].keys().collect::<Vec<_>>(), ["nat", "raw"]);
}
