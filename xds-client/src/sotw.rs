//! State-of-the-world ADS (`StreamAggregatedResources`): one stream, all types.
//!
//! Per type the client keeps the last ACKed `version_info` (kept across reconnects, and
//! sent again on the first request of a new stream, as Envoy does) and the names of the
//! last Listener/Cluster set (to compute removals). Per stream it keeps the last nonce of
//! each type and what it last asked for.
//!
//! - ACK: `version_info` = the response's version, `response_nonce` = its nonce.
//! - NACK: `version_info` = the last ACKed version, `response_nonce` = the new nonce,
//!   `error_detail` = one `name: reason` line per refused resource.
//! - Wildcard types send empty `resource_names`; named types send nothing until they have
//!   names. The node goes on the first request of each stream only.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse, Resource as WrappedResource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::client::{ordered, ConnectionState, Error, Interest, Shared};
use crate::handler::{
    is_full_state, nack_message, RawResource, RawUpdate, Removal, RESOURCE_WRAPPER,
};

/// gRPC status code Envoy puts in `error_detail` of a NACK (INTERNAL).
pub(crate) const NACK_CODE: i32 = 13;

/// What survives reconnects.
#[derive(Debug, Default)]
pub(crate) struct SotwState {
    types: BTreeMap<String, TypeState>,
}

#[derive(Debug, Default)]
struct TypeState {
    acked_version: String,
    /// Names of the last full-state set (Listener, Cluster).
    known: BTreeSet<String>,
}

/// What belongs to one stream.
struct Stream<'a> {
    shared: &'a Shared,
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    node_sent: bool,
    nonces: BTreeMap<String, String>,
    /// What the stream last asked for, per type.
    sent: BTreeMap<String, Interest>,
}

impl Stream<'_> {
    fn send(&mut self, mut request: DiscoveryRequest) {
        if !self.node_sent {
            request.node = Some(self.shared.node.clone());
            self.node_sent = true;
        }
        debug!(
            type_url = %request.type_url,
            version = %request.version_info,
            nonce = %request.response_nonce,
            names = ?request.resource_names,
            nack = request.error_detail.is_some(),
            "sending DiscoveryRequest"
        );
        // The receiver lives as long as the stream; a closed stream shows up on the
        // response side.
        let _ = self.tx.send(request);
    }

    /// Sends a (re)subscription for `type_url` if what we want differs from what we asked.
    fn subscribe(&mut self, state: &SotwState, type_url: &str, want: &Interest) {
        match (self.sent.get(type_url), want) {
            (Some(sent), want) if sent == want => return,
            // Never asked, and nothing to ask for: an empty list would mean wildcard.
            (None, Interest::Names(names)) if names.is_empty() => return,
            _ => {}
        }
        self.sent.insert(type_url.to_owned(), want.clone());
        let version_info = state
            .types
            .get(type_url)
            .map(|t| t.acked_version.clone())
            .unwrap_or_default();
        self.send(DiscoveryRequest {
            version_info,
            resource_names: names_of(want),
            type_url: type_url.to_owned(),
            response_nonce: self.nonces.get(type_url).cloned().unwrap_or_default(),
            ..Default::default()
        });
    }

    /// Resource names to repeat in an ACK/NACK of `type_url`.
    fn current_names(&self, type_url: &str) -> Vec<String> {
        let interests = self.shared.interests.borrow();
        self.sent
            .get(type_url)
            .or_else(|| interests.get(type_url))
            .map(names_of)
            .unwrap_or_default()
    }
}

fn names_of(interest: &Interest) -> Vec<String> {
    match interest {
        Interest::Wildcard => Vec::new(),
        Interest::Names(names) => names.iter().cloned().collect(),
    }
}

/// Runs one stream until it fails; returns why.
pub(crate) async fn run_stream(
    shared: &Shared,
    state: &mut SotwState,
    channel: Channel,
    backoff: &mut Backoff,
) -> Error {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = Stream {
        shared,
        tx,
        node_sent: false,
        nonces: BTreeMap::new(),
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
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
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
                    // The sender lives in `shared`; this cannot happen.
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

/// Unwraps `envoy.service.discovery.v3.Resource` wrappers; plain `Any`s pass through.
fn raw_resources(response: &DiscoveryResponse) -> Vec<RawResource> {
    let unwrap = |index: usize, any: &Any| -> RawResource {
        let plain = RawResource {
            name: None,
            version: response.version_info.clone(),
            any: any.clone(),
            index,
        };
        if any.type_url != RESOURCE_WRAPPER {
            return plain;
        }
        match WrappedResource::decode(any.value.as_slice()) {
            Ok(wrapped) => RawResource {
                name: Some(wrapped.name).filter(|n| !n.is_empty()),
                version: if wrapped.version.is_empty() {
                    response.version_info.clone()
                } else {
                    wrapped.version
                },
                any: wrapped.resource.unwrap_or_default(),
                index,
            },
            // Left as is: decoding reports the wrong type URL with the index.
            Err(_) => plain,
        }
    };
    response
        .resources
        .iter()
        .enumerate()
        .map(|(i, any)| unwrap(i, any))
        .collect()
}

fn on_response(stream: &mut Stream<'_>, state: &mut SotwState, response: DiscoveryResponse) {
    let type_url = response.type_url.clone();
    debug!(
        %type_url,
        version = %response.version_info,
        nonce = %response.nonce,
        resources = response.resources.len(),
        "received DiscoveryResponse"
    );
    stream
        .nonces
        .insert(type_url.clone(), response.nonce.clone());
    let ts = state.types.entry(type_url.clone()).or_default();
    let previous_version = ts.acked_version.clone();

    let result: Result<(), String> = match stream.shared.handlers.get(&type_url) {
        None => Err(Error::UnknownType(type_url.clone()).to_string()),
        Some(handler) => {
            let removal = if is_full_state(&type_url) {
                Removal::FullState(ts.known.clone())
            } else {
                Removal::None
            };
            let outcome = handler.process(
                &type_url,
                RawUpdate {
                    version_info: response.version_info.clone(),
                    resources: raw_resources(&response),
                    removal,
                },
            );
            if outcome.applied && is_full_state(&type_url) {
                ts.known = outcome.present;
            }
            if outcome.rejected.is_empty() {
                Ok(())
            } else {
                Err(nack_message(&outcome.rejected))
            }
        }
    };

    let resource_names = stream.current_names(&type_url);
    if let Err(message) = result {
        warn!(%type_url, version = %response.version_info, nonce = %response.nonce, error = %message, "NACK");
        stream.shared.record(&type_url, Err(&message));
        if !stream.shared.handlers.contains_key(&type_url) {
            // Do not keep state for types nobody asked for.
            state.types.remove(&type_url);
        }
        stream.send(DiscoveryRequest {
            version_info: previous_version,
            resource_names,
            type_url,
            response_nonce: response.nonce,
            error_detail: Some(Status {
                code: NACK_CODE,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        });
    } else {
        ts.acked_version = response.version_info.clone();
        stream.shared.record(&type_url, Ok(&response.version_info));
        stream.send(DiscoveryRequest {
            version_info: response.version_info,
            resource_names,
            type_url,
            response_nonce: response.nonce,
            ..Default::default()
        });
    }
}
