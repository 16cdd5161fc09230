//! Configuration sources and the schema they share: Envoy's v3 protos (`proto`), the static
//! bootstrap file (`bootstrap`).

pub mod bootstrap;
pub mod proto;
