//! Sluice's own HTTP/2 codec, which serves downstream h2c connections (`server`) and speaks to
//! h2c upstreams (`client`), in place of the `h2` crate (whose HPACK, frame queues and stream
//! bookkeeping were most of the proxy's cost per h2c request: `docs/bench/profile.md`).
//!
//! - `hpack`: header compression (RFC 7541); `frame`: frames off a read buffer, header blocks
//!   with their CONTINUATIONs assembled, frames written (RFC 9113 §4, §6);
//! - `request`: a decoded header block as a request or response head, with RFC 9113 §8's
//!   rules for malformed messages;
//! - `shared`: one connection's streams, windows and output, shared by its task and its
//!   streams' handles; `conn`: what both sides do alike (reading, writing, SETTINGS, PING);
//! - `server` and `client`: each side's connection; `stream`: the handles (bodies, the send
//!   side, CONNECT tunnels, the body pump).

pub mod client;
mod conn;
pub mod frame;
pub mod hpack;
mod request;
pub mod server;
mod shared;
pub mod stream;

pub use shared::StreamError;
