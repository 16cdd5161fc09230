//! Atomic read-modify-write instructions per request (`bench cost --callgrind`): the
//! instructions with a `lock` prefix, and `xchg` with a memory operand (locked implicitly),
//! counted from callgrind's per-instruction execution counts (`--dump-instr=yes`).
//!
//! Callgrind's instruction count treats an atomic like any other instruction, but an
//! uncontended `lock` operation costs about 20 cycles where an ordinary one costs one or less:
//! a request can lose instructions and keep its CPU time (profile.md, round 8). This count
//! shows where those cycles are: reference counts, locks, wakers, statistics.
//!
//! Where each instruction is: `objdump -d` of every object the dump names (the proxy's binary,
//! libc), whose addresses callgrind writes unrelocated, as the object file has them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// Addresses of the locked instructions in `object`'s code.
pub fn lock_sites(object: &Path) -> anyhow::Result<HashSet<u64>> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(object)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "objdump -d {}: {}",
        object.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(parse_objdump(&String::from_utf8_lossy(&out.stdout)))
}

/// The locked instructions of an `objdump -d --no-show-raw-insn` listing.
pub fn parse_objdump(listing: &str) -> HashSet<u64> {
    listing
        .lines()
        .filter_map(|l| {
            let (addr, insn) = l.trim_start().split_once(":\t")?;
            let insn = insn.trim_start();
            let locked =
                insn.starts_with("lock ") || (insn.starts_with("xchg") && insn.contains('('));
            if !locked {
                return None;
            }
            u64::from_str_radix(addr.trim(), 16).ok()
        })
        .collect()
}

/// Locked instructions executed in one callgrind dump: in all, and by function.
#[derive(Debug, Default)]
pub struct Count {
    pub total: u64,
    pub by_function: Vec<(String, u64)>,
}

/// Counts the locked instructions a callgrind dump (`positions: instr ...`, written with
/// `--dump-instr=yes`) executed. `sites` gives an object's locked addresses by its path
/// (`None` for an object to leave out).
pub fn count(dump: &str, mut sites: impl FnMut(&str) -> Option<HashSet<u64>>) -> Count {
    let mut known: HashMap<String, Option<HashSet<u64>>> = HashMap::new();
    // Compressed names: "(id) name" defines, "(id)" refers.
    let mut objects: HashMap<String, String> = HashMap::new();
    let mut functions: HashMap<String, String> = HashMap::new();
    let name = |table: &mut HashMap<String, String>, s: &str| -> String {
        match s.split_once(") ") {
            Some((id, n)) if s.starts_with('(') => {
                table.insert(id[1..].to_string(), n.to_string());
                n.to_string()
            }
            _ => match s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
                Some(id) => table.get(id).cloned().unwrap_or_default(),
                None => s.to_string(),
            },
        }
    };
    let mut object = String::new();
    let mut function = String::new();
    let mut addr: u64 = 0;
    let mut call_line = false;
    let mut by_function: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    for line in dump.lines() {
        if let Some(s) = line.strip_prefix("ob=") {
            object = name(&mut objects, s);
            continue;
        }
        if let Some(s) = line.strip_prefix("fn=") {
            function = name(&mut functions, s);
            continue;
        }
        if let Some(s) = line.strip_prefix("cob=") {
            name(&mut objects, s);
            continue;
        }
        if let Some(s) = line.strip_prefix("cfn=") {
            name(&mut functions, s);
            continue;
        }
        if line.starts_with("calls=") {
            // The next cost line is the call's (inclusive) cost, at the call instruction.
            call_line = true;
            continue;
        }
        let Some(first) = line.bytes().next() else {
            continue;
        };
        if !(first.is_ascii_digit() || first == b'+' || first == b'-' || first == b'*') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let Some(pos) = fields.next() else { continue };
        let number = |s: &str| match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        };
        if let Some(d) = pos.strip_prefix('+') {
            addr = addr.wrapping_add(number(d).unwrap_or(0));
        } else if let Some(d) = pos.strip_prefix('-') {
            addr = addr.wrapping_sub(number(d).unwrap_or(0));
        } else if pos != "*" {
            addr = number(pos).unwrap_or(addr);
        }
        if std::mem::take(&mut call_line) {
            continue;
        }
        // Then the line, then the events (Ir first).
        let Some(ir) = fields.nth(1).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let locked = known
            .entry(object.clone())
            .or_insert_with(|| sites(&object))
            .as_ref()
            .is_some_and(|s| s.contains(&addr));
        if locked {
            total += ir;
            *by_function.entry(function.clone()).or_default() += ir;
        }
    }
    let mut by_function: Vec<(String, u64)> = by_function.into_iter().collect();
    by_function.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Count { total, by_function }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_locked_instructions() {
        let listing = "\n  4011a0:\tlock xadd %rax,(%rdi)\n  4011a5:\tmov    %rax,%rbx\n  \
                       4011a8:\txchg   %ax,%ax\n  4011aa:\txchg   %eax,(%rdx)\n  \
                       4011ac:\tlock cmpxchg %rcx,0x8(%rsi)\n";
        let s = parse_objdump(listing);
        let mut v: Vec<u64> = s.into_iter().collect();
        v.sort();
        assert_eq!(v, vec![0x4011a0, 0x4011aa, 0x4011ac]);
    }

    #[test]
    fn counts_only_locked_addresses_and_skips_call_costs() {
        let dump = "positions: instr line\nevents: Ir\n\
                    ob=(1) /bin/proxy\nfl=(1) a.rs\nfn=(1) inc\n\
                    0x1000 10 7\n+4 11 7\n\
                    cob=(2) /lib/libc.so\ncfn=(2) free\ncalls=7 0x2000 3\n+2 12 700\n\
                    +3 13 7\n\
                    ob=(2)\nfn=(2)\n0x2000 1 5\n+8 1 5\n";
        let sites = |o: &str| -> Option<HashSet<u64>> {
            match o {
                "/bin/proxy" => Some([0x1004, 0x100a, 0x1009].into_iter().collect()),
                "/lib/libc.so" => Some([0x2008].into_iter().collect()),
                _ => None,
            }
        };
        let c = count(dump, sites);
        // 0x1004 (7) and 0x1009 (7) in `inc`, 0x2008 (5) in `free`. The call's line at
        // 0x1006 carries the callee's cost, and 0x100a never ran.
        assert_eq!(c.total, 19);
        assert_eq!(
            c.by_function,
            vec![("inc".to_string(), 14), ("free".to_string(), 5)]
        );
    }
}
