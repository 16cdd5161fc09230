//! The xDS unified matcher (`xds.type.matcher.v3.Matcher`) as used by a listener's
//! `filter_chain_matcher`: a tree over connection inputs (destination IP/port, source IP/port,
//! server name, transport and application protocol) whose actions name filter chains.

use std::collections::HashMap;

use envoy_types::pb::xds::r#type::matcher::v3 as xm;
use prost::Message;

use super::{Cidr, ConnInfo};

/// `xds.type.matcher.v3.IPMatcher`, which envoy-types does not generate (schema declared in
/// `proxy/proto/xds/type/matcher/v3/ip.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct IpMatcherPb {
    #[prost(message, repeated, tag = "1")]
    pub range_matchers: Vec<IpRangeMatcherPb>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IpRangeMatcherPb {
    #[prost(message, repeated, tag = "1")]
    pub ranges: Vec<envoy_types::pb::xds::core::v3::CidrRange>,
    #[prost(message, optional, tag = "2")]
    pub on_match: Option<xm::matcher::OnMatch>,
    #[prost(bool, tag = "3")]
    pub exclusive: bool,
}

/// A connection property a matcher reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    DestinationIp,
    DestinationPort,
    SourceIp,
    SourcePort,
    DirectSourceIp,
    SourceType,
    ServerName,
    TransportProtocol,
    ApplicationProtocol,
}

impl Input {
    fn from_type_url(url: &str) -> Option<Input> {
        let name = url.rsplit('.').next()?;
        Some(match name {
            "DestinationIPInput" => Input::DestinationIp,
            "DestinationPortInput" => Input::DestinationPort,
            "SourceIPInput" => Input::SourceIp,
            "SourcePortInput" => Input::SourcePort,
            "DirectSourceIPInput" => Input::DirectSourceIp,
            "SourceTypeInput" => Input::SourceType,
            "ServerNameInput" => Input::ServerName,
            "TransportProtocolInput" => Input::TransportProtocol,
            "ApplicationProtocolInput" => Input::ApplicationProtocol,
            _ => return None,
        })
    }

    fn read(&self, c: &ConnInfo) -> Option<String> {
        match self {
            Input::DestinationIp => c.local.map(|a| a.ip().to_string()),
            Input::DestinationPort => c.local.map(|a| a.port().to_string()),
            Input::SourceIp | Input::DirectSourceIp => c.remote.map(|a| a.ip().to_string()),
            Input::SourcePort => c.remote.map(|a| a.port().to_string()),
            Input::SourceType => c.is_local_source().then(|| "local".to_string()),
            Input::ServerName => c.server_name.clone(),
            Input::TransportProtocol => Some(c.transport.to_string()),
            Input::ApplicationProtocol => {
                if c.alpn.is_empty() {
                    None
                } else {
                    Some(
                        c.alpn
                            .iter()
                            .map(|p| format!("'{p}'"))
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                }
            }
        }
    }
}

/// What a match leads to: a filter chain name or a nested matcher.
#[derive(Debug, Clone)]
pub enum OnMatch {
    Action(String),
    Matcher(Box<Matcher>),
}

#[derive(Debug, Clone)]
enum StrMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
}

