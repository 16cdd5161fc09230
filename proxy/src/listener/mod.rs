//! Listening sockets and connection dispatch: bind (socket2: reuse address, large backlog),
//! accept (TCP_NODELAY), recover the original destination, hand a redirected connection to the
//! listener of its original `ip:port` (Envoy's `use_original_dst`), inspect the first bytes when
//! a filter chain depends on them, pick the filter chain, and run its network filter.

pub mod orig_dst;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cluster::pool::Source;
use crate::detect::{self, Detected};
use crate::model::listener::Listener;
use crate::model::network::NetworkFilter;
use crate::model::ConnInfo;
use crate::state::{ListenerHost, State};
use crate::stats::registry;

/// Binds a TCP listening socket the way Envoy does.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(addr, false)
}

/// Binds a TCP listening socket; `transparent` sets `IP_TRANSPARENT` so TPROXY can hand it
/// connections addressed elsewhere (needs `CAP_NET_ADMIN`).
pub fn bind_with(addr: SocketAddr, transparent: bool) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if transparent {
        if addr.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        } else {
            s.set_ip_transparent_v6(true)?;
        }
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// Downstream connections open right now (drain waits for this to reach zero).
pub static ACTIVE_CONNECTIONS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

struct ConnGuard;

impl ConnGuard {
    fn new() -> ConnGuard {
        ACTIVE_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnGuard
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        ACTIVE_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a listener's open connections are asked to do. A removed listener's connections go
/// `Serve` → `Drain` (HTTP: `connection: close` on the response in flight and close when idle,
/// HTTP/2 GOAWAY; TCP keeps flowing) → `Close` after the drain time (everything still open is
/// closed, TCP proxy connections included). Server drain (SIGTERM) moves every listener to
/// `Drain`; the process exits after the drain time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serve,
    Drain,
    Close,
}

/// Waits until `rx` reaches `at` (or later). Never returns once the sender is gone without
/// getting there.
pub async fn reached(rx: &mut watch::Receiver<Phase>, at: Phase) {
    while *rx.borrow_and_update() < at {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct Active {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// The drain phase of every listener by name: bound ones from `start`, `bind_to_port: false`
/// ones from the first connection handed to them (`use_original_dst`), which then follows that
/// listener's phase rather than the phase of the listener that accepted it.
type Phases = Arc<Mutex<HashMap<String, watch::Sender<Phase>>>>;

/// Owns the bound listeners; started and stopped by `State` as the listener set changes.
pub struct Manager {
    state: Weak<State>,
    active: Mutex<HashMap<String, Active>>,
    phases: Phases,
    /// How long a removed listener's connections may drain before they are closed.
    drain_time: Duration,
    /// Set on server drain: listeners started afterwards start draining.
    draining: AtomicBool,
}

impl Manager {
    pub fn new(state: &Arc<State>, drain_time: Duration) -> Arc<Manager> {
        Arc::new(Manager {
            state: Arc::downgrade(state),
            active: Mutex::new(HashMap::new()),
            phases: Arc::default(),
            drain_time,
            draining: AtomicBool::new(false),
        })
    }

    /// The address a listener is bound to (tests bind port 0 and read it back).
    pub fn bound_address(&self, name: &str) -> Option<SocketAddr> {
        self.active.lock().unwrap().get(name).map(|a| a.addr)
    }

    /// Stops accepting everywhere and asks open connections to finish (server drain).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        for a in self.active.lock().unwrap().values() {
            let _ = a.stop.send(true);
        }
        for p in self.phases.lock().unwrap().values() {
            p.send_if_modified(|p| {
                let was = *p;
                *p = was.max(Phase::Drain);
                *p != was
            });
        }
    }
}

impl ListenerHost for Manager {
    fn start(&self, l: &Arc<Listener>) -> Result<(), String> {
        let addr = l.address.ok_or("listener has no address")?;
        let sock =
            bind_with(addr, l.transparent).map_err(|e| format!("cannot bind {addr}: {e}"))?;
        let bound = sock.local_addr().unwrap_or(addr);
        let (stop_tx, stop_rx) = watch::channel(false);
        let initial = if self.draining.load(Ordering::Relaxed) {
            Phase::Drain
        } else {
            Phase::Serve
        };
        let (phase_tx, phase_rx) = watch::channel(initial);
        let name = l.name.clone();
        tracing::info!(listener = %name, address = %bound, "listener started");
        self.phases.lock().unwrap().insert(name.clone(), phase_tx);
        tokio::spawn(accept_loop(
            self.state.clone(),
            name.clone(),
            sock,
            stop_rx,
            phase_rx,
            self.phases.clone(),
        ));
        self.active.lock().unwrap().insert(
            name,
            Active {
                addr: bound,
                stop: stop_tx,
            },
        );
        Ok(())
    }

    /// Stops accepting (bound listeners); open connections drain, and whatever is still open
    /// after the drain time is closed. Also called for removed `bind_to_port: false` listeners.
    fn stop(&self, name: &str) {
        if let Some(a) = self.active.lock().unwrap().remove(name) {
            let _ = a.stop.send(true);
            tracing::info!(listener = name, "listener stopped");
        }
        let Some(phase) = self.phases.lock().unwrap().remove(name) else {
            return;
        };
        if phase.receiver_count() > 0 {
            tracing::info!(
                listener = name,
                open = phase.receiver_count(),
                "draining the removed listener's connections"
            );
        }
        phase.send_if_modified(|p| {
            let was = *p;
            *p = was.max(Phase::Drain);
            *p != was
        });
        let (drain_time, name) = (self.drain_time, name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(drain_time).await;
            if phase.receiver_count() > 0 {
                tracing::info!(listener = %name, "drain time over; closing its connections");
            }
            let _ = phase.send(Phase::Close);
        });
    }
}

/// The phase of listener `name`, created (serving) for a `bind_to_port: false` listener's
/// first connection.
fn follow(phases: &Phases, name: &str) -> watch::Receiver<Phase> {
    phases
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| watch::channel(Phase::Serve).0)
        .subscribe()
}

