//! Root-only tests: run the real `sluice-iptables` inside throwaway network namespaces.
//!
//! Safety: iptables tools only ever run through `ip netns exec <ns>` on a namespace this test
//! created (named `sluice-ipt-<pid>-<n>`), never in the machine's own namespace; no traffic is
//! sent at all. Each namespace is deleted by a drop guard, also when an assertion fails.
//!
//! Without root or without `ip`/`iptables` these tests FAIL when `CI=true` and print a loud
//! "SKIPPED: needs root" otherwise.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-iptables");

fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/sbin:/sbin:/usr/bin:/bin")
}

fn on_path(tool: &str) -> bool {
    search_path()
        .split(':')
        .any(|d| !d.is_empty() && Path::new(d).join(tool).is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// True when the test can run; otherwise fails under CI or prints a loud skip.
fn preflight(test: &str) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables-restore",
    ] {
        if !on_path(tool) {
            missing.push(format!("`{tool}` (apt-get install iptables iproute2)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} — these tests must run in CI (CI=true)");
    }
    // Straight to stderr, not eprintln!, so libtest's capture cannot hide the skip.
    let _ = writeln!(
        std::io::stderr(),
        "\n**********\nSKIPPED: needs root — {msg}\n**********\n"
    );
    false
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that exists for the guard's lifetime.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("sluice-ipt-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .env("PATH", search_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        // A pod's loopback is up; a fresh namespace's is not.
        ns.ok("ip", &["link", "set", "lo", "up"], &[]);
        ns
    }

    /// Run `program` inside the namespace.
    fn exec(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program])
            .args(args)
            .env("PATH", search_path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn ok(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.exec(program, args, env);
        assert!(
            out.status.success(),
            "[{}] {program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sluice(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.exec(BIN, args, env)
    }

    /// `iptables-save` (or ip6tables-save) inside the namespace, without comment lines.
    fn save(&self, v6: bool) -> String {
        self.save_with(if v6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        })
    }

    fn save_with(&self, tool: &str) -> String {
        self.ok(tool, &[], &[])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .env("PATH", search_path())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "warning: could not delete network namespace {}: {out:?}",
                self.name
            );
        }
    }
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Per table: ISTIO_* chain → number of rules in it.
type Chains = BTreeMap<String, BTreeMap<String, usize>>;

/// Chains and rule counts from a restore payload (`* nat`, `-N`, `-A`/`-I` lines).
fn payload_chains(payload: &str) -> Chains {
    let mut out = Chains::new();
    let mut table = String::new();
    for l in payload.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["*", t] => table = t.to_string(),
            ["-N", c, ..] => {
                out.entry(table.clone())
                    .or_default()
                    .insert(c.to_string(), 0);
            }
            ["-A" | "-I", c, ..] if c.starts_with("ISTIO_") => {
                *out.entry(table.clone())
                    .or_default()
                    .get_mut(*c)
                    .expect("chain declared") += 1;
            }
            _ => {}
        }
    }
    out
}

/// Chains and rule counts from iptables-save output (`*nat`, `:CHAIN`, `-A` lines).
fn saved_chains(save: &str) -> Chains {
    let mut out = Chains::new();
    let mut table = String::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(c) = l.strip_prefix(":ISTIO_") {
            let c = format!("ISTIO_{}", c.split_whitespace().next().unwrap());
            out.entry(table.clone()).or_default().insert(c, 0);
        } else if let Some(rest) = l.strip_prefix("-A ISTIO_") {
            let c = format!("ISTIO_{}", rest.split_whitespace().next().unwrap());
            *out.entry(table.clone()).or_default().get_mut(&c).unwrap() += 1;
        }
    }
    out
}

/// Split dry-run stdout into per-family payloads (tables restart their alphabetical order).
fn split_families(stdout: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut last = String::new();
    for l in stdout.lines() {
        if let Some(t) = l.strip_prefix("* ") {
            if out.is_empty() || t <= last.as_str() {
                out.push(String::new());
            }
            last = t.to_string();
        }
        let cur = out.last_mut().expect("payload starts with a table");
        cur.push_str(l);
        cur.push('\n');
    }
    out
}

