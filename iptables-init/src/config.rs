//! Settings and the validated [`Config`] that rule generation consumes.
//!
//! This module owns every istio-iptables setting: its default, the JSON-style key Istio's
//! `Config` uses for it (`INBOUND_PORTS_INCLUDE`, ...), the environment variables Istio reads
//! for it, and the validation that turns loose strings into typed values.
//!
//! Parsing is separate from construction: [`Settings`] holds raw values exactly as a user
//! wrote them (defaults, then environment, then flags, each layer overriding the one before,
//! as in Istio); [`Config::try_from`] validates them once. Reading the host (passwd, resolv.conf,
//! local addresses) lives in [`host`] and only fills in what the user left unset.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

pub mod host;

/// Istio's agent DNS listener; DNS capture redirects port 53 here.
pub const DNS_LISTENER_PORT: u16 = 15053;
/// Mark set on packets from the proxy's outbound side to the app via the pod IP (TPROXY mode).
pub const OUTBOUND_MARK: u32 = 1338;
/// Default proxy UID (and GID) when neither flag nor `ENVOY_USER` lookup gives one.
pub const DEFAULT_PROXY_UID: &str = "1337";
/// Istio caps the number of included owner groups (they form one rule).
pub const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

/// A setting that could not be understood; always names the setting and the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown setting {0:?}")]
    UnknownKey(String),
    #[error("{key}: invalid port {value:?} (expected 1-65535)")]
    Port { key: &'static str, value: String },
    #[error("{key}: invalid number {value:?}")]
    Number { key: &'static str, value: String },
    #[error("{key}: invalid boolean {value:?} (expected true/false/1/0)")]
    Bool { key: String, value: String },
    #[error("{key}: invalid CIDR {value:?}")]
    Cidr { key: &'static str, value: String },
    #[error("{key}: invalid interception mode {value:?} (expected REDIRECT or TPROXY)")]
    Mode { key: &'static str, value: String },
    #[error("OUTBOUND_IPRANGES_EXCLUDE: the wildcard \"*\" is not allowed")]
    WildcardExclude,
    #[error("HOST_IPV4_LOOPBACK_CIDR: expected an IPv4 loopback CIDR with mask 8..=32, got {0:?}")]
    LoopbackCidr(String),
    #[error("OUTBOUND_OWNER_GROUPS_INCLUDE: at most {max} groups may be listed, got {got}")]
    TooManyOwnerGroups { max: usize, got: usize },
    #[error("{key}: invalid value {value:?} (expected one of {expected})")]
    Choice {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Host(String),
}

/// Raw settings as a user gave them, keyed like Istio's `Config` JSON.
///
/// Lists are comma-separated strings, as in Istio; empty items are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub proxy_port: String,
    pub inbound_capture_port: String,
    pub inbound_tunnel_port: String,
    /// Empty means "look up `ENVOY_USER`, else 1337" (see [`host::fill_from_host`]).
    pub proxy_uid: String,
    /// Empty means "same as the UID list".
    pub proxy_gid: String,
    pub inbound_interception_mode: String,
    pub inbound_tproxy_mark: String,
    pub inbound_tproxy_route_table: String,
    pub inbound_ports_include: String,
    pub inbound_ports_exclude: String,
    pub outbound_owner_groups_include: String,
    pub outbound_owner_groups_exclude: String,
    pub outbound_ports_include: String,
    pub outbound_ports_exclude: String,
    pub outbound_ipranges_include: String,
    pub outbound_ipranges_exclude: String,
    pub kube_virt_interfaces: String,
    pub exclude_interfaces: String,
    pub dry_run: bool,
    pub redirect_dns: bool,
    pub drop_invalid: bool,
    /// Sluice extension (not in Istio): see [`Config::tproxy_mark_return`].
    pub tproxy_mark_return: bool,
    pub capture_all_dns: bool,
    /// `None` means "detect from the pod's addresses".
    pub enable_inbound_ipv6: Option<bool>,
    pub dns_servers_v4: Vec<String>,
    pub dns_servers_v6: Vec<String>,
    pub dual_stack: bool,
    pub host_ipv4_loopback_cidr: String,
    pub cleanup_only: bool,
    pub native_nftables: bool,
    pub force_iptables_binary: String,
}

impl Default for Settings {
    /// Istio's `DefaultConfig()` plus the defaults of its env-only settings.
    fn default() -> Self {
        Settings {
            proxy_port: "15001".into(),
            inbound_capture_port: "15006".into(),
            inbound_tunnel_port: "15008".into(),
            proxy_uid: String::new(),
            proxy_gid: String::new(),
            inbound_interception_mode: String::new(),
            inbound_tproxy_mark: "1337".into(),
            inbound_tproxy_route_table: "133".into(),
            inbound_ports_include: String::new(),
            inbound_ports_exclude: String::new(),
            outbound_owner_groups_include: "*".into(),
            outbound_owner_groups_exclude: String::new(),
            outbound_ports_include: String::new(),
            outbound_ports_exclude: String::new(),
            outbound_ipranges_include: String::new(),
            outbound_ipranges_exclude: String::new(),
            kube_virt_interfaces: String::new(),
            exclude_interfaces: String::new(),
            dry_run: false,
            redirect_dns: false,
            drop_invalid: false,
            tproxy_mark_return: false,
            capture_all_dns: false,
            enable_inbound_ipv6: None,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
            dual_stack: false,
            host_ipv4_loopback_cidr: "127.0.0.1/32".into(),
            cleanup_only: false,
            native_nftables: false,
            force_iptables_binary: String::new(),
        }
    }
}

/// Environment variables Istio reads, in the order they apply, and the setting each sets.
/// Later entries win (Istio's `AdditionalEnv` aliases come after the primary name).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("INBOUND_CAPTURE_PORT", "INBOUND_CAPTURE_PORT"),
    ("INBOUND_TUNNEL_PORT", "INBOUND_TUNNEL_PORT"),
    ("PROXY_UID", "PROXY_UID"),
    ("PROXY_GID", "PROXY_GID"),
    (
        "ISTIO_INBOUND_INTERCEPTION_MODE",
        "INBOUND_INTERCEPTION_MODE",
    ),
    ("ISTIO_INBOUND_TPROXY_MARK", "INBOUND_TPROXY_MARK"),
    (
        "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        "INBOUND_TPROXY_ROUTE_TABLE",
    ),
    ("ISTIO_INBOUND_PORTS", "INBOUND_PORTS_INCLUDE"),
    ("ISTIO_LOCAL_EXCLUDE_PORTS", "INBOUND_PORTS_EXCLUDE"),
    ("ISTIO_EXCLUDE_INTERFACES", "EXCLUDE_INTERFACES"),
    ("ISTIO_SERVICE_CIDR", "OUTBOUND_IPRANGES_INCLUDE"),
    ("ISTIO_SERVICE_EXCLUDE_CIDR", "OUTBOUND_IPRANGES_EXCLUDE"),
    ("ISTIO_OUTBOUND_PORTS", "OUTBOUND_PORTS_INCLUDE"),
    (
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        "OUTBOUND_PORTS_EXCLUDE",
    ),
    ("KUBE_VIRT_INTERFACES", "KUBE_VIRT_INTERFACES"),
    ("DRY_RUN", "DRY_RUN"),
    ("REDIRECT_DNS", "REDIRECT_DNS"),
    ("ISTIO_META_DNS_CAPTURE", "REDIRECT_DNS"),
    ("DROP_INVALID", "DROP_INVALID"),
    ("INVALID_DROP", "DROP_INVALID"),
    ("DUAL_STACK", "DUAL_STACK"),
    ("ISTIO_DUAL_STACK", "DUAL_STACK"),
    ("CAPTURE_ALL_DNS", "CAPTURE_ALL_DNS"),
    ("CLEANUP_ONLY", "CLEANUP_ONLY"),
    ("NATIVE_NFTABLES", "NATIVE_NFTABLES"),
    ("FORCE_IPTABLES_BINARY", "FORCE_IPTABLES_BINARY"),
    // Sluice extension; Istio has no such setting.
    ("SLUICE_TPROXY_MARK_RETURN", "TPROXY_MARK_RETURN"),
    // Env-only settings (no flag in Istio either).
    (
        "ISTIO_OUTBOUND_OWNER_GROUPS",
        "OUTBOUND_OWNER_GROUPS_INCLUDE",
    ),
    (
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        "OUTBOUND_OWNER_GROUPS_EXCLUDE",
    ),
    (
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        "HOST_IPV4_LOOPBACK_CIDR",
    ),
    ("ENABLE_INBOUND_IPV6", "ENABLE_INBOUND_IPV6"),
];

/// Go's `strconv.ParseBool`, which Istio uses for flags and env.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ConfigError::Bool {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Istio's `config.Split`: comma-separated, empty items dropped. We also trim spaces.
pub fn split(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Settings {
    /// Set one value by its Istio JSON key (`INBOUND_PORTS_INCLUDE`, `PROXY_UID`, ...).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let s = value.to_string();
        match key {
            "PROXY_PORT" => self.proxy_port = s,
            "INBOUND_CAPTURE_PORT" => self.inbound_capture_port = s,
            "INBOUND_TUNNEL_PORT" => self.inbound_tunnel_port = s,
            "PROXY_UID" => self.proxy_uid = s,
            "PROXY_GID" => self.proxy_gid = s,
            "INBOUND_INTERCEPTION_MODE" => self.inbound_interception_mode = s,
            "INBOUND_TPROXY_MARK" => self.inbound_tproxy_mark = s,
            "INBOUND_TPROXY_ROUTE_TABLE" => self.inbound_tproxy_route_table = s,
            "INBOUND_PORTS_INCLUDE" => self.inbound_ports_include = s,
            "INBOUND_PORTS_EXCLUDE" => self.inbound_ports_exclude = s,
            "OUTBOUND_OWNER_GROUPS_INCLUDE" => self.outbound_owner_groups_include = s,
            "OUTBOUND_OWNER_GROUPS_EXCLUDE" => self.outbound_owner_groups_exclude = s,
            "OUTBOUND_PORTS_INCLUDE" => self.outbound_ports_include = s,
            "OUTBOUND_PORTS_EXCLUDE" => self.outbound_ports_exclude = s,
            "OUTBOUND_IPRANGES_INCLUDE" => self.outbound_ipranges_include = s,
            "OUTBOUND_IPRANGES_EXCLUDE" => self.outbound_ipranges_exclude = s,
            "KUBE_VIRT_INTERFACES" => self.kube_virt_interfaces = s,
            "EXCLUDE_INTERFACES" => self.exclude_interfaces = s,
            "DRY_RUN" => self.dry_run = parse_bool(key, value)?,
            "REDIRECT_DNS" => self.redirect_dns = parse_bool(key, value)?,
            "DROP_INVALID" => self.drop_invalid = parse_bool(key, value)?,
            "TPROXY_MARK_RETURN" => self.tproxy_mark_return = parse_bool(key, value)?,
            "CAPTURE_ALL_DNS" => self.capture_all_dns = parse_bool(key, value)?,
            "ENABLE_INBOUND_IPV6" => self.enable_inbound_ipv6 = Some(parse_bool(key, value)?),
            "DNS_SERVERS_V4" => self.dns_servers_v4 = split(value),
            "DNS_SERVERS_V6" => self.dns_servers_v6 = split(value),
            "DUAL_STACK" => self.dual_stack = parse_bool(key, value)?,
            "HOST_IPV4_LOOPBACK_CIDR" => self.host_ipv4_loopback_cidr = s,
            "CLEANUP_ONLY" => self.cleanup_only = parse_bool(key, value)?,
            "NATIVE_NFTABLES" => self.native_nftables = parse_bool(key, value)?,
            "FORCE_IPTABLES_BINARY" => self.force_iptables_binary = s,
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Apply the environment variables Istio reads ([`ENV_VARS`]); `env` looks one up.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (var, key) in ENV_VARS {
            if let Some(value) = env(var) {
                self.set(key, &value).map_err(|e| match e {
                    ConfigError::Bool { value, .. } => ConfigError::Bool {
                        key: format!("env {var}"),
                        value,
                    },
                    other => other,
                })?;
            }
        }
        Ok(())
    }
}

/// How inbound connections reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    /// nat REDIRECT (the default; Istio treats anything but `TPROXY` as this).
    Redirect,
    /// mangle TPROXY with a mark and policy routing; preserves the source address.
    Tproxy,
}

/// Which inbound ports to capture (`INBOUND_PORTS_INCLUDE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Empty: inbound capture disabled.
    None,
    /// `*`: every port, minus `INBOUND_PORTS_EXCLUDE`.
    All,
    Only(Vec<u16>),
}

/// An address prefix, printed as Go's `netip.Prefix` does (address not masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.split_once('/').ok_or(())?;
        let addr: IpAddr = a.parse().map_err(|_| ())?;
        if b.is_empty() || b.len() > 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        let bits: u8 = b.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(());
        }
        Ok(Cidr { addr, bits })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// Outbound IP ranges (`OUTBOUND_IPRANGES_INCLUDE` / `_EXCLUDE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRanges {
    All,
    /// Possibly empty; IPv4 and IPv6 mixed, split per family by the rule generator.
    List(Vec<Cidr>),
}

