//! The HTTP connection manager: serves HTTP/1.1 (`h1.rs`) and HTTP/2 (h2c, `h2.rs`)
//! downstream connections and runs each request through the HTTP filters and the router (`router.rs`), which
//! forwards upstream (`forward.rs`). On drain (server drain or the listener removed),
//! connections finish in-flight requests and close (HTTP/1.1: `connection: close` on the
//! response in flight, close when idle; HTTP/2: GOAWAY); after the drain time they are closed.
//! A connection with no request in flight for the HCM's `idle_timeout` is closed the same way,
//! by one timer per connection that is re-armed only when it fires.

pub mod access;
pub mod cors;
pub mod fault;
pub mod forward;
pub mod h1;
pub mod h2;
pub mod h2stream;
pub mod headers;
pub mod path;
pub mod router;
pub mod timeout;
pub mod upgrade;
pub mod wire;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::detect::{self, Detected};
use crate::gate::Gated;
use crate::listener::{reached, Phase};
use crate::model::network::{Codec, HttpConnectionManager};
use crate::model::ConnInfo;
use crate::state::State;

pub use crate::model::network::HcmStats;

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct Conn {
    pub state: Arc<State>,
    pub hcm: Arc<HttpConnectionManager>,
    pub info: ConnInfo,
    pub stats: Arc<HcmStats>,
    pub http2: bool,
    /// The listener's drain phase (upgraded connections and tunnels close at `Close`).
    pub phase: watch::Receiver<Phase>,
    /// Requests in flight, for the idle timeout.
    pub activity: Activity,
}

/// Requests in flight on one connection and when the last one finished: what the
/// connection's idle timer looks at when it fires (two atomic updates per request, no timer).
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    active: AtomicU32,
    /// Milliseconds from `born` to the end of the last request.
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            born: Instant::now(),
            active: AtomicU32::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's response head went out at `now`.
    pub fn end(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.born).as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Release);
    }

    /// `None` once the connection has been idle for `idle`; otherwise when to look again.
    fn idle_deadline(&self, idle: Duration, now: Instant) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return Some(now + idle);
        }
        let last = self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        (last + idle > now).then_some(last + idle)
    }
}

/// Resolves once the connection has had no request in flight for `idle` (never if `None`).
async fn idle_timeout(activity: &Activity, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut at = activity.born + idle;
    loop {
        tokio::time::sleep_until(at.into()).await;
        match activity.idle_deadline(idle, Instant::now()) {
            None => return,
            Some(next) => at = next,
        }
    }
}

/// Serves one downstream HTTP connection.
pub async fn serve(
    state: Arc<State>,
    stream: TcpStream,
    info: ConnInfo,
    hcm: Arc<HttpConnectionManager>,
    mut phase: watch::Receiver<Phase>,
) {
    let http2 = match hcm.codec {
        Codec::Http2 => true,
        Codec::Http1 => false,
        Codec::Auto => {
            if info.alpn.iter().any(|a| a == "h2c" || a == "h2") {
                true
            } else if info.alpn.iter().any(|a| a.starts_with("http/1")) {
                false
            } else {
                matches!(
                    detect::peek(&stream, Duration::from_secs(10)).await,
                    Some(Detected::Http2)
                )
            }
        }
    };
    let stats = hcm.stats.clone();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    if http2 {
        stats.downstream_cx_http2_total.inc();
    } else {
        stats.downstream_cx_http1_total.inc();
    }
    let conn = Arc::new(Conn {
        state,
        hcm: hcm.clone(),
        info,
        stats: stats.clone(),
        http2,
        phase: phase.clone(),
        activity: Activity::new(),
    });
    // Idle past the HCM's idle timeout, or the listener drains: shut down gracefully. Gated:
    // the connection's task polls it on every wake-up.
    let stop = {
        let idle = hcm.idle_timeout;
        let ours = conn.clone();
        let mut phase = phase.clone();
        let stats = stats.clone();
        Gated::new(async move {
            tokio::select! {
                _ = idle_timeout(&ours.activity, idle) => {
                    stats.downstream_cx_idle_timeout.inc();
                }
                _ = reached(&mut phase, Phase::Drain) => {}
            }
        })
    };
    if http2 {
        // Boxed: the HTTP/2 connection's future is several KB, and inline it would make every
        // connection's task that large, HTTP/1.1 ones included.
        Box::pin(h2::serve(conn, stream, stop, &mut phase)).await;
    } else {
        // Past the drain time, whatever is in flight is cut off. `biased`: polled on every
        // wake-up of the connection's task, an unbiased select! draws a random number first.
        tokio::select! {
            biased;
            _ = h1::serve(conn, stream, stop) => {}
            _ = Gated::new(reached(&mut phase, Phase::Close)) => {}
        }
    }
    stats.downstream_cx_active.dec();
}
