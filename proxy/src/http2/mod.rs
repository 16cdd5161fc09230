//! Sluice's own HTTP/2 codec, built up in pieces and tested against the `h2` crate before it
//! replaces it on the data path (the `h2` crate's HPACK, frame queues and stream bookkeeping
//! are most of the proxy's cost per h2c request: `docs/bench/profile.md`). So far:
//! `hpack` (header compression, RFC 7541) and `frame` (RFC 9113 §4 and §6: reading frames off a
//! buffer, header blocks with their CONTINUATIONs assembled, and writing frames).

pub mod client;
mod conn;
pub mod frame;
pub mod hpack;
mod request;
pub mod server;
mod shared;
pub mod stream;

pub use shared::StreamError;
