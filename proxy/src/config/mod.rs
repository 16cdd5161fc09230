//! Configuration sources and the schema they share: Envoy's v3 protos (`proto`, and the files a
//! document needs of them: `schema_files`), the static bootstrap file (`bootstrap`).

pub mod bootstrap;
pub mod proto;
pub mod schema_files;
