//! The sidecar: capture settings for `sluice-iptables`, an Istio-shaped static bootstrap, and
//! the Sluice process (uid/gid 1337, admin on the pod's 127.0.0.1:15000) with its `/stats`.
//!
//! Bootstrap, as istiod would generate it for a sidecar:
//! - `virtualOutbound` on 0.0.0.0:15001 with `use_original_dst`: connections are handed to the
//!   listener of their original `ip:port` (one per service VIP, `bind_to_port: false`), else
//!   its default chain sends them to `PassthroughCluster` (ORIGINAL_DST).
//! - `virtualInbound` on 0.0.0.0:15006 with the `original_dst` listener filter and a TCP chain
//!   to `InboundPassthroughClusterIpv4` (ORIGINAL_DST), whose upstream source is 127.0.0.6
//!   (REDIRECT mode: the capture rules return traffic from 127.0.0.6 on `lo`, so the
//!   sidecar's own connection to the application is not captured again). In TPROXY mode the
//!   listener is `transparent` and has `original_src` (mark 1337) so the application sees the
//!   client's address.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{search_path, sluice_bin, Netns};

pub const PROXY_UID: u32 = 1337;
pub const ADMIN_PORT: u16 = 15000;

/// `sluice-iptables` settings for one pod.
#[derive(Debug, Clone)]
pub struct Capture {
    /// REDIRECT or TPROXY inbound.
    pub tproxy: bool,
    /// `-b`: inbound ports to capture (`*` or a list).
    pub inbound_ports: String,
    /// `-o`: outbound ports never captured.
    pub exclude_outbound_ports: String,
    /// `-x`: outbound CIDRs never captured.
    pub exclude_cidrs: String,
    /// `--redirect-dns`: DNS to the resolv.conf nameservers goes to 15053.
    pub redirect_dns: bool,
    /// `--tproxy-mark-return` (Sluice extension; TPROXY only): the sidecar's `original_src`
    /// connection to its app is not captured again (istio/istio#23369).
    pub tproxy_mark_return: bool,
}

impl Default for Capture {
    fn default() -> Capture {
        Capture {
            tproxy: false,
            inbound_ports: "*".into(),
            exclude_outbound_ports: String::new(),
            exclude_cidrs: String::new(),
            redirect_dns: false,
            tproxy_mark_return: false,
        }
    }
}

impl Capture {
    /// The flags Istio's injector passes to istio-init, with these settings.
    pub fn args(&self) -> Vec<&str> {
        let mut a = vec![
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-g",
            "1337",
            "-m",
            if self.tproxy { "TPROXY" } else { "REDIRECT" },
            "-i",
            "*",
            "-x",
            &self.exclude_cidrs,
            "-b",
            &self.inbound_ports,
            "-d",
            "15090,15021,15020",
        ];
        if !self.exclude_outbound_ports.is_empty() {
            a.extend(["-o", &self.exclude_outbound_ports]);
        }
        if self.redirect_dns {
            a.push("--redirect-dns");
        }
        if self.tproxy_mark_return {
            a.push("--tproxy-mark-return");
        }
        a
    }
}

/// An outbound service: a VIP port the sidecar routes to the given endpoints.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
    /// HTTP connection manager (route to the service) instead of tcp_proxy.
    pub http: bool,
}

impl Service {
    /// Istio's cluster name, `outbound|<port>||<name>`.
    pub fn cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.name)
    }
}

/// Everything a pod's sidecar is configured with.
#[derive(Debug, Clone, Default)]
pub struct SidecarConfig {
    pub capture: Capture,
    pub services: Vec<Service>,
    /// Serve the DNS proxy on 127.0.0.1:15053 with these hosts (hosts-file text).
    pub dns_hosts: Option<String>,
    /// Run the Istio translation of this YAML (`--config-dir`, sidecar in `default`, redirect
    /// interception) instead of the static bootstrap; `services` are then unused.
    pub istio_yaml: Option<String>,
}

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn tcp_chain(indent: &str, stat_prefix: &str, cluster: &str) -> String {
    format!(
        "{indent}filters:\n{indent}- name: envoy.filters.network.tcp_proxy\n{indent}  typed_config:\n{indent}    \"@type\": {TCP_PROXY}\n{indent}    stat_prefix: \"{stat_prefix}\"\n{indent}    cluster: \"{cluster}\"\n"
    )
}

fn http_chain(indent: &str, s: &Service) -> String {
    let c = s.cluster();
    format!(
        r#"{indent}filters:
{indent}- name: envoy.filters.network.http_connection_manager
{indent}  typed_config:
{indent}    "@type": {HCM}
{indent}    stat_prefix: "{c}"
{indent}    route_config:
{indent}      name: "{port}"
{indent}      virtual_hosts:
{indent}      - name: "{name}"
{indent}        domains: ["*"]
{indent}        routes:
{indent}        - match: {{prefix: /}}
{indent}          route: {{cluster: "{c}"}}
{indent}    http_filters:
{indent}    - name: envoy.filters.http.router
{indent}      typed_config:
{indent}        "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        port = s.port,
        name = s.name,
    )
}