async fn accept_loop(
    state: Weak<State>,
    name: String,
    sock: TcpListener,
    mut stop: watch::Receiver<bool>,
    phase: watch::Receiver<Phase>,
    phases: Phases,
) {
    let local_addr = sock.local_addr().ok();
    let cx_total = registry().counter(&format!(
        "listener.{}.downstream_cx_total",
        stat_addr(local_addr)
    ));
    loop {
        tokio::select! {
            r = sock.accept() => match r {
                Ok((stream, peer)) => {
                    let Some(state) = state.upgrade() else { return };
                    cx_total.inc();
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(crate::clock::Turned::new(handle(
                        state,
                        name.clone(),
                        stream,
                        peer,
                        phase.clone(),
                        phases.clone(),
                    )));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %name, %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Envoy's listener stat prefix: the address with `:` made `_` (`127.0.0.1_15001`,
/// `[__1]_15001`).
fn stat_addr(a: Option<SocketAddr>) -> String {
    match a {
        Some(SocketAddr::V4(a)) => format!("{}_{}", a.ip(), a.port()),
        Some(SocketAddr::V6(a)) => {
            format!("[{}]_{}", a.ip().to_string().replace(':', "_"), a.port())
        }
        None => "unknown".into(),
    }
}

/// Runs one downstream connection through its listener.
async fn handle(
    state: Arc<State>,
    listener: String,
    stream: TcpStream,
    peer: SocketAddr,
    mut phase: watch::Receiver<Phase>,
    phases: Phases,
) {
    let _guard = ConnGuard::new();
    let snap = state.load_full();
    let Some((mut l, _)) = snap.listeners.get(&listener).cloned() else {
        return;
    };
    let local = stream.local_addr().unwrap_or(peer);
    let mut dst = local;
    if l.filters.original_dst || l.use_original_dst {
        dst = orig_dst::original_dst_or_local(&stream, local);
    }
    if l.use_original_dst && dst != local {
        match snap.listener_for(dst) {
            Some(target) if target.name != l.name => {
                l = target.clone();
                phase = follow(&phases, &l.name);
            }
            _ => {}
        }
    }
    drop(phases);
    let mut ci = ConnInfo {
        local: Some(dst),
        remote: Some(peer),
        transport: "raw_buffer",
        server_name: None,
        alpn: Vec::new(),
    };
    if l.needs_inspection() && inspection_matters(&l, dst) {
        match detect::peek(&stream, l.filters_timeout).await {
            Some(Detected::Tls { sni, alpn }) if l.filters.tls_inspector => {
                ci.transport = "tls";
                ci.server_name = sni;
                ci.alpn = alpn;
            }
            Some(Detected::Http1 { minor }) if l.filters.http_inspector => {
                ci.alpn = vec![if minor == 0 { "http/1.0" } else { "http/1.1" }.to_string()];
            }
            Some(Detected::Http2) if l.filters.http_inspector => ci.alpn = vec!["h2c".to_string()],
            Some(_) => {}
            None => {
                registry()
                    .counter(&format!(
                        "listener.{}.downstream_pre_cx_timeout",
                        stat_addr(Some(local))
                    ))
                    .inc();
                if !l.continue_on_filters_timeout {
                    return;
                }
            }
        }
    }
    let Some(chain) = l.select_chain(&ci).cloned() else {
        registry()
            .counter(&format!(
                "listener.{}.no_filter_chain_match",
                stat_addr(Some(local))
            ))
            .inc();
        tracing::debug!(listener = %l.name, %dst, "no filter chain matched");
        return;
    };
    match &chain.filter {
        NetworkFilter::Tcp(t) => {
            // original_src (TPROXY): connect upstream from the client's own address.
            let src = l.filters.original_src.map(|mark| Source {
                bind: Some(peer.ip()),
                transparent: true,
                mark: Some(mark),
                keepalive: None,
            });
            crate::tcp::proxy(stream, dst, t.clone(), snap, src, phase).await
        }
        NetworkFilter::Http(h) => {
            drop(snap);
            crate::http::serve(state, stream, ci, h.clone(), phase).await
        }
    }
}

/// True when the filter chain a connection to `port` gets could depend on what the inspectors
/// find. When it cannot (a port declared TCP, e.g. a server-first protocol such as MySQL or
/// SMTP), detection is skipped instead of waiting for bytes that never come.
fn inspection_matters(l: &Listener, dst: SocketAddr) -> bool {
    let port = dst.port();
    let legacy = l.matcher.is_none()
        && l.chains.iter().any(|c| {
            let m = &c.matches;
            m.destination_port.is_none_or(|p| p == port)
                && (!m.server_names.is_empty()
                    || !m.transport_protocol.is_empty()
                    || !m.application_protocols.is_empty())
        });
    if legacy {
        return true;
    }
    if l.matcher.is_none() {
        return false;
    }
    // Matcher tree: try the outcomes inspection can produce; if they all pick the same chain,
    // inspection cannot change the result.
    let base = ConnInfo {
        local: Some(dst),
        remote: None,
        transport: "raw_buffer",
        server_name: None,
        alpn: Vec::new(),
    };
    let variants = [
        base.clone(),
        ConnInfo {
            alpn: vec!["http/1.1".into()],
            ..base.clone()
        },
        ConnInfo {
            alpn: vec!["h2c".into()],
            ..base.clone()
        },
        ConnInfo {
            transport: "tls",
            server_name: Some("sluice.invalid".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
            ..base.clone()
        },
        ConnInfo {
            transport: "tls",
            alpn: vec!["istio-peer-exchange".into(), "istio".into()],
            ..base
        },
    ];
    let first = l.select_chain(&variants[0]).map(Arc::as_ptr);
    variants[1..]
        .iter()
        .any(|v| l.select_chain(v).map(Arc::as_ptr) != first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn removed_unbound_listener_drains_then_closes_handed_over_connections() {
        let state = State::new();
        let m = Manager::new(&state, Duration::from_secs(5));
        // A connection handed over to `bind_to_port: false` listener "svc" (use_original_dst).
        let mut conn = follow(&m.phases, "svc");
        let mut other = follow(&m.phases, "other");
        assert_eq!(*conn.borrow(), Phase::Serve);
        m.stop("svc");
        reached(&mut conn, Phase::Drain).await;
        let t = tokio::time::Instant::now();
        reached(&mut conn, Phase::Close).await;
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        assert_eq!(*other.borrow_and_update(), Phase::Serve);
        // Server drain reaches listeners known only from hand-offs too.
        m.drain();
        reached(&mut other, Phase::Drain).await;
    }
}
