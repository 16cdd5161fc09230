//! The running proxy: binds the admin port and every static listener before serving anything
//! (a bind error stops startup), applies the bootstrap's static resources through the same
//! update path xDS uses, and drains on SIGTERM or `/quitquitquit`: stop accepting, let
//! in-flight requests finish within one drain period, then return.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use tokio::sync::watch;

use crate::admin::{Admin, LogLevelFn};
use crate::listener::{Manager, ACTIVE_CONNECTIONS};
use crate::state::{Rejected, State};

/// Startup settings.
pub struct Options {
    pub bootstrap: Option<Bootstrap>,
    pub admin_address: SocketAddr,
    /// How long a drain waits for open connections before exiting anyway.
    pub drain_time: Duration,
    pub set_log_level: Option<LogLevelFn>,
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind admin address {0}: {1}")]
    Admin(SocketAddr, std::io::Error),
    #[error("invalid static {kind} {name}: {reason}")]
    Static {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// What `/ready` asks once xDS is on (see `xds.rs`); without it, the static snapshot's warmth.
pub type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// A started proxy.
pub struct App {
    pub state: Arc<State>,
    pub listeners: Arc<Manager>,
    pub admin_address: SocketAddr,
    drain_time: Duration,
    shutdown: watch::Sender<bool>,
    readiness: Arc<Mutex<Option<ReadyFn>>>,
}

fn first_rejection(kind: &'static str, r: Vec<Rejected>) -> Result<(), AppError> {
    match r.into_iter().next() {
        Some(r) => Err(AppError::Static {
            kind,
            name: r.name,
            reason: r.reason,
        }),
        None => Ok(()),
    }
}

impl App {
    /// Binds everything and starts serving.
    pub async fn start(opts: Options) -> Result<App, AppError> {
        let admin_sock = crate::admin::bind(opts.admin_address)
            .map_err(|e| AppError::Admin(opts.admin_address, e))?;
        let admin_address = admin_sock.local_addr().unwrap_or(opts.admin_address);
        let state = State::new();
        let listeners = Manager::new(&state, opts.drain_time);
        state.set_listener_host(listeners.clone());
        // The admin endpoint keeps the bootstrap protobuf-encoded (a decoded one with static
        // resources is many times larger). Each kind of static resource is dropped once applied,
        // so the decoded clusters are gone before the listeners' runtime is built.
        let bootstrap = opts
            .bootstrap
            .as_ref()
            .map(|b| prost::Message::encode_to_vec(b).into_boxed_slice());
        if let Some(mut sr) = opts.bootstrap.and_then(|b| b.static_resources) {
            let clusters = std::mem::take(&mut sr.clusters);
            first_rejection(
                "cluster",
                state.apply_clusters(&clusters, &[], false, "", true),
            )?;
            drop(clusters);
            let listeners = std::mem::take(&mut sr.listeners);
            drop(sr);
            first_rejection(
                "listener",
                state.apply_listeners(&listeners, &[], false, "", true),
            )?;
        }
        // The descriptor pool that decoded the bootstrap is not needed again unless more
        // JSON/YAML arrives (the next use builds it again). Then give the freed heap back.
        crate::config::proto::release_pool();
        crate::sys::trim_heap();
        let (shutdown, _) = watch::channel(false);
        let readiness: Arc<Mutex<Option<ReadyFn>>> = Arc::default();
        let (gate, st) = (readiness.clone(), state.clone());
        let initialized = Arc::new(move || {
            let f = gate.lock().unwrap().clone();
            match f {
                Some(f) => f(),
                None => st.load().is_warm(),
            }
        });
        let admin = Arc::new(Admin {
            state: state.clone(),
            listeners: listeners.clone(),
            bootstrap,
            boot_time: SystemTime::now(),
            initialized,
            set_log_level: opts.set_log_level,
            shutdown: shutdown.clone(),
            health_check_failed: Default::default(),
        });
        tokio::spawn(admin.serve(admin_sock));
        tokio::spawn(timer_heartbeat());
        tracing::info!(admin = %admin_address, "sluice started");
        Ok(App {
            state,
            listeners,
            admin_address,
            drain_time: opts.drain_time,
            shutdown,
            readiness,
        })
    }

    /// Replaces what `/ready` asks (e.g. "the Istio config directory has been applied").
    pub fn set_readiness(&self, f: ReadyFn) {
        *self.readiness.lock().unwrap() = Some(f);
    }

    /// Takes configuration from an xDS control plane (on top of the static resources);
    /// `/ready` then follows xDS warming. Dropping the returned handle stops the client.
    pub fn start_xds(&self, opts: crate::xds::XdsOptions) -> crate::xds::Xds {
        let xds = crate::xds::start(self.state.clone(), opts);
        *self.readiness.lock().unwrap() = Some(xds.readiness());
        xds
    }

    /// The address a listener is bound to.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.bound_address(name)
    }

    /// Asks the app to drain and stop (what SIGTERM and `/quitquitquit` do).
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Serves until SIGTERM, SIGINT or `/quitquitquit`, then drains.
    pub async fn run(self) {
        let mut rx = self.shutdown.subscribe();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            _ = async { while !*rx.borrow_and_update() { if rx.changed().await.is_err() { break } } } => {
                tracing::info!("/quitquitquit: draining")
            }
        }
        self.drain().await;
    }

    /// Stops accepting, asks every connection to finish, and waits up to the drain time.
    pub async fn drain(&self) {
        let _ = self.shutdown.send(true);
        self.listeners.drain();
        let deadline = tokio::time::Instant::now() + self.drain_time;
        while ACTIVE_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            open = ACTIVE_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed),
            "drain finished"
        );
    }
}

/// Keeps the timer driver's next wake-up within a second. tokio wakes its driver (an eventfd
/// write, and one more `epoll_wait` return) whenever a new timer is due before the driver's
/// next wake-up, even from the runtime's own thread; with only connection idle timers (1 h)
/// registered, every request's route or stream idle timer did that. One tick a second is
/// cheaper than one wake-up per request.
async fn timer_heartbeat() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}