const IPV6: (&str, &str) = ("ENABLE_INBOUND_IPV6", "true");

/// The flags Istio's injector gives istio-init, plus DNS capture.
const SIDECAR: &[&str] = &[
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
    "--redirect-dns",
    "--capture-all-dns",
];

#[test]
fn install_matches_dry_run_is_idempotent_and_cleans_up() {
    if !preflight("install_matches_dry_run_is_idempotent_and_cleans_up") {
        return;
    }
    let ns = Netns::new();
    // Dry run changes nothing and tells us what to expect.
    let dry = ns.sluice(&[SIDECAR, &["-n"]].concat(), &[IPV6]);
    assert_success(&dry, "dry run");
    let families = split_families(&String::from_utf8_lossy(&dry.stdout));
    assert_eq!(families.len(), 2, "IPv4 and IPv6 payloads");
    assert!(
        !ns.save(false).contains("ISTIO"),
        "dry run must not change anything"
    );

    let first = ns.sluice(SIDECAR, &[IPV6]);
    assert_success(&first, "first install");
    let (v4, v6) = (ns.save(false), ns.save(true));
    for (save, payload) in [(&v4, &families[0]), (&v6, &families[1])] {
        assert_eq!(
            saved_chains(save),
            payload_chains(payload),
            "installed chains vs plan\n{save}"
        );
    }
    for needle in [
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A OUTPUT -j ISTIO_OUTPUT_DNS",
    ] {
        assert!(v4.contains(needle), "missing {needle:?} in\n{v4}");
    }
    assert!(
        v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"),
        "{v6}"
    );

    let second = ns.sluice(SIDECAR, &[IPV6]);
    assert_success(&second, "second install");
    assert_eq!(ns.save(false), v4, "IPv4 state changed on re-run");
    assert_eq!(ns.save(true), v6, "IPv6 state changed on re-run");

    let cleanup = ns.sluice(&[SIDECAR, &["--cleanup-only"]].concat(), &[IPV6]);
    assert_success(&cleanup, "cleanup");
    for v6 in [false, true] {
        let s = ns.save(v6);
        assert!(
            !s.contains("ISTIO"),
            "ISTIO state left after --cleanup-only:\n{s}"
        );
    }
}

#[test]
fn tproxy_installs_marks_and_routes_and_cleans_up() {
    if !preflight("tproxy_installs_marks_and_routes_and_cleans_up") {
        return;
    }
    let ns = Netns::new();
    let args = [
        "-m",
        "TPROXY",
        "-b",
        "*",
        "-d",
        "15020",
        "-i",
        "*",
        "-c",
        "eth9",
        "--drop-invalid",
    ];
    assert_success(&ns.sluice(&args, &[IPV6]), "tproxy install");
    let v4 = ns.save(false);
    for needle in [
        ":ISTIO_DIVERT",
        ":ISTIO_TPROXY",
        ":ISTIO_DROP",
        "-j TPROXY",
        "--on-port 15006",
        "-i eth9 -j RETURN",
    ] {
        assert!(v4.contains(needle), "missing {needle:?} in\n{v4}");
    }
    let rules = ns.ok("ip", &["rule", "show"], &[]);
    assert!(rules.contains("fwmark 0x539 lookup 133"), "{rules}");
    assert!(ns
        .ok("ip", &["-6", "addr", "show", "dev", "lo"], &[])
        .contains("::6/128"));

    assert_success(&ns.sluice(&args, &[IPV6]), "tproxy re-install");
    assert_eq!(ns.save(false), v4, "state changed on re-run");
    let rules2 = ns.ok("ip", &["rule", "show"], &[]);
    assert_eq!(
        rules2.matches("fwmark 0x539").count(),
        1,
        "policy rule duplicated:\n{rules2}"
    );

    assert_success(
        &ns.sluice(&[&args[..], &["--cleanup-only"]].concat(), &[IPV6]),
        "cleanup",
    );
    let after = ns.save(false);
    assert!(
        !after.contains("ISTIO") && !after.contains("eth9"),
        "left over:\n{after}"
    );
    assert!(
        !after.contains("CONNMARK") && !after.contains("--set-xmark"),
        "left over:\n{after}"
    );
}

