//! Access logging as istiod configures it: MeshConfig's `accessLogFile`, `accessLogEncoding`
//! and `accessLogFormat` (from the `istio` ConfigMap, or `--access-log-file`) put a file access
//! log on every HTTP connection manager and tcp_proxy of the generated listeners, in Istio's
//! default text or JSON format unless a format is given.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;
use serde_json::{json, Value};

use super::model::MeshConfig;
use super::registry::Registry;
use super::Node;

/// Istio's default text format (istiod's `EnvoyTextLogFormat`).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON format keys.
fn istio_json_format() -> Value {
    json!({
        "authority": "%REQ(:AUTHORITY)%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
        "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
        "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
        "duration": "%DURATION%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "protocol": "%PROTOCOL%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "requested_server_name": "%REQUESTED_SERVER_NAME%",
        "response_code": "%RESPONSE_CODE%",
        "response_code_details": "%RESPONSE_CODE_DETAILS%",
        "response_flags": "%RESPONSE_FLAGS%",
        "route_name": "%ROUTE_NAME%",
        "start_time": "%START_TIME%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
        "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "user_agent": "%REQ(USER-AGENT)%",
        "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    })
}

/// The mesh's access log settings for `node`: the CLI's file wins over the ConfigMap's; the
/// ConfigMap in `istio-system` wins over one elsewhere.
pub fn settings(reg: &Registry, node: &Node) -> Option<MeshConfig> {
    let mut mesh = reg.mesh.clone();
    if let Some(f) = &node.access_log_file {
        mesh.access_log_file = f.clone();
    }
    (!mesh.access_log_file.is_empty()).then_some(mesh)
}

/// The `access_log` entry for `mesh`.
fn entry(mesh: &MeshConfig) -> Value {
    let log_format = if mesh.access_log_encoding.eq_ignore_ascii_case("JSON") {
        let fmt = serde_json::from_str::<Value>(&mesh.access_log_format)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(istio_json_format);
        json!({"json_format": fmt})
    } else {
        let mut text = if mesh.access_log_format.is_empty() {
            ISTIO_TEXT_FORMAT.to_string()
        } else {
            mesh.access_log_format.clone()
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        json!({"text_format_source": {"inline_string": text}})
    };
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": mesh.access_log_file,
            "log_format": log_format,
        }
    })
}

/// Adds the access log to every HTTP connection manager and tcp_proxy of `listeners`.
pub fn apply(listeners: &mut [Listener], mesh: &MeshConfig) {
    use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    let Ok(log) = crate::config::proto::decode_json_value::<AccessLog>(entry(mesh)) else {
        tracing::warn!("mesh access log settings do not make a valid access log; ignored");
        return;
    };
    super::listeners::each_network_filter(listeners, |any| {
        if any.type_url.ends_with(".HttpConnectionManager") {
            if let Ok(mut h) = HttpConnectionManager::decode(any.value.as_slice()) {
                h.access_log.push(log.clone());
                any.value = h.encode_to_vec();
            }
        } else if any.type_url.ends_with(".TcpProxy") {
            if let Ok(mut t) = TcpProxy::decode(any.value.as_slice()) {
                t.access_log.push(log.clone());
                any.value = t.encode_to_vec();
            }
        }
    });
}
