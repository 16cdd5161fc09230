//! The mesh DNS proxy in a pod: `sluice-iptables --redirect-dns` sends the application's DNS
//! (to the nameserver in the pod's resolv.conf) to Sluice on 15053, which answers mesh hosts
//! itself and forwards the rest to that nameserver, a test resolver in the router namespace.
//! No /etc/hosts is edited: the pod's resolv.conf is `/etc/netns/<ns>/resolv.conf`, which
//! `ip netns exec` mounts for the pod's processes.
//!
//! `pods_resolve_names_from_istio_config` runs the sidecar on a directory of Istio config
//! (`--config-dir` with `--dns-address`): service names, headless pod names, a ServiceEntry
//! host on its auto-allocated VIP and an ExternalName service (CNAME) resolve from the
//! registry, ndots:5 expansions cost no upstream query, and a config edit is picked up live.
//!
//! Root-only: without root or the tools these tests FAIL when `CI=true` and print a loud
//! "SKIPPED: needs root" otherwise.

mod pods;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Metadata, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use pods::{Capture, Net, Netns, SidecarConfig};

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 19, 99, 99);

/// A test upstream resolver (UDP) on `addr` inside `ns`: `external.test.` has an A record,
/// everything else is NXDOMAIN. Remembers every name it was asked.
struct Upstream {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(ns: &Netns, addr: SocketAddr) -> Upstream {
        let path = format!("/run/netns/{}", ns.name);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let sock = pods::enter_netns(&path).and_then(|_| {
                let s = UdpSocket::bind(addr)?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            });
            let sock = match sock {
                Ok(s) => {
                    tx.send(Ok(())).unwrap();
                    s
                }
                Err(e) => return tx.send(Err(e)).unwrap(),
            };
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut resp =
                    Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
                resp.metadata = Metadata::response_from_request(&req.metadata);
                resp.metadata.recursion_available = true;
                resp.queries = req.queries.clone();
                if let Some(q) = req.queries.first() {
                    let name = q.name().to_ascii().to_ascii_lowercase();
                    seen2.lock().unwrap().push(name.clone());
                    if name == "external.test." {
                        if q.query_type() == RecordType::A {
                            resp.add_answer(Record::from_rdata(
                                q.name().clone(),
                                60,
                                RData::A(A(EXTERNAL)),
                            ));
                        }
                    } else {
                        resp.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                let _ = sock.send_to(&resp.to_vec().unwrap(), from);
            }
        });
        rx.recv().unwrap().expect("test resolver binds");
        Upstream {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn a_records(resp: &Message) -> Vec<Ipv4Addr> {
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

#[test]
fn pods_resolve_mesh_names_through_the_sidecar_and_the_rest_upstream() {
    if !pods::preflight("pods_resolve_mesh_names_through_the_sidecar_and_the_rest_upstream") {
        return;
    }
    let net = Net::new();
    let mut app = net.pod("app");
    let nameserver = SocketAddr::from((app.gw, 53));
    let upstream = Upstream::start(&net.router, nameserver);
    app.ns.set_resolv_conf(&format!(
        "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        app.gw
    ));
    app.start_sidecar(&SidecarConfig {
        capture: Capture {
            redirect_dns: true,
            ..Capture::default()
        },
        dns_hosts: Some(
            "198.19.0.10 reviews.default.svc.cluster.local\n\
             198.19.0.20 api.external.example\n\
             198.18.9.7 reviews-0.reviews.default.svc.cluster.local\n"
                .into(),
        ),
        ..SidecarConfig::default()
    });

    // glibc's resolver (getent), short and full names, with ndots:5 search expansion.
    for (name, want) in [
        ("reviews", "198.19.0.10"),
        ("reviews.default", "198.19.0.10"),
        ("reviews.default.svc.cluster.local", "198.19.0.10"),
        ("api.external.example", "198.19.0.20"),
        ("reviews-0.reviews", "198.18.9.7"),
        ("external.test", "198.19.99.99"),
    ] {
        let out = app.ns.exec_ok("getent", &["ahostsv4", name], &[]);
        assert!(
            out.lines().next().is_some_and(|l| l.starts_with(want)),
            "getent ahostsv4 {name}: {out}\nsidecar log:\n{}",
            app.sidecar().log()
        );
    }
    // Mesh names and their search expansions never reach the upstream. (A partly qualified
    // name such as `reviews.default` still costs one forwarded miss for its first expansion,
    // `reviews.default.default.svc.cluster.local`, before the second one hits.)
    let seen = upstream.seen();
    for local in [
        "reviews.default.svc.cluster.local.",
        "reviews.default.svc.cluster.local.default.svc.cluster.local.",
        "reviews.default.svc.cluster.local.svc.cluster.local.",
        "api.external.example.",
        "api.external.example.default.svc.cluster.local.",
        "reviews-0.reviews.default.svc.cluster.local.",
    ] {
        assert!(
            !seen.iter().any(|n| n == local),
            "{local} must be answered by the sidecar; upstream saw {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|n| n.starts_with("reviews.default.svc")),
        "short name `reviews` must be answered locally on its first expansion: {seen:?}"
    );
    assert!(seen.contains(&"external.test.".to_string()), "{seen:?}");
    // Unknown names: NXDOMAIN from upstream, passed through.
    let out = app.ns.exec("getent", &["ahostsv4", "nowhere.test"], &[]);
    assert!(!out.status.success(), "unknown name must not resolve");

    // A resolver client of our own, to the pod's nameserver over UDP and TCP: captured and
    // answered by the sidecar in one round trip.
    let udp = app
        .ns
        .enter(move || -> std::io::Result<Vec<u8>> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send_to(
                &query("reviews.default.svc.cluster.local.", RecordType::A),
                nameserver,
            )?;
            let mut buf = [0u8; 4096];
            let n = s.recv(&mut buf)?;
            Ok(buf[..n].to_vec())
        })
        .unwrap()
        .expect("UDP query");
    let resp = Message::from_vec(&udp).unwrap();
    assert!(resp.metadata.authoritative, "answered by the sidecar");
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(198, 19, 0, 10)]);

    let tcp = app
        .ns
        .enter(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&nameserver, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let q = query("api.external.example.", RecordType::A);
            s.write_all(&(q.len() as u16).to_be_bytes())?;
            s.write_all(&q)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf)?;
            Ok(buf)
        })
        .unwrap()
        .expect("TCP query");
    let resp = Message::from_vec(&tcp).unwrap();
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(198, 19, 0, 20)]);

    assert!(
        app.stat("dns.local_answers_total") >= 7,
        "{}",
        app.stat("dns.local_answers_total")
    );
    assert!(app.stat("dns.forwarded_total") >= 1);
    assert_eq!(app.stat("dns.upstream_failures_total"), 0);
}

