//! Envoy's v3 API schema at run time: the descriptor pool compiled from the same `.proto` files
//! as `envoy-types`' structs, and conversions between proto3 JSON/YAML and typed messages.
//!
//! Decoding goes YAML/JSON → `DynamicMessage` (proto3 JSON mapping, `@type` Any resolved from
//! the pool, unknown fields rejected) → wire bytes → the typed `envoy-types` struct. Errors carry
//! the field path (`static_resources.listeners[0].address.socket_address.port_value`).
//! Encoding goes the other way, giving Envoy's JSON (proto field names) for `/config_dump`.

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

use super::schema_files::{self, Index};

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// What `pool_of` keeps between uses: the set's index, the last pool built and the files it
/// has, and when it was last used.
struct Cached {
    index: Index,
    pool: Option<(DescriptorPool, Vec<bool>)>,
    used: std::time::Instant,
}

static CACHE: std::sync::Mutex<Option<Cached>> = std::sync::Mutex::new(None);

/// The pool of every Envoy v3 message (and its dependencies: xds, udpa, validate, google).
/// Clones are cheap handles to the same pool.
pub fn pool() -> DescriptorPool {
    pool_of(|ix| ix.all())
}

/// A pool with at least the files `pick` selects from the embedded set's index.
///
/// Expanded, the whole schema takes about 14 MiB of heap, and it is only needed while
/// configuration is decoded or dumped. So a pool is built on first use with just the files a
/// document needs (see [`schema_files`](super::schema_files)), grown when a later document
/// needs more, cached while in use, and dropped (with the heap trimmed) after 30 s without use;
/// the next use builds it again in a few ms.
fn pool_of(pick: impl FnOnce(&Index) -> Vec<bool>) -> DescriptorPool {
    use std::time::{Duration, Instant};
    static REAPER: std::sync::Once = std::sync::Once::new();
    const IDLE: Duration = Duration::from_secs(30);
    REAPER.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("sluice-pool-reaper".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(10));
                let dropped = {
                    let mut c = CACHE.lock().unwrap();
                    if c.as_ref().is_some_and(|c| c.used.elapsed() >= IDLE) {
                        c.take()
                    } else {
                        None
                    }
                };
                if let Some(c) = dropped {
                    drop(c);
                    crate::sys::trim_heap();
                }
            });
    });
    let mut guard = CACHE.lock().unwrap();
    let c = guard.get_or_insert_with(|| Cached {
        index: Index::new(DESCRIPTOR_SET).expect("embedded descriptor set"),
        pool: None,
        used: Instant::now(),
    });
    c.used = Instant::now();
    let mut want = pick(&c.index);
    if let Some((pool, has)) = &c.pool {
        if want.iter().zip(has).all(|(w, h)| !w || *h) {
            return pool.clone();
        }
        for (w, h) in want.iter_mut().zip(has) {
            *w |= *h;
        }
    }
    // Drop the smaller pool before building its replacement.
    c.pool = None;
    let set = c.index.subset(DESCRIPTOR_SET, &want);
    let pool = DescriptorPool::decode(set.as_slice()).expect("embedded descriptor set");
    c.pool = Some((pool.clone(), want));
    pool
}

/// A pool that has `root` and every message type named by an `"@type"` in `value`.
fn pool_for(root: &str, value: &serde_json::Value) -> DescriptorPool {
    let mut types = vec![root.to_string()];
    schema_files::any_types(value, &mut types);
    pool_of(|ix| ix.closure(types.iter().map(String::as_str)))
}

/// Drops the cached descriptor pool now instead of after 30 s idle (e.g. once the bootstrap is
/// applied); handles still in use keep it alive, and the next use builds it again.
pub fn release_pool() {
    let dropped = CACHE.lock().unwrap().take();
    drop(dropped);
}

/// Error decoding a document into an Envoy message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message type {0}")]
    UnknownType(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("syntax: {0}")]
    Syntax(String),
    #[error("wire: {0}")]
    Wire(#[from] prost::DecodeError),
}

/// Input document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// `.json` files are JSON; everything else (`.yaml`, `.yml`, ...) is YAML.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

fn options() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(true)
}

/// Decodes `text` as the fully qualified message `full_name` into a `DynamicMessage`.
/// Both formats are read into a JSON value first (YAML resolves anchors and merges there;
/// syntax errors keep their line and column), then take one decoding path.
pub fn decode_dynamic(
    full_name: &str,
    text: &str,
    format: Format,
) -> Result<DynamicMessage, DecodeError> {
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string())),
        Format::Yaml => {
            serde_yaml_ng::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))
        }
    }?;
    decode_value(full_name, value)
}

