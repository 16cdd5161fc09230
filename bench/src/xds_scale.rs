//! xDS apply scale: a Sluice process on an in-process control plane (xds-client's scripted
//! `FakeAds`, a real tonic ADS server on loopback), state of the world. Pushes N EDS clusters
//! (istiod's shape: `outbound|8080||svc-I.ns-K.svc.cluster.local`, least-request, circuit
//! breakers, Istio metadata), their N assignments of 2 endpoints, then one listener and a
//! route table of V virtual hosts (Istio's domain lists). Each figure is the time from the push
//! to the ACK; memory is the process's RSS (`VmRSS`) and peak (`VmHWM`) from /proc.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use sluice::config::proto::decode_json_value;
use xds_client::testing::{any, FakeAds};
use xds_client::type_url;

use crate::sys;
use crate::targets::wait_ready;

/// One run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct XdsScaleRecord {
    pub clusters: usize,
    pub vhosts: usize,
    /// Encoded sizes of the CDS, EDS and RDS responses.
    pub cds_bytes: usize,
    pub eds_bytes: usize,
    pub rds_bytes: usize,
    /// Push → ACK.
    pub cds_ms: f64,
    pub eds_ms: f64,
    /// LDS (one listener) then RDS (the route table), push → ACK.
    pub lds_rds_ms: f64,
    /// CDS + EDS again at a new version, every resource the same (what every istiod push is).
    pub repush_ms: f64,
    /// Before any push (connected, nothing configured).
    pub idle_rss_kib: u64,
    /// After CDS + EDS.
    pub clusters_rss_kib: u64,
    /// After everything (and the re-push).
    pub rss_kib: u64,
    /// Peak over the whole run.
    pub hwm_kib: u64,
    /// `/ready` answered 200, and the last virtual host routed to the upstream.
    pub ready: bool,
    pub routed: bool,
}

fn cluster_name(i: usize) -> String {
    format!("outbound|8080||svc-{i}.ns-{}.svc.cluster.local", i % 50)
}

fn cluster(i: usize) -> serde_json::Value {
    let name = cluster_name(i);
    json!({
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32, "max_requests": 4294967295u32, "max_retries": 4294967295u32}]},
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "metadata": {"filter_metadata": {"istio": {"services": [{"host": format!("svc-{i}.ns.svc.cluster.local"), "name": format!("svc-{i}"), "namespace": "ns"}]}}},
    })
}

/// Two endpoints in 10.0.0.0/8; the last cluster's are the bench upstream (so routing is
/// checked end to end).
fn assignment(i: usize, last: bool, upstream: SocketAddr) -> serde_json::Value {
    let ep = |k: usize| {
        let (ip, port) = if last {
            (upstream.ip().to_string(), upstream.port())
        } else {
            (format!("10.{}.{}.{}", (i >> 8) & 255, i & 255, k), 8080)
        };
        json!({
            "endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
            "health_status": "HEALTHY",
            "metadata": {"filter_metadata": {"istio": {"workload": format!("svc-{i}-v1-{k};ns;svc-{i};v1;Kubernetes")}}},
            "load_balancing_weight": 1,
        })
    };
    json!({
        "cluster_name": cluster_name(i),
        "endpoints": [{"locality": {"region": "r1", "zone": "z1"}, "lb_endpoints": [ep(1), ep(2)], "load_balancing_weight": 2}],
    })
}

fn host(i: usize) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local", i % 50)
}