impl IpRanges {
    /// The CIDRs of one family (`v6 == false` for IPv4).
    pub fn family(&self, v6: bool) -> Vec<Cidr> {
        match self {
            IpRanges::All => Vec::new(),
            IpRanges::List(l) => l.iter().filter(|c| c.is_v4() != v6).copied().collect(),
        }
    }

    /// Istio's `HasLoopBackIP`: some listed range starts at a loopback address.
    pub fn has_loopback(&self) -> bool {
        match self {
            IpRanges::All => false,
            IpRanges::List(l) => l.iter().any(|c| c.addr.is_loopback()),
        }
    }
}

/// Owner-group capture filter (Istio's `InterceptFilter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Include was `*`: capture every group except these.
    AllExcept(Vec<String>),
    /// Capture only these groups (may be empty: capture none).
    Only(Vec<String>),
}

/// Which iptables binaries to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Whatever `iptables` on PATH is.
    Default,
    Legacy,
    Nft,
}

/// Validated settings; the only input to rule generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_uids: Vec<String>,
    pub proxy_gids: Vec<String>,
    pub mode: InterceptionMode,
    pub tproxy_mark: u32,
    pub tproxy_route_table: u32,
    pub inbound_ports: InboundPorts,
    pub inbound_ports_exclude: Vec<u16>,
    pub outbound_ports_include: Vec<u16>,
    pub outbound_ports_exclude: Vec<u16>,
    pub outbound_ranges_include: IpRanges,
    pub outbound_ranges_exclude: IpRanges,
    pub owner_groups: OwnerGroups,
    pub kube_virt_interfaces: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    pub dry_run: bool,
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub drop_invalid: bool,
    /// Sluice extension, off by default (output then equals Istio's): in TPROXY mode, first in
    /// nat `ISTIO_OUTPUT`, return TCP leaving on `lo` with the TPROXY mark. That is the
    /// sidecar's `original_src` connection to its own app, which Istio's rules otherwise send
    /// back to the inbound capture port (istio/istio#23369). Ignored, with a warning, in
    /// REDIRECT mode.
    pub tproxy_mark_return: bool,
    pub enable_ipv6: bool,
    pub dual_stack: bool,
    pub dns_servers_v4: Vec<String>,
    pub dns_servers_v6: Vec<String>,
    pub host_ipv4_loopback: Cidr,
    pub cleanup_only: bool,
    pub native_nftables: bool,
    pub backend: Backend,
}

