//! `bench conn-memory`: what an open, idle connection costs each proxy in resident memory.
//! For HTTP/1.1 keep-alive, h2c and TCP in turn, N client connections are opened through the
//! proxy and each makes one exchange (a 2-byte response, a 64-byte echo), so the proxy holds a
//! downstream and an upstream connection for each. The figure is the growth of the proxy's
//! RSS divided by N, read once the connections sit idle. Each kind gets a fresh process, so
//! memory one kind freed does not hide what the next one takes.

use std::path::Path;
use std::time::Duration;

use crate::load::{self, Mode, Proto, Scenario};
use crate::sys;
use crate::targets::{self, Bins, Kind};
use crate::upstream::Upstream;

/// What settled means: the proxy finished the exchanges before its RSS is read.
const SETTLE: Duration = Duration::from_millis(500);

/// Opens the connections, measures, and returns one markdown table.
pub fn run(
    kinds: &[Kind],
    bins: &Bins,
    up: &Upstream,
    dir: &Path,
    cpu: Option<usize>,
    conns: usize,
) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kinds_of = [
        ("HTTP/1.1 keep-alive", Proto::H1, "/small"),
        ("h2c", Proto::H2, "/small"),
        ("TCP", Proto::TcpEcho, ""),
    ];
    let mut out = format!(
        "KiB of proxy RSS per open connection ({conns} idle client connections, each after \
         one exchange). The figure includes the upstream side: Sluice, as Envoy, keeps an idle \
         upstream HTTP/1.1 connection pooled for each (the bench's nginx keeps at most 64, \
         haproxy shares idle server connections); h2c multiplexes upstream; TCP has one \
         upstream connection per client connection everywhere.\n\n| target |"
    );
    for (label, _, _) in &kinds_of {
        out.push_str(&format!(" {label} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(kinds_of.len()));
    out.push('\n');
    for &k in kinds {
        if !bins.available(k) {
            eprintln!("{}: not installed, skipped", k.name());
            continue;
        }
        out.push_str(&format!("| {} |", k.name()));
        for (label, proto, path) in &kinds_of {
            let running = targets::start(k, bins, up, dir, cpu)?;
            let pid = running
                .pid()
                .ok_or_else(|| anyhow::anyhow!("{} has no process", k.name()))?;
            let sc = Scenario {
                name: (*label).into(),
                proto: *proto,
                path: (*path).into(),
                mode: Mode::Max,
                conns,
                depth: 1,
            };
            // One connection first, so that one-time allocations (the upstream pool, buffers
            // sized on first use) are not counted per connection.
            let warm = rt.block_on(load::open(
                running.addr(*proto),
                &Scenario {
                    conns: 1,
                    ..sc.clone()
                },
            ))?;
            std::thread::sleep(SETTLE);
            let rss = || sys::mem(pid).map(|m| m.rss_kib).unwrap_or(0);
            let before = rss();
            let open = rt.block_on(load::open(running.addr(*proto), &sc))?;
            std::thread::sleep(SETTLE);
            let after = rss();
            drop((open, warm));
            let per = after.saturating_sub(before) as f64 / conns as f64;
            eprintln!(
                "{} {label}: RSS {before} -> {after} KiB, {per:.1} KiB per connection",
                k.name()
            );
            out.push_str(&format!(" {per:.1} |"));
        }
        out.push('\n');
    }
    Ok(out)
}