/// Istio's virtual host shape; virtual host I routes to cluster I mod N.
fn route_table(v: usize, n: usize) -> serde_json::Value {
    let vhosts: Vec<_> = (0..v)
        .map(|i| {
            let h = host(i);
            json!({
                "name": format!("{h}:8080"),
                "domains": [h.clone(), format!("{h}:8080"), format!("svc-{i}"), format!("svc-{i}:8080"), format!("svc-{i}.ns-{}", i % 50), format!("10.96.{}.{}", i >> 8 & 255, i & 255)],
                "routes": [{
                    "name": "default",
                    "match": {"prefix": "/"},
                    "route": {"cluster": cluster_name(i % n), "timeout": "0s", "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "num_retries": 2}, "max_grpc_timeout": "0s"},
                    "decorator": {"operation": format!("{h}:8080/*")},
                }],
                "include_request_attempt_count": true,
            })
        })
        .collect();
    json!({"name": "8080", "virtual_hosts": vhosts, "validate_clusters": false})
}

fn listener(port: u16) -> serde_json::Value {
    json!({
        "name": "0.0.0.0_8080",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound_0.0.0.0_8080",
                "rds": {"route_config_name": "8080", "config_source": {"ads": {}, "resource_api_version": "V3"}},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    })
}

fn anys<T: prost::Message + prost::Name + Default>(
    values: impl Iterator<Item = serde_json::Value>,
) -> anyhow::Result<Vec<envoy_types::pb::google::protobuf::Any>> {
    values
        .map(|v| Ok(any(decode_json_value::<T>(v)?)))
        .collect()
}

fn encoded(a: &[envoy_types::pb::google::protobuf::Any]) -> usize {
    a.iter().map(|a| a.value.len() + a.type_url.len() + 4).sum()
}

/// Pushes a SotW response and waits for its ACK; the time between, or an error on NACK.
async fn push(
    ads: &FakeAds,
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<envoy_types::pb::google::protobuf::Any>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    ads.respond(type_url, version, nonce, resources);
    loop {
        let r = ads.next_sotw(type_url).await;
        if r.response_nonce == nonce {
            if let Some(e) = r.error_detail {
                bail!("{type_url} {version} NACKed: {}", e.message);
            }
            return Ok(t.elapsed());
        }
    }
}

/// Wait before reading RSS after pushes (Sluice trims its heap 200-400 ms after the last one).
const SETTLE: Duration = Duration::from_millis(800);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs one Sluice process through the pushes; pinned to `cpu` when given.
pub fn measure(
    sluice: &Path,
    n: usize,
    vhosts: usize,
    upstream: SocketAddr,
    dir: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<XdsScaleRecord> {
    std::fs::create_dir_all(dir)?;
    // The resources are built before Sluice starts, so the timings are Sluice's.
    let cds = anys::<envoy_types::pb::envoy::config::cluster::v3::Cluster>((0..n).map(cluster))?;
    let eds = anys::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(
        (0..n).map(|i| assignment(i, i + 1 == n, upstream)),
    )?;
    let http_port = sys::free_port()?;
    let lds = anys::<envoy_types::pb::envoy::config::listener::v3::Listener>(std::iter::once(
        listener(http_port),
    ))?;
    let rds = anys::<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>(
        std::iter::once(route_table(vhosts, n)),
    )?;
    let (cds_bytes, eds_bytes, rds_bytes) = (encoded(&cds), encoded(&eds), encoded(&rds));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut ads = FakeAds::start().await;
        ads.timeout = Duration::from_secs(120);
        let admin_port = sys::free_port()?;
        let mut cmd = Command::new(sluice);
        cmd.arg("run")
            .args(["--xds-address", &ads.uri()])
            .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
            .args([
                "--pod-ip",
                "10.0.0.1",
                "--pod-name",
                "bench",
                "--namespace",
                "ns",
            ])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                dir.join(format!("xds-scale-{n}.log")),
            )?);
        if let Some(cpu) = cpu {
            use std::os::unix::process::CommandExt;
            // SAFETY: only sched_setaffinity runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || sys::pin_current(cpu));
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", sluice.display()))?;
        let pid = child.id();
        let result = async {
            let mem = || sys::mem(pid).context("reading sluice memory");
            ads.next_sotw(type_url::CLUSTER).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let idle = mem()?;
            let cds_t = push(&ads, type_url::CLUSTER, "1", "c1", cds.clone()).await?;
            // The EDS subscription follows the accepted clusters.
            loop {
                let r = ads.next_sotw(type_url::ENDPOINT).await;
                if r.resource_names.len() == n {
                    break;
                }
            }
            let eds_t = push(&ads, type_url::ENDPOINT, "1", "e1", eds.clone()).await?;
            // Sluice hands freed decode buffers back to the OS once updates are quiet.
            tokio::time::sleep(SETTLE).await;
            let clusters = mem()?;
            let t = Instant::now();
            push(&ads, type_url::LISTENER, "1", "l1", lds).await?;
            loop {
                let r = ads.next_sotw(type_url::ROUTE).await;
                if r.resource_names.iter().any(|r| r == "8080") {
                    break;
                }
            }
            push(&ads, type_url::ROUTE, "1", "r1", rds).await?;
            let lds_rds_t = t.elapsed();
            let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
            let ready = tokio::task::spawn_blocking(move || {
                wait_ready(admin, Duration::from_secs(30)).is_ok()
            })
            .await?;
            let last = host(n.min(vhosts) - 1);
            let routed = tokio::task::spawn_blocking(move || {
                crate::scale::get_host(SocketAddr::from(([127, 0, 0, 1], http_port)), &last)
                    == Some(200)
            })
            .await?;
            let t = Instant::now();
            push(&ads, type_url::CLUSTER, "2", "c2", cds).await?;
            push(&ads, type_url::ENDPOINT, "2", "e2", eds).await?;
            let repush_t = t.elapsed();
            tokio::time::sleep(SETTLE).await;
            let end = mem()?;
            Ok(XdsScaleRecord {
                clusters: n,
                vhosts,
                cds_bytes,
                eds_bytes,
                rds_bytes,
                cds_ms: ms(cds_t),
                eds_ms: ms(eds_t),
                lds_rds_ms: ms(lds_rds_t),
                repush_ms: ms(repush_t),
                idle_rss_kib: idle.rss_kib,
                clusters_rss_kib: clusters.rss_kib,
                rss_kib: end.rss_kib,
                hwm_kib: end.hwm_kib,
                ready,
                routed,
            })
        };
        let result = tokio::time::timeout(Duration::from_secs(300), result)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("xds-scale run with {n} clusters timed out")));
        let _ = child.kill();
        let _ = child.wait();
        result
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// `docs/bench/xds-scale.md`.
pub fn markdown(records: &[XdsScaleRecord], command: &str, machine: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# xDS apply scale\n\n`{command}`\n\n{machine}\n");
    s.push_str(
        "A Sluice process (release build) on an in-process ADS server (xds-client's `FakeAds`, \
         tonic on loopback), state of the world. N EDS clusters as istiod sends them, their N \
         assignments (2 endpoints each), then one listener and a route table of V virtual hosts \
         (Istio's domain lists, one route each). Times are push → ACK (transfer, decode, \
         validation, apply); the re-push sends CDS and EDS again at a new version with every \
         resource unchanged. Memory is the process's `VmRSS` (idle: connected, nothing \
         configured; the others 0.8 s after the last push, once Sluice has handed freed decode buffers \
         back) and peak `VmHWM` over the run.\n\n",
    );
    s.push_str("| clusters | virtual hosts | CDS / EDS / RDS size | CDS ms | EDS ms | LDS+RDS ms | re-push ms | RSS idle MiB | RSS after clusters MiB | RSS end MiB | peak RSS MiB | per cluster (RSS) | ready, routed |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in records {
        let per = (r.clusters_rss_kib.saturating_sub(r.idle_rss_kib) * 1024) / r.clusters as u64;
        let _ = writeln!(
            s,
            "| {} | {} | {} / {} / {} MB | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {:.1} KB | {}, {} |",
            r.clusters,
            r.vhosts,
            mb(r.cds_bytes),
            mb(r.eds_bytes),
            mb(r.rds_bytes),
            r.cds_ms,
            r.eds_ms,
            r.lds_rds_ms,
            r.repush_ms,
            mib(r.idle_rss_kib),
            mib(r.clusters_rss_kib),
            mib(r.rss_kib),
            mib(r.hwm_kib),
            per as f64 / 1000.0,
            r.ready,
            r.routed
        );
    }
    s.push_str(
        "\nPer cluster (RSS) is (RSS after clusters − idle RSS) / N: it includes the allocator's \
         overhead and the decode buffers still held, so it is above the heap the clusters \
         retain (`cargo test --release -p proxy --test xds_scale`, exact).\n",
    );
    s
}

fn mb(b: usize) -> String {
    format!("{:.1}", b as f64 / 1e6)
}
