//! Sluice, the proxy library behind the `sluice` binary.
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod app;
pub mod body;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod detect;
pub mod dns;
pub mod gate;
pub mod http;
pub mod http2;
pub mod istio;
pub mod listener;
pub mod model;
pub mod route;
pub mod state;
pub mod stats;
pub mod sys;
pub mod tcp;
pub mod xds;