/// Decodes a JSON value (already parsed) into a `DynamicMessage` of type `full_name`.
pub fn decode_value(
    full_name: &str,
    mut value: serde_json::Value,
) -> Result<DynamicMessage, DecodeError> {
    strip_root_type(full_name, &mut value)?;
    let desc = pool_for(full_name, &value)
        .get_message_by_name(full_name)
        .ok_or_else(|| DecodeError::UnknownType(full_name.to_string()))?;
    normalize(&mut value, &desc);
    let mut track = serde_path_to_error::Track::new();
    DynamicMessage::deserialize_with_options(
        desc,
        serde_path_to_error::Deserializer::new(value, &mut track),
        &options(),
    )
    .map_err(|e| DecodeError::Field {
        path: display_path(&track.path()),
        message: e.to_string(),
    })
}

/// Envoy's loader also takes a `google.protobuf.Duration` written as `{seconds, nanos}` (the
/// proto3 JSON mapping only has the `"1.5s"` string). Rewrites that form, following the schema
/// (through `Any` by its `@type`), before the strict decoder sees it.
fn normalize(value: &mut serde_json::Value, desc: &prost_reflect::MessageDescriptor) {
    use prost_reflect::{Kind, MessageDescriptor};
    use serde_json::Value;
    fn visit(v: &mut Value, m: &MessageDescriptor) {
        match m.full_name() {
            "google.protobuf.Duration" => {
                if let Value::Object(o) = v {
                    if o.keys().all(|k| k == "seconds" || k == "nanos") {
                        let num = |k: &str| {
                            o.get(k)
                                .and_then(|x| x.as_i64().or_else(|| x.as_str()?.parse().ok()))
                                .unwrap_or(0)
                        };
                        let (s, n) = (num("seconds"), num("nanos"));
                        *v = Value::String(if n == 0 {
                            format!("{s}s")
                        } else {
                            format!("{s}.{:09}s", n.unsigned_abs())
                        });
                    }
                }
                return;
            }
            "google.protobuf.Any" => {
                let inner = v
                    .get("@type")
                    .and_then(|t| t.as_str())
                    .and_then(|t| m.parent_pool().get_message_by_name(any_type_name(t)));
                if let Some(inner) = inner {
                    visit(v, &inner);
                }
                return;
            }
            "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
                return
            }
            _ => {}
        }
        let Value::Object(o) = v else { return };
        for (k, child) in o.iter_mut() {
            let Some(f) = m
                .get_field_by_name(k)
                .or_else(|| m.get_field_by_json_name(k))
            else {
                continue;
            };
            let Kind::Message(cm) = f.kind() else {
                continue;
            };
            if f.is_map() {
                let vf = cm.map_entry_value_field();
                if let (Kind::Message(vm), Value::Object(entries)) = (vf.kind(), child) {
                    for e in entries.values_mut() {
                        visit(e, &vm);
                    }
                }
            } else if f.is_list() {
                if let Value::Array(items) = child {
                    for i in items {
                        visit(i, &cm);
                    }
                }
            } else {
                visit(child, &cm);
            }
        }
    }
    visit(value, desc);
}

/// A resource copied out of a config dump carries `"@type"` at its root; accept it when it
/// names the expected message.
fn strip_root_type(full_name: &str, value: &mut serde_json::Value) -> Result<(), DecodeError> {
    if let Some(obj) = value.as_object_mut() {
        if let Some(t) = obj.get("@type").and_then(|t| t.as_str()) {
            if any_type_name(t) != full_name {
                return Err(DecodeError::Field {
                    path: "@type".into(),
                    message: format!("expected {full_name}, got {t}"),
                });
            }
            obj.remove("@type");
        }
    }
    Ok(())
}

fn display_path(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        "(root)".to_string()
    } else {
        s
    }
}

/// Decodes a document into the typed message `T`.
pub fn decode<T: Message + prost::Name + Default>(
    text: &str,
    format: Format,
) -> Result<T, DecodeError> {
    let wire = decode_dynamic(&T::full_name(), text, format)?.encode_to_vec();
    Ok(T::decode(wire.as_slice())?)
}

/// Decodes a parsed JSON value into the typed message `T`.
pub fn decode_json_value<T: Message + prost::Name + Default>(
    value: serde_json::Value,
) -> Result<T, DecodeError> {
    let wire = decode_value(&T::full_name(), value)?.encode_to_vec();
    Ok(T::decode(wire.as_slice())?)
}

/// Converts a typed message to Envoy's JSON form (proto field names, defaults omitted, Any
/// expanded with `@type`).
///
/// The pool has the message's file and those of the `type.googleapis.com/` type URLs in its
/// encoding; should an `Any` name its type some other way, the whole schema is used.
pub fn to_json<T: Message + prost::Name>(msg: &T) -> serde_json::Value {
    let wire = msg.encode_to_vec();
    let name = T::full_name();
    let types = schema_files::type_urls_in(&wire);
    let some = pool_of(|ix| ix.closure(std::iter::once(name.as_str()).chain(types)));
    json_in(&some, &name, &wire)
        .or_else(|| json_in(&pool(), &name, &wire))
        // An `Any` of a type the schema does not have cannot be shown in JSON.
        .unwrap_or(serde_json::Value::Null)
}

