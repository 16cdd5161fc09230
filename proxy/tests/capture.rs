//! Transparent capture end to end, in pods made of network namespaces (see `pods/mod.rs` for
//! the topology and its safety rules). Every claim is read from the sidecars' own `/stats`
//! and from what the application saw (`local`/`peer` of its accepted connection).
//!
//! Root-only: without root or the tools these tests FAIL when `CI=true` and print a loud
//! "SKIPPED: needs root" otherwise.

mod pods;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use pods::{Capture, Net, Pod, Service, SidecarConfig};

const OUT_CX: &str = "listener.0.0.0.0_15001.downstream_cx_total";
const IN_CX: &str = "listener.0.0.0.0_15006.downstream_cx_total";
const PASSTHROUGH_CX: &str = "cluster.PassthroughCluster.upstream_cx_total";
const INBOUND_CX: &str = "cluster.InboundPassthroughClusterIpv4.upstream_cx_total";
const LOCAL_SIX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Pod A (client, sidecar with `a_cfg`) and pod B (application on `b_ports`, sidecar with
/// `b_capture`).
fn two_pods(
    net: &Net,
    a_cfg: impl FnOnce(&Pod) -> SidecarConfig,
    b_ports: &[u16],
    b_capture: Capture,
) -> (Pod, Pod) {
    let mut a = net.pod("a");
    let mut b = net.pod("b");
    b.serve(b_ports);
    b.start_sidecar(&SidecarConfig {
        capture: b_capture,
        ..SidecarConfig::default()
    });
    let cfg = a_cfg(&b);
    a.start_sidecar(&cfg);
    (a, b)
}

fn assert_stats(pod: &Pod, expected: &[(&str, u64)]) {
    let stats = pod.sidecar().stats(&pod.ns);
    for (name, want) in expected {
        let got = stats.get(*name).copied().unwrap_or(0);
        assert_eq!(
            got,
            *want,
            "pod {}: {name} = {got}, want {want}\nstats:\n{stats:#?}\niptables:\n{}",
            pod.name,
            pod.iptables_save()
        );
    }
}

#[test]
fn outbound_call_traverses_both_sidecars_with_original_destination() {
    if !pods::preflight("outbound_call_traverses_both_sidecars_with_original_destination") {
        return;
    }
    let net = Net::new();
    let tcp_vip = Ipv4Addr::new(198, 19, 0, 10);
    let http_vip = Ipv4Addr::new(198, 19, 0, 11);
    net.add_vip(tcp_vip);
    net.add_vip(http_vip);
    let (a, b) = two_pods(
        &net,
        |b| SidecarConfig {
            capture: Capture::default(),
            services: vec![
                Service {
                    name: "b-tcp",
                    vip: tcp_vip,
                    port: 80,
                    endpoints: vec![sa(b.ip, 8080)],
                    http: false,
                },
                Service {
                    name: "b-http",
                    vip: http_vip,
                    port: 80,
                    endpoints: vec![sa(b.ip, 8081)],
                    http: true,
                },
            ],
            ..SidecarConfig::default()
        },
        &[8080, 8081],
        Capture::default(),
    );

    // By VIP, over TCP: A's 15001 hands the connection to the VIP's listener, whose cluster
    // has B's pod address; B's 15006 recovers that destination and connects to it from
    // 127.0.0.6, so the application sees the address it was called on.
    let r = a.call(sa(tcp_vip, 80)).expect("TCP call by VIP");
    assert_eq!(r.app, "b");
    assert_eq!(
        r.local,
        sa(b.ip, 8080),
        "original destination intact: {r:?}"
    );
    assert_eq!(
        r.peer.ip(),
        LOCAL_SIX,
        "B's sidecar connects from 127.0.0.6"
    );

    // By VIP, over HTTP (HTTP connection manager on the VIP's listener).
    let (status, r) = a.http_get(sa(http_vip, 80), "b-http").expect("HTTP by VIP");
    assert_eq!(status, 200);
    assert_eq!(r.local, sa(b.ip, 8081));
    assert_eq!(r.peer.ip(), LOCAL_SIX);

    // By pod address: PassthroughCluster.
    let r = a.call(sa(b.ip, 8080)).expect("call by pod IP");
    assert_eq!(r.local, sa(b.ip, 8080));
    assert_eq!(r.peer.ip(), LOCAL_SIX);

    // Exactly one capture per call on each side: the sidecars' own upstream connections
    // (uid 1337 on A, 127.0.0.6 on B) were never captured again, so nothing looped.
    assert_stats(
        &a,
        &[
            (OUT_CX, 3),
            ("cluster.outbound|80||b-tcp.upstream_cx_total", 1),
            ("cluster.outbound|80||b-http.upstream_cx_total", 1),
            ("http.outbound|80||b-http.downstream_rq_total", 1),
            (PASSTHROUGH_CX, 1),
            (IN_CX, 0),
        ],
    );
    assert_stats(&b, &[(IN_CX, 3), (INBOUND_CX, 3), (OUT_CX, 0)]);

    // Without A's sidecar in the way the VIP goes nowhere: it only exists on the router,
    // where nothing listens. (Proves the VIP answer above came through the capture.)
    let bypass = net.router.enter(move || {
        std::net::TcpStream::connect_timeout(&sa(tcp_vip, 80), std::time::Duration::from_secs(2))
            .map(|_| ())
    });
    assert!(
        matches!(bypass, Ok(Err(_))),
        "VIP must not be served outside the mesh: {bypass:?}"
    );
}

#[test]
fn excluded_outbound_ports_and_cidrs_bypass_the_sidecar() {
    if !pods::preflight("excluded_outbound_ports_and_cidrs_bypass_the_sidecar") {
        return;
    }
    let net = Net::new();
    let extra = Ipv4Addr::new(198, 19, 200, 2);
    let (a, b) = two_pods(
        &net,
        |_| SidecarConfig {
            capture: Capture {
                exclude_outbound_ports: "9000".into(),
                exclude_cidrs: "198.19.200.0/24".into(),
                ..Capture::default()
            },
            ..SidecarConfig::default()
        },
        &[8080, 9000],
        Capture::default(),
    );
    net.add_pod_addr(&b, extra);

    // Excluded port: A's sidecar never sees it; B's inbound capture still does.
    let r = a.call(sa(b.ip, 9000)).expect("excluded port");
    assert_eq!(r.local, sa(b.ip, 9000));
    assert_stats(&a, &[(OUT_CX, 0)]);
    assert_stats(&b, &[(IN_CX, 1)]);

    // Excluded CIDR: same.
    let r = a.call(sa(extra, 8080)).expect("excluded CIDR");
    assert_eq!(r.local, sa(extra, 8080));
    assert_stats(&a, &[(OUT_CX, 0), (PASSTHROUGH_CX, 0)]);
    assert_stats(&b, &[(IN_CX, 2)]);

    // Control: anything else is captured.
    let r = a.call(sa(b.ip, 8080)).expect("captured call");
    assert_eq!(r.local, sa(b.ip, 8080));
    assert_stats(&a, &[(OUT_CX, 1), (PASSTHROUGH_CX, 1)]);
    assert_stats(&b, &[(IN_CX, 3)]);
}

#[test]
fn inbound_ports_outside_the_include_list_bypass_the_sidecar() {
    if !pods::preflight("inbound_ports_outside_the_include_list_bypass_the_sidecar") {
        return;
    }
    let net = Net::new();
    let (a, b) = two_pods(
        &net,
        |_| SidecarConfig::default(),
        &[8080, 7070],
        Capture {
            inbound_ports: "8080".into(),
            ..Capture::default()
        },
    );

    // 7070 is not in B's include list: A's sidecar passes it through, B's sidecar never
    // sees it, and the application is called directly by A's sidecar (A's pod address).
    let r = a
        .call(sa(b.ip, 7070))
        .expect("port outside the include list");
    assert_eq!(r.local, sa(b.ip, 7070));
    assert_eq!(r.peer.ip(), a.ip, "not proxied by B: {r:?}");
    assert_stats(&a, &[(OUT_CX, 1)]);
    assert_stats(&b, &[(IN_CX, 0)]);

    // 8080 is included.
    let r = a.call(sa(b.ip, 8080)).expect("included port");
    assert_eq!(r.local, sa(b.ip, 8080));
    assert_eq!(r.peer.ip(), LOCAL_SIX);
    assert_stats(&a, &[(OUT_CX, 2)]);
    assert_stats(&b, &[(IN_CX, 1), (INBOUND_CX, 1)]);
}

#[test]
fn tproxy_inbound_keeps_the_client_source_address() {
    if !pods::preflight("tproxy_inbound_keeps_the_client_source_address") {
        return;
    }
    let net = Net::new();
    let (a, b) = two_pods(
        &net,
        |_| SidecarConfig::default(),
        &[8080],
        Capture {
            tproxy: true,
            tproxy_mark_return: true,
            ..Capture::default()
        },
    );
    // Istio's TPROXY rules alone (which sluice-iptables reproduces golden for golden by
    // default) loop the sidecar's `original_src` connection to its own application: it leaves
    // on `lo` as uid 1337 from the client's address, so nat `ISTIO_OUTPUT` sends it through
    // `ISTIO_IN_REDIRECT` back to 15006, where the kernel drops it (the same loop as
    // istio/istio#23369). Only `original_src` sockets carry the TPROXY mark 1337, so
    // `--tproxy-mark-return` exempts that mark first in nat `ISTIO_OUTPUT`; without it this
    // test times out.
    let save = b.iptables_save();
    let output: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A ISTIO_OUTPUT "))
        .collect();
    assert_eq!(
        output.first().copied(),
        Some("-A ISTIO_OUTPUT -o lo -p tcp -m mark --mark 0x539 -j RETURN"),
        "{save}"
    );
    for n in 1..=3 {
        let r = a.call(sa(b.ip, 8080)).expect("call into a TPROXY pod");
        assert_eq!(r.local, sa(b.ip, 8080), "original destination intact");
        assert_eq!(r.peer.ip(), a.ip, "the application sees the client: {r:?}");
        assert_stats(&a, &[(OUT_CX, n), (PASSTHROUGH_CX, n)]);
        // One inbound capture per call: the sidecar's transparent upstream connection (from
        // A's address, mark 1337) is not captured again.
        assert_stats(&b, &[(IN_CX, n), (INBOUND_CX, n)]);
    }
}

#[test]
fn headless_service_pods_are_reached_through_their_own_listeners() {
    if !pods::preflight("headless_service_pods_are_reached_through_their_own_listeners") {
        return;
    }
    let net = Net::new();
    let (a, b) = two_pods(
        &net,
        |b| SidecarConfig {
            istio_yaml: Some(format!(
                r#"apiVersion: v1
kind: Service
metadata: {{name: db, namespace: default}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: tcp-db, port: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: db, namespace: default}}
subsets:
- addresses: [{{ip: {ip}}}]
  ports: [{{name: tcp-db, port: 8080}}]
"#,
                ip = b.ip
            )),
            ..SidecarConfig::default()
        },
        &[8080, 8081],
        Capture::default(),
    );
    // istiod's per-pod listener `PODIP_8080` takes the call to the pod of the headless
    // service: the service's (original-destination) cluster, not PassthroughCluster.
    let r = a
        .call(sa(b.ip, 8080))
        .expect("call to the headless service's pod");
    assert_eq!(r.app, "b");
    assert_eq!(r.local, sa(b.ip, 8080));
    // A port the service does not have: passthrough.
    let r = a.call(sa(b.ip, 8081)).expect("call to another port");
    assert_eq!(r.local, sa(b.ip, 8081));
    assert_stats(
        &a,
        &[
            (OUT_CX, 2),
            (
                "cluster.outbound|8080||db.default.svc.cluster.local.upstream_cx_total",
                1,
            ),
            (PASSTHROUGH_CX, 1),
        ],
    );
}
