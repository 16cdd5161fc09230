//! Linux process facts: CPU pinning, CPU time and memory of another process, free ports, and
//! stopping a child.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Pins the calling thread (and threads it spawns later) to `cpu`. Errors are returned, not
/// fatal: the bench still runs unpinned and says so.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    pin_pid(0, cpu)
}

/// Pins process/thread `pid` (0 = the caller) to `cpu`.
pub fn pin_pid(pid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins every thread of process `pid` (taskset -a). Threads created later inherit the
/// affinity of their creator, so calling this once right after start-up is enough.
pub fn pin_all_threads(pid: u32, cpu: usize) -> std::io::Result<()> {
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            pin_pid(tid, cpu)?;
        }
    }
    Ok(())
}

/// Total CPU time (user + system, every thread, living or exited) of process `pid`, read from
/// its CPU-time clock (nanosecond resolution). Falls back to `/proc/PID/stat` utime+stime
/// (clock-tick resolution) when the clock is unavailable.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    // SAFETY: plain FFI with out-pointers to locals.
    unsafe {
        let mut clk: libc::clockid_t = 0;
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clk) == 0 {
            let mut ts: libc::timespec = std::mem::zeroed();
            if libc::clock_gettime(clk, &mut ts) == 0 {
                return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
        }
    }
    stat_cpu_time(pid)
}

/// utime + stime from `/proc/PID/stat`.
pub fn stat_cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (utime, stime) = parse_stat_times(&s)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz))
}

/// (utime, stime) in clock ticks from the text of `/proc/PID/stat`.
pub fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// (busy, total) clock ticks of one CPU since boot, from `/proc/stat` (busy = everything
/// but idle and iowait). Sampled around a run, it shows whether other work shared the core.
pub fn cpu_ticks(cpu: usize) -> Option<(u64, u64)> {
    parse_cpu_line(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
}

pub fn parse_cpu_line(stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let v = cpu_fields(stat, &format!("cpu{cpu} "))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (steal, total) clock ticks of all CPUs since boot, from `/proc/stat`: steal is time the
/// hypervisor gave these vCPUs' turn to other guests, which no process here sees in its load.
pub fn steal_ticks() -> Option<(u64, u64)> {
    parse_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

pub fn parse_steal(stat: &str) -> Option<(u64, u64)> {
    let v = cpu_fields(stat, "cpu ")?;
    Some((*v.get(7)?, v.iter().take(8).sum()))
}

/// The tick counts of the `/proc/stat` line that starts with `tag` (`"cpu "` is all CPUs).
fn cpu_fields(stat: &str, tag: &str) -> Option<Vec<u64>> {
    let line = stat.lines().find(|l| l.starts_with(tag))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect(),
    )
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Memory of a process in KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub pss_kib: u64,
}

pub fn mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = Mem {
        rss_kib: kib_field(&status, "VmRSS:")?,
        hwm_kib: kib_field(&status, "VmHWM:")?,
        pss_kib: 0,
    };
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        m.pss_kib = kib_field(&s, "Pss:").unwrap_or(0);
    }
    Some(m)
}

/// The value of a `Name:   1234 kB` line.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A loopback port that was free a moment ago (bind port 0, read it, close).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections, up to `limit`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Stops a child: SIGTERM, then SIGKILL if it is still there after 3 s. A clean exit lets a
/// profiling build (`bench/pgo.sh`) write its counts.
pub fn stop(child: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid, which has not been waited for.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_odd_command_names() {
        let s = "1234 (a b) c)) S 1 1 1 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat_times(s), Some((250, 75)));
        assert_eq!(parse_stat_times("garbage"), None);
    }

    #[test]
    fn steal_from_the_all_cpus_line() {
        let s = "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n";
        assert_eq!(parse_steal(s), Some((35, 1000)));
        assert_eq!(parse_steal("cpu0 1 2 3\n"), None);
        assert_eq!(parse_steal("cpu  1 2 3\n"), None);
    }

    #[test]
    fn cpu_lines() {
        let s =
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 100 0 50 800 20 5 5 20 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_cpu_line(s, 0), Some((180, 1000)));
        assert_eq!(parse_cpu_line(s, 1), Some((6, 8)));
        assert_eq!(parse_cpu_line(s, 2), None);
    }

    #[test]
    fn kib_fields() {
        let s = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    9000 kB\n";
        assert_eq!(kib_field(s, "VmHWM:"), Some(12345));
        assert_eq!(kib_field(s, "VmRSS:"), Some(9000));
        assert_eq!(kib_field(s, "Pss:"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_time(pid).is_some());
        assert!(mem(pid).unwrap().rss_kib > 0);
    }

    /// A shell running `trap` (its TERM handler; `$D` is its own temp dir), then looping;
    /// returns once the trap is set.
    fn shell_with_trap(name: &str, trap: &str) -> (std::process::Child, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sluice-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap {trap} TERM; touch \"$D/ready\"; while :; do sleep 0.05; done"
            ))
            .env("D", &dir)
            .spawn()
            .unwrap();
        while !dir.join("ready").exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        (c, dir)
    }

    #[test]
    fn stop_lets_a_child_exit_cleanly_on_sigterm() {
        let (mut c, dir) = shell_with_trap("stop", "'echo bye > \"$D/done\"; exit 0'");
        stop(&mut c);
        // The handler ran and the child exited by itself, as a profiling build does.
        assert_eq!(std::fs::read_to_string(dir.join("done")).unwrap(), "bye\n");
        use std::os::unix::process::ExitStatusExt;
        let status = c.try_wait().unwrap().expect("reaped");
        assert_eq!((status.code(), status.signal()), (Some(0), None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stop_kills_a_child_that_ignores_sigterm() {
        let (mut c, dir) = shell_with_trap("kill", "''");
        stop(&mut c);
        let status = c.try_wait().unwrap().expect("reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
