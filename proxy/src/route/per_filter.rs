//! A virtual host's, route's or weighted cluster's `typed_per_filter_config`, compiled when the
//! route table is built: the CORS policies and fault-filter overrides that requests read, by
//! filter name. A config that does not decode is a config error (NACK), not a per-request
//! surprise. Entries for other filters are skipped (`/config_dump` shows them from the
//! encoded resource).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::FieldError;
use crate::http::cors::{CorsPolicy, POLICY_TYPE};

const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const WRAPPER_TYPE: &str = "envoy.config.route.v3.FilterConfig";

#[derive(Debug, Clone)]
enum Compiled {
    Cors(Arc<CorsPolicy>),
    Fault(Arc<fault_pb::HttpFault>),
}

/// The compiled per-filter configs of one virtual host, route or weighted cluster.
#[derive(Debug, Clone, Default)]
pub struct PerFilter(Vec<(String, Compiled)>);

impl PerFilter {
    /// Compiles the entries Sluice's filters read (also inside a `FilterConfig` wrapper).
    pub fn compile(map: &HashMap<String, Any>) -> Result<Self, FieldError> {
        let mut out = Vec::new();
        for (name, any) in map {
            let at = || format!("typed_per_filter_config[{name}]");
            let bad = |e: prost::DecodeError| FieldError::new(at(), e.to_string());
            let (type_url, value) = if type_name(&any.type_url) == WRAPPER_TYPE {
                match rpb::FilterConfig::decode(any.value.as_slice())
                    .map_err(bad)?
                    .config
                {
                    Some(c) => (c.type_url, c.value),
                    None => continue,
                }
            } else {
                (any.type_url.clone(), any.value.clone())
            };
            let compiled = match type_name(&type_url) {
                POLICY_TYPE => {
                    let p = cors_pb::CorsPolicy::decode(value.as_slice()).map_err(bad)?;
                    Compiled::Cors(Arc::new(
                        CorsPolicy::compile(&p).map_err(|e| e.under(&at()))?,
                    ))
                }
                FAULT_TYPE => Compiled::Fault(Arc::new(
                    fault_pb::HttpFault::decode(value.as_slice()).map_err(bad)?,
                )),
                _ => continue,
            };
            out.push((name.clone(), compiled));
        }
        Ok(PerFilter(out))
    }

    /// The CORS policy configured for the filter named `filter`.
    pub fn cors(&self, filter: &str) -> Option<&CorsPolicy> {
        self.0.iter().find_map(|(n, c)| match c {
            Compiled::Cors(p) if n == filter => Some(&**p),
            _ => None,
        })
    }

    /// The fault filter override configured for the filter named `filter`.
    pub fn fault(&self, filter: &str) -> Option<&fault_pb::HttpFault> {
        self.0.iter().find_map(|(n, c)| match c {
            Compiled::Fault(f) if n == filter => Some(&**f),
            _ => None,
        })
    }
}

fn type_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_name: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value,
        }
    }

    #[test]
    fn fault_and_cors_entries_compile_and_bad_ones_are_errors() {
        let fault = fault_pb::HttpFault {
            max_active_faults: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 7 }),
            ..Default::default()
        };
        let wrapped = rpb::FilterConfig {
            config: Some(any(FAULT_TYPE, fault.encode_to_vec())),
            ..Default::default()
        };
        let mut m = HashMap::new();
        m.insert("f1".to_string(), any(FAULT_TYPE, fault.encode_to_vec()));
        m.insert("f2".to_string(), any(WRAPPER_TYPE, wrapped.encode_to_vec()));
        m.insert(
            "c".to_string(),
            any(POLICY_TYPE, cors_pb::CorsPolicy::default().encode_to_vec()),
        );
        m.insert("other".to_string(), any("x.y.Unknown", vec![1, 2, 3]));
        let p = PerFilter::compile(&m).unwrap();
        assert_eq!(
            p.fault("f1").unwrap().max_active_faults.map(|v| v.value),
            Some(7)
        );
        assert!(p.fault("f2").is_some());
        assert!(p.fault("c").is_none() && p.cors("c").is_some());
        assert!(p.fault("other").is_none() && p.cors("other").is_none());

        m.insert("bad".to_string(), any(FAULT_TYPE, vec![0xff, 0xff]));
        let e = PerFilter::compile(&m).unwrap_err();
        assert!(
            e.to_string().contains("typed_per_filter_config[bad]"),
            "{e}"
        );
    }
}
