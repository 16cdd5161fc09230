//! Incremental ADS (`DeltaAggregatedResources`).
//!
//! Per type the client keeps the version of every resource its handler accepted; on a new
//! stream it sends them as `initial_resource_versions` so the server sends only what
//! changed. Subscriptions go out as `resource_names_subscribe` / `_unsubscribe` diffs
//! against what this stream asked for; a wildcard type sends an empty subscribe list first.
//!
//! - ACK: `response_nonce` only. NACK: `response_nonce` and `error_detail`.
//! - `removed_resources` are passed to the handler and forgotten.
//! - A resource without a body is a TTL heartbeat: nothing changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::client::{ordered, ConnectionState, Error, Interest, Shared};
use crate::handler::{nack_message, RawResource, RawUpdate, Removal};
use crate::sotw::NACK_CODE;

/// What survives reconnects: accepted resource versions per type.
#[derive(Debug, Default)]
pub(crate) struct DeltaState {
    versions: BTreeMap<String, BTreeMap<String, String>>,
}

struct Stream<'a> {
    shared: &'a Shared,
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    node_sent: bool,
    sent: BTreeMap<String, Interest>,
}

impl Stream<'_> {
    fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        if !self.node_sent {
            request.node = Some(self.shared.node.clone());
            self.node_sent = true;
        }
        debug!(
            type_url = %request.type_url,
            nonce = %request.response_nonce,
            subscribe = ?request.resource_names_subscribe,
            unsubscribe = ?request.resource_names_unsubscribe,
            initial = request.initial_resource_versions.len(),
            nack = request.error_detail.is_some(),
            "sending DeltaDiscoveryRequest"
        );
        let _ = self.tx.send(request);
    }

    /// Sends the first request of a type on this stream, or a subscription diff.
    fn subscribe(&mut self, state: &mut DeltaState, type_url: &str, want: &Interest) {
        let versions = state.versions.entry(type_url.to_owned()).or_default();
        let request = match (self.sent.get(type_url), want) {
            (Some(sent), want) if sent == want => return,
            (None, Interest::Names(names)) if names.is_empty() => return,
            (None, Interest::Wildcard) => DeltaDiscoveryRequest {
                initial_resource_versions: to_hash_map(versions),
                ..Default::default()
            },
            (None, Interest::Names(names)) => {
                versions.retain(|name, _| names.contains(name));
                DeltaDiscoveryRequest {
                    resource_names_subscribe: names.iter().cloned().collect(),
                    initial_resource_versions: to_hash_map(versions),
                    ..Default::default()
                }
            }
            (Some(sent), want) => {
                let empty = BTreeSet::new();
                let (old, new) = match (sent, want) {
                    (Interest::Names(old), Interest::Names(new)) => (old, new),
                    (Interest::Wildcard, Interest::Names(new)) => (&empty, new),
                    (Interest::Names(old), Interest::Wildcard) => (old, &empty),
                    (Interest::Wildcard, Interest::Wildcard) => return,
                };
                let mut subscribe: Vec<String> = new.difference(old).cloned().collect();
                let mut unsubscribe: Vec<String> = old.difference(new).cloned().collect();
                match (sent, want) {
                    (Interest::Wildcard, _) => unsubscribe.push("*".into()),
                    (_, Interest::Wildcard) => subscribe.push("*".into()),
                    _ => {}
                }
                if matches!(want, Interest::Names(_)) {
                    for name in &unsubscribe {
                        versions.remove(name);
                    }
                }
                DeltaDiscoveryRequest {
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                }
            }
        };
        self.sent.insert(type_url.to_owned(), want.clone());
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            ..request
        });
    }
}

fn to_hash_map(versions: &BTreeMap<String, String>) -> HashMap<String, String> {
    versions
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Runs one stream until it fails; returns why.
pub(crate) async fn run_stream(
    shared: &Shared,
    state: &mut DeltaState,
    channel: Channel,
    backoff: &mut Backoff,
) -> Error {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = Stream {
        shared,
        tx,
        node_sent: false,
        sent: BTreeMap::new(),
    };
    let mut interests = shared.interests.subscribe();
    let want = interests.borrow_and_update().clone();
    for type_url in ordered(&want) {
        stream.subscribe(state, &type_url, &want[&type_url]);
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(crate::MAX_RESPONSE_BYTES);
    let mut responses = match client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Error::Stream(status),
    };
    shared.set_connection(ConnectionState::Connected);
    shared.stats().streams += 1;
    loop {
        tokio::select! {
            message = responses.message() => match message {
                Ok(Some(response)) => {
                    backoff.reset();
                    on_response(&mut stream, state, response);
                }
                Ok(None) => return Error::Closed,
                Err(status) => return Error::Stream(status),
            },
            changed = interests.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
                let want = interests.borrow_and_update().clone();
                for type_url in ordered(&want) {
                    stream.subscribe(state, &type_url, &want[&type_url]);
                }
            }
        }
    }
}

fn on_response(stream: &mut Stream<'_>, state: &mut DeltaState, response: DeltaDiscoveryResponse) {
    let type_url = response.type_url.clone();
    debug!(
        %type_url,
        version = %response.system_version_info,
        nonce = %response.nonce,
        resources = response.resources.len(),
        removed = response.removed_resources.len(),
        "received DeltaDiscoveryResponse"
    );
    let result: Result<(), String> = match stream.shared.handlers.get(&type_url) {
        None => Err(Error::UnknownType(type_url.clone()).to_string()),
        Some(handler) => {
            let resources = response
                .resources
                .into_iter()
                .enumerate()
                .filter_map(|(index, r)| {
                    Some(RawResource {
                        name: Some(r.name),
                        version: r.version,
                        any: r.resource?,
                        index,
                    })
                })
                .collect();
            let mut removed = response.removed_resources;
            removed.extend(
                response
                    .removed_resource_names
                    .into_iter()
                    .map(|n| n.name)
                    .filter(|n| !n.is_empty()),
            );
            let outcome = handler.process(
                &type_url,
                RawUpdate {
                    version_info: response.system_version_info.clone(),
                    resources,
                    removal: Removal::Explicit(removed),
                },
            );
            let versions = state.versions.entry(type_url.clone()).or_default();
            for name in &outcome.removed {
                versions.remove(name);
            }
            versions.extend(outcome.accepted);
            if outcome.rejected.is_empty() {
                Ok(())
            } else {
                Err(nack_message(&outcome.rejected))
            }
        }
    };
    let error_detail = match result {
        Ok(()) => {
            stream
                .shared
                .record(&type_url, Ok(&response.system_version_info));
            None
        }
        Err(message) => {
            warn!(%type_url, nonce = %response.nonce, error = %message, "NACK");
            stream.shared.record(&type_url, Err(&message));
            Some(Status {
                code: NACK_CODE,
                message,
                details: Vec::new(),
            })
        }
    };
    stream.send(DeltaDiscoveryRequest {
        type_url,
        response_nonce: response.nonce,
        error_detail,
        ..Default::default()
    });
}