/// The JSON form of `wire`, decoded as `name` with the types `pool` has.
fn json_in(pool: &DescriptorPool, name: &str, wire: &[u8]) -> Option<serde_json::Value> {
    let dm = DynamicMessage::decode(pool.get_message_by_name(name)?, wire).ok()?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    dm.serialize_with_options(serde_json::value::Serializer, &opts)
        .ok()
}

/// Unpacks an `Any` into `T`, checking its type URL.
pub fn unpack_any<T: Message + prost::Name + Default>(
    any: &prost_types::Any,
) -> Result<T, DecodeError> {
    let want = T::type_url();
    if any.type_url != want {
        return Err(DecodeError::Field {
            path: "@type".into(),
            message: format!("expected {want}, got {}", any.type_url),
        });
    }
    Ok(T::decode(any.value.as_slice())?)
}

/// The message name in an Any's type URL (`type.googleapis.com/a.b.C` → `a.b.C`).
pub fn any_type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    #[test]
    fn pool_has_envoy_types() {
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
        ] {
            assert!(pool().get_message_by_name(name).is_some(), "{name}");
        }
    }

    /// A bootstrap with one `Any`: a listener's TCP proxy.
    const TCP_BOOTSTRAP: &str = r#"
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: c
"#;

    /// A bootstrap's pool has its own files and those of its `@type`s, a fraction of the schema,
    /// and decodes the document as the whole schema does.
    #[test]
    fn a_documents_pool_has_the_files_it_needs_and_few_more() {
        let text = TCP_BOOTSTRAP;
        let value: serde_json::Value = serde_yaml_ng::from_str(text).unwrap();
        let ix = Index::new(DESCRIPTOR_SET).unwrap();
        let mut types = vec![<Bootstrap as prost::Name>::full_name()];
        schema_files::any_types(&value, &mut types);
        let keep = ix.closure(types.iter().map(String::as_str));
        let n = keep.iter().filter(|k| **k).count();
        let all = ix.all().len();
        assert!(n > 10 && n * 3 < all, "{n} of {all} files");
        let some = DescriptorPool::decode(ix.subset(DESCRIPTOR_SET, &keep).as_slice()).unwrap();
        let tcp = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
        assert!(some.get_message_by_name(tcp).is_some());
        assert!(some
            .get_message_by_name("google.protobuf.Duration")
            .is_some());
        let fault = "envoy.extensions.filters.http.fault.v3.HTTPFault";
        assert!(some.get_message_by_name(fault).is_none());
        assert!(pool().get_message_by_name(fault).is_some());

        let desc = some
            .get_message_by_name(&<Bootstrap as prost::Name>::full_name())
            .unwrap();
        let dm = DynamicMessage::deserialize_with_options(desc, value, &options()).unwrap();
        let b = Bootstrap::decode(dm.encode_to_vec().as_slice()).unwrap();
        assert_eq!(b, decode::<Bootstrap>(text, Format::Yaml).unwrap());
    }

    #[test]
    fn yaml_with_any_decodes_to_typed() {
        let text = TCP_BOOTSTRAP;
        let b: Bootstrap = decode(text, Format::Yaml).unwrap();
        let l = &b.static_resources.unwrap().listeners[0];
        assert_eq!(l.name, "l");
        let any = l.filter_chains[0].filters[0].config_type.clone().unwrap();
        let envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any) =
            any
        else {
            panic!()
        };
        assert!(any.type_url.ends_with("TcpProxy"));
    }

    #[test]
    fn unknown_field_error_names_path() {
        let text = "virtual_hosts:\n- name: a\n  domains: ['*']\n  routes:\n  - match: {prefix: /}\n    route: {clustr: x}\n";
        let err = decode::<RouteConfiguration>(text, Format::Yaml).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("virtual_hosts[0].routes[0].route"), "{msg}");
        assert!(msg.contains("clustr"), "{msg}");
    }

    #[test]
    fn duration_object_form_is_accepted() {
        let text = "virtual_hosts:\n- name: a\n  domains: ['*']\n  routes:\n  - match: {prefix: /}\n    route: {cluster: c, timeout: {seconds: 2, nanos: 500000000}}\n";
        let rc: RouteConfiguration = decode(text, Format::Yaml).unwrap();
        let v = to_json(&rc);
        assert_eq!(
            v["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
            "2.500s"
        );
    }

    #[test]
    fn round_trip_to_json_uses_proto_names() {
        let text = "virtual_hosts:\n- name: a\n  domains: ['*']\n  require_tls: ALL\n";
        let rc: RouteConfiguration = decode(text, Format::Yaml).unwrap();
        let v = to_json(&rc);
        assert_eq!(v["virtual_hosts"][0]["require_tls"], "ALL");
    }
}