/// Sluice run on a directory of Istio config in a pod (`--config-dir` with `--dns-address`):
/// its DNS table comes from the registry. Killed, with its files removed, when dropped.
struct IstioSidecar {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl IstioSidecar {
    fn start(ns: &Netns, config: &std::path::Path, dir: std::path::PathBuf) -> IstioSidecar {
        let log = std::fs::File::create(dir.join("sluice.log")).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "setpriv"])
            .args(["--reuid", "1337", "--regid", "1337", "--clear-groups", "--"])
            .arg(pods::sluice_bin())
            .args(["run", "--config-dir"])
            .arg(config)
            .args([
                "--namespace",
                "default",
                "--admin-address",
                "127.0.0.1:15000",
                "--dns-address",
                "127.0.0.1:15053",
                "--log-level",
                "debug",
            ])
            .env("PATH", pods::search_path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        let mut s = IstioSidecar { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("sluice exited ({st}) before ready:\n{}", s.log());
            }
            if matches!(pods::sidecar::admin_get(ns, "/ready"), Ok(b) if b.starts_with("LIVE")) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sluice not ready after 15s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default()
    }
}

impl Drop for IstioSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sidecar log ----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a test directory, also when the test fails.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MESH_CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: prod}
spec:
  clusterIP: 198.19.0.11
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: default}
subsets:
- addresses: [{ip: 198.18.9.7, hostname: db-0}]
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec:
  type: ExternalName
  externalName: external.test
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.external.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 198.18.9.8}]
"#;

// The ServiceEntry is STATIC (with an endpoint) rather than DNS: with DNS resolution the
// sidecar's own cluster would resolve `api.external.example` through the upstream (as Envoy's
// STRICT_DNS clusters do, uncaptured as uid 1337), and the upstream's log below is meant to
// show only what the application's lookups cost. Auto-allocation is the same for both.

/// The first address `getent hosts name` prints, and the whole line.
fn getent_hosts(ns: &Netns, name: &str) -> Option<(String, String)> {
    let out = ns.exec("getent", &["hosts", name], &[]);
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .to_string();
    Some((line.split_whitespace().next()?.to_string(), line))
}

