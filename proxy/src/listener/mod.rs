//! Listening sockets, accept loops and per-connection dispatch.

pub mod orig_dst;
