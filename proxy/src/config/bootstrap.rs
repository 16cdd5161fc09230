//! Loading an Envoy bootstrap (`--bootstrap FILE`, YAML or JSON) into the typed proto.

use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

use super::proto::{self, Format};

/// Error loading a bootstrap file.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("reading {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Decode {
        file: String,
        source: proto::DecodeError,
    },
}

/// Reads and decodes a bootstrap file.
pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
        file: path.display().to_string(),
        source,
    })?;
    proto::decode(&text, Format::from_path(path)).map_err(|source| BootstrapError::Decode {
        file: path.display().to_string(),
        source,
    })
}