impl StrMatch {
    fn matches(&self, v: &str) -> bool {
        fn eq(a: &str, b: &str, ic: bool) -> bool {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        }
        match self {
            StrMatch::Exact(s, ic) => eq(v, s, *ic),
            StrMatch::Prefix(s, ic) => v.len() >= s.len() && eq(&v[..s.len()], s, *ic),
            StrMatch::Suffix(s, ic) => v.len() >= s.len() && eq(&v[v.len() - s.len()..], s, *ic),
            StrMatch::Contains(s, ic) => {
                if *ic {
                    v.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    v.contains(s.as_str())
                }
            }
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug, Clone)]
enum Predicate {
    Single(Input, StrMatch),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

impl Predicate {
    fn eval(&self, c: &ConnInfo) -> bool {
        match self {
            Predicate::Single(i, m) => i.read(c).is_some_and(|v| m.matches(&v)),
            Predicate::Or(ps) => ps.iter().any(|p| p.eval(c)),
            Predicate::And(ps) => ps.iter().all(|p| p.eval(c)),
            Predicate::Not(p) => !p.eval(c),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    List(Vec<(Predicate, OnMatch)>),
    Exact(Input, HashMap<String, OnMatch>),
    Prefix(Input, Vec<(String, OnMatch)>),
    Ip(Input, Vec<(Vec<Cidr>, OnMatch, bool)>),
}

/// A compiled matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    kind: Kind,
    on_no_match: Option<Box<OnMatch>>,
}

impl Matcher {
    /// Compiles a proto matcher; errors name the path inside it.
    pub fn compile(m: &xm::Matcher) -> Result<Matcher, String> {
        use xm::matcher::matcher_tree::TreeType;
        use xm::matcher::MatcherType;
        let on_no_match = match &m.on_no_match {
            Some(o) => Some(Box::new(compile_on_match(o)?)),
            None => None,
        };
        let kind =
            match &m.matcher_type {
                Some(MatcherType::MatcherList(list)) => {
                    let mut out = Vec::new();
                    for (i, fm) in list.matchers.iter().enumerate() {
                        let p = fm.predicate.as_ref().ok_or_else(|| {
                            format!("matcher_list.matchers[{i}].predicate: missing")
                        })?;
                        let o = fm.on_match.as_ref().ok_or_else(|| {
                            format!("matcher_list.matchers[{i}].on_match: missing")
                        })?;
                        out.push((
                            compile_predicate(p)
                                .map_err(|e| format!("matcher_list.matchers[{i}]: {e}"))?,
                            compile_on_match(o)?,
                        ));
                    }
                    Kind::List(out)
                }
                Some(MatcherType::MatcherTree(tree)) => {
                    let input = tree.input.as_ref().ok_or("matcher_tree.input: missing")?;
                    let url = input
                        .typed_config
                        .as_ref()
                        .map(|a| a.type_url.as_str())
                        .unwrap_or("");
                    let input = Input::from_type_url(url)
                        .ok_or_else(|| format!("matcher_tree.input: unsupported input {url}"))?;
                    match &tree.tree_type {
                        Some(TreeType::ExactMatchMap(map)) => {
                            let mut out = HashMap::new();
                            for (k, v) in &map.map {
                                out.insert(k.clone(), compile_on_match(v)?);
                            }
                            Kind::Exact(input, out)
                        }
                        Some(TreeType::PrefixMatchMap(map)) => {
                            let mut out: Vec<(String, OnMatch)> = Vec::new();
                            for (k, v) in &map.map {
                                out.push((k.clone(), compile_on_match(v)?));
                            }
                            // Longest prefix first.
                            out.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
                            Kind::Prefix(input, out)
                        }
                        Some(TreeType::CustomMatch(ext)) => {
                            let any = ext
                                .typed_config
                                .as_ref()
                                .ok_or("matcher_tree.custom_match: missing typed_config")?;
                            if !any.type_url.ends_with("xds.type.matcher.v3.IPMatcher") {
                                return Err(format!(
                                    "matcher_tree.custom_match: unsupported {}",
                                    any.type_url
                                ));
                            }
                            let ipm = IpMatcherPb::decode(any.value.as_slice())
                                .map_err(|e| format!("IPMatcher: {e}"))?;
                            let mut out = Vec::new();
                            for (i, rm) in ipm.range_matchers.iter().enumerate() {
                                let mut cidrs = Vec::new();
                                for r in &rm.ranges {
                                    cidrs.push(
                                        Cidr::parse(
                                            &r.address_prefix,
                                            r.prefix_len.as_ref().map(|v| v.value),
                                        )
                                        .map_err(|e| format!("range_matchers[{i}]: {e}"))?,
                                    );
                                }
                                let om = rm.on_match.as_ref().ok_or_else(|| {
                                    format!("range_matchers[{i}].on_match: missing")
                                })?;
                                out.push((cidrs, compile_on_match(om)?, rm.exclusive));
                            }
                            // Most specific (longest prefix) first, then declaration order.
                            out.sort_by_key(|(c, _, _)| {
                                std::cmp::Reverse(c.iter().map(|c| c.len).max().unwrap_or(0))
                            });
                            Kind::Ip(input, out)
                        }
                        None => return Err("matcher_tree: no tree type".into()),
                    }
                }
                None => return Err("matcher: no matcher_list or matcher_tree".into()),
            };
        Ok(Matcher { kind, on_no_match })
    }

