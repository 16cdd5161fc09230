//! Configuration scale: a bootstrap with N services, Sluice's time from start to `/ready`, and
//! its memory once ready.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::report::ScaleRecord;
use crate::sys;
use crate::targets::{sluice_cluster, sluice_run, wait_ready};

/// N clusters, one bound HTTP listener with N virtual hosts (one per service host), and N
/// unbound (`bind_to_port: false`) TCP listeners, as an Istio sidecar's outbound config has.
pub fn bootstrap(n: usize, http_port: u16, upstream: SocketAddr) -> String {
    let mut s = String::with_capacity(n * 900);
    s.push_str("static_resources:\n  listeners:\n");
    let _ = write!(
        s,
        r#"  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            name: http
            virtual_hosts:
"#
    );
    for i in 0..n {
        let _ = write!(
            s,
            "            - name: svc-{i}\n              domains: [\"svc-{i}.ns.svc.cluster.local\", \"svc-{i}\"]\n              routes:\n              - match: {{prefix: /}}\n                route: {{cluster: svc-{i}}}\n"
        );
    }
    s.push_str("          http_filters:\n          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n");
    for i in 0..n {
        let _ = write!(
            s,
            r#"  - name: tcp-{i}
    address: {{socket_address: {{address: 10.{}.{}.{}, port_value: 9000}}}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp-{i}
          cluster: svc-{i}
"#,
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    s.push_str("  clusters:\n");
    for i in 0..n {
        s.push_str(&sluice_cluster(&format!("svc-{i}"), upstream, ""));
    }
    s
}

/// Starts Sluice on an N-service bootstrap, pinned to `cpu`; measures start → `/ready`, RSS.
pub fn measure(
    sluice: &Path,
    n: usize,
    upstream: SocketAddr,
    dir: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<ScaleRecord> {
    std::fs::create_dir_all(dir)?;
    let http_port = sys::free_port()?;
    let admin_port = sys::free_port()?;
    let f = dir.join(format!("scale-{n}.yaml"));
    let text = bootstrap(n, http_port, upstream);
    std::fs::write(&f, &text)?;
    let mut cmd = Command::new(sluice);
    sluice_run(&mut cmd, &f, admin_port);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("scale-{n}.log")))?);
    if let Some(cpu) = cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: only sched_setaffinity runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || sys::pin_current(cpu));
        }
    }
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", sluice.display()))?;
    let ready = wait_ready(
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
        Duration::from_secs(120),
    );
    let ready_s = t0.elapsed().as_secs_f64();
    let result = ready.and_then(|_| {
        std::thread::sleep(Duration::from_millis(200));
        let m = sys::mem(child.id()).context("reading sluice memory")?;
        let routed = get_host(
            SocketAddr::from(([127, 0, 0, 1], http_port)),
            &format!("svc-{}", n.saturating_sub(1)),
        ) == Some(200);
        Ok(ScaleRecord {
            services: n,
            bootstrap_bytes: text.len() as u64,
            ready_s,
            rss_kib: m.rss_kib,
            hwm_kib: m.hwm_kib,
            routed,
        })
    });
    sys::stop(&mut child);
    result
}

/// The status of `GET /small` with this `Host` (None if no response came).
pub(crate) fn get_host(addr: SocketAddr, host: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_n_of_each() {
        let b = bootstrap(300, 8080, "127.0.0.1:9".parse().unwrap());
        assert_eq!(b.matches("bind_to_port: false").count(), 300);
        assert_eq!(b.matches("- name: svc-").count(), 600); // vhosts + clusters
        assert!(b.contains("address: 10.100.1.43"));
        assert!(b.contains("svc-299.ns.svc.cluster.local"));
    }
}
