//! The CORS filter (`envoy.filters.http.cors`) with Envoy's semantics.
//!
//! Policies come from the route hierarchy: `typed_per_filter_config` entries of type
//! `envoy.extensions.filters.http.cors.v3.CorsPolicy` under the filter's name (weighted cluster,
//! route, then virtual host: the most specific one that sets a field wins, field by field), or,
//! when none is configured anywhere, the legacy `cors` fields of the route action and the virtual
//! host. Every policy is compiled (origin matchers included) when the route table is built; a
//! request only evaluates the compiled matchers.
//!
//! For a request with a non-empty `Origin` on a forwarding route whose first policy is enabled:
//! a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered by the proxy with 200
//! and the `access-control-allow-*` headers; a preflight from an origin that does not match is
//! passed upstream unless `forward_not_matching_preflights` is false (then it is answered with
//! 200 without `access-control-allow-origin`). Other requests from a matching origin get
//! `access-control-allow-origin` (the request's origin), `-allow-credentials` and
//! `-expose-headers` added to the response. `shadow_enabled` only evaluates the origin.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as pb;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::route::matcher::StringMatch;
use crate::route::{FieldError, Fraction};

/// The type of a per-route CORS policy.
pub const POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";
/// The type of the filter itself (an empty message).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";

const ORIGIN: HeaderName = HeaderName::from_static("origin");
const REQUEST_METHOD: HeaderName = HeaderName::from_static("access-control-request-method");
const REQUEST_HEADERS: HeaderName = HeaderName::from_static("access-control-request-headers");
const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
pub const ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
pub const ALLOW_CREDENTIALS: HeaderName =
    HeaderName::from_static("access-control-allow-credentials");
pub const ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
pub const ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
pub const MAX_AGE: HeaderName = HeaderName::from_static("access-control-max-age");
pub const EXPOSE_HEADERS: HeaderName = HeaderName::from_static("access-control-expose-headers");
pub const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// A compiled CORS policy (either proto shape).
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: Option<bool>,
    /// `filter_enabled` (absent: enabled).
    pub filter_enabled: Option<Fraction>,
    /// `shadow_enabled` (absent: off).
    pub shadow_enabled: Option<Fraction>,
    pub allow_private_network_access: Option<bool>,
    pub forward_not_matching_preflights: Option<bool>,
}

fn runtime_fraction(
    f: &Option<RuntimeFractionalPercent>,
    field: &str,
) -> Result<Option<Fraction>, FieldError> {
    f.as_ref()
        .map(|f| {
            crate::route::action::fraction(f.default_value.as_ref())
                .map_err(|e| e.under(&format!("{field}.default_value")))
        })
        .transpose()
}

fn origins(ms: &[StringMatcher]) -> Result<Vec<StringMatch>, FieldError> {
    ms.iter()
        .enumerate()
        .map(|(i, m)| {
            StringMatch::compile(m).map_err(|e| e.under(&format!("allow_origin_string_match[{i}]")))
        })
        .collect()
}

impl CorsPolicy {
    /// The filter's per-route policy.
    pub fn compile(p: &pb::CorsPolicy) -> Result<Self, FieldError> {
        Ok(CorsPolicy {
            allow_origins: origins(&p.allow_origin_string_match)?,
            allow_methods: p.allow_methods.clone(),
            allow_headers: p.allow_headers.clone(),
            expose_headers: p.expose_headers.clone(),
            max_age: p.max_age.clone(),
            allow_credentials: p.allow_credentials.map(|b| b.value),
            filter_enabled: runtime_fraction(&p.filter_enabled, "filter_enabled")?,
            shadow_enabled: runtime_fraction(&p.shadow_enabled, "shadow_enabled")?,
            allow_private_network_access: p.allow_private_network_access.map(|b| b.value),
            forward_not_matching_preflights: p.forward_not_matching_preflights.map(|b| b.value),
        })
    }

    /// The legacy `cors` field of a virtual host or route action.
    pub fn compile_legacy(p: &rpb::CorsPolicy) -> Result<Self, FieldError> {
        use rpb::cors_policy::EnabledSpecifier as E;
        let filter_enabled = match &p.enabled_specifier {
            Some(E::FilterEnabled(f)) => runtime_fraction(&Some(f.clone()), "filter_enabled")?,
            None => None,
        };
        Ok(CorsPolicy {
            allow_origins: origins(&p.allow_origin_string_match)?,
            allow_methods: p.allow_methods.clone(),
            allow_headers: p.allow_headers.clone(),
            expose_headers: p.expose_headers.clone(),
            max_age: p.max_age.clone(),
            allow_credentials: p.allow_credentials.map(|b| b.value),
            filter_enabled,
            shadow_enabled: runtime_fraction(&p.shadow_enabled, "shadow_enabled")?,
            allow_private_network_access: p.allow_private_network_access.map(|b| b.value),
            forward_not_matching_preflights: p.forward_not_matching_preflights.map(|b| b.value),
        })
    }

    fn enabled(&self, random: u64) -> bool {
        self.filter_enabled.is_none_or(|f| f.enabled(random))
    }