#[test]
fn failing_rule_is_named_and_nothing_changes() {
    if !preflight("failing_rule_is_named_and_nothing_changes") {
        return;
    }
    let ns = Netns::new();
    let v4only = ("ENABLE_INBOUND_IPV6", "false");
    assert_success(
        &ns.sluice(&["-b", "8080", "-i", "*"], &[v4only]),
        "good install",
    );
    let before = ns.save(false);

    // A group name that does not exist makes iptables-restore reject one line.
    let bad = ns.sluice(
        &["-b", "*", "-i", "10.0.0.0/8", "--drop-invalid"],
        &[
            v4only,
            (
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                "sluice-no-such-group",
            ),
        ],
    );
    assert!(!bad.status.success(), "bad install must fail");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("sluice-no-such-group") && err.contains("line "),
        "{err}"
    );
    assert_eq!(
        ns.save(false),
        before,
        "failed run must leave the earlier state"
    );

    // Invalid settings fail before touching anything.
    let invalid = ns.sluice(&["-b", "http"], &[v4only]);
    assert!(!invalid.status.success());
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("INBOUND_PORTS_INCLUDE"));
    assert_eq!(ns.save(false), before);
}

fn loud_skip(msg: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n**********\nSKIPPED: {msg}\n**********\n"
    );
}

#[test]
fn legacy_backend_round_trip() {
    if !preflight("legacy_backend_round_trip") {
        return;
    }
    if !on_path("iptables-legacy-restore") {
        loud_skip("legacy_backend_round_trip: iptables-legacy not installed");
        return;
    }
    let ns = Netns::new();
    if !ns.exec("iptables-legacy-save", &[], &[]).status.success() {
        loud_skip("legacy_backend_round_trip: kernel has no legacy ip_tables support");
        return;
    }
    let args = [SIDECAR, &["--force-iptables-binary", "legacy"]].concat();
    assert_success(&ns.sluice(&args, &[IPV6]), "legacy install");
    let v4 = ns.save_with("iptables-legacy-save");
    assert!(v4.contains(":ISTIO_OUTPUT"), "{v4}");
    assert!(
        !ns.save(false).contains("ISTIO"),
        "nft tables must stay untouched"
    );
    assert_success(&ns.sluice(&args, &[IPV6]), "legacy re-install");
    assert_eq!(
        ns.save_with("iptables-legacy-save"),
        v4,
        "state changed on re-run"
    );
    assert_success(
        &ns.sluice(&[&args[..], &["--cleanup-only"]].concat(), &[IPV6]),
        "cleanup",
    );
    for tool in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let s = ns.save_with(tool);
        assert!(!s.contains("ISTIO"), "{tool} after cleanup:\n{s}");
    }
}