    /// The action (filter chain name) this connection leads to, if any.
    pub fn eval<'a>(&'a self, c: &ConnInfo) -> Option<&'a str> {
        let found = match &self.kind {
            Kind::List(items) => items
                .iter()
                .filter(|(p, _)| p.eval(c))
                .find_map(|(_, o)| o.eval(c)),
            Kind::Exact(input, map) => input
                .read(c)
                .and_then(|v| map.get(&v))
                .and_then(|o| o.eval(c)),
            Kind::Prefix(input, list) => input.read(c).and_then(|v| {
                list.iter()
                    .filter(|(p, _)| v.starts_with(p.as_str()))
                    .find_map(|(_, o)| o.eval(c))
            }),
            Kind::Ip(input, list) => input.read(c).and_then(|v| v.parse().ok()).and_then(|ip| {
                let mut result = None;
                for (cidrs, o, exclusive) in list {
                    if !cidrs.iter().any(|r| r.contains(ip)) {
                        continue;
                    }
                    result = o.eval(c);
                    if result.is_some() || *exclusive {
                        break;
                    }
                }
                result
            }),
        };
        found.or_else(|| self.on_no_match.as_ref().and_then(|o| o.eval(c)))
    }

    /// Every action name the matcher can lead to (to check they name existing chains).
    pub fn actions(&self) -> Vec<&str> {
        let mut out = Vec::new();
        match &self.kind {
            Kind::List(items) => items.iter().for_each(|(_, o)| o.collect(&mut out)),
            Kind::Exact(_, map) => map.values().for_each(|o| o.collect(&mut out)),
            Kind::Prefix(_, list) => list.iter().for_each(|(_, o)| o.collect(&mut out)),
            Kind::Ip(_, list) => list.iter().for_each(|(_, o, _)| o.collect(&mut out)),
        }
        if let Some(o) = &self.on_no_match {
            o.collect(&mut out);
        }
        out
    }
}

impl OnMatch {
    fn eval<'a>(&'a self, c: &ConnInfo) -> Option<&'a str> {
        match self {
            OnMatch::Action(a) => Some(a.as_str()),
            OnMatch::Matcher(m) => m.eval(c),
        }
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            OnMatch::Action(a) => out.push(a),
            OnMatch::Matcher(m) => out.extend(m.actions()),
        }
    }
}

fn compile_on_match(o: &xm::matcher::OnMatch) -> Result<OnMatch, String> {
    use xm::matcher::on_match::OnMatch as O;
    match &o.on_match {
        Some(O::Matcher(m)) => Ok(OnMatch::Matcher(Box::new(Matcher::compile(m)?))),
        Some(O::Action(ext)) => {
            // The filter chain name is the StringValue in the action; its `name` otherwise.
            let name = ext
                .typed_config
                .as_ref()
                .filter(|a| a.type_url.ends_with("google.protobuf.StringValue"))
                .and_then(|a| {
                    envoy_types::pb::google::protobuf::StringValue::decode(a.value.as_slice()).ok()
                })
                .map(|s| s.value)
                .unwrap_or_else(|| ext.name.clone());
            Ok(OnMatch::Action(name))
        }
        None => Err("on_match: empty".into()),
    }
}

fn compile_predicate(p: &xm::matcher::matcher_list::Predicate) -> Result<Predicate, String> {
    use xm::matcher::matcher_list::predicate::{single_predicate::Matcher as SM, MatchType};
    match &p.match_type {
        Some(MatchType::SinglePredicate(sp)) => {
            let url = sp
                .input
                .as_ref()
                .and_then(|i| i.typed_config.as_ref())
                .map(|a| a.type_url.as_str())
                .unwrap_or("");
            let input = Input::from_type_url(url)
                .ok_or_else(|| format!("single_predicate.input: unsupported input {url}"))?;
            let m = match &sp.matcher {
                Some(SM::ValueMatch(sm)) => compile_string_matcher(sm)?,
                Some(SM::CustomMatch(_)) => {
                    return Err("single_predicate.custom_match: unsupported".into())
                }
                None => return Err("single_predicate: no matcher".into()),
            };
            Ok(Predicate::Single(input, m))
        }
        Some(MatchType::OrMatcher(l)) => Ok(Predicate::Or(
            l.predicate
                .iter()
                .map(compile_predicate)
                .collect::<Result<_, _>>()?,
        )),
        Some(MatchType::AndMatcher(l)) => Ok(Predicate::And(
            l.predicate
                .iter()
                .map(compile_predicate)
                .collect::<Result<_, _>>()?,
        )),
        Some(MatchType::NotMatcher(p)) => Ok(Predicate::Not(Box::new(compile_predicate(p)?))),
        None => Err("predicate: empty".into()),
    }
}