fn port(key: &'static str, v: &str) -> Result<u16, ConfigError> {
    match v.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::Port {
            key,
            value: v.to_string(),
        }),
    }
}

fn ports(key: &'static str, v: &str) -> Result<Vec<u16>, ConfigError> {
    split(v).iter().map(|p| port(key, p)).collect()
}

fn number(key: &'static str, v: &str) -> Result<u32, ConfigError> {
    v.trim().parse::<u32>().map_err(|_| ConfigError::Number {
        key,
        value: v.to_string(),
    })
}

fn ranges(key: &'static str, v: &str) -> Result<IpRanges, ConfigError> {
    if v.trim() == "*" {
        return Ok(IpRanges::All);
    }
    split(v)
        .iter()
        .map(|c| {
            c.parse::<Cidr>().map_err(|_| ConfigError::Cidr {
                key,
                value: c.clone(),
            })
        })
        .collect::<Result<_, _>>()
        .map(IpRanges::List)
}

impl TryFrom<&Settings> for Config {
    type Error = ConfigError;

    fn try_from(s: &Settings) -> Result<Config, ConfigError> {
        let mode = match s.inbound_interception_mode.trim() {
            "" | "REDIRECT" => InterceptionMode::Redirect,
            "TPROXY" => InterceptionMode::Tproxy,
            other => {
                return Err(ConfigError::Mode {
                    key: "INBOUND_INTERCEPTION_MODE",
                    value: other.to_string(),
                })
            }
        };
        let inbound_ports = match s.inbound_ports_include.trim() {
            "" => InboundPorts::None,
            "*" => InboundPorts::All,
            list => InboundPorts::Only(ports("INBOUND_PORTS_INCLUDE", list)?),
        };
        let outbound_ranges_exclude =
            ranges("OUTBOUND_IPRANGES_EXCLUDE", &s.outbound_ipranges_exclude)?;
        if outbound_ranges_exclude == IpRanges::All {
            return Err(ConfigError::WildcardExclude);
        }
        let owner_groups = if s.outbound_owner_groups_include.trim() == "*" {
            OwnerGroups::AllExcept(split(&s.outbound_owner_groups_exclude))
        } else {
            let only = split(&s.outbound_owner_groups_include);
            if only.len() > MAX_OWNER_GROUPS_INCLUDE {
                return Err(ConfigError::TooManyOwnerGroups {
                    max: MAX_OWNER_GROUPS_INCLUDE,
                    got: only.len(),
                });
            }
            OwnerGroups::Only(only)
        };
        let loopback_err = || ConfigError::LoopbackCidr(s.host_ipv4_loopback_cidr.clone());
        let host_ipv4_loopback: Cidr = s
            .host_ipv4_loopback_cidr
            .trim()
            .parse()
            .map_err(|_| loopback_err())?;
        if !host_ipv4_loopback.addr.is_ipv4()
            || !host_ipv4_loopback.addr.is_loopback()
            || host_ipv4_loopback.bits < 8
        {
            return Err(loopback_err());
        }
        let backend = match s.force_iptables_binary.trim() {
            "" => Backend::Default,
            "legacy" => Backend::Legacy,
            "nft" => Backend::Nft,
            other => {
                return Err(ConfigError::Choice {
                    key: "FORCE_IPTABLES_BINARY",
                    value: other.to_string(),
                    expected: "\"\", legacy, nft",
                })
            }
        };
        let mut proxy_uids = split(&s.proxy_uid);
        if proxy_uids.is_empty() {
            proxy_uids.push(DEFAULT_PROXY_UID.to_string());
        }
        let mut proxy_gids = split(&s.proxy_gid);
        if proxy_gids.is_empty() {
            proxy_gids = proxy_uids.clone();
        }
        Ok(Config {
            proxy_port: port("PROXY_PORT", &s.proxy_port)?,
            inbound_capture_port: port("INBOUND_CAPTURE_PORT", &s.inbound_capture_port)?,
            inbound_tunnel_port: port("INBOUND_TUNNEL_PORT", &s.inbound_tunnel_port)?,
            proxy_uids,
            proxy_gids,
            mode,
            tproxy_mark: number("INBOUND_TPROXY_MARK", &s.inbound_tproxy_mark)?,
            tproxy_route_table: number(
                "INBOUND_TPROXY_ROUTE_TABLE",
                &s.inbound_tproxy_route_table,
            )?,
            inbound_ports,
            inbound_ports_exclude: ports("INBOUND_PORTS_EXCLUDE", &s.inbound_ports_exclude)?,
            outbound_ports_include: ports("OUTBOUND_PORTS_INCLUDE", &s.outbound_ports_include)?,
            outbound_ports_exclude: ports("OUTBOUND_PORTS_EXCLUDE", &s.outbound_ports_exclude)?,
            outbound_ranges_include: ranges(
                "OUTBOUND_IPRANGES_INCLUDE",
                &s.outbound_ipranges_include,
            )?,
            outbound_ranges_exclude,
            owner_groups,
            kube_virt_interfaces: split(&s.kube_virt_interfaces),
            exclude_interfaces: split(&s.exclude_interfaces),
            dry_run: s.dry_run,
            redirect_dns: s.redirect_dns,
            capture_all_dns: s.capture_all_dns,
            drop_invalid: s.drop_invalid,
            tproxy_mark_return: s.tproxy_mark_return,
            enable_ipv6: s.enable_inbound_ipv6.unwrap_or(false),
            dual_stack: s.dual_stack,
            dns_servers_v4: s.dns_servers_v4.clone(),
            dns_servers_v6: s.dns_servers_v6.clone(),
            host_ipv4_loopback,
            cleanup_only: s.cleanup_only,
            native_nftables: s.native_nftables,
            backend,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set(k, v)?;
        }
        Config::try_from(&s)
    }

    #[test]
    fn defaults_match_istio() {
        let c = build(&[]).unwrap();
        assert_eq!(c.proxy_port, 15001);
        assert_eq!(c.inbound_capture_port, 15006);
        assert_eq!(c.inbound_tunnel_port, 15008);
        assert_eq!(c.proxy_uids, vec!["1337"]);
        assert_eq!(c.proxy_gids, vec!["1337"]);
        assert_eq!(c.mode, InterceptionMode::Redirect);
        assert_eq!(c.tproxy_mark, 1337);
        assert_eq!(c.tproxy_route_table, 133);
        assert_eq!(c.inbound_ports, InboundPorts::None);
        assert_eq!(c.owner_groups, OwnerGroups::AllExcept(vec![]));
        assert_eq!(c.host_ipv4_loopback.to_string(), "127.0.0.1/32");
        assert!(!c.tproxy_mark_return);
    }

    #[test]
    fn tproxy_mark_return_from_key_and_env() {
        assert!(
            build(&[("TPROXY_MARK_RETURN", "true")])
                .unwrap()
                .tproxy_mark_return
        );
        assert!(build(&[("TPROXY_MARK_RETURN", "maybe")]).is_err());
        let mut s = Settings::default();
        s.apply_env(|k| (k == "SLUICE_TPROXY_MARK_RETURN").then(|| "1".to_string()))
            .unwrap();
        assert!(Config::try_from(&s).unwrap().tproxy_mark_return);
    }

    #[test]
    fn gid_defaults_to_uid_list() {
        let c = build(&[("PROXY_UID", "3,4")]).unwrap();
        assert_eq!(c.proxy_gids, vec!["3", "4"]);
    }

    #[test]
    fn lists_drop_empty_items() {
        let c = build(&[
            ("INBOUND_PORTS_EXCLUDE", "6000,7000,"),
            ("INBOUND_PORTS_INCLUDE", "*"),
        ])
        .unwrap();
        assert_eq!(c.inbound_ports_exclude, vec![6000, 7000]);
        assert_eq!(c.inbound_ports, InboundPorts::All);
    }

    #[test]
    fn errors_name_the_setting() {
        let e = build(&[("INBOUND_PORTS_INCLUDE", "80,http")]).unwrap_err();
        assert!(e.to_string().contains("INBOUND_PORTS_INCLUDE"), "{e}");
        assert!(e.to_string().contains("http"), "{e}");
        assert_eq!(
            build(&[("OUTBOUND_IPRANGES_EXCLUDE", "*")]).unwrap_err(),
            ConfigError::WildcardExclude
        );
        assert!(build(&[("OUTBOUND_IPRANGES_INCLUDE", "10.0.0.0/33")]).is_err());
        assert!(build(&[("INBOUND_INTERCEPTION_MODE", "tproxy")]).is_err());
        assert!(build(&[("HOST_IPV4_LOOPBACK_CIDR", "10.0.0.1/32")]).is_err());
        assert!(build(&[("HOST_IPV4_LOOPBACK_CIDR", "127.0.0.1/7")]).is_err());
        assert!(build(&[("DRY_RUN", "yes")]).is_err());
        let many = (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(matches!(
            build(&[("OUTBOUND_OWNER_GROUPS_INCLUDE", &many)]),
            Err(ConfigError::TooManyOwnerGroups { got: 65, .. })
        ));
    }

    #[test]
    fn cidr_prints_like_go_netip() {
        for s in ["10.0.0.1/8", "2001:db8::/32", "::1/128", "0.0.0.0/0"] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
    }

    #[test]
    fn ranges_split_by_family_and_detect_loopback() {
        let c = build(&[(
            "OUTBOUND_IPRANGES_INCLUDE",
            "10.0.0.0/8,2001:db8::/32,127.1.2.3/32",
        )])
        .unwrap();
        assert_eq!(c.outbound_ranges_include.family(false).len(), 2);
        assert_eq!(c.outbound_ranges_include.family(true).len(), 1);
        assert!(c.outbound_ranges_include.has_loopback());
    }

    #[test]
    fn env_applies_with_aliases_winning() {
        let env: HashMap<&str, &str> = [
            ("ISTIO_INBOUND_PORTS", "*"),
            ("ISTIO_SERVICE_CIDR", "10.0.0.0/8"),
            ("REDIRECT_DNS", "false"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "java"),
            ("ENABLE_INBOUND_IPV6", "true"),
        ]
        .into_iter()
        .collect();
        let mut s = Settings::default();
        s.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        let c = Config::try_from(&s).unwrap();
        assert_eq!(c.inbound_ports, InboundPorts::All);
        assert!(c.redirect_dns);
        assert!(c.enable_ipv6);
        assert_eq!(c.owner_groups, OwnerGroups::Only(vec!["java".into()]));
        let mut s = Settings::default();
        let err = s
            .apply_env(|k| (k == "DRY_RUN").then(|| "maybe".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("env DRY_RUN"), "{err}");
    }
}
