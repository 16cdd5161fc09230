//! The `sluice` binary's command line: `route-check` exit statuses and output, and `run`
//! refusing bad bootstraps with the file and field named.

use std::path::PathBuf;
use std::process::Command;

fn conformance() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/envoy-router-check");
    assert!(p.is_dir(), "conformance data missing at {}", p.display());
    p
}

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn route_check_exit_status_follows_envoy() {
    let c = conformance();
    let ok = sluice()
        .args(["route-check", "--config"])
        .arg(c.join("Weighted.yaml"))
        .arg("--tests")
        .arg(c.join("Weighted.golden.proto.json"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let bad = sluice()
        .args(["route-check", "--only-show-failures", "--config"])
        .arg(c.join("TestRoutes.yaml"))
        .arg("--tests")
        .arg(c.join("Weighted.golden.proto.json"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("expected: [cluster1], actual: [instant-server], test type: cluster_name"),
        "{out}"
    );
    let missing = sluice()
        .args([
            "route-check",
            "--config",
            "/nonexistent.yaml",
            "--tests",
            "/nonexistent.json",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn run_rejects_bad_bootstrap_naming_file_and_field() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.yaml");
    std::fs::write(
        &f,
        "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 1s\n    lb_polcy: ROUND_ROBIN\n",
    )
    .unwrap();
    let out = sluice()
        .args(["run", "--admin-address", "127.0.0.1:0", "--bootstrap"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("static_resources.clusters[0]"), "{err}");
    assert!(err.contains("lb_polcy"), "{err}");
    // Once: the decoder's message is not repeated as its cause.
    assert_eq!(err.matches("lb_polcy").count(), 1, "{err}");
    // A valid document with an unsupported filter names the resource and the filter.
    std::fs::write(
        &f,
        r#"static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: r
"#,
    )
    .unwrap();
    let out = sluice()
        .args(["run", "--admin-address", "127.0.0.1:0", "--bootstrap"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener l"), "{err}");
    assert!(err.contains("filter_chains[0].filters[0]"), "{err}");
    assert!(err.contains("redis_proxy"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("b.yaml");
    std::fs::write(
        &f,
        r#"static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
  - name: c
    connect_timeout: 1s
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}
"#,
    )
    .unwrap();
    let child = sluice()
        .args([
            "run",
            "--admin-address",
            "127.0.0.1:0",
            "--drain-time",
            "1s",
            "--bootstrap",
        ])
        .arg(&f)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SIGTERM, as Kubernetes sends it.
    let rc = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let out = child.wait_with_output().unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {log}", out.status);
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(log.contains("drain finished"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.1 exchange with the admin endpoint: (status, body).
fn admin(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn log_levels_take_envoys_names_and_refuse_words_that_name_none() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("b.yaml");
    std::fs::write(&f, "static_resources: {}\n").unwrap();
    // A typo is refused at start, not taken for a target to trace.
    let mut typo = sluice()
        .args([
            "run",
            "--admin-address",
            "127.0.0.1:0",
            "--log-level",
            "warnning",
            "--bootstrap",
        ])
        .arg(&f)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..100 {
        exited = typo.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if exited.is_none() {
        let _ = typo.kill();
        panic!("sluice started with --log-level warnning");
    }
    let out = typo.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-level") && err.contains("\"warnning\""),
        "{err}"
    );

    // `warning`, as pilot-agent passes it; then the admin endpoint takes Envoy's names too.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = sluice()
        .args([
            "run",
            "--log-level",
            "warning",
            "--admin-address",
            &addr.to_string(),
            "--bootstrap",
        ])
        .arg(&f)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "the admin endpoint did not come up");
    let (status, body) = admin(addr, "GET", "/logging");
    assert_eq!(
        (status, body.as_str()),
        (200, "active loggers:\n  all: warning\n")
    );
    let (status, body) = admin(addr, "POST", "/logging?level=critical");
    assert_eq!(
        (status, body.as_str()),
        (200, "active loggers:\n  all: critical\n")
    );
    let (status, body) = admin(addr, "POST", "/logging?level=bogus");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"bogus\""), "{body}");
    // The refused level changed nothing.
    let (_, body) = admin(addr, "GET", "/logging");
    assert_eq!(body, "active loggers:\n  all: critical\n");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