fn compile_string_matcher(sm: &xm::StringMatcher) -> Result<StrMatch, String> {
    use xm::string_matcher::MatchPattern as P;
    let ic = sm.ignore_case;
    Ok(match &sm.match_pattern {
        Some(P::Exact(s)) => StrMatch::Exact(s.clone(), ic),
        Some(P::Prefix(s)) => StrMatch::Prefix(s.clone(), ic),
        Some(P::Suffix(s)) => StrMatch::Suffix(s.clone(), ic),
        Some(P::Contains(s)) => StrMatch::Contains(s.clone(), ic),
        Some(P::SafeRegex(r)) => StrMatch::Regex(
            regex::Regex::new(&format!("^(?:{})$", r.regex))
                .map_err(|e| format!("safe_regex {:?}: {e}", r.regex))?,
        ),
        Some(P::Custom(_)) => return Err("string matcher: custom is unsupported".into()),
        None => return Err("string matcher: empty".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proto::{decode, Format};

    /// The shape istiod emits for virtualInbound: destination IP (IPMatcher), then destination
    /// port (exact map), then application protocol, with on_no_match fallbacks.
    const TREE: &str = r#"
matcher_tree:
  input: {name: ip, typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput}}
  custom_match:
    name: ip
    typed_config:
      "@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
      range_matchers:
      - ranges: [{address_prefix: 198.18.0.10, prefix_len: 32}]
        on_match:
          matcher:
            matcher_tree:
              input: {name: port, typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput}}
              exact_match_map:
                map:
                  "8000": {action: {name: vip-8000, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: vip-8000}}}
      - ranges: [{address_prefix: 0.0.0.0, prefix_len: 0}]
        on_match:
          matcher:
            matcher_tree:
              input: {name: port, typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput}}
              exact_match_map:
                map:
                  "9080":
                    matcher:
                      matcher_tree:
                        input: {name: application-protocol, typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput}}
                        exact_match_map:
                          map:
                            "'h2c'": {action: {name: http, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: http}}}
                            "'http/1.1'": {action: {name: http, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: http}}}
                      on_no_match: {action: {name: tcp-9080, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: tcp-9080}}}
on_no_match: {action: {name: passthrough, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: passthrough}}}
"#;

    fn ci(dst: &str, alpn: &[&str]) -> ConnInfo {
        ConnInfo {
            local: Some(dst.parse().unwrap()),
            remote: Some("198.18.0.99:40000".parse().unwrap()),
            transport: "raw_buffer",
            server_name: None,
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn istiod_style_tree() {
        let m: xm::Matcher = decode(TREE, Format::Yaml).unwrap();
        let m = Matcher::compile(&m).unwrap();
        assert_eq!(m.eval(&ci("198.18.0.10:8000", &[])), Some("vip-8000"));
        assert_eq!(m.eval(&ci("198.18.0.20:9080", &["http/1.1"])), Some("http"));
        assert_eq!(m.eval(&ci("198.18.0.20:9080", &["h2c"])), Some("http"));
        assert_eq!(m.eval(&ci("198.18.0.20:9080", &[])), Some("tcp-9080"));
        assert_eq!(m.eval(&ci("198.18.0.20:7777", &[])), Some("passthrough"));
        // The /32 range is more specific, but port 9080 is not in it: the non-exclusive /0
        // range is tried next.
        assert_eq!(m.eval(&ci("198.18.0.10:9080", &["h2c"])), Some("http"));
        let mut actions = m.actions();
        actions.sort();
        actions.dedup();
        assert_eq!(actions, ["http", "passthrough", "tcp-9080", "vip-8000"]);
    }
}
