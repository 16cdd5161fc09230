//! The mesh DNS proxy in a pod: `sluice-iptables --redirect-dns` sends the application's DNS
//! (to the nameserver in the pod's resolv.conf) to Sluice on 15053, which answers mesh hosts
//! itself and forwards the rest to that nameserver, a test resolver in the router namespace.
//! No /etc/hosts is edited: the pod's resolv.conf is `/etc/netns/<ns>/resolv.conf`, which
//! `ip netns exec` mounts for the pod's processes.
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
