//! The targets under test: the direct connection (no proxy), Sluice, nginx and haproxy. Each
//! proxy gets the same three routes, one listener and one keep-alive cluster each:
//! HTTP/1.1 → HTTP/1.1 upstream, h2c → h2c upstream, TCP → TCP upstream.
//!
//! `sluice-l4` is the floor of the proxies: Sluice with a TCP proxy on all three listeners, so
//! it moves the same bytes over the same sockets with no HTTP work at all (one upstream
//! connection per client connection). What any proxy on this layout costs beyond it is its
//! protocol work; what it costs below it, no proxy that reads and writes sockets can save.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::load::Proto;
use crate::sys;
use crate::upstream::Upstream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Sluice,
    /// Sluice as a plain TCP proxy on every listener: the floor (see the module docs).
    #[serde(rename = "sluice-l4")]
    SluiceL4,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Sluice => "sluice",
            Kind::SluiceL4 => "sluice-l4",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// Whether this target is the Sluice binary (with its admin endpoint and `/ready`).
    pub fn is_sluice(self) -> bool {
        matches!(self, Kind::Sluice | Kind::SluiceL4)
    }

    pub const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::Sluice,
        Kind::SluiceL4,
        Kind::Nginx,
        Kind::Haproxy,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Bins {
    pub sluice: PathBuf,
    pub nginx: PathBuf,
    pub haproxy: PathBuf,
}

impl Bins {
    pub fn path(&self, k: Kind) -> Option<&Path> {
        match k {
            Kind::Direct => None,
            Kind::Sluice | Kind::SluiceL4 => Some(&self.sluice),
            Kind::Nginx => Some(&self.nginx),
            Kind::Haproxy => Some(&self.haproxy),
        }
    }

    pub fn available(&self, k: Kind) -> bool {
        self.path(k).is_none_or(|p| p.exists())
    }

    /// The version line each binary prints.
    pub fn version(&self, k: Kind) -> String {
        let Some(p) = self.path(k) else {
            return "-".into();
        };
        let arg = if k.is_sluice() { "--version" } else { "-v" };
        Command::new(p)
            .arg(arg)
            .output()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }
}

/// A started target; dropping it stops the process (`sys::stop`).
pub struct Running {
    pub kind: Kind,
    pub child: Option<Child>,
    pub h1: SocketAddr,
    pub h2: SocketAddr,
    pub tcp: SocketAddr,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn addr(&self, p: Proto) -> SocketAddr {
        match p {
            Proto::H1 => self.h1,
            Proto::H2 | Proto::Grpc | Proto::GrpcStream => self.h2,
            Proto::TcpEcho | Proto::TcpBulk => self.tcp,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            sys::stop(c);
        }
    }
}

/// Adds `sluice run` on `bootstrap` to `cmd`: admin on 127.0.0.1:`admin_port`, warnings only,
/// and no drain time, so stopping it (`sys::stop`) waits for no connection.
pub fn sluice_run(cmd: &mut Command, bootstrap: &Path, admin_port: u16) {
    cmd.arg("run")
        .arg("--bootstrap")
        .arg(bootstrap)
        .arg("--admin-address")
        .arg(format!("127.0.0.1:{admin_port}"))
        .args(["--log-level", "warn", "--drain-time", "0s"]);
}

struct Ports {
    h1: u16,
    h2: u16,
    tcp: u16,
    admin: u16,
}

