//! Pod harness: pods made of network namespaces, each with an application and (optionally)
//! a Sluice sidecar running as uid 1337 after `sluice-iptables` captured its traffic.
//!
//! Topology: one "router" namespace with a veth pair to every pod (`p<i>` in the router,
//! `eth0` in the pod). Pod `i` is `198.18.<i>.2/24`, its router side `198.18.<i>.1/24`; pods
//! route only `198.18.0.0/15` (test addresses) through the router and have no default route.
//! The router namespace has no link anywhere else, so nothing can leave the test.
//! Service VIPs (`198.19.0.0/16`) are assigned on the router's `lo`: traffic to a VIP that
//! escapes the sidecar reaches the router and is refused instead of going anywhere.
//!
//! Safety: every `ip`/`iptables` command runs inside a namespace this harness created (named
//! `sluice-pod-<pid>-<n>`), via `ip -n`/`ip netns exec`; the machine's own namespace is never
//! changed. Sockets for applications and clients are opened from threads that `setns(2)` into a
//! pod first. Drop guards kill the sidecars and stop the applications, then delete the
//! namespaces (which removes their veths), also when a test fails.
//!
//! Root-only: without root or the tools, [`preflight`] fails under `CI=true` and prints a loud
//! `SKIPPED: needs root` otherwise.
#![allow(dead_code)]

pub mod app;
pub mod sidecar;

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use app::{App, Report};
#[allow(unused_imports)]
pub use sidecar::{Capture, Service, Sidecar, SidecarConfig};

/// `PATH` with the sbin directories (`ip`, `iptables` live there).
pub fn search_path() -> String {
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

/// The `sluice` binary under test.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// `sluice-iptables` (crate iptables-init), built next to `sluice` by
/// `cargo test --workspace` / `cargo build -p iptables-init`.
pub fn iptables_bin() -> PathBuf {
    sluice_bin().with_file_name("sluice-iptables")
}

/// True when the test can run; otherwise fails under CI or prints a loud skip.
pub fn preflight(test: &str) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("iptables-save", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if !on_path(tool) {
            missing.push(format!("`{tool}` (apt-get install {pkg})"));
        }
    }
    if !iptables_bin().is_file() {
        missing.push(format!(
            "{} (cargo build -p iptables-init, or cargo test --workspace)",
            iptables_bin().display()
        ));
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
        io::stderr(),
        "\n**********\nSKIPPED: needs root — {msg}\n**********\n"
    );
    false
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that exists for the guard's lifetime.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("sluice-pod-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .env("PATH", search_path())
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args…` (fails the test on error).
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ok("ip", &all, &[])
    }

    /// Runs `program` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program])
            .args(args)
            .env("PATH", search_path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run ip netns exec")
    }

    pub fn exec_ok(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
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

    /// The namespace's own resolv.conf: `ip netns exec` bind-mounts `/etc/netns/<ns>/*` over
    /// `/etc/*` for what it runs (sidecar, `sluice-iptables`, `getent`).
    pub fn set_resolv_conf(&self, text: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        std::fs::write(dir.join("resolv.conf"), text).expect("write resolv.conf");
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live there.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path)?;
            Ok(f())
        })
        .join()
        .expect("namespace thread panicked")
    }
}

/// Moves the calling thread into the network namespace mounted at `path`.
pub fn enter_netns(path: &str) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let etc = Path::new("/etc/netns").join(&self.name);
        if etc.exists() {
            let _ = std::fs::remove_dir_all(&etc);
        }
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

fn run_ok(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", search_path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The router namespace all pods hang off.
pub struct Net {
    pub router: Netns,
    pods: AtomicUsize,
}

impl Net {
    pub fn new() -> Net {
        let router = Netns::new();
        router.exec_ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"], &[]);
        Net {
            router,
            pods: AtomicUsize::new(0),
        }
    }

    /// Assigns a service VIP inside the test network (on the router's `lo`).
    pub fn add_vip(&self, vip: Ipv4Addr) {
        self.router
            .ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
    }

    /// A new pod (namespace, veth to the router, addresses and routes); no application or
    /// sidecar yet.
    pub fn pod(&self, name: &'static str) -> Pod {
        let i = self.pods.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(i < 200, "too many pods");
        let ns = Netns::new();
        let veth = format!("p{i}");
        self.router.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        let gw = Ipv4Addr::new(198, 18, i as u8, 1);
        let ip = Ipv4Addr::new(198, 18, i as u8, 2);
        self.router
            .ip(&["addr", "add", &format!("{gw}/24"), "dev", &veth]);
        self.router.ip(&["link", "set", &veth, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "198.18.0.0/15", "via", &gw.to_string()]);
        Pod {
            name,
            index: i,
            ip,
            gw,
            veth,
            apps: Vec::new(),
            sidecar: None,
            ns,
        }
    }

    /// Gives `pod` an extra address (routed to it by the router).
    pub fn add_pod_addr(&self, pod: &Pod, addr: Ipv4Addr) {
        pod.ns
            .ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
        self.router.ip(&[
            "route",
            "add",
            &format!("{addr}/32"),
            "via",
            &pod.ip.to_string(),
        ]);
    }
}

/// One pod. Field order is drop order: sidecar and applications stop before the namespace goes.
pub struct Pod {
    pub name: &'static str,
    pub index: usize,
    pub ip: Ipv4Addr,
    pub gw: Ipv4Addr,
    pub veth: String,
    pub sidecar: Option<Sidecar>,
    pub apps: Vec<App>,
    pub ns: Netns,
}

impl Pod {
    /// Starts the application on `ports` (all addresses).
    pub fn serve(&mut self, ports: &[u16]) {
        for &p in ports {
            self.apps.push(App::start(&self.ns, self.name, p));
        }
    }

    /// Runs `sluice-iptables args…` inside the pod (IPv4 only).
    pub fn capture(&self, args: &[&str]) {
        let bin = iptables_bin();
        self.ns.exec_ok(
            bin.to_str().unwrap(),
            args,
            &[("ENABLE_INBOUND_IPV6", "false")],
        );
    }

    /// `iptables-save` inside the pod (diagnostics).
    pub fn iptables_save(&self) -> String {
        self.ns.exec_ok("iptables-save", &[], &[])
    }

    /// Installs capture for `cfg.capture` and starts Sluice with `cfg`, waiting until ready.
    pub fn start_sidecar(&mut self, cfg: &SidecarConfig) {
        self.capture(&cfg.capture.args());
        self.sidecar = Some(Sidecar::start(&self.ns, self.name, cfg));
    }

    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().expect("pod has a sidecar")
    }

    /// One client connection from this pod (as root, an application uid) to `addr`.
    pub fn call(&self, addr: impl Into<std::net::SocketAddr>) -> Result<Report, String> {
        app::call(&self.ns, addr.into())
    }

    /// An HTTP/1.1 GET from this pod to `addr` with the given Host.
    pub fn http_get(
        &self,
        addr: impl Into<std::net::SocketAddr>,
        host: &str,
    ) -> Result<(u16, Report), String> {
        app::http_get(&self.ns, addr.into(), host)
    }

    /// A counter or gauge from this pod's sidecar `/stats` (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.sidecar().stat(&self.ns, name)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(s) = &self.sidecar {
                eprintln!(
                    "---- pod {} ({}) sidecar log ----\n{}",
                    self.name,
                    self.ns.name,
                    s.log()
                );
            }
        }
    }
}