#[test]
fn native_nftables_round_trip() {
    if !preflight("native_nftables_round_trip") {
        return;
    }
    if !on_path("nft") {
        let msg = "native_nftables_round_trip: needs `nft` (apt-get install nftables)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        loud_skip(msg);
        return;
    }
    let ns = Netns::new();
    let args = [
        SIDECAR,
        &["--native-nftables", "-k", "eth7", "--drop-invalid"],
    ]
    .concat();
    let dry = ns.sluice(&[&args[..], &["-n"]].concat(), &[IPV6]);
    assert_success(&dry, "nft dry run");
    assert!(String::from_utf8_lossy(&dry.stdout).contains("add table inet istio-proxy-nat"));
    assert_eq!(
        ns.ok("nft", &["list", "ruleset"], &[]),
        "",
        "dry run changed nothing"
    );

    assert_success(&ns.sluice(&args, &[IPV6]), "nft install");
    let first = ns.ok("nft", &["list", "ruleset"], &[]);
    for needle in [
        "table inet istio-proxy-nat",
        "chain istio-output",
        "redirect to :15001",
        "table inet istio-proxy-raw",
    ] {
        assert!(first.contains(needle), "missing {needle:?} in\n{first}");
    }
    assert!(
        !ns.save(false).contains("ISTIO"),
        "no iptables rules in nft mode"
    );
    assert_success(&ns.sluice(&args, &[IPV6]), "nft re-install");
    assert_eq!(
        ns.ok("nft", &["list", "ruleset"], &[]),
        first,
        "state changed on re-run"
    );

    let bad = ns.sluice(
        &args,
        &[
            IPV6,
            (
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                "sluice-no-such-group",
            ),
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sluice-no-such-group"));
    assert_eq!(
        ns.ok("nft", &["list", "ruleset"], &[]),
        first,
        "failed run changed state"
    );

    assert_success(
        &ns.sluice(&[&args[..], &["--cleanup-only"]].concat(), &[IPV6]),
        "nft cleanup",
    );
    let after = ns.ok("nft", &["list", "ruleset"], &[]);
    assert!(!after.contains("istio"), "left over:\n{after}");
}

/// The first `ISTIO_OUTPUT` rule of the nat table in iptables-save output.
fn first_nat_output_rule(save: &str) -> Option<&str> {
    save.split("*nat")
        .nth(1)?
        .lines()
        .find(|l| l.starts_with("-A ISTIO_OUTPUT "))
}

#[test]
fn tproxy_mark_return_lands_first_in_both_backends() {
    if !preflight("tproxy_mark_return_lands_first_in_both_backends") {
        return;
    }
    let ns = Netns::new();
    let mut args: Vec<&str> = SIDECAR
        .iter()
        .map(|a| if *a == "REDIRECT" { "TPROXY" } else { a })
        .collect();
    args.extend(["-t", "4242", "--tproxy-mark-return"]);
    assert_success(&ns.sluice(&args, &[IPV6]), "install");
    for v6 in [false, true] {
        let save = ns.save(v6);
        assert_eq!(
            first_nat_output_rule(&save),
            Some("-A ISTIO_OUTPUT -o lo -p tcp -m mark --mark 0x1092 -j RETURN"),
            "v6={v6}:\n{save}"
        );
    }
    let v4 = ns.save(false);
    assert_success(&ns.sluice(&args, &[IPV6]), "re-install");
    assert_eq!(ns.save(false), v4, "state changed on re-run");
    assert_success(
        &ns.sluice(&[&args[..], &["--cleanup-only"]].concat(), &[IPV6]),
        "cleanup",
    );
    assert!(!ns.save(false).contains("ISTIO"));

    // Env form, REDIRECT mode: ignored with a warning, output as without it.
    let redirect = ns.sluice(
        &[SIDECAR, &["-n"]].concat(),
        &[IPV6, ("SLUICE_TPROXY_MARK_RETURN", "true")],
    );
    assert_success(&redirect, "redirect dry run");
    assert!(String::from_utf8_lossy(&redirect.stderr)
        .contains("warning: TPROXY_MARK_RETURN is set, but the interception mode is not TPROXY"));
    let plain = ns.sluice(&[SIDECAR, &["-n"]].concat(), &[IPV6]);
    assert_eq!(redirect.stdout, plain.stdout);

    if !on_path("nft") {
        loud_skip("tproxy_mark_return_lands_first_in_both_backends: nft part needs `nft`");
        return;
    }
    let nft_args = [&args[..], &["--native-nftables"]].concat();
    assert_success(&ns.sluice(&nft_args, &[IPV6]), "nft install");
    let table = ns.ok("nft", &["list", "table", "inet", "istio-proxy-nat"], &[]);
    let chain = table
        .split("chain istio-output {")
        .nth(1)
        .unwrap_or_else(|| panic!("no istio-output in\n{table}"));
    let first = chain.lines().map(str::trim).find(|l| !l.is_empty());
    assert!(
        matches!(first, Some(l) if l.starts_with("oifname \"lo\" meta l4proto tcp meta mark 0x00001092 counter")
            && l.ends_with("return")),
        "{table}"
    );
    assert_success(
        &ns.sluice(&[&nft_args[..], &["--cleanup-only"]].concat(), &[IPV6]),
        "nft cleanup",
    );
}