    fn shadow_enabled(&self, random: u64) -> bool {
        self.shadow_enabled.is_some_and(|f| f.enabled(random))
    }
}

/// What the filter decided on the request path.
#[derive(Debug)]
pub enum Decision {
    /// Nothing to do for this request.
    Pass,
    /// Answer now with 200 and these headers (a preflight).
    Preflight(HeaderMap),
    /// Forward; add these headers to whatever response comes back.
    Respond(Latched),
}

/// The response headers of an actual CORS request from an allowed origin.
#[derive(Debug, Clone)]
pub struct Latched {
    pub origin: HeaderValue,
    pub credentials: bool,
    pub expose_headers: Option<HeaderValue>,
}

impl Latched {
    /// Sets the headers on the response (replacing any the upstream sent).
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(e) = &self.expose_headers {
            h.insert(EXPOSE_HEADERS, e.clone());
        }
    }
}

/// The policies that apply to one request, most specific first, with Envoy's field-by-field
/// lookup: each field comes from the first policy that sets it.
#[derive(Debug, Default)]
pub struct Policies<'a>(pub Vec<&'a CorsPolicy>);

impl<'a> Policies<'a> {
    fn first_str(&self, f: impl Fn(&'a CorsPolicy) -> &'a str) -> &'a str {
        self.0
            .iter()
            .map(|p| f(p))
            .find(|s| !s.is_empty())
            .unwrap_or("")
    }

    fn first_bool(&self, f: impl Fn(&CorsPolicy) -> Option<bool>, default: bool) -> bool {
        self.0.iter().find_map(|p| f(p)).unwrap_or(default)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let Some(p) = self.0.iter().find(|p| !p.allow_origins.is_empty()) else {
            return false;
        };
        p.allow_origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    pub fn allow_credentials(&self) -> bool {
        self.first_bool(|p| p.allow_credentials, false)
    }

    /// Decides for a request. `random_enabled` and `random_shadow` are the draws for the
    /// first policy's `filter_enabled` and `shadow_enabled`. `stats` counts origin checks.
    pub fn decide(
        &self,
        method: &Method,
        headers: &HeaderMap,
        random_enabled: u64,
        random_shadow: u64,
        stats: Option<&CorsStats>,
    ) -> Decision {
        let Some(first) = self.0.first() else {
            return Decision::Pass;
        };
        let enabled = first.enabled(random_enabled);
        let shadow = first.shadow_enabled(random_shadow);
        if !enabled && !shadow {
            return Decision::Pass;
        }
        let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
            return Decision::Pass;
        };
        let allowed = self.origin_allowed(&String::from_utf8_lossy(origin.as_bytes()));
        if let Some(s) = stats {
            if allowed {
                s.origin_valid.inc();
            } else {
                s.origin_invalid.inc();
            }
        }
        if shadow && !enabled {
            return Decision::Pass;
        }
        let latched = || {
            if allowed {
                Decision::Respond(Latched {
                    origin: origin.clone(),
                    credentials: self.allow_credentials(),
                    expose_headers: Some(self.first_str(|p| &p.expose_headers))
                        .filter(|s| !s.is_empty())
                        .and_then(|s| HeaderValue::from_str(s).ok()),
                })
            } else {
                Decision::Pass
            }
        };
        if method != Method::OPTIONS {
            return latched();
        }
        let Some(req_method) = headers.get(REQUEST_METHOD).filter(|v| !v.is_empty()) else {
            return latched();
        };
        if !allowed && self.first_bool(|p| p.forward_not_matching_preflights, true) {
            return Decision::Pass;
        }
        let mut h = HeaderMap::new();
        if allowed {
            h.insert(ALLOW_ORIGIN, origin.clone());
        }
        if self.allow_credentials() {
            h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let value = |s: &str| HeaderValue::from_str(s).ok();
        match self.first_str(|p| &p.allow_methods) {
            "" => {}
            "*" => {
                h.insert(ALLOW_METHODS, req_method.clone());
            }
            m => {
                if let Some(v) = value(m) {
                    h.insert(ALLOW_METHODS, v);
                }
            }
        }
        match self.first_str(|p| &p.allow_headers) {
            "" => {}
            "*" => {
                let v = headers
                    .get(REQUEST_HEADERS)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static(""));
                h.insert(ALLOW_HEADERS, v);
            }
            m => {
                if let Some(v) = value(m) {
                    h.insert(ALLOW_HEADERS, v);
                }
            }
        }
        if let Some(v) = value(self.first_str(|p| &p.max_age)).filter(|v| !v.is_empty()) {
            h.insert(MAX_AGE, v);
        }
        if self.first_bool(|p| p.allow_private_network_access, false)
            && headers
                .get(REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes() == b"true")
        {
            h.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
        }
        Decision::Preflight(h)
    }
}

/// `http.<stat_prefix>.cors.*`.
#[derive(Debug)]
pub struct CorsStats {
    pub origin_valid: Arc<crate::stats::Counter>,
    pub origin_invalid: Arc<crate::stats::Counter>,
}

#[cfg(test)]
#[path = "cors_tests.rs"]
mod tests;
