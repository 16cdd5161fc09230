//! Typed resource handlers: the proxy's side of the client.
//!
//! The proxy registers one [`Handler`] per resource type. The client decodes each
//! `google.protobuf.Any` into the resource's message type, drops (and rejects) resources it
//! cannot decode or that appear twice in one response, computes removals, and hands the
//! handler an [`Update`]. A handler answers with the resources it refused ([`Rejected`]);
//! anything refused makes the client NACK, naming every refused resource. A bad resource
//! rejects only itself: the rest of the batch is still delivered.
//!
//! This module also holds the type-erased form ([`ErasedHandler`]) the stream drivers use,
//! so that `sotw.rs` and `delta.rs` share the decode / reject / dedupe rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;

/// A message type that can travel over xDS: it knows its type URL (through [`prost::Name`])
/// and its own resource name.
pub trait XdsResource: prost::Message + prost::Name + Default + Send + 'static {
    /// The resource name the control plane uses for this message (e.g. `Listener.name`,
    /// `ClusterLoadAssignment.cluster_name`).
    fn resource_name(&self) -> &str;
}

impl XdsResource for Listener {
    fn resource_name(&self) -> &str {
        &self.name
    }
}
impl XdsResource for RouteConfiguration {
    fn resource_name(&self) -> &str {
        &self.name
    }
}
impl XdsResource for Cluster {
    fn resource_name(&self) -> &str {
        &self.name
    }
}
impl XdsResource for ClusterLoadAssignment {
    fn resource_name(&self) -> &str {
        &self.cluster_name
    }
}
impl XdsResource for Secret {
    fn resource_name(&self) -> &str {
        &self.name
    }
}

/// One decoded resource of an [`Update`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<T> {
    pub name: String,
    /// Delta: the resource's own version. State of the world: the response's `version_info`
    /// (or the version of an `envoy.service.discovery.v3.Resource` wrapper).
    pub version: String,
    pub message: T,
}

/// What the client hands a handler for one response of its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Update<T> {
    pub type_url: String,
    /// SotW `version_info`; delta `system_version_info` (may be empty).
    pub version_info: String,
    /// Resources added or changed (SotW: every resource of the response that decoded).
    pub updated: Vec<Resource<T>>,
    /// Names to delete. SotW full-state types: names present in the previous response and
    /// absent from this one. Delta: `removed_resources`. A handler must ignore names it
    /// does not hold.
    pub removed: Vec<String>,
    /// True for SotW Listener and Cluster responses: `updated` is the whole set (minus
    /// resources the client rejected, which keep their previous version).
    pub full_state: bool,
}

/// A resource a handler (or the client) refused, and why. Becomes part of the NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