#[test]
fn pods_resolve_names_from_istio_config() {
    if !pods::preflight("pods_resolve_names_from_istio_config") {
        return;
    }
    let net = Net::new();
    let app = net.pod("app");
    let nameserver = SocketAddr::from((app.gw, 53));
    let upstream = Upstream::start(&net.router, nameserver);
    app.ns.set_resolv_conf(&format!(
        "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        app.gw
    ));
    app.capture(
        &Capture {
            redirect_dns: true,
            ..Capture::default()
        }
        .args(),
    );
    let dir = std::env::temp_dir().join(format!("{}-istio", app.ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveDir(dir.clone());
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("mesh.yaml"), MESH_CONFIG).unwrap();
    // The auto-allocated VIP the ServiceEntry host must get (the library's own allocation).
    let reg = sluice::istio::Registry::build(&sluice::istio::load_path(&config).unwrap().objects);
    let vip = sluice::dns::mesh::auto_allocate(&reg)["api.external.example"];
    assert_eq!(&vip.octets()[..2], &[240, 240]);
    let sidecar = IstioSidecar::start(&app.ns, &config, dir.clone());

    // glibc's resolver, ndots:5 and the pod's search domains; /etc/hosts untouched.
    for (name, want) in [
        ("reviews", "198.19.0.10".to_string()),
        ("reviews.default", "198.19.0.10".into()),
        ("reviews.default.svc.cluster.local", "198.19.0.10".into()),
        ("ratings.prod", "198.19.0.11".into()),
        ("db-0.db", "198.18.9.7".into()),
        ("api.external.example", vip.to_string()),
        ("legacy", "198.19.99.99".into()),
    ] {
        let got = getent_hosts(&app.ns, name);
        assert_eq!(
            got.as_ref().map(|g| g.0.as_str()),
            Some(want.as_str()),
            "getent hosts {name}: {got:?}\nsidecar log:\n{}",
            sidecar.log()
        );
        if name == "legacy" {
            // ExternalName: the CNAME's target is the canonical name.
            assert!(
                got.unwrap().1.contains("external.test"),
                "CNAME target shown"
            );
        }
    }
    // Not in namespace default: no bare `ratings`.
    assert!(getent_hosts(&app.ns, "ratings").is_none());
    // Unknown names fall through to the upstream (NXDOMAIN there).
    assert!(getent_hosts(&app.ns, "www.unknown.example").is_none());

    let seen = upstream.seen();
    for local in [
        "reviews.default.svc.cluster.local.",
        "reviews.default.svc.cluster.local.default.svc.cluster.local.",
        "reviews.default.default.svc.cluster.local.",
        "api.external.example.",
        "api.external.example.default.svc.cluster.local.",
        "db-0.db.default.svc.cluster.local.",
        "legacy.default.svc.cluster.local.",
        // The first expansion of an unknown qualified name: NXDOMAIN from the sidecar.
        "www.unknown.example.default.svc.cluster.local.",
    ] {
        assert!(
            !seen.iter().any(|n| n == local),
            "{local} must be answered by the sidecar; upstream saw {seen:?}"
        );
    }
    // The ExternalName's target was asked upstream by the sidecar; unknown names reach it.
    assert!(seen.contains(&"external.test.".to_string()), "{seen:?}");
    assert!(
        seen.contains(&"www.unknown.example.".to_string()),
        "{seen:?}"
    );

    // One round trip for a qualified mesh name's first ndots:5 expansion: CNAME + address.
    let resp = app
        .ns
        .enter(move || -> std::io::Result<Vec<u8>> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send_to(
                &query(
                    "reviews.default.svc.cluster.local.default.svc.cluster.local.",
                    RecordType::A,
                ),
                nameserver,
            )?;
            let mut buf = [0u8; 4096];
            let n = s.recv(&mut buf)?;
            Ok(buf[..n].to_vec())
        })
        .unwrap()
        .expect("UDP query");
    let resp = Message::from_vec(&resp).unwrap();
    assert!(resp.metadata.authoritative);
    assert!(matches!(resp.answers[0].data, RData::CNAME(_)));
    assert_eq!(a_records(&resp), vec![Ipv4Addr::new(198, 19, 0, 10)]);

    // Config changes reach the DNS table without a restart.
    assert!(getent_hosts(&app.ns, "new.external.example").is_none());
    std::fs::write(
        config.join("more.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: new, namespace: default}\nspec:\n  hosts: [new.external.example]\n  addresses: [198.19.0.77]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((ip, _)) = getent_hosts(&app.ns, "new.external.example") {
            assert_eq!(ip, "198.19.0.77");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new ServiceEntry host never resolved:\n{}",
            sidecar.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(sidecar);
}