impl SidecarConfig {
    /// The Envoy v3 static bootstrap for this sidecar.
    pub fn bootstrap(&self) -> String {
        let mut y = String::from("static_resources:\n  listeners:\n");
        // Outbound capture: hand off by original destination, else pass through.
        y.push_str(
            "  - name: virtualOutbound\n    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}\n    use_original_dst: true\n    default_filter_chain:\n",
        );
        y.push_str(&tcp_chain(
            "      ",
            "PassthroughCluster",
            "PassthroughCluster",
        ));
        for s in &self.services {
            let _ = writeln!(
                y,
                "  - name: \"{vip}_{port}\"\n    address: {{socket_address: {{address: {vip}, port_value: {port}}}}}\n    bind_to_port: false\n    filter_chains:",
                vip = s.vip,
                port = s.port
            );
            let chain = if s.http {
                http_chain("      ", s)
            } else {
                tcp_chain("      ", &s.cluster(), &s.cluster())
            };
            y.push_str("    - ");
            y.push_str(chain.trim_start());
        }
        // Inbound capture.
        y.push_str("  - name: virtualInbound\n    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}\n");
        if self.capture.tproxy {
            y.push_str("    transparent: true\n");
        }
        y.push_str("    listener_filters:\n    - name: envoy.filters.listener.original_dst\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}\n");
        if self.capture.tproxy {
            y.push_str("    - name: envoy.filters.listener.original_src\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc, mark: 1337}\n");
        }
        y.push_str("    filter_chains:\n    - ");
        y.push_str(
            tcp_chain(
                "      ",
                "InboundPassthroughClusterIpv4",
                "InboundPassthroughClusterIpv4",
            )
            .trim_start(),
        );
        y.push_str("  clusters:\n");
        y.push_str("  - name: PassthroughCluster\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 2s\n");
        y.push_str("  - name: InboundPassthroughClusterIpv4\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 2s\n    upstream_bind_config: {source_address: {address: 127.0.0.6, port_value: 0}}\n");
        for s in &self.services {
            let _ = writeln!(
                y,
                "  - name: \"{c}\"\n    type: STATIC\n    connect_timeout: 2s\n    load_assignment:\n      cluster_name: \"{c}\"\n      endpoints:\n      - lb_endpoints:",
                c = s.cluster()
            );
            for e in &s.endpoints {
                let _ = writeln!(
                    y,
                    "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
                    e.ip(),
                    e.port()
                );
            }
        }
        y
    }
}

/// A running Sluice sidecar; killed when dropped.
pub struct Sidecar {
    child: Child,
    dir: PathBuf,
}

impl Sidecar {
    /// Writes the bootstrap and starts Sluice in `ns` as uid/gid 1337 (with `CAP_NET_ADMIN`
    /// in TPROXY mode, as Istio grants it), then waits for `/ready`.
    pub fn start(ns: &Netns, pod: &str, cfg: &SidecarConfig) -> Sidecar {
        let dir = std::env::temp_dir().join(format!("{}-{pod}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bootstrap = dir.join("bootstrap.yaml");
        std::fs::write(&bootstrap, cfg.bootstrap()).unwrap();
        let log = std::fs::File::create(dir.join("sluice.log")).unwrap();
        let uid = PROXY_UID.to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "setpriv"]).args([
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
        ]);
        if cfg.capture.tproxy {
            cmd.args(["--inh-caps", "+net_admin", "--ambient-caps", "+net_admin"]);
        }
        cmd.arg("--").arg(sluice_bin()).arg("run");
        match &cfg.istio_yaml {
            Some(yaml) => {
                let conf = dir.join("istio");
                std::fs::create_dir_all(&conf).unwrap();
                std::fs::write(conf.join("config.yaml"), yaml).unwrap();
                cmd.arg("--config-dir").arg(&conf).args([
                    "--role",
                    "sidecar",
                    "--namespace",
                    "default",
                    "--interception",
                    "redirect",
                ]);
            }
            None => {
                cmd.arg("--bootstrap").arg(&bootstrap);
            }
        }
        cmd.args([
            "--admin-address",
            &format!("127.0.0.1:{ADMIN_PORT}"),
            "--log-level",
            "debug",
        ])
        .env("PATH", search_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if let Some(hosts) = &cfg.dns_hosts {
            let f = dir.join("hosts");
            std::fs::write(&f, hosts).unwrap();
            cmd.args(["--dns-address", "127.0.0.1:15053", "--dns-hosts"])
                .arg(f);
        }
        let child = cmd.spawn().expect("spawn sluice");
        let mut s = Sidecar { child, dir };
        s.wait_ready(ns);
        s
    }

    fn wait_ready(&mut self, ns: &Netns) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice in {} exited ({status}) before ready:\n{}",
                    ns.name,
                    self.log()
                );
            }
            if matches!(admin_get(ns, "/ready"), Ok(b) if b.starts_with("LIVE")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice in {} not ready after 15s:\n{}",
                ns.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sidecar's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default()
    }

    /// All `/stats` as `name → value` (counters and gauges).
    pub fn stats(&self, ns: &Netns) -> std::collections::BTreeMap<String, u64> {
        let body = admin_get(ns, "/stats").unwrap_or_else(|e| panic!("/stats in {}: {e}", ns.name));
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(": ")?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// One stat (0 when the sidecar has not created it yet).
    pub fn stat(&self, ns: &Netns, name: &str) -> u64 {
        self.stats(ns).get(name).copied().unwrap_or(0)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET an admin path on the pod's 127.0.0.1:15000; returns the body of a 200.
pub fn admin_get(ns: &Netns, path: &str) -> Result<String, String> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    let resp = ns
        .enter(move || -> std::io::Result<String> {
            let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(req.as_bytes())?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(String::from_utf8_lossy(&got).into_owned())
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{path}: {head}"));
    }
    Ok(dechunk(head, body))
}

/// Undoes `transfer-encoding: chunked` when the admin server used it.
fn dechunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