impl Rejected {
    pub fn new(name: impl Into<String>, reason: impl fmt::Display) -> Self {
        Rejected {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Applies updates of one resource type. Called on the client's task, one update at a time,
/// never while the control plane is unreachable. Closures `Fn(Update<T>) -> Result<..>` work.
pub trait Handler<T>: Send + Sync + 'static {
    /// Apply `update`; return every resource that could not be applied. Resources not
    /// listed are considered applied.
    fn handle(&self, update: Update<T>) -> Result<(), Vec<Rejected>>;
}

impl<T, F> Handler<T> for F
where
    F: Fn(Update<T>) -> Result<(), Vec<Rejected>> + Send + Sync + 'static,
{
    fn handle(&self, update: Update<T>) -> Result<(), Vec<Rejected>> {
        self(update)
    }
}

/// Type URL of the SotW wrapper message some control planes put around each resource.
pub(crate) const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// One resource as it arrived, before decoding.
#[derive(Debug, Clone)]
pub(crate) struct RawResource {
    /// Known from the transport (delta `Resource.name`, a SotW wrapper); otherwise taken
    /// from the decoded message.
    pub name: Option<String>,
    pub version: String,
    pub any: Any,
    /// Position in the response, for messages about resources without a known name.
    pub index: usize,
}

/// How removals are determined for a batch.
#[derive(Debug, Clone)]
pub(crate) enum Removal {
    /// SotW Listener / Cluster: the batch is the whole set; remove `previous - present`.
    FullState(BTreeSet<String>),
    /// SotW named types: nothing is removed implicitly.
    None,
    /// Delta: the server names removals.
    Explicit(Vec<String>),
}

/// A response of one type, ready for [`ErasedHandler::process`].
#[derive(Debug, Clone)]
pub(crate) struct RawUpdate {
    pub version_info: String,
    pub resources: Vec<RawResource>,
    pub removal: Removal,
}

/// What happened to a batch.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Everything refused, by the client or the handler. Non-empty means NACK.
    pub rejected: Vec<Rejected>,
    /// Whether the handler was called at all (false: the whole response was refused).
    pub applied: bool,
    /// Names present in the response (SotW full-state bookkeeping).
    pub present: BTreeSet<String>,
    /// Resources the handler accepted, with their versions (delta bookkeeping).
    pub accepted: BTreeMap<String, String>,
    /// Names removed by this update.
    pub removed: Vec<String>,
}

/// A handler with its resource type erased, as the stream drivers hold it.
pub(crate) trait ErasedHandler: Send + Sync {
    fn process(&self, type_url: &str, update: RawUpdate) -> Outcome;
}

pub(crate) struct Typed<T, H> {
    handler: H,
    _type: PhantomData<fn() -> T>,
}

impl<T, H> Typed<T, H> {
    pub(crate) fn new(handler: H) -> Self {
        Typed {
            handler,
            _type: PhantomData,
        }
    }
}

/// Decodes one `Any` into `T`, with a message fit for a NACK.
pub(crate) fn decode_any<T: XdsResource>(type_url: &str, any: &Any) -> Result<T, String> {
    if any.type_url != type_url {
        return Err(format!(
            "resource has type URL {:?}, expected {:?}",
            any.type_url, type_url
        ));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", T::full_name()))
}

impl<T: XdsResource, H: Handler<T>> ErasedHandler for Typed<T, H> {
    fn process(&self, type_url: &str, update: RawUpdate) -> Outcome {
        let mut out = Outcome::default();
        let mut decoded: Vec<Resource<T>> = Vec::with_capacity(update.resources.len());
        let mut whole_response_refused = false;
        for raw in update.resources {
            match decode_any::<T>(type_url, &raw.any) {
                Ok(message) => {
                    let name = match raw.name {
                        Some(n) if !n.is_empty() => n,
                        _ => message.resource_name().to_owned(),
                    };
                    if name.is_empty() {
                        out.rejected.push(Rejected::new(
                            format!("resources[{}]", raw.index),
                            "resource has an empty name",
                        ));
                        continue;
                    }
                    out.present.insert(name.clone());
                    decoded.push(Resource {
                        name,
                        version: raw.version,
                        message,
                    });
                }
                Err(reason) => match raw.name {
                    Some(name) if !name.is_empty() => {
                        out.present.insert(name.clone());
                        out.rejected.push(Rejected::new(name, reason));
                    }
                    _ => {
                        // Without a name we cannot tell which resource keeps its old
                        // version, so a full-state removal would be wrong: refuse it all.
                        whole_response_refused = true;
                        out.rejected
                            .push(Rejected::new(format!("resources[{}]", raw.index), reason));
                    }
                },
            }
        }
        if whole_response_refused {
            out.present.clear();
            return out;
        }

        // Duplicate names: every copy is refused, the previous version stays.
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &decoded {
            *counts.entry(r.name.as_str()).or_default() += 1;
        }
        let duplicates: BTreeSet<String> = counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(name, n)| {
                out.rejected.push(Rejected::new(
                    name,
                    format!("duplicate resource name: appears {n} times in one response"),
                ));
                name.to_owned()
            })
            .collect();
        decoded.retain(|r| !duplicates.contains(&r.name));

        let full_state = matches!(update.removal, Removal::FullState(_));
        out.removed = match update.removal {
            Removal::FullState(previous) => previous.difference(&out.present).cloned().collect(),
            Removal::None => Vec::new(),
            Removal::Explicit(names) => names,
        };
        let versions: Vec<(String, String)> = decoded
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let result = self.handler.handle(Update {
            type_url: type_url.to_owned(),
            version_info: update.version_info,
            updated: decoded,
            removed: out.removed.clone(),
            full_state,
        });
        out.applied = true;
        let refused: BTreeSet<String> = match result {
            Ok(()) => BTreeSet::new(),
            Err(rejected) => {
                let names = rejected.iter().map(|r| r.name.clone()).collect();
                out.rejected.extend(rejected);
                names
            }
        };
        out.accepted = versions
            .into_iter()
            .filter(|(name, _)| !refused.contains(name))
            .collect();
        out
    }
}

/// Listener and Cluster are the SotW "full state" types: a response carries all of them.
pub(crate) fn is_full_state(type_url: &str) -> bool {
    type_url == crate::type_url::LISTENER || type_url == crate::type_url::CLUSTER
}

/// The `error_detail` message of a NACK: one `name: reason` line per refused resource.
pub(crate) fn nack_message(rejected: &[Rejected]) -> String {
    rejected
        .iter()
        .map(Rejected::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_url;
    use envoy_types::util::pack_any;
    use std::sync::{Arc, Mutex};

    fn listener(name: &str) -> Any {
        pack_any(Listener {
            name: name.into(),
            ..Default::default()
        })
    }

    fn raw(resources: Vec<Any>) -> Vec<RawResource> {
        resources
            .into_iter()
            .enumerate()
            .map(|(index, any)| RawResource {
                name: None,
                version: "1".into(),
                any,
                index,
            })
            .collect()
    }

    type Seen = Arc<Mutex<Vec<Update<Listener>>>>;

    fn recording(reject: Option<&'static str>) -> (Typed<Listener, impl Handler<Listener>>, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let h = move |u: Update<Listener>| {
            s.lock().unwrap().push(u);
            match reject {
                Some(n) => Err(vec![Rejected::new(n, "no")]),
                None => Ok(()),
            }
        };
        (Typed::new(h), seen)
    }

    #[test]
    fn full_state_removal_and_duplicates() {
        let (h, seen) = recording(None);
        let previous = ["a", "b", "gone"].map(String::from).into();
        let out = h.process(
            type_url::LISTENER,
            RawUpdate {
                version_info: "v2".into(),
                resources: raw(vec![listener("a"), listener("b"), listener("b")]),
                removal: Removal::FullState(previous),
            },
        );
        assert_eq!(out.removed, vec!["gone".to_string()]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].name, "b");
        assert!(out.rejected[0].reason.contains("duplicate"));
        let seen = seen.lock().unwrap();
        let names: Vec<_> = seen[0].updated.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        assert!(seen[0].full_state);
        // "b" was present (refused), so it is not removed.
        assert!(!seen[0].removed.contains(&"b".to_string()));
    }

