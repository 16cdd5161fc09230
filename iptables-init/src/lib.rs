//! `sluice-iptables`: Istio-compatible traffic capture for a pod's network namespace.
//!
//! - [`config`]: settings (defaults, Istio's environment variables, flags) → validated `Config`.
//! - [`rules`]: pure `Config` → `RuleSet` → iptables-restore payloads (golden-tested against
//!   istio-iptables).
//! - [`apply`]: installs a `RuleSet` with iptables-restore, verifies it, cleans up, rolls back.
//! - [`nft`]: the `--native-nftables` backend (same rules as one `nft -f` transaction).
//! - [`routes`]: TPROXY policy routing and the `::6` loopback address, via `ip`.
#![forbid(unsafe_code)]

pub mod apply;
pub mod config;
pub mod nft;
pub mod routes;
pub mod rules;
