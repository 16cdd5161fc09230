//! Sluice, the proxy library behind the `sluice` binary.
#![deny(unsafe_code)]

pub mod body;
pub mod cluster;
pub mod config;
pub mod listener;
pub mod model;
pub mod stats;