    #[test]
    fn undecodable_without_name_refuses_whole_response() {
        let (h, seen) = recording(None);
        let mut bad = listener("x");
        bad.value = vec![0xff, 0xff, 0xff];
        let wrong = pack_any(Cluster::default());
        let out = h.process(
            type_url::LISTENER,
            RawUpdate {
                version_info: "v".into(),
                resources: raw(vec![listener("a"), bad, wrong]),
                removal: Removal::FullState(BTreeSet::new()),
            },
        );
        assert!(!out.applied);
        assert!(seen.lock().unwrap().is_empty());
        let msg = nack_message(&out.rejected);
        assert!(msg.contains("resources[1]: cannot decode envoy.config.listener.v3.Listener"));
        assert!(msg.contains("resources[2]: resource has type URL"));
    }

    #[test]
    fn named_decode_error_and_handler_rejection_reject_only_themselves() {
        let (h, seen) = recording(Some("b"));
        let mut resources = raw(vec![
            listener("a"),
            listener("b"),
            pack_any(Cluster::default()),
        ]);
        resources[2].name = Some("c".into());
        let out = h.process(
            type_url::LISTENER,
            RawUpdate {
                version_info: "".into(),
                resources,
                removal: Removal::Explicit(vec!["z".into()]),
            },
        );
        assert!(out.applied);
        let names: Vec<_> = out.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c", "b"]);
        assert_eq!(out.accepted.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(seen.lock().unwrap()[0].removed, ["z"]);
    }
}