/// Starts `kind` with its config written under `dir`, the process pinned to `cpu`.
pub fn start(
    kind: Kind,
    bins: &Bins,
    up: &Upstream,
    dir: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<Running> {
    start_wrapped(kind, bins, up, dir, cpu, &[])
}

/// As [`start`], with the target run under `wrapper` (e.g. `valgrind --tool=callgrind`), which
/// must exec the target in the same process. A wrapped target gets longer to start.
pub fn start_wrapped(
    kind: Kind,
    bins: &Bins,
    up: &Upstream,
    dir: &Path,
    cpu: Option<usize>,
    wrapper: &[String],
) -> anyhow::Result<Running> {
    if kind == Kind::Direct {
        return Ok(Running {
            kind,
            child: None,
            h1: up.http,
            h2: up.http,
            tcp: up.tcp,
        });
    }
    let dir = dir.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let p = Ports {
        h1: sys::free_port()?,
        h2: sys::free_port()?,
        tcp: sys::free_port()?,
        admin: sys::free_port()?,
    };
    let bin = bins.path(kind).unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    match kind {
        Kind::Sluice | Kind::SluiceL4 => {
            let f = dir.join("bootstrap.yaml");
            let l4 = kind == Kind::SluiceL4;
            std::fs::write(&f, sluice_bootstrap(&p, up, l4))?;
            sluice_run(&mut cmd, &f, p.admin);
        }
        Kind::Nginx => {
            let f = dir.join("nginx.conf");
            std::fs::write(&f, nginx_conf(&p, up, &dir))?;
            cmd.arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&f)
                .arg("-e")
                .arg(dir.join("error.log"));
        }
        Kind::Haproxy => {
            let f = dir.join("haproxy.cfg");
            std::fs::write(&f, haproxy_cfg(&p, up))?;
            cmd.arg("-f").arg(&f).arg("-db");
        }
        Kind::Direct => unreachable!(),
    }
    let log = std::fs::File::create(dir.join("output.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(cpu) = cpu {
        // SAFETY: only sched_setaffinity (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || sys::pin_current(cpu));
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut r = Running {
        kind,
        child: Some(child),
        h1: loopback(p.h1),
        h2: loopback(p.h2),
        tcp: loopback(p.tcp),
    };
    let limit = Duration::from_secs(if wrapper.is_empty() { 20 } else { 180 });
    for a in [r.h1, r.h2, r.tcp] {
        if !sys::wait_listening(a, limit) {
            let _ = r.child.as_mut().map(|c| c.kill());
            let out = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
            anyhow::bail!("{} did not listen on {a}: {out}", kind.name());
        }
    }
    if kind.is_sluice() {
        wait_ready(loopback(p.admin), limit)?;
    }
    // The runtime may have started threads before the affinity of the first one was set;
    // taskset -a semantics, to be sure.
    if let (Some(cpu), Some(pid)) = (cpu, r.pid()) {
        let _ = sys::pin_all_threads(pid, cpu);
    }
    Ok(r)
}

/// Polls `GET /ready` on an admin address until 200; returns how long it took.
pub fn wait_ready(admin: SocketAddr, limit: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if get_status(admin, "/ready") == Some(200) {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::bail!("{admin}/ready did not answer 200 within {limit:?}")
}

/// Minimal blocking HTTP/1.0 GET; returns the status code.
pub fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const H2_OPTS: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

/// An HTTP listener routing everything to `cluster`.
pub fn sluice_http_listener(name: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: {name}
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: {cluster}, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {ROUTER}
"#
    )
}

/// A static cluster with one loopback endpoint.
pub fn sluice_cluster(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
        addr.ip(),
        addr.port()
    )
}

/// A listener on `port` forwarding every connection to `cluster` as opaque TCP.
fn sluice_tcp_listener(name: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
"#
    )
}

/// Sluice's three routes; with `l4`, the HTTP listeners are TCP proxies too (`sluice-l4`).
fn sluice_bootstrap(p: &Ports, up: &Upstream, l4: bool) -> String {
    let http = if l4 {
        sluice_tcp_listener
    } else {
        sluice_http_listener
    };
    format!(
        "static_resources:\n  listeners:\n{}{}{}  clusters:\n{}{}{}",
        http("h1", p.h1, "up_h1"),
        http("h2", p.h2, "up_h2"),
        sluice_tcp_listener("tcp", p.tcp, "up_tcp"),
        sluice_cluster("up_h1", up.http, ""),
        sluice_cluster("up_h2", up.http, H2_OPTS),
        sluice_cluster("up_tcp", up.tcp, ""),
    )
}

