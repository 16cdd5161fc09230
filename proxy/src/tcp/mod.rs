//! L4 proxying (`envoy.filters.network.tcp_proxy`): pick a cluster (weighted), a host, connect
//! (with the configured number of attempts), then copy bytes both ways. A half-close in one
//! direction is passed on and the other direction keeps flowing; the idle timeout closes
//! connections with no traffic either way. Bytes move as `forward.rs` decides: copy for small
//! messages, zero-copy `splice(2)` once a direction streams bulk data.
//! `SLUICE_TCP_COPY=userspace|splice` forces one mode (for measurements).

pub mod forward;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::cluster::pool::{connect_from, Source};
use crate::listener::{reached, Phase};
use crate::model::network::TcpProxy;
use crate::state::Snapshot;

/// Picks a cluster from `(name, weight)` pairs.
pub fn pick_weighted(clusters: &[(String, u32)], random: u64) -> &str {
    if clusters.len() == 1 {
        return &clusters[0].0;
    }
    let total: u64 = clusters.iter().map(|c| c.1 as u64).sum();
    let mut v = random % total.max(1);
    for (name, w) in clusters {
        if v < *w as u64 {
            return name;
        }
        v -= *w as u64;
    }
    &clusters[clusters.len() - 1].0
}

/// Proxies one downstream connection. `orig_dst` is the connection's original destination
/// (used by ORIGINAL_DST clusters such as Istio's PassthroughCluster). `src` overrides the
/// cluster's upstream source (the listener's `original_src`).
pub async fn proxy(
    down: TcpStream,
    orig_dst: SocketAddr,
    cfg: Arc<TcpProxy>,
    snap: Arc<Snapshot>,
    src: Option<Source>,
    phase: tokio::sync::watch::Receiver<Phase>,
) {
    if cfg.access_logs.is_empty() {
        let mut done = Done::default();
        proxy_inner(down, orig_dst, &cfg, snap, src, phase, &mut done).await;
        return;
    }
    let start = std::time::SystemTime::now();
    let t0 = std::time::Instant::now();
    let remote = down.peer_addr().ok();
    let mut done = Done::default();
    proxy_inner(down, orig_dst, &cfg, snap, src, phase, &mut done).await;
    let e = crate::access_log::Entry {
        start: Some(start),
        duration: t0.elapsed(),
        bytes_received: done.rx,
        bytes_sent: done.tx,
        upstream_host: done.host,
        upstream_cluster: done.cluster.as_deref(),
        downstream_local: Some(orig_dst),
        downstream_remote: remote,
        flags: done.flags,
        ..Default::default()
    };
    for l in &cfg.access_logs {
        l.log(&e);
    }
}

/// What a proxied connection did, for the access log.
#[derive(Default)]
struct Done {
    cluster: Option<String>,
    host: Option<SocketAddr>,
    flags: &'static str,
    rx: u64,
    tx: u64,
}

async fn proxy_inner(
    down: TcpStream,
    orig_dst: SocketAddr,
    cfg: &TcpProxy,
    snap: Arc<Snapshot>,
    src: Option<Source>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    done: &mut Done,
) {
    cfg.stats.downstream_cx_total.inc();
    let cluster_name = pick_weighted(&cfg.clusters, fastrand::u64(..));
    let Some(cluster) = snap.cluster(cluster_name).cloned() else {
        cfg.stats.downstream_cx_no_route.inc();
        done.flags = "NC";
        tracing::debug!(cluster = cluster_name, "tcp_proxy: unknown cluster");
        return;
    };
    drop(snap);
    if !cfg.access_logs.is_empty() {
        done.cluster = Some(cluster_name.to_string());
    }
    // Circuit breaker: `max_connections` caps open upstream connections of the cluster.
    // The slot is given back when this connection ends, whatever happens.
    let Some(_slot) = cluster.limits.try_slot() else {
        cluster.stats.upstream_cx_overflow.inc();
        done.flags = "UO";
        return;
    };
    // original_src gives the address; the cluster gives the socket options.
    let src = match src {
        Some(s) => Source {
            keepalive: cluster.settings.keepalive,
            ..s
        },
        None => cluster.settings.src(),
    };
    let mut up = None;
    let mut tried: Vec<SocketAddr> = Vec::new();
    for _ in 0..cfg.max_connect_attempts {
        let Some(host) = cluster.pick(None, Some(orig_dst), &|h| tried.contains(&h.addr)) else {
            if tried.is_empty() {
                done.flags = "UH";
            }
            break;
        };
        tried.push(host.addr);
        cluster.stats.upstream_cx_total.inc();
        let t0 = std::time::Instant::now();
        match connect_from(host.addr, cluster.cfg.connect_timeout, src).await {
            Ok(s) => {
                let h = &cluster.stats.hists().upstream_cx_connect_ms;
                h.record(t0.elapsed());
                // For TCP a connection is the whole result (Envoy: connect success final).
                cluster.report(&host, crate::cluster::outlier::Outcome::Status(200));
                done.host = Some(host.addr);
                up = Some(s);
                break;
            }
            Err(e) => {
                cluster.report(&host, crate::cluster::outlier::Outcome::ConnectFailed);
                if matches!(e, crate::cluster::pool::UpstreamError::ConnectTimeout) {
                    cluster.stats.upstream_cx_connect_timeout.inc();
                }
                cluster.stats.upstream_cx_connect_fail.inc();
                tracing::debug!(host = %host.addr, %e, "tcp_proxy: connect failed");
            }
        }
    }
    let Some(up) = up else {
        if done.flags.is_empty() {
            done.flags = "UF";
        }
        return;
    };
    let _ = down.set_nodelay(true);
    // A draining listener's TCP connections keep flowing until the drain time is over.
    let result = tokio::select! {
        biased; // polled on every wake-up: no random draw for the branch order
        r = forward::bidirectional(&down, &up, cfg.idle_timeout, copy_mode()) => r.ok(),
        _ = reached(&mut phase, Phase::Close) => {
            tracing::debug!(cluster = %cluster.cfg.name, "tcp_proxy: closed after drain");
            None
        }
    };
    if let Some((a, b)) = result {
        cfg.stats.downstream_cx_rx_bytes_total.add(a);
        cfg.stats.downstream_cx_tx_bytes_total.add(b);
        done.rx = a;
        done.tx = b;
    }
}

/// `SLUICE_TCP_COPY=userspace|splice` forces a forwarding mode (read once).
fn copy_mode() -> forward::Mode {
    static V: std::sync::OnceLock<forward::Mode> = std::sync::OnceLock::new();
    *V.get_or_init(|| match std::env::var("SLUICE_TCP_COPY").as_deref() {
        Ok("userspace") => forward::Mode::Copy,
        Ok("splice") => forward::Mode::Splice,
        _ => forward::Mode::Adaptive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_intervals() {
        let c = vec![("a".to_string(), 30), ("b".to_string(), 70)];
        assert_eq!(pick_weighted(&c, 0), "a");
        assert_eq!(pick_weighted(&c, 29), "a");
        assert_eq!(pick_weighted(&c, 30), "b");
        assert_eq!(pick_weighted(&c, 199), "b");
        assert_eq!(pick_weighted(&c, 129), "a");
    }
}
