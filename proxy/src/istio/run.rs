//! The embedded default: translate a config directory for this node and apply the result
//! through [`State`] (the same atomic update path xDS uses), then poll the directory's files
//! once a second and re-apply when anything changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::state::{Rejected, State};

use super::{translate_dir, Level, LoadError, Node, Resources};

/// Applies translated resources as one state-of-the-world update: clusters, endpoints, routes,
/// then listeners (so listeners never point at missing routes). `previous_routes` are the route
/// names of the last update (removed ones are dropped).
pub fn apply(
    state: &State,
    r: &Resources,
    previous_routes: &BTreeSet<String>,
    version: &str,
) -> Vec<Rejected> {
    let mut rej = state.apply_clusters(&r.clusters, &[], true, version, false);
    rej.extend(state.apply_endpoints(&r.endpoints, version));
    let now: BTreeSet<String> = r.routes.iter().map(|x| x.name.clone()).collect();
    let removed: Vec<String> = previous_routes.difference(&now).cloned().collect();
    rej.extend(state.apply_routes(&r.routes, &removed, version, false));
    rej.extend(state.apply_listeners(&r.listeners, &[], true, version, false));
    rej
}

/// Paths and modification times of the config files (what a reload compares).
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let files = super::load::config_files(dir).unwrap_or_default();
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let t = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map(|m| m.len()).unwrap_or(0);
            (f, t, len)
        })
        .collect()
}

/// Loads, translates and applies `dir` once; logs messages and rejections.
pub fn load_and_apply(
    state: &State,
    dir: &Path,
    node: &Node,
    previous_routes: &mut BTreeSet<String>,
    version: &str,
) -> Result<Vec<Rejected>, LoadError> {
    let r = translate_dir(dir, node)?;
    for m in &r.messages {
        match m.level {
            Level::Error => tracing::error!("{m}"),
            Level::Warning => tracing::warn!("{m}"),
            Level::Info => tracing::debug!("{m}"),
        }
    }
    let rej = apply(state, &r, previous_routes, version);
    for x in &rej {
        tracing::error!(resource = %x.name, reason = %x.reason, "generated resource rejected");
    }
    *previous_routes = r.routes.iter().map(|x| x.name.clone()).collect();
    tracing::info!(
        version,
        listeners = r.listeners.len(),
        routes = r.routes.len(),
        clusters = r.clusters.len(),
        "applied Istio config from {}",
        dir.display()
    );
    Ok(rej)
}

/// Applies `dir` now, then re-applies whenever its files change (polled every `every`).
pub async fn watch(state: Arc<State>, dir: PathBuf, node: Node, every: Duration) {
    watch_with_ready(state, dir, node, every, Default::default()).await
}

/// [`watch`], setting `applied` once the first translation has been applied (whether or not it
/// loaded), so that `/ready` never answers before the configuration is in place.
pub async fn watch_with_ready(
    state: Arc<State>,
    dir: PathBuf,
    node: Node,
    every: Duration,
    applied: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut routes = BTreeSet::new();
    let mut last = fingerprint(&dir);
    let mut version = 1u64;
    if let Err(e) = load_and_apply(&state, &dir, &node, &mut routes, &version.to_string()) {
        tracing::error!(error = %e, "loading Istio config");
    }
    applied.store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        tokio::time::sleep(every).await;
        let fp = fingerprint(&dir);
        if fp == last {
            continue;
        }
        last = fp;
        version += 1;
        if let Err(e) = load_and_apply(&state, &dir, &node, &mut routes, &version.to_string()) {
            tracing::error!(error = %e, "reloading Istio config");
        }
    }
}
