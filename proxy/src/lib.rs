//! Sluice, the proxy library behind the `sluice` binary.

pub mod config;
pub mod route;