fn nginx_conf(p: &Ports, up: &Upstream, dir: &Path) -> String {
    let d = dir.display();
    let stream_mod = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    let load = if stream_mod.exists() {
        format!("load_module {};\n", stream_mod.display())
    } else {
        String::new()
    };
    format!(
        r#"{load}worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream up_h1 {{ server {up}; keepalive 64; keepalive_requests 100000000; }}
  upstream up_h2 {{ server {up}; keepalive 64; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{h1};
    location / {{ proxy_pass http://up_h1; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{h2} http2;
    location / {{ grpc_pass grpc://up_h2; }}
  }}
}}
stream {{
  upstream up_tcp {{ server {tcp}; }}
  server {{ listen 127.0.0.1:{ptcp}; proxy_pass up_tcp; }}
}}
"#,
        up = up.http,
        tcp = up.tcp,
        h1 = p.h1,
        h2 = p.h2,
        ptcp = p.tcp,
    )
}

fn haproxy_cfg(p: &Ports, up: &Upstream) -> String {
    format!(
        r#"global
  nbthread 1
  maxconn 4096
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend h1
  mode http
  bind 127.0.0.1:{h1}
  default_backend up_h1
backend up_h1
  mode http
  http-reuse always
  server s1 {up}
frontend h2
  mode http
  bind 127.0.0.1:{h2} proto h2
  default_backend up_h2
backend up_h2
  mode http
  http-reuse always
  server s1 {up} proto h2
listen tcp
  mode tcp
  bind 127.0.0.1:{ptcp}
  server s1 {tcp}
"#,
        up = up.http,
        tcp = up.tcp,
        h1 = p.h1,
        h2 = p.h2,
        ptcp = p.tcp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Upstream {
        Upstream {
            http: "127.0.0.1:9001".parse().unwrap(),
            tcp: "127.0.0.1:9002".parse().unwrap(),
        }
    }
    fn ports() -> Ports {
        Ports {
            h1: 1,
            h2: 2,
            tcp: 3,
            admin: 4,
        }
    }

    #[test]
    fn configs_route_to_the_upstream() {
        let s = sluice_bootstrap(&ports(), &up(), false);
        assert!(s.contains("port_value: 9001") && s.contains("port_value: 9002"));
        assert!(s.contains("http2_protocol_options"));
        let hcm = "name: envoy.filters.network.http_connection_manager";
        assert_eq!(s.matches(hcm).count(), 2);
        let l4 = sluice_bootstrap(&ports(), &up(), true);
        assert!(!l4.contains("http_connection_manager"));
        assert_eq!(l4.matches("tcp_proxy.v3.TcpProxy").count(), 3);
        let n = nginx_conf(&ports(), &up(), Path::new("/tmp/x"));
        assert!(n.contains("grpc_pass grpc://up_h2") && n.contains("server 127.0.0.1:9002"));
        let h = haproxy_cfg(&ports(), &up());
        assert!(h.contains("server s1 127.0.0.1:9001 proto h2"));
    }

    /// Both of Sluice's bootstraps decode as Envoy bootstraps (through Sluice's own loader),
    /// with the listeners' network filters as intended: HTTP on h1 and h2 unless `l4`.
    #[test]
    fn sluice_bootstraps_decode_with_the_intended_filters() {
        use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
        use sluice::config::proto::{decode, Format};
        for l4 in [false, true] {
            let b: Bootstrap = decode(&sluice_bootstrap(&ports(), &up(), l4), Format::Yaml)
                .unwrap_or_else(|e| panic!("l4={l4}: {e}"));
            let res = b.static_resources.unwrap();
            let filters: Vec<(String, String)> = res
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.filter_chains[0].filters[0].name.clone()))
                .collect();
            let http = if l4 {
                "envoy.filters.network.tcp_proxy"
            } else {
                "envoy.filters.network.http_connection_manager"
            };
            let want = [
                ("h1", http),
                ("h2", http),
                ("tcp", "envoy.filters.network.tcp_proxy"),
            ];
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(filters, want, "l4={l4}");
            assert_eq!(res.clusters.len(), 3);
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
    }
}
