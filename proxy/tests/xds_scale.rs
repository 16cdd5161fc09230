//! Config-scale figures (ignored by default; run one at a time so RSS is the test's own):
//!
//! ```text
//! cargo test --release -p proxy --test xds_scale -- --ignored --nocapture --exact clusters_1000
//! cargo test --release -p proxy --test xds_scale -- --ignored --nocapture --exact clusters_10000
//! cargo test --release -p proxy --test xds_scale -- --ignored --nocapture --exact route_table_10000_virtual_hosts
//! ```
//!
//! Each applies resources through the same `State` API the xDS handlers use and prints the
//! wall time, the heap the new state retains (exact: a counting global allocator; the inputs
//! are built before counting starts) and RSS (`VmRSS`, peak `VmHWM` from /proc/self/status). Clusters are EDS
//! clusters as istiod sends them (`outbound|PORT||svc-N.ns.svc.cluster.local`) with an assignment
//! of 2 endpoints each; the route table has one virtual host per service, with Istio's domain
//! list (host, host:port, short names, VIP) and one route each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use serde_json::json;
use sluice::config::proto::decode_json_value;
use sluice::state::State;

/// Live heap bytes, counted by the allocator below.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cluster_name(i: usize) -> String {
    format!("outbound|8080||svc-{i}.ns-{}.svc.cluster.local", i % 50)
}

fn clusters(n: usize) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let mut cs = Vec::with_capacity(n);
    let mut las = Vec::with_capacity(n);
    for i in 0..n {
        let name = cluster_name(i);
        cs.push(
            decode_json_value(json!({
                "name": name,
                "type": "EDS",
                "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name},
                "connect_timeout": "10s",
                "lb_policy": "LEAST_REQUEST",
                "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32, "max_requests": 4294967295u32, "max_retries": 4294967295u32}]},
                "common_lb_config": {"locality_weighted_lb_config": {}},
                "metadata": {"filter_metadata": {"istio": {"services": [{"host": format!("svc-{i}.ns.svc.cluster.local"), "name": format!("svc-{i}"), "namespace": "ns"}]}}},
            }))
            .unwrap(),
        );
        let ep = |k: usize| {
            json!({
                "endpoint": {"address": {"socket_address": {"address": format!("10.{}.{}.{}", (i >> 8) & 255, i & 255, k), "port_value": 8080}}},
                "health_status": "HEALTHY",
                "metadata": {"filter_metadata": {"istio": {"workload": format!("svc-{i}-v1-{k};ns;svc-{i};v1;Kubernetes")}}},
                "load_balancing_weight": 1,
            })
        };
        las.push(
            decode_json_value(json!({
                "cluster_name": name,
                "endpoints": [{"locality": {"region": "r1", "zone": "z1"}, "lb_endpoints": [ep(1), ep(2)], "load_balancing_weight": 2}],
            }))
            .unwrap(),
        );
    }
    (cs, las)
}

fn report(what: &str, n: usize, start: Instant, rss0: u64, live0: isize) {
    let dt = start.elapsed();
    let heap = live() - live0;
    let rss = status_kb("VmRSS:");
    let hwm = status_kb("VmHWM:");
    println!(
        "{what}: {n} in {:.1} ms; heap retained {} KiB ({} B each); RSS +{} KiB, VmRSS {rss} KiB, VmHWM {hwm} KiB",
        dt.as_secs_f64() * 1000.0,
        heap / 1024,
        heap / n as isize,
        rss.saturating_sub(rss0)
    );
}

async fn apply_clusters(n: usize) {
    let (cs, las) = clusters(n);
    // Breakdown: the validated models alone (they keep their proto for /config_dump).
    let live0 = live();
    let models: Vec<_> = cs
        .iter()
        .map(|c| sluice::model::cluster::Cluster::from_proto(c).unwrap())
        .collect();
    println!(
        "  of which the validated Cluster models (incl. their proto): {} B each; size_of::<pb Cluster>() = {} B",
        (live() - live0) / n as isize,
        std::mem::size_of::<Cluster>()
    );
    drop(models);
    let state = State::new();
    let rss0 = status_kb("VmRSS:");
    let live0 = live();
    let t = Instant::now();
    let rejected = state.apply_clusters(&cs, &[], true, "v1", false);
    assert!(rejected.is_empty(), "{rejected:?}");
    let t_cds = t.elapsed();
    let rejected = state.apply_endpoints(&las, "v1");
    assert!(rejected.is_empty(), "{rejected:?}");
    println!(
        "  CDS {:.1} ms, EDS {:.1} ms",
        t_cds.as_secs_f64() * 1000.0,
        (t.elapsed() - t_cds).as_secs_f64() * 1000.0
    );
    report("clusters with 2 endpoints each", n, t, rss0, live0);
    assert!(state.load().is_warm());
    drop(cs);
    drop(las);
    // A second full update at a new version (what every istiod push does).
    let (cs, las) = clusters(n);
    let t = Instant::now();
    state.apply_clusters(&cs, &[], true, "v2", false);
    state.apply_endpoints(&las, "v2");
    println!(
        "  re-push of the same {n} clusters and assignments: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

#[tokio::test]
#[ignore]
async fn clusters_1000() {
    apply_clusters(1000).await;
}

#[tokio::test]
#[ignore]
async fn clusters_10000() {
    apply_clusters(10_000).await;
}

fn route_table(n: usize, version: &str) -> RouteConfiguration {
    let vhosts: Vec<_> = (0..n)
        .map(|i| {
            let host = format!("svc-{i}.ns-{}.svc.cluster.local", i % 50);
            json!({
                "name": format!("{host}:8080"),
                "domains": [host.clone(), format!("{host}:8080"), format!("svc-{i}"), format!("svc-{i}:8080"), format!("svc-{i}.ns-{}", i % 50), format!("10.96.{}.{}", i >> 8 & 255, i & 255)],
                "routes": [{
                    "name": "default",
                    "match": {"prefix": "/"},
                    "route": {"cluster": cluster_name(i), "timeout": "0s", "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "num_retries": 2}, "max_grpc_timeout": "0s"},
                    "decorator": {"operation": format!("{host}:8080/*")},
                }],
                "include_request_attempt_count": true,
            })
        })
        .collect();
    decode_json_value(json!({"name": "8080", "virtual_hosts": vhosts, "validate_clusters": false, "response_headers_to_add": [{"header": {"key": "x-v", "value": version}}]})).unwrap()
}

#[tokio::test]
#[ignore]
async fn route_table_10000_virtual_hosts() {
    let n = 10_000;
    let rc = route_table(n, "1");
    let state = State::new();
    let rss0 = status_kb("VmRSS:");
    let live0 = live();
    let t = Instant::now();
    assert!(state
        .apply_routes(std::slice::from_ref(&rc), &[], "v1", false)
        .is_empty());
    report("route table virtual hosts", n, t, rss0, live0);
    drop(rc);
    let rc = route_table(n, "2");
    let t = Instant::now();
    assert!(state
        .apply_routes(std::slice::from_ref(&rc), &[], "v2", false)
        .is_empty());
    println!(
        "  replacing the {n}-virtual-host table: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}
